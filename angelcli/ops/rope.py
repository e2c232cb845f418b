"""QK-norm + partial NeoX RoPE, fused: one pass from the QKV projection output to rotated q and k.

BailingMoeV2 attention (shared/spec/bailing-moe-v2.md §3.3): split the fused projection [Q | K | V] into
heads of D = 128, RMSNorm each q and k head over all D dims with its own weight (query_layernorm /
key_layernorm), then rotate dims [0, rotary_dim) NeoX style (pairs (j, j + rotary_dim/2)); dims
[rotary_dim, D) pass through. AntAngelMed: rotary_dim = 64 (partial_rotary_factor 0.5), theta 600000.

Rounding follows HF exactly: the norm is rounded to bf16 before and after the weight; cos/sin are a bf16
table (reference.rope_cache: fp32 angles, then cast); each product and the sum are bf16 ops:
    out_j        = bf16(bf16(x_j * cos_j) + bf16(-x_{j+h} * sin_j))       j < h = rotary_dim / 2
    out_{j+h}    = bf16(bf16(x_{j+h} * cos_j) + bf16(x_j * sin_j))
Every step is done in fp32 and rounded where HF rounds (a product of two bf16 values is exact in fp32,
so one rounding gives the bf16 result).

Layout: one program handles BLOCK_HEADS heads (q heads first, then k heads, as in the projection) of one
token, each head split into three register tiles: first rotary half, second rotary half, pass-through.
The output is one buffer [T, Hq + Hkv, D]; q and k are views of it (q = out[:, :Hq], k = out[:, Hq:]),
so a head's D values are contiguous but the head stride spans both.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from angelcli.ops._runtime import cdiv, check_tensor, launch, next_pow2


@triton.jit
def _qk_norm_rope_kernel(
    # pointers
    qkv_ptr, pos_ptr, q_w_ptr, k_w_ptr, cache_ptr, out_ptr, k_cache_ptr, v_cache_ptr, slot_ptr,
    # sizes
    num_q_heads, num_heads, head_dim, rot_half, num_positions, block_size,
    # strides (token rows; head_dim and the cache row are contiguous; KV cache [blocks, slots, heads, D])
    stride_qkv, stride_cache, stride_out, stride_kcb, stride_kcs, stride_kch, stride_vcb, stride_vcs, stride_vch,
    # scalars
    eps,
    # meta-parameters
    BLOCK_HEADS: tl.constexpr, HALF_P2: tl.constexpr, PASS_P2: tl.constexpr, WRITE_KV: tl.constexpr,
):
    t = tl.program_id(0).to(tl.int64)
    h = tl.program_id(1) * BLOCK_HEADS + tl.arange(0, BLOCK_HEADS)[:, None]  # [BH, 1]
    j = tl.arange(0, HALF_P2)[None, :]
    p = tl.arange(0, PASS_P2)[None, :]
    rot_dim = 2 * rot_half
    m1 = (h < num_heads) & (j < rot_half)
    mp = (h < num_heads) & (p < head_dim - rot_dim)
    src = qkv_ptr + t * stride_qkv + h * head_dim
    raw1 = tl.load(src + j, mask=m1, other=0.0)
    x1 = raw1.to(tl.float32)
    x2 = tl.load(src + rot_half + j, mask=m1, other=0.0).to(tl.float32)
    xp = tl.load(src + rot_dim + p, mask=mp, other=0.0).to(tl.float32)
    dt = raw1.dtype
    # ---- per-head RMSNorm (HF: round to dtype, then times weight, round again) --------------------------
    ss = tl.sum(x1 * x1, axis=1) + tl.sum(x2 * x2, axis=1) + tl.sum(xp * xp, axis=1)  # [BH]
    rstd = (1.0 / tl.sqrt_rn(ss / head_dim + eps))[:, None]
    is_q = h < num_q_heads
    w1 = tl.where(is_q, tl.load(q_w_ptr + j, mask=j < rot_half, other=0.0),
                  tl.load(k_w_ptr + j, mask=j < rot_half, other=0.0)).to(tl.float32)
    w2 = tl.where(is_q, tl.load(q_w_ptr + rot_half + j, mask=j < rot_half, other=0.0),
                  tl.load(k_w_ptr + rot_half + j, mask=j < rot_half, other=0.0)).to(tl.float32)
    wp = tl.where(is_q, tl.load(q_w_ptr + rot_dim + p, mask=p < head_dim - rot_dim, other=0.0),
                  tl.load(k_w_ptr + rot_dim + p, mask=p < head_dim - rot_dim, other=0.0)).to(tl.float32)
    n1 = ((x1 * rstd).to(dt).to(tl.float32) * w1).to(dt).to(tl.float32)
    n2 = ((x2 * rstd).to(dt).to(tl.float32) * w2).to(dt).to(tl.float32)
    npass = ((xp * rstd).to(dt).to(tl.float32) * wp).to(dt)
    # ---- NeoX rotation of the first rot_dim dims, in the activation dtype --------------------------------
    # the host sizes the table for every reachable position; the clamp only keeps a bad call in bounds
    pos = tl.minimum(tl.load(pos_ptr + t).to(tl.int64), num_positions - 1)
    cos = tl.load(cache_ptr + pos * stride_cache + j, mask=j < rot_half, other=0.0).to(tl.float32)
    sin = tl.load(cache_ptr + pos * stride_cache + rot_half + j, mask=j < rot_half, other=0.0).to(tl.float32)
    o1 = ((n1 * cos).to(dt).to(tl.float32) + (-n2 * sin).to(dt).to(tl.float32)).to(dt)
    o2 = ((n2 * cos).to(dt).to(tl.float32) + (n1 * sin).to(dt).to(tl.float32)).to(dt)
    dst = out_ptr + t * stride_out + h * head_dim
    tl.store(dst + j, o1, mask=m1)
    tl.store(dst + rot_half + j, o2, mask=m1)
    tl.store(dst + rot_dim + p, npass, mask=mp)
    if WRITE_KV:  # k heads (and their v) go straight into the paged cache: no separate kv_cache_write
        slot = tl.load(slot_ptr + t).to(tl.int64)
        kvh = (h - num_q_heads).to(tl.int64)  # [BH, 1]; negative for q heads (masked)
        is_k = (h >= num_q_heads) & (h < num_heads) & ((tl.zeros_like(h) + slot) >= 0)
        blk = slot // block_size
        off = slot % block_size
        kd = k_cache_ptr + blk * stride_kcb + off * stride_kcs + kvh * stride_kch
        tl.store(kd + j, o1, mask=is_k & (j < rot_half))
        tl.store(kd + rot_half + j, o2, mask=is_k & (j < rot_half))
        tl.store(kd + rot_dim + p, npass, mask=is_k & (p < head_dim - rot_dim))
        vs = qkv_ptr + t * stride_qkv + (num_heads + kvh) * head_dim
        vd = v_cache_ptr + blk * stride_vcb + off * stride_vcs + kvh * stride_vch
        m1v = is_k & (j < rot_half)
        mpv = is_k & (p < head_dim - rot_dim)
        tl.store(vd + j, tl.load(vs + j, mask=m1v, other=0.0), mask=m1v)
        tl.store(vd + rot_half + j, tl.load(vs + rot_half + j, mask=m1v, other=0.0), mask=m1v)
        tl.store(vd + rot_dim + p, tl.load(vs + rot_dim + p, mask=mpv, other=0.0), mask=mpv)


def qk_norm_rope(qkv: torch.Tensor, positions: torch.Tensor, q_norm_weight: torch.Tensor,
                 k_norm_weight: torch.Tensor, cos_sin_cache: torch.Tensor, num_q_heads: int,
                 num_kv_heads: int, eps: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Normalise and rotate q and k straight from the fused QKV projection.

    qkv [T, (Hq + 2 Hkv) * D] (row stride free, columns contiguous), positions [T] int32/int64 (each below
    the table's P rows), q_norm_weight / k_norm_weight [D], cos_sin_cache [P, rotary_dim] in qkv.dtype
    (reference.rope_cache) -> (q [T, Hq, D], k [T, Hkv, D]): views of one [T, Hq + Hkv, D] buffer.
    v is qkv[:, (Hq + Hkv) * D:].
    """
    return _launch(qkv, positions, q_norm_weight, k_norm_weight, cos_sin_cache, num_q_heads, num_kv_heads, eps)


def qk_norm_rope_cache(qkv: torch.Tensor, positions: torch.Tensor, q_norm_weight: torch.Tensor,
                       k_norm_weight: torch.Tensor, cos_sin_cache: torch.Tensor, num_q_heads: int,
                       num_kv_heads: int, eps: float, k_cache: torch.Tensor, v_cache: torch.Tensor,
                       slot_mapping: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """qk_norm_rope plus kv_cache_write in the same launch: the rotated k and the untouched v of token t
    land in k_cache / v_cache [NB, BS, Hkv, D] at slot_mapping[t] (negative: skipped). Returns (q, k)."""
    check_tensor("k_cache", k_cache, ndim=4, dtypes=(qkv.dtype,), device=qkv.device)
    check_tensor("v_cache", v_cache, ndim=4, shape=tuple(k_cache.shape), dtypes=(qkv.dtype,), device=qkv.device)
    check_tensor("slot_mapping", slot_mapping, ndim=1, shape=(qkv.shape[0],), dtypes=(torch.int32, torch.int64),
                 device=qkv.device)
    if k_cache.shape[2] != num_kv_heads:
        raise ValueError(f"qk_norm_rope_cache: cache has {k_cache.shape[2]} KV heads, expected {num_kv_heads}")
    return _launch(qkv, positions, q_norm_weight, k_norm_weight, cos_sin_cache, num_q_heads, num_kv_heads, eps,
                   (k_cache, v_cache, slot_mapping))


def _launch(qkv, positions, q_norm_weight, k_norm_weight, cos_sin_cache, num_q_heads, num_kv_heads, eps,
            kv=None):
    check_tensor("qkv", qkv, ndim=2, dtypes=(torch.bfloat16, torch.float16, torch.float32))
    t, width = qkv.shape
    heads = num_q_heads + num_kv_heads
    if width % (heads + num_kv_heads):
        raise ValueError(f"qk_norm_rope: qkv width {width} is not (Hq + 2 Hkv) * D for Hq={num_q_heads}, "
                         f"Hkv={num_kv_heads}")
    d = width // (heads + num_kv_heads)
    check_tensor("positions", positions, ndim=1, shape=(t,), dtypes=(torch.int32, torch.int64), device=qkv.device)
    for name, w in (("q_norm_weight", q_norm_weight), ("k_norm_weight", k_norm_weight)):
        check_tensor(name, w, ndim=1, shape=(d,), device=qkv.device)
    check_tensor("cos_sin_cache", cos_sin_cache, ndim=2, dtypes=(qkv.dtype,), device=qkv.device)
    rot = cos_sin_cache.shape[1]
    if rot % 2 or rot > d:
        raise ValueError(f"qk_norm_rope: rotary_dim {rot} (cos_sin_cache columns) must be even and <= D={d}")
    out = torch.empty(t, heads, d, dtype=qkv.dtype, device=qkv.device)
    kc, vc, slots = kv if kv is not None else (out, out, positions)  # placeholders, never touched
    kcs = kc.stride() if kv is not None else (0, 0, 0)
    vcs = vc.stride() if kv is not None else (0, 0, 0)
    block_heads = min(next_pow2(heads), max(1, 4096 // next_pow2(d)))
    launch(_qk_norm_rope_kernel, (t, cdiv(heads, block_heads)), qkv.device,
           args=dict(qkv_ptr=qkv, pos_ptr=positions, q_w_ptr=q_norm_weight, k_w_ptr=k_norm_weight,
                     cache_ptr=cos_sin_cache, out_ptr=out, k_cache_ptr=kc, v_cache_ptr=vc, slot_ptr=slots,
                     num_q_heads=num_q_heads, num_heads=heads, head_dim=d, rot_half=rot // 2,
                     num_positions=cos_sin_cache.shape[0], block_size=kc.shape[1] if kv is not None else 1,
                     stride_qkv=qkv.stride(0), stride_cache=cos_sin_cache.stride(0), stride_out=out.stride(0),
                     stride_kcb=kcs[0], stride_kcs=kcs[1], stride_kch=kcs[2], stride_vcb=vcs[0], stride_vcs=vcs[1],
                     stride_vch=vcs[2], eps=float(eps)),
           constexprs=dict(BLOCK_HEADS=block_heads, HALF_P2=next_pow2(rot // 2), PASS_P2=next_pow2(d - rot),
                           WRITE_KV=kv is not None),
           num_warps=4, num_stages=1)
    return out[:, :num_q_heads], out[:, num_q_heads:]
