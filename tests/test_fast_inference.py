"""The torch backend's inference forward (angelcli/model/inference.py) against its slow twins.

Twins: the modules' own forward (model.fast_inference = False), the naive spec reference and the upstream-shaped
cached reference of tests/reference_bailing.py. Float32 must give the same greedy tokens and logits within
1e-4; bf16 must give the same logits as the modules' forward (the HF-faithful path) to bf16 rounding.
"""

import json

import pytest
import torch
import torch.nn.functional as F

from angelcli.engine import Engine, SamplingParams
from angelcli.fixtures import random_state_dict, tiny_config, write_checkpoint
from angelcli.loader import load_model
from angelcli.model import inference
from tests import reference_bailing as ref

SHAPES = [
    dict(),
    dict(num_experts=16, n_group=4, topk_group=2, num_experts_per_tok=4, first_k_dense_replace=2, num_hidden_layers=4),
    dict(num_experts=32, n_group=8, topk_group=4, num_experts_per_tok=8, num_attention_heads=8, num_key_value_heads=1,
         partial_rotary_factor=0.25),
]


def _model(tmp_path, overrides, dtype=torch.float32, seed=1):
    cfg = tiny_config(vocab_size=96, **overrides)
    sd = random_state_dict(cfg, seed=seed, dtype=torch.float32)
    write_checkpoint(tmp_path, cfg, sd)
    model, mcfg, _ = load_model(tmp_path, dtype=dtype)
    return model.eval(), mcfg, cfg, sd


def _logits(model, ids, fast, cache=None, **kw):
    model.fast_inference = fast
    try:
        with torch.inference_mode():
            return model(torch.tensor([ids]), cache, **kw)
    finally:
        model.fast_inference = True


@pytest.mark.parametrize("overrides", SHAPES, ids=[f"shape{i}" for i in range(len(SHAPES))])
def test_fast_forward_matches_module_forward_prefill_and_decode(tmp_path, overrides):
    model, mcfg, _, _ = _model(tmp_path, overrides)
    eng = Engine(model, mcfg)
    ids = [3, 17, 42, 8, 77, 5, 61, 2, 90, 33, 12, 40]  # 12 tokens x top-k routes past SMALL_DISPATCH
    c_fast, c_slow = eng.new_cache(1, 64), eng.new_cache(1, 64)
    a = _logits(model, ids, True, c_fast, capture_layers=(1,), return_router=True)
    b = _logits(model, ids, False, c_slow, capture_layers=(1,), return_router=True)
    assert (a.logits - b.logits).abs().max() < 1e-4
    assert (a.hidden[1] - b.hidden[1]).abs().max() < 1e-4
    assert all(torch.equal(x.topk_ids, y.topk_ids) for x, y in zip(a.router, b.router))
    for tok in (7, 9, 11):  # decode steps, and a 3-token verification step (speculative decoding's shape)
        x, y = _logits(model, [tok], True, c_fast), _logits(model, [tok], False, c_slow)
        assert (x.logits - y.logits).abs().max() < 1e-4
    x, y = _logits(model, [1, 2, 3], True, c_fast), _logits(model, [1, 2, 3], False, c_slow)
    assert (x.logits - y.logits).abs().max() < 1e-4
    assert c_fast.seq_len == c_slow.seq_len == len(ids) + 6


def test_fast_forward_ragged_batch_matches_rows_alone(tmp_path):
    model, mcfg, _, _ = _model(tmp_path, {})
    eng = Engine(model, mcfg)
    prompts = [[5, 9, 14, 2, 60], [7, 8]]
    params = SamplingParams(max_new_tokens=6)
    together = {}
    for r, step in eng.generate_batch(prompts, params):
        together.setdefault(r, []).append(step.token_id)
    for r, p in enumerate(prompts):
        assert [s.token_id for s in eng.generate(p, params)] == together[r]
        model.fast_inference = False
        try:
            assert [s.token_id for s in eng.generate(p, params)] == together[r]
        finally:
            model.fast_inference = True


@pytest.mark.parametrize("overrides", SHAPES[:2], ids=["shape0", "shape1"])
def test_greedy_tokens_match_upstream_shaped_reference(tmp_path, overrides):
    model, mcfg, cfg, sd = _model(tmp_path, overrides, seed=4)
    sd32 = {k: v.float() for k, v in sd.items()}
    prompt = [5, 17, 42, 8, 77, 3]
    want = ref.greedy_cached(cfg, sd32, prompt, 24)
    got = [s.token_id for s in Engine(model, mcfg).generate(prompt, SamplingParams(max_new_tokens=24))]
    assert got == want
    # the cached reference itself agrees with the naive whole-sequence reference (the spec oracle)
    full = ref.forward(cfg, sd32, prompt + want[:5])
    cached = ref.CachedReference(cfg, sd32)
    step = torch.cat([cached.forward(prompt)] + [cached.forward([t]) for t in want[:5]])
    assert (full - step).abs().max() < 1e-4


def test_bf16_fast_forward_matches_module_forward(tmp_path):
    model, mcfg, _, _ = _model(tmp_path, SHAPES[1], dtype=torch.bfloat16)
    eng = Engine(model, mcfg)
    ids = [3, 17, 42, 8, 77, 5]
    c_fast, c_slow = eng.new_cache(1, 32), eng.new_cache(1, 32)
    a, b = _logits(model, ids, True, c_fast), _logits(model, ids, False, c_slow)
    assert torch.equal(a.logits.argmax(-1), b.logits.argmax(-1))
    assert (a.logits - b.logits).abs().max() < 0.05
    x, y = _logits(model, [9], True, c_fast), _logits(model, [9], False, c_slow)
    assert (x.logits - y.logits).abs().max() < 0.05


def test_rms_norm_is_bitwise_the_upstream_formula():
    g = torch.Generator().manual_seed(0)
    for dim in (32, 192, 4096):
        x = torch.randn(3, 5, dim, generator=g) * 7
        w = torch.randn(dim, generator=g)
        upstream = w * (x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + 1e-6))
        assert torch.equal(F.rms_norm(x, (dim,), w, 1e-6), upstream)
        assert torch.equal(inference.rms(x, 1e-6) * w, upstream)


def test_rotary_tables_rotate_like_rotate_half(tmp_path):
    from angelcli.model.layers import apply_partial_rope

    model, mcfg, _, _ = _model(tmp_path, SHAPES[2])
    pos = torch.tensor([[0, 3, 700]])  # 700: the tables grow past their first size
    cos, sin = model.rotary(pos, torch.float32)
    cf, ss, swap = model.rotary.full_tables(pos, torch.float32, mcfg.head_dim)
    x = torch.randn(1, 3, 4, mcfg.head_dim)  # [B, T, heads, D]
    want = apply_partial_rope(x.transpose(1, 2), cos, sin).transpose(1, 2)
    got = x * cf[:, :, None] + x.index_select(-1, swap) * ss[:, :, None]
    assert torch.equal(got, want)
    span = model.rotary.full_tables(None, torch.float32, mcfg.head_dim, span=(3, 5))
    assert span[0].shape == (1, 2, mcfg.head_dim) and torch.equal(span[0][0, 0], cf[0, 1])


def test_input_major_copies_follow_the_weights(tmp_path):
    model, mcfg, _, _ = _model(tmp_path, {})
    w = model.lm_head.weight
    copy = inference.input_major_copy(model.lm_head, "weight")
    assert torch.equal(copy, w) and copy.stride() == (1, mcfg.vocab_size) and w.is_contiguous()
    with torch.no_grad():
        w.mul_(2)  # an optimizer step or a reload: the copy is rebuilt, never stale
    assert torch.equal(inference.input_major_copy(model.lm_head, "weight"), w)
    experts = model.model.layers[1].mlp.experts
    assert torch.equal(inference.input_major_copy(experts, "w13"), experts.w13)


def test_shipped_angel_tiny_matches_upstream_reference_for_128_tokens():
    """The speed acceptance's exactness half: float32 greedy, 128 tokens, identical to the reference."""
    from safetensors.torch import load_file

    from angelcli.resolve import resolve_model

    path = resolve_model("angel-tiny")
    cfg = json.loads((path / "config.json").read_text())
    sd = {}
    for f in sorted(path.glob("*.safetensors")):
        sd.update({k: v.float() for k, v in load_file(f).items()})
    model, mcfg, _ = load_model(path, dtype=torch.float32)
    prompt = [0] + list(range(100, 140))
    got = [s.token_id for s in Engine(model.eval(), mcfg).generate(prompt, SamplingParams(max_new_tokens=128))]
    with torch.inference_mode():
        assert got == ref.greedy_cached(cfg, sd, prompt, 128)


def test_bench_vs_reference_reports_both_speeds_and_identical_tokens():
    from angelcli.bench_reference import run_vs_reference, table

    rep = run_vs_reference(None, tokens=8, rounds=1)
    assert rep["identical"] is True and rep["tokens"] == 8 and rep["threads"] == 1
    assert rep["engine_tokens_per_s"] > 0 and rep["upstream_tokens_per_s"] > 0 and rep["lean_tokens_per_s"] > 0
    assert rep["ratio"] > 0 and rep["lean_ratio"] > 0 and rep["per_round"][0]["identical"] is True
    assert "identical tokens: yes" in table(rep)


def test_inference_plan_follows_parameter_changes(tmp_path):
    """The plan's direct references and stacked copies are rebuilt after in-place edits and replacements."""
    model, mcfg, _, _ = _model(tmp_path, {})
    ids = [3]  # one token: the batched one-token MoE path with the stacked expert copies
    before = _logits(model, ids, True).logits
    moe_layer = model.model.layers[-1]
    with torch.no_grad():
        moe_layer.mlp.experts.w13.mul_(1.5)  # in place: _version changes
        moe_layer.mlp.shared_experts.up_proj.weight.mul_(-1.0)
        att = model.model.layers[0].attention
        att.query_key_value.weight = torch.nn.Parameter(att.query_key_value.weight * 0.5)  # replaced
    fast, slow = _logits(model, ids, True).logits, _logits(model, ids, False).logits
    assert (fast - before).abs().max() > 1e-3  # the edits matter
    assert (fast - slow).abs().max() < 1e-4
