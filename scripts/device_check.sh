#!/usr/bin/env bash
# `just device-check`: angel on one GPU (sized for an H200) in under 8 minutes, with no package registry needed:
# it uses the machine's python3 with torch / triton / typer / rich / safetensors / tokenizers / pytest, and pip
# only if torch itself is missing. Run from the repo root; results go to $OUT (a temp dir if unset), 8 files:
#   run.log            everything below, with the environment (nvidia-smi, versions, the plan for TP1)
#   decode_bench.json  graph-vs-eager logits, decode tok/s and roofline fraction at batch 1/32 x context 1K/8K
#   decode_bench.log   on a full-width FP8 slice built on the GPU, kernels per step, kernel micro-benchmarks
#   gpu_tests.log      tests/test_ops_gpu.py (compiled kernels vs torch twins, weights built on the device)
#   kernels_check.json `angel kernels --check --save` (interpreter, sm_90a AOT: registers, spills; GPU runs),
#                      rewritten after every row ("partial": true until the check ends)
#   kernels_check.log
#   sanitizer.log      compute-sanitizer on qk_norm_rope with a position past the RoPE table
# Wall time, worst case ~7 minutes: env ~15 s, then decode (DECODE_T 190 s), GPU tests (TESTS_T 140 s) and the
# sanitizer (60 s) one after the other, while the kernel check (CHECK_T 390 s; ~5 min under triton 3.6 on 2
# cores, most of it compiles) runs beside them on the CPU.
# Every step has its own timeout and the script continues after a failure; exit status 0 unless the shell
# itself breaks (read the files). BENCH_TINY=1: CPU smoke mode (tiny widths, torch twins, a short check),
# which is how the script is tested without a GPU.
set -u
OUT="${OUT:-$(mktemp -d)}"; mkdir -p "$OUT"
exec > >(tee -a "$OUT/run.log") 2>&1
T0=$(date +%s)
step_end() { echo "=== step $1 rc=$2 elapsed_total=$(( $(date +%s) - T0 ))s"; }
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
cd "$ROOT" || exit 1
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
export ANGEL_HOME="$(mktemp -d)"
unset TRITON_INTERPRET ANGEL_OPS_BACKEND ANGEL_PAGED_OPS
TINY="${BENCH_TINY:-0}"
if [ -z "${PY:-}" ]; then
  if [ "$TINY" = 1 ] && [ -x .venv/bin/python ]; then PY=.venv/bin/python; else PY=python3; fi
fi

# ---- 0. environment -----------------------------------------------------------------------------------------
{ command -v nvidia-smi >/dev/null && nvidia-smi; uname -a; nproc; free -g; } 2>&1 | head -40
if ! timeout 60 "$PY" -c "import torch, triton" 2>/dev/null; then
  timeout 200 "$PY" -m pip install -q "torch>=2.10" pytest safetensors tokenizers typer rich numpy \
    || echo "pip install failed (no registry reachable?)"
fi
timeout 60 "$PY" - <<'PYEOF'
import sys, torch, triton
print("python", sys.version.split()[0], "torch", torch.__version__, "cuda", torch.version.cuda,
      "available", torch.cuda.is_available(), "triton", triton.__version__)
if torch.cuda.is_available():
    p = torch.cuda.get_device_properties(0)
    print("device", torch.cuda.get_device_name(), "cc", torch.cuda.get_device_capability(), "sms",
          p.multi_processor_count, "mem_gb", round(p.total_memory / 1e9, 1))
from angelcli.ops import tuning
dev = tuning.device_name()
print("config device name", dev, "shipped files for it:", sum(dev in n for n, _ in tuning.shipped_configs()))
PYEOF
step_end env $?

# ---- 1. kernel check in the background (mostly CPU: interpreter + sm_90a AOT), beside the GPU work ------------
if [ "$TINY" = 1 ]; then CHECK_ARGS=(--only quantize --only moe_align --only silu); CHECK_T=120; else CHECK_ARGS=(); CHECK_T="${CHECK_T:-390}"; fi
timeout -k 10 "$CHECK_T" "$PY" -m angelcli kernels --check --json --save "$OUT/kernels_check.json" "${CHECK_ARGS[@]}" \
  > /dev/null 2> "$OUT/kernels_check.log" &
CHECK_PID=$!

# ---- 2. engine decode benchmark on a full-width AntAngelMed-FP8 slice (weights built on the GPU) --------------
# BENCH_LAYERS default 8 (2 in BENCH_TINY): ~60 GB of weights, as each runner (graph and eager engine) holds its
# own copy of the experts with the shared one appended
BENCH_LAYERS="${BENCH_LAYERS:-}" OUT="$OUT" timeout -k 10 "${DECODE_T:-190}" "$PY" scripts/device_check_decode.py \
  > "$OUT/decode_bench.log" 2>&1
step_end decode_bench $?
tail -c 2500 "$OUT/decode_bench.log"

# ---- 3. GPU tests (skipped without CUDA) ------------------------------------------------------------------------
timeout -k 10 "${TESTS_T:-140}" "$PY" -m pytest -q -m gpu tests/test_ops_gpu.py -rfs -p no:cacheprovider \
  > "$OUT/gpu_tests.log" 2>&1
step_end gpu_tests $?
tail -n 25 "$OUT/gpu_tests.log"

# ---- 4. RoPE positions past the table under compute-sanitizer (GPU only), while the kernel check finishes ---------
if [ "$TINY" != 1 ]; then
  SAN=$(command -v compute-sanitizer || ls /usr/local/cuda*/bin/compute-sanitizer 2>/dev/null | head -n 1)
  ROPE_PY='
import torch
from angelcli.ops.rope import qk_norm_rope
from angelcli.ops import reference as ref
qkv = torch.randn(2, 6 * 128, device="cuda", dtype=torch.bfloat16)
w = torch.ones(128, device="cuda", dtype=torch.bfloat16)
table = ref.rope_cache(16, 64, 600000.0, torch.bfloat16, device="cuda")   # 16 positions
pos = torch.tensor([3, 100000], device="cuda")                            # far past the table
try:
    q, k = qk_norm_rope(qkv, pos, w, w, table, 4, 1, 1e-6); torch.cuda.synchronize()
    print("kernel returned; row with pos 100000:", q[1, 0, :4].tolist())
except Exception as e:
    print("refused:", type(e).__name__, e)
'
  if [ -n "$SAN" ]; then
    PYTORCH_NO_CUDA_MEMORY_CACHING=1 timeout -k 5 60 "$SAN" --tool memcheck --print-limit 5 "$PY" -c "$ROPE_PY" \
      > "$OUT/sanitizer.log" 2>&1
  else
    echo "compute-sanitizer not found; plain run:" > "$OUT/sanitizer.log"
    timeout -k 5 60 "$PY" -c "$ROPE_PY" >> "$OUT/sanitizer.log" 2>&1
  fi
  step_end rope_sanitizer $?
  tail -n 20 "$OUT/sanitizer.log"
else
  echo "BENCH_TINY=1: no GPU, sanitizer step skipped" > "$OUT/sanitizer.log"
fi

# ---- 5. the kernel check's report (a run stopped by CHECK_T leaves the rows done so far) -----------------------
wait "$CHECK_PID"; step_end kernels_check $?
tail -c 1500 "$OUT/kernels_check.log"
"$PY" - "$OUT/kernels_check.json" <<'PYEOF' || true
import json, sys
try:
    r = json.load(open(sys.argv[1]))
except (OSError, ValueError) as e:
    sys.exit(f"kernels --check: no report ({e}); see kernels_check.log")
bad = [(k["name"], k["failures"][:2]) for k in r["kernels"] if not k["ok"]]
spills = max([k.get("spill_bytes") or 0 for k in r["kernels"]], default=0)
print(f"kernels --check: ok={r['ok']} rows={len(r['kernels'])} failed={len(bad)} max_spill_bytes={spills} "
      f"triton={r['triton']} seconds={r['seconds']}" + (" PARTIAL (timed out)" if r.get("partial") else ""))
for b in bad[:10]:
    print("  FAIL", b)
PYEOF

echo "total $(( $(date +%s) - T0 ))s"; ls -la "$OUT"
exit 0
