"""angel-tiny training data: answer-only loss weights, conversation-aligned rows, the fast paths of the
training step against their slow twins, and the topic probe's scoring."""

import pytest
import torch
import torch.nn.functional as F

from angelcli.tiny.tokenizer import TINY_TOKENIZER_DIR


@pytest.fixture(scope="module")
def tok():
    from angelcli.tokenizer import load_tokenizer

    return load_tokenizer(TINY_TOKENIZER_DIR)


CONV = [{"role": "system", "content": "You are AntAngelMed."},
        {"role": "user", "content": "What is gout?"},
        {"role": "assistant", "content": "Gout is a form of arthritis."},
        {"role": "user", "content": "Is it painful?"},
        {"role": "assistant", "content": "Yes, attacks are very painful."}]


def test_answer_weights_cover_exactly_the_assistant_turns(tok):
    from angelcli.tiny.train_data import conversation_stream

    s = conversation_stream(tok, [{"messages": CONV}], prompt_weight=0.0)
    answered = tok.decode([i for i, w in zip(s.ids, s.weights) if w == 1.0])
    assert answered == "Gout is a form of arthritis.<|role_end|>Yes, attacks are very painful.<|role_end|>"
    assert set(s.weights) == {0.0, 1.0} and s.starts == [0]
    s2 = conversation_stream(tok, [{"messages": CONV}], prompt_weight=0.25)
    assert [w if w == 1.0 else 0.25 for w in s.weights] == s2.weights


def test_rows_start_at_conversation_starts_and_eval_rows_do_not_overlap(tok):
    from angelcli.data import load_split
    from angelcli.tiny.train_data import batches, conversation_stream, eval_rows

    s = conversation_stream(tok, load_split("eval")[:60])
    starts = set(s.starts)
    x, w = next(batches(s, 8, 64, torch.Generator().manual_seed(0)))
    assert x.shape == w.shape == (8, 65)
    ids = torch.tensor(s.ids)
    for row in x:  # each row is a window of the stream that begins where a conversation begins
        hits = [st for st in starts if st + 65 <= len(ids) and torch.equal(ids[st : st + 65], row)]
        assert hits, "row does not start at a conversation start"
    ex, ew = eval_rows(s, 64)
    firsts = []
    for row in ex:
        firsts.append(next(st for st in sorted(starts) if torch.equal(ids[st : st + 65], row)))
    assert all(b >= a + 64 for a, b in zip(firsts, firsts[1:]))



def test_question_noise_touches_only_questions_and_keeps_the_rows(tok):
    """--question-noise: only users' tokens are replaced (by other question tokens) and left unscored; the rows
    drawn are exactly those of a run without noise; p = 0 changes nothing."""
    from angelcli.data import load_split
    from angelcli.tiny.train_data import batches, conversation_stream, question_mask

    mask = question_mask(conversation_stream(tok, [{"messages": CONV}]).ids,
                         tok.convert_tokens_to_ids(["<role>", "HUMAN", "</role>"]),
                         tok.convert_tokens_to_ids("<|role_end|>"))
    s = conversation_stream(tok, [{"messages": CONV}])
    assert tok.decode([i for i, m in zip(s.ids, mask) if m]) == "What is gout?Is it painful?"
    s = conversation_stream(tok, load_split("eval")[:60], prompt_weight=0.1)
    mask = question_mask(s.ids, tok.convert_tokens_to_ids(["<role>", "HUMAN", "</role>"]),
                         tok.convert_tokens_to_ids("<|role_end|>"))
    pool = {t for t, m in zip(s.ids, mask) if m}
    clean = batches(s, 8, 128, torch.Generator().manual_seed(0))
    noisy = batches(s, 8, 128, torch.Generator().manual_seed(0), noise=(mask, 0.3, 5))
    off = batches(s, 8, 128, torch.Generator().manual_seed(0), noise=(mask, 0.0, 5))
    changed = 0
    for _ in range(3):
        (x, w), (nx, nw), (ox, ow) = next(clean), next(noisy), next(off)
        assert torch.equal(x, ox) and torch.equal(w, ow)
        diff, unscored = nx != x, nw != w  # (a token may be drawn to replace itself: unscored, not changed)
        changed += int(diff.sum())
        assert bool((nw[diff] == 0).all()) and bool((nw[unscored] == 0).all())
        assert all(int(t) in pool for t in nx[diff])
        assert bool((w[diff | unscored] < 1).all())  # never an answer token
    assert changed > 50

def _small_model():
    from angelcli.config import ModelConfig
    from angelcli.fixtures import tiny_config
    from angelcli.model import BailingMoeForCausalLM

    torch.manual_seed(0)
    cfg = ModelConfig.from_dict(tiny_config(vocab_size=512, hidden_size=64, num_hidden_layers=2, num_experts=8,
                                            n_group=2, topk_group=1, num_experts_per_tok=2))
    model = BailingMoeForCausalLM(cfg).float()
    for p in model.parameters():
        if p.dtype.is_floating_point:
            torch.nn.init.normal_(p, std=0.05)
    return model, cfg


def test_dropout_hooks_act_in_training_only():
    """--dropout: the hooks drop residual-branch outputs in train mode (the training step's path), leave eval
    mode exact, and removing them restores the model; the checkpoint's tensors are the same modules'."""
    from angelcli.tiny.train import add_dropout

    model, cfg = _small_model()
    model.fast_inference = False  # the modules' forward, which the hooks wrap
    x = torch.randint(0, cfg.vocab_size, (2, 12))
    model.eval()
    with torch.no_grad():
        before = model(x).logits
    handles = add_dropout(model, 0.3)
    assert len(handles) == 2 * cfg.num_hidden_layers
    with torch.no_grad():
        assert torch.equal(model(x).logits, before)
    model.train()
    torch.manual_seed(1)
    with torch.no_grad():
        a = model(x).logits
    torch.manual_seed(1)
    with torch.no_grad():
        b = model(x).logits
    assert torch.equal(a, b) and not torch.allclose(a, before)  # seeded: reproducible, and it does drop
    for h in handles:
        h.remove()
    with torch.no_grad():
        assert torch.allclose(model(x).logits, before)


def test_weighted_loss_matches_full_logits_cross_entropy():
    from angelcli.tiny.train_data import weighted_loss

    model, cfg = _small_model()
    g = torch.Generator().manual_seed(1)
    x = torch.randint(0, cfg.vocab_size, (3, 17), generator=g)
    w = (torch.rand(3, 17, generator=g) > 0.4).float() * torch.rand(3, 17, generator=g)
    loss, out = weighted_loss(model, x, w)
    assert out.logits.shape == (int((w[:, 1:] > 0).sum()), cfg.vocab_size)
    full = model(x[:, :-1]).logits  # slow twin: every position, then weight
    per = F.cross_entropy(full.reshape(-1, cfg.vocab_size), x[:, 1:].reshape(-1), reduction="none")
    ref = (per * w[:, 1:].reshape(-1)).sum() / w[:, 1:].sum()
    torch.testing.assert_close(loss, ref, rtol=1e-5, atol=1e-6)


def test_fused_training_attention_matches_eager_in_fp32():
    from angelcli.model.layers import Attention

    model, cfg = _small_model()
    x = torch.randint(0, cfg.vocab_size, (2, 33))
    model.train()
    eager = model(x).logits
    for m in model.modules():
        if isinstance(m, Attention):
            m.fused_training = True
    fused = model(x).logits
    torch.testing.assert_close(fused, eager, rtol=1e-4, atol=1e-5)
    model.eval()  # inference never takes the fused path
    torch.testing.assert_close(model(x).logits, eager, rtol=0, atol=0)


def test_topic_probe_scoring():
    from angelcli.tiny.probe import is_on_topic, load_topic_probes

    probes = load_topic_probes()
    assert len(probes) >= 40 and all(p["topic"] for p in probes)
    assert {"What are common symptoms of type 2 diabetes?", "二型糖尿病有哪些常见症状？"} <= {p["prompt"] for p in probes}
    assert is_on_topic("Common symptoms of Type 2 Diabetes include thirst.", ["diabet", "glucose"])
    assert not is_on_topic("A runny nose and a sore throat.", ["diabet", "blood sugar", "glucose"])
    assert is_on_topic("2型糖尿病常见多饮多尿。", ["糖尿病", "血糖"])
    # English topic words start a word: a UTI answer that suggests a pharmacist is not about the "arm"
    assert not is_on_topic("Ask a pharmacist for advice.", ["stroke", "arm", "speech"])
    assert is_on_topic("Weakness in one arm.", ["arm"]) and is_on_topic("(Face drooping)", ["face"])


def test_sorted_moe_dispatch_matches_the_reference_loop_with_gradients():
    from angelcli.model.moe import SparseMoe

    model, cfg = _small_model()
    x = torch.randint(0, cfg.vocab_size, (2, 24))
    model.train()
    ref = model(x).logits
    ref.square().mean().backward()
    ref_grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    model.zero_grad(set_to_none=True)
    for m in model.modules():
        if isinstance(m, SparseMoe):
            m.sorted_dispatch = True
    out = model(x).logits
    out.square().mean().backward()
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-6)
    for n, p in model.named_parameters():
        if n in ref_grads:
            torch.testing.assert_close(p.grad, ref_grads[n], rtol=1e-4, atol=1e-7, msg=n)
    assert ref_grads.keys() == {n for n, p in model.named_parameters() if p.grad is not None}


def test_extended_probe_has_heldout_phrasings_apart_from_the_corpus():
    from angelcli.data import load_split
    from angelcli.tiny.probe import (extended_probes, load_blind_probes, load_fresh_probes, load_heldout_probes,
                                     load_plain_probes)

    held, blind, fresh, plain = load_heldout_probes(), load_blind_probes(), load_fresh_probes(), load_plain_probes()
    for rows in (held, blind, fresh):
        assert len(rows) == 20 and sum(p["lang"] == "en" for p in rows) == 14 and all(p["topic"] for p in rows)
    assert len(plain) == 40 and sum(p["lang"] == "en" for p in plain) == 28 and all(p["topic"] for p in plain)
    rows = extended_probes()
    assert [r["set"] for r in rows] == ["demo"] * 40 + ["heldout"] * 20 + ["blind"] * 20
    questions = {p["prompt"] for p in held + blind + fresh + plain}
    for split in ("train", "calib", "eval"):
        asked = {m["content"] for s in load_split(split) for m in s["messages"] if m["role"] == "user"}
        assert not questions & asked  # written apart from the corpus templates: never a training question
