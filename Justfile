# angel task runner (https://github.com/casey/just; `pip install rust-just` provides it).
# Every recipe runs inside the project venv that `python3 -m angelcli.bootstrap` creates.

py := ".venv/bin/python"

# Set up .venv and run the demo on angel-tiny (README command 1)
demo:
    python3 -m angelcli.bootstrap demo

# Set up .venv and run the whole test suite (README command 2, what CI runs)
test *ARGS:
    python3 -m angelcli.bootstrap test {{ARGS}}

# Decode tokens/s at context 16 and 1024 on a tiny model (the KV cache keeps the step cost flat)
bench *ARGS:
    {{py}} -m angelcli.bench_decode {{ARGS}}

# Block-FP8 conversion throughput and peak RSS: angel vs llmcompressor model_free_ptq on a full-width slice
bench-quantize *ARGS:
    {{py}} -m angelcli.bench_quantize {{ARGS}}
