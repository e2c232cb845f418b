"""Bad input, continued: interrupts, help text, store corruption, checksums, quantize outputs, bootstrap noise
(issue 16). Shared helpers: tests/bad_input_corpus.py."""

from __future__ import annotations

import io
import json
import sys

import pytest

from angelcli.resolve import TINY_DIR
from bad_input_corpus import _copy_tiny, _flip_byte, assert_clean, run_cli


# -- issue 16.2: never NaN in JSON ---------------------------------------------------------------------------------
def test_emit_json_is_strict(capsys):
    from angelcli.console import emit_json

    emit_json({"logprob": float("nan"), "top": [[1, float("-inf")]], "ok": 1.5})
    out = capsys.readouterr().out
    assert json.loads(out) == {"logprob": None, "top": [[1, None]], "ok": 1.5} and "NaN" not in out


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
