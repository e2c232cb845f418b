"""Speculative decoding: greedy output == plain greedy (random, oracle, partially wrong and trained drafts,
batches, cache limits, stop ids), the TTT attention == the cached inference chain, and the lossless
sampling rule checked exactly on a small vocabulary."""

import itertools

import pytest
import torch

from angelcli.eagle.model import DraftConfig, Eagle3Draft
from angelcli.eagle.speculative import (SpeculativeEngine, accept_probability, greedy_accept, rejection_verify,
                                        residual_distribution)
from angelcli.engine import Engine, SamplingParams
from angelcli.loader import load_model


pytestmark = pytest.mark.usefixtures("one_thread")  # conftest.py: one intra-op thread


@pytest.fixture(scope="module")
def target(tiny_ckpt):
    torch.manual_seed(0)
    model, cfg, _ = load_model(tiny_ckpt, dtype=torch.float32)
    return model, cfg


def random_draft(model, cfg, seed=0, init_from_target=True):
    d = Eagle3Draft(DraftConfig.for_target(cfg))
    d.init_weights(seed, target=model if init_from_target else None)
    d.set_embedding(model.model.word_embeddings)
    return d.eval()


def plain(engine, prompt, n, stop=()):
    return [s.token_id for s in engine.generate(prompt, SamplingParams(max_new_tokens=n, stop_ids=stop))]


class ScriptedDrafter:
    """Proposes a known continuation per row (the target's own greedy output = an oracle), optionally
    corrupting chosen (row, position) pairs so rows accept different prefix lengths."""

    aux_layers = ()

    def __init__(self, continuations, wrong=frozenset(), vocab=384):
        self.cont, self.wrong, self.vocab = continuations, wrong, vocab

    def start(self, prompt, features, first, max_len):
        self.done = 1  # generated tokens known so far (the prefill's token)

    def propose(self, k, params, gen=None):
        rows = []
        for r, c in enumerate(self.cont):
            row = []
            for j in range(k):
                i = self.done + j
                t = c[i] if i < len(c) else 0
                if (r, i) in self.wrong:
                    t = (t + 1) % self.vocab
                row.append(t)
            rows.append(row)
        return torch.tensor(rows, dtype=torch.long).view(len(self.cont), k), None

    def commit(self, features, tokens):
        self.done += tokens.shape[1]


@pytest.mark.parametrize("k", [1, 3, 5])
def test_random_draft_greedy_equals_plain(target, k):
    model, cfg = target
    eng = Engine(model, cfg)
    spec = SpeculativeEngine(eng, random_draft(model, cfg, seed=k), k=k)
    for prompt in ([5, 6, 7], list(range(20, 37))):
        assert [s.token_id for s in spec.generate(prompt, SamplingParams(max_new_tokens=23))] == plain(eng, prompt, 23)
        st = spec.last_stats
        assert st.generated_tokens == 23 and st.verify_passes >= 1
        assert 1.0 <= st.mean_acceptance_length <= k + 1


@pytest.mark.parametrize("k", [1, 3, 4])
def test_oracle_draft_accepts_everything(target, k):
    model, cfg = target
    eng = Engine(model, cfg)
    prompt, rounds = [9, 4, 33, 2], 5
    n = 1 + rounds * (k + 1)  # the prefill token, then full rounds only
    want = plain(eng, prompt, n)
    spec = SpeculativeEngine(eng, ScriptedDrafter([want]), k=k)
    assert [s.token_id for s in spec.generate(prompt, SamplingParams(max_new_tokens=n))] == want
    st = spec.last_stats
    assert st.verify_passes == rounds and st.mean_acceptance_length == k + 1
    assert st.per_position() == [1.0] * k and st.accepted == st.drafted == rounds * k


def test_partially_wrong_drafts_and_batches_stay_exact(target):
    """Rows reject at different positions (lockstep keeps the minimum); each row still equals plain greedy."""
    model, cfg = target
    eng = Engine(model, cfg)
    prompts = [[5, 6, 7, 8], [100, 3, 2, 1], [42, 42, 42, 42]]
    n = 30
    wants = [plain(eng, p, n) for p in prompts]
    wrong = frozenset({(0, 2), (0, 9), (1, 3), (1, 4), (2, 15), (0, 21), (2, 22)})
    spec = SpeculativeEngine(eng, ScriptedDrafter(wants, wrong), k=3)
    assert spec.generate_lockstep(prompts, SamplingParams(max_new_tokens=n)) == wants
    assert 1 < spec.last_stats.mean_acceptance_length < 4
    spec = SpeculativeEngine(eng, random_draft(model, cfg, seed=3), k=3)
    assert spec.generate_lockstep(prompts, SamplingParams(max_new_tokens=n)) == wants
    # single-row streaming with the same scripted mistakes
    spec = SpeculativeEngine(eng, ScriptedDrafter(wants[:1], wrong), k=3)
    assert [s.token_id for s in spec.generate(prompts[0], SamplingParams(max_new_tokens=n))] == wants[0]


def test_cache_limit_stop_ids_and_logprobs(target):
    model, cfg = target
    eng = Engine(model, cfg, max_seq_len=24)  # 10-token prompt: 14 tokens fit, rounds are clipped at the end
    prompt = list(range(50, 60))
    want = plain(eng, prompt, 100)
    assert len(want) == 14
    for drafter in (ScriptedDrafter([want]), random_draft(model, cfg)):
        spec = SpeculativeEngine(eng, drafter, k=4)
        steps = list(spec.generate(prompt, SamplingParams(max_new_tokens=100, logprobs=3)))
        assert [s.token_id for s in steps] == want and steps[-1].finish_reason == "length"
        ref = list(eng.generate(prompt, SamplingParams(max_new_tokens=100, logprobs=3)))
        for a, b in zip(steps, ref):
            assert abs(a.logprob - b.logprob) < 1e-4 and [i for i, _ in a.top_logprobs] == [i for i, _ in b.top_logprobs]
    stop = want[6]
    cut = want[: want.index(stop) + 1]
    spec = SpeculativeEngine(eng, ScriptedDrafter([want]), k=3)
    steps = list(spec.generate(prompt, SamplingParams(max_new_tokens=100, stop_ids=(stop,))))
    assert [s.token_id for s in steps] == cut and steps[-1].finish_reason == "stop"


def test_ttt_unrolled_attention_equals_cached_chain(target):
    """Step k of training-time test at position t == the k-th chained draft step after a cached prefix."""
    model, cfg = target
    d = random_draft(model, cfg, init_from_target=False)
    T, H = 12, cfg.hidden_size
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(0, cfg.vocab_size, (1, T), generator=g)
    aux = torch.randn(1, T, 3 * H, generator=g)
    pos = torch.arange(T)[None]
    kv, hidden, ttt = [], d.fuse(aux), []
    with torch.no_grad():
        for k in range(3):
            tok = torch.cat([ids[:, 1 + k:], torch.zeros(1, 1 + k, dtype=torch.long)], 1)
            logits, hidden = d(tok, hidden, pos + k, ttt_kv=kv)
            ttt.append(logits)
        for t in (0, 4, 8):
            cache = d.new_cache(1, 32)
            logits, h = d(ids[:, 1 : t + 2], d.fuse(aux[:, : t + 1]), pos[:, : t + 1], cache)
            assert torch.allclose(logits[0, -1], ttt[0][0, t], atol=1e-5)
            h = h[:, -1:]
            for k in (1, 2):
                logits, h = d(ids[:, t + 1 + k : t + 2 + k], h, torch.tensor([[t + k]]), cache)
                assert torch.allclose(logits[0, -1], ttt[k][0, t], atol=1e-5)


# ---- the sampling rule -------------------------------------------------------------------------------

def _rand_dist(g, *shape):
    x = torch.rand(*shape, generator=g, dtype=torch.float64) ** 3  # peaky, with near-zero entries
    return x / x.sum(-1, keepdim=True)


def test_rejection_rule_output_is_target_distribution_exactly():
    g = torch.Generator().manual_seed(1)
    V = 6
    for _ in range(20):
        p, q = _rand_dist(g, V), _rand_dist(g, V)
        for qq in (q, None):  # a sampled draft q, and a deterministic draft (point mass)
            out = torch.zeros(V, dtype=torch.float64)
            for d in range(V):
                w = q[d] if qq is not None else torch.tensor(1.0 if d == 0 else 0.0, dtype=torch.float64)
                if w == 0:
                    continue
                dd = torch.tensor(d)
                a = accept_probability(p, qq, dd)
                out[d] += w * a
                out += w * (1 - a) * residual_distribution(p, qq, dd)
            assert torch.allclose(out, p, atol=1e-12)


def test_two_step_chain_joint_distribution_exactly():
    """Enumerate every draft pair and accept/reject path of one round with k = 2: the first two output
    tokens are distributed as p1(x1) p2(x2 | x1) (after a rejection, the next round draws from p2)."""
    g = torch.Generator().manual_seed(2)
    V = 4
    p1, q1 = _rand_dist(g, V), _rand_dist(g, V)
    p2, q2 = _rand_dist(g, V, V), _rand_dist(g, V, V)  # rows conditioned on the first token
    joint = torch.zeros(V, V, dtype=torch.float64)
    for d1, d2 in itertools.product(range(V), range(V)):
        w = q1[d1] * q2[d1, d2]
        a1 = accept_probability(p1, q1, torch.tensor(d1))
        r1 = residual_distribution(p1, q1, torch.tensor(d1))
        joint += w * (1 - a1) * r1[:, None] * p2  # rejected: x1 ~ r1, next round gives x2 ~ p2(.|x1)
        a2 = accept_probability(p2[d1], q2[d1], torch.tensor(d2))
        row = torch.zeros(V, dtype=torch.float64)
        row[d2] += a2
        row += (1 - a2) * residual_distribution(p2[d1], q2[d1], torch.tensor(d2))
        joint[d1] += w * a1 * row
    assert torch.allclose(joint, p1[:, None] * p2, atol=1e-12)


def test_rejection_verify_samples_match_the_rule():
    """The vectorised sampler against the exact first-token distribution (many independent rows)."""
    g = torch.Generator().manual_seed(3)
    V, B, k = 5, 60000, 2
    p = _rand_dist(g, k + 1, V).float()
    q = _rand_dist(g, k, V).float()
    draft = torch.stack([torch.multinomial(q[j], B, replacement=True, generator=g) for j in range(k)], 1)
    m, y = rejection_verify(p.expand(B, -1, -1), draft, q.expand(B, -1, -1), g)
    first = torch.where(m > 0, draft[:, 0], y)
    freq = torch.bincount(first, minlength=V).double() / B
    assert (freq - p[0].double()).abs().sum() < 0.02
    fixed = torch.full((B, k), 2)
    m, y = rejection_verify(p.expand(B, -1, -1), fixed, None, g)
    first = torch.where(m > 0, fixed[:, 0], y)
    freq = torch.bincount(first, minlength=V).double() / B
    assert (freq - p[0].double()).abs().sum() < 0.02
    assert abs(float((m > 0).double().mean()) - float(p[0, 2])) < 0.01


def test_greedy_accept_prefix():
    logits = torch.full((2, 4, 5), -1.0)
    for b, best in enumerate(([1, 2, 3, 4], [1, 0, 3, 4])):
        for j, t in enumerate(best):
            logits[b, j, t] = 1.0
    m, best = greedy_accept(logits, torch.tensor([[1, 2, 3], [1, 2, 3]]))
    assert m.tolist() == [3, 1] and best[1, 1] == 0


def test_sampling_run_is_seeded_and_valid(target):
    model, cfg = target
    eng = Engine(model, cfg)
    spec = SpeculativeEngine(eng, random_draft(model, cfg), k=3)
    p = SamplingParams(temperature=0.8, top_k=20, max_new_tokens=16, seed=11)
    a = [s.token_id for s in spec.generate([3, 4, 5], p)]
    b = [s.token_id for s in spec.generate([3, 4, 5], p)]
    assert a == b and len(a) == 16 and all(0 <= t < cfg.vocab_size for t in a)


def test_paged_cache_across_block_boundaries(target):
    """The triton backend's paged cache (16-token blocks; the ops' torch twins in float32): rounds verify and
    roll back across block boundaries, every block returns to the pool, output == the torch backend's."""
    model, cfg = target
    ref = Engine(model, cfg)
    paged = Engine(model, cfg, backend="triton", paged_ops="torch", prefill_chunk=5)  # prompt in 3 pieces
    prompt = list(range(30, 43))  # 13 tokens: the first round already straddles the 16-token boundary
    want = plain(ref, prompt, 45)
    for drafter in (ScriptedDrafter([want], frozenset({(0, 5), (0, 18), (0, 19)})), random_draft(model, cfg)):
        spec = SpeculativeEngine(paged, drafter, k=4)
        assert [s.token_id for s in spec.generate(prompt, SamplingParams(max_new_tokens=45))] == want
        assert paged.net.pool.free_tokens == paged.net.pool.capacity_tokens


def test_engine_attach_draft_contract(target, tmp_path):
    """eagle.attach.attach_draft(engine, model_dir, required) (what Runtime.attach_draft, the hook chat calls,
    runs): generate() then speculates, with identical greedy output and mean_acceptance_length in
    last_stats; generate_batch stays plain."""
    from angelcli.eagle.attach import LINK_FILE, LINK_FORMAT, attach_draft
    from angelcli.eagle.export import export_draft
    from angelcli.errors import UsageError
    from angelcli.fixtures import write_tiny_checkpoint
    import json

    model, cfg = target
    eng = Engine(model, cfg)
    with pytest.raises(UsageError):
        attach_draft(eng, tmp_path, required=True)  # nothing recorded there
    assert attach_draft(eng, tmp_path) is None and eng.speculator is None
    export_draft(random_draft(model, cfg), tmp_path / "d", dtype="float32")
    (tmp_path / LINK_FILE).write_text(json.dumps({"format": LINK_FORMAT, "draft": "d"}))
    want = plain(eng, [5, 6, 7], 20)
    assert attach_draft(eng, tmp_path, required=True) == str((tmp_path / "d").resolve())
    assert [s.token_id for s in eng.generate([5, 6, 7], SamplingParams(max_new_tokens=20))] == want
    assert eng.last_stats.mean_acceptance_length >= 1 and eng.last_stats.generated_tokens == 20
    got = [st.token_id for _, st in eng.generate_batch([[5, 6, 7]], SamplingParams(max_new_tokens=20))]
    assert got == want and not hasattr(eng.last_stats, "mean_acceptance_length")
