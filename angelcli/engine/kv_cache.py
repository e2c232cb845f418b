"""A contiguous KV cache for the torch backend: one preallocated [B, Hkv, max_len, D] pair per layer.

The model writes new keys/values at positions seq_len .. seq_len + T during a forward and calls advance(T)
once at the end, so every layer of one forward sees the same offset. trim(n) rolls back the last n
tokens (speculative decoding rejects draft tokens this way); nothing is copied, the slots are reused.
The paged cache of the triton backend (issue 6) offers the same interface.
"""

from __future__ import annotations

import torch

from angelcli.config import ModelConfig
from angelcli.errors import ResourceError


class KVCache:
    def __init__(self, cfg: ModelConfig, batch: int, max_len: int, dtype: torch.dtype, device: torch.device | str):
        shape = (batch, cfg.num_key_value_heads, max_len, cfg.head_dim)
        self.k = [torch.zeros(shape, dtype=dtype, device=device) for _ in range(cfg.num_hidden_layers)]
        self.v = [torch.zeros(shape, dtype=dtype, device=device) for _ in range(cfg.num_hidden_layers)]
        self.max_len = max_len
        self.seq_len = 0

    @staticmethod
    def bytes_per_token(cfg: ModelConfig, dtype: torch.dtype) -> int:
        """K and V of every layer for one token (64 KiB for AntAngelMed in bf16)."""
        elem = torch.empty((), dtype=dtype).element_size()
        return 2 * cfg.num_hidden_layers * cfg.num_key_value_heads * cfg.head_dim * elem

    def update(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """k, v [B, Hkv, T, D] for positions seq_len..seq_len+T -> all keys/values [B, Hkv, seq_len+T, D]."""
        T = k.shape[2]
        end = self.seq_len + T
        if end > self.max_len:
            raise ResourceError(f"KV cache full: {end} tokens needed, {self.max_len} allocated (raise --max-seq-len)")
        self.k[layer][:, :, self.seq_len : end] = k
        self.v[layer][:, :, self.seq_len : end] = v
        return self.k[layer][:, :, :end], self.v[layer][:, :, :end]

    def advance(self, n: int) -> None:
        self.seq_len += n

    def trim(self, n: int) -> None:
        """Forget the last n tokens."""
        if n < 0 or n > self.seq_len:
            raise ValueError(f"cannot trim {n} of {self.seq_len} cached tokens")
        self.seq_len -= n

    def reset(self) -> None:
        self.seq_len = 0
