"""Inputs and comparisons shared by the kernel tests and `angel kernels --check`.

A case builds inputs on a device, runs one op through its Triton wrapper and through its torch twin, and
returns (max_err, tolerance). Exact outputs (ids, cache writes, quantised bytes) count mismatching
elements against a tolerance of 0; float outputs report max |kernel - twin| against rtol * max |twin|,
with rtol per dtype: the kernels reproduce the twin's rounding points, so what remains is fp32
summation order, which can flip the last bit of a bf16 result (2^-8 relative) and, rarely, one fp8
rounding (2^-4 relative to one product).
"""

from __future__ import annotations

import torch

from angelcli.ops import reference as ref

RTOL = {"bf16": 2e-2, "fp8": 3e-2, "fp32": 1e-5}


def max_err(out: torch.Tensor, want: torch.Tensor) -> float:
    if out.shape != want.shape:
        return float("inf")
    if out.numel() == 0:
        return 0.0
    return float((out.double() - want.to(out.device).double()).abs().max())


def bf16_tol(want: torch.Tensor, rtol: float = RTOL["bf16"]) -> float:
    return rtol * max(float(want.double().abs().max()) if want.numel() else 0.0, 1e-3)


def mismatches(out: torch.Tensor, want: torch.Tensor) -> float:
    if out.shape != want.shape:
        return float("inf")
    if out.dtype == torch.float8_e4m3fn:
        out, want = out.view(torch.uint8), want.view(torch.uint8)
    return float((out != want.to(out.device)).sum())


# ---------------------------------------------------------------------------------------- test weights


def quantize_weight_block(w: torch.Tensor, block: int = 128) -> tuple[torch.Tensor, torch.Tensor]:
    """Round-to-nearest FP8 block quantisation of [..., N, K] for test data -> (fp8, scale_inv [..., gn, gk])."""
    *lead, n, k = w.shape
    gn, gk = -(-n // block), -(-k // block)
    wp = torch.nn.functional.pad(w.float(), (0, gk * block - k, 0, gn * block - n))
    wp = wp.view(*lead, gn, block, gk, block)
    s = wp.abs().amax(dim=(-3, -1)).clamp(min=1e-4) / ref.FP8_MAX
    q = (wp / s[..., :, None, :, None]).clamp(-ref.FP8_MAX, ref.FP8_MAX).to(torch.float8_e4m3fn)
    return q.view(*lead, gn * block, gk * block)[..., :n, :k].contiguous(), s


def quantize_weight_channel(w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-output-channel FP8 quantisation of [..., N, K] -> (fp8, scale [..., N])."""
    s = w.float().abs().amax(dim=-1).clamp(min=1e-4) / ref.FP8_MAX
    return (w.float() / s[..., None]).clamp(-ref.FP8_MAX, ref.FP8_MAX).to(torch.float8_e4m3fn), s


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def randn(*shape, seed: int, scale: float = 1.0, dtype=torch.bfloat16, device="cpu") -> torch.Tensor:
    """Seeded normal values generated where they will live: real-width GPU cases (3.2 G expert parameters)
    must not be built and quantised on the CPU. CPU and CUDA generators give different values."""
    dev = torch.device(device)
    g = torch.Generator(device=dev).manual_seed(seed)
    out = torch.randn(*shape, generator=g, device=dev)
    return (out.mul_(scale) if scale != 1.0 else out).to(dtype)


# ------------------------------------------------------------------------------------------------ cases


def moe_inputs(t: int, e: int, k: int, h: int, i: int, quant: str, seed: int = 0, device="cpu",
               n_group: int = 1, topk_group: int = 1) -> dict:
    """Keyword arguments for fused_moe: random bf16 weights, optionally FP8-quantised, routed by `route`."""
    x = randn(t, h, seed=seed, device=device)
    w13 = randn(e, 2 * i, h, seed=seed + 1, scale=h ** -0.5, device=device)  # built (and quantised) on device
    w2 = randn(e, h, i, seed=seed + 2, scale=i ** -0.5, device=device)
    logits = torch.randn(t, e, generator=gen(seed + 3))
    weights, ids = ref.route(logits, torch.randn(e, generator=gen(seed + 4)) * 0.05, k, n_group, topk_group, 2.5)
    kw = dict(x=x, topk_weights=weights.to(device), topk_ids=ids.to(device))
    if quant == "bf16":
        kw.update(w13=w13.to(device), w2=w2.to(device))
    else:
        fn = quantize_weight_block if quant == "fp8_block" else quantize_weight_channel
        (q13, s13), (q2, s2) = fn(w13), fn(w2)
        kw.update(w13=q13.to(device), w2=q2.to(device), w13_scale=s13.to(device), w2_scale=s2.to(device))
    return kw


def run_fused_moe(t, e, k, h, i, quant, device="cpu", config=None, seed=0, n_group=1, topk_group=1):
    from angelcli.ops.moe import fused_moe

    kw = moe_inputs(t, e, k, h, i, quant, seed, device, n_group, topk_group)
    out = fused_moe(**kw, config=config)
    want = ref.fused_moe(**kw)  # the twin runs on the same device (on CUDA: fp32 matmuls, no TF32)
    return max_err(out, want), bf16_tol(want, RTOL["fp8" if quant != "bf16" else "bf16"])


def run_fp8_gemm(m, n, k, layout, device="cpu", prequantized=False, config=None, seed=0):
    from angelcli.ops.fp8 import fp8_gemm, quantize_fp8

    x = randn(m, k, seed=seed, device=device)
    w = randn(n, k, seed=seed + 1, scale=k ** -0.5, device=device)
    wq, ws = quantize_weight_block(w) if layout == "block" else quantize_weight_channel(w)
    wq, ws = wq.to(device), ws.to(device)
    if prequantized:
        xq, xs = quantize_fp8(x)
        out = fp8_gemm(xq, wq, ws, x_scale=xs, config=config)
    else:
        out = fp8_gemm(x, wq, ws, config=config)
    want = ref.fp8_gemm(x, wq, ws)
    return max_err(out, want), bf16_tol(want, RTOL["fp8"])


def run_quantize_fp8(m, k, device="cpu", seed=0):
    from angelcli.ops.fp8 import quantize_fp8

    x = randn(m, k, seed=seed, scale=4.0, device=device)
    if m and k > 8:
        x[0, :8] = 0  # an all-zero stretch: the 1e-10 amax floor
    q, s = quantize_fp8(x)
    q2, s2 = ref.quantize_fp8(x)
    return mismatches(q, q2) + mismatches(s, s2), 0.0


def run_moe_align(t, k, e, block_m, device="cpu", seed=0):
    from angelcli.ops.align import moe_align

    g = gen(seed)
    ids = torch.stack([torch.randperm(e, generator=g)[:k] for _ in range(t)]) if t else torch.zeros(0, k)
    ids = ids.to(torch.int32).to(device)
    got = moe_align(ids, e, block_m)
    want = ref.moe_align(ids, e, block_m)
    valid = int(want[2])  # expert ids past num_post_padded are never read; sorted ids there are sentinels
    err = mismatches(got[0], want[0]) + mismatches(got[2], want[2])
    err += mismatches(got[1][: valid // block_m], want[1][: valid // block_m])
    return err, 0.0


def run_route(t, e, k, n_group, topk_group, device="cpu", seed=0, ties=False):
    from angelcli.ops.router import route

    logits = torch.zeros(t, e) if ties else torch.randn(t, e, generator=gen(seed)) * 2
    bias = torch.zeros(e) if ties else torch.randn(e, generator=gen(seed + 1)) * 0.1
    w, ids = route(logits.to(device), bias.to(device), k, n_group, topk_group, 2.5)
    w2, ids2 = ref.route(logits.to(device), bias.to(device), k, n_group, topk_group, 2.5)
    if mismatches(ids, ids2):
        return float("inf"), RTOL["fp32"] * 2.5
    return max_err(w, w2), RTOL["fp32"] * 2.5


def run_rms_norm(shape, device="cpu", residual=True, seed=0):
    from angelcli.ops.rmsnorm import rms_norm

    x = randn(*shape, seed=seed, device=device)
    w = (torch.rand(shape[-1], generator=gen(seed + 1)) + 0.5).to(torch.bfloat16).to(device)
    r = randn(*shape, seed=seed + 2, device=device) if residual else None
    got = rms_norm(x, w, 1e-6, residual=r)
    want = ref.rms_norm(x, w, 1e-6, residual=r)
    if residual:
        return max(max_err(got[0], want[0]), mismatches(got[1], want[1]) * 1e9), bf16_tol(want[0])
    return max_err(got, want), bf16_tol(want)


def run_qk_norm_rope(t, hq, hkv, d, rot, device="cpu", seed=0):
    from angelcli.ops.rope import qk_norm_rope

    qkv = randn(t, (hq + 2 * hkv) * d, seed=seed, scale=3.0, device=device)
    pos = torch.randint(0, 131072, (t,), generator=gen(seed + 1)).to(device)
    qw = (torch.rand(d, generator=gen(seed + 2)) + 0.5).to(torch.bfloat16).to(device)
    kw = (torch.rand(d, generator=gen(seed + 3)) + 0.5).to(torch.bfloat16).to(device)
    cache = ref.rope_cache(131072, rot, 600000.0).to(device)
    q, k = qk_norm_rope(qkv, pos, qw, kw, cache, hq, hkv, 1e-6)
    q2, k2 = ref.qk_norm_rope(qkv, pos, qw, kw, cache, hq, hkv, 1e-6)
    return max(max_err(q, q2), max_err(k, k2)), bf16_tol(torch.cat([q2.flatten(), k2.flatten()]))


def paged_cache(lens, hkv, d, block_size, device="cpu", seed=0):
    """Caches filled for sequences of `lens` tokens through shuffled blocks -> (k_cache, v_cache, table, lens)."""
    bsz = len(lens)
    per = max(1, max(-(-n // block_size) for n in lens))
    nb = bsz * per + 2
    table = torch.randperm(nb, generator=gen(seed))[: bsz * per].view(bsz, per).to(torch.int32)
    k_cache = randn(nb, block_size, hkv, d, seed=seed + 1)
    v_cache = randn(nb, block_size, hkv, d, seed=seed + 2)
    return (k_cache.to(device), v_cache.to(device), table.to(device),
            torch.tensor(lens, dtype=torch.int32).to(device))


def run_kv_cache_write(t, hkv, d, block_size, device="cpu", seed=0):
    from angelcli.ops.attention import kv_cache_write

    kc, vc, table, _ = paged_cache([t], hkv, d, block_size, device, seed)
    k = randn(t, hkv, d, seed=seed + 5, device=device)
    v = randn(t, hkv, d, seed=seed + 6, device=device)
    pos = torch.arange(t)
    slots = (table.cpu()[0, pos // block_size].long() * block_size + pos % block_size).to(device)
    slots[::5] = -1  # padding tokens are skipped
    kc2, vc2 = kc.clone(), vc.clone()
    kv_cache_write(k, v, kc, vc, slots)
    ref.kv_cache_write(k, v, kc2, vc2, slots)
    return mismatches(kc, kc2) + mismatches(vc, vc2), 0.0


def run_attention_prefill(lens, q_lens, hq, hkv, d, block_size, device="cpu", seed=0):
    from angelcli.ops.attention import attention_prefill

    kc, vc, table, seq = paged_cache(lens, hkv, d, block_size, device, seed)
    cu = torch.tensor([0] + list(torch.tensor(q_lens).cumsum(0).tolist()), dtype=torch.int32).to(device)
    q = randn(int(cu[-1]), hq, d, seed=seed + 7, device=device)
    out = attention_prefill(q, kc, vc, table, cu, seq, max_q_len=max(q_lens))
    want = ref.attention_prefill(q, kc, vc, table, cu, seq)
    return max_err(out, want), bf16_tol(want)


def run_attention_decode(lens, hq, hkv, d, block_size, num_splits=None, device="cpu", seed=0):
    from angelcli.ops.decode_attention import attention_decode

    kc, vc, table, seq = paged_cache(lens, hkv, d, block_size, device, seed)
    q = randn(len(lens), hq, d, seed=seed + 7, device=device)
    out = attention_decode(q, kc, vc, table, seq, num_splits=num_splits)
    want = ref.attention_decode(q, kc, vc, table, seq)
    return max_err(out, want), bf16_tol(want)


def _fused(name: str):
    from angelcli.ops import cases_fused  # imports this module's helpers: resolved at call time

    return getattr(cases_fused, name)


# The op-level cases `angel kernels --check` runs (small shapes: the interpreter is slow). name -> runner
CHECK_CASES = {
    "moe_align": lambda dev: run_moe_align(33, 8, 256, 16, dev),
    "route": lambda dev: run_route(33, 256, 8, 8, 4, dev),
    "fused_moe[bf16]": lambda dev: run_fused_moe(33, 8, 2, 256, 128, "bf16", dev),
    "fused_moe[fp8_block]": lambda dev: run_fused_moe(33, 8, 2, 256, 128, "fp8_block", dev),
    "fused_moe[fp8_channel]": lambda dev: run_fused_moe(17, 8, 2, 136, 72, "fp8_channel", dev),
    "rms_norm": lambda dev: run_rms_norm((33, 512), dev),
    "qk_norm_rope": lambda dev: run_qk_norm_rope(33, 8, 1, 128, 64, dev),
    "kv_cache_write": lambda dev: run_kv_cache_write(33, 4, 128, 16, dev),
    "attention_prefill": lambda dev: run_attention_prefill([40, 17], [7, 17], 8, 1, 128, 16, dev),
    "attention_decode": lambda dev: run_attention_decode([300, 5], 8, 1, 128, 16, 4, dev),
    "quantize_fp8": lambda dev: run_quantize_fp8(33, 300, dev),
    "fp8_gemm[block]": lambda dev: run_fp8_gemm(33, 256, 300, "block", dev),
    "fp8_gemm[channel]": lambda dev: run_fp8_gemm(17, 130, 256, "channel", dev),
    "fp8_gemm[prequantized]": lambda dev: run_fp8_gemm(33, 256, 256, "block", dev, prequantized=True),
    # the engine's fused kernels (runners in cases_fused.py)
    "route_gemm[decode]": lambda dev: _fused("run_route_gemm")(1, 256, 128, 8, 8, 4, 1, dev),
    "route_gemm[prefill]": lambda dev: _fused("run_route_gemm")(70, 64, 96, 6, 8, 4, 0, dev),
    "rms_norm_fp8": lambda dev: _fused("run_rms_norm_fp8")((17, 384), dev),
    "silu_mul": lambda dev: _fused("run_silu_mul")(17, 192, True, dev),
    "qk_norm_rope_cache": lambda dev: _fused("run_qk_norm_rope_cache")(21, 8, 1, 128, 64, 16, dev),
    "attention_decode_fp8": lambda dev: _fused("run_attention_decode_fp8")([300, 5], 8, 1, 128, 16, 4, dev),
    "quantize_act_fp8": lambda dev: _fused("run_quantize_act_fp8")(9, 320, 128, True, dev),
}
FP8_CASES = {"fused_moe[fp8_block]", "fused_moe[fp8_channel]", "fp8_gemm[block]", "fp8_gemm[channel]",
             "fp8_gemm[prequantized]", "quantize_fp8", "rms_norm_fp8", "silu_mul", "attention_decode_fp8",
             "quantize_act_fp8"}


# ------------------------------------------------------------------------------- real-shape meta launches
# AntAngelMed shapes (shared/spec/bailing-moe-v2.md §1): H 4096, 32 q / 4 kv heads of 128, E 256, top-8,
# groups 8 / 4, I 1024, rotary 64. Called with meta tensors the wrappers run every check and config choice
# and record their launches without allocating, so `aot.aot_compile` sees exactly the real signatures.
H, HQ, HKV, D, E, TOP_K, INTER, ROT = 4096, 32, 4, 128, 256, 8, 1024, 64
DENSE_INTER = 9216  # intermediate_size of the dense first layer


def _meta(*shape, dtype=torch.bfloat16):
    return torch.empty(*shape, dtype=dtype, device="meta")


def real_shape_call(case: str, m: int) -> None:
    """Call the wrapper behind `case` (a CHECK_CASES name) on meta tensors for m tokens (or sequences)."""
    f8, i32, f32 = torch.float8_e4m3fn, torch.int32, torch.float32
    op = case.split("[")[0]
    if op == "moe_align":
        from angelcli.ops.align import moe_align

        moe_align(_meta(m, TOP_K, dtype=i32), E, 16 if m < 1024 else 64)
    elif op == "route":
        from angelcli.ops.router import route

        route(_meta(m, E, dtype=f32), _meta(E, dtype=f32), TOP_K, 8, 4, 2.5)
    elif op == "fused_moe":
        from angelcli.ops.moe import fused_moe

        quant = case[len("fused_moe["):-1]
        wdt = torch.bfloat16 if quant == "bf16" else f8
        kw = {}
        if quant == "fp8_block":
            kw = dict(w13_scale=_meta(E, 2 * INTER // 128, H // 128, dtype=f32),
                      w2_scale=_meta(E, H // 128, INTER // 128, dtype=f32))
        elif quant == "fp8_channel":
            kw = dict(w13_scale=_meta(E, 2 * INTER, dtype=f32), w2_scale=_meta(E, H, dtype=f32))
        fused_moe(_meta(m, H), _meta(E, 2 * INTER, H, dtype=wdt), _meta(E, H, INTER, dtype=wdt),
                  _meta(m, TOP_K, dtype=f32), _meta(m, TOP_K, dtype=i32), **kw)
    elif op == "rms_norm":
        from angelcli.ops.rmsnorm import rms_norm

        rms_norm(_meta(m, H), _meta(H), 1e-6, residual=_meta(m, H))
    elif op == "qk_norm_rope":
        from angelcli.ops.rope import qk_norm_rope

        qk_norm_rope(_meta(m, (HQ + 2 * HKV) * D), _meta(m, dtype=torch.int64), _meta(D), _meta(D),
                     _meta(131072, ROT), HQ, HKV, 1e-6)
    elif op == "kv_cache_write":
        from angelcli.ops.attention import kv_cache_write

        kv_cache_write(_meta(m, HKV, D), _meta(m, HKV, D), _meta(8192, 16, HKV, D), _meta(8192, 16, HKV, D),
                       _meta(m, dtype=torch.int64))
    elif op == "attention_prefill":
        from angelcli.ops.attention import attention_prefill

        attention_prefill(_meta(m, HQ, D), _meta(8192, 16, HKV, D), _meta(8192, 16, HKV, D),
                          _meta(1, 8192, dtype=i32), _meta(2, dtype=i32), _meta(1, dtype=i32), max_q_len=m)
    elif op == "attention_decode":
        from angelcli.ops.decode_attention import attention_decode

        attention_decode(_meta(m, HQ, D), _meta(8192, 16, HKV, D), _meta(8192, 16, HKV, D),
                         _meta(m, 8192, dtype=i32), _meta(m, dtype=i32))
    elif op == "quantize_fp8":
        from angelcli.ops.fp8 import quantize_fp8

        quantize_fp8(_meta(m, H))
    elif op == "fp8_gemm":
        from angelcli.ops.fp8 import fp8_gemm

        variant = case[len("fp8_gemm["):-1]
        scale = _meta(HQ + 2 * HKV, H // 128, dtype=f32) if variant != "channel" else _meta(5120, dtype=f32)
        x = _meta(m, H, dtype=f8) if variant == "prequantized" else _meta(m, H)
        xs = _meta(m, H // 128, dtype=f32) if variant == "prequantized" else None
        fp8_gemm(x, _meta(5120, H, dtype=f8), scale, x_scale=xs)
    elif op == "route_gemm":  # router weight bf16 as loaded; the shared expert joins as one more slot
        from angelcli.ops.router_gemm import route_gemm

        route_gemm(_meta(m, H), _meta(E, H), _meta(E, dtype=f32), TOP_K, 8, 4, 2.5, 1)
    elif op == "rms_norm_fp8":
        from angelcli.ops.rmsnorm import rms_norm_fp8

        rms_norm_fp8(_meta(m, H), _meta(H), 1e-6, residual=_meta(m, H))
        rms_norm_fp8(_meta(m, H), _meta(H), 1e-6)
    elif op == "silu_mul":  # the dense first layer's MLP (I 9216) and a shared-expert-sized one
        from angelcli.ops.activation import silu_mul

        silu_mul(_meta(m, 2 * DENSE_INTER), quant=True)
        silu_mul(_meta(m, 2 * INTER), quant=False)
    elif op == "qk_norm_rope_cache":
        from angelcli.ops.rope import qk_norm_rope_cache

        qk_norm_rope_cache(_meta(m, (HQ + 2 * HKV) * D), _meta(m, dtype=torch.int64), _meta(D), _meta(D),
                           _meta(131072, ROT), HQ, HKV, 1e-6, _meta(8192, 16, HKV, D), _meta(8192, 16, HKV, D),
                           _meta(m, dtype=torch.int64))
    elif op == "attention_decode_fp8":
        from angelcli.ops.decode_attention import attention_decode_fp8

        attention_decode_fp8(_meta(m, HQ, D), _meta(8192, 16, HKV, D), _meta(8192, 16, HKV, D),
                             _meta(m, 8192, dtype=i32), _meta(m, dtype=i32))
    elif op == "quantize_act_fp8":
        from angelcli.ops.fp8 import quantize_act_fp8

        quantize_act_fp8(_meta(m, H))
        quantize_act_fp8(_meta(m, DENSE_INTER))
    else:
        raise KeyError(case)


REAL_M = (1, 4096)  # decode-sized and prefill-sized launches (different default tiles)
