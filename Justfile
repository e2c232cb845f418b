# angel task runner (https://github.com/casey/just; `pip install rust-just` provides it).
# Every recipe runs inside the project venv that `python3 -m angelcli.bootstrap` creates.

py := ".venv/bin/python"

# Set up .venv and run the demo on angel-tiny (README command 1)
demo:
    python3 -m angelcli.bootstrap demo

# Set up .venv and run the whole test suite (README command 2, what CI runs)
test *ARGS:
    python3 -m angelcli.bootstrap test {{ARGS}}

# Decode tokens/s at context 16 and 1024 on a tiny model (the KV cache keeps the step cost flat);
# the same `angel bench` that measures GPUs, restricted to batch 1 and BF16; then angel-tiny's CPU decode
# (1 thread, float32, 128 greedy tokens) against the upstream code as transformers runs it (tests/upstream_bailing.py)
# and the lean reference of tests/reference_bailing.py
bench *ARGS:
    .venv/bin/angel bench --batches 1 --contexts 16,1024 --formats bf16 {{ARGS}}
    .venv/bin/angel bench --vs-reference --threads 1

# Train angel-tiny again from the bundled corpus, its routing examples and the written questions (about 50 minutes on 2 cores)
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

# Train the EAGLE3 draft shipped beside angel-tiny (angelcli/assets/angel-tiny-eagle3), then measure it
draft-tiny:
    {{py}} -m angelcli draft-train angel-tiny --data medical --regenerate --regen-max-tokens 256 \
        --steps 5000 --ttt 3 --lr 2e-3 --batch-size 8 --max-len 512 --draft-vocab 6144 --layers 1,3,4 \
        --layouts sglang --no-keep-checkpoint --threads 2 --out angelcli/assets/angel-tiny-eagle3 --json
    rm -f angelcli/assets/angel-tiny-eagle3/regenerated.jsonl  # the resume cache does not ship
    {{py}} -m angelcli draft-eval angel-tiny --k 3 --prompts 64 --max-new-tokens 128 --threads 1 --json

# `angel serve` throughput and latency at concurrency 1, 4, 8, 16 (angel-tiny on CPU, one thread; pass
# --url http://HOST:PORT for a running server, e.g. on a GPU); numbers in docs/serve.md
bench-serve *ARGS:
    {{py}} -m angelcli.serve.bench {{ARGS}}

# `angel kernels --check` under triton 3.6.0 in a separate venv (.venv-triton36); extra args go to the check
kernels-check-triton36 *ARGS:
    bash scripts/kernels_check_triton36.sh {{ARGS}}

# The GPU check on one H200 in < 8 min (JSON + logs to $OUT); BENCH_TINY=1 runs its CPU smoke mode
device-check:
    bash scripts/device_check.sh
