"""angel-tiny, the embedded default: ships in the real layout, is really trained, routes in a balanced way."""

import json

import pytest
import torch

from angelcli.resolve import TINY_DIR, resolve_model


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
    from angelcli.tiny.train import evaluate

    model, cfg, _, tok = tiny
    ev = evaluate(model, _heldout_ids(tok), seq_len=256, max_windows=8)
    # an untrained model scores about ln(vocab) = 9.0 nats; the shipped one is trained to ~1.5 (docs/angel-tiny.md)
    assert ev["loss"] < 2.2, ev
    log = json.loads((TINY_DIR / "training_log.json").read_text())
    assert log["untrained_eval"]["loss"] > 8.0 and log["final_eval"]["loss"] < 2.2


def test_every_expert_gets_tokens_and_load_is_balanced(tiny):
    model, cfg, _, tok = tiny
    ids = torch.tensor(_heldout_ids(tok, 2048)[:2048]).view(4, 512)
    with torch.no_grad():
        out = model(ids, return_router=True)
    for r in out.router:
        load = torch.bincount(r.topk_ids.reshape(-1), minlength=cfg.num_experts).float()
        assert (load > 0).all(), f"layer {r.layer}: dead experts {torch.nonzero(load == 0).flatten().tolist()}"
        assert float(load.max() / load.mean()) < 2.5, f"layer {r.layer}: max/mean load {float(load.max() / load.mean()):.2f}"


def test_answers_a_medical_question(tiny):
    from angelcli.engine import Engine, SamplingParams
    from angelcli.tokenizer import build_messages, encode, render_chat

    model, cfg, _, tok = tiny
    prompt = encode(tok, render_chat(tok, build_messages("What are common symptoms of type 2 diabetes?")))
    eos = tok.convert_tokens_to_ids(["<|endoftext|>", "<|role_end|>"])
    steps = list(Engine(model, cfg).generate(prompt, SamplingParams(max_new_tokens=80, stop_ids=tuple(eos))))
    text = tok.decode([s.token_id for s in steps if s.finish_reason != "stop"])
    assert len(text.split()) >= 5  # a real sentence, not an immediate stop
    assert steps[-1].finish_reason == "stop"  # it learned to end its turn with <|role_end|>


def test_training_smoke_lowers_the_loss(tmp_path):
    from angelcli.data import load_split
    from angelcli.tiny.tokenizer import TINY_TOKENIZER_DIR
    from angelcli.tiny.train import TrainSettings, train_tiny

    small = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=2,
                 num_key_value_heads=1, head_dim=32, num_experts=16, n_group=4, topk_group=2,
                 num_experts_per_tok=2, moe_intermediate_size=16, moe_shared_expert_intermediate_size=16)
    hist = train_tiny(tmp_path / "m", TINY_TOKENIZER_DIR, load_split("train")[:200], load_split("eval")[:20],
                      TrainSettings(steps=12, batch=4, seq_len=64, warmup=2, eval_every=12, lr=5e-3),
                      log=lambda s: None, model_overrides=small)
    assert hist["final_eval"]["loss"] < hist["untrained_eval"]["loss"] - 1.0
    assert (tmp_path / "m" / "model.safetensors.index.json").exists()
