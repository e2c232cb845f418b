"""Building blocks of the BailingMoeV2 torch backend: RMSNorm, rotary tables (with YaRN), attention, MLP.

Numerics follow the HF reference (spec bailing-moe-v2.md §3 and §7) to the letter, because angel's torch
backend is the oracle every fast path is checked against:
  * RMSNorm normalises in fp32, casts back to the input dtype and only then multiplies by the weight.
  * cos/sin are computed in fp32, scaled by the YaRN attention factor, then cast to the activation dtype;
    the rotation itself runs in the activation dtype.
  * Attention is the eager formulation: scores in the activation dtype, softmax in fp32, cast back.
Shapes legend: B batch, T new tokens, S cached + new tokens, H hidden, Hq / Hkv heads, D head_dim.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from angelcli.config import ModelConfig


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dtype = x.dtype
        x32 = x.float()
        x32 = x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * x32.to(dtype)  # cast first, then scale (Llama-style, as upstream)


def yarn_inv_freq(cfg: ModelConfig) -> tuple[torch.Tensor, float]:
    """Inverse frequencies [rotary_dim/2] (fp32) and the cos/sin scale, with YaRN when configured.

    YaRN (vLLM semantics, spec §3): dims rotating faster than beta_fast turns over the original context keep
    their frequency, those slower than beta_slow are divided by `factor`, a linear ramp blends between, and
    cos/sin are multiplied by mscale = 0.1 ln(factor) + 1.
    """
    dim, base = cfg.rotary_dim, float(cfg.rope_theta)
    exponents = torch.arange(0, dim, 2, dtype=torch.int64).float() / dim
    inv_extrap = 1.0 / (base**exponents)
    rs = cfg.yarn
    if rs is None:
        return inv_extrap, 1.0
    factor = float(rs["factor"])
    orig = int(rs.get("original_max_position_embeddings", cfg.max_position_embeddings))
    beta_fast = float(rs.get("beta_fast", 32))
    beta_slow = float(rs.get("beta_slow", 1))

    def correction_dim(rotations: float) -> float:
        return dim * math.log(orig / (rotations * 2 * math.pi)) / (2 * math.log(base))

    low = max(math.floor(correction_dim(beta_fast)), 0)
    high = min(math.ceil(correction_dim(beta_slow)), dim - 1)
    if low == high:
        high += 0.001  # avoid a zero-width ramp
    ramp = ((torch.arange(dim // 2, dtype=torch.float32) - low) / (high - low)).clamp(0, 1)
    extrap_weight = 1.0 - ramp
    inv_interp = inv_extrap / factor
    inv_freq = inv_interp * (1 - extrap_weight) + inv_extrap * extrap_weight
    mscale = float(rs.get("attention_factor") or (0.1 * math.log(factor) + 1.0 if factor > 1 else 1.0))
    return inv_freq, mscale


class Rotary(nn.Module):
    """cos/sin tables for partial NeoX RoPE over the first `rotary_dim` dims of each head."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        inv_freq, self.scale = yarn_inv_freq(cfg)
        self.register_buffer("inv_freq", inv_freq, persistent=False)

    def forward(self, positions: torch.Tensor, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        """positions [B, T] int64 -> cos, sin [B, T, rotary_dim] in `dtype`."""
        freqs = positions.float()[..., None] * self.inv_freq.float().to(positions.device)  # [B, T, rot/2]
        emb = torch.cat((freqs, freqs), dim=-1)
        return (emb.cos() * self.scale).to(dtype), (emb.sin() * self.scale).to(dtype)

    def full_tables(self, positions: torch.Tensor | None, dtype: torch.dtype, head_dim: int,
                    span: tuple[int, int] | None = None):
        """positions [B, T] -> (cos_full, sin_signed [B, T, head_dim] in dtype, swap [head_dim] int64) for the
        one-multiply-add rotation of angelcli/model/inference.py: x * cos_full + x[..., swap] * sin_signed.

        cos_full is cos on the rotary dims and 1 on the pass-through dims; sin_signed is -sin on the first
        rotary half, +sin on the second, 0 on the pass-through dims; swap exchanges the two rotary halves.
        Rows come from a per-position table built with forward's formula (grown by doubling, kept per
        dtype and device), so each value equals what forward computes for that position.
        span (a, b) instead of positions: the consecutive positions a .. b-1 for every row, as [1, b - a, D]."""
        device = self.inv_freq.device if positions is None else positions.device
        need = span[1] if positions is None else int(positions.max()) + 1
        key = (dtype, device, head_dim)
        tables = getattr(self, "_tables", None)
        if tables is None:
            tables = self._tables = {}
        if key not in tables or tables[key][0].shape[0] < need:
            size = max(256, 1 << (need - 1).bit_length())
            pos = torch.arange(size, device=device)[None]
            cos, sin = self.forward(pos, dtype)  # [1, size, rot]
            rot, half = cos.shape[-1], cos.shape[-1] // 2
            cos_full = torch.ones(size, head_dim, dtype=dtype, device=device)
            sin_signed = torch.zeros(size, head_dim, dtype=dtype, device=device)
            cos_full[:, :rot] = cos[0]
            sin_signed[:, :half] = -sin[0, :, :half]
            sin_signed[:, half:rot] = sin[0, :, half:]
            swap = torch.tensor(list(range(half, rot)) + list(range(half)) + list(range(rot, head_dim)),
                                device=device)
            tables[key] = (cos_full, sin_signed, swap)
        cos_full, sin_signed, swap = tables[key]
        if positions is None:
            return cos_full[None, span[0] : span[1]], sin_signed[None, span[0] : span[1]], swap
        return cos_full[positions], sin_signed[positions], swap


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


def apply_partial_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """x [B, heads, T, D]; cos/sin [B, T, rot]. Rotates dims [0, rot) NeoX-style, passes the rest through."""
    rot = cos.shape[-1]
    cos, sin = cos[:, None], sin[:, None]
    x_rot, x_pass = x[..., :rot], x[..., rot:]
    return torch.cat((x_rot * cos + rotate_half(x_rot) * sin, x_pass), dim=-1)


class Attention(nn.Module):
    """Fused [Q|K|V] projection, per-head QK RMSNorm, partial RoPE, GQA causal attention, output proj."""

    fused_training = False  # set on instances by the trainer: fused SDPA in train mode without a cache

    def __init__(self, cfg: ModelConfig, layer_idx: int, tp=None):
        super().__init__()
        self.layer_idx = layer_idx
        self.num_heads, self.num_kv, self.head_dim = cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim
        self.tp = tp  # TensorParallel or None: this rank holds a slice of the heads (model/parallel.py)
        if tp is not None and tp.world > 1:
            from angelcli.model.parallel import kv_slice

            self.num_heads //= tp.world
            self.num_kv = kv_slice(cfg, tp.rank, tp.world)[1]
        qkv_rows = (self.num_heads + 2 * self.num_kv) * self.head_dim
        self.query_key_value = nn.Linear(cfg.hidden_size, qkv_rows, bias=False)
        self.dense = nn.Linear(self.num_heads * self.head_dim, cfg.hidden_size, bias=False)
        self.query_layernorm = RMSNorm(self.head_dim, cfg.rms_norm_eps)
        self.key_layernorm = RMSNorm(self.head_dim, cfg.rms_norm_eps)
        self.scale = self.head_dim**-0.5

    def forward(self, x, cos, sin, cache=None):
        """x [B, T, H] -> [B, T, H]. With a cache, new K/V are appended and attention spans the whole past.

        A ragged cache (rows at different lengths, engine/kv_cache.py) supplies its own causal mask."""
        B, T, _ = x.shape
        qkv = self.query_key_value(x).view(B, T, self.num_heads + 2 * self.num_kv, self.head_dim)
        q, k, v = qkv.split([self.num_heads, self.num_kv, self.num_kv], dim=2)
        q = self.query_layernorm(q).transpose(1, 2)  # [B, Hq, T, D]
        k = self.key_layernorm(k).transpose(1, 2)  # [B, Hkv, T, D]
        v = v.transpose(1, 2)
        q, k = apply_partial_rope(q, cos, sin), apply_partial_rope(k, cos, sin)
        past, ragged = 0, None
        if cache is not None:
            ragged = cache.ragged_mask(T) if getattr(cache, "is_ragged", False) else None  # [B, 1, T, S] bool
            past = 0 if ragged is not None else cache.seq_len
            k, v = cache.update(self.layer_idx, k, v)  # [B, Hkv, S, D]
        rep = self.num_heads // self.num_kv
        k = k.repeat_interleave(rep, dim=1)  # query head h reads KV head h // rep
        v = v.repeat_interleave(rep, dim=1)
        if cache is None and self.fused_training and self.training:
            # Opt-in for training (angel tiny-train sets it): in fp32 the fused kernel computes the same causal
            # softmax as the eager path below with far less time and memory in backward. Everything else keeps
            # the eager path, which reproduces the reference's bf16 rounding of the scores.
            out = F.scaled_dot_product_attention(q, k, v, is_causal=True, scale=self.scale)  # [B, Hq, T, D]
        else:
            S = k.shape[2]
            scores = torch.matmul(q, k.transpose(2, 3)) * self.scale  # [B, Hq, T, S]
            # Causal over absolute positions: new token t (at past + t) sees keys 0..past + t.
            mask = torch.ones(T, S, dtype=torch.bool, device=x.device).tril(diagonal=past) if ragged is None else ragged
            scores = scores.masked_fill(~mask, float("-inf"))
            probs = F.softmax(scores, dim=-1, dtype=torch.float32).to(q.dtype)
            out = torch.matmul(probs, v)  # [B, Hq, T, D]
        out = self.dense(out.transpose(1, 2).reshape(B, T, self.num_heads * self.head_dim))
        return out if self.tp is None else self.tp.all_reduce(out)


class MLP(nn.Module):
    """down(silu(gate(x)) * up(x)): the dense FFN of the first layers and the shared expert."""

    def __init__(self, hidden: int, inter: int, tp=None):
        super().__init__()
        self.tp = tp  # with tensor parallelism this rank holds inter / world of the width
        if tp is not None:
            inter //= tp.world
        self.gate_proj = nn.Linear(hidden, inter, bias=False)
        self.up_proj = nn.Linear(hidden, inter, bias=False)
        self.down_proj = nn.Linear(inter, hidden, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))
        return y if self.tp is None else self.tp.all_reduce(y)
