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

The kernel runs as one program per expert (grid (E,)), so prefill-sized inputs are spread over the SMs
instead of one program walking every pair: each program (1) builds the histogram of all pairs
(tl.histogram over chunks; the ids are a few KB and stay in L2, so recomputing it per program is cheaper
than a second launch and a grid-wide barrier), (2) derives its own run [start, start + padded) from the
padded counts of the experts before it, (3) scans the pairs in order and writes those routed to its
expert at start + rank (ascending p, deterministic), then (4) fills its run's padding with the sentinel
and its blocks' expert ids. Program 0 also writes num_post_padded and the unused tail. No two programs
write the same address, so no atomics and no barrier are needed.
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
    BLOCK_M: tl.constexpr, BINS: tl.constexpr, CHUNK: tl.constexpr,
):
    """Program e places expert e's pairs; BINS >= num_experts + 1 (the last bins collect masked lanes)."""
    e = tl.program_id(0)
    bins = tl.arange(0, BINS)
    # ---- (1) histogram of pairs per expert (ids outside [0, E) land in bin BINS - 1 and are dropped) ------
    counts = tl.zeros([BINS], dtype=tl.int32)
    for start in range(0, num_pairs, CHUNK):
        offs = start + tl.arange(0, CHUNK)
        ids = tl.load(topk_ids_ptr + offs, mask=offs < num_pairs, other=-1).to(tl.int32)
        ids = tl.where((ids >= 0) & (ids < num_experts), ids, BINS - 1)
        counts += tl.histogram(ids, BINS)
    counts = tl.where(bins < num_experts, counts, 0)
    # ---- (2) this expert's padded run [run_start, run_start + run_len) ------------------------------------
    padded = (counts + BLOCK_M - 1) // BLOCK_M * BLOCK_M
    run_start = tl.sum(tl.where(bins < e, padded, 0), axis=0)
    run_len = tl.sum(tl.where(bins == e, padded, 0), axis=0)
    count = tl.sum(tl.where(bins == e, counts, 0), axis=0)
    if e == 0:
        total = tl.sum(padded, axis=0)
        tl.store(total_ptr, total)
        # unused tail: sentinel ids, expert -1 (blocks past num_post_padded are never read by the GEMMs)
        for start in range(total, capacity, CHUNK):
            slot = start + tl.arange(0, CHUNK)
            tl.store(sorted_ids_ptr + slot, tl.zeros_like(slot) + num_pairs, mask=slot < capacity)
            tl.store(expert_ids_ptr + slot // BLOCK_M, tl.zeros_like(slot) - 1,
                     mask=(slot < capacity) & (slot % BLOCK_M == 0))
    if count > 0:
        # ---- (3) scatter this expert's pair ids in ascending order ----------------------------------------
        placed = 0
        for start in range(0, num_pairs, CHUNK):
            offs = start + tl.arange(0, CHUNK)
            ids = tl.load(topk_ids_ptr + offs, mask=offs < num_pairs, other=-1).to(tl.int32)
            hit = ((ids == e) & (offs < num_pairs)).to(tl.int32)
            rank = tl.cumsum(hit, axis=0) - hit  # same-expert pairs earlier in this chunk
            tl.store(sorted_ids_ptr + run_start + placed + rank, offs, mask=hit > 0)
            placed += tl.sum(hit, axis=0)
        # ---- (4) sentinel in the padding, expert id per block ----------------------------------------------
        pad = run_start + count + tl.arange(0, BLOCK_M)
        tl.store(sorted_ids_ptr + pad, tl.zeros_like(pad) + num_pairs, mask=pad < run_start + run_len)
        for first in range(run_start // BLOCK_M, (run_start + run_len) // BLOCK_M, CHUNK):
            blk = first + tl.arange(0, CHUNK)
            tl.store(expert_ids_ptr + blk, tl.zeros_like(blk) + e, mask=blk < (run_start + run_len) // BLOCK_M)


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
    bins = next_pow2(num_experts + 1)  # one spare bin for dropped / masked lanes
    chunk = min(1024, max(16, next_pow2(n)))
    launch(_moe_align_kernel, (num_experts,), dev,
           args=dict(topk_ids_ptr=topk_ids.contiguous(), sorted_ids_ptr=sorted_ids, expert_ids_ptr=expert_ids,
                     total_ptr=total, num_pairs=n, num_experts=num_experts, capacity=cap),
           constexprs=dict(BLOCK_M=block_m, BINS=bins, CHUNK=chunk), num_warps=4, num_stages=1)
    return sorted_ids, expert_ids, total
