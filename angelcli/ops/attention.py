"""Paged KV cache write and causal GQA prefill attention over the cache.

Cache layout (docs/kernels.md): k_cache / v_cache [num_blocks, block_size, Hkv, D]; sequence b's token at
position p lives in block block_table[b, p // block_size], slot p % block_size; block_table [B, max_blocks]
int32; seq_lens [B] int32 counts the tokens in the cache *including* the ones being processed.

Prefill handles any number of new query tokens per sequence (a first prompt, a follow-up turn on top of a
cached prefix, or the k+1 tokens of a speculative verify step): q [Tq, Hq, D] is packed by sequence with
cu_seqlens_q [B+1]; query i of sequence b is at position seq_lens[b] - q_len_b + i and attends causally to
cache positions 0..that. The caller writes the new k / v into the cache first (kv_cache_write), so the
kernel reads every key from one place. Needs seq_lens[b] >= q_len_b.

The kernel is FlashAttention-2 style: one program per (BLOCK_M queries, sequence, query head); it walks
the keys in BLOCK_N tiles, gathering each tile's rows through the block table, keeps a running max and
sum in fp32 (exp2 with log2(e) folded into the scale) and stops at the diagonal, so a causal tile row
never loads keys it cannot see. P is rounded to the activation dtype before P @ V, as the twin does.
GQA: query head h reads KV head h // (Hq / Hkv) (AntAngelMed: 32 / 4 = 8).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from angelcli.ops._runtime import cdiv, check_tensor, launch, next_pow2

LOG2E = 1.4426950408889634


@triton.jit
def _kv_write_kernel(
    # pointers
    k_ptr, v_ptr, k_cache_ptr, v_cache_ptr, slot_ptr,
    # sizes
    num_kv_heads, head_dim, block_size,
    # strides
    stride_kt, stride_kh, stride_vt, stride_vh,
    stride_kcb, stride_kcs, stride_kch, stride_vcb, stride_vcs, stride_vch,
    # meta-parameters
    H_P2: tl.constexpr, D_P2: tl.constexpr,
):
    t = tl.program_id(0).to(tl.int64)
    slot = tl.load(slot_ptr + t).to(tl.int64)
    if slot < 0:
        return  # padding token
    blk = slot // block_size
    off = slot % block_size
    h = tl.arange(0, H_P2)[:, None]
    d = tl.arange(0, D_P2)[None, :]
    mask = (h < num_kv_heads) & (d < head_dim)
    k = tl.load(k_ptr + t * stride_kt + h * stride_kh + d, mask=mask)
    v = tl.load(v_ptr + t * stride_vt + h * stride_vh + d, mask=mask)
    tl.store(k_cache_ptr + blk * stride_kcb + off * stride_kcs + h * stride_kch + d,
             k.to(k_cache_ptr.dtype.element_ty), mask=mask)
    tl.store(v_cache_ptr + blk * stride_vcb + off * stride_vcs + h * stride_vch + d,
             v.to(v_cache_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _prefill_kernel(
    # pointers
    q_ptr, k_cache_ptr, v_cache_ptr, block_table_ptr, cu_q_ptr, seq_lens_ptr, out_ptr,
    # sizes
    head_dim, block_size, group,
    # strides
    stride_qt, stride_qh, stride_kb, stride_ks, stride_kh, stride_vb, stride_vs, stride_vh, stride_bt,
    stride_ot, stride_oh,
    # scalars
    scale_log2,
    # meta-parameters
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, D_P2: tl.constexpr,
):
    m_blk = tl.program_id(0)
    b = tl.program_id(1)
    h = tl.program_id(2)
    q_start = tl.load(cu_q_ptr + b)
    q_len = tl.load(cu_q_ptr + b + 1) - q_start
    if m_blk * BLOCK_M >= q_len:
        return
    ctx = tl.load(seq_lens_ptr + b)
    kvh = h // group
    offs_m = m_blk * BLOCK_M + tl.arange(0, BLOCK_M)
    m_ok = offs_m < q_len
    d = tl.arange(0, D_P2)
    d_ok = d < head_dim
    q_rows = (q_start + offs_m).to(tl.int64)
    q = tl.load(q_ptr + q_rows[:, None] * stride_qt + h * stride_qh + d[None, :],
                mask=m_ok[:, None] & d_ok[None, :], other=0.0)  # [BM, D]
    q_pos = ctx - q_len + offs_m  # absolute positions of these queries
    # keys beyond the tile's last query are invisible to all its rows
    hi = tl.minimum(ctx, ctx - q_len + (m_blk + 1) * BLOCK_M)
    m_i = tl.full([BLOCK_M], float("-inf"), dtype=tl.float32)
    l_i = tl.zeros([BLOCK_M], dtype=tl.float32)
    acc = tl.zeros([BLOCK_M, D_P2], dtype=tl.float32)
    table = block_table_ptr + b.to(tl.int64) * stride_bt
    for start in range(0, hi, BLOCK_N):
        kpos = start + tl.arange(0, BLOCK_N)
        k_ok = kpos < hi
        blk = tl.load(table + kpos // block_size, mask=k_ok, other=0).to(tl.int64)
        slot = (kpos % block_size).to(tl.int64)
        k = tl.load(k_cache_ptr + blk[None, :] * stride_kb + slot[None, :] * stride_ks + kvh * stride_kh
                    + d[:, None], mask=k_ok[None, :] & d_ok[:, None], other=0.0)  # [D, BN]
        s = tl.dot(q, k) * scale_log2  # [BM, BN], log2 domain
        s = tl.where((kpos[None, :] <= q_pos[:, None]) & k_ok[None, :], s, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(s, axis=1))
        alpha = tl.exp2(m_i - m_new)
        p = tl.exp2(s - m_new[:, None])
        l_i = l_i * alpha + tl.sum(p, axis=1)
        v = tl.load(v_cache_ptr + blk[:, None] * stride_vb + slot[:, None] * stride_vs + kvh * stride_vh
                    + d[None, :], mask=k_ok[:, None] & d_ok[None, :], other=0.0)  # [BN, D]
        acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v)
        m_i = m_new
    out = acc / l_i[:, None]
    tl.store(out_ptr + q_rows[:, None] * stride_ot + h * stride_oh + d[None, :],
             out.to(out_ptr.dtype.element_ty), mask=m_ok[:, None] & d_ok[None, :])


def check_cache(k_cache: torch.Tensor, v_cache: torch.Tensor, block_table: torch.Tensor, seq_lens: torch.Tensor,
                device) -> None:
    check_tensor("k_cache", k_cache, ndim=4, dtypes=(torch.bfloat16, torch.float16), device=device)
    check_tensor("v_cache", v_cache, ndim=4, shape=tuple(k_cache.shape), dtypes=(k_cache.dtype,), device=device)
    check_tensor("block_table", block_table, ndim=2, dtypes=(torch.int32,), device=device)
    check_tensor("seq_lens", seq_lens, ndim=1, shape=(block_table.shape[0],), dtypes=(torch.int32,),
                 device=device)


def kv_cache_write(k: torch.Tensor, v: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor,
                   slot_mapping: torch.Tensor) -> None:
    """Store k, v [T, Hkv, D] (head / token strides free) into k_cache / v_cache [NB, BS, Hkv, D] in place,
    token t at slot_mapping[t] = block * BS + offset (int32/int64; negative = skip)."""
    check_tensor("k_cache", k_cache, ndim=4, dtypes=(torch.bfloat16, torch.float16))
    nb, bs, hkv, d = k_cache.shape
    check_tensor("v_cache", v_cache, ndim=4, shape=(nb, bs, hkv, d), dtypes=(k_cache.dtype,), device=k_cache.device)
    check_tensor("k", k, ndim=3, shape=(None, hkv, d), device=k_cache.device)
    t = k.shape[0]
    check_tensor("v", v, ndim=3, shape=(t, hkv, d), device=k_cache.device)
    check_tensor("slot_mapping", slot_mapping, ndim=1, shape=(t,), dtypes=(torch.int32, torch.int64),
                 device=k_cache.device)
    launch(_kv_write_kernel, (t,), k_cache.device,
           args=dict(k_ptr=k, v_ptr=v, k_cache_ptr=k_cache, v_cache_ptr=v_cache, slot_ptr=slot_mapping,
                     num_kv_heads=hkv, head_dim=d, block_size=bs, stride_kt=k.stride(0), stride_kh=k.stride(1),
                     stride_vt=v.stride(0), stride_vh=v.stride(1), stride_kcb=k_cache.stride(0),
                     stride_kcs=k_cache.stride(1), stride_kch=k_cache.stride(2), stride_vcb=v_cache.stride(0),
                     stride_vcs=v_cache.stride(1), stride_vch=v_cache.stride(2)),
           constexprs=dict(H_P2=next_pow2(hkv), D_P2=next_pow2(d)), num_warps=4, num_stages=1)


def attention_prefill(q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor, block_table: torch.Tensor,
                      cu_seqlens_q: torch.Tensor, seq_lens: torch.Tensor, scale: float | None = None,
                      max_q_len: int | None = None) -> torch.Tensor:
    """Causal GQA attention of packed new tokens against the paged cache (see the module docstring).

    q [Tq, Hq, D] (token / head strides free), caches [NB, BS, Hkv, D], block_table [B, max_blocks] int32,
    cu_seqlens_q [B+1] int32, seq_lens [B] int32 (context including the new tokens), scale defaults to
    D^-0.5. max_q_len (longest q_len_b) sizes the grid; without it Tq is used, which is correct but
    launches idle programs for multi-sequence batches. Returns [Tq, Hq, D] in q.dtype.
    """
    check_tensor("q", q, ndim=3, dtypes=(torch.bfloat16, torch.float16))
    tq, hq, d = q.shape
    check_cache(k_cache, v_cache, block_table, seq_lens, q.device)
    if k_cache.shape[3] != d or hq % k_cache.shape[2]:
        raise ValueError(f"attention_prefill: q heads/dim {hq}x{d} vs cache heads/dim "
                         f"{k_cache.shape[2]}x{k_cache.shape[3]}: need the same D and Hq % Hkv == 0")
    b = block_table.shape[0]
    check_tensor("cu_seqlens_q", cu_seqlens_q, ndim=1, shape=(b + 1,), dtypes=(torch.int32,), device=q.device)
    scale = d ** -0.5 if scale is None else float(scale)
    out = torch.empty(tq, hq, d, dtype=q.dtype, device=q.device)
    d_p2 = next_pow2(d)
    block_m = 64 if d_p2 <= 128 else 32
    block_n = 64 if d_p2 <= 64 else 32
    grid = (cdiv(max_q_len if max_q_len is not None else tq, block_m), b, hq)
    launch(_prefill_kernel, grid, q.device,
           args=dict(q_ptr=q, k_cache_ptr=k_cache, v_cache_ptr=v_cache, block_table_ptr=block_table,
                     cu_q_ptr=cu_seqlens_q, seq_lens_ptr=seq_lens, out_ptr=out, head_dim=d,
                     block_size=k_cache.shape[1], group=hq // k_cache.shape[2], stride_qt=q.stride(0),
                     stride_qh=q.stride(1), stride_kb=k_cache.stride(0), stride_ks=k_cache.stride(1),
                     stride_kh=k_cache.stride(2), stride_vb=v_cache.stride(0), stride_vs=v_cache.stride(1),
                     stride_vh=v_cache.stride(2), stride_bt=block_table.stride(0), stride_ot=out.stride(0),
                     stride_oh=out.stride(1), scale_log2=scale * LOG2E),
           constexprs=dict(BLOCK_M=block_m, BLOCK_N=block_n, D_P2=d_p2), num_warps=4 if d_p2 <= 64 else 8,
           num_stages=2)
    return out
