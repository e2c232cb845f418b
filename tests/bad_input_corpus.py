"""Shared pieces of the bad-input corpus (tests/test_bad_input*.py): corrupt copies of angel-tiny, malformed
request files, and the in-process CLI runner with the one-line-error assertion."""

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
    """Write NaN/inf into one routed expert of the copy at `d`; returns the tensor name.

    The layer's selection bias for that expert is raised too, so every token routes to it whatever the trained
    weights prefer: the cases below test what a used corrupt expert does, not which prompt happens to reach it."""
    from safetensors.torch import load_file, save_file

    index = json.loads((d / "model.safetensors.index.json").read_text())["weight_map"]
    name, bias = "model.layers.1.mlp.experts.0.down_proj.weight", "model.layers.1.mlp.gate.expert_bias"
    for shard in sorted({d / index[name], d / index[bias]}):
        tensors = load_file(shard)
        if name in tensors:
            t = tensors[name].clone()
            t.view(-1)[::7] = value
            tensors[name] = t
        if bias in tensors:
            b = tensors[bias].clone()
            b[0] = b.abs().max() + 100.0  # selection only (the bias never weighs an expert's output)
            tensors[bias] = b
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
