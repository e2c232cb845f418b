"""The torch backend against an independent naive implementation of the spec, in float32."""

import pytest
import torch

from angelcli.fixtures import random_state_dict, tiny_config, write_checkpoint
from angelcli.loader import load_model
from tests import reference_bailing as ref

SHAPES = [
    dict(),  # 8 experts / 4 groups keep 2 / top-2, one dense layer
    dict(num_experts=16, n_group=4, topk_group=2, num_experts_per_tok=4, first_k_dense_replace=2, num_hidden_layers=4),
    dict(num_experts=12, n_group=3, topk_group=1, num_experts_per_tok=3, partial_rotary_factor=0.25, routed_scaling_factor=1.0),
    dict(num_experts=8, n_group=1, topk_group=1, num_experts_per_tok=1, first_k_dense_replace=0, partial_rotary_factor=1.0),
    dict(num_experts=32, n_group=8, topk_group=4, num_experts_per_tok=8, num_attention_heads=8, num_key_value_heads=1),
]


def _greedy_reference(cfg, sd, prompt, steps):
    ids = list(prompt)
    out_ids, out_lp = [], []
    for _ in range(steps):
        logits = ref.forward(cfg, sd, ids)[-1]
        lp = torch.log_softmax(logits, -1)
        nxt = int(lp.argmax())
        out_ids.append(nxt)
        out_lp.append(lp.topk(5))
        ids.append(nxt)
    return out_ids, out_lp


@pytest.mark.parametrize("overrides", SHAPES, ids=[f"shape{i}" for i in range(len(SHAPES))])
def test_greedy_tokens_and_top5_logprobs_match_reference(tmp_path, overrides):
    cfg = tiny_config(vocab_size=96, **overrides)
    sd = random_state_dict(cfg, seed=len(str(overrides)), dtype=torch.float32)
    write_checkpoint(tmp_path, cfg, sd)
    model, mcfg, report = load_model(tmp_path, dtype=torch.float32)
    assert report.ok
    from angelcli.engine import Engine, SamplingParams

    prompt = [5, 17, 42, 8, 77, 3]
    want_ids, want_lp = _greedy_reference(cfg, {k: v.float() for k, v in sd.items()}, prompt, 6)
    engine = Engine(model, mcfg)
    steps = list(engine.generate(prompt, SamplingParams(max_new_tokens=6, logprobs=5)))
    assert [s.token_id for s in steps] == want_ids
    for s, lp in zip(steps, want_lp):
        got = torch.tensor([v for _, v in s.top_logprobs])
        assert [i for i, _ in s.top_logprobs] == lp.indices.tolist()
        assert (got - lp.values).abs().max() <= 1e-4


def test_full_sequence_logits_match_reference(tmp_path):
    cfg = tiny_config(vocab_size=96)
    sd = random_state_dict(cfg, seed=3, dtype=torch.float32)
    write_checkpoint(tmp_path, cfg, sd, shards=1)
    model, _, _ = load_model(tmp_path, dtype=torch.float32)
    ids = [1, 9, 33, 4, 60, 2, 2, 71, 18, 90]
    want = ref.forward(cfg, sd, ids)
    got = model(torch.tensor([ids])).logits[0]
    assert (got - want).abs().max() < 1e-4
