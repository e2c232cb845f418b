"""EAGLE3 draft: vocabulary map invariants, layer-id conventions, exports (exact keys, bit-exact reload),
foreign configs, consistency checks, data masks, training (resume, feature cache) and the CLI end to end."""

import json
from pathlib import Path

import pytest
import torch
from safetensors import safe_open

from angelcli.eagle.export import (config_from_files, export_draft, load_draft, sglang_keys, speculators_keys)
from angelcli.eagle.model import (DraftConfig, Eagle3Draft, build_vocab_map, check_vocab_map, default_aux_layers)
from angelcli.errors import CheckFailed, UsageError


pytestmark = pytest.mark.usefixtures("one_thread")  # conftest.py: one intra-op thread


class Result:
    def __init__(self, code, out, err):
        self.returncode, self.stdout, self.stderr = code, out, err


def cli(capsys, *args):
    """Run `angel ARGS` in this process (the same main() as the console script, without re-importing torch)."""
    from angelcli.cli import main

    capsys.readouterr()
    try:
        main([str(a) for a in args])
        code = 0
    except SystemExit as e:
        code = e.code
    out = capsys.readouterr()
    return Result(code, out.out, out.err)


def small_cfg(**over):
    kw = dict(hidden_size=32, intermediate_size=64, num_attention_heads=4, num_key_value_heads=2, head_dim=8,
              vocab_size=300, draft_vocab_size=120, target_hidden_size=32, target_num_layers=32,
              aux_layers=default_aux_layers(32))
    kw.update(over)
    return DraftConfig(**kw)


def test_vocab_map_invariants():
    g = torch.Generator().manual_seed(0)
    V, Vd = 300, 120
    counts = torch.randint(0, 50, (V,), generator=g) * (torch.rand(V, generator=g) < 0.8)
    d2t, t2d = build_vocab_map(counts, Vd, force_ids=(299, 7))
    check_vocab_map(d2t, t2d)
    tgt = torch.arange(Vd) + d2t
    assert d2t.dtype == torch.int64 and t2d.dtype == torch.bool and int(t2d.sum()) == Vd
    assert bool((d2t >= 0).all()) and bool((d2t[1:] >= d2t[:-1]).all()) and bool((tgt[1:] > tgt[:-1]).all())
    assert bool(t2d[tgt].all()) and t2d[299] and t2d[7]
    forced = torch.zeros(V, dtype=torch.bool)
    forced[[299, 7]] = True
    assert counts[t2d & ~forced].min() >= counts[~t2d].max()  # the most frequent ids are the ones kept
    logits = torch.randn(4, V, generator=g)
    assert torch.equal(logits[..., t2d], logits[..., tgt])  # mask slicing yields draft-id order
    # identity: all zeros (never arange); fewer distinct tokens than Vd are padded with unseen ids
    d2t_id, t2d_id = build_vocab_map(counts, V)
    assert torch.equal(d2t_id, torch.zeros(V, dtype=torch.int64)) and bool(t2d_id.all())
    sparse = torch.zeros(V, dtype=torch.int64)
    sparse[[5, 250]] = 3
    d2t_s, t2d_s = build_vocab_map(sparse, 10)
    assert t2d_s[5] and t2d_s[250] and int(t2d_s.sum()) == 10
    with pytest.raises(UsageError):
        check_vocab_map(torch.arange(Vd), t2d)  # absolute ids stored as if offsets


def test_layer_id_conventions():
    from angelcli.eagle.export import sglang_layer_ids, vllm_layer_ids

    cfg = small_cfg()
    assert cfg.aux_layers == (1, 15, 28)  # Ling-flash-2.0-sized target, spec §1.1
    assert sglang_layer_ids(cfg) == [1, 15, 28] and vllm_layer_ids(cfg) == [2, 16, 29]
    for n in range(3, 40):
        ids = default_aux_layers(n)
        assert len(set(ids)) == 3 and list(ids) == sorted(ids) and 0 <= ids[0] and ids[-1] < n
        if n >= 5:
            assert ids[0] == 1 and ids[-1] <= n - 2  # expressible in SGLang's and vLLM's conventions
        if n >= 4:
            assert ids[-1] <= n - 2  # SGLang captures at the start of layer id+1: never the last output


def test_portability_warnings_follow_the_engines_capture_points():
    from angelcli.eagle.export import portability_warnings, verifier_name

    assert verifier_name("/x/hub/models--MedAIBase--AntAngelMed-FP8/snapshots/abc", "local") \
        == "MedAIBase/AntAngelMed-FP8"
    assert verifier_name("/somewhere/else", "angel-tiny") == "angel-tiny"
    def cfg(ids, n=5):
        return small_cfg(target_num_layers=n, aux_layers=tuple(ids))

    assert portability_warnings(cfg(default_aux_layers(5))) == []
    assert portability_warnings(cfg(default_aux_layers(32), 32)) == []
    (w,) = portability_warnings(cfg((1, 3, 4)))  # the last layer's output: fine in vLLM, not in SGLang
    assert w.startswith("SGLang: id 4") and "layer id+1 = 5" in w
    assert not any(x.startswith("vLLM") for x in portability_warnings(cfg((1, 3, 4))))


@pytest.mark.parametrize("dtype", ["bfloat16", "float32"])
def test_exports_have_exact_keys_and_reload_bit_exact(tmp_path, dtype):
    cfg = small_cfg()
    d = Eagle3Draft(cfg)
    d2t, t2d = build_vocab_map(torch.arange(300).flip(0), 120, force_ids=(299,))
    d.set_vocab_map(d2t, t2d)
    d.init_weights(1)
    with torch.no_grad():
        for p in d.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    out = tmp_path / "draft"
    export_draft(d, out, dtype=dtype, special={"eos_token_id": 3})
    for sub, keys in ((out, sglang_keys()), (out / "vllm", speculators_keys())):
        with safe_open(str(sub / "model.safetensors"), framework="pt") as fh:
            assert sorted(fh.keys()) == sorted(keys)
            assert fh.get_tensor("d2t").dtype == torch.int64 and fh.get_tensor("t2d").dtype == torch.bool
            assert fh.get_tensor("fc.weight").dtype == getattr(torch, dtype)
    sg = json.loads((out / "config.json").read_text())
    assert sg["architectures"] == ["LlamaForCausalLMEagle3"] and sg["draft_vocab_size"] == 120
    assert sg["vocab_size"] == 300 and sg["num_hidden_layers"] == 1 and sg["tie_word_embeddings"] is False
    assert sg["eagle_config"] == {"use_aux_hidden_state": True, "eagle_aux_hidden_state_layer_ids": [1, 15, 28]}
    vl = json.loads((out / "vllm" / "config.json").read_text())
    assert vl["speculators_model_type"] == "eagle3" and vl["norm_before_residual"] is False
    assert vl["eagle_aux_hidden_state_layer_ids"] == [2, 16, 29] and vl["draft_vocab_size"] == 120
    assert vl["transformer_layer_config"]["vocab_size"] == 300
    want = {k: (v if k in ("d2t", "t2d") else v.to(getattr(torch, dtype))) for k, v in d.state_dict().items()}
    for sub in (out, out / "vllm"):
        back = load_draft(sub)
        assert back.config.aux_layers == (1, 15, 28)
        got = back.state_dict()
        assert sorted(got) == sorted(want)
        for k in want:
            assert got[k].dtype == want[k].dtype and torch.equal(got[k], want[k]), k
    # the speculators directory alone (no angel-draft.json beside it) reads its ids in vLLM's convention
    assert (out / "vllm" / "angel-draft.json").exists() is False


def test_foreign_configs_layer_ids(tmp_path):
    cfg = small_cfg()
    d = Eagle3Draft(cfg)
    d.init_weights(0)
    export_draft(d, tmp_path / "x", dtype="float32")
    (tmp_path / "x" / "angel-draft.json").unlink()  # as a published head ships: config.json + weights only
    conf_path = tmp_path / "x" / "config.json"
    conf = json.loads(conf_path.read_text())
    assert config_from_files(tmp_path / "x", 32)[0].aux_layers == (1, 15, 28)
    conf["eagle_config"]["eagle_aux_hidden_state_layer_ids"] = [2, 16, 29]  # capture-before form
    conf_path.write_text(json.dumps(conf))
    c, _, notes = config_from_files(tmp_path / "x", 32)
    assert c.aux_layers == (1, 15, 28) and notes
    del conf["eagle_config"]
    conf_path.write_text(json.dumps(conf))
    c, _, notes = config_from_files(tmp_path / "x", 32)
    assert c.aux_layers == (1, 15, 28) and "defaults" in notes[0]
    assert config_from_files(tmp_path / "x" / "vllm", 32)[0].aux_layers == (1, 15, 28)
    # an older head: pytorch_model.bin instead of safetensors, with a copy of the embedding
    from safetensors.torch import load_file

    sd = load_file(str(tmp_path / "x" / "model.safetensors"))
    (tmp_path / "x" / "model.safetensors").unlink()
    torch.save(sd | {"embed_tokens.weight": torch.zeros(300, 32)}, tmp_path / "x" / "pytorch_model.bin")
    back = load_draft(tmp_path / "x", target_num_layers=32)
    assert all(torch.equal(back.state_dict()[k], v) for k, v in sd.items())
    with pytest.raises(UsageError):
        config_from_files(tmp_path, 32)  # no config.json


def test_check_draft_rejects_mismatches(tiny_ckpt, tmp_path):
    from angelcli.config import ModelConfig
    from angelcli.eagle.attach import check_draft

    tcfg = ModelConfig.from_file(tiny_ckpt)
    good = Eagle3Draft(DraftConfig.for_target(tcfg))
    good.init_weights(0)
    export_draft(good, tmp_path / "ok", dtype="float32")
    assert check_draft(tcfg, tmp_path / "ok")["ok"]
    for name, over in (("hidden", {"hidden_size": 32, "target_hidden_size": 32, "head_dim": 8}),
                       ("vocab", {"vocab_size": tcfg.vocab_size + 5, "draft_vocab_size": 100}),
                       ("layers", {"target_num_layers": 8, "aux_layers": (1, 3, 4)})):
        kw = DraftConfig.for_target(tcfg).to_dict() | over
        bad = Eagle3Draft(DraftConfig.from_dict(kw))
        bad.init_weights(0)
        export_draft(bad, tmp_path / name, dtype="float32")
        with pytest.raises(CheckFailed):
            check_draft(tcfg, tmp_path / name)


def test_assistant_mask_marks_answers_only(tiny_ckpt):
    from angelcli.eagle.data import assistant_mask
    from angelcli.tokenizer import load_tokenizer

    tok = load_tokenizer(tiny_ckpt)
    msgs = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Fever in an infant?"},
            {"role": "assistant", "content": "Needs urgent care."}, {"role": "user", "content": "Why?"},
            {"role": "assistant", "content": "High blood pressure"}]
    text = tok.apply_chat_template(msgs, tokenize=False)
    s = assistant_mask(tok, text)
    assert s.ids == list(tok.encode(text, add_special_tokens=False))
    picked = tok.decode([i for i, m in zip(s.ids, s.mask) if m])
    assert picked == "Needs urgent care.<|role_end|>High blood pressure<|role_end|>"


# ---- training ----------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def rt(tiny_ckpt):
    from angelcli.runtime import open_runtime

    return open_runtime(str(tiny_ckpt), device="cpu", dtype="float32")


def _opts(out, **kw):
    from angelcli.eagle.train import TrainOptions

    base = dict(data="random", out=out, steps=4, ttt=2, batch_size=2, max_len=16, random_samples=8,
                eval_samples=2, save_every=2, export_dtype="float32")
    base.update(kw)
    return TrainOptions(**base)


def test_resume_continues_exactly(rt, tmp_path):
    from angelcli.eagle.train import train_draft

    full = train_draft(rt, _opts(tmp_path / "full"))
    assert full["steps"] == 4 and len(full["eval"]["accuracy"]) == 2
    train_draft(rt, _opts(tmp_path / "part", steps=2))
    with pytest.raises(UsageError):
        train_draft(rt, _opts(tmp_path / "part"))  # a checkpoint is there: --resume is required
    with pytest.raises(UsageError):
        train_draft(rt, _opts(tmp_path / "part", resume=True, ttt=3))  # incompatible with the checkpoint
    res = train_draft(rt, _opts(tmp_path / "part", resume=True))
    assert res["resumed_from"] == 2
    a, b = load_draft(tmp_path / "full").state_dict(), load_draft(tmp_path / "part").state_dict()
    for k in a:
        assert torch.equal(a[k], b[k]), k


def test_feature_cache_matches_online(rt, tmp_path):
    from angelcli.eagle.features import FeatureCache, target_features
    from angelcli.eagle.train import collate
    from angelcli.eagle.data import random_samples

    samples = random_samples(rt.cfg.vocab_size, 3, 12, seed=5)
    ids, _ = collate(samples, "cpu")
    layers = (0, 1, 2)
    fc = FeatureCache(tmp_path / "f", rt, layers, {"data": "x"})
    assert fc.announce(100) == 100 * 4 * rt.cfg.hidden_size * 4
    lengths = [len(s.ids) for s in samples]
    aux_c, logits_c = fc.features([0, 1, 2], ids, lengths)
    assert len(list((tmp_path / "f").glob("*.safetensors"))) == 3
    aux, logits = target_features(rt.model, ids, layers)
    for r, n in enumerate(lengths):
        assert torch.allclose(aux_c[r, :n], aux[r, :n], atol=1e-5)
        assert torch.allclose(logits_c[r, :n], logits[r, :n], atol=1e-4)
    aux_2, _ = fc.features([0, 1, 2], ids, lengths)  # second time: from disk
    assert torch.equal(aux_2, aux_c)
    with pytest.raises(UsageError):
        FeatureCache(tmp_path / "f", rt, (0, 1, 1), {"data": "x"})


# ---- the CLI end to end: draft-train --data random --steps 20, then generate --draft == --no-draft -----

def test_cli_train_attach_generate(tiny_ckpt, tmp_path, capsys):
    import shutil

    tiny_ckpt = shutil.copytree(tiny_ckpt, tmp_path / "model")  # draft-attach writes into the model dir
    out = tmp_path / "draft"
    r = cli(capsys, "draft-train", tiny_ckpt, "--data", "random", "--steps", "20", "--out", out, "--ttt", "3",
            "--batch-size", "2", "--max-len", "32", "--eval-samples", "4", "--json")
    assert r.returncode == 0, r.stderr
    summary = json.loads(r.stdout)
    assert summary["steps"] == 20 and (out / "config.json").exists() and (out / "vllm" / "config.json").exists()
    with safe_open(str(out / "model.safetensors"), framework="pt") as fh:
        assert sorted(fh.keys()) == sorted(sglang_keys())
    ids = "5,6,7,8,9"
    plain = cli(capsys, "generate", tiny_ckpt, "--input-ids", ids, "-n", "24", "--no-draft", "--json")
    assert plain.returncode == 0, plain.stderr
    with_path = cli(capsys, "generate", tiny_ckpt, "--input-ids", ids, "-n", "24", "--draft-path", out, "--json")
    assert with_path.returncode == 0, with_path.stderr
    missing = cli(capsys, "generate", tiny_ckpt, "--input-ids", ids, "-n", "4", "--draft")
    assert missing.returncode == 2 and "no draft attached" in missing.stderr and "--draft" in missing.stderr
    att = cli(capsys, "draft-attach", tiny_ckpt, out, "--json")
    assert att.returncode == 0, att.stderr
    assert json.loads(att.stdout)["ok"] and (Path(tiny_ckpt) / "draft.json").exists()
    spec = cli(capsys, "generate", tiny_ckpt, "--input-ids", ids, "-n", "24", "--draft", "--json")
    assert spec.returncode == 0, spec.stderr
    p, s, w = (json.loads(x.stdout) for x in (plain, spec, with_path))
    assert s["ids"] == p["ids"] == w["ids"] and len(p["ids"]) == 24
    assert "speculative" in s["stats"] and "speculative" not in p["stats"]
    assert s["stats"]["speculative"]["k"] == 3 and s["stats"]["speculative"]["mean_acceptance_length"] >= 1
    ev = cli(capsys, "draft-eval", tiny_ckpt, "--data", "random", "--prompts", "2", "-n", "12", "--json")
    assert ev.returncode == 0, ev.stderr
    rep = json.loads(ev.stdout)
    assert rep["identical"] is True and rep["tau"] >= 1 and len(rep["per_position_acceptance"]) == 3
    # chat uses the attached draft (Engine.attach_draft) when asked and reports the acceptance length; by
    # default on CPU it decodes plainly, since no measurement says this draft pays there (eagle/attach.py)
    ch = cli(capsys, "chat", tiny_ckpt, "--once", "What is a fever?", "-n", "6", "--temperature", "0",
             "--no-disclaimer", "--draft")
    assert ch.returncode == 0 and "mean acceptance" in ch.stderr, ch.stderr
    ch = cli(capsys, "chat", tiny_ckpt, "--once", "What is a fever?", "-n", "6", "--temperature", "0",
             "--no-disclaimer")
    assert ch.returncode == 0 and "plain decoding" in ch.stderr and "mean acceptance" not in ch.stderr
    ch = cli(capsys, "chat", tiny_ckpt, "--once", "What is a fever?", "-n", "6", "--no-draft", "--no-disclaimer")
    assert ch.returncode == 0 and "mean acceptance" not in ch.stderr


def test_user_data_with_regeneration(rt, tmp_path):
    """--data PATH --regenerate: the target writes the answers; samples hold its exact greedy tokens."""
    from angelcli.eagle.train import REGEN_FILE, train_draft
    from angelcli.engine import SamplingParams

    rows = [{"messages": [{"role": "user", "content": f"Question {i} about fever?"},
                          {"role": "assistant", "content": "Drink water and rest."}]} for i in range(6)]
    path = tmp_path / "chats.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    summary = train_draft(rt, _opts(tmp_path / "d", data=str(path), regenerate=True, regen_max_tokens=5,
                                    steps=2, max_len=64))
    regen = [json.loads(x) for x in (tmp_path / "d" / REGEN_FILE).read_text().splitlines()]
    assert summary["train_samples"] == len(regen) == 5 and summary["eval"]["samples"] == 1  # 1 of 6 held out
    tok = rt.tokenizer
    for r in regen:
        n_prompt = r["mask"].index(1)
        prompt = r["ids"][:n_prompt]
        assert tok.decode(prompt).startswith("<role>SYSTEM</role>") and tok.decode(prompt).endswith("<role>ASSISTANT</role>")
        gen = [s.token_id for s in rt.engine.generate(prompt, SamplingParams(max_new_tokens=5, stop_ids=tuple(rt.eos_ids)))]
        assert r["ids"][n_prompt:] == gen and sum(r["mask"]) == len(gen)


def test_batched_regeneration_keeps_turn_order_and_histories(rt):
    """Conversations advance together in engine batches; each turn still sees the target's own earlier answers,
    an assistant turn with nothing before it is skipped, and samples come out conversation by conversation."""
    from angelcli.eagle.data import regenerate

    convs = [{"messages": [{"role": "assistant", "content": "skipped: no history"},
                           {"role": "user", "content": f"Hello {i}?"},
                           {"role": "assistant", "content": "x"},
                           {"role": "user", "content": "And then?" * (i % 3 + 1)},
                           {"role": "assistant", "content": "y"}][(0 if i % 2 else 1):]} for i in range(5)]
    convs.append({"text": "plain text is not a conversation"})
    one_by_one = regenerate(rt, convs, max_new_tokens=4, batch_size=1)
    batched = regenerate(rt, convs, max_new_tokens=4, batch_size=3)
    assert len(batched) == 10  # two answered turns per conversation
    assert [(s.ids, s.mask) for s in batched] == [(s.ids, s.mask) for s in one_by_one]
    tok = rt.tokenizer
    first, second = batched[0], batched[1]  # conversation 0: turn 2 repeats turn 1's prompt + generated answer
    n1 = first.mask.index(1)
    prompt2 = tok.decode(second.ids[: second.mask.index(1)])  # (the template may drop a "...</think>" part)
    assert prompt2.startswith(tok.decode(first.ids[:n1])) and prompt2.count("<role>ASSISTANT</role>") == 2
    assert prompt2.endswith("<role>HUMAN</role>And then?<|role_end|><role>ASSISTANT</role>")


def test_medical_data_trains(rt, tmp_path):
    from angelcli.eagle.train import train_draft

    s = train_draft(rt, _opts(tmp_path / "m", data="medical", max_samples=6, steps=2, max_len=512, eval_samples=2))
    assert s["train_samples"] == 6 and s["eval"]["samples"] == 2 and 0 < s["vocab_coverage"] <= 1


def test_stale_attachment_falls_back_but_explicit_request_fails(tiny_ckpt, tmp_path, capsys):
    import shutil

    from angelcli.config import ModelConfig
    from angelcli.eagle.attach import LINK_FILE, LINK_FORMAT
    from angelcli.runtime import open_runtime

    model = shutil.copytree(tiny_ckpt, tmp_path / "model")
    tcfg = ModelConfig.from_file(model)
    bad = Eagle3Draft(DraftConfig.from_dict(DraftConfig.for_target(tcfg).to_dict() | {"target_num_layers": 8,
                                                                                        "aux_layers": (1, 3, 4)}))
    bad.init_weights(0)
    export_draft(bad, tmp_path / "bad", dtype="float32")
    (model / LINK_FILE).write_text(json.dumps({"format": LINK_FORMAT, "draft": str(tmp_path / "bad")}))
    rt = open_runtime(str(model), device="cpu", dtype="float32", use_draft=None)
    assert rt.draft_dir is None and "attached draft not used" in capsys.readouterr().err
    with pytest.raises(CheckFailed):
        open_runtime(str(model), device="cpu", dtype="float32", use_draft=True)
    with pytest.raises(UsageError):
        open_runtime(str(model), device="cpu", dtype="float32", use_draft=False, draft=str(tmp_path / "bad"))
    (model / LINK_FILE).write_text(json.dumps({"format": LINK_FORMAT, "draft": None}))  # detached
    assert open_runtime(str(model), device="cpu", dtype="float32", use_draft=None).draft_dir is None
