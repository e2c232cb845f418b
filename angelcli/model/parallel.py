"""Tensor parallelism for BailingMoeV2: how each checkpoint tensor is split across ranks, and the collectives.

Megatron-style split, decided per checkpoint tensor (the loader slices memory-mapped tensors, so a rank
reads only its own bytes):

  attention.query_key_value [(Hq + 2 Hkv) D, H]  rows: this rank's Q heads, then its K and V heads
  attention.dense           [H, Hq D]            columns (the same Q heads)     -> all_reduce after
  mlp / shared_experts / experts gate_proj, up_proj [I, H]   rows (a slice of I)
  mlp / shared_experts / experts down_proj          [H, I]   columns            -> all_reduce after
  lm_head                   [V, H]               rows (a slice of the vocabulary) -> all_gather of logits
  everything else (embeddings, norms, router gate and bias) is replicated.

Query heads split evenly (Hq % tp == 0). KV heads split evenly when Hkv >= tp; with fewer KV heads than
ranks each rank keeps the one KV head its query heads read (query head h reads KV head h // (Hq / Hkv)).
Every expert is split over I, so each rank runs all routed experts on 1/tp of their width: routing is
computed identically on every rank (replicated router) and no token has to move between ranks.

Block-FP8 scales split with their weights in units of 128 rows / columns, so every split boundary must be
a multiple of 128 (AntAngelMed: head_dim 128, I = 1024 -> tp <= 8); check_tp says which degrees work.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from angelcli.config import ModelConfig

BLOCK = 128


@dataclass
class TensorParallel:
    """This process's place in a tensor-parallel group; `group` is a torch.distributed process group."""

    rank: int
    world: int
    group: object = field(default=None, repr=False)

    def all_reduce(self, x: torch.Tensor) -> torch.Tensor:
        """Sum over ranks, in place (every rank gets the same result)."""
        import torch.distributed as dist

        dist.all_reduce(x, group=self.group)
        return x

    def all_gather_last(self, x: torch.Tensor) -> torch.Tensor:
        """Concatenate each rank's x along the last dim, in rank order."""
        import torch.distributed as dist

        parts = [torch.empty_like(x) for _ in range(self.world)]
        dist.all_gather(parts, x.contiguous(), group=self.group)
        return torch.cat(parts, dim=-1)


def kv_slice(cfg: ModelConfig, rank: int, world: int) -> tuple[int, int]:
    """(first KV head, count) held by `rank`: an even split, or one replicated head when Hkv < world."""
    hkv = cfg.num_key_value_heads
    if hkv >= world:
        n = hkv // world
        return rank * n, n
    return rank * hkv // world, 1


def lm_head_split(cfg: ModelConfig, world: int) -> bool:
    return world > 1 and cfg.vocab_size % world == 0


def check_tp(cfg: ModelConfig, world: int, block_fp8: bool = False) -> list[str]:
    """Why `world`-way tensor parallelism cannot run this config (empty list: it can)."""
    why = []
    if world < 1:
        return ["tensor-parallel degree must be >= 1"]
    hq, hkv, d = cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim
    if hq % world:
        why.append(f"num_attention_heads ({hq}) is not divisible by {world}")
    if hkv % world and world % hkv:
        why.append(f"num_key_value_heads ({hkv}) neither divides nor is divisible by {world}")
    inters = {"moe_intermediate_size": cfg.moe_intermediate_size}
    if cfg.first_k_dense_replace:
        inters["intermediate_size"] = cfg.intermediate_size
    for name, size in inters.items():
        if size % world:
            why.append(f"{name} ({size}) is not divisible by {world}")
        elif block_fp8 and world > 1 and (size // world) % BLOCK:
            why.append(f"{name} / {world} = {size // world} is not a multiple of 128 (block-FP8 scales)")
    if block_fp8 and world > 1 and not why:
        _, nkv = kv_slice(cfg, 0, world)
        if (hq // world * d) % BLOCK or (nkv * d) % BLOCK or (hq * d) % BLOCK or (hkv * d) % BLOCK:
            why.append(f"attention head slices ({hq // world} query / {nkv} KV heads x head_dim {d}) are not "
                       "multiples of 128 rows (block-FP8 scales)")
    return why


def split_kind(cfg: ModelConfig, weight_name: str, world: int) -> str | None:
    """How a checkpoint weight (…weight) splits: 'qkv' | 'rows' | 'cols' | None (replicated)."""
    if world == 1:
        return None
    if weight_name.endswith("attention.query_key_value.weight"):
        return "qkv"
    if weight_name.endswith("attention.dense.weight") or weight_name.endswith("down_proj.weight"):
        return "cols"
    if weight_name.endswith(("gate_proj.weight", "up_proj.weight")):
        return "rows"
    if weight_name == "lm_head.weight" and lm_head_split(cfg, world):
        return "rows"
    return None


def _row_ranges(cfg: ModelConfig, kind: str, n: int, rank: int, world: int) -> list[tuple[int, int]]:
    """Row (kind rows / qkv) or column (kind cols) ranges of a dimension of size n held by `rank`."""
    if kind == "qkv":
        d, hq = cfg.head_dim, cfg.num_attention_heads
        q = hq // world
        k0, nk = kv_slice(cfg, rank, world)
        kbase, vbase = hq * d, (hq + cfg.num_key_value_heads) * d
        return [(rank * q * d, (rank + 1) * q * d), (kbase + k0 * d, kbase + (k0 + nk) * d),
                (vbase + k0 * d, vbase + (k0 + nk) * d)]
    per = n // world
    return [(rank * per, (rank + 1) * per)]


def _take(t: torch.Tensor, dim: int, ranges: list[tuple[int, int]]) -> torch.Tensor:
    parts = [t.narrow(dim, a, b - a) for a, b in ranges]
    return parts[0] if len(parts) == 1 else torch.cat(parts, dim=dim)


def shard_weight(cfg: ModelConfig, tp: TensorParallel | None, name: str, t: torch.Tensor) -> torch.Tensor:
    """This rank's slice of checkpoint weight `name` [N, K] (meta tensors give the local shape)."""
    kind = split_kind(cfg, name, tp.world) if tp else None
    if kind is None:
        return t
    dim = 1 if kind == "cols" else 0
    return _take(t, dim, _row_ranges(cfg, kind, t.shape[dim], tp.rank, tp.world))


def shard_scale(cfg: ModelConfig, tp: TensorParallel | None, weight_name: str, weight_shape, layout: str,
                scale: torch.Tensor) -> torch.Tensor:
    """This rank's slice of an FP8 scale (checkpoint layout: block [gN, gK], channel [N, 1] | [N], tensor)."""
    kind = split_kind(cfg, weight_name, tp.world) if tp else None
    if kind is None or layout == "tensor":
        return scale
    dim = 1 if kind == "cols" else 0
    ranges = _row_ranges(cfg, kind, int(weight_shape[dim]), tp.rank, tp.world)
    if layout == "channel":
        return scale if kind == "cols" else _take(scale, 0, ranges)  # one scale per output row
    if any(a % BLOCK or b % BLOCK for a, b in ranges):
        raise ValueError(f"{weight_name}: tensor-parallel slice {ranges} is not aligned to 128-wide FP8 blocks")
    return _take(scale, dim, [(a // BLOCK, b // BLOCK) for a, b in ranges])
