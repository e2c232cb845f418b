"""A contiguous KV cache for the torch backend: one preallocated [B, Hkv, max_len, D] pair per layer.

The model writes new keys/values at each row's length during a forward and calls advance(T) once at the
end, so every layer of one forward sees the same offsets. trim(n) rolls back the last n tokens
(speculative decoding rejects draft tokens this way); nothing is copied, the slots are reused.

Rows may hold sequences of different lengths (a batch of requests). `rows(idx)` is a view on some rows
that shares storage and lengths with its parent: the engine prefills each request through its own
one-row view and decodes the live rows together. When the rows of a view are at different lengths the
cache is "ragged": the model then asks it for positions ([B, T], each row continuing from its length) and
a causal mask ([B, 1, T, S]: key j is visible to query t of row i when j <= len_i + t). A one-row or
equal-length contiguous view takes exactly the single-sequence path (same ops, same numbers).
The paged cache of the triton backend (engine/paged_cache.py) offers the same interface.
"""

from __future__ import annotations

import copy

import torch

from angelcli.config import ModelConfig
from angelcli.errors import ResourceError


class RowLengths:
    """Per-row lengths shared by both caches: `lens` for every allocated row, `sel` the rows in use."""

    lens: list[int]
    sel: list[int]

    @property
    def batch(self) -> int:
        return len(self.sel)

    @property
    def row_lens(self) -> list[int]:
        return [self.lens[s] for s in self.sel]

    @property
    def lengths_differ(self) -> bool:
        lens = self.row_lens
        return any(n != lens[0] for n in lens)

    @property
    def seq_len(self) -> int:
        """Length shared by all rows (ValueError when the rows differ: use row_lens)."""
        if self.lengths_differ:
            raise ValueError(f"rows hold different lengths {self.row_lens}; use row_lens")
        return self.row_lens[0]


class KVCache(RowLengths):
    def __init__(self, cfg: ModelConfig, batch: int, max_len: int, dtype: torch.dtype, device: torch.device | str,
                 num_kv_heads: int | None = None):
        """num_kv_heads: KV heads held by this process (a tensor-parallel rank holds a slice)."""
        shape = (batch, num_kv_heads or cfg.num_key_value_heads, max_len, cfg.head_dim)
        self.k = [torch.zeros(shape, dtype=dtype, device=device) for _ in range(cfg.num_hidden_layers)]
        self.v = [torch.zeros(shape, dtype=dtype, device=device) for _ in range(cfg.num_hidden_layers)]
        self.max_len = max_len
        self.device = torch.device(device)
        self.lens = [0] * batch  # tokens cached per row (shared with views)
        self.sel = list(range(batch))  # rows of `lens` this object covers
        self.store_rows = list(range(batch))  # the same rows as indices into self.k / self.v
        self.contiguous = True  # self.k[l] holds exactly the selected rows, in order

    @staticmethod
    def bytes_per_token(cfg: ModelConfig, dtype: torch.dtype) -> int:
        """K and V of every layer for one token (64 KiB for AntAngelMed in bf16)."""
        elem = torch.empty((), dtype=dtype).element_size()
        return 2 * cfg.num_hidden_layers * cfg.num_key_value_heads * cfg.head_dim * elem

    @property
    def is_ragged(self) -> bool:
        return not self.contiguous or self.lengths_differ

    def advance(self, n: int) -> None:
        for s in self.sel:
            self.lens[s] += n

    def trim(self, n: int) -> None:
        """Forget the last n tokens of every row."""
        for s in self.sel:
            if n < 0 or n > self.lens[s]:
                raise ValueError(f"cannot trim {n} of {self.lens[s]} cached tokens")
        for s in self.sel:
            self.lens[s] -= n

    def compact(self, start: int, keep: list[int]) -> None:
        """Keep the tokens at start + keep[i] (keep ascending) at start + i and forget everything after them:
        tree verification (eagle/tree.py) wrote a whole tree from `start` and accepts one path of it.
        One-row or equal-length contiguous caches only."""
        if self.is_ragged:
            raise ValueError("compact needs a contiguous cache with rows of equal length")
        if keep != list(range(len(keep))):  # a path straight down the first slots needs no copy
            idx = torch.tensor(keep, device=self.device) + start
            for t in (*self.k, *self.v):
                t.narrow(2, start, len(keep)).copy_(t.index_select(2, idx))
        self.trim(self.seq_len - start - len(keep))

    def reset(self) -> None:
        for s in self.sel:
            self.lens[s] = 0

    # ---- views ----
    def rows(self, idx: list[int]) -> "KVCache":
        """A view on rows `idx` (positions in this object's rows) sharing storage and lengths."""
        idx = list(idx)
        if idx == list(range(len(self.sel))):
            return self  # all rows in order: the view would be this object (decode asks every step)
        view = copy.copy(self)
        view.sel = [self.sel[i] for i in idx]
        contiguous = self.contiguous and idx == list(range(idx[0], idx[0] + len(idx)))
        if contiguous:
            a, b = idx[0], idx[0] + len(idx)
            view.k = [t[a:b] for t in self.k]
            view.v = [t[a:b] for t in self.v]
            view.store_rows = list(range(len(idx)))
        else:
            view.store_rows = [self.store_rows[i] for i in idx]
        view.contiguous = contiguous
        return view

    def row(self, b: int) -> "KVCache":
        return self.rows([b])

    # ---- what the model calls ----
    def positions(self, T: int) -> torch.Tensor:
        """[B, T] int64 positions of T new tokens per row."""
        start = torch.tensor(self.row_lens, device=self.device)
        return start[:, None] + torch.arange(T, device=self.device)[None]

    def ragged_mask(self, T: int) -> torch.Tensor:
        """[B, 1, T, S] bool causal mask over S = max(len) + T keys; see the module docstring."""
        pos = self.positions(T)  # [B, T]
        S = max(self.row_lens) + T
        keys = torch.arange(S, device=self.device)
        return (keys[None, None, :] <= pos[:, :, None])[:, None]

    def update(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """k, v [B, Hkv, T, D] for each row's next T positions -> keys/values [B, Hkv, S, D] (S = max end)."""
        T = k.shape[2]
        lens = self.row_lens
        end = max(lens) + T
        if end > self.max_len:
            raise ResourceError(f"KV cache full: {end} tokens needed, {self.max_len} allocated (raise --max-seq-len)")
        kc, vc = self.k[layer], self.v[layer]
        if not self.is_ragged:
            start = lens[0]  # narrow: one op where [:, :, a:b] dispatches three (decode is dispatch-bound)
            kc.narrow(2, start, T).copy_(k)
            vc.narrow(2, start, T).copy_(v)
            return kc.narrow(2, 0, end), vc.narrow(2, 0, end)
        for i, (r, n) in enumerate(zip(self.store_rows, lens)):
            kc[r, :, n : n + T] = k[i]
            vc[r, :, n : n + T] = v[i]
        rows = torch.tensor(self.store_rows, device=kc.device)
        return kc[rows, :, :end], vc[rows, :, :end]
