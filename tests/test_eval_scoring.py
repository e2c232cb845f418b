"""The batched log-likelihood scorer against a direct forward, the answer extraction of --generate, and the
statistics (Wilson interval, paired bootstrap, McNemar exact / chi-square)."""

import math
import random

import pytest
import torch

from angelcli.eval import stats
from angelcli.eval.runner import encode_pair, extract_answer
from angelcli.eval.scorer import loglikelihoods


@pytest.fixture(scope="module")
def rt():
    from angelcli.runtime import open_runtime

    return open_runtime(None, device="cpu", dtype="float32", backend="torch", max_seq_len=96)


def _direct(model, ctx, cont):
    """One plain forward of ctx + cont (no cache, no batching): sum of continuation log-probs, is_greedy."""
    ids = torch.tensor([ctx + cont])
    with torch.inference_mode():
        logits = model(ids).logits[0].float()
    logp = torch.log_softmax(logits, -1)
    pos = range(len(ctx) - 1, len(ctx) + len(cont) - 1)
    lp = sum(float(logp[p, t]) for p, t in zip(pos, cont))
    return lp, all(int(logits[p].argmax()) == t for p, t in zip(pos, cont))


def test_scores_equal_a_direct_forward(rt):
    """Shared contexts (one forward, several one-token options), multi-token continuations, ragged lengths in
    one padded batch, several batches and chunked prefill all give the unbatched numbers."""
    r = random.Random(0)
    V = rt.cfg.vocab_size
    reqs = []
    for _ in range(12):
        ctx = [r.randrange(V) for _ in range(r.randrange(2, 70))]
        for _ in range(r.randrange(1, 4)):
            reqs.append((ctx, [r.randrange(V) for _ in range(r.choice([1, 1, 2, 5]))]))
    greedy_ctx = reqs[0][0]
    with torch.inference_mode():
        best = int(rt.model(torch.tensor([greedy_ctx])).logits[0, -1].argmax())
    reqs.append((greedy_ctx, [best]))  # is_greedy must come out True here
    rt.engine.prefill_chunk = 16  # several chunks per sequence
    try:
        got = loglikelihoods(rt.engine, reqs, batch_tokens=150, max_batch=3)
    finally:
        rt.engine.prefill_chunk = 4096
    assert got[-1][1] is True
    for (ctx, cont), (lp, g) in zip(reqs, got):
        ref_lp, ref_g = _direct(rt.model, ctx, cont)
        assert lp == pytest.approx(ref_lp, abs=1e-4) and g == ref_g


def test_text_scores_equal_engine_score(rt):
    """A real prompt through lm-eval's encoding: the scorer's option log-probs are engine.score's."""
    tok = rt.tokenizer
    ctx = "Question: Which organ makes insulin?\nA. Liver\nB. Pancreas\nC. Kidney\nD. Spleen\nAnswer:"
    reqs = [encode_pair(tok, ctx, c) for c in (" A", " B", " C", " D", " Pancreas")]
    got = loglikelihoods(rt.engine, reqs)
    for (c, k), (lp, _) in zip(reqs, got):
        logp = torch.log_softmax(rt.engine.score(c + k), -1)
        assert lp == pytest.approx(sum(float(logp[len(c) - 1 + i, t]) for i, t in enumerate(k)), abs=1e-4)


def test_long_contexts_are_cut_from_the_left(rt):
    V = rt.cfg.vocab_size
    ctx = [(7 * i) % V for i in range(200)]  # longer than max_seq_len 96
    (lp, _), = loglikelihoods(rt.engine, [(ctx, [5, 6])])
    window = (ctx + [5, 6])[-(96 + 1):]
    ref, _ = _direct(rt.model, window[:-2], [5, 6])
    assert lp == pytest.approx(ref, abs=1e-4)


def test_encode_pair_moves_trailing_space_to_the_continuation(rt):
    a = encode_pair(rt.tokenizer, "Answer: ", "A")
    b = encode_pair(rt.tokenizer, "Answer:", " A")
    assert a == b


@pytest.mark.parametrize("text,choices,multi,want", [
    ("The answer is C.", list("ABCD"), False, "C"),
    ("B", list("ABCD"), False, "B"),
    ("<think>maybe A or B</think>\nD. Diabetic ketoacidosis", list("ABCD"), False, "D"),
    ("答案：ABD", list("ABCDE"), True, "ABD"),
    ("正确答案是 C", list("ABCDE"), False, "C"),
    ("I am not sure.", list("ABCD"), False, None),
    ("Yes, it does.", ["yes", "no", "maybe"], False, "yes"),
    ("It may be so; maybe.", ["yes", "no", "maybe"], False, "maybe"),
])
def test_extract_answer(text, choices, multi, want):
    assert extract_answer(text, choices, multi) == want


def test_wilson_interval():
    lo, hi = stats.wilson(3, 6)
    assert (round(lo, 4), round(hi, 4)) == (0.1876, 0.8124)  # textbook value for 3/6
    assert stats.wilson(0, 10)[0] == 0.0 and 0.25 < stats.wilson(0, 10)[1] < 0.35
    assert stats.wilson(10, 10)[1] == 1.0


def test_mcnemar_exact_and_chi_square():
    # 1 right only in A, 6 right only in B: exact two-sided binomial p = 2 * (1 + 7) / 128
    a = [True] + [False] * 6 + [True] * 5
    b = [False] + [True] * 6 + [True] * 5
    m = stats.mcnemar(a, b)
    assert (m["only_a_correct"], m["only_b_correct"]) == (1, 6)
    assert m["method"] == "exact binomial" and m["p_value"] == pytest.approx(16 / 128)
    a = [True] * 10 + [False] * 30
    b = [False] * 10 + [True] * 30
    m = stats.mcnemar(a, b)  # 40 discordant: chi2 = (|10 - 30| - 1)^2 / 40 = 9.025
    assert m["statistic"] == pytest.approx(9.025) and m["p_value"] == pytest.approx(math.erfc(math.sqrt(9.025 / 2)))
    assert stats.mcnemar([True, False], [True, False])["p_value"] == 1.0


def test_paired_bootstrap_interval_contains_the_difference_and_is_seeded():
    r = random.Random(3)
    a = [r.random() < 0.6 for _ in range(300)]
    b = [x if r.random() < 0.9 else not x for x in a]
    res = stats.paired_bootstrap(a, b, seed=7)
    d = (sum(b) - sum(a)) / 300
    assert res["difference"] == pytest.approx(d) and res["ci95"][0] <= d <= res["ci95"][1]
    assert res == stats.paired_bootstrap(a, b, seed=7)
    same = stats.paired_bootstrap(a, a, seed=1)
    assert same["ci95"] == [0.0, 0.0]


def test_paged_backend_batches_score_like_the_torch_engine(tiny_ckpt):
    """The triton backend's paged runner (ops' torch twins, float32): padded [B, T] batches, chunked, give
    the torch engine's single-sequence scores."""
    from angelcli.engine import Engine
    from angelcli.loader import load_model

    model, cfg, _ = load_model(tiny_ckpt, dtype=torch.float32)
    ref = Engine(model, cfg)
    paged = Engine(model, cfg, backend="triton", paged_ops="torch", prefill_chunk=5)
    r = random.Random(1)
    reqs = [([r.randrange(cfg.vocab_size) for _ in range(r.randrange(2, 12))],
             [r.randrange(cfg.vocab_size) for _ in range(r.choice([1, 3]))]) for _ in range(6)]
    got = loglikelihoods(paged, reqs, batch_tokens=40)
    for (ctx, cont), (lp, g) in zip(reqs, got):
        logits = ref.score(ctx + cont)
        logp = torch.log_softmax(logits, -1)
        pos = range(len(ctx) - 1, len(ctx) + len(cont) - 1)
        assert lp == pytest.approx(sum(float(logp[p, t]) for p, t in zip(pos, cont)), abs=1e-4)
        assert g == all(int(logits[p].argmax()) == t for p, t in zip(pos, cont))
    assert paged.net.pool.free_tokens == paged.net.pool.capacity_tokens  # every block came back
