"""Fused MoE: grouped GEMMs over expert-sorted tokens, BF16 or FP8 e4m3 weights.

    x [T, H] ──moe_align──> sorted pairs ──GEMM1 (w13, SiLU·mul)──> h [T*K, I] ──GEMM2 (w2)──> y [T*K, H]
      ──weighted top-k sum──> out [T, H]

Layouts (docs/kernels.md): w13 [E, 2I, H] = gate rows then up rows, w2 [E, H, I]. FP8: weights
float8_e4m3fn with either 128x128 block scales (`weight_scale_inv` semantics, a multiplier):
w13_scale [E, ceil(2I/128), ceil(H/128)], w2_scale [E, ceil(H/128), ceil(I/128)], or per-channel scales
w13_scale [E, 2I], w2_scale [E, H]. Activations are quantised per token and per 128-channel group
(dynamic, DeepSeek / vLLM block-FP8 style) by their own kernel (`quantize_act_fp8`), once per call or
once per layer by the caller (x = (xq, scale)): the GEMMs only load fp8 A tiles and their scales, then
multiply the fp32 partial product by a_scale[row] * b_scale[col]. GEMM1's bf16 output h is quantised
the same way before GEMM2 (numerically what the reference does: HF's down projection of an FP8 model
sees an activation quantised per token and group). The block layout needs I % 128 == 0 (otherwise a
scale block would mix gate and up rows); H and the per-channel layout have no such limit.

Launches per call, FP8: quantize x (skipped when given pre-quantised), moe_align, GEMM1, quantize h,
GEMM2, weighted sum. BF16: moe_align, GEMM1, GEMM2, weighted sum.

Grid: one program per (BLOCK_M rows of sorted pairs, BLOCK_N weight rows: BLOCK_N / 2 gate+up pairs in
GEMM1, BLOCK_N output columns in GEMM2), with GROUP_SIZE_M
swizzling so consecutive programs reuse weight tiles from L2. Row r of a block holds pair p =
sorted_ids[r]; GEMM1 reads token p // K, both GEMMs write row p; sentinel rows (p = T*K) are masked;
blocks past num_post_padded exit at once. Every row of a block belongs to expert_ids[block].

Numerics copy the HF expert MLP (shared/spec/bailing-moe-v2.md §3.4-3.5): gate and up are rounded to
bf16, silu(gate) is rounded, silu*up is rounded; the down projection is rounded to bf16 per (token,
expert); then the top-k reduction multiplies each bf16 expert output by its fp32 routing weight and sums
in fp32, in slot order, before the final cast. The routing weight is therefore applied in the reduction
kernel rather than in GEMM2's epilogue: applying it there and storing bf16 would add a rounding HF does
not have, and storing fp32 would double the [T*K, H] intermediate.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from angelcli.ops._runtime import cdiv, check_tensor, launch, next_pow2
from angelcli.ops.align import moe_align
from angelcli.ops.fp8 import quantize_act_fp8, split_prequantized
from angelcli.ops.reference import FP8_GROUP, fp8_scale_layout
from angelcli.ops.tuning import moe_config, validate_config

QUANT_IDS = {"bf16": 0, "fp8_block": 1, "fp8_channel": 2}


@triton.jit
def _moe_gemm_kernel(
    # pointers
    a_ptr, a_scale_ptr, w_ptr, w_scale_ptr, out_ptr, sorted_ids_ptr, expert_ids_ptr, total_ptr,
    # sizes
    n_out, k_dim, num_pairs, capacity, a_row_div, up_offset,
    # strides
    stride_a, stride_as, stride_we, stride_wn, stride_se, stride_sn, stride_sk, stride_out,
    # meta-parameters
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, GROUP_M: tl.constexpr,
    GATED: tl.constexpr, QUANT: tl.constexpr,
):
    """out[p, n] for sorted pairs p: GATED -> bf16(silu(A W_gate^T) * (A W_up^T)), else bf16(A W^T).

    a [rows, k_dim] (row = p // a_row_div; fp8 with a_scale [rows, k_dim/128] when QUANT > 0),
    w [E, *, k_dim], out [pairs, n_out]. QUANT: 0 bf16 weights, 1 fp8 with 128x128 block scales,
    2 fp8 with per-channel scales.
    GATED tiles interleave gate and up weight rows: tile column j reads weight row
    n0 + j // 2 (+ up_offset when j is odd), so one [BLOCK_K, BLOCK_N] B tile, one dot and one fp32
    accumulator cover BLOCK_N / 2 outputs; the epilogue splits even (gate) and odd (up) columns.
    """
    # ---- map the program id to an (M block, N block) pair, GROUP_M blocks of M at a time -------------------
    HALF: tl.constexpr = BLOCK_N // 2 if GATED else BLOCK_N  # output columns per tile
    pid = tl.program_id(0)
    num_pid_m = tl.cdiv(capacity, BLOCK_M)
    num_pid_n = tl.cdiv(n_out, HALF)
    in_group = GROUP_M * num_pid_n
    first_m = (pid // in_group) * GROUP_M
    group_rows = tl.minimum(num_pid_m - first_m, GROUP_M)
    pid_m = first_m + (pid % in_group) % group_rows
    pid_n = (pid % in_group) // group_rows
    if pid_m * BLOCK_M >= tl.load(total_ptr):
        return  # padding blocks beyond the last expert's run
    # ---- rows (sorted pairs), their expert, and the weight rows of the tile ----------------------------------
    rows = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    pair = tl.load(sorted_ids_ptr + rows)
    row_ok = pair < num_pairs
    a_row = (pair // a_row_div).to(tl.int64)
    expert = tl.load(expert_ids_ptr + pid_m).to(tl.int64)
    j = tl.arange(0, BLOCK_N)
    if GATED:
        out_col = pid_n * HALF + j // 2
        w_row = out_col + (j % 2) * up_offset
    else:
        out_col = pid_n * BLOCK_N + j
        w_row = out_col
    col_ok = out_col < n_out
    kk = tl.arange(0, BLOCK_K)
    a_ptrs = a_ptr + a_row[:, None] * stride_a + kk[None, :]
    w_ptrs = w_ptr + expert * stride_we + w_row[None, :].to(tl.int64) * stride_wn + kk[:, None]  # [BK, BN]
    as_ptrs = a_scale_ptr + a_row * stride_as
    s_base = w_scale_ptr + expert * stride_se
    ws_ptrs = s_base + (w_row // 128) * stride_sn
    acc = tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.float32)
    # ---- K loop: one accumulator, one dot per step ------------------------------------------------------------
    for kb in range(0, tl.cdiv(k_dim, BLOCK_K)):
        k_ok = kk < k_dim - kb * BLOCK_K
        a = tl.load(a_ptrs, mask=row_ok[:, None] & k_ok[None, :], other=0.0)
        b = tl.load(w_ptrs, mask=k_ok[:, None] & col_ok[None, :], other=0.0)
        if QUANT == 0:
            acc = tl.dot(a, b, acc)
        else:
            a_scale = tl.load(as_ptrs + kb, mask=row_ok, other=0.0)  # [BM]
            if QUANT == 1:
                w_scale = tl.load(ws_ptrs + kb * stride_sk, mask=col_ok, other=0.0)  # [BN]
                acc += tl.dot(a, b) * (a_scale[:, None] * w_scale[None, :])
            else:
                acc += tl.dot(a, b) * a_scale[:, None]
        a_ptrs += BLOCK_K
        w_ptrs += BLOCK_K
    if QUANT == 2:  # per-channel weight scales apply once, after the loop
        acc = acc * tl.load(s_base + w_row * stride_sn, mask=col_ok, other=0.0)[None, :]
    # ---- epilogue: HF rounding points, then scatter to the pair's row ------------------------------------------
    out_ty = out_ptr.dtype.element_ty
    if GATED:
        gate, up = tl.split(tl.reshape(acc, (BLOCK_M, HALF, 2)))  # even columns: gate, odd: up
        gate = gate.to(out_ty).to(tl.float32)
        silu = (gate / (1.0 + tl.exp(-gate))).to(out_ty).to(tl.float32)
        res = (silu * up.to(out_ty).to(tl.float32)).to(out_ty)
    else:
        res = acc.to(out_ty)
    oc = pid_n * HALF + tl.arange(0, HALF)
    o_ptrs = out_ptr + pair[:, None].to(tl.int64) * stride_out + oc[None, :]
    tl.store(o_ptrs, res, mask=row_ok[:, None] & (oc < n_out)[None, :])


@triton.jit
def _moe_weighted_sum_kernel(
    # pointers
    y_ptr, w_ptr, out_ptr,
    # sizes
    num_tokens, hidden,
    # strides
    stride_y, stride_w, stride_out,
    # meta-parameters
    BLOCK_T: tl.constexpr, BLOCK_H: tl.constexpr, TOP_K: tl.constexpr,
):
    """out[t] = bf16(sum_k fp32(y[t*K + k]) * w[t, k]), summed in slot order; BLOCK_T tokens per program."""
    tok = tl.program_id(0).to(tl.int64) * BLOCK_T + tl.arange(0, BLOCK_T)[:, None]  # [BT, 1]
    cols = tl.program_id(1) * BLOCK_H + tl.arange(0, BLOCK_H)[None, :]
    mask = (tok < num_tokens) & (cols < hidden)
    acc = tl.zeros([BLOCK_T, BLOCK_H], dtype=tl.float32)
    for j in tl.static_range(TOP_K):
        y = tl.load(y_ptr + (tok * TOP_K + j) * stride_y + cols, mask=mask, other=0.0).to(tl.float32)
        acc += y * tl.load(w_ptr + tok * stride_w + j, mask=tok < num_tokens, other=0.0)
    tl.store(out_ptr + tok * stride_out + cols, acc.to(out_ptr.dtype.element_ty), mask=mask)


def _weight_quant(name: str, w: torch.Tensor, scale: torch.Tensor | None) -> str:
    if w.dtype == torch.bfloat16:
        if scale is not None:
            raise ValueError(f"fused_moe: {name} is bf16 but a scale was given")
        return "bf16"
    if scale is None:
        raise ValueError(f"fused_moe: {name} is fp8 and needs {name}_scale")
    check_tensor(f"{name}_scale", scale, dtypes=(torch.float32, torch.bfloat16, torch.float16), device=w.device,
                 inner_contiguous=False)
    return "fp8_" + fp8_scale_layout(w.shape, scale.shape)


def _launch_gemm(a, a_scale, w, scale, out, align, total, cfg, *, n_out, k_dim, num_pairs, row_div, up_offset,
                 gated, quant):
    sorted_ids, expert_ids = align
    sc = scale if scale is not None else w  # never read on the bf16 path
    asc = a_scale if a_scale is not None else a  # never read on the bf16 path
    if quant == "fp8_channel":
        sc = sc.reshape(sc.shape[0], -1)
    strides = (sc.stride(0), sc.stride(1), sc.stride(2) if sc.dim() == 3 else 0)
    per_tile = cfg["BLOCK_SIZE_N"] // 2 if gated else cfg["BLOCK_SIZE_N"]
    grid = (cdiv(sorted_ids.numel(), cfg["BLOCK_SIZE_M"]) * cdiv(n_out, per_tile),)
    launch(_moe_gemm_kernel, grid, a.device,
           args=dict(a_ptr=a, a_scale_ptr=asc, w_ptr=w, w_scale_ptr=sc, out_ptr=out, sorted_ids_ptr=sorted_ids,
                     expert_ids_ptr=expert_ids, total_ptr=total, n_out=n_out, k_dim=k_dim, num_pairs=num_pairs,
                     capacity=sorted_ids.numel(), a_row_div=row_div, up_offset=up_offset, stride_a=a.stride(0),
                     stride_as=asc.stride(0), stride_we=w.stride(0), stride_wn=w.stride(1), stride_se=strides[0],
                     stride_sn=strides[1], stride_sk=strides[2], stride_out=out.stride(0)),
           constexprs=dict(BLOCK_M=cfg["BLOCK_SIZE_M"], BLOCK_N=cfg["BLOCK_SIZE_N"], BLOCK_K=cfg["BLOCK_SIZE_K"],
                           GROUP_M=cfg["GROUP_SIZE_M"], GATED=gated, QUANT=QUANT_IDS[quant]),
           num_warps=cfg["num_warps"], num_stages=cfg["num_stages"])


def fused_moe(x, w13: torch.Tensor, w2: torch.Tensor, topk_weights: torch.Tensor,
              topk_ids: torch.Tensor, *, w13_scale: torch.Tensor | None = None,
              w2_scale: torch.Tensor | None = None, config: dict | None = None,
              x_scale: torch.Tensor | None = None) -> torch.Tensor:
    """Routed-expert output of one MoE layer.

    x [T, H] bf16, or (FP8 weights only) already quantised: float8_e4m3fn x with x_scale [T, H/128] fp32,
    or the pair x = (xq, x_scale) from `quantize_act_fp8` (so one quantisation per layer can feed several
    GEMMs); w13 [E, 2I, H], w2 [E, H, I] (bf16, or float8_e4m3fn with w13_scale / w2_scale in the block or
    per-channel layout of the module docstring); topk_weights [T, K] fp32 and topk_ids [T, K] int32/int64
    from `route`. `config` overrides the tuned launch config (keys as in tuning.py; for GEMM1 BLOCK_SIZE_N
    counts interleaved gate+up weight rows, i.e. BLOCK_SIZE_N / 2 outputs per tile).
    Returns out [T, H] bf16 = sum_k w[t, k] * expert_{ids[t, k]}(x[t]) with the HF roundings.
    """
    x, x_scale = split_prequantized(x, x_scale, "fused_moe")
    check_tensor("x", x, ndim=2)
    t, hidden = x.shape
    wdt = (torch.bfloat16, torch.float8_e4m3fn)
    check_tensor("w13", w13, ndim=3, dtypes=wdt, device=x.device)
    e, two_i = w13.shape[0], w13.shape[1]
    if two_i % 2 or w13.shape[2] != hidden:
        raise ValueError(f"fused_moe: w13 shape {tuple(w13.shape)} is not [E, 2I, H={hidden}]")
    inter = two_i // 2
    check_tensor("w2", w2, ndim=3, shape=(e, hidden, inter), dtypes=(w13.dtype,), device=x.device)
    check_tensor("topk_ids", topk_ids, ndim=2, dtypes=(torch.int32, torch.int64), device=x.device)
    top_k = topk_ids.shape[1]
    check_tensor("topk_weights", topk_weights, ndim=2, shape=(t, top_k), dtypes=(torch.float32,), device=x.device)
    if topk_ids.shape[0] != t:
        raise ValueError(f"fused_moe: topk_ids has {topk_ids.shape[0]} rows for {t} tokens")
    quant = _weight_quant("w13", w13, w13_scale)
    if _weight_quant("w2", w2, w2_scale) != quant:
        raise ValueError("fused_moe: w13 and w2 must use the same weight format and scale layout")
    if quant == "fp8_block" and inter % 128:
        raise ValueError(f"fused_moe: block-FP8 needs I % 128 == 0 (I={inter}): a 128-row scale block "
                         "would mix gate and up rows")
    if quant == "bf16" and x.dtype != torch.bfloat16:
        raise TypeError("fused_moe: bf16 experts take a bf16 x (pre-quantised x is for FP8 experts)")
    if x_scale is not None:
        check_tensor("x_scale", x_scale, ndim=2, shape=(t, cdiv(hidden, FP8_GROUP)))
    cfg = validate_config(config, "fused_moe config") if config else moe_config(t, e, inter, top_k, quant,
                                                                                   x.device, hidden)[0]
    if quant != "bf16" and cfg["BLOCK_SIZE_K"] != 128:
        raise ValueError("fused_moe: FP8 paths quantise activations per 128 channels: BLOCK_SIZE_K must be 128")
    if cfg["BLOCK_SIZE_N"] < 32:
        raise ValueError("fused_moe: BLOCK_SIZE_N must be >= 32 (GEMM1 tiles hold gate and up halves of >= 16)")
    out = torch.empty(t, hidden, dtype=torch.bfloat16, device=x.device)
    if t == 0:
        return out
    if quant != "bf16" and x_scale is None:
        x, x_scale = quantize_act_fp8(x)  # once for all experts (and N tiles) of this call
    w13s = None if w13_scale is None else w13_scale.float()
    w2s = None if w2_scale is None else w2_scale.float()
    sorted_ids, expert_ids, total = moe_align(topk_ids, e, cfg["BLOCK_SIZE_M"])
    pairs = t * top_k
    h = torch.empty(pairs, inter, dtype=torch.bfloat16, device=x.device)  # [T*K, I]
    _launch_gemm(x, x_scale, w13, w13s, h, (sorted_ids, expert_ids), total, cfg, n_out=inter, k_dim=hidden,
                 num_pairs=pairs, row_div=top_k, up_offset=inter, gated=True, quant=quant)
    h_scale = None
    if quant != "bf16":
        h, h_scale = quantize_act_fp8(h)  # [T*K, I] fp8 + [T*K, I/128]
    y = torch.empty(pairs, hidden, dtype=torch.bfloat16, device=x.device)  # [T*K, H]
    _launch_gemm(h, h_scale, w2, w2s, y, (sorted_ids, expert_ids), total, cfg, n_out=hidden, k_dim=inter,
                 num_pairs=pairs, row_div=1, up_offset=0, gated=False, quant=quant)
    block_h = min(1024, next_pow2(hidden))
    block_t = max(1, min(16, 4096 // block_h, next_pow2(t)))
    launch(_moe_weighted_sum_kernel, (cdiv(t, block_t), cdiv(hidden, block_h)), x.device,
           args=dict(y_ptr=y, w_ptr=topk_weights, out_ptr=out, num_tokens=t, hidden=hidden, stride_y=y.stride(0),
                     stride_w=topk_weights.stride(0), stride_out=out.stride(0)),
           constexprs=dict(BLOCK_T=block_t, BLOCK_H=block_h, TOP_K=top_k), num_warps=4, num_stages=1)
    return out
