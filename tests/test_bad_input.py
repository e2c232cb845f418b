"""A corpus of corrupt checkpoints and malformed input, tried as a new user would (issue 16).

Every case runs the real CLI entry point (angelcli.cli.main, in process: no interpreter start per case) and
asserts the documented exit code, exactly one `angel: error:` line on stderr that names the file, field,
line or flag, and never an "internal error" or a traceback.
"""

from __future__ import annotations

import io
import json
import shutil
import sys
from pathlib import Path

import pytest

from angelcli.resolve import TINY_DIR

MSG = {  # --messages files
    "content_int.json": [{"role": "user", "content": 42}],
    "content_null.json": [{"role": "user", "content": None}],
    "content_dict.json": [{"role": "user", "content": {"text": "hi"}}],
    "role_doctor.json": [{"role": "doctor", "content": "hi"}],
    "role_missing.json": [{"content": "hi"}],
    "image_part.json": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}],
    "not_list.json": {"role": "user", "content": "hi"},
    "empty_list.json": [],
    "item_string.json": ["hello"],
}


def _copy_tiny(dest: Path) -> Path:
    shutil.copytree(TINY_DIR, dest)
    return dest


def _edit_config(d: Path, **changes) -> None:
    cfg = json.loads((d / "config.json").read_text())
    for k, v in changes.items():
        if v is None:
            cfg.pop(k, None)
        else:
            cfg[k] = v
    (d / "config.json").write_text(json.dumps(cfg))


def _poison(d: Path, value: float) -> str:
    """Write NaN/inf into one routed expert of the copy at `d`; returns the tensor name."""
    from safetensors.torch import load_file, save_file

    index = json.loads((d / "model.safetensors.index.json").read_text())["weight_map"]
    name = "model.layers.1.mlp.experts.0.down_proj.weight"
    shard = d / index[name]
    tensors = load_file(shard)
    t = tensors[name].clone()
    t.view(-1)[::7] = value
    tensors[name] = t
    save_file(tensors, shard, metadata={"format": "pt"})
    return name


def _write_sha256sums(d: Path) -> None:
    """checksums.sha256 as `sha256sum` writes it (independent of angel's own writer)."""
    import hashlib

    lines = [f"{hashlib.sha256(p.read_bytes()).hexdigest()}  {p.name}\n" for p in sorted(d.iterdir()) if p.is_file()]
    (d / "checksums.sha256").write_text("".join(lines))


def _flip_byte(path: Path, offset: int = -1000) -> None:
    data = bytearray(path.read_bytes())
    data[offset] ^= 0x55
    path.write_bytes(bytes(data))


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    root = tmp_path_factory.mktemp("corpus")
    c = {"tmp": root}
    for name, body in MSG.items():
        (root / name).write_text(json.dumps(body))
    (root / "parts.json").write_text(json.dumps([{"role": "user", "content": [{"type": "text", "text": "Hello"},
                                                                              {"type": "text", "text": "there"}]}]))
    (root / "broken.json").write_text('[{"role": "user", "content": "hi"')
    (root / "empty.jsonl").write_text("\n\n")
    c["nan"] = _copy_tiny(root / "nan")
    c["nan_tensor"] = _poison(c["nan"], float("nan"))
    c["inf"] = _copy_tiny(root / "inf")
    _poison(c["inf"], float("inf"))
    c["no_experts"] = _copy_tiny(root / "no_experts")
    _edit_config(c["no_experts"], num_experts=None)
    c["hybrid"] = _copy_tiny(root / "hybrid")
    _edit_config(c["hybrid"], model_type="bailing_hybrid")
    c["v25"] = _copy_tiny(root / "v25")
    _edit_config(c["v25"], architectures=["BailingMoeV2_5ForCausalLM"])
    c["v3"] = _copy_tiny(root / "v3")
    _edit_config(c["v3"], architectures=["BailingMoeV3ForCausalLM"], model_type="bailing_moe_v3")
    c["v2type"] = _copy_tiny(root / "v2type")
    _edit_config(c["v2type"], model_type="bailing_moe_v2")
    c["bad_json_cfg"] = _copy_tiny(root / "bad_json_cfg")
    (c["bad_json_cfg"] / "config.json").write_text("{not json")
    c["truncated"] = _copy_tiny(root / "truncated")
    shard = c["truncated"] / "model-00002-of-00002.safetensors"
    shard.write_bytes(shard.read_bytes()[:-4096])
    c["no_shard"] = _copy_tiny(root / "no_shard")
    (c["no_shard"] / "model-00001-of-00002.safetensors").unlink()
    c["bad_sums"] = _copy_tiny(root / "bad_sums")
    (c["bad_sums"] / "checksums.sha256").write_text("this is not a checksum line\n")
    c["flipped"] = _copy_tiny(root / "flipped")
    _write_sha256sums(c["flipped"])
    _flip_byte(c["flipped"] / "model-00001-of-00002.safetensors")
    c["no_record"] = _copy_tiny(root / "no_record")
    c["bad_tok"] = _copy_tiny(root / "bad_tok")
    (c["bad_tok"] / "tokenizer.json").write_text('{"broken\n')
    c["bad_tpl"] = _copy_tiny(root / "bad_tpl")
    tcfg = json.loads((c["bad_tpl"] / "tokenizer_config.json").read_text())
    tcfg["chat_template"] = "{% for m in messages %}{{ m.content }{% endfor %}"
    (c["bad_tpl"] / "tokenizer_config.json").write_text(json.dumps(tcfg))
    c["str_experts"] = _copy_tiny(root / "str_experts")
    _edit_config(c["str_experts"], num_experts="64")
    c["garbage_shard"] = _copy_tiny(root / "garbage_shard")
    (c["garbage_shard"] / "model-00001-of-00002.safetensors").write_bytes(b"garbage-garbage-garbage")
    c["empty_shard"] = _copy_tiny(root / "empty_shard")
    (c["empty_shard"] / "model-00002-of-00002.safetensors").write_bytes(b"")
    c["bad_gen"] = _copy_tiny(root / "bad_gen")
    (c["bad_gen"] / "generation_config.json").write_text("{x")
    c["bad_index"] = _copy_tiny(root / "bad_index")
    (c["bad_index"] / "model.safetensors.index.json").write_text('{"weight_map": 5}')
    (root / "batch.jsonl").write_text("\n".join([
        json.dumps({"prompt": "What is a fever?", "max_new_tokens": 3, "id": "a"}),
        json.dumps({"prompt": "x", "max_new_tokens": -1}),
        "{not json",
        json.dumps({"messages": [{"role": "user", "content": [{"type": "text", "text": "Hi"}]}], "max_new_tokens": 2}),
        json.dumps({"messages": [{"role": "user", "content": 42}]}),
        json.dumps({"input_ids": [1, 10 ** 9], "max_new_tokens": 2}),
        json.dumps({"prompt": "y", "temperature": "hot"}),
        json.dumps({"prompt": "z", "colour": "red"}),
        json.dumps({"input_ids": [5, 6, 7], "max_new_tokens": 2, "id": 99}),
    ]) + "\n")
    (root / "all_bad.jsonl").write_text(json.dumps({"prompt": 5}) + "\n" + json.dumps([1, 2]) + "\n")
    return c


def run_cli(capsys, argv, stdin: str | None = None, monkeypatch=None):
    from angelcli.cli import main

    if stdin is not None:
        monkeypatch.setattr(sys, "stdin", io.StringIO(stdin))
    with pytest.raises(SystemExit) as ex:
        main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return ex.value.code, out, err


def assert_clean(code, err, want_code, needle):
    """The documented code, one `angel: error:` line containing `needle`, no internal error, no traceback."""
    errors = [line for line in err.splitlines() if line.startswith("angel: error:")]
    assert "internal error" not in err and "Traceback" not in err, err
    assert code == want_code, err
    if want_code:
        assert len(errors) == 1, err
        assert needle in errors[0], errors[0]


# (case id, argv with {placeholders} from the corpus, exit code, text the error line must contain)
CASES = [
    # issue 16.3 / 16.4: messages that used to be internal errors or silently dropped
    ("content-42", ["generate", "--messages", "{tmp}/content_int.json"], 2,
     "messages[0].content: expected a string or a list of text parts, got 42"),
    ("content-null", ["generate", "--messages", "{tmp}/content_null.json"], 2, "messages[0].content"),
    ("content-dict", ["generate", "--messages", "{tmp}/content_dict.json"], 2, "messages[0].content"),
    ("role-doctor", ["generate", "--messages", "{tmp}/role_doctor.json"], 2, "messages[0].role: unknown role 'doctor'"),
    ("role-missing", ["generate", "--messages", "{tmp}/role_missing.json"], 2, "messages[0].role: missing"),
    ("image-part", ["generate", "--messages", "{tmp}/image_part.json"], 2, "messages[0].content[0].type"),
    ("messages-object", ["generate", "--messages", "{tmp}/not_list.json"], 2, "expected a list"),
    ("messages-empty", ["generate", "--messages", "{tmp}/empty_list.json"], 2, "the list is empty"),
    ("messages-string-item", ["generate", "--messages", "{tmp}/item_string.json"], 2, "messages[0]: expected an object"),
    ("messages-broken-json", ["generate", "--messages", "{tmp}/broken.json"], 2, "broken.json: not valid JSON"),
    ("messages-missing-file", ["generate", "--messages", "{tmp}/nope.json"], 2, "nope.json: no such file"),
    ("device-quantum", ["generate", "-p", "hi", "--device", "quantum"], 2, "--device quantum"),
    # issue 16.13: flags that were not validated
    ("max-seq-len-0", ["generate", "-p", "hi", "--max-seq-len", "0"], 2, "--max-seq-len must be >= 1"),
    ("max-seq-len-neg", ["generate", "-p", "hi", "--max-seq-len", "-3"], 2, "--max-seq-len must be >= 1"),
    ("max-seq-len-huge", ["generate", "-p", "hi", "--max-seq-len", "100000"], 2, "max_position_embeddings (4096)"),
    ("empty-prompt", ["generate", "--prompt", ""], 2, "--prompt is empty"),
    ("prompt-too-long", ["generate", "-p", "a fairly long prompt about many things", "--max-seq-len", "8"], 2,
     "does not fit the context of 8 tokens (--max-seq-len"),
    ("draft-k-0", ["generate", "-p", "hi", "--draft-k", "0"], 2, "--draft-k must be >= 1"),
    ("draft-eval-prompts-0", ["draft-eval", "--prompts", "0"], 2, "--prompts must be >= 1"),
    ("verify-max-tokens-0", ["verify", "--max-tokens", "0"], 2, "--max-tokens"),
    # more a user would try
    ("unknown-option", ["generate", "--bogus"], 2, "--bogus"),
    ("unknown-verb", ["frobnicate"], 2, "frobnicate"),
    ("temperature-neg", ["generate", "-p", "hi", "--temperature", "-1"], 2, "--temperature"),
    ("top-p-0", ["generate", "-p", "hi", "--top-p", "0"], 2, "--top-p"),
    ("logprobs-huge", ["generate", "-p", "hi", "--logprobs", "100000"], 2, "--logprobs"),
    ("input-ids-text", ["generate", "--input-ids", "a,b"], 2, "--input-ids"),
    ("input-ids-vocab", ["generate", "--input-ids", "1,999999", "-n", "2"], 2, "999999"),
    ("dtype-bad", ["generate", "-p", "hi", "--dtype", "float64"], 2, "--dtype"),
    ("backend-bad", ["generate", "-p", "hi", "--backend", "cuda-magic"], 2, "--backend"),
    ("model-unknown", ["generate", "no-such-model", "-p", "hi"], 2, "no-such-model"),
    ("batch-missing", ["generate", "--batch", "{tmp}/nope.jsonl"], 2, "nope.jsonl: no such file"),
    ("batch-empty", ["generate", "--batch", "{tmp}/empty.jsonl"], 2, "no requests"),
    ("batch-and-prompt", ["generate", "--batch", "{tmp}/empty.jsonl", "-p", "x"], 2, "--batch cannot be combined"),
    ("quantize-no-format", ["quantize"], 2, "--fp8"),
    # issue 16.5: unwritable output is usage, not resources
    ("quantize-out-proc", ["quantize", "--fp8", "--out", "/proc/angel-x"], 2, "not writable"),
    # issue 16.7: a missing architecture field is named, not blamed on the weights
    ("no-num-experts-generate", ["generate", "{no_experts}", "-p", "hi"], 2, "'num_experts' is missing"),
    ("no-num-experts-quantize", ["quantize", "{no_experts}", "--fp8", "--out", "{tmp}/q-ne"], 2,
     "'num_experts' is missing"),
    ("no-num-experts-verify", ["verify", "{no_experts}", "--static"], 2, "num_experts"),
    # later Ling generations are named
    ("bailing-hybrid", ["generate", "{hybrid}", "-p", "hi"], 2,
     "architecture bailing_hybrid is not supported by angel's engine; serve it with SGLang"),
    ("ling-2.5", ["verify", "{v25}", "--static"], 2, "architecture BailingMoeV2_5ForCausalLM is not supported"),
    ("ling-3", ["quantize", "{v3}", "--fp8", "--out", "{tmp}/q-v3"], 2, "serve it with SGLang"),
    ("config-not-json", ["generate", "{bad_json_cfg}", "-p", "hi"], 2, "config.json"),
    ("config-string-field", ["generate", "{str_experts}", "-p", "hi"], 2, "'num_experts' must be a positive integer"),
    ("tokenizer-corrupt", ["generate", "{bad_tok}", "-p", "hi", "-n", "2"], 2, "cannot load the tokenizer"),
    ("chat-template-broken", ["generate", "{bad_tpl}", "-p", "hi", "-n", "2"], 2,
     "tokenizer_config.json: the chat template failed"),
    ("chat-template-broken-chat", ["chat", "{bad_tpl}", "--once", "hi", "-n", "2"], 2, "the chat template failed"),
    ("chat-once-empty", ["chat", "--once", " "], 2, "--once: the message is empty"),
    ("generation-config-not-json", ["generate", "{bad_gen}", "-p", "hi", "-n", "2"], 2, "generation_config.json"),
    ("input-ids-negative", ["generate", "--input-ids", "5,-1"], 2, "--input-ids: token ids are >= 0"),
    # integrity: exit 3 naming the file / tensor
    ("truncated-shard", ["generate", "{truncated}", "-p", "hi"], 3, "model-00002-of-00002.safetensors"),
    ("truncated-shard-verify", ["verify", "{truncated}", "--static"], 3, "model-00002-of-00002.safetensors"),
    ("missing-shard", ["generate", "{no_shard}", "-p", "hi"], 3, "model-00001-of-00002.safetensors"),
    ("garbage-shard", ["generate", "{garbage_shard}", "-p", "hi"], 3, "model-00001-of-00002.safetensors"),
    ("empty-shard", ["verify", "{empty_shard}", "--static"], 3, "model-00002-of-00002.safetensors"),
    ("index-not-a-map", ["generate", "{bad_index}", "-p", "hi"], 3, "model.safetensors.index.json"),
    ("flipped-byte", ["verify", "{flipped}", "--static"], 3, "model-00001-of-00002.safetensors: sha256 mismatch"),
    ("flipped-byte-only", ["verify", "{flipped}", "--checksums-only"], 3, "sha256 mismatch"),
    ("bad-checksum-file", ["verify", "{bad_sums}", "--checksums-only"], 3, "checksums.sha256:1"),
    # issue 16.2: NaN / inf weights
    ("nan-generate", ["generate", "{nan}", "-p", "hello there", "-n", "8", "--json", "--logprobs", "2"], 3,
     "non-finite logits"),
    ("inf-generate", ["generate", "{inf}", "-p", "hello there", "-n", "8"], 3, "first non-finite output: model.layers.1"),
    ("nan-deep", ["verify", "{nan}", "--static", "--deep"], 3, "model.layers.1.mlp.experts.0.down_proj.weight"),
    ("nan-routing", ["verify", "{nan}", "--max-tokens", "8"], 3, "forward.finite"),
    ("nan-quantize", ["quantize", "{nan}", "--fp8", "--out", "{tmp}/q-nan", "--no-report"], 3,
     "model.layers.1.mlp.experts.0.down_proj.weight holds NaN or inf"),
]


@pytest.mark.parametrize("case, argv, code, needle", CASES, ids=[c[0] for c in CASES])
def test_bad_input_corpus(corpus, capsys, case, argv, code, needle):
    argv = [a.format(**{k: v for k, v in corpus.items()}) for a in argv]
    got, out, err = run_cli(capsys, argv)
    assert_clean(got, err, code, needle)
    if case == "nan-generate":
        assert "NaN" not in out and "<|startoftext|>" not in out  # nothing emitted from the broken logits


@pytest.mark.parametrize("case, argv, needle", [
    ("text-parts", ["generate", "--messages", "{tmp}/parts.json", "-n", "2", "--json"], '"prompt_ids"'),
    ("bailing-moe-v2-type", ["verify", "{v2type}", "--static", "--no-checksums"], "OK"),
    ("no-record", ["verify", "{no_record}", "--static"], "integrity could not be checked"),
    ("show-tiny", ["show", "angel-tiny"], "angel-tiny"),
    ("show-default", ["show"], "angel-tiny"),
])
def test_good_input_still_works(corpus, capsys, case, argv, needle):
    argv = [a.format(**{k: v for k, v in corpus.items()}) for a in argv]
    got, out, err = run_cli(capsys, argv)
    assert got == 0, err
    assert needle in out + err


# -- issue 16.9: a bad --batch line costs only itself ------------------------------------------------------------
def test_batch_bad_lines_are_reported_in_place_and_the_rest_is_written(corpus, capsys):
    code, out, err = run_cli(capsys, ["generate", "--batch", corpus["tmp"] / "batch.jsonl"])
    rows = [json.loads(line) for line in out.splitlines()]
    assert code == 2 and "internal error" not in err
    assert [r.get("line") for r in rows] == [None, 2, 3, None, 5, 6, 7, 8, None]  # file order, nothing lost
    assert [r["id"] for r in rows] == ["a", 1, 2, 3, 4, 5, 6, 7, 99]
    good = [r for r in rows if "error" not in r]
    assert len(good) == 3 and all(r["ids"] for r in good)
    errs = {r["line"]: r["error"] for r in rows if "error" in r}
    assert "batch.jsonl:2: max_new_tokens must be an integer >= 0, got -1" in errs[2]
    assert "batch.jsonl:3: not valid JSON" in errs[3]
    assert "batch.jsonl:5: messages[0].content" in errs[5]
    assert "1000000000 is outside the vocabulary" in errs[6]
    assert "temperature must be a number >= 0" in errs[7]
    assert "unknown field 'colour'" in errs[8]
    lines = [line for line in err.splitlines() if line.startswith("angel: error:")]
    assert len(lines) == 1 and "6 of 9 line(s) failed" in lines[0]


def test_batch_with_only_bad_lines_does_not_load_the_model(corpus, capsys, monkeypatch):
    import angelcli.runtime

    monkeypatch.setattr(angelcli.runtime, "open_runtime", lambda *a, **k: pytest.fail("model loaded"))
    code, out, err = run_cli(capsys, ["generate", "--batch", corpus["tmp"] / "all_bad.jsonl"])
    rows = [json.loads(line) for line in out.splitlines()]
    assert code == 2 and [r["line"] for r in rows] == [1, 2]
    assert "'prompt' must be a string" in rows[0]["error"] and "must be a JSON object" in rows[1]["error"]


# -- issue 16.2: never NaN in JSON ---------------------------------------------------------------------------------
def test_emit_json_is_strict(capsys):
    from angelcli.console import emit_json

    emit_json({"logprob": float("nan"), "top": [[1, float("-inf")]], "ok": 1.5})
    out = capsys.readouterr().out
    assert json.loads(out) == {"logprob": None, "top": [[1, None]], "ok": 1.5} and "NaN" not in out


# -- issue 16.8 / 16.12: piped chat sees failed slash commands; /save never creates directories ---------------------
def test_piped_chat_exits_2_after_failed_slash_commands(corpus, capsys, monkeypatch):
    nowhere = corpus["tmp"] / "no-such-dir" / "x.md"
    script = f"/load {corpus['tmp']}/role_doctor.json\n/save {nowhere}\nWhat is a fever?\n"
    code, out, err = run_cli(capsys, ["chat", "--no-disclaimer", "-n", "4"], stdin=script, monkeypatch=monkeypatch)
    assert code == 2, err
    assert "messages[0].role: unknown role 'doctor'" in err
    assert f"directory {nowhere.parent} does not exist" in err
    assert not nowhere.parent.exists()
    assert out.strip()  # the question after the failed commands was still answered


# -- issue 16.10: Ctrl-C says so, and that a rerun resumes ---------------------------------------------------------
def test_ctrl_c_says_interrupted_and_how_to_resume(capsys, monkeypatch):
    import angelcli.describe

    def interrupted(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(angelcli.describe, "describe", interrupted)
    code, out, err = run_cli(capsys, ["show"])
    assert code == 130 and "interrupted" in err and "resume" in err and len(err.strip().splitlines()) == 1


# -- issue 16.11: Ctrl-C before the first token keeps the question -------------------------------------------------
def test_ctrl_c_before_the_first_token_keeps_the_question(monkeypatch):
    from types import SimpleNamespace

    from angelcli.chat.repl import ChatIO, reply
    from angelcli.chat.session import ChatSession
    from angelcli.config import ModelConfig
    from angelcli.engine.sampling import SamplingParams
    from angelcli.tokenizer import load_tokenizer

    tok = load_tokenizer(TINY_DIR)
    engine = SimpleNamespace(max_seq_len=4096, check_prompt=lambda ids: None, last_stats=None,
                             generate=lambda *a: pytest.fail("must not be reached"))
    rt = SimpleNamespace(engine=engine, tokenizer=tok, eos_ids=[2], model_dir=TINY_DIR,
                         cfg=ModelConfig.from_file(TINY_DIR), device="cpu", dtype="float32", backend="stub")
    session = ChatSession(rt, params=SamplingParams(max_new_tokens=8), model_name="tiny")

    def ctrl_c_while_rendering():
        raise KeyboardInterrupt  # Ctrl-C while the conversation is rendered / tokenised

    monkeypatch.setattr(session, "render", ctrl_c_while_rendering)
    io_ = ChatIO(io.StringIO(), io.StringIO(), interactive=True, color=False)
    with pytest.raises(KeyboardInterrupt):
        reply(session, "What is a fever?", io_)
    assert [(m.role, m.content, m.interrupted) for m in session.messages] == [
        ("user", "What is a fever?", False), ("assistant", "", True)]
    assert session.stats()["turns"] == 1 and session.stats()["interrupted"] == 1


# -- issue 16.14: no `<bool>` after plain flags ----------------------------------------------------------------------
@pytest.mark.parametrize("verb", ["generate", "chat", "verify", "quantize", "pull", "list", "show"])
def test_help_shows_no_bool_metavar(capsys, verb):
    code, out, err = run_cli(capsys, [verb, "--help"])
    assert code == 0 and "--json" in out + err or verb in ("chat",)
    assert "<bool>" not in out and "BOOLEAN" not in out


# -- issue 16.1: a pulled model with a flipped byte is corrupt for verify, list and show ------------------------------
def test_store_model_with_a_flipped_byte(tmp_path, capsys):
    from angelcli import store
    from angelcli.checksums import sha256_file

    model = _copy_tiny(tmp_path / "m")
    files = []
    for p in sorted(model.iterdir()):
        files.append(store.FileRecord(p.name, p.stat().st_size, sha256=sha256_file(p), mtime_ns=p.stat().st_mtime_ns))
    store.save_manifest(store.Manifest(repo="acme/Tiny", path=str(model), complete=True, files=files,
                                       pulled_at=store.now_iso()))
    code, out, err = run_cli(capsys, ["verify", "acme/Tiny", "--checksums-only"])
    assert code == 0 and "match the store manifest" in out
    _flip_byte(model / "model-00002-of-00002.safetensors")
    code, out, err = run_cli(capsys, ["verify", "acme/Tiny"])
    assert_clean(code, err, 3, "model-00002-of-00002.safetensors: sha256 mismatch")
    code, out, err = run_cli(capsys, ["list", "--json"])
    (row,) = json.loads(out)
    assert row["status"] == "corrupt" and row["corrupt_files"] == ["model-00002-of-00002.safetensors"]
    code, out, err = run_cli(capsys, ["show", "acme/Tiny"])
    assert "corrupt (model-00002-of-00002.safetensors" in out
    assert store.find("acme/Tiny").record("model-00002-of-00002.safetensors").mtime_ns is None  # pull re-hashes
    code, out, err = run_cli(capsys, ["verify", "acme/Tiny", "--write-checksums"])
    assert_clean(code, err, 2, "is a pulled model")


def test_write_checksums_then_verify(tmp_path, capsys):
    model = _copy_tiny(tmp_path / "local")
    code, out, err = run_cli(capsys, ["verify", model, "--checksums-only"])
    assert code == 0 and "integrity could not be checked" in out
    code, out, err = run_cli(capsys, ["verify", model, "--checksums-only", "--write-checksums"])
    assert code == 0 and (model / "checksums.sha256").exists()
    _flip_byte(model / "tokenizer.json", 100)
    code, out, err = run_cli(capsys, ["verify", model, "--static"])
    assert_clean(code, err, 3, "tokenizer.json: sha256 mismatch")
    code, out, err = run_cli(capsys, ["verify", model, "--static", "--no-checksums"])
    assert code == 0


# -- issue 16.15 / 16.16: quantize dry run from the bundled config, consistent --json, checksums, modes ---------------
def test_quantize_dry_run_of_an_alias_before_pull(tmp_path, capsys):
    code, out, err = run_cli(capsys, ["quantize", "antangelmed", "--fp8", "--dry-run", "--json",
                                      "--out", tmp_path / "amq"])
    r = json.loads(out)
    assert code in (0, 4), err  # 4 only when this disk is too small for the planned output
    assert r["status"] == "dry-run" and r["source_bytes"] == 205_779_426_304  # 102.9B BF16 + 7,936 FP32 params
    assert 0.5 * r["source_bytes"] < r["output_bytes"] < 0.53 * r["source_bytes"]
    assert not (tmp_path / "amq").exists()


def test_quantize_output_has_checksums_modes_and_consistent_json(tmp_path, capsys):
    import os
    import stat

    out_dir = tmp_path / "q"
    code, out, err = run_cli(capsys, ["quantize", "--fp8", "--out", out_dir, "--json", "--no-report"])
    first = json.loads(out)
    code2, out2, err2 = run_cli(capsys, ["quantize", "--fp8", "--out", out_dir, "--json", "--no-report"])
    again = json.loads(out2)
    assert code == code2 == 0 and again["status"] == "up-to-date"
    assert first["output_bytes"] == again["output_bytes"] and "state" in first and "state" in again
    from angelcli.checksums import read_checksums, sha256_file

    sums = read_checksums(out_dir / "checksums.sha256")
    files = sorted(p.name for p in out_dir.iterdir() if p.is_file() and p.name != "checksums.sha256")
    assert sorted(sums) == files and all(sha256_file(out_dir / n) == d for n, d in sums.items())
    umask = os.umask(0)
    os.umask(umask)
    assert {stat.S_IMODE((out_dir / n).stat().st_mode) for n in files} == {0o666 & ~umask}


def test_plain_progress_shows_human_bytes(capsys):
    from angelcli.console import _PlainProgress

    bar = _PlainProgress("hashing", 22_345_500, "B", interval=0)
    bar.advance(22_345_500)
    err = capsys.readouterr().err
    assert "22.3 MB/22.3 MB" in err and "e+07" not in err


def test_bootstrap_pip_step_is_one_line_unless_it_fails(capfd):
    from angelcli import bootstrap

    noisy = [sys.executable, "-c", "import sys; print('WARNING: Retrying\\n' * 100); sys.exit(int(sys.argv[-1]))"]
    assert bootstrap._pip(noisy, ["0"], "installing x") is True
    assert bootstrap._pip(noisy, ["1"], "installing y", fallback="trying z") is False
    err = capfd.readouterr().err
    assert "Retrying" not in err and len(err.strip().splitlines()) == 4
    with pytest.raises(SystemExit):
        bootstrap._pip(noisy, ["3"], "installing w")
    err = capfd.readouterr().err
    assert 1 < err.count("Retrying") <= 15  # the tail, not the flood
