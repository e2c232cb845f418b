"""SiLU-and-multiply of a fused gate|up projection, optionally quantised to FP8 for the down projection.

The dense MLPs (layer 0's FFN, the shared expert) run gate and up as ONE GEMM over the concatenated
weight [gate; up] (engine/triton_backend.py), so their output is gu [N, 2I] = [gate | up]. This kernel
turns it into the down projection's input in one pass, with the HF rounding points of the MLP:

    h = bf16(bf16(silu(gate)) * up)                           [N, I]
    (hq, scale) = per-token, per-128-channel FP8 e4m3 of h    (QUANT; exactly reference.quantize_fp8(h))

which replaces F.silu, the multiply and the activation-quantisation kernel of the FP8 down projection.
One program handles BLOCK_R rows x GROUPS groups of 128 channels.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from angelcli.ops._runtime import cdiv, check_tensor, launch, next_pow2


@triton.jit
def _silu_mul_kernel(
    # pointers
    gu_ptr, h_ptr, q_ptr, s_ptr,
    # sizes
    num_rows, inter, num_groups,
    # strides (rows)
    stride_gu, stride_h, stride_q, stride_s,
    # meta-parameters
    BLOCK_R: tl.constexpr, GROUPS: tl.constexpr, QUANT: tl.constexpr,
):
    r = tl.program_id(0).to(tl.int64) * BLOCK_R + tl.arange(0, BLOCK_R)[:, None, None]
    g = tl.program_id(1) * GROUPS + tl.arange(0, GROUPS)[None, :, None]
    c = g * 128 + tl.arange(0, 128)[None, None, :]  # [BR, GROUPS, 128] channel index
    mask = (r < num_rows) & (c < inter)
    raw = tl.load(gu_ptr + r * stride_gu + c, mask=mask, other=0.0)
    gate = raw.to(tl.float32)
    up = tl.load(gu_ptr + r * stride_gu + inter + c, mask=mask, other=0.0).to(tl.float32)
    dt = h_ptr.dtype.element_ty
    silu = (gate / (1.0 + tl.exp(-gate))).to(dt).to(tl.float32)
    h = (silu * up).to(dt)
    tl.store(h_ptr + r * stride_h + c, h, mask=mask)
    if QUANT:
        hf = h.to(tl.float32)
        scale = tl.div_rn(tl.maximum(tl.max(tl.abs(hf), axis=2), 1e-10), 448.0)  # [BR, GROUPS]
        q = tl.clamp(tl.div_rn(hf, scale[:, :, None]), -448.0, 448.0).to(tl.float8e4nv)
        tl.store(q_ptr + r * stride_q + c, q, mask=mask)
        r2 = tl.program_id(0).to(tl.int64) * BLOCK_R + tl.arange(0, BLOCK_R)[:, None]
        g2 = tl.program_id(1) * GROUPS + tl.arange(0, GROUPS)[None, :]
        tl.store(s_ptr + r2 * stride_s + g2, scale, mask=(r2 < num_rows) & (g2 < num_groups))


def silu_mul(gate_up: torch.Tensor, quant: bool = False):
    """gate_up [N, 2I] bf16/fp16 ([gate | up], rows may be strided) -> (h [N, I], (hq [N, I] float8_e4m3fn,
    scale [N, ceil(I/128)] fp32) if quant else None); h = bf16(bf16(silu(gate)) * up)."""
    check_tensor("gate_up", gate_up, ndim=2, dtypes=(torch.bfloat16, torch.float16))
    n, two_i = gate_up.shape
    if two_i % 2:
        raise ValueError(f"silu_mul: gate_up width {two_i} is not 2 * I")
    inter = two_i // 2
    groups_total = cdiv(inter, 128)
    h = torch.empty(n, inter, dtype=gate_up.dtype, device=gate_up.device)
    q = s = None
    if quant:
        q = torch.empty(n, inter, dtype=torch.float8_e4m3fn, device=gate_up.device)
        s = torch.empty(n, groups_total, dtype=torch.float32, device=gate_up.device)
    groups = max(1, min(8, next_pow2(groups_total)))
    block_r = max(1, min(4, next_pow2(n)))
    launch(_silu_mul_kernel, (cdiv(n, block_r), cdiv(groups_total, groups)), gate_up.device,
           args=dict(gu_ptr=gate_up, h_ptr=h, q_ptr=q if quant else h, s_ptr=s if quant else h, num_rows=n,
                     inter=inter, num_groups=groups_total, stride_gu=gate_up.stride(0), stride_h=h.stride(0),
                     stride_q=q.stride(0) if quant else 0, stride_s=s.stride(0) if quant else 0),
           constexprs=dict(BLOCK_R=block_r, GROUPS=groups, QUANT=quant), num_warps=4, num_stages=1)
    return h, ((q, s) if quant else None)
