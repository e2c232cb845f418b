"""GPU suite (`just gpu-check`): compiled kernels vs twins on a CUDA device. Skipped without one.

Test weights are generated on the GPU (cases.randn), so a real-width case costs seconds, not the
40-120 s of building 3.2 G expert parameters on the CPU. The same cases as the interpreter tests, plus sizes the interpreter is too slow for: the real
AntAngelMed widths (H 4096, I 1024, 256 experts, top-8, 32/4 heads of 128) at decode and prefill token
counts, long paged contexts for split-K decode, and every shipped launch config on the device it is for.
Throughput is measured by angelcli/ops/bench.py (`just bench-kernels`), not here.
"""

from __future__ import annotations

import pytest
import torch

from angelcli.ops import cases, check, tuning

pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]


@pytest.mark.parametrize("name", list(cases.CHECK_CASES))
def test_compiled_kernel_matches_twin(name):
    err, tol = cases.CHECK_CASES[name]("cuda")
    assert err <= tol


@pytest.mark.parametrize("t", [1, 33, 511, 4096])
@pytest.mark.parametrize("quant", ["bf16", "fp8_block", "fp8_channel"])
def test_fused_moe_real_width(t, quant):
    err, tol = cases.run_fused_moe(t, 256, 8, 4096, 1024, quant, device="cuda", n_group=8, topk_group=4)
    assert err <= tol


@pytest.mark.parametrize("t", [1, 33, 4096])
def test_route_and_norms_real_width(t):
    assert cases.run_route(t, 256, 8, 8, 4, device="cuda")[0] <= 2.5e-5
    err, tol = cases.run_rms_norm((t, 4096), device="cuda")
    assert err <= tol
    err, tol = cases.run_qk_norm_rope(t, 32, 4, 128, 64, device="cuda")
    assert err <= tol


@pytest.mark.parametrize("m,n,k", [(1, 5120, 4096), (33, 4096, 4096), (4096, 2048, 4096), (7, 4096, 9216)])
def test_fp8_gemm_real_shapes(m, n, k):
    err, tol = cases.run_fp8_gemm(m, n, k, "block", device="cuda")
    assert err <= tol


@pytest.mark.parametrize("lens", [[32768], [131072], [5, 70000, 1, 4096]])
def test_decode_long_context(lens):
    err, tol = cases.run_attention_decode(lens, 32, 4, 128, 16, device="cuda")
    assert err <= tol


def test_prefill_long_prompt():
    err, tol = cases.run_attention_prefill([8192, 300], [8192, 44], 32, 4, 128, 16, device="cuda")
    assert err <= tol


def test_shipped_configs_for_this_device_run():
    dev = tuning.device_name()
    rows = check._config_rows(gpu=True, interpret=False, device=dev)
    if not rows:
        pytest.skip(f"no shipped configs for {dev}")
    assert all(r["ok"] for r in rows), [(r["name"], r["failures"]) for r in rows if not r["ok"]]
