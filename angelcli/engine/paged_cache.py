"""Paged KV cache for the triton backend: a pool of fixed-size blocks and per-sequence block tables.

    pool    k[layer], v[layer]   [num_blocks, block_size, Hkv, D]   (docs/kernels.md layout)
    cache   block_table          [B, max_blocks] int32 (device)     row b's position p lives in
                                                                    block block_table[b, p // BS], slot p % BS
            lens                 host list, tokens cached per row

Memory is taken from the pool one block at a time as a sequence grows (`reserve`, before each forward)
and given back when it shrinks (`trim` past a block boundary, `reset`), so a batch of requests costs what
its tokens need rather than batch x max_len. The pool size is the engine's KV budget (the planner's
kv_tokens); running out raises ResourceError (exit 4) naming the budget.

`rows(idx)` is a view sharing pool, tables and lengths, exactly like the torch backend's KVCache, so the
engine drives both the same way: prefill a request through its one-row view, decode the live rows.
`step_input(T)` turns the current state into the kernels' metadata for T new tokens per row (StepInput).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch

from angelcli.config import ModelConfig
from angelcli.engine.kv_cache import RowLengths
from angelcli.errors import ResourceError

DEFAULT_BLOCK_SIZE = 16


def cdiv(a: int, b: int) -> int:
    return -(-a // b)


class BlockPool:
    """All KV memory of one engine: per layer k/v [num_blocks, block_size, Hkv, D] plus a free list."""

    def __init__(self, cfg: ModelConfig, num_blocks: int, block_size: int, dtype: torch.dtype,
                 device: torch.device | str, num_kv_heads: int | None = None, growable: bool = False):
        """growable: without a fixed KV budget (CPU, tests) the pool doubles when it runs out instead of
        raising; block ids stay valid, the per-layer tensors are replaced (`generation` counts that)."""
        shape = (num_blocks, block_size, num_kv_heads or cfg.num_key_value_heads, cfg.head_dim)
        self.k = [torch.zeros(shape, dtype=dtype, device=device) for _ in range(cfg.num_hidden_layers)]
        self.v = [torch.zeros(shape, dtype=dtype, device=device) for _ in range(cfg.num_hidden_layers)]
        self.num_blocks, self.block_size = num_blocks, block_size
        self.free = list(range(num_blocks - 1, -1, -1))  # a stack: low block ids are handed out first
        self.growable, self.generation = growable, 0

    @property
    def capacity_tokens(self) -> int:
        return self.num_blocks * self.block_size

    @property
    def free_tokens(self) -> int:
        return len(self.free) * self.block_size

    def grow(self, extra: int) -> None:
        """Add `extra` blocks (copies the pool once; existing block ids keep their contents)."""
        for t in (self.k, self.v):
            for i, old in enumerate(t):
                t[i] = torch.cat([old, old.new_zeros((extra, *old.shape[1:]))])
        self.free = list(range(self.num_blocks + extra - 1, self.num_blocks - 1, -1)) + self.free
        self.num_blocks += extra
        self.generation += 1

    def alloc(self, n: int) -> list[int]:
        if n > len(self.free) and self.growable:
            self.grow(max(n - len(self.free), self.num_blocks))
        if n > len(self.free):
            raise ResourceError(f"KV cache full: {n} more blocks of {self.block_size} tokens needed, "
                                f"{len(self.free)} of {self.num_blocks} free (KV budget {self.capacity_tokens} "
                                "tokens; lower --max-new-tokens or the batch size, or add GPUs)")
        return [self.free.pop() for _ in range(n)]

    def release(self, blocks: list[int]) -> None:
        self.free.extend(reversed(blocks))


@dataclass
class StepInput:
    """Metadata of one forward over T new tokens for each of B rows (N = B*T tokens, packed by row)."""

    positions: torch.Tensor  # [N] int64, absolute position of each new token
    slot_mapping: torch.Tensor  # [N] int64, block * BS + offset where its K/V go
    seq_lens: torch.Tensor  # [B] int32, context length including the new tokens
    cu_seqlens_q: torch.Tensor  # [B+1] int32, row b's tokens are [cu[b], cu[b+1])
    block_table: torch.Tensor  # [B, max_blocks] int32
    tokens_per_row: int  # T
    max_context: int  # max(seq_lens), host value

    @property
    def is_decode(self) -> bool:
        return self.tokens_per_row == 1


class PagedKVCache(RowLengths):
    def __init__(self, pool: BlockPool, batch: int, max_len: int):
        self.pool = pool
        self.device = pool.k[0].device
        self.max_len = max_len
        self.max_blocks = cdiv(max_len, pool.block_size)
        self.table = torch.zeros(batch, self.max_blocks, dtype=torch.int32, device=self.device)
        self.blocks: list[list[int]] = [[] for _ in range(batch)]  # host mirror of the table
        self.lens = [0] * batch
        self.sel = list(range(batch))

    # ---- the KVCache interface (batch, row_lens, seq_len from RowLengths) ----
    @property
    def is_ragged(self) -> bool:
        return self.lengths_differ

    @property
    def block_table(self) -> torch.Tensor:
        """[B, max_blocks] int32 for the selected rows (a view when they are contiguous)."""
        s = self.sel
        if s == list(range(s[0], s[0] + len(s))):
            return self.table[s[0] : s[0] + len(s)]
        return self.table[torch.tensor(s, device=self.device)]

    def rows(self, idx: list[int]) -> "PagedKVCache":
        view = copy.copy(self)
        view.sel = [self.sel[i] for i in idx]
        return view

    def row(self, b: int) -> "PagedKVCache":
        return self.rows([b])

    def advance(self, n: int) -> None:
        for s in self.sel:
            self.lens[s] += n

    def trim(self, n: int) -> None:
        """Forget the last n tokens of every selected row; whole blocks past the end go back to the pool."""
        for s in self.sel:
            if n < 0 or n > self.lens[s]:
                raise ValueError(f"cannot trim {n} of {self.lens[s]} cached tokens")
        for s in self.sel:
            self.lens[s] -= n
            self._shrink(s)

    def reset(self) -> None:
        for s in self.sel:
            self.lens[s] = 0
            self._shrink(s)

    def _shrink(self, s: int) -> None:
        keep = cdiv(self.lens[s], self.pool.block_size)
        if len(self.blocks[s]) > keep:
            self.pool.release(self.blocks[s][keep:])
            del self.blocks[s][keep:]

    # ---- what the paged model calls ----
    def reserve(self, T: int) -> None:
        """Make room for T more tokens in every selected row (blocks from the pool, table updated)."""
        rows, cols, ids = [], [], []
        for s in self.sel:
            end = self.lens[s] + T
            if end > self.max_len:
                raise ResourceError(f"KV cache full: {end} tokens needed, {self.max_len} allocated per sequence "
                                    "(raise --max-seq-len)")
            need = cdiv(end, self.pool.block_size) - len(self.blocks[s])
            if need > 0:
                new = self.pool.alloc(need)
                rows += [s] * need
                cols += list(range(len(self.blocks[s]), len(self.blocks[s]) + need))
                ids += new
                self.blocks[s].extend(new)
        if ids:  # one small host -> device copy for all new blocks
            self.table[torch.tensor(rows), torch.tensor(cols)] = torch.tensor(ids, dtype=torch.int32).to(self.device)

    def step_input(self, T: int) -> StepInput:
        """Kernel metadata for T new tokens per selected row (call reserve(T) first)."""
        lens = self.row_lens
        B, bs, dev = len(lens), self.pool.block_size, self.device
        start = torch.tensor(lens, dtype=torch.int64).to(dev)
        positions = (start[:, None] + torch.arange(T, device=dev)[None]).reshape(-1)  # [B*T]
        table = self.block_table
        row = torch.arange(B, device=dev).repeat_interleave(T)
        slots = table[row, positions // bs].long() * bs + positions % bs
        return StepInput(positions=positions, slot_mapping=slots, seq_lens=(start + T).to(torch.int32),
                         cu_seqlens_q=torch.arange(0, B * T + 1, T, dtype=torch.int32, device=dev),
                         block_table=table, tokens_per_row=T, max_context=max(lens) + T)
