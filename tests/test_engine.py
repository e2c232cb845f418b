"""Engine: incremental decode == full forward, sampling, determinism, stopping, cache trim."""

import pytest
import torch

from angelcli.engine import Engine, KVCache, SamplingParams
from angelcli.engine.sampling import filter_logits, sample
from angelcli.errors import UsageError
from angelcli.loader import load_model


@pytest.fixture(scope="module")
def model_cfg(tiny_ckpt):
    model, cfg, _ = load_model(tiny_ckpt, dtype=torch.float32)
    return model, cfg


def test_incremental_decode_equals_full_forward(model_cfg):
    model, cfg = model_cfg
    ids = torch.tensor([[3, 50, 7, 99, 120, 8, 8, 31, 200, 5, 17, 64]])
    full = model(ids).logits
    cache = KVCache(cfg, 1, 32, torch.float32, "cpu")
    parts = [model(ids[:, :5], cache).logits]
    for t in range(5, ids.shape[1]):
        parts.append(model(ids[:, t : t + 1], cache).logits)
    assert cache.seq_len == ids.shape[1]
    assert torch.allclose(torch.cat(parts, 1), full, atol=1e-5)


def test_cache_trim_rolls_back(model_cfg):
    model, cfg = model_cfg
    ids = torch.tensor([[3, 50, 7, 99, 120, 8]])
    cache = KVCache(cfg, 1, 16, torch.float32, "cpu")
    model(ids, cache)
    want = model(torch.tensor([[11]]), cache).logits
    cache.trim(4)  # forget 99, 120, 8 and 11
    model(torch.tensor([[99, 120, 8]]), cache)  # re-run them
    got = model(torch.tensor([[11]]), cache).logits
    assert torch.allclose(got, want, atol=1e-5)
    with pytest.raises(ValueError):
        cache.trim(100)


def test_capture_layers_returns_residual_stream(model_cfg):
    model, cfg = model_cfg
    out = model(torch.tensor([[1, 2, 3]]), capture_layers=(0, 2))
    assert set(out.hidden) == {0, 2}
    assert out.hidden[2].shape == (1, 3, cfg.hidden_size)


def test_seeded_sampling_is_deterministic_and_seed_sensitive(model_cfg):
    model, cfg = model_cfg
    engine = Engine(model, cfg)
    p = SamplingParams(temperature=1.0, top_p=0.95, top_k=50, max_new_tokens=12, seed=7)
    a = [s.token_id for s in engine.generate([5, 6, 7], p)]
    b = [s.token_id for s in engine.generate([5, 6, 7], p)]
    c = [s.token_id for s in engine.generate([5, 6, 7], SamplingParams(temperature=1.0, max_new_tokens=12, seed=8))]
    assert a == b
    assert a != c


@pytest.mark.parametrize("which", [0, 1])
def test_stops_on_each_eos_id(model_cfg, which):
    model, cfg = model_cfg
    engine = Engine(model, cfg)
    greedy = [s.token_id for s in engine.generate([5, 6, 7], SamplingParams(max_new_tokens=8))]
    stop_at = greedy[3]
    other = 10_000 if which == 0 else 10_001
    stops = (stop_at, other) if which == 0 else (other, stop_at)
    steps = list(engine.generate([5, 6, 7], SamplingParams(max_new_tokens=8, stop_ids=stops)))
    first = greedy.index(stop_at)
    assert [s.token_id for s in steps] == greedy[: first + 1]
    assert steps[-1].finish_reason == "stop"
    no_stop = list(engine.generate([5, 6, 7], SamplingParams(max_new_tokens=4)))
    assert no_stop[-1].finish_reason == "length" and len(no_stop) == 4
    assert engine.last_stats.generated_tokens == 4 and engine.last_stats.prompt_tokens == 3


def test_top_k_and_top_p_filters():
    logits = torch.tensor([[2.0, 1.0, 0.5, -1.0]])
    k2 = filter_logits(logits, 2, 1.0)
    assert torch.isinf(k2[0, 2:]).all() and torch.isfinite(k2[0, :2]).all()
    probs = logits.softmax(-1)[0]  # ~[.61, .22, .14, .03]
    p = filter_logits(logits, 0, float(probs[0]) + 0.01)
    assert torch.isfinite(p[0, :2]).all() and torch.isinf(p[0, 2:]).all()
    only_best = filter_logits(logits, 0, 0.1)
    assert torch.isfinite(only_best[0, 0]) and torch.isinf(only_best[0, 1:]).all()
    g = torch.Generator().manual_seed(0)
    draws = {int(sample(logits, SamplingParams(temperature=1.0, top_k=1), g)) for _ in range(20)}
    assert draws == {0}


def test_bad_inputs(model_cfg):
    model, cfg = model_cfg
    engine = Engine(model, cfg)
    with pytest.raises(UsageError, match="outside the vocabulary"):
        list(engine.generate([cfg.vocab_size + 5], SamplingParams()))
    with pytest.raises(UsageError, match="empty prompt"):
        list(engine.generate([], SamplingParams()))
    with pytest.raises(UsageError, match="top-p"):
        SamplingParams(top_p=0)
