"""FP8 e4m3 quantisation math: amax -> scale, quantise, dequantise, in three weight layouts.

The number format
-----------------
`float8_e4m3fn` (OCP "E4M3", torch.float8_e4m3fn, safetensors "F8_E4M3") has 1 sign, 4 exponent and 3 mantissa
bits, exponent bias 7, no infinities and a single NaN pattern per sign. Finite values reach ±448; normals go
down to 2^-6 and subnormals to 2^-9. With 3 mantissa bits neighbouring values are 2^-3 apart relative to their
exponent, so round-to-nearest has a relative error of at most 2^-4 = 6.25% for normal values and an absolute
error of at most 2^-10 in the subnormal range. What a cast does with values beyond ±448 depends on the
implementation (torch 2.13 on CPU saturates, OCP's non-saturating mode and other converters give NaN), so
every quantiser here clamps to ±448 itself before the cast.

A weight W is stored as W_fp8 = round_e4m3(W / s) with a scale s chosen so that the largest |W| of its group
(the group's amax) lands on 448:  s = max(amax, AMAX_FLOOR) / 448. Dequantisation is W ≈ W_fp8 * s, so
elementwise  |W - W_fp8 * s| <= |W| / 16 + s * 2^-10.  The floor keeps all-zero groups finite and positive
(Ling's converter uses the same 1e-4 floor); non-finite weights are refused, never quantised.

Layouts (W is [N, K] = [out_features, in_features], as nn.Linear stores it)
--------------------------------------------------------------------------
  per-tensor   one scale for the whole matrix            scale [1]
  per-channel  one scale per output row                  scale [N, 1]
  block        one scale per 128 x 128 tile              scale [ceil(N/128), ceil(K/128)]
               edge tiles are partial: their amax is taken over the real elements only (equivalent to
               zero-padding the matrix to a multiple of 128, which is what DeepSeek-V3's format specifies).

`weight_scale_inv`
------------------
The native FP8 format (DeepSeek-V3, Ling's `--force-fp8` converter, vLLM/SGLang `quant_method: fp8`) stores
the block scales as fp32 `<name>.weight_scale_inv`. Despite the name it is the *multiplier*: W ≈ W_fp8 *
weight_scale_inv (it is the inverse of the quantisation factor 448/amax). compressed-tensors calls the same
multiplier `weight_scale` and stores it in the model dtype (BF16 here); the quantisers below therefore round
the scale to its storage dtype first and quantise with the rounded value, so that dequantising with the stored
scale reproduces exactly what was computed.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

FP8_DTYPE = torch.float8_e4m3fn
FP8_MAX = 448.0  # torch.finfo(torch.float8_e4m3fn).max
AMAX_FLOOR = 1e-4
BLOCK = (128, 128)


class NonFiniteError(ValueError):
    """The tensor to quantise holds NaN or inf (callers turn this into an error naming the tensor)."""


def scale_from_amax(amax: torch.Tensor) -> torch.Tensor:
    """amax (any shape) -> fp32 multiplier scale = max(amax, AMAX_FLOOR) / 448."""
    return amax.float().clamp(min=AMAX_FLOOR) / FP8_MAX


def to_fp8(scaled: torch.Tensor) -> torch.Tensor:
    """Saturating cast of already-scaled values to e4m3 (explicit clamp: overflow handling varies by cast)."""
    return scaled.clamp(-FP8_MAX, FP8_MAX).to(FP8_DTYPE)


def _check_finite(amax: torch.Tensor) -> None:
    if not bool(torch.isfinite(amax).all()):
        raise NonFiniteError("tensor holds NaN or inf values")


def _as_2d(w: torch.Tensor) -> torch.Tensor:
    if w.dim() != 2:
        raise ValueError(f"expected a 2-D weight [out, in], got shape {list(w.shape)}")
    return w


# ---------------------------------------------------------------------------------------------------------
# quantise
# ---------------------------------------------------------------------------------------------------------
def block_scale_shape(shape: tuple[int, ...] | torch.Size, block: tuple[int, int] = BLOCK) -> tuple[int, int]:
    """[N, K] -> [ceil(N / bn), ceil(K / bk)]."""
    n, k = shape
    return math.ceil(n / block[0]), math.ceil(k / block[1])


def _grouped(w: torch.Tensor, layout: str, block: tuple[int, int]) -> torch.Tensor:
    """fp32 copy of w [N, K] in the layout's group view ([R, bn, C, bk] tiles for 'block')."""
    x = _as_2d(w).float()  # a copy for 16-bit inputs; the quantiser works on it in place
    if x.data_ptr() == w.data_ptr():
        x = x.clone()
    if layout in ("tensor", "channel"):
        return x
    if layout == "block":
        n, k = x.shape
        rows, cols = block_scale_shape((n, k), block)
        pad_n, pad_k = rows * block[0] - n, cols * block[1] - k
        if pad_n or pad_k:
            x = F.pad(x, (0, pad_k, 0, pad_n))  # zero padding never raises a tile's amax
        return x.view(rows, block[0], cols, block[1])
    raise ValueError(f"unknown FP8 layout {layout!r}")


# Per-group reductions, shaped like the scale. Reducing the contiguous last axis first is several times faster
# on CPU than one reduction over two strided axes.
def _group_max_abs(layout: str, t: torch.Tensor) -> torch.Tensor:
    if layout == "block":
        return t.abs().amax(3).amax(1)
    return t.abs().amax(1, keepdim=True) if layout == "channel" else t.abs().amax().reshape(1)


def _group_l2(layout: str, t: torch.Tensor) -> torch.Tensor:
    vn = torch.linalg.vector_norm
    if layout == "block":
        return vn(vn(t, 2, dim=3), 2, dim=1)
    return vn(t, 2, dim=1, keepdim=True) if layout == "channel" else vn(t).reshape(1)


def _broadcast(layout: str, s: torch.Tensor) -> torch.Tensor:
    return {"tensor": lambda: s.reshape(1, 1), "channel": lambda: s, "block": lambda: s[:, None, :, None]}[layout]()


_E4M3_VALUES: torch.Tensor | None = None


def fp8_to_float(q: torch.Tensor) -> torch.Tensor:
    """e4m3 -> fp32 through a 256-entry table (the direct cast is ~4x slower on CPU), same values."""
    global _E4M3_VALUES
    if _E4M3_VALUES is None:
        _E4M3_VALUES = torch.arange(256, dtype=torch.uint8).view(FP8_DTYPE).float()
    lut = _E4M3_VALUES.to(q.device)
    return lut.index_select(0, q.reshape(-1).view(torch.uint8).int()).view(q.shape)


def quantize_with_error(w: torch.Tensor, layout: str, scale_dtype: torch.dtype = torch.float32,
                        block: tuple[int, int] = BLOCK, with_error: bool = True):
    """w [N, K] -> (q [N, K] e4m3, scale, stats | None), in one pass over an fp32 copy.

    layout 'tensor' -> scale [1]; 'channel' -> [N, 1]; 'block' -> [ceil(N/bn), ceil(K/bk)]. The scale is
    rounded to scale_dtype first and the weight divided by the rounded value. stats equals
    error_stats(w, dequantize(q, scale)) but comes from the scaled residual, group by group:
    W - q*s = (W/s - q) * s, so ||W - Ŵ||² = Σ_g s_g² ||W_g/s_g - q_g||² and max|W - Ŵ| = max_g s_g max|...|.
    """
    n, k = _as_2d(w).shape
    x = _grouped(w, layout, block)
    amax = _group_max_abs(layout, x)
    _check_finite(amax)
    scale = scale_from_amax(amax).to(scale_dtype)
    s32 = scale.float()
    w_norm = float(torch.linalg.vector_norm(x)) if with_error else 0.0
    x.div_(_broadcast(layout, s32))
    q = x.clamp(-FP8_MAX, FP8_MAX).to(FP8_DTYPE)
    stats = None
    if with_error:
        d = x.sub_(fp8_to_float(q)).abs_()  # |residual| in scaled units (in place: no 16-150 MB temporaries)
        e = float(torch.linalg.vector_norm(_group_l2(layout, d) * s32))
        d_max = (d.amax(3).amax(1) if layout == "block" else d.amax(1, keepdim=True) if layout == "channel"
                 else d.amax().reshape(1))
        stats = {"rel_err": e / w_norm if w_norm > 0 else (0.0 if e == 0 else math.inf),
                 "max_abs_err": float((d_max * s32).max()) if d.numel() else 0.0,
                 "amax": float(amax.max()) if amax.numel() else 0.0}
    if layout == "block":
        q = q.reshape(q.shape[0] * block[0], q.shape[2] * block[1])[:n, :k].contiguous()
    return q, scale, stats


def quantize(w: torch.Tensor, layout: str, scale_dtype: torch.dtype = torch.float32, block: tuple[int, int] = BLOCK):
    """layout 'tensor' | 'channel' | 'block' -> (q, scale)."""
    q, s, _ = quantize_with_error(w, layout, scale_dtype, block, with_error=False)
    return q, s


def quantize_per_tensor(w: torch.Tensor, scale_dtype: torch.dtype = torch.float32):
    """w [N, K] -> (q [N, K] e4m3, scale [1] in scale_dtype)."""
    return quantize(w, "tensor", scale_dtype)


def quantize_per_channel(w: torch.Tensor, scale_dtype: torch.dtype = torch.float32):
    """w [N, K] -> (q [N, K] e4m3, scale [N, 1] in scale_dtype), one scale per output row."""
    return quantize(w, "channel", scale_dtype)


def quantize_block(w: torch.Tensor, block: tuple[int, int] = BLOCK, scale_dtype: torch.dtype = torch.float32):
    """w [N, K] -> (q [N, K] e4m3, scale_inv [ceil(N/bn), ceil(K/bk)] in scale_dtype)."""
    return quantize(w, "block", scale_dtype, block)


# ---------------------------------------------------------------------------------------------------------
# dequantise
# ---------------------------------------------------------------------------------------------------------
def expand_block_scale(scale: torch.Tensor, shape: tuple[int, int], block: tuple[int, int] = BLOCK) -> torch.Tensor:
    """scale [R, C] -> [N, K]: every element gets its tile's scale."""
    n, k = shape
    if tuple(scale.shape) != block_scale_shape((n, k), block):
        raise ValueError(f"block scale shape {list(scale.shape)} does not fit weight {[n, k]} with block {list(block)}")
    return scale.repeat_interleave(block[0], dim=0)[:n].repeat_interleave(block[1], dim=1)[:, :k]


def infer_layout(q_shape: tuple[int, ...], scale_shape: tuple[int, ...], block: tuple[int, int] | None = BLOCK) -> str:
    """'tensor' | 'channel' | 'block' from the weight and scale shapes (raises ValueError on a mismatch)."""
    n, k = q_shape
    scale_shape = tuple(scale_shape)
    if scale_shape in ((), (1,)):
        return "tensor"
    if scale_shape == (n, 1) and n != 1:
        return "channel"
    if block is not None and scale_shape == block_scale_shape((n, k), block):
        return "block"
    if scale_shape == (1, 1):
        return "tensor"
    raise ValueError(f"scale shape {list(scale_shape)} matches no FP8 layout for weight {[n, k]}")


def dequantize(q: torch.Tensor, scale: torch.Tensor, layout: str | None = None, block: tuple[int, int] = BLOCK,
               dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """q [N, K] e4m3 and its scale -> W [N, K] in dtype (computed in fp32, cast once at the end)."""
    layout = layout or infer_layout(tuple(q.shape), tuple(scale.shape), block)
    q32, s32 = fp8_to_float(q), scale.float()
    if layout == "tensor":
        out = q32 * s32.reshape(())
    elif layout == "channel":
        out = q32 * s32.reshape(-1, 1)
    elif layout == "block":
        out = q32 * expand_block_scale(s32, tuple(q.shape), block)
    else:
        raise ValueError(f"unknown FP8 layout {layout!r}")
    return out.to(dtype)


# ---------------------------------------------------------------------------------------------------------
# error statistics and activation fake-quantisation (quality report)
# ---------------------------------------------------------------------------------------------------------
def error_stats(w: torch.Tensor, w_hat: torch.Tensor) -> dict:
    """Relative Frobenius error ||W - Ŵ|| / ||W||, max |W - Ŵ| and amax(|W|), as plain floats."""
    w32, d = w.float(), w.float() - w_hat.float()
    norm = float(torch.linalg.vector_norm(w32))
    err = float(torch.linalg.vector_norm(d))
    return {"rel_err": err / norm if norm > 0 else (0.0 if err == 0 else math.inf),
            "max_abs_err": float(d.abs().max()) if d.numel() else 0.0,
            "amax": float(w32.abs().max()) if w32.numel() else 0.0}


def fake_quant_per_token(x: torch.Tensor) -> torch.Tensor:
    """Dynamic per-token activation FP8 (compressed-tensors FP8_DYNAMIC): one scale per row of [..., K]."""
    x32 = x.float()
    s = scale_from_amax(x32.abs().amax(dim=-1, keepdim=True))
    return (to_fp8(x32 / s).float() * s).to(x.dtype)


def fake_quant_token_group(x: torch.Tensor, group: int = 128) -> torch.Tensor:
    """Dynamic per-token, per-`group`-channel activation FP8 (native block FP8, vLLM/SGLang)."""
    *lead, k = x.shape
    pad = (-k) % group
    x32 = F.pad(x.float(), (0, pad)).reshape(*lead, (k + pad) // group, group)
    s = scale_from_amax(x32.abs().amax(dim=-1, keepdim=True))
    out = (to_fp8(x32 / s).float() * s).reshape(*lead, k + pad)[..., :k]
    return out.to(x.dtype)


def fake_quant_static(x: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """Static per-tensor activation FP8 with a calibrated input_scale [1]."""
    s = scale.float().reshape(())
    return (to_fp8(x.float() / s).float() * s).to(x.dtype)
