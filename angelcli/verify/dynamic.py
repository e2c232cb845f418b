"""Dynamic stage of `angel verify`: run prompts through the checkpoint and measure how it routes.

Per MoE layer (N routed tokens, E experts, K = num_experts_per_tok, G groups of E/G experts):
  top_k            every token chose exactly K distinct, valid experts
  groups           distinct expert groups per token; the group limit holds when it is <= topk_group
  expert_load [E]  tokens routed to each expert; sums to N x K
  dead_experts     experts no token chose
  max/mean load    mean = N K / E
  entropy          of the load distribution (nats) and normalised by log E (1.0 = perfectly even)
  bias_changed     share of tokens whose expert set differs when the selection is recomputed without the
                   expert_bias (angelcli.model.route on the recorded fp32 logits): how much the
                   aux-loss-free balancing bias steers routing
With --against OTHER the same token ids run through OTHER, and per layer: identical_share (tokens with the
same top-k set) and mean_jaccard (|A ∩ B| / |A ∪ B|), plus logit drift on the final logits: KL(self || other)
mean and max, top-1 agreement, and the drift of the top-1 token's log-probability.

The forward pass is angelcli.verify.stream (one layer in memory at a time).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch

from angelcli.config import ModelConfig
from angelcli.model.moe import RouterOutput, route
from angelcli.verify.checks import ROUTING, Check, check, skip


@dataclass
class Thresholds:
    """Where the routing checks draw the line (CLI options of the same names)."""

    max_dead_share: float = 0.10  # fail a layer when more than this share of its experts got no token
    min_entropy: float = 0.60  # fail a layer whose load entropy / log(E) is below this (collapse)
    min_expected_load: float = 5.0  # judge dead experts only when N K / E is at least this
    min_jaccard: float = 0.80  # --against: fail a layer whose mean Jaccard is below this
    max_kl: float = 0.05  # --against: fail when mean KL(self || other) of the final logits exceeds this


def expert_sets(ids: torch.Tensor, num_experts: int) -> torch.Tensor:
    """ids [N, K] -> membership mask [N, E] (bool); out-of-range ids are dropped."""
    mask = torch.zeros(ids.shape[0], num_experts, dtype=torch.bool)
    valid = (ids >= 0) & (ids < num_experts)
    rows = torch.arange(ids.shape[0])[:, None].expand_as(ids)
    mask[rows[valid], ids[valid]] = True
    return mask


def layer_stats(r: RouterOutput, cfg: ModelConfig) -> dict:
    """Routing statistics of one MoE layer (see module docstring)."""
    E, K, G, TG = cfg.num_experts, cfg.num_experts_per_tok, cfg.n_group, cfg.topk_group
    ids = r.topk_ids.long().cpu()
    N = ids.shape[0]
    valid = (ids >= 0) & (ids < E)
    sets = expert_sets(ids, E)
    bad_topk = int(((sets.sum(1) != K) | ~valid.all(1)).sum()) if ids.shape[1] == K else N
    groups = sets.view(N, G, E // G).any(-1).sum(1) if N else torch.zeros(0, dtype=torch.long)
    load = torch.bincount(ids[valid].flatten(), minlength=E)  # counts duplicates too: a bad top-k shows here
    total = int(load.sum())
    p = load.double() / max(total, 1)
    entropy = float(-(p[p > 0] * p[p > 0].log()).sum())
    mean = N * K / E
    stats = {
        "layer": r.layer,
        "tokens": N,
        "top_k": K,
        "expert_load": load.tolist(),
        "load_sum": total,
        "dead_experts": (load == 0).nonzero().flatten().tolist(),
        "max_load": int(load.max()) if E else 0,
        "mean_load": mean,
        "max_mean_ratio": (float(load.max()) / mean) if mean else 0.0,
        "entropy": entropy,
        "entropy_norm": entropy / math.log(E) if E > 1 else 1.0,
        "top_k_violations": bad_topk,
        "max_groups": int(groups.max()) if N else 0,
        "group_violations": int((groups > TG).sum()) if G > 1 else 0,
        "nonfinite_logits": int((~torch.isfinite(r.logits)).any(1).sum()),
        "bias_changed_share": None,
        "bias_swapped_mean": None,
    }
    if cfg.moe_router_enable_expert_bias and N:
        plain, _ = route(r.logits.float().cpu(), None, K, G, TG, cfg.routed_scaling_factor)
        same = (sets & expert_sets(plain, E)).sum(1)
        stats["bias_changed_share"] = float((same < K).float().mean())
        stats["bias_swapped_mean"] = float((K - same).float().mean())
    return stats


def routing_checks(layers: list[dict], cfg: ModelConfig, th: Thresholds) -> list[Check]:
    """Aggregate per-layer statistics into the named routing checks; each names its failing layers."""
    if not layers:
        return [skip("routing.top_k", ROUTING, "no MoE layers in this config")]
    K, TG = cfg.num_experts_per_tok, cfg.topk_group
    out = []

    def per_layer(name: str, bad: list[dict], ok_text: str, bad_text) -> None:
        layers_bad = [s["layer"] for s in bad]
        out.append(check(name, ROUTING, not bad, bad_text(bad[0], len(bad)) if bad else ok_text, layers_bad))

    n_layers = len(layers)
    per_layer("routing.finite", [s for s in layers if s["nonfinite_logits"]],
              f"router logits finite in all {n_layers} MoE layers",
              lambda s, n: f"{n} layer(s) with NaN/inf router logits (first: layer {s['layer']}, "
                           f"{s['nonfinite_logits']} tokens)")
    per_layer("routing.top_k", [s for s in layers if s["top_k_violations"]],
              f"every token picks exactly {K} distinct experts in all {n_layers} MoE layers",
              lambda s, n: f"{n} layer(s) break top-{K} (first: layer {s['layer']}, {s['top_k_violations']} tokens)")
    if cfg.n_group > 1:
        per_layer("routing.group_limit", [s for s in layers if s["group_violations"]],
                  f"at most {TG} of {cfg.n_group} groups per token (max seen {max(s['max_groups'] for s in layers)})",
                  lambda s, n: f"{n} layer(s) exceed {TG} groups per token (first: layer {s['layer']}, "
                               f"{s['group_violations']} tokens, up to {s['max_groups']} groups)")
    per_layer("routing.load_sum", [s for s in layers if s["load_sum"] != s["tokens"] * K],
              f"expert_load sums to tokens x {K} in every layer",
              lambda s, n: f"layer {s['layer']}: expert_load sums to {s['load_sum']}, expected {s['tokens'] * K}")
    tokens = layers[0]["tokens"]
    if layers[0]["mean_load"] < th.min_expected_load:
        need = math.ceil(th.min_expected_load * cfg.num_experts / K)
        out.append(skip("routing.dead_experts", ROUTING, f"{tokens} tokens are too few to call an expert dead "
                        f"(need >= {need}; raise --max-tokens or add prompts)"))
    else:
        E = cfg.num_experts
        per_layer("routing.dead_experts", [s for s in layers if len(s["dead_experts"]) > th.max_dead_share * E],
                  f"<= {th.max_dead_share:.0%} of experts unused per layer "
                  f"(most: {max(len(s['dead_experts']) for s in layers)} of {E})",
                  lambda s, n: f"{n} layer(s) with too many dead experts (first: layer {s['layer']}, "
                               f"{len(s['dead_experts'])} of {E} never chosen)")
    per_layer("routing.balance", [s for s in layers if s["entropy_norm"] < th.min_entropy],
              f"load entropy >= {th.min_entropy:.2f} of log(E) in every layer "
              f"(lowest {min(s['entropy_norm'] for s in layers):.3f})",
              lambda s, n: f"{n} layer(s) with collapsed load (first: layer {s['layer']}, entropy "
                           f"{s['entropy_norm']:.3f} of log(E), max/mean load {s['max_mean_ratio']:.1f})")
    return out


def compare_routing(a: list[RouterOutput], b: list[RouterOutput], num_experts: int) -> list[dict]:
    """Per MoE layer: share of tokens with an identical expert set, and the mean Jaccard index."""
    out = []
    for ra, rb in zip(a, b):
        sa, sb = expert_sets(ra.topk_ids.cpu(), num_experts), expert_sets(rb.topk_ids.cpu(), num_experts)
        inter = (sa & sb).sum(1).double()
        union = (sa | sb).sum(1).double().clamp(min=1)
        out.append({"layer": ra.layer, "tokens": int(sa.shape[0]),
                    "identical_share": float((sa == sb).all(1).double().mean()),
                    "mean_jaccard": float((inter / union).mean())})
    return out


@torch.no_grad()
def logit_drift(chunks_a, chunks_b) -> dict:
    """Drift between two models' fp32 logits, given as paired iterables of [n, V] chunks."""
    kl_sum, kl_max, n, top1_same, d_sum, d_max = 0.0, 0.0, 0, 0, 0.0, 0.0
    for la, lb in zip(chunks_a, chunks_b):
        pa, pb = torch.log_softmax(la.float(), -1), torch.log_softmax(lb.float(), -1)
        kl = (pa.exp() * (pa - pb)).sum(-1).clamp(min=0)  # KL(a || b) per position
        top = pa.argmax(-1, keepdim=True)
        d = (pa.gather(1, top) - pb.gather(1, top)).abs().squeeze(1)
        kl_sum, kl_max = kl_sum + float(kl.sum()), max(kl_max, float(kl.max()))
        d_sum, d_max = d_sum + float(d.sum()), max(d_max, float(d.max()))
        top1_same += int((top.squeeze(1) == pb.argmax(-1)).sum())
        n += la.shape[0]
    n = max(n, 1)
    return {"positions": n, "kl_mean": kl_sum / n, "kl_max": kl_max, "top1_agreement": top1_same / n,
            "top1_logprob_drift_mean": d_sum / n, "top1_logprob_drift_max": d_max}


def against_checks(layers: list[dict], drift: dict, th: Thresholds) -> list[Check]:
    bad = [s for s in layers if s["mean_jaccard"] < th.min_jaccard]
    low = min(layers, key=lambda s: s["mean_jaccard"]) if layers else None
    out = [check("against.routing", ROUTING, not bad,
                 (f"{len(bad)} layer(s) below mean Jaccard {th.min_jaccard:.2f} (first: layer {bad[0]['layer']}, "
                  f"{bad[0]['mean_jaccard']:.3f}, identical sets {bad[0]['identical_share']:.1%})") if bad else
                 (f"mean Jaccard >= {th.min_jaccard:.2f} in every layer (lowest: layer {low['layer']}, "
                  f"{low['mean_jaccard']:.3f})" if low else "no MoE layers"),
                 [s["layer"] for s in bad])]
    out.append(check("against.logits", ROUTING, drift["kl_mean"] <= th.max_kl,
                     f"mean KL {drift['kl_mean']:.4g} nats (max {drift['kl_max']:.4g}, limit {th.max_kl:g}), "
                     f"top-1 agreement {drift['top1_agreement']:.1%}"))
    return out


@dataclass
class DynamicResult:
    routing: dict = field(default_factory=dict)
    against: dict | None = None
    checks: list[Check] = field(default_factory=list)
