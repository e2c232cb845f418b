"""The local store: manifests, name lookup, size, removal, drafts, and the list / show / rm commands."""

from __future__ import annotations

import json
import struct

import pytest

from angelcli import store
from angelcli.aliases import bundled_config
from angelcli.cli import main
from angelcli.errors import UsageError


@pytest.fixture
def home(tmp_path, monkeypatch):
    from angelcli import console

    monkeypatch.setattr(console, "_quiet", False)  # a --quiet of an earlier in-process CLI call must not leak
    monkeypatch.setenv("ANGEL_HOME", str(tmp_path / "home"))
    return tmp_path / "home"


def put_model(repo: str, files: dict[str, bytes], *, complete: bool = True, alias: str | None = None,
              kind: str = "model", draft_for: list[str] | None = None) -> store.Manifest:
    """A model as a pull leaves it: files in the store directory and a manifest recording them."""
    root = store.default_model_dir(repo)
    records = []
    for rel, data in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(data)
        records.append(store.FileRecord(rel, len(data), None, None, (root / rel).stat().st_mtime_ns))
    m = store.Manifest(repo=repo, path=str(root), commit="f" * 40, revision="main", source="hf",
                       endpoint="https://huggingface.co", alias=alias, kind=kind, complete=complete,
                       pulled_at=store.now_iso(), files=records, remote_files=len(files),
                       draft_for=draft_for or [])
    store.save_manifest(m)
    return m


def safetensors_bytes(tensors: dict[str, tuple[str, list[int]]]) -> bytes:
    header, offset = {}, 0
    for name, (dtype, shape) in tensors.items():
        n = 1
        for d in shape:
            n *= d
        nbytes = n * {"BF16": 2, "F32": 4}[dtype]
        header[name] = {"dtype": dtype, "shape": shape, "data_offsets": [offset, offset + nbytes]}
        offset += nbytes
    raw = json.dumps(header).encode()
    return struct.pack("<Q", len(raw)) + raw + b"\0" * offset


def test_home_defaults_and_env(tmp_path, monkeypatch):
    monkeypatch.delenv("ANGEL_HOME", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    assert store.home() == tmp_path / ".cache" / "angel"
    monkeypatch.setenv("ANGEL_HOME", str(tmp_path / "elsewhere"))
    assert store.manifest_path("MedAIBase/AntAngelMed") == tmp_path / "elsewhere" / "manifests" / \
        "MedAIBase--AntAngelMed.json"


def test_manifest_round_trip(home):
    m = put_model("MedAIBase/AntAngelMed", {"config.json": b"{}", "a/b.bin": b"12345"}, alias="antangelmed")
    data = json.loads(store.manifest_path(m.repo).read_text())
    assert data["format"] == store.MANIFEST_FORMAT and data["total_size"] == 7
    assert {"repo", "commit", "source", "files", "pulled_at"} <= set(data)
    back = store.load_manifest("MedAIBase/AntAngelMed")
    assert back == m


def test_find_and_lookup(home):
    m = put_model("MedAIBase/AntAngelMed", {"config.json": b"{}"}, alias="antangelmed")
    for name in ("antangelmed", "AntAngelMed:bf16", "MedAIBase/AntAngelMed", "medaibase/antangelmed", "AntAngelMed"):
        assert store.lookup(name) == m.dir, name
    assert store.lookup("antangelmed-fp8") is None and store.lookup("other/thing") is None
    put_model("MedAIBase/AntAngelMed-FP8", {"config.json": b"{}"}, complete=False)
    assert store.lookup("antangelmed:fp8") is None  # partial pulls are not handed to other commands
    fp8_dir = store.default_model_dir("MedAIBase/AntAngelMed-FP8")
    assert store.lookup("antangelmed-fp8", include_incomplete=True) == fp8_dir
    put_model("Other/AntAngelMed", {"x": b"1"})
    assert store.find("AntAngelMed").repo == "MedAIBase/AntAngelMed"  # alias wins
    put_model("a/dup", {"x": b"1"})
    put_model("b/dup", {"x": b"1"})
    assert store.find("dup") is None  # ambiguous short name


def test_corrupt_manifest(home, capsys):
    put_model("a/good", {"x": b"1"})
    bad = store.manifest_path("b/bad")
    bad.write_text("{not json")
    assert [m.repo for m in store.list_manifests()] == ["a/good"]
    assert "b--bad.json" in capsys.readouterr().err
    with pytest.raises(UsageError, match="unreadable"):
        store.load_manifest("b/bad")


def test_size_missing_and_remove(home):
    m = put_model("a/model", {"w.bin": b"x" * 1000, "sub/c.json": b"{}"})
    part = m.dir / store.PARTIAL_DIR / "abc.partial"
    part.parent.mkdir()
    part.write_bytes(b"y" * 500)
    assert store.size_on_disk(m) == 1502
    (m.dir / "w.bin").write_bytes(b"short")
    assert store.missing_files(m) == ["w.bin"]
    assert store.remove(m) == 507
    assert not m.dir.exists() and store.load_manifest("a/model") is None


def test_attached_draft(home):
    model = put_model("MedAIBase/AntAngelMed", {"config.json": b"{}"})
    assert store.attached_draft(model) is None
    put_model("AQ-MedAI/Ling-Flash-2.0-eagle3", {"config.json": b"{}"}, kind="eagle3-draft",
              draft_for=["MedAIBase/AntAngelMed"])
    assert store.attached_draft(model) == "AQ-MedAI/Ling-Flash-2.0-eagle3"
    put_model("me/my-draft", {"config.json": b"{}"})
    assert store.attach_draft("antangelmed", "me/my-draft").draft == "me/my-draft"
    assert store.attached_draft(store.find("antangelmed")) == "me/my-draft"


def run(args, capsys):
    with pytest.raises(SystemExit) as ex:
        main(args)
    out = capsys.readouterr()
    return ex.value.code, out.out, out.err


def test_cli_list(home, capsys):
    code, out, err = run(["list"], capsys)
    assert code == 0 and out == "" and "empty" in err
    put_model("MedAIBase/AntAngelMed", {"config.json": b"{}"}, alias="antangelmed")
    put_model("x/partial", {"a": b"1"}, complete=False)
    code, out, _ = run(["list"], capsys)
    lines = out.splitlines()
    assert code == 0 and lines[0].split()[:4] == ["NAME", "ALIAS", "COMMIT", "SIZE"]
    assert "MedAIBase/AntAngelMed" in lines[1] and "complete" in lines[1] and "partial" in lines[2]
    code, out, _ = run(["list", "--json"], capsys)
    rows = json.loads(out)
    assert [(r["name"], r["status"], r["size_on_disk"]) for r in rows] == [
        ("MedAIBase/AntAngelMed", "complete", 2), ("x/partial", "partial", 1)]


def test_cli_show_pulled_model(home, capsys):
    cfg = bundled_config("antangelmed")
    shard = safetensors_bytes({"w": ("BF16", [4, 8]), "model.layers.1.mlp.gate.expert_bias": ("F32", [256])})
    put_model("MedAIBase/AntAngelMed", {"config.json": json.dumps(cfg).encode(), "model.safetensors": shard},
              alias="antangelmed")
    code, out, _ = run(["show", "antangelmed", "--json"], capsys)
    info = json.loads(out)
    assert code == 0 and info["pulled"] and info["complete"] and info["config_source"] == "local"
    assert info["params"]["bf16"] == 102_889_697_280 and info["params"]["active"] == 6_152_269_824
    assert info["safetensors_params"] == {"BF16": 32, "F32": 256}
    assert info["format"] == "bfloat16" and info["commit"] == "f" * 40 and info["size_on_disk"] > 0
    code, out, _ = run(["show", "antangelmed"], capsys)
    assert "102,889,697,280 BF16 + 7,936 FP32" in out and "6,152,269,824" in out and "draft: none attached" in out


def test_cli_show_before_download_and_by_path(home, capsys, tmp_path):
    code, out, _ = run(["show", "antangelmed-fp8", "--json"], capsys)
    info = json.loads(out)
    assert code == 0 and not info["pulled"] and info["config_source"].startswith("bundled")
    assert info["format"].startswith("fp8 block 128x128") and info["params"]["bytes_fp8_block"] == 104_234_957_824
    d = tmp_path / "somewhere"
    d.mkdir()
    (d / "config.json").write_text(json.dumps(bundled_config("ling-flash-2.0")))
    code, out, _ = run(["show", str(d), "--json"], capsys)
    assert code == 0 and json.loads(out)["params"]["active"] == 6_152_269_824
    code, _, err = run(["show", "nobody/nothing"], capsys)
    assert code == 2 and "not in the store" in err


def test_cli_rm(home, capsys, monkeypatch):
    put_model("MedAIBase/AntAngelMed", {"config.json": b"{}"}, alias="antangelmed")
    code, _, err = run(["rm", "nope/nope", "--yes"], capsys)
    assert code == 2 and "not in the store" in err
    monkeypatch.setattr("sys.stdin.isatty", lambda: False)
    code, _, err = run(["rm", "antangelmed"], capsys)
    assert code == 2 and "--yes" in err and store.lookup("antangelmed") is not None
    code, out, _ = run(["rm", "antangelmed", "--yes", "--json"], capsys)
    assert code == 0 and json.loads(out)[0]["name"] == "MedAIBase/AntAngelMed"
    assert store.lookup("antangelmed") is None and not store.default_model_dir("MedAIBase/AntAngelMed").exists()
