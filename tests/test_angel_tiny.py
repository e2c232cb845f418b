"""angel-tiny, the embedded default: ships in the real layout, is really trained, routes in a balanced way."""

import json

import pytest
import torch

from angelcli.resolve import TINY_DIR, resolve_model

HELDOUT_BOUND = 0.7  # nats per answer token (the shipped model: about 0.43; the previous 0.49, v5 0.52, v2 0.76)
# Regression guards a few questions below the shipped figures (docs/angel-tiny.md: demo 34/40, held-out 17/20, blind
# 14/20; the previous model 35, 17, 13): runs differ by about 2 per set between seeds
PROBE_BOUND = 0.75  # share of the 40 demo questions answered on topic
HELDOUT_PROBE_BOUND = 0.7  # share of the 20 held-out phrasings answered on topic
BLIND_PROBE_BOUND = 0.5  # share of the 20 blind-set questions answered on topic


@pytest.fixture(scope="module")
def tiny():
    from angelcli.loader import load_model
    from angelcli.tokenizer import load_tokenizer

    model, cfg, report = load_model(resolve_model(None), dtype=torch.float32)
    return model, cfg, report, load_tokenizer(TINY_DIR)


def test_default_model_is_the_shipped_checkpoint_in_the_real_layout(tiny):
    model, cfg, report, tok = tiny
    assert resolve_model(None) == TINY_DIR and report.ok
    assert (TINY_DIR / "model.safetensors.index.json").exists()
    assert len(list(TINY_DIR.glob("model-*-of-*.safetensors"))) == 2
    size = sum(f.stat().st_size for f in TINY_DIR.iterdir())
    assert size <= 25 * 2**20
    # the real structure at small size, with the real 1/32 routed ratio
    assert cfg.first_k_dense_replace == 1 and cfg.num_hidden_layers > 2
    assert (cfg.num_experts, cfg.num_experts_per_tok, cfg.n_group, cfg.topk_group) == (64, 2, 8, 4)
    assert cfg.routed_ratio == 1 / 32 and cfg.num_shared_experts == 1 and cfg.partial_rotary_factor == 0.5
    header = json.loads((TINY_DIR / "model.safetensors.index.json").read_text())["weight_map"]
    assert "model.layers.1.mlp.gate.expert_bias" in header
    assert model.model.layers[1].mlp.gate.expert_bias.dtype == torch.float32
    gen = json.loads((TINY_DIR / "generation_config.json").read_text())
    assert sorted(gen["eos_token_id"]) == sorted(tok.convert_tokens_to_ids(["<|endoftext|>", "<|role_end|>"]))


def _heldout_ids(tok, n_tokens=2048):
    from angelcli.data import load_split
    from angelcli.tiny.train import tokenize_split

    return tokenize_split(tok, load_split("eval"))[: n_tokens + 1]


def test_heldout_loss_far_below_untrained(tiny):
    from angelcli.data import load_split
    from angelcli.tiny.train import evaluate
    from angelcli.tiny.train_data import conversation_stream

    model, cfg, _, tok = tiny
    ev = evaluate(model, conversation_stream(tok, load_split("eval")), seq_len=256, max_rows=8)
    # answer tokens of held-out conversations: an untrained model scores about ln(vocab) = 9.0 nats, the shipped
    # one about 0.43 (docs/angel-tiny.md)
    assert ev["loss"] < HELDOUT_BOUND, ev
    log = json.loads((TINY_DIR / "training_log.json").read_text())
    assert log["untrained_eval"]["loss"] > 8.0 and log["final_eval"]["loss"] < HELDOUT_BOUND


def test_every_expert_gets_tokens_and_load_is_balanced(tiny):
    model, cfg, _, tok = tiny
    # 8,192 tokens: 256 expert slots per expert on average, so max/mean measures routing, not sampling noise
    ids = torch.tensor(_heldout_ids(tok, 8192)[:8192]).view(16, 512)
    with torch.no_grad():
        out = model(ids, return_router=True)
    for r in out.router:
        load = torch.bincount(r.topk_ids.reshape(-1), minlength=cfg.num_experts).float()
        assert (load > 0).all(), f"layer {r.layer}: dead experts {torch.nonzero(load == 0).flatten().tolist()}"
        assert float(load.max() / load.mean()) < 2.2, f"layer {r.layer}: max/mean load {float(load.max() / load.mean()):.2f}"


def test_answers_the_question_asked(tiny):
    """Greedy answers to the 40 demo questions, 20 held-out phrasings and 20 blind-set questions (none of them in
    the corpus) stay on their topic and end their turn; the README demo's questions and the angel-tiny issue's
    two acceptance questions always do."""
    from angelcli.bootstrap import DEMO_MAX_NEW_TOKENS, DEMO_QUESTIONS
    from angelcli.tiny.probe import extended_probes, topic_probe

    model, cfg, _, tok = tiny
    report = topic_probe(model, cfg, tok)
    asked = {*DEMO_QUESTIONS, "What are common symptoms of type 2 diabetes?", "二型糖尿病有哪些常见症状？"}
    # the README's and the questions with the demo's budget, as `bootstrap demo` prints them
    rows = [p for p in extended_probes() if p["prompt"] in asked]
    by_prompt = {a["prompt"]: a for a in topic_probe(model, cfg, tok, DEMO_MAX_NEW_TOKENS, rows)["answers"]}
    assert set(by_prompt) == asked
    for q in asked:
        assert by_prompt[q]["on_topic"] and by_prompt[q]["closed"], by_prompt[q]
        assert len(by_prompt[q]["answer"]) >= 20  # a real answer, not an immediate stop
    # the README demo's answers by content, not only by topic word: a retrained candidate that regresses them
    # (issue 17: the insomnia answer listed causes, not remedies) is rejected here
    # and the two acceptance questions without a repeated item, in a list (a model before looped on "反复感染"
    # in its answer to 二型糖尿病有哪些常见症状？) or inline (the previous model's "… at night and tiredness")
    repeating = [a for a in by_prompt.values() if a["repeats"] or a["inline_repeats"]]
    assert not repeating, repeating
    diabetes, insomnia = (by_prompt[q]["answer"] for q in DEMO_QUESTIONS)
    assert sum(w in diabetes.lower() for w in ("urin", "thirst", "tired", "vision", "heal", "infection", "weight")) >= 3
    assert sum(w in insomnia for w in ("固定时间", "卧室", "咖啡", "手机", "睡前", "放松", "起床")) >= 3
    off = [(a["prompt"], a["answer"][:80]) for a in report["answers"] if not a["on_topic"]]
    demo, heldout, blind = report["sets"]["demo"], report["sets"]["heldout"], report["sets"]["blind"]
    assert demo["on_topic"] >= PROBE_BOUND * demo["total"], off
    assert heldout["on_topic"] >= HELDOUT_PROBE_BOUND * heldout["total"], off
    assert blind["on_topic"] >= BLIND_PROBE_BOUND * blind["total"], off
    assert sum(a["closed"] for a in report["answers"]) >= 0.8 * report["total"]
    assert sum(bool(a["repeats"]) for a in report["answers"]) <= 0.1 * report["total"]
    assert sum(bool(a["inline_repeats"]) for a in report["answers"]) <= 0.1 * report["total"]


def test_tiny_train_defaults_are_the_shipped_models_recipe():
    """`angel tiny-train` with no flags rebuilds the shipped checkpoint: its training log's settings are the
    defaults (a model shipped from a flagged candidate run must make those flags the defaults)."""
    from dataclasses import asdict

    from angelcli.tiny.train import TrainSettings

    shipped = json.loads((TINY_DIR / "training_log.json").read_text())["settings"]
    defaults = asdict(TrainSettings())
    assert {k: defaults[k] for k in shipped} == shipped


def test_training_smoke_lowers_the_loss(tmp_path):
    from angelcli.data import load_split
    from angelcli.tiny.tokenizer import TINY_TOKENIZER_DIR
    from angelcli.tiny.train import TrainSettings, train_tiny

    small = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=2,
                 num_key_value_heads=1, head_dim=32, num_experts=16, n_group=4, topk_group=2,
                 num_experts_per_tok=2, moe_intermediate_size=16, moe_shared_expert_intermediate_size=16)
    hist = train_tiny(tmp_path / "m", TINY_TOKENIZER_DIR, load_split("train")[:200], load_split("eval")[:20],
                      TrainSettings(steps=20, batch=4, seq_len=64, warmup=2, eval_every=20, lr=1e-2, probe=False),
                      log=lambda s: None, model_overrides=small)
    assert hist["final_eval"]["loss"] < hist["untrained_eval"]["loss"] - 1.0
    assert (tmp_path / "m" / "model.safetensors.index.json").exists()


def test_weight_averaging_writes_the_average_of_the_run(tmp_path):
    """--ema: after one step the average is init + w * (step-1 weights - init), w = 1 - min(decay, 2/11) (the
    decay's warm-up); the final weights, written as a variant of the same run, are the step-1 weights."""
    from dataclasses import replace

    from safetensors.torch import load_file

    from angelcli.data import load_split
    from angelcli.tiny.tokenizer import TINY_TOKENIZER_DIR
    from angelcli.tiny.train import TrainSettings, train_tiny

    def weights(d):
        return {k: v for f in sorted(d.glob("*.safetensors")) for k, v in load_file(f).items()}

    small = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=2,
                 num_key_value_heads=1, head_dim=32, num_experts=16, n_group=4, topk_group=2,
                 num_experts_per_tok=2, moe_intermediate_size=16, moe_shared_expert_intermediate_size=16)
    settings = TrainSettings(steps=1, batch=4, seq_len=64, warmup=1, eval_every=1, lr=1e-2, probe=False,
                             ema=0.9, routing=False)
    init = tmp_path / "init"
    train_tiny(init, TINY_TOKENIZER_DIR, load_split("train")[:50], load_split("eval")[:5],
               replace(settings, lr=0.0, bias_rate=0.0, ema=0.0), log=lambda s: None,
               model_overrides=small)
    hist = train_tiny(tmp_path / "avg", TINY_TOKENIZER_DIR, load_split("train")[:50], load_split("eval")[:5],
                      settings, log=lambda s: None, model_overrides=small, variants={tmp_path / "final": 0.0})
    assert hist["settings"]["ema"] == 0.9 and "final_eval_unaveraged" in hist
    w0, w1, avg = weights(init), weights(tmp_path / "final"), weights(tmp_path / "avg")
    share = 1 - min(0.9, 2 / 11)
    bias = "model.layers.1.mlp.gate.expert_bias"
    assert w0[bias].abs().max() == 0 and w1[bias].abs().max() > 0  # fp32: exact
    assert torch.allclose(avg[bias], share * w1[bias])
    moved = 0
    for name in w1:
        expect = w0[name].float() + share * (w1[name].float() - w0[name].float())
        assert torch.allclose(avg[name].float(), expect, atol=1e-2, rtol=1e-2), name  # bf16 checkpoints
        moved += not torch.equal(avg[name], w1[name])
    assert moved > len(w1) // 2


def test_tiny_train_command_writes_a_loadable_checkpoint_and_reports(tmp_path, capsys):
    from angelcli.cli import main
    from angelcli.loader import load_model

    def run(*args):
        with pytest.raises(SystemExit) as info:
            main([str(a) for a in args])
        return info.value.code, capsys.readouterr()

    code, out = run("tiny-train", "--steps", "0")
    assert code == 2 and "--steps" in out.err
    for flag, bad in (("--dropout", "1.5"), ("--question-noise", "1.5"), ("--routing-weight", "0"), ("--ema", "1")):
        code, out = run("tiny-train", flag, bad)
        assert code == 2 and flag in out.err and "Traceback" not in out.err
    code, out = run("tiny-train", "--out", tmp_path / "t", "--steps", "2", "--routing-weight", "0.3", "--json")
    assert code == 0, out.err
    summary = json.loads(out.out)
    assert summary["steps"] == 2 and summary["topic_probe"]["total"] >= 40
    assert summary["final_eval"]["loss"] < summary["untrained_eval"]["loss"]
    _, _, report = load_model(tmp_path / "t", dtype=torch.float32)
    assert report.ok
    assert not (tmp_path / "t.partial").exists()
    kinds = json.loads((tmp_path / "t" / "training_log.json").read_text())["settings"]["kind_weights"]
    assert kinds["routing"] == 0.3 and kinds["icd10"] == 0.25  # the other kinds keep their weights


def test_shipped_draft_belongs_to_the_shipped_model_and_speculation_is_exact(tiny):
    """The EAGLE3 draft beside angel-tiny was trained on this angel-tiny (a retrained model invalidates it):
    it attaches as required, reproduces plain greedy token for token, and is accepted well above chance."""
    from angelcli.eagle.attach import attach_draft
    from angelcli.engine import Engine, SamplingParams
    from angelcli.tokenizer import build_messages, encode, render_chat

    model, cfg, _, tok = tiny
    eos = tuple(tok.convert_tokens_to_ids(["<|endoftext|>", "<|role_end|>"]))
    params = SamplingParams(max_new_tokens=64, stop_ids=eos)
    prompts = ["What are common symptoms of type 2 diabetes?", "晚上总是睡不着有什么办法？"]
    plain, spec = Engine(model, cfg), Engine(model, cfg)
    assert attach_draft(spec, TINY_DIR, required=True) is not None
    passes = tokens = 0
    for q in prompts:
        ids = encode(tok, render_chat(tok, build_messages(q)))
        want = [s.token_id for s in plain.generate(ids, params)]
        got = [s.token_id for s in spec.generate(ids, params)]
        assert got == want, q
        passes, tokens = passes + spec.last_stats.verify_passes, tokens + spec.last_stats.round_tokens
    assert passes and tokens / passes > 2.0  # tokens per target pass (tau 3.17 on 32 prompts, docs/eagle3.md)


def test_inline_repeats_finds_items_of_a_run_on_list_said_twice():
    from angelcli.tiny.probe import inline_repeats

    readme = ("Type 2 diabetes: the main symptoms are: tiredness, feeling very thirsty, passing urine more often, "
              "especially at night and tiredness.\n\nSee a doctor promptly if you feel very unwell.")
    assert inline_repeats(readme) == ["tiredness"]  # an earlier model's README answer (docs/angel-tiny.md)
    assert inline_repeats("known interactions include: some blood thinners; some blood thinners; some X.") == [
        "somebloodthinners"]
    assert inline_repeats("常见症状有：口渴、喝水多、尿多和口渴。") == ["口渴"]
    assert inline_repeats("Rest, drink fluids and take paracetamol. Rest helps.") == []  # across sentences
    assert inline_repeats("Tiredness and tiredness.") == []  # two items are not a list
    assert inline_repeats("- Tiredness\n- Tiredness\n- Thirst") == []  # list lines are repeated_items' job


def test_repeated_items_finds_list_items_said_twice():
    from angelcli.tiny.probe import repeated_items

    assert repeated_items("Symptoms:\n- Tiredness\n- Thirst\n- tiredness.\n\nTiredness is common.") == ["tiredness."]
    assert repeated_items("1. 口渴\n2) 反复感染\n（3）反复感染\n- 口渴、喝水多") == ["反复感染"]
    assert repeated_items("- a b\n- ab?\n* c") == ["ab?"] and repeated_items("no list at all\nno list at all") == []
