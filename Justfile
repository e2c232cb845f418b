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

# Train angel-tiny again from the bundled corpus (about 15 minutes on 2 cores)
tiny *ARGS:
    .venv/bin/angel tiny-train {{ARGS}}

# GPU suite: compiled kernels against their torch twins, then the kernel check (needs a CUDA GPU)
gpu-check:
    {{py}} -m pytest -q -m gpu tests/test_ops_gpu.py
    .venv/bin/angel kernels --check

# Kernel benchmarks as a fraction of the device's peak, appended to docs/benchmarks.md (needs a CUDA GPU)
bench-kernels:
    .venv/bin/angel kernels --bench --write docs/benchmarks.md

# Block-FP8 conversion throughput and peak RSS: angel vs llmcompressor model_free_ptq on a full-width slice
bench-quantize *ARGS:
    {{py}} -m angelcli.bench_quantize {{ARGS}}
