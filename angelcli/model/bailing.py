"""BailingMoeV2ForCausalLM for angel's torch backend, plus the checkpoint-name table the loader reads.

Module and parameter names mirror the checkpoint (`model.layers.{i}.attention.query_key_value.weight`, ...)
so that almost every tensor loads under its own name. The exceptions are declared in CHECKPOINT_MAP: the
routed experts, which the checkpoint stores one tensor per expert and projection, and which angel stacks
per layer for the engine and the fused-MoE kernels.

Data flow of one forward (B batch, T new tokens, H hidden, V vocab):
  ids [B, T] -> word_embeddings -> [B, T, H]
  for each layer: h = h + attention(input_layernorm(h)); h = h + mlp(post_attention_layernorm(h))
     (mlp = dense MLP below first_k_dense_replace, else SparseMoe)
  norm -> lm_head -> logits [B, T, V] fp32
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

import torch
from torch import nn

from angelcli.config import ModelConfig
from angelcli.model.layers import MLP, Attention, RMSNorm, Rotary
from angelcli.model.moe import RouterOutput, SparseMoe


@dataclass(frozen=True)
class Stacked:
    """A checkpoint tensor that fills one slice of a stacked parameter: param[expert][rows]."""

    param: str  # parameter name pattern with {i}
    part: int | None  # for w13: 0 = gate rows, 1 = up rows; None = the whole expert slice


@dataclass(frozen=True)
class Renamed:
    """A checkpoint tensor that loads whole into a parameter of another name."""

    param: str  # parameter name pattern with {m}


_EXPERT = r"model\.layers\.(?P<i>\d+)\.mlp\.experts\.(?P<e>\d+)\."
_W13, _W2 = "model.layers.{i}.mlp.experts.w13", "model.layers.{i}.mlp.experts.w2"

# Checkpoint name (regex with named groups) -> where it goes. Everything not listed loads 1:1 by name.
# FP8 checkpoints (angelcli/model/fp8.py) carry companions of each quantised `X.weight`: the scale
# `X.weight_scale_inv` (native fp8) or `X.weight_scale` (compressed-tensors), and `X.input_scale` (static
# activations). Expert companions stack like the weights; every other scale loads into `X.weight_scale`.
CHECKPOINT_MAP: list[tuple[str, Stacked | Renamed]] = [
    (_EXPERT + r"gate_proj\.weight", Stacked(_W13, 0)),
    (_EXPERT + r"up_proj\.weight", Stacked(_W13, 1)),
    (_EXPERT + r"down_proj\.weight", Stacked(_W2, None)),
    (_EXPERT + r"gate_proj\.weight_scale(_inv)?", Stacked(_W13 + "_scale", 0)),
    (_EXPERT + r"up_proj\.weight_scale(_inv)?", Stacked(_W13 + "_scale", 1)),
    (_EXPERT + r"down_proj\.weight_scale(_inv)?", Stacked(_W2 + "_scale", None)),
    (_EXPERT + r"gate_proj\.input_scale", Stacked(_W13 + "_input_scale", 0)),
    (_EXPERT + r"up_proj\.input_scale", Stacked(_W13 + "_input_scale", 1)),
    (_EXPERT + r"down_proj\.input_scale", Stacked(_W2 + "_input_scale", None)),
    (r"(?P<m>.+)\.weight_scale_inv", Renamed("{m}.weight_scale")),
]
_COMPILED = [(re.compile(p + r"$"), target) for p, target in CHECKPOINT_MAP]

# Tensors that stay in high precision whatever the quantisation: the router decides which experts run and a
# rounding error there changes routing; embeddings, head and norms are small and accuracy-critical.
HIGH_PRECISION = [
    r".*\.mlp\.gate\.weight",
    r".*\.mlp\.gate\.expert_bias",
    r"model\.word_embeddings\.weight",
    r"lm_head\.weight",
    r".*norm\.weight",
    r".*layernorm\.weight",
]
FP32_TENSORS = [r".*\.mlp\.gate\.expert_bias"]  # stored and kept in fp32 (spec §2)


def keeps_high_precision(name: str) -> bool:
    """True for checkpoint tensors that quantisation must never touch (the model's quant predicate)."""
    return any(re.fullmatch(p, name) for p in HIGH_PRECISION)


def is_fp32_tensor(name: str) -> bool:
    return any(re.fullmatch(p, name) for p in FP32_TENSORS)


def map_checkpoint_name(name: str) -> tuple[str, int | None, int | None]:
    """Checkpoint name -> (parameter name, expert index or None, part or None)."""
    for regex, target in _COMPILED:
        m = regex.match(name)
        if m:
            if isinstance(target, Renamed):
                return target.param.format(m=m["m"]), None, None
            return target.param.format(i=m["i"]), int(m["e"]), target.part
    return name, None, None


def expected_checkpoint_names(cfg: ModelConfig) -> list[str]:
    """Every tensor name a complete BF16 checkpoint of this config holds, in checkpoint order."""
    names = ["model.word_embeddings.weight"]
    for i in range(cfg.num_hidden_layers):
        p = f"model.layers.{i}"
        names += [f"{p}.input_layernorm.weight", f"{p}.attention.query_key_value.weight",
                  f"{p}.attention.query_layernorm.weight", f"{p}.attention.key_layernorm.weight",
                  f"{p}.attention.dense.weight", f"{p}.post_attention_layernorm.weight"]
        if not cfg.is_moe_layer(i):
            names += [f"{p}.mlp.{n}_proj.weight" for n in ("gate", "up", "down")]
            continue
        names += [f"{p}.mlp.gate.weight", f"{p}.mlp.gate.expert_bias"]
        for e in range(cfg.num_experts):
            names += [f"{p}.mlp.experts.{e}.{n}_proj.weight" for n in ("gate", "up", "down")]
        if cfg.num_shared_experts:
            names += [f"{p}.mlp.shared_experts.{n}_proj.weight" for n in ("gate", "up", "down")]
    return names + ["model.norm.weight", "lm_head.weight"]


def expected_shape(cfg: ModelConfig, name: str) -> tuple[int, ...]:
    """Shape of a checkpoint tensor of this config (spec §2)."""
    H, D = cfg.hidden_size, cfg.head_dim
    qkv = (cfg.num_attention_heads + 2 * cfg.num_key_value_heads) * D
    table = [
        (r"model\.word_embeddings\.weight|lm_head\.weight", (cfg.vocab_size, H)),
        (r".*\.(input|post_attention)_layernorm\.weight|model\.norm\.weight", (H,)),
        (r".*\.attention\.query_key_value\.weight", (qkv, H)),
        (r".*\.attention\.(query|key)_layernorm\.weight", (D,)),
        (r".*\.attention\.dense\.weight", (H, cfg.num_attention_heads * D)),
        (r".*\.mlp\.gate\.weight", (cfg.num_experts, H)),
        (r".*\.mlp\.gate\.expert_bias", (cfg.num_experts,)),
        (r".*\.mlp\.experts\.\d+\.(gate|up)_proj\.weight", (cfg.moe_intermediate_size, H)),
        (r".*\.mlp\.experts\.\d+\.down_proj\.weight", (H, cfg.moe_intermediate_size)),
        (r".*\.mlp\.shared_experts\.(gate|up)_proj\.weight", (cfg.shared_intermediate_size, H)),
        (r".*\.mlp\.shared_experts\.down_proj\.weight", (H, cfg.shared_intermediate_size)),
        (r".*\.mlp\.(gate|up)_proj\.weight", (cfg.intermediate_size, H)),
        (r".*\.mlp\.down_proj\.weight", (H, cfg.intermediate_size)),
    ]
    for pattern, shape in table:
        if re.fullmatch(pattern, name):
            return shape
    raise KeyError(name)


class DecoderLayer(nn.Module):
    def __init__(self, cfg: ModelConfig, i: int, tp=None):
        super().__init__()
        self.input_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.attention = Attention(cfg, i, tp)
        self.post_attention_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.mlp = SparseMoe(cfg, i, tp) if cfg.is_moe_layer(i) else MLP(cfg.hidden_size, cfg.intermediate_size, tp)

    def forward(self, h, cos, sin, cache=None, router_out=None):
        h = h + self.attention(self.input_layernorm(h), cos, sin, cache)
        x = self.post_attention_layernorm(h)
        return h + (self.mlp(x, router_out) if isinstance(self.mlp, SparseMoe) else self.mlp(x))


class BailingModel(nn.Module):
    def __init__(self, cfg: ModelConfig, tp=None):
        super().__init__()
        self.word_embeddings = nn.Embedding(cfg.vocab_size, cfg.hidden_size)  # replicated under TP
        self.layers = nn.ModuleList(DecoderLayer(cfg, i, tp) for i in range(cfg.num_hidden_layers))
        self.norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)


@dataclass
class ForwardOutput:
    logits: torch.Tensor  # [B, T or 1, V] fp32
    hidden: dict[int, torch.Tensor] = field(default_factory=dict)  # layer -> residual stream after it [B, T, H]
    router: list[RouterOutput] = field(default_factory=list)  # one per MoE layer, in layer order


class BailingMoeForCausalLM(nn.Module):
    # Inference (no autograd, eval mode, one process) runs angelcli/model/inference.py: the same numerics with
    # fewer ops. False on an instance forces the modules' forward, the slow twin tests compare against.
    fast_inference = True

    def __init__(self, cfg: ModelConfig, tp=None):
        """tp: a TensorParallel (model/parallel.py) to build this rank's slice; None = the whole model."""
        super().__init__()
        from angelcli.model.parallel import lm_head_split

        self.config = cfg
        self.tp = tp if tp is not None and tp.world > 1 else None
        self.model = BailingModel(cfg, self.tp)
        self.vocab_split = self.tp is not None and lm_head_split(cfg, self.tp.world)
        vocab = cfg.vocab_size // self.tp.world if self.vocab_split else cfg.vocab_size
        self.lm_head = nn.Linear(cfg.hidden_size, vocab, bias=False)
        self.rotary = Rotary(cfg)

    def forward(
        self,
        input_ids: torch.Tensor,
        cache=None,
        *,
        capture_layers: tuple[int, ...] = (),
        return_router: bool = False,
        last_only: bool = False,
        positions: torch.Tensor | None = None,
        logits_mask: torch.Tensor | None = None,
    ) -> ForwardOutput:
        """input_ids [B, T] -> ForwardOutput.

        cache: a KVCache (engine/kv_cache.py); the new tokens sit at positions cache.seq_len .. +T and the
        cache advances by T afterwards. capture_layers: decoder-layer indices whose output residual stream
        (after the layer's MLP add) is returned in `hidden` (EAGLE3 reads these). return_router: collect every
        MoE layer's RouterOutput (routing verification). last_only: compute logits for the last position only.
        logits_mask [B, T] bool: compute logits only where True, returned flattened as [N, V] (training scores
        answer tokens only, and the vocabulary projection is the largest matmul of a small model).
        """
        if self.fast_inference and self.tp is None and not self.training and not torch.is_grad_enabled():
            from angelcli.model import inference

            out = ForwardOutput(logits=None)  # type: ignore[arg-type]
            h, out.hidden = inference.forward(self, input_ids, cache, positions, capture_layers,
                                              out.router if return_router else None)
            return self._head(h, out, last_only, logits_mask)
        B, T = input_ids.shape
        if positions is None and getattr(cache, "is_ragged", False):
            positions = cache.positions(T)  # [B, T]: each row continues from its own length
        if positions is None:
            start = cache.seq_len if cache is not None else 0
            positions = torch.arange(start, start + T, device=input_ids.device).expand(B, T)
        h = self.model.word_embeddings(input_ids)
        cos, sin = self.rotary(positions, h.dtype)
        out = ForwardOutput(logits=None)  # type: ignore[arg-type]
        router = out.router if return_router else None
        for i, layer in enumerate(self.model.layers):
            h = layer(h, cos, sin, cache, router)
            if i in capture_layers:
                out.hidden[i] = h
        if cache is not None:
            cache.advance(T)
        return self._head(h, out, last_only, logits_mask)

    def _head(self, h, out: ForwardOutput, last_only: bool, logits_mask) -> ForwardOutput:
        """Final norm and lm_head on the last decoder layer's output h [B, T, H]; fills out.logits."""
        if last_only:
            h = h[:, -1:]
        elif logits_mask is not None:
            h = h[logits_mask]  # [N, H]
        if self.fast_inference and not torch.is_grad_enabled():
            from angelcli.model.inference import lin, norm

            logits = lin(self.lm_head, norm(h, self.model.norm), input_major=True)  # the same ops, fewer calls
        else:
            h = self.model.norm(h)  # per position, so normalising only the rows kept is the same
            logits = self.lm_head(h)
        if self.vocab_split:
            logits = self.tp.all_gather_last(logits)  # [B, T, V]: each rank computed V / world columns
        out.logits = logits if logits.dtype == torch.float32 else logits.float()
        return out
