"""Hand-computed routing cases for angelcli.model.route (spec §3.5)."""

import math

import torch

from angelcli.model import route


def logit(p):
    return math.log(p / (1 - p))


def _logits(probs):
    return torch.tensor([[logit(p) for p in probs]], dtype=torch.float32)


def test_group_masking_excludes_best_single_expert_in_weak_group():
    # 8 experts, 4 groups of 2, keep 2 groups, top-2.
    # group scores (sum of both): g0 = .9+.1 = 1.0, g1 = .6+.6 = 1.2, g2 = .55+.5 = 1.05, g3 = .2+.2 = .4
    probs = [0.9, 0.1, 0.6, 0.6, 0.55, 0.5, 0.2, 0.2]
    ids, w = route(_logits(probs), None, top_k=2, n_group=4, topk_group=2, routed_scaling_factor=1.0)
    # Expert 0 has the best score but its group (1.0) loses to g1 (1.2) and g2 (1.05).
    assert sorted(ids[0].tolist()) == [2, 3]
    assert torch.allclose(w[0], torch.tensor([0.5, 0.5]))


def test_group_score_is_top2_sum_not_max():
    # 12 experts, 3 groups of 4, keep 1: g0 max .95 but top-2 sum .95+.1; g1 top-2 .7+.7 wins.
    probs = [0.95, 0.1, 0.1, 0.1, 0.7, 0.7, 0.1, 0.1, 0.3, 0.3, 0.3, 0.3]
    ids, _ = route(_logits(probs), None, top_k=2, n_group=3, topk_group=1, routed_scaling_factor=1.0)
    assert sorted(ids[0].tolist()) == [4, 5]


def test_bias_selects_but_does_not_weight():
    probs = [0.8, 0.3, 0.5, 0.4]
    bias = torch.tensor([0.0, 0.6, 0.0, 0.0])  # lifts expert 1 (0.3 -> 0.9 biased) into the top-2
    ids, w = route(_logits(probs), bias, top_k=2, n_group=1, topk_group=1, routed_scaling_factor=1.0)
    assert ids[0].tolist() == [1, 0]  # sorted by biased score: 0.9, 0.8
    # weights from the UNBIASED scores 0.3 and 0.8, normalised
    assert torch.allclose(w[0], torch.tensor([0.3 / 1.1, 0.8 / 1.1]), atol=1e-6)


def test_normalisation_epsilon_and_scaling():
    probs = [0.2, 0.6, 0.1, 0.05]
    ids, w = route(_logits(probs), None, top_k=2, n_group=1, topk_group=1, routed_scaling_factor=2.5)
    assert ids[0].tolist() == [1, 0]
    expected = torch.tensor([0.6, 0.2]) / (0.8 + 1e-20) * 2.5
    assert torch.allclose(w[0], expected, atol=1e-6)
    assert abs(float(w.sum()) - 2.5) < 1e-5


def test_top1_is_not_normalised():
    probs = [0.2, 0.6, 0.1, 0.05]
    ids, w = route(_logits(probs), None, top_k=1, n_group=1, topk_group=1, routed_scaling_factor=2.0)
    assert ids[0].tolist() == [1]
    assert abs(float(w[0, 0]) - 0.6 * 2.0) < 1e-6  # raw sigmoid score times the scaling factor


def test_ties_resolved_by_torch_topk_consistently():
    # Two experts with identical biased scores compete for the last slot; the rule is torch.topk's.
    probs = [0.7, 0.5, 0.5, 0.1]
    logits = _logits(probs)
    ids, _ = route(logits, None, top_k=2, n_group=1, topk_group=1, routed_scaling_factor=1.0)
    want = torch.sigmoid(logits).topk(2, dim=-1).indices
    assert ids[0].tolist() == want[0].tolist()
    assert ids[0, 0] == 0 and ids[0, 1] in (1, 2)
    # and it is deterministic
    again, _ = route(logits, None, top_k=2, n_group=1, topk_group=1, routed_scaling_factor=1.0)
    assert torch.equal(ids, again)


def test_router_runs_in_fp32_even_for_bf16_logits():
    probs = [0.2, 0.6, 0.1, 0.05]
    ids, w = route(_logits(probs).bfloat16(), torch.zeros(4), top_k=2, n_group=1, topk_group=1, routed_scaling_factor=1.0)
    assert w.dtype == torch.float32


def test_model_router_output_respects_group_limit(tiny_ckpt):
    from angelcli.loader import load_model

    model, cfg, _ = load_model(tiny_ckpt, dtype=torch.float32)
    out = model(torch.arange(40).view(1, 40) % cfg.vocab_size, return_router=True)
    per = cfg.num_experts // cfg.n_group
    for r in out.router:
        assert r.topk_ids.shape == (40, cfg.num_experts_per_tok)
        groups = r.topk_ids // per
        for row in groups:
            assert len(set(row.tolist())) <= cfg.topk_group
        assert torch.allclose(r.topk_weights.sum(-1), torch.full((40,), cfg.routed_scaling_factor), atol=1e-5)
