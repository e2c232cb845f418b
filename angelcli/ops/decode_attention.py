"""Decode attention over the paged KV cache, split along the context (flash-decoding).

One new query token per sequence: q [B, Hq, D]; the token's own k / v are already in the cache at position
seq_lens[b] - 1 (cache layout: angelcli/ops/attention.py). At batch 1 there are only B * Hkv = 4 (sequence,
KV head) pairs, far too few programs for 78 SMs, and a 128K context is 128K keys to stream. So the context
is cut into `num_splits` contiguous ranges, each handled by its own program (pass 1), and a second small
kernel merges the partial results (pass 2):

    pass 1, program (b, kv head, split s):  o_s = softmax(q K_s^T) V_s over its key range, for all
            Hq / Hkv query heads of that KV head at once (GQA packing: the K/V tile is loaded once and used
            by 8 query rows; the row count is padded to 16 for tl.dot), plus lse_s = log2 sum exp2(...).
    pass 2, program (b, q head):  o = sum_s 2^(lse_s - max lse) o_s / sum_s 2^(lse_s - max lse).

Partials are fp32: part_out [B, Hq, S, D], part_lse [B, Hq, S]. An empty split (short sequences) writes
lse = -inf and contributes nothing. num_splits defaults to enough programs for ~2 waves on the device,
capped so that each split keeps at least 256 keys; it depends only on (B, cache capacity, device), never on
seq_lens values, so a CUDA graph captured for a batch size stays valid.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from angelcli.ops._runtime import cdiv, check_tensor, launch, next_pow2
from angelcli.ops.attention import LOG2E, check_cache


@triton.jit
def _decode_split_kernel(
    # pointers
    q_ptr, k_cache_ptr, v_cache_ptr, block_table_ptr, seq_lens_ptr, part_out_ptr, part_lse_ptr,
    # sizes
    head_dim, block_size, group, num_splits,
    # strides
    stride_qb, stride_qh, stride_kb, stride_ks, stride_kh, stride_vb, stride_vs, stride_vh, stride_bt,
    stride_pob, stride_poh, stride_pos, stride_plb, stride_plh,
    # scalars
    scale_log2,
    # meta-parameters
    G_P2: tl.constexpr, BLOCK_N: tl.constexpr, D_P2: tl.constexpr,
):
    b = tl.program_id(0)
    kvh = tl.program_id(1)
    split = tl.program_id(2)
    ctx = tl.load(seq_lens_ptr + b)
    # this split's key range, a whole number of BLOCK_N tiles
    per_split = tl.cdiv(tl.cdiv(ctx, num_splits), BLOCK_N) * BLOCK_N
    lo = split * per_split
    hi = tl.minimum(lo + per_split, ctx)
    g = tl.arange(0, G_P2)
    g_ok = g < group
    heads = kvh * group + g  # query heads served by this KV head
    d = tl.arange(0, D_P2)
    d_ok = d < head_dim
    q = tl.load(q_ptr + b.to(tl.int64) * stride_qb + heads[:, None] * stride_qh + d[None, :],
                mask=g_ok[:, None] & d_ok[None, :], other=0.0)  # [G_P2, D]
    m_i = tl.full([G_P2], float("-inf"), dtype=tl.float32)
    l_i = tl.zeros([G_P2], dtype=tl.float32)
    acc = tl.zeros([G_P2, D_P2], dtype=tl.float32)
    table = block_table_ptr + b.to(tl.int64) * stride_bt
    for start in range(lo, hi, BLOCK_N):
        kpos = start + tl.arange(0, BLOCK_N)
        k_ok = kpos < hi
        blk = tl.load(table + kpos // block_size, mask=k_ok, other=0).to(tl.int64)
        slot = (kpos % block_size).to(tl.int64)
        k = tl.load(k_cache_ptr + blk[None, :] * stride_kb + slot[None, :] * stride_ks + kvh * stride_kh
                    + d[:, None], mask=k_ok[None, :] & d_ok[:, None], other=0.0)  # [D, BN]
        s = tl.dot(q, k) * scale_log2
        s = tl.where(k_ok[None, :], s, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(s, axis=1))
        alpha = tl.exp2(m_i - m_new)
        p = tl.exp2(s - m_new[:, None])
        l_i = l_i * alpha + tl.sum(p, axis=1)
        v = tl.load(v_cache_ptr + blk[:, None] * stride_vb + slot[:, None] * stride_vs + kvh * stride_vh
                    + d[None, :], mask=k_ok[:, None] & d_ok[None, :], other=0.0)  # [BN, D]
        acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v)
        m_i = m_new
    has_keys = lo < hi
    out = tl.where(has_keys, acc / tl.where(has_keys, l_i, 1.0)[:, None], 0.0)
    lse = tl.where(has_keys, m_i + tl.log2(tl.where(has_keys, l_i, 1.0)), float("-inf"))
    po = part_out_ptr + b.to(tl.int64) * stride_pob + heads[:, None] * stride_poh + split * stride_pos + d[None, :]
    tl.store(po, out, mask=g_ok[:, None] & d_ok[None, :])
    tl.store(part_lse_ptr + b.to(tl.int64) * stride_plb + heads * stride_plh + split, lse, mask=g_ok)


@triton.jit
def _decode_merge_kernel(
    # pointers
    part_out_ptr, part_lse_ptr, out_ptr, q_ptr, s_ptr,
    # sizes
    head_dim, num_splits,
    # strides
    stride_pob, stride_poh, stride_pos, stride_plb, stride_plh, stride_ob, stride_oh, stride_qb, stride_sb,
    # meta-parameters
    S_P2: tl.constexpr, D_P2: tl.constexpr, QUANT: tl.constexpr,
):
    b = tl.program_id(0).to(tl.int64)
    h = tl.program_id(1)
    s = tl.arange(0, S_P2)
    s_ok = s < num_splits
    d = tl.arange(0, D_P2)
    d_ok = d < head_dim
    lse = tl.load(part_lse_ptr + b * stride_plb + h * stride_plh + s, mask=s_ok, other=float("-inf"))
    w = tl.exp2(lse - tl.max(lse, axis=0))  # empty splits: 2^-inf = 0
    o = tl.load(part_out_ptr + b * stride_pob + h * stride_poh + s[:, None] * stride_pos + d[None, :],
                mask=s_ok[:, None] & d_ok[None, :], other=0.0)
    res = (tl.sum(o * w[:, None], axis=0) / tl.sum(w, axis=0)).to(out_ptr.dtype.element_ty)
    tl.store(out_ptr + b * stride_ob + h * stride_oh + d, res, mask=d_ok)
    if QUANT:  # head_dim == 128: this head is one FP8 group of the dense projection's input
        rf = res.to(tl.float32)
        scale = tl.div_rn(tl.maximum(tl.max(tl.abs(rf), axis=0), 1e-10), 448.0)
        q = tl.clamp(tl.div_rn(rf, scale), -448.0, 448.0).to(tl.float8e4nv)
        tl.store(q_ptr + b * stride_qb + h * head_dim + d, q, mask=d_ok)
        tl.store(s_ptr + b * stride_sb + h, scale)


def default_num_splits(batch: int, num_kv_heads: int, max_context: int, device) -> int:
    """Splits so that batch * Hkv * splits covers ~2 waves of SMs, each split keeping >= 256 keys."""
    sms = torch.cuda.get_device_properties(device).multi_processor_count if device.type == "cuda" else 8
    want = cdiv(2 * sms, max(1, batch * num_kv_heads))
    return max(1, min(want, cdiv(max_context, 256), 64))


def attention_decode(q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor, block_table: torch.Tensor,
                     seq_lens: torch.Tensor, scale: float | None = None, num_splits: int | None = None
                     ) -> torch.Tensor:
    """One query token per sequence against its paged context (see the module docstring).

    q [B, Hq, D] (strides free, D contiguous), caches [NB, BS, Hkv, D], block_table [B, max_blocks] int32,
    seq_lens [B] int32 >= 1 (context including this token); scale defaults to D^-0.5; num_splits defaults
    to default_num_splits(B, Hkv, max_blocks * BS). Returns [B, Hq, D] in q.dtype.
    """
    return _attention_decode(q, k_cache, v_cache, block_table, seq_lens, scale, num_splits, quant=False)[0]


def attention_decode_fp8(q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor, block_table: torch.Tensor,
                         seq_lens: torch.Tensor, scale: float | None = None, num_splits: int | None = None):
    """attention_decode whose merge pass also quantises the output for the FP8 output projection (D == 128:
    one head is one 128-channel group) -> (out [B, Hq, D], (oq [B, Hq * D] float8_e4m3fn, scale [B, Hq] fp32)),
    the pair equal to reference.quantize_fp8(out.reshape(B, -1))."""
    if q.shape[-1] != 128:
        raise ValueError(f"attention_decode_fp8: head_dim {q.shape[-1]} must be 128 (one FP8 group per head)")
    return _attention_decode(q, k_cache, v_cache, block_table, seq_lens, scale, num_splits, quant=True)


def _attention_decode(q, k_cache, v_cache, block_table, seq_lens, scale, num_splits, quant: bool):
    check_tensor("q", q, ndim=3, dtypes=(torch.bfloat16, torch.float16))
    bsz, hq, d = q.shape
    check_cache(k_cache, v_cache, block_table, seq_lens, q.device)
    hkv = k_cache.shape[2]
    if block_table.shape[0] != bsz or k_cache.shape[3] != d or hq % hkv:
        raise ValueError(f"attention_decode: q {tuple(q.shape)}, cache {tuple(k_cache.shape)}, block_table "
                         f"{tuple(block_table.shape)}: need B rows, the same D and Hq % Hkv == 0")
    capacity = block_table.shape[1] * k_cache.shape[1]
    splits = num_splits or default_num_splits(bsz, hkv, capacity, q.device)
    scale = d ** -0.5 if scale is None else float(scale)
    d_p2 = next_pow2(d)
    part_out = torch.empty(bsz, hq, splits, d, dtype=torch.float32, device=q.device)
    part_lse = torch.empty(bsz, hq, splits, dtype=torch.float32, device=q.device)
    out = torch.empty(bsz, hq, d, dtype=q.dtype, device=q.device)
    oq = torch.empty(bsz, hq * d, dtype=torch.float8_e4m3fn, device=q.device) if quant else out
    osc = torch.empty(bsz, hq, dtype=torch.float32, device=q.device) if quant else out
    group = hq // hkv
    launch(_decode_split_kernel, (bsz, hkv, splits), q.device,
           args=dict(q_ptr=q, k_cache_ptr=k_cache, v_cache_ptr=v_cache, block_table_ptr=block_table,
                     seq_lens_ptr=seq_lens, part_out_ptr=part_out, part_lse_ptr=part_lse, head_dim=d,
                     block_size=k_cache.shape[1], group=group, num_splits=splits, stride_qb=q.stride(0),
                     stride_qh=q.stride(1), stride_kb=k_cache.stride(0), stride_ks=k_cache.stride(1),
                     stride_kh=k_cache.stride(2), stride_vb=v_cache.stride(0), stride_vs=v_cache.stride(1),
                     stride_vh=v_cache.stride(2), stride_bt=block_table.stride(0), stride_pob=part_out.stride(0),
                     stride_poh=part_out.stride(1), stride_pos=part_out.stride(2), stride_plb=part_lse.stride(0),
                     stride_plh=part_lse.stride(1), scale_log2=scale * LOG2E),
           constexprs=dict(G_P2=max(16, next_pow2(group)), BLOCK_N=64, D_P2=d_p2), num_warps=4, num_stages=2)
    launch(_decode_merge_kernel, (bsz, hq), q.device,
           args=dict(part_out_ptr=part_out, part_lse_ptr=part_lse, out_ptr=out, q_ptr=oq, s_ptr=osc, head_dim=d,
                     num_splits=splits, stride_pob=part_out.stride(0), stride_poh=part_out.stride(1),
                     stride_pos=part_out.stride(2), stride_plb=part_lse.stride(0), stride_plh=part_lse.stride(1),
                     stride_ob=out.stride(0), stride_oh=out.stride(1), stride_qb=oq.stride(0) if quant else 0,
                     stride_sb=osc.stride(0) if quant else 0),
           constexprs=dict(S_P2=next_pow2(splits), D_P2=d_p2, QUANT=quant), num_warps=4, num_stages=1)
    return out, ((oq, osc) if quant else None)
