"""tests/upstream_bailing.py (the upstream-structured speed baseline) computes the spec's model: its logits match
the naive reference forward and transformers' generate() with it gives the cached reference's greedy tokens."""

import pytest
import torch

from angelcli.fixtures import random_state_dict, tiny_config
from tests import reference_bailing as ref
from tests import upstream_bailing as upstream


def _pair(**overrides):
    cfg = tiny_config(vocab_size=96, **overrides)
    sd = random_state_dict(cfg, seed=3, dtype=torch.float32)
    return cfg, sd, upstream.UpstreamBailing.from_state_dict(cfg, sd)


def test_upstream_structure_logits_match_the_spec_reference():
    cfg, sd, model = _pair()
    ids = [3, 17, 42, 8, 77, 5, 61, 2, 90, 33]
    with torch.inference_mode():
        got = model(torch.tensor([ids])).logits[0]
    assert (got - ref.forward(cfg, sd, ids)).abs().max() < 1e-4


def test_upstream_structure_generate_matches_cached_reference_tokens():
    cfg, sd, model = _pair(num_experts=16, n_group=4, topk_group=2, num_experts_per_tok=4)
    prompt = [0, 5, 9, 14, 33]
    with torch.inference_mode():
        out = model.generate(torch.tensor([prompt]), max_new_tokens=12, do_sample=False, eos_token_id=None,
                             pad_token_id=1)
        want = ref.greedy_cached(cfg, sd, prompt, 12)
    assert out[0, len(prompt):].tolist() == want


def test_upstream_structure_rejects_a_mismatched_checkpoint():
    cfg, sd, _ = _pair()
    sd = dict(sd)
    sd.pop("lm_head.weight")
    with pytest.raises(ValueError, match="lm_head.weight"):
        upstream.UpstreamBailing.from_state_dict(cfg, sd)
