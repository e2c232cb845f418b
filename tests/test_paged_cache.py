"""Paged KV cache bookkeeping, rollback, and batched decoding == one sequence at a time (both backends).

The paged engine here runs the ops' torch twins (paged_ops="torch") in float32: the same paged code path
as the kernels, fast on CPU, and exact against the model."""

import pytest
import torch

from angelcli.engine import Engine, SamplingParams
from angelcli.engine.paged_cache import BlockPool, PagedKVCache
from angelcli.errors import ResourceError
from angelcli.loader import load_model

PROMPTS = [[3, 50, 7, 99, 120, 8], [11, 4], [200, 31, 5, 17, 64, 9, 90, 2, 44], [7]]


@pytest.fixture(scope="module")
def model_cfg(tiny_ckpt):
    return load_model(tiny_ckpt, dtype=torch.float32)[:2]


def _engines(model, cfg, **kw):
    return {"torch": Engine(model, cfg, **kw),
            "paged": Engine(model, cfg, backend="triton", paged_ops="torch", **kw)}


def test_pool_blocks_follow_lengths(model_cfg):
    _, cfg = model_cfg
    pool = BlockPool(cfg, num_blocks=8, block_size=4, dtype=torch.float32, device="cpu")
    cache = PagedKVCache(pool, batch=2, max_len=16)
    cache.row(0).reserve(9)  # 3 blocks
    cache.row(0).advance(9)
    cache.row(1).reserve(4)
    cache.row(1).advance(4)
    assert cache.row_lens == [9, 4] and len(pool.free) == 4 and cache.is_ragged
    assert cache.table[0, :3].tolist() == cache.blocks[0]
    step = cache.step_input(1)  # one more token each: row 1 needs a new block
    cache.reserve(1)
    step = cache.step_input(1)
    assert step.positions.tolist() == [9, 4] and step.seq_lens.tolist() == [10, 5]
    assert step.slot_mapping.tolist() == [cache.blocks[0][2] * 4 + 1, cache.blocks[1][1] * 4 + 0]
    cache.advance(1)
    cache.row(0).trim(6)  # 10 -> 4 tokens: blocks 2 and 3 of row 0 return
    assert cache.row_lens == [4, 5] and len(cache.blocks[0]) == 1 and len(pool.free) == 5
    cache.reset()
    assert len(pool.free) == 8
    with pytest.raises(ResourceError, match="KV cache full"):
        cache.row(0).reserve(40)  # beyond max_len
    big = PagedKVCache(pool, batch=1, max_len=64)
    with pytest.raises(ResourceError, match="KV budget 32 tokens"):
        big.reserve(33)


@pytest.mark.parametrize("backend", ["torch", "paged"])
def test_trim_rolls_back(model_cfg, backend):
    model, cfg = model_cfg
    eng = _engines(model, cfg)[backend]
    cache = eng.new_cache(1, 32)
    eng.prefill(PROMPTS[0], cache)
    want = eng.decode_step(torch.tensor([11]), cache)
    for t in (5, 6, 7):  # speculative tokens that get rejected
        eng.decode_step(torch.tensor([t]), cache)
    cache.trim(4)  # drop 11, 5, 6, 7
    assert cache.seq_len == len(PROMPTS[0])
    got = eng.decode_step(torch.tensor([11]), cache)
    assert torch.allclose(got, want, atol=1e-5)


@pytest.mark.parametrize("backend", ["torch", "paged"])
def test_batched_decode_equals_single_sequences(model_cfg, backend):
    model, cfg = model_cfg
    eng = _engines(model, cfg)[backend]
    params = SamplingParams(max_new_tokens=6, logprobs=3)
    single = [list(eng.generate(p, params)) for p in PROMPTS]
    got = {i: [] for i in range(len(PROMPTS))}
    for i, step in eng.generate_batch(PROMPTS, params):
        got[i].append(step)
    for want, have in zip(single, got.values()):
        assert [s.token_id for s in have] == [s.token_id for s in want]
        for a, b in zip(have, want):
            assert abs(a.logprob - b.logprob) < 1e-4
            assert [i for i, _ in a.top_logprobs] == [i for i, _ in b.top_logprobs]


def test_batch_rows_keep_their_own_sampling_and_stop(model_cfg):
    model, cfg = model_cfg
    eng = _engines(model, cfg)["paged"]
    greedy = [s.token_id for s in eng.generate(PROMPTS[0], SamplingParams(max_new_tokens=5))]
    stop = greedy[2]
    plist = [SamplingParams(max_new_tokens=5, stop_ids=(stop,)),
             SamplingParams(max_new_tokens=4, temperature=0.9, top_k=20, seed=7),
             SamplingParams(max_new_tokens=2)]
    solo = [s.token_id for s in eng.generate(PROMPTS[1], plist[1])]
    got = {0: [], 1: [], 2: []}
    finish = {}
    for i, step in eng.generate_batch(PROMPTS[:3], plist):
        got[i].append(step.token_id)
        finish[i] = step.finish_reason
    assert got[0] == greedy[:3] and finish[0] == "stop"
    assert got[1] == solo and finish[1] == "length"  # seeded sampling is per row
    assert len(got[2]) == 2
    assert [s.generated_tokens for s in eng.batch_stats] == [3, 4, 2]


def test_small_kv_budget_runs_in_waves(model_cfg):
    model, cfg = model_cfg
    params = SamplingParams(max_new_tokens=4)
    want = [[s.token_id for s in Engine(model, cfg).generate(p, params)] for p in PROMPTS]
    eng = Engine(model, cfg, backend="triton", paged_ops="torch", kv_tokens=32)  # 2 blocks of 16
    got = {i: [] for i in range(len(PROMPTS))}
    for i, step in eng.generate_batch(PROMPTS, params):
        got[i].append(step.token_id)
    assert list(got.values()) == want
    assert eng.net.pool.capacity_tokens == 32


def test_closing_a_generation_early_frees_the_cache(model_cfg):
    model, cfg = model_cfg
    eng = _engines(model, cfg)["paged"]
    it = eng.generate(PROMPTS[2], SamplingParams(max_new_tokens=20))
    next(it)
    next(it)
    it.close()
    assert eng.net.pool.free_tokens == eng.net.pool.capacity_tokens


def test_pool_without_budget_grows_under_live_caches(model_cfg):
    """Two caches alive at once (a chat session and a one-off generate): the pool doubles, contents stay."""
    model, cfg = model_cfg
    eng = _engines(model, cfg)["paged"]
    chat = eng.new_cache(1, 64)  # the pool starts at 64 tokens
    first = eng.prefill(PROMPTS[2], chat)
    steps = [s.token_id for s in eng.generate(PROMPTS[0], SamplingParams(max_new_tokens=60))]
    assert eng.net.pool.generation >= 1 and len(steps) == 60
    ref = Engine(model, cfg)
    want = ref.prefill(PROMPTS[2] + [5], ref.new_cache(1, 64))
    got = eng.decode_step(torch.tensor([5]), chat)  # the chat cache survived the growth
    assert torch.allclose(got, want, atol=1e-5) and first.shape == got.shape
