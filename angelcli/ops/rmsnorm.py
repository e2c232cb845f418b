"""RMSNorm, optionally fused with the residual add that precedes it.

HF order (shared/spec/bailing-moe-v2.md §3.1): normalise in fp32, cast to the input dtype FIRST, then
multiply by the weight in that dtype (no 1 + w offset). The kernel reproduces both roundings: the
normalised row is rounded to x.dtype, and the product with the weight, computed in fp32 (exact for two
bf16 values), is rounded once more to the output dtype. With a residual, s = bf16(x + residual) is what
gets normalised and is written back as the new residual stream, which is the decoder layer's
`h = r + attn(x); x = post_attention_layernorm(h)` in one pass over memory.

A program normalises BLOCK_R rows of H values held entirely in registers (BLOCK_H = next_pow2(H); for the
model's H = 4096 that is one row, 16 KB of fp32, per program; short rows are batched up to 2048 values);
num_warps grows with the tile so each thread holds ~8 values.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from angelcli.ops._runtime import cdiv, check_tensor, launch, next_pow2

_FLOATS = (torch.bfloat16, torch.float16, torch.float32)


@triton.jit
def _rms_norm_kernel(
    # pointers
    x_ptr, res_ptr, w_ptr, out_ptr, res_out_ptr, q_ptr, s_ptr,
    # sizes
    num_rows, hidden,
    # strides (rows)
    stride_x, stride_r, stride_o, stride_ro, stride_q, stride_s,
    # scalars
    eps,
    # meta-parameters
    BLOCK_R: tl.constexpr, BLOCK_H: tl.constexpr, HAS_RESIDUAL: tl.constexpr, QUANT: tl.constexpr,
):
    rows = tl.program_id(0).to(tl.int64) * BLOCK_R + tl.arange(0, BLOCK_R)[:, None]  # [BR, 1]
    cols = tl.arange(0, BLOCK_H)[None, :]
    mask = (rows < num_rows) & (cols < hidden)
    x = tl.load(x_ptr + rows * stride_x + cols, mask=mask, other=0.0)
    xf = x.to(tl.float32)
    if HAS_RESIDUAL:
        r = tl.load(res_ptr + rows * stride_r + cols, mask=mask, other=0.0).to(tl.float32)
        s = (xf + r).to(x.dtype)  # the residual stream stays in the activation dtype
        tl.store(res_out_ptr + rows * stride_ro + cols, s, mask=mask)
        xf = s.to(tl.float32)
    var = tl.sum(xf * xf, axis=1) / hidden  # [BR]
    rstd = 1.0 / tl.sqrt_rn(var + eps)
    normed = (xf * rstd[:, None]).to(x.dtype).to(tl.float32)  # HF: cast to the input dtype before the weight
    w = tl.load(w_ptr + cols, mask=cols < hidden, other=0.0).to(tl.float32)
    y = (normed * w).to(out_ptr.dtype.element_ty)
    tl.store(out_ptr + rows * stride_o + cols, y, mask=mask)
    if QUANT:  # FP8 e4m3 per 128 channels of the rounded output, exactly as reference.quantize_fp8
        y3 = tl.reshape(y.to(tl.float32), (BLOCK_R, BLOCK_H // 128, 128))
        scale = tl.div_rn(tl.maximum(tl.max(tl.abs(y3), axis=2), 1e-10), 448.0)  # [BR, groups]
        q = tl.clamp(tl.div_rn(y3, scale[:, :, None]), -448.0, 448.0).to(tl.float8e4nv)
        tl.store(q_ptr + rows * stride_q + cols, tl.reshape(q, (BLOCK_R, BLOCK_H)), mask=mask)
        grp = tl.arange(0, BLOCK_H // 128)[None, :]
        tl.store(s_ptr + rows * stride_s + grp, scale, mask=(rows < num_rows) & (grp * 128 < hidden))


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float, residual: torch.Tensor | None = None):
    """y = bf16(bf16(x * rsqrt(mean(x^2) + eps)) * weight) over the last dim.

    x [..., H] (rows may be strided, the last dim contiguous), weight [H]. Output dtype follows torch
    promotion of (x.dtype, weight.dtype). With residual [..., H]: returns (y, s) where s = x + residual
    (in x.dtype) is the new residual stream and y = rms_norm(s); otherwise returns y.
    """
    y, res_out, _ = _rms_norm(x, weight, eps, residual, quant=False)
    return y if residual is None else (y, res_out)


def rms_norm_fp8(x: torch.Tensor, weight: torch.Tensor, eps: float, residual: torch.Tensor | None = None):
    """rms_norm that also quantises its output for the FP8 GEMMs that read it, in the same pass.

    x [N, H] with H % 128 == 0 -> (y [N, H], s [N, H] or None (no residual), (yq [N, H] float8_e4m3fn,
    scale [N, H/128] fp32)); yq, scale = reference.quantize_fp8(y) bit for bit.
    """
    check_tensor("x", x, ndim=2, dtypes=_FLOATS)
    if x.shape[1] % 128:
        raise ValueError(f"rms_norm_fp8: hidden size {x.shape[1]} must be a multiple of 128")
    return _rms_norm(x, weight, eps, residual, quant=True)


def _rms_norm(x, weight, eps, residual, quant: bool):
    check_tensor("x", x, dtypes=_FLOATS)
    hidden = x.shape[-1]
    check_tensor("weight", weight, ndim=1, shape=(hidden,), dtypes=_FLOATS, device=x.device)
    x2 = x.reshape(-1, hidden)
    rows = x2.shape[0]
    out = torch.empty(x.shape, dtype=torch.promote_types(x.dtype, weight.dtype), device=x.device)
    out2 = out.view(-1, hidden)
    res2 = res_out2 = x2  # placeholders when there is no residual (never read)
    res_out = None
    if residual is not None:
        check_tensor("residual", residual, shape=tuple(x.shape), dtypes=(x.dtype,), device=x.device)
        res2 = residual.reshape(-1, hidden)
        res_out = torch.empty_like(x)
        res_out2 = res_out.view(-1, hidden)
    q = s = None
    if quant:
        q = torch.empty(rows, hidden, dtype=torch.float8_e4m3fn, device=x.device)
        s = torch.empty(rows, hidden // 128, dtype=torch.float32, device=x.device)
    block = next_pow2(hidden)
    block_r = max(1, min(16, 2048 // block, next_pow2(rows)))  # several short rows per program
    launch(_rms_norm_kernel, (cdiv(rows, block_r),), x.device,
           args=dict(x_ptr=x2, res_ptr=res2, w_ptr=weight, out_ptr=out2, res_out_ptr=res_out2,
                     q_ptr=q if quant else out2, s_ptr=s if quant else out2, num_rows=rows, hidden=hidden,
                     stride_x=x2.stride(0), stride_r=res2.stride(0), stride_o=out2.stride(0),
                     stride_ro=res_out2.stride(0), stride_q=q.stride(0) if quant else 0,
                     stride_s=s.stride(0) if quant else 0, eps=float(eps)),
           constexprs=dict(BLOCK_R=block_r, BLOCK_H=block, HAS_RESIDUAL=residual is not None, QUANT=quant),
           num_warps=max(1, min(16, block_r * block // 256)), num_stages=1)
    return out, res_out, ((q, s) if quant else None)
