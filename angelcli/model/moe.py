"""The BailingMoeV2 mixture-of-experts block: sigmoid router with group-limited top-k, stacked experts.

Routing (spec bailing-moe-v2.md §3.5), all in fp32:
  logits = fp32(x) @ fp32(W_gate)^T                 [T, E]
  s      = sigmoid(logits)                          the scores that weight the experts
  b      = s + expert_bias                          used ONLY to choose experts (aux-loss-free balancing)
  group score = sum of the top-2 b inside each of n_group groups; keep topk_group groups, others -> -inf
  ids    = topk(b_masked, top_k)                    (torch.topk; ties go to whichever torch.topk returns)
  w      = s[ids];  w /= (sum(w) + 1e-20) when top_k > 1;  w *= routed_scaling_factor
Combine: each expert's output is cast to fp32, multiplied by its weight, summed over the k slots in fp32,
cast to the activation dtype; then the shared expert's output is added in the activation dtype.

Experts are stored stacked for the engine: w13 [E, 2I, H] (gate rows, then up rows) and w2 [E, H, I].
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from angelcli.config import ModelConfig
from angelcli.model.layers import MLP


@dataclass
class RouterOutput:
    """What one MoE layer decided for its tokens (T = all tokens of the batch, flattened)."""

    layer: int
    logits: torch.Tensor  # [T, E] fp32, before the sigmoid
    topk_ids: torch.Tensor  # [T, K] int64
    topk_weights: torch.Tensor  # [T, K] fp32, normalised and scaled


def route(
    logits: torch.Tensor,
    expert_bias: torch.Tensor | None,
    top_k: int,
    n_group: int,
    topk_group: int,
    routed_scaling_factor: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Group-limited sigmoid top-k. logits [T, E] fp32 -> (ids [T, K] int64, weights [T, K] fp32)."""
    # (Written with as few tensor ops as the semantics allow: a decode step routes one token per MoE layer and
    # on a CPU the op dispatches, not the arithmetic, are the cost. Casts of fp32 tensors are skipped.)
    f32 = torch.float32
    scores = torch.sigmoid(logits if logits.dtype == f32 else logits.float())  # [T, E]
    if expert_bias is None:
        choice = scores
    else:
        choice = scores + (expert_bias if expert_bias.dtype == f32 else expert_bias.float())
    T, E = choice.shape
    if n_group > 1:
        grouped = choice.view(T, n_group, E // n_group)
        group_scores = grouped.topk(2, dim=-1).values.sum(dim=-1)  # [T, G]
        keep = group_scores.topk(topk_group, dim=-1, sorted=False).indices  # [T, topk_group]
        drop = torch.ones(T, n_group, 1, dtype=torch.bool, device=choice.device).scatter_(1, keep[:, :, None], False)
        choice = grouped.masked_fill(drop, float("-inf")).view(T, E)  # experts of dropped groups -> -inf
    ids = choice.topk(top_k, dim=-1, sorted=True).indices  # [T, K]
    weights = scores.gather(1, ids)  # unbiased scores weight the experts
    if top_k > 1:
        weights = weights / (weights.sum(dim=-1, keepdim=True) + 1e-20)
    return ids, weights * routed_scaling_factor


class Gate(nn.Module):
    """Router weights: `weight` [E, H] (checkpoint dtype, upcast per call) and `expert_bias` [E] kept fp32."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.weight = nn.Parameter(torch.empty(cfg.num_experts, cfg.hidden_size))
        self.expert_bias = nn.Parameter(torch.zeros(cfg.num_experts, dtype=torch.float32), requires_grad=False)


class Experts(nn.Module):
    """All routed experts of one layer, stacked: w13 [E, 2I, H], w2 [E, H, I].

    FP8 checkpoints (see to_fp8) keep w13 / w2 in float8_e4m3fn with stacked fp32 scales: block
    w13_scale [E, 2*ceil(I/128), ceil(H/128)] (gate blocks, then up blocks) and w2_scale
    [E, ceil(H/128), ceil(I/128)], or per-channel w13_scale [E, 2I] and w2_scale [E, H].
    """

    def __init__(self, cfg: ModelConfig, inter: int | None = None):
        super().__init__()
        E, H = cfg.num_experts, cfg.hidden_size
        inter = inter or cfg.moe_intermediate_size  # a tensor-parallel rank holds a slice of I
        self.w13 = nn.Parameter(torch.empty(E, 2 * inter, H))
        self.w2 = nn.Parameter(torch.empty(E, H, inter))
        self.inter = inter
        for name in ("w13_scale", "w2_scale", "w13_input_scale", "w2_input_scale"):
            self.register_parameter(name, None)

    def to_fp8(self, w13_scale_shape: tuple[int, ...], w2_scale_shape: tuple[int, ...], static_input: bool) -> None:
        """Swap to FP8 storage before loading (meta device); scale shapes are per expert, in-memory layout."""
        from angelcli.model.fp8 import FP8_DTYPE

        E = self.w13.shape[0]

        def param(shape, dtype):
            return nn.Parameter(torch.empty(shape, dtype=dtype), requires_grad=False)

        self.w13 = param(tuple(self.w13.shape), FP8_DTYPE)
        self.w2 = param(tuple(self.w2.shape), FP8_DTYPE)
        self.w13_scale = param((E, *w13_scale_shape), torch.float32)
        self.w2_scale = param((E, *w2_scale_shape), torch.float32)
        if static_input:  # gate and up read the same input: one scale each, [E, 2]; down [E, 1]
            self.w13_input_scale = param((E, 2), torch.float32)
            self.w2_input_scale = param((E, 1), torch.float32)

    def expert(self, e: int, x: torch.Tensor) -> torch.Tensor:
        """Expert e on x [n, H] -> [n, H], in x's dtype: down(silu(gate x) * up x)."""
        if self.w13_scale is not None:
            return self._expert_fp8(e, x)
        w13 = self.w13[e]
        gate = F.linear(x, w13[: self.inter])
        up = F.linear(x, w13[self.inter :])
        return F.linear(F.silu(gate) * up, self.w2[e])

    def _expert_fp8(self, e: int, x: torch.Tensor) -> torch.Tensor:
        """The same expert with FP8 weights, dequantised on the fly (angelcli/model/fp8.py numerics)."""
        from angelcli.model.fp8 import fp8_linear

        w13, s13 = self.w13[e], self.w13_scale[e]
        half = s13.shape[0] // 2  # gate scale rows (block rows or channels), then up
        gate = fp8_linear(x, w13[: self.inter], s13[:half])
        up = fp8_linear(x, w13[self.inter :], s13[half:])
        return fp8_linear(F.silu(gate) * up, self.w2[e], self.w2_scale[e])


class SparseMoe(nn.Module):
    sorted_dispatch = False  # set on instances by the trainer: the training dispatch of _routed_sorted

    def __init__(self, cfg: ModelConfig, layer_idx: int, tp=None):
        super().__init__()
        self.cfg, self.layer_idx, self.tp = cfg, layer_idx, tp
        self.gate = Gate(cfg)  # replicated: every rank routes identically
        self.experts = Experts(cfg, cfg.moe_intermediate_size // (tp.world if tp else 1))
        self.shared_experts = (MLP(cfg.hidden_size, cfg.shared_intermediate_size, tp)
                               if cfg.num_shared_experts else None)

    def router_logits(self, x: torch.Tensor) -> torch.Tensor:
        """x [T, H] -> logits [T, E] fp32 (router weight upcast, as the reference does)."""
        return F.linear(x.float(), self.gate.weight.float())

    def forward(self, x: torch.Tensor, router_out: list | None = None) -> torch.Tensor:
        """x [B, T, H] -> [B, T, H]. Appends a RouterOutput to `router_out` when given."""
        cfg = self.cfg
        shape = x.shape
        flat = x.reshape(-1, shape[-1])  # [N, H]
        logits = self.router_logits(flat)
        bias = self.gate.expert_bias if cfg.moe_router_enable_expert_bias else None
        ids, weights = route(logits, bias, cfg.num_experts_per_tok, cfg.n_group, cfg.topk_group,
                             cfg.routed_scaling_factor)
        if router_out is not None:
            router_out.append(RouterOutput(self.layer_idx, logits, ids, weights))
        if self.sorted_dispatch and self.experts.w13_scale is None:
            routed = self._routed_sorted(flat, ids, weights)
        else:
            N, K = ids.shape
            # Each (token, slot) pair's expert output in fp32; summed over slots afterwards, like the reference.
            slot_out = torch.zeros(N, K, shape[-1], dtype=torch.float32, device=x.device)  # [N, K, H]
            for e in ids.unique().tolist():
                tok, slot = (ids == e).nonzero(as_tuple=True)
                slot_out[tok, slot] = self.experts.expert(e, flat[tok]).float() * weights[tok, slot, None]
            routed = slot_out.sum(dim=1)  # [N, H] fp32; a tensor-parallel rank holds a partial sum over I
        if self.tp is not None:
            routed = self.tp.all_reduce(routed)
        y = routed.to(x.dtype).view(shape)
        if self.shared_experts is not None:
            y = y + self.shared_experts(x)
        return y

    def _routed_sorted(self, flat, ids, weights):
        """Training dispatch (opt-in, angel tiny-train): the same experts, weights and fp32 combine as forward,
        with the (token, slot) pairs sorted by expert. One gather in and one index_add out, and the stacked
        weights unbound once, so backward writes each gradient once instead of one full-size zero-filled
        buffer per expert (which made the loop in forward spend most of a CPU training step in fill/copy/add).
        flat [N, H], ids / weights [N, K] -> routed [N, H] fp32."""
        N, K = ids.shape
        E, inter = self.cfg.num_experts, self.experts.inter
        pair_expert = ids.reshape(-1)  # [N*K]
        order = pair_expert.argsort(stable=True)
        counts = torch.bincount(pair_expert, minlength=E).tolist()
        token_of = order // K  # [N*K] the token of each sorted pair
        chunks = torch.split(flat[token_of], counts)  # per expert [n_e, H]
        w13, w2 = self.experts.w13.unbind(0), self.experts.w2.unbind(0)
        outs = []
        for e, chunk in enumerate(chunks):
            if counts[e]:
                gate, up = F.linear(chunk, w13[e]).split(inter, dim=-1)
                outs.append(F.linear(F.silu(gate) * up, w2[e]))
        pair_out = torch.cat(outs).float() * weights.reshape(-1)[order, None]  # [N*K, H] fp32
        return torch.zeros(N, flat.shape[-1], dtype=torch.float32, device=flat.device).index_add_(0, token_of, pair_out)
