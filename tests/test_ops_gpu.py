"""GPU suite (`just gpu-check`): compiled kernels vs twins on a CUDA device. Skipped without one.

Test weights are generated on the GPU (cases.randn), so a real-width case costs seconds, not the
40-120 s of building 3.2 G expert parameters on the CPU. The same cases as the interpreter tests,
plus sizes the interpreter is too slow for: the real
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


@pytest.mark.parametrize("t", [1, 33])
def test_fused_moe_prequantized_and_shared_expert_real_width(t):
    from angelcli import ops

    kw = cases.moe_inputs(t, 256, 8, 4096, 1024, "fp8_block", device="cuda", n_group=8, topk_group=4)
    want = ops.fused_moe(**kw)
    assert torch.equal(ops.fused_moe(**{**kw, "x": ops.quantize_act_fp8(kw["x"])}), want)
    g, u = cases.randn(1024, 4096, seed=21, scale=1 / 64, device="cuda"), cases.randn(1024, 4096, seed=22, scale=1 / 64,
                                                                                        device="cuda")
    d = cases.randn(4096, 1024, seed=23, scale=1 / 32, device="cuda")
    (gq, gs), (uq, us), (dq, ds) = (cases.quantize_weight_block(w) for w in (g, u, d))
    w13c, w2c, s13, s2, n = ops.append_shared_expert(kw["w13"], kw["w2"], gq, uq, dq, w13_scale=kw["w13_scale"],
                                                     w2_scale=kw["w2_scale"], gate_scale=gs, up_scale=us, down_scale=ds)
    w, ids = ops.shared_expert_routing(kw["topk_weights"], kw["topk_ids"], 256, n)
    combined = dict(x=kw["x"], w13=w13c, w2=w2c, topk_weights=w, topk_ids=ids, w13_scale=s13, w2_scale=s2)
    twin = ops.reference.fused_moe(**combined)
    assert cases.max_err(ops.fused_moe(**combined), twin) <= cases.bf16_tol(twin, cases.RTOL["fp8"])


@pytest.mark.parametrize("t", [1, 4096])  # last in the file: the device check's time limit cuts it first
def test_fused_decode_kernels_real_width(t):
    """The engine's fused kernels at AntAngelMed widths: router GEMM + top-k with the shared-expert slot,
    norm + FP8 quantisation, silu * up (+ FP8) at the dense layer's width, QK-norm + RoPE + KV write."""
    from angelcli.ops import cases_fused as cf

    for err, tol in (cf.run_route_gemm(t, 256, 4096, 8, 8, 4, 1, device="cuda"),
                     cf.run_rms_norm_fp8((t, 4096), device="cuda"),
                     cf.run_silu_mul(t, 9216, True, device="cuda"),
                     cf.run_qk_norm_rope_cache(t, 32, 4, 128, 64, 16, device="cuda")):
        assert err <= tol
    if t == 1:
        err, tol = cf.run_attention_decode_fp8([32768, 5, 4096], 32, 4, 128, 16, device="cuda")
        assert err <= tol
