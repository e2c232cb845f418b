"""Tensor parallelism on CPU: two gloo processes (launched by angel) give the tokens and logits of one."""

import pytest
import torch

from angelcli.engine import SamplingParams
from angelcli.fixtures import write_tiny_checkpoint
from angelcli.runtime import open_runtime

PROMPTS = [[3, 50, 7, 99, 120, 8], [11, 4, 200]]


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    # 4 query / 2 KV heads, experts of width 32: two ranks hold 2 query heads, 1 KV head, 16 columns each
    return write_tiny_checkpoint(tmp_path_factory.mktemp("tp") / "ckpt", tokenizer=False, seed=5)


def _run(rt):
    params = SamplingParams(max_new_tokens=5, logprobs=3)
    out = [list(rt.engine.generate(p, params)) for p in PROMPTS]
    batch = {0: [], 1: []}
    for i, step in rt.engine.generate_batch(PROMPTS, params):
        batch[i].append(step.token_id)
    early = rt.engine.generate(PROMPTS[0], SamplingParams(max_new_tokens=30))
    next(early)
    early.close()  # a consumer that stops early must leave the workers in step
    return out, batch, rt.engine.score(PROMPTS[0] + [1, 2, 3])


@pytest.mark.parametrize("backend", ["torch", "paged"])
def test_tp2_matches_one_process(ckpt, backend, monkeypatch):
    kw = dict(device="cpu", dtype="float32", backend="torch")
    if backend == "paged":  # the triton backend's paged runner with the ops' torch twins (fast on CPU)
        monkeypatch.setenv("ANGEL_PAGED_OPS", "torch")
        kw.update(dtype="bfloat16", backend="triton")
    want = _run(open_runtime(str(ckpt), **kw))
    rt = open_runtime(str(ckpt), tp=2, **kw)
    try:
        assert rt.model.tp.world == 2 and rt.model.model.layers[0].attention.num_heads == 2
        got = _run(rt)
    finally:
        rt.close()
    (w_single, w_batch, w_logits), (g_single, g_batch, g_logits) = want, got
    tol = 1e-4 if backend == "torch" else 0.1  # bf16: all-reduce adds partial sums in another order
    assert (g_logits - w_logits).abs().max() < tol
    if backend == "torch":
        for a, b in zip(g_single, w_single):
            assert [s.token_id for s in a] == [s.token_id for s in b]
            assert max(abs(x.logprob - y.logprob) for x, y in zip(a, b)) < 1e-4
        assert g_batch == w_batch
    else:  # the split runs the same function: argmax agrees wherever the margin exceeds bf16 noise
        assert (g_logits.argmax(-1) == w_logits.argmax(-1)).float().mean() > 0.8


def test_tp2_block_fp8_scales_split_with_their_weights(tmp_path):
    """Block-FP8 under TP: with 128-aligned slices (head_dim 128, expert width 256) every rank's weight and
    scale slices line up with the 128x128 blocks and the activation groups, so TP 2 == TP 1 in float32."""
    from angelcli.fixtures import write_fp8_checkpoint

    ck = write_fp8_checkpoint(tmp_path / "fp8", "fp8-block", seed=1, vocab_size=128, hidden_size=128,
                              num_attention_heads=2, num_key_value_heads=2, head_dim=128, moe_intermediate_size=256,
                              moe_shared_expert_intermediate_size=256, intermediate_size=256, num_hidden_layers=2)
    kw = dict(device="cpu", dtype="float32", backend="torch")
    ids = [3, 17, 99, 42, 8, 5, 6]
    want = open_runtime(str(ck), **kw).engine.score(ids)
    rt = open_runtime(str(ck), tp=2, **kw)
    try:
        assert rt.model.model.layers[1].mlp.experts.w13_scale.shape == (8, 2, 1)  # [E, 2 x 128/128, 128/128]
        got = rt.engine.score(ids)
    finally:
        rt.close()
    assert (got - want).abs().max() < 1e-4
