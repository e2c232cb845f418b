"""moe_align: sort (token, slot) pairs by expert and pad each expert's run to BLOCK_M.

The fused-MoE GEMMs (angelcli/ops/moe.py) process BLOCK_M rows at a time, and every row of a block
must use the same expert's weights. So the pairs are grouped by expert first, each group padded up to a
multiple of BLOCK_M with a sentinel, and every block gets one expert id.

Worked example: T=3 tokens, top-k K=2, E=4 experts, block_m=4.

    topk_ids = [[2, 0],      pair ids p = t*K + k:   p0=2 p1=0
                [1, 2],                              p2=1 p3=2
                [2, 3]]                              p4=2 p5=3
    expert 0: pairs 1         -> [1, 6, 6, 6]        (6 = T*K is the padding sentinel)
    expert 1: pairs 2         -> [2, 6, 6, 6]
    expert 2: pairs 0, 3, 4   -> [0, 3, 4, 6]
    expert 3: pairs 5         -> [5, 6, 6, 6]

    sorted_ids      = [1,6,6,6, 2,6,6,6, 0,3,4,6, 5,6,6,6, 6,6,6,6]   (capacity 20, see below)
    expert_ids      = [0, 1, 2, 3, -1]                                   (one per block; -1 = unused)
    num_post_padded = [16]                                               (blocks past it are skipped)

A GEMM row with pair id p reads token p // K and writes output row p; sentinel rows are masked.
Capacity P = roundup(T*K + min(E, T*K) * (block_m - 1), block_m): at most min(E, T*K) experts are hit and
each wastes at most block_m - 1 slots. Within an expert, pairs keep ascending p (deterministic output).

The kernel runs as a single program: (1) count pairs per expert with a one-hot [CHUNK, E] sum, (2) a
cumsum over the padded counts gives each expert's start, (3) each chunk's pairs are placed at
start[e] + (pairs of e already placed) + (rank among equal experts earlier in the chunk, a one-hot
cumsum), and (4) padding slots and per-block expert ids are computed from the slot position alone, so no
two stores ever hit the same address and no barrier is needed. One program is plenty for decode (T*K <=
a few thousand); at 16K-token prefill it costs ~1k chunk iterations, which docs/kernels.md notes.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from angelcli.ops._runtime import cdiv, check_tensor, launch, next_pow2


@triton.jit
def _moe_align_kernel(
    # pointers
    topk_ids_ptr, sorted_ids_ptr, expert_ids_ptr, total_ptr,
    # sizes
    num_pairs, num_experts, capacity,
    # meta-parameters
    BLOCK_M: tl.constexpr, E_P2: tl.constexpr, CHUNK: tl.constexpr,
):
    experts = tl.arange(0, E_P2)
    # ---- (1) histogram of pairs per expert --------------------------------------------------------
    counts = tl.zeros([E_P2], dtype=tl.int32)
    for start in range(0, num_pairs, CHUNK):
        offs = start + tl.arange(0, CHUNK)
        ids = tl.load(topk_ids_ptr + offs, mask=offs < num_pairs, other=-1).to(tl.int32)
        hit = (ids[:, None] == experts[None, :]) & (offs < num_pairs)[:, None]  # [CHUNK, E_P2]
        counts += tl.sum(hit.to(tl.int32), axis=0)
    counts = tl.where(experts < num_experts, counts, 0)
    # ---- (2) padded runs: expert e owns slots [starts[e], ends[e]) ----------------------------------
    padded = (counts + BLOCK_M - 1) // BLOCK_M * BLOCK_M
    ends = tl.cumsum(padded, axis=0)
    starts = ends - padded
    total = tl.sum(padded, axis=0)
    tl.store(total_ptr, total)
    # ---- (3) scatter pair ids ------------------------------------------------------------------------
    placed = tl.zeros([E_P2], dtype=tl.int32)
    for start in range(0, num_pairs, CHUNK):
        offs = start + tl.arange(0, CHUNK)
        valid = offs < num_pairs
        ids = tl.load(topk_ids_ptr + offs, mask=valid, other=-1).to(tl.int32)
        hit = ((ids[:, None] == experts[None, :]) & valid[:, None]).to(tl.int32)  # [CHUNK, E_P2]
        rank = tl.cumsum(hit, axis=0) - hit  # same-expert pairs earlier in this chunk
        dest = tl.sum(hit * (rank + (starts + placed)[None, :]), axis=1)  # [CHUNK]
        ok = valid & (tl.sum(hit, axis=1) > 0)  # ids outside [0, E) are dropped
        tl.store(sorted_ids_ptr + dest, offs, mask=ok)
        placed += tl.sum(hit, axis=0)
    # ---- (4) sentinel in the padding, expert id per block ---------------------------------------------
    for start in range(0, capacity, CHUNK):
        slot = start + tl.arange(0, CHUNK)
        owner = tl.sum((ends[None, :] <= slot[:, None]).to(tl.int32), axis=1)  # expert whose run holds slot
        sel = (owner[:, None] == experts[None, :]).to(tl.int32)
        run_start = tl.sum(sel * starts[None, :], axis=1)
        run_count = tl.sum(sel * counts[None, :], axis=1)
        is_pad = (slot - run_start >= run_count) | (slot >= total)
        tl.store(sorted_ids_ptr + slot, tl.zeros_like(slot) + num_pairs, mask=(slot < capacity) & is_pad)
        first_of_block = (slot % BLOCK_M) == 0
        block_expert = tl.where(slot < total, owner, -1)
        tl.store(expert_ids_ptr + slot // BLOCK_M, block_expert, mask=(slot < capacity) & first_of_block)


def moe_align(topk_ids: torch.Tensor, num_experts: int, block_m: int
              ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Group (token, slot) pairs by expert, padded to block_m (see the module docstring).

    topk_ids [T, K] int32/int64 with values in [0, num_experts) ->
    sorted_ids [P] int32 (pair ids p = t*K + k, sentinel T*K), expert_ids [P // block_m] int32 (-1 for
    unused blocks), num_post_padded [1] int32; P = roundup(T*K + min(E, T*K) * (block_m - 1), block_m).
    """
    check_tensor("topk_ids", topk_ids, ndim=2, dtypes=(torch.int32, torch.int64))
    if num_experts < 1 or block_m < 1:
        raise ValueError(f"moe_align: num_experts={num_experts} and block_m={block_m} must be >= 1")
    t, k = topk_ids.shape
    n = t * k
    dev = topk_ids.device
    cap = cdiv(n + min(num_experts, n) * (block_m - 1), block_m) * block_m
    sorted_ids = torch.empty(cap, dtype=torch.int32, device=dev)
    expert_ids = torch.empty(cap // block_m, dtype=torch.int32, device=dev)
    total = torch.zeros(1, dtype=torch.int32, device=dev)
    if n == 0:
        return sorted_ids, expert_ids, total
    e_p2 = next_pow2(num_experts)
    chunk = 32 if n <= 256 else 128
    launch(_moe_align_kernel, (1,), dev,
           args=dict(topk_ids_ptr=topk_ids.contiguous(), sorted_ids_ptr=sorted_ids, expert_ids_ptr=expert_ids,
                     total_ptr=total, num_pairs=n, num_experts=num_experts, capacity=cap),
           constexprs=dict(BLOCK_M=block_m, E_P2=e_p2, CHUNK=chunk),
           num_warps=4 if chunk * e_p2 <= 8192 else 8, num_stages=1)
    return sorted_ids, expert_ids, total
