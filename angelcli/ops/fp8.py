"""FP8 e4m3 GEMM for the dense projections, and the activation quantisation kernel.

Dense FP8 layers of AntAngelMed (shared/spec/bailing-moe-v2.md §6): attention query_key_value [5120, 4096]
and dense [4096, 4096], the shared expert (gate/up [1024, 4096] each, down [4096, 1024]) and layer 0's
dense FFN (gate/up [9216, 4096], down [4096, 9216]). Weights are float8_e4m3fn [N, K] with either
DeepSeek-style block scales `weight_scale_inv` [ceil(N/128), ceil(K/128)] fp32 (a multiplier despite the
name) or per-channel scales [N] (compressed-tensors FP8_DYNAMIC; bf16 scales are upcast).

Activations are quantised dynamically per token and per 128 channels, once, by their own kernel:
    scale[m, g] = max(amax(x[m, 128g:128g+128]), 1e-10) / 448,   xq = clamp(x / scale, +-448) -> e4m3
(`quantize_act_fp8`, DeepSeek / vLLM block-FP8 style). The GEMM only ever sees fp8 A: quantising inside the
K loop (what an earlier version did) repeated the division in every N-tile program and pushed the FP8
tiles of sm_90 into register spills. A caller that feeds one activation into several GEMMs (a layer's
input into qkv, the MoE and the shared expert) quantises it once and passes (xq, scale); given a bf16 x,
`fp8_gemm` quantises it first (two launches, same result).

The K loop accumulates dot(aq, wq) * a_scale[m] * w_scale[n-block, k-block] into ONE fp32 accumulator
(block scales vary per K step, so they cannot be folded into the tensor-core accumulate); per-channel
weight scales are applied once after the loop. On sm_90 the dot becomes `wgmma ... e4m3.e4m3` when
BLOCK_M >= 64 and `mma.sync` on f16-converted operands below that (shared/spec/fp8.md Part D).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from angelcli.ops._runtime import cdiv, check_tensor, launch, next_pow2
from angelcli.ops.reference import FP8_GROUP, fp8_scale_layout
from angelcli.ops.tuning import gemm_config, validate_config


@triton.jit
def _round_to_e4m3(v):
    """fp32 v (|v| <= 448) rounded to the nearest e4m3 value, ties to even, still in fp32.

    The cast that follows is then exact whatever path the compiler takes: on the H200 baseline (triton
    3.6) a plain fp32 -> e4m3 cast disagreed with torch's correctly rounded one in ~0.8% of elements,
    the signature of double rounding through f16. e4m3 keeps 3 mantissa bits, so the grid step at v is
    u = 2^(max(exponent(v), -6) - 3) (normals down to 2^-6, then the subnormal step 2^-9); adding and
    subtracting c = 1.5 * 2^23 * u makes the fp32 adder round v to a multiple of u, ties to even.
    """
    bits = v.to(tl.int32, bitcast=True)
    exp = tl.maximum(((bits >> 23) & 0xFF) - 127, -6)
    c = ((exp - 3 + 23 + 127) << 23 | 0x400000).to(tl.float32, bitcast=True)
    return (v + c) - c


@triton.jit
def _quantize_fp8_kernel(
    # pointers
    x_ptr, q_ptr, s_ptr,
    # sizes
    num_rows, k_dim, num_groups,
    # strides (rows)
    stride_x, stride_q, stride_s,
    # meta-parameters
    BLOCK_R: tl.constexpr, GROUPS: tl.constexpr, GROUP_SIZE: tl.constexpr,
):
    """A [BLOCK_R rows, GROUPS groups, GROUP_SIZE channels] tile per program."""
    r = tl.program_id(0).to(tl.int64) * BLOCK_R + tl.arange(0, BLOCK_R)[:, None, None]
    g = tl.program_id(1) * GROUPS + tl.arange(0, GROUPS)[None, :, None]
    c = g * GROUP_SIZE + tl.arange(0, GROUP_SIZE)[None, None, :]
    mask = (r < num_rows) & (g < num_groups) & (c < k_dim)
    x = tl.load(x_ptr + r * stride_x + c, mask=mask, other=0.0).to(tl.float32)
    scale = tl.div_rn(tl.maximum(tl.max(tl.abs(x), axis=2), 1e-10), 448.0)  # [BLOCK_R, GROUPS]
    q = _round_to_e4m3(tl.clamp(tl.div_rn(x, scale[:, :, None]), -448.0, 448.0)).to(tl.float8e4nv)
    tl.store(q_ptr + r * stride_q + c, q, mask=mask)
    r2 = tl.program_id(0).to(tl.int64) * BLOCK_R + tl.arange(0, BLOCK_R)[:, None]
    g2 = tl.program_id(1) * GROUPS + tl.arange(0, GROUPS)[None, :]
    tl.store(s_ptr + r2 * stride_s + g2, scale, mask=(r2 < num_rows) & (g2 < num_groups))


@triton.jit
def _fp8_gemm_kernel(
    # pointers
    a_ptr, a_scale_ptr, w_ptr, w_scale_ptr, out_ptr,
    # sizes
    m_dim, n_dim, k_dim,
    # strides
    stride_am, stride_asm, stride_wn, stride_wsn, stride_wsk, stride_om,
    # meta-parameters
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, GROUP_M: tl.constexpr,
    BLOCK_SCALES: tl.constexpr,
):
    """out [M, N] = dequant(Aq [M, K] fp8, a_scale [M, K/128]) @ dequant(W [N, K] fp8)^T."""
    pid = tl.program_id(0)
    num_pid_m = tl.cdiv(m_dim, BLOCK_M)
    num_pid_n = tl.cdiv(n_dim, BLOCK_N)
    in_group = GROUP_M * num_pid_n
    first_m = (pid // in_group) * GROUP_M
    group_rows = tl.minimum(num_pid_m - first_m, GROUP_M)
    pid_m = first_m + (pid % in_group) % group_rows
    pid_n = (pid % in_group) // group_rows
    rows = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    cols = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    row_ok = rows < m_dim
    col_ok = cols < n_dim
    kk = tl.arange(0, BLOCK_K)
    a_ptrs = a_ptr + rows[:, None].to(tl.int64) * stride_am + kk[None, :]
    w_ptrs = w_ptr + cols[None, :].to(tl.int64) * stride_wn + kk[:, None]  # [BK, BN]
    as_ptrs = a_scale_ptr + rows.to(tl.int64) * stride_asm
    ws_ptrs = w_scale_ptr + (cols // 128) * stride_wsn
    acc = tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.float32)
    for kb in range(0, tl.cdiv(k_dim, BLOCK_K)):
        k_ok = kk < k_dim - kb * BLOCK_K
        w = tl.load(w_ptrs, mask=k_ok[:, None] & col_ok[None, :], other=0.0)
        aq = tl.load(a_ptrs, mask=row_ok[:, None] & k_ok[None, :], other=0.0)
        a_scale = tl.load(as_ptrs + kb, mask=row_ok, other=0.0)
        if BLOCK_SCALES:
            w_scale = tl.load(ws_ptrs + kb * stride_wsk, mask=col_ok, other=0.0)
            acc += tl.dot(aq, w) * (a_scale[:, None] * w_scale[None, :])
        else:
            acc += tl.dot(aq, w) * a_scale[:, None]
        a_ptrs += BLOCK_K
        w_ptrs += BLOCK_K
    if not BLOCK_SCALES:
        acc = acc * tl.load(w_scale_ptr + cols * stride_wsn, mask=col_ok, other=0.0)[None, :]
    o_ptrs = out_ptr + rows[:, None].to(tl.int64) * stride_om + cols[None, :]
    tl.store(o_ptrs, acc.to(out_ptr.dtype.element_ty), mask=row_ok[:, None] & col_ok[None, :])


def quantize_act_fp8(x: torch.Tensor, group: int = FP8_GROUP) -> tuple[torch.Tensor, torch.Tensor]:
    """Dynamic per-token, per-group FP8 quantisation of an activation (one launch).

    x [M, K] bf16/fp16/fp32 (rows may be strided) -> (xq [M, K] float8_e4m3fn, scale [M, ceil(K/group)]
    fp32) with x ~= xq * scale; the last group may be short; group must be a power of two. Bit-identical
    to `reference.quantize_fp8`. Feed the pair to `fp8_gemm(xq, w, s, x_scale=scale)` or
    `fused_moe((xq, scale), ...)`.
    """
    check_tensor("x", x, ndim=2, dtypes=(torch.bfloat16, torch.float16, torch.float32))
    if group < 1 or group & (group - 1):
        raise ValueError(f"quantize_act_fp8: group={group} must be a power of two")
    m, k = x.shape
    ng = cdiv(k, group)
    xq = torch.empty(m, k, dtype=torch.float8_e4m3fn, device=x.device)
    scale = torch.empty(m, ng, dtype=torch.float32, device=x.device)
    groups = max(1, min(next_pow2(ng), 4096 // group))
    block_r = max(1, min(16, 4096 // (groups * group), next_pow2(m)))
    launch(_quantize_fp8_kernel, (cdiv(m, block_r), cdiv(ng, groups)), x.device,
           args=dict(x_ptr=x, q_ptr=xq, s_ptr=scale, num_rows=m, k_dim=k, num_groups=ng, stride_x=x.stride(0),
                     stride_q=xq.stride(0), stride_s=scale.stride(0)),
           constexprs=dict(BLOCK_R=block_r, GROUPS=groups, GROUP_SIZE=group), num_warps=4, num_stages=1)
    return xq, scale


def quantize_fp8(x: torch.Tensor, group_size: int = FP8_GROUP) -> tuple[torch.Tensor, torch.Tensor]:
    """The earlier name of `quantize_act_fp8` (same kernel, same result)."""
    return quantize_act_fp8(x, group_size)


def split_prequantized(x, x_scale, who: str):
    """(a, a_scale) from either `x` bf16 / fp16, `x` fp8 plus `x_scale`, or `x = (xq, scale)`."""
    if isinstance(x, (tuple, list)):
        if len(x) != 2 or x_scale is not None:
            raise ValueError(f"{who}: a pre-quantised x is a pair (xq, scale) and takes no x_scale")
        x, x_scale = x
    check_tensor("x", x, dtypes=(torch.bfloat16, torch.float16, torch.float8_e4m3fn))
    if x.dtype == torch.float8_e4m3fn:
        if x_scale is None:
            raise ValueError(f"{who}: an fp8 x needs x_scale (from quantize_act_fp8)")
        check_tensor("x_scale", x_scale, dtypes=(torch.float32,), device=x.device)
    elif x_scale is not None:
        raise ValueError(f"{who}: x_scale is only for an fp8 x")
    return x, x_scale


def fp8_gemm(x, w: torch.Tensor, w_scale: torch.Tensor, x_scale: torch.Tensor | None = None,
             out_dtype: torch.dtype = torch.bfloat16, config: dict | None = None) -> torch.Tensor:
    """y = x @ W^T with an FP8 weight.

    x [..., K] bf16/fp16 (quantised first by quantize_act_fp8), or float8_e4m3fn with x_scale
    [..., ceil(K/128)] fp32, or the pair (xq, x_scale); w [N, K] float8_e4m3fn; w_scale block
    [ceil(N/128), ceil(K/128)] or per-channel [N] / [N, 1]. Returns [..., N] in out_dtype.
    `config` overrides the tuned launch config (keys as in tuning.py; BLOCK_SIZE_K must be 128).
    """
    x, x_scale = split_prequantized(x, x_scale, "fp8_gemm")
    k = x.shape[-1]
    check_tensor("w", w, ndim=2, dtypes=(torch.float8_e4m3fn,), device=x.device)
    n = w.shape[0]
    if w.shape[1] != k:
        raise ValueError(f"fp8_gemm: x has K={k} but w is {tuple(w.shape)}")
    check_tensor("w_scale", w_scale, dtypes=(torch.float32, torch.bfloat16, torch.float16), device=x.device,
                 inner_contiguous=False)
    layout = fp8_scale_layout(w.shape, w_scale.shape)
    lead = x.shape[:-1]
    a = x.reshape(-1, k)
    m = a.shape[0]
    quant = "fp8_" + layout
    cfg = validate_config(config, "fp8_gemm config") if config else gemm_config(m, n, k, quant, x.device)[0]
    if cfg["BLOCK_SIZE_K"] != FP8_GROUP:
        raise ValueError("fp8_gemm: BLOCK_SIZE_K must be 128 (one activation group per K step)")
    if a.dtype == torch.float8_e4m3fn:
        xs = x_scale.reshape(m, -1)
        if xs.shape[1] != cdiv(k, FP8_GROUP):
            raise ValueError(f"fp8_gemm: x_scale has {xs.shape[1]} groups per row, expected {cdiv(k, FP8_GROUP)}")
    else:
        a, xs = quantize_act_fp8(a)
    ws = w_scale.float()
    if layout == "channel":
        ws = ws.reshape(n)
    out = torch.empty(m, n, dtype=out_dtype, device=x.device)
    grid = (cdiv(m, cfg["BLOCK_SIZE_M"]) * cdiv(n, cfg["BLOCK_SIZE_N"]),)
    launch(_fp8_gemm_kernel, grid, x.device,
           args=dict(a_ptr=a, a_scale_ptr=xs, w_ptr=w, w_scale_ptr=ws, out_ptr=out, m_dim=m, n_dim=n, k_dim=k,
                     stride_am=a.stride(0), stride_asm=xs.stride(0), stride_wn=w.stride(0),
                     stride_wsn=ws.stride(0), stride_wsk=ws.stride(1) if ws.dim() == 2 else 0,
                     stride_om=out.stride(0)),
           constexprs=dict(BLOCK_M=cfg["BLOCK_SIZE_M"], BLOCK_N=cfg["BLOCK_SIZE_N"], BLOCK_K=cfg["BLOCK_SIZE_K"],
                           GROUP_M=cfg["GROUP_SIZE_M"], BLOCK_SCALES=layout == "block"),
           num_warps=cfg["num_warps"], num_stages=cfg["num_stages"])
    return out.reshape(*lead, n)
