"""Check cases for the engine's fused decode-path kernels (the rest: angelcli/ops/cases.py, same conventions).

Each runner builds inputs on a device, runs the Triton wrapper and its torch twin (angelcli/ops/reference.py)
and returns (max_err, tolerance). Where a kernel also quantises its own output to FP8, the FP8 pair must
equal `reference.quantize_fp8` of the kernel's own bf16 output bit for bit (a mismatch counts as 1e9), and
the bf16 output is compared with the twin to a bf16 rounding.
"""

from __future__ import annotations

import torch

from angelcli.ops import reference as ref
from angelcli.ops.cases import RTOL, bf16_tol, gen, max_err, mismatches, paged_cache, randn


def run_route_gemm(t, e, h, k, n_group, topk_group, n_shared=0, device="cpu", seed=0):
    """Router GEMM + grouped top-k in one launch vs reference.route_gemm: ids exact, weights and logits to
    fp32 summation order."""
    from angelcli.ops.router_gemm import route_gemm

    x = randn(t, h, seed=seed, device=device)
    w = randn(e, h, seed=seed + 1, scale=2 * h ** -0.5, device=device)  # logits ~ N(0, 4), as run_route
    bias = (torch.randn(e, generator=gen(seed + 2)) * 0.1).to(device)
    got = route_gemm(x, w, bias, k, n_group, topk_group, 2.5, n_shared)
    want = ref.route_gemm(x, w, bias, k, n_group, topk_group, 2.5, n_shared)
    if mismatches(got[1], want[1]):
        return float("inf"), RTOL["fp32"] * 2.5
    logits_err = max_err(got[2], want[2]) * 2.5 * RTOL["fp32"] / max(bf16_tol(want[2], RTOL["fp32"]), 1e-30)
    return max(max_err(got[0], want[0]), logits_err), RTOL["fp32"] * 2.5


def run_rms_norm_fp8(shape, device="cpu", residual=True, seed=0):
    """Fused (residual add +) RMSNorm + FP8 quantisation of the output vs the twin: the bf16 output to a
    bf16 rounding; the quantisation of the kernel's own output exactly."""
    from angelcli.ops.rmsnorm import rms_norm_fp8

    x = randn(*shape, seed=seed, device=device)
    w = (torch.rand(shape[-1], generator=gen(seed + 1)) + 0.5).to(torch.bfloat16).to(device)
    r = randn(*shape, seed=seed + 2, device=device) if residual else None
    y, s, (q, scale) = rms_norm_fp8(x, w, 1e-6, r)
    y2, s2, _ = ref.rms_norm_fp8(x, w, 1e-6, r)
    q2, scale2 = ref.quantize_fp8(y)
    exact = mismatches(q, q2) + mismatches(scale, scale2) + (mismatches(s, s2) if residual else 0.0)
    return max(max_err(y, y2), exact * 1e9), bf16_tol(y2)


def run_silu_mul(n, inter, quant=True, device="cpu", seed=0):
    """silu(gate) * up (+ FP8 quantisation) vs the twin: h to a bf16 rounding, its quantisation exactly."""
    from angelcli.ops.activation import silu_mul

    gu = randn(n, 2 * inter, seed=seed, scale=2.0, device=device)
    h, hq = silu_mul(gu, quant)
    h2, _ = ref.silu_mul(gu, quant)
    exact = 0.0
    if quant:
        q2, s2 = ref.quantize_fp8(h)
        exact = mismatches(hq[0], q2) + mismatches(hq[1], s2)
    return max(max_err(h, h2), exact * 1e9), bf16_tol(h2)


def run_qk_norm_rope_cache(t, hq, hkv, d, rot, block_size=16, device="cpu", seed=0):
    """QK-norm + RoPE + paged KV write vs qk_norm_rope then kv_cache_write of the twin: q, k to a bf16
    rounding; the cache contents exactly (padding slots -1 write nothing)."""
    from angelcli.ops.rope import qk_norm_rope_cache

    qkv = randn(t, (hq + 2 * hkv) * d, seed=seed, scale=3.0, device=device)
    pos = torch.randint(0, 4096, (t,), generator=gen(seed + 1)).to(device)
    qw = (torch.rand(d, generator=gen(seed + 2)) + 0.5).to(torch.bfloat16).to(device)
    kw = (torch.rand(d, generator=gen(seed + 3)) + 0.5).to(torch.bfloat16).to(device)
    table = ref.rope_cache(4096, rot, 600000.0).to(device)
    kc, vc, blocks, _ = paged_cache([t], hkv, d, block_size, device, seed)
    p = torch.arange(t)
    slots = (blocks.cpu()[0, p // block_size].long() * block_size + p % block_size)
    slots[::5] = -1
    slots = slots.to(device)
    kc2, vc2 = kc.clone(), vc.clone()
    q, k = qk_norm_rope_cache(qkv, pos, qw, kw, table, hq, hkv, 1e-6, kc, vc, slots)
    q2, k2 = ref.qk_norm_rope_cache(qkv, pos, qw, kw, table, hq, hkv, 1e-6, kc2, vc2, slots)
    ok = slots >= 0
    # v is copied untouched and the kernel's k rows land as they are: exact; the rest to a bf16 rounding
    exact = mismatches(vc, vc2) + mismatches(kc.view(-1, hkv, d)[slots[ok]], k[ok])
    return (max(max_err(q, q2), max_err(k, k2), max_err(kc, kc2), exact * 1e9),
            bf16_tol(torch.cat([q2.flatten(), k2.flatten()])))


def run_attention_decode_fp8(lens, hq, hkv, d, block_size, num_splits=None, device="cpu", seed=0):
    """Split-K decode attention whose merge also quantises each head: out vs the twin's attention; the
    FP8 pair exactly equal to quantising the kernel's own out."""
    from angelcli.ops.decode_attention import attention_decode_fp8

    kc, vc, table, seq = paged_cache(lens, hkv, d, block_size, device, seed)
    q = randn(len(lens), hq, d, seed=seed + 7, device=device)
    out, (oq, scale) = attention_decode_fp8(q, kc, vc, table, seq, num_splits=num_splits)
    want, _ = ref.attention_decode_fp8(q, kc, vc, table, seq)
    q2, s2 = ref.quantize_fp8(out.reshape(len(lens), -1))
    exact = mismatches(oq, q2) + mismatches(scale, s2)
    return max(max_err(out, want), exact * 1e9), bf16_tol(want)


def run_quantize_act_fp8(m, k, group=128, strided=True, device="cpu", seed=0):
    """The per-layer activation quantisation on strided rows (a view into a wider buffer) vs the twin: exact."""
    from angelcli.ops.fp8 import quantize_act_fp8

    wide = randn(m, k + 64, seed=seed, scale=4.0, device=device)
    x = wide[:, :k] if strided else wide[:, :k].contiguous()
    if m and k > 8:
        x[0, :8] = 0
    q, s = quantize_act_fp8(x, group)
    q2, s2 = ref.quantize_act_fp8(x, group)
    return mismatches(q, q2) + mismatches(s, s2), 0.0
