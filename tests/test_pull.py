"""`angel pull` end to end: the real huggingface_hub client against a loopback hub (tests/fakehub.py)."""

from __future__ import annotations

import json
import os
import random
import sys
import time
import types

import pytest

from angelcli import hub, store, transfer
from angelcli import pull as pull_mod
from angelcli.aliases import bundled_config
from angelcli.errors import IntegrityError, ResourceError, UsageError
from angelcli.pull import parse_model, pull, select_files
from fakehub import FakeHub, closed_port_url, sha256

REPO = "MedAIBase/AntAngelMed"
C1, C2 = "a" * 40, "b" * 40
SHARD1, SHARD2 = "model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors"


def make_files(seed: int = 0) -> dict[str, bytes]:
    rnd = random.Random(seed)
    return {
        "config.json": json.dumps(bundled_config("antangelmed"), indent=2).encode(),
        "tokenizer.json": b'{"model": "bpe"}' * 50,
        SHARD1: rnd.randbytes(300_000),
        SHARD2: rnd.randbytes(400_000),
        "sub/notes.txt": b"hello\n",
        "empty.txt": b"",  # needs no request; its git blob hash is still checked
    }


@pytest.fixture
def env(tmp_path, monkeypatch):
    """Hermetic environment: store in tmp, no offline/token/proxy/xet leftovers, instant retries."""
    from huggingface_hub import constants
    from huggingface_hub.utils import close_session

    from angelcli import console

    monkeypatch.setattr(console, "_quiet", False)  # restored after tests that run the CLI with --quiet
    monkeypatch.setenv("ANGEL_HOME", str(tmp_path / "home"))
    for var in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "HF_HUB_DISABLE_XET",
                "ANGEL_SOURCE", "HF_ENDPOINT"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    monkeypatch.setattr(constants, "HF_HUB_DISABLE_XET", constants.HF_HUB_DISABLE_XET)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(transfer, "RETRY_WAIT_S", 0.0)
    monkeypatch.setattr(pull_mod, "free_bytes", lambda path: 1 << 50)
    monkeypatch.setattr(hub, "modelscope_available", lambda: False)
    close_session()  # a fresh httpx client that sees NO_PROXY
    return tmp_path


@pytest.fixture
def fake(env, monkeypatch):
    with FakeHub() as h:
        h.add_commit(REPO, C1, make_files())
        monkeypatch.setenv("HF_ENDPOINT", h.url)
        yield h


def read_tree(root) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in root.rglob("*")
            if p.is_file() and not any(part.startswith(".angel") for part in p.relative_to(root).parts)}


def test_full_pull_then_nothing_twice(fake, env):
    report = pull("antangelmed", quiet=True)
    root = store.default_model_dir(REPO)
    assert report["commit"] == C1 and report["path"] == str(root) and report["complete"]
    assert read_tree(root) == make_files()
    m = store.load_manifest(REPO)
    assert (m.repo, m.commit, m.source, m.alias, m.complete) == (REPO, C1, "hf", "antangelmed", True)
    assert m.pulled_at and m.endpoint == fake.url
    rec = m.record(SHARD1)
    assert rec.size == 300_000 and rec.sha256 == sha256(make_files()[SHARD1]) and rec.mtime_ns
    assert m.record("config.json").git_sha1 and m.record("config.json").sha256 is None
    assert not (root / store.PARTIAL_DIR).exists()
    assert len(fake.resolve_gets()) == 5
    # Second pull: the hub is asked for metadata, no file is fetched again.
    again = pull("antangelmed", quiet=True)
    assert len(fake.resolve_gets()) == 5
    assert {f["action"] for f in again["files"]} == {"skip"}
    # Mirror endpoint (loopback is not huggingface.co): Xet is switched off for the process.
    assert os.environ.get("HF_HUB_DISABLE_XET") == "1"


def test_cut_mid_file_then_resumed(fake):
    fake.script[SHARD2] = [("cut", 123_456)] + [("status", 503)] * 20
    with pytest.raises(ResourceError, match=SHARD2) as err:
        pull(REPO, quiet=True)
    assert err.value.exit_code == 4
    root = store.default_model_dir(REPO)
    part = root / store.PARTIAL_DIR / f"{sha256(make_files()[SHARD2])}.partial"
    assert part.stat().st_size == 123_456  # partial state kept
    assert (root / SHARD1).read_bytes() == make_files()[SHARD1]
    m = store.load_manifest(REPO)
    assert not m.complete and store.lookup("antangelmed") is None
    done_before = {p for p in make_files() if p != SHARD2}
    fake.log.clear()
    fake.script.clear()
    report = pull(REPO, quiet=True)
    assert report["complete"]
    assert fake.gets(SHARD2) == ["bytes=123456-"]  # resumed where the cut left it
    for rel in done_before:
        assert fake.gets(rel) == [], rel  # complete files were not fetched again
    assert (root / SHARD2).read_bytes() == make_files()[SHARD2]
    assert report["downloaded_bytes"] == 400_000 - 123_456
    assert store.lookup("antangelmed") == root


def test_retries_are_visible_and_range_ignored_restarts(fake, capsys):
    fake.script[SHARD1] = [("cut", 1000), ("ignore_range",)]
    report = pull(REPO, max_workers=1)
    assert report["complete"]
    assert fake.gets(SHARD1) == [None, "bytes=1000-"]
    assert (store.default_model_dir(REPO) / SHARD1).read_bytes() == make_files()[SHARD1]
    err = capsys.readouterr().err
    assert "retry 1/5" in err and "ignored the Range request" in err


def test_corrupt_download_is_fetched_again(fake, capsys):
    fake.script[SHARD1] = [("corrupt",)]
    report = pull(REPO, quiet=True)
    assert report["complete"]
    assert fake.gets(SHARD1) == [None, None]
    assert (store.default_model_dir(REPO) / SHARD1).read_bytes() == make_files()[SHARD1]
    assert "corrupt" in capsys.readouterr().err  # warnings show even with --quiet


def test_persistent_corruption_is_integrity_error(fake):
    fake.script[SHARD1] = [("corrupt",)] * 3
    with pytest.raises(IntegrityError, match=SHARD1) as err:
        pull(REPO, quiet=True)
    assert err.value.exit_code == 3
    assert not (store.default_model_dir(REPO) / SHARD1).exists()  # never accepted
    assert (store.default_model_dir(REPO) / SHARD2).exists()  # the other files are kept


def test_corrupted_file_on_disk_detected_and_refetched(fake):
    pull(REPO, quiet=True)
    target = store.default_model_dir(REPO) / SHARD2
    data = bytearray(target.read_bytes())
    data[1000] ^= 1
    time.sleep(0.01)
    target.write_bytes(bytes(data))
    fake.log.clear()
    report = pull(REPO, quiet=True)
    assert {f["path"]: f["action"] for f in report["files"]}[SHARD2] == "verify"
    assert fake.gets(SHARD2) == [None] and fake.gets(SHARD1) == []
    assert target.read_bytes() == make_files()[SHARD2]


def test_disk_space_refusal_before_any_byte(fake, monkeypatch, env):
    monkeypatch.setattr(pull_mod, "free_bytes", lambda path: 500_000)
    with pytest.raises(ResourceError, match="not enough free disk") as err:
        pull(REPO, quiet=True)
    assert err.value.exit_code == 4
    assert fake.resolve_gets() == []
    assert not (env / "home" / "models").exists() and not (env / "home" / "manifests").exists()
    report = pull(REPO, dry_run=True)
    assert report["disk"]["ok"] is False and report["disk"]["needed"] == sum(map(len, make_files().values()))
    assert report["disk"]["margin"] == pull_mod.MIN_MARGIN


def test_dry_run_writes_nothing(fake, env):
    report = pull(REPO, dry_run=True, include=["*.safetensors"])
    assert [f["path"] for f in report["files"]] == [SHARD1, SHARD2]
    assert report["to_download_bytes"] == 700_000 and report["disk"]["ok"]
    assert not (env / "home").exists()
    assert fake.resolve_gets() == []


def test_revision_pinning_and_switch(fake):
    new = make_files(seed=1)
    del new["sub/notes.txt"]
    new["config.json"] = make_files()["config.json"]  # unchanged file: not fetched again after the switch
    fake.add_commit(REPO, C2, new, refs=("main",))
    fake.repos[REPO]["refs"]["v1"] = C1
    report = pull(REPO, revision="v1", quiet=True)
    root = store.default_model_dir(REPO)
    assert report["commit"] == C1 and store.load_manifest(REPO).revision == "v1"
    assert all(f"/resolve/{C1}/" in p for p in fake.resolve_gets())  # files fetched by commit, not by tag
    assert read_tree(root) == make_files()
    fake.log.clear()
    report = pull(REPO, quiet=True)
    assert report["commit"] == C2
    assert read_tree(root) == new  # sub/notes.txt (not in C2) removed
    assert fake.gets("config.json") == []
    with pytest.raises(UsageError, match="revision 'nope' not found"):
        pull(REPO, revision="nope", quiet=True)


def test_include_exclude(fake):
    report = pull(REPO, include=["*.json", "sub/"], exclude=["tokenizer*"], quiet=True)
    assert sorted(f["path"] for f in report["files"]) == ["config.json", "sub/notes.txt"]
    assert sorted(read_tree(store.default_model_dir(REPO))) == ["config.json", "sub/notes.txt"]
    # A later pull of the same commit adds files; the manifest keeps the union.
    pull(REPO, include=[SHARD1], quiet=True)
    assert sorted(f.path for f in store.load_manifest(REPO).files) == ["config.json", SHARD1, "sub/notes.txt"]
    with pytest.raises(UsageError, match="no file"):
        pull(REPO, include=["*.gguf"], quiet=True)


def test_offline_mode(fake, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    start = time.monotonic()
    with pytest.raises(ResourceError, match="HF_HUB_OFFLINE") as err:
        pull(REPO, quiet=True)
    assert time.monotonic() - start < 30 and fake.api_calls() == 0  # no retry loop (not a speed target) and err.value.exit_code == 4
    monkeypatch.delenv("HF_HUB_OFFLINE")
    pull(REPO, quiet=True)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    calls = fake.api_calls()
    report = pull(REPO, quiet=True)
    assert report["offline"] and report["complete"] and fake.api_calls() == calls
    (store.default_model_dir(REPO) / SHARD1).unlink()
    with pytest.raises(ResourceError, match="incomplete"):
        pull(REPO, quiet=True)


def test_unknown_repo_and_bad_names(fake):
    with pytest.raises(UsageError, match="repository not found"):
        pull("nobody/nothing", quiet=True)
    with pytest.raises(UsageError, match="neither an alias"):
        pull("not-a-model", quiet=True)
    with pytest.raises(UsageError, match="max-workers"):
        pull(REPO, max_workers=0)
    with pytest.raises(UsageError, match="--source"):
        pull(REPO, source="ftp")


def test_unreachable_hub_fails_fast(env, monkeypatch):
    monkeypatch.setenv("HF_ENDPOINT", closed_port_url())
    start = time.monotonic()
    with pytest.raises(ResourceError, match="cannot reach"):
        pull(REPO, quiet=True)
    assert time.monotonic() - start < 30  # gives up instead of retrying for minutes (not a speed target)


def test_local_dir(fake, tmp_path):
    dest = tmp_path / "mine"
    dest.mkdir()
    (dest / "keep.txt").write_text("user file")
    report = pull(REPO, local_dir=dest, include=["*.json"], quiet=True)
    assert report["path"] == str(dest.resolve())
    m = store.load_manifest(REPO)
    assert not m.managed and store.lookup(REPO) == dest.resolve()
    store.remove(m)
    assert sorted(p.name for p in dest.iterdir()) == ["keep.txt"]


def test_lock_held_by_live_process(fake):
    root = store.default_model_dir(REPO)
    root.mkdir(parents=True)
    import socket

    (root / store.LOCK_NAME).write_text(f"{socket.gethostname()}:{os.getpid()}")
    with pytest.raises(UsageError, match="another pull"):
        pull(REPO, quiet=True)
    (root / store.LOCK_NAME).write_text(f"{socket.gethostname()}:999999999")  # dead pid: stale, taken over
    assert pull(REPO, quiet=True)["complete"]


def test_cli_pull_prints_path_and_exit_codes(fake, capsys, monkeypatch):
    from angelcli.cli import main

    with pytest.raises(SystemExit) as ex:
        main(["pull", "antangelmed", "--quiet"])
    assert ex.value.code == 0
    assert capsys.readouterr().out.strip().splitlines()[-1] == str(store.default_model_dir(REPO))
    with pytest.raises(SystemExit) as ex:
        main(["pull", "antangelmed", "--json", "--dry-run"])
    assert ex.value.code == 0
    out = json.loads(capsys.readouterr().out)
    assert out["dry_run"] and {f["action"] for f in out["files"]} == {"skip"}
    monkeypatch.setattr(pull_mod, "free_bytes", lambda p: 10)
    fake.script[SHARD1] = [("corrupt",)] * 3
    (store.default_model_dir(REPO) / SHARD1).unlink()
    with pytest.raises(SystemExit) as ex:
        main(["pull", "antangelmed", "--dry-run"])
    assert ex.value.code == 4
    assert "not enough free disk" in capsys.readouterr().err
    monkeypatch.setattr(pull_mod, "free_bytes", lambda p: 1 << 50)
    with pytest.raises(SystemExit) as ex:
        main(["pull", "antangelmed", "-q"])
    assert ex.value.code == 3
    assert SHARD1 in capsys.readouterr().err


def test_modelscope_without_sdk(env, monkeypatch):
    monkeypatch.setitem(sys.modules, "modelscope_hub", None)
    monkeypatch.setitem(sys.modules, "modelscope", None)
    with pytest.raises(UsageError, match="pip install"):
        pull(REPO, source="modelscope", quiet=True)


def test_modelscope_through_sdk(env, monkeypatch):
    """The ModelScope path with a stand-in SDK module: listing, download, angel's own sha256 check."""
    files = make_files()
    calls = []

    class FakeInfo(types.SimpleNamespace):
        pass

    class HubApi:
        def __init__(self, endpoint=None, token=None):
            pass

        def list_repo_files(self, repo_id, repo_type, revision=None, recursive=True):
            assert (repo_id, repo_type, revision) == (REPO, "model", "master")
            return [FakeInfo(path=p, size=len(d), sha256=sha256(d), type="blob") for p, d in files.items()] + \
                [FakeInfo(path="sub", size=0, sha256=None, type="tree")]

        def list_repo_revisions(self, repo_id, repo_type):
            return [{"Revision": "master", "CommitId": "c" * 40}]

        def download_file(self, repo_id, repo_type, file_path, *, revision, local_dir, expected_sha256, file_size):
            calls.append(file_path)
            out = os.path.join(local_dir, file_path)
            os.makedirs(os.path.dirname(out), exist_ok=True)
            with open(out, "wb") as fh:
                fh.write(files[file_path])
            return out

    monkeypatch.setitem(sys.modules, "modelscope_hub", types.SimpleNamespace(HubApi=HubApi))
    report = pull("modelscope.cn/MedAIBase/AntAngelMed", quiet=True)
    assert report["source"] == "modelscope" and report["commit"] == "c" * 40 and report["complete"]
    assert read_tree(store.default_model_dir(REPO)) == files and sorted(calls) == sorted(files)
    assert store.load_manifest(REPO).source == "modelscope"


def test_parse_model_and_select_files():
    assert parse_model("antangelmed").repo_id == REPO
    assert parse_model("AntAngelMed:fp8").repo_id == "MedAIBase/AntAngelMed-FP8"
    assert parse_model("ling-flash-eagle3").alias.kind == "eagle3-draft"
    assert parse_model("hf.co/org/x").source_hint == "hf" and parse_model("org/x").alias is None
    with pytest.raises(UsageError, match="embedded"):
        parse_model("angel-tiny")
    f = [hub.RemoteFile(p, 1) for p in ("a.json", "b/c.json", "b/d.bin", "e.safetensors")]
    assert [x.path for x in select_files(f, ["b/"], ["*.bin"])] == ["b/c.json"]
    assert [x.path for x in select_files(f, [], ["*.json"])] == ["b/d.bin", "e.safetensors"]


def test_free_bytes_of_a_dir_not_created_yet(tmp_path):
    assert pull_mod.free_bytes(tmp_path / "a" / "b") > 0
    assert pull_mod.disk_margin(0) == 0 and pull_mod.disk_margin(10**12) == 2 * 10**10


def test_mirror_without_sizes_in_model_info_uses_tree(fake):
    fake.omit_sizes = True
    report = pull(REPO, quiet=True)
    assert report["complete"] and read_tree(store.default_model_dir(REPO)) == make_files()
    assert store.load_manifest(REPO).record(SHARD1).sha256 == sha256(make_files()[SHARD1])


def test_ctrl_c_keeps_partial_and_exits_130(fake, env):
    """A real `angel pull` process interrupted mid-file: exit 130, partial kept, the next pull resumes it."""
    import signal
    import subprocess
    from pathlib import Path

    fake.throttle = 200_000  # ~2 s for shard 2, so the interrupt lands mid-file even on a loaded machine
    repo_root = Path(__file__).resolve().parent.parent
    # SIGINT back to default in the child: a test run launched in the background by a shell without job
    # control inherits SIGINT ignored, and Python then installs no KeyboardInterrupt handler at all
    proc = subprocess.Popen([sys.executable, "-m", "angelcli", "pull", REPO, "--include", SHARD2],
                            env={**os.environ, "PYTHONPATH": str(repo_root)}, cwd=repo_root,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    part = store.default_model_dir(REPO) / store.PARTIAL_DIR / f"{sha256(make_files()[SHARD2])}.partial"
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline and not (part.exists() and part.stat().st_size > 0):
        assert proc.poll() is None, "the pull finished before any partial data was seen at " + str(part)
        time.sleep(0.01)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=20)
    assert proc.returncode == 130, err.decode()
    have = part.stat().st_size
    assert 0 < have < 400_000 and b"Traceback" not in err
    fake.throttle = 0
    fake.log.clear()
    assert pull(REPO, include=[SHARD2], quiet=True)["complete"]
    assert fake.gets(SHARD2) == [f"bytes={have}-"]


def test_new_commit_keeps_unchanged_files_and_removes_outdated(fake):
    pull(REPO, quiet=True)
    changed = dict(make_files())
    changed[SHARD2] = b"new weights" * 1000
    fake.add_commit(REPO, C2, changed)
    fake.log.clear()
    report = pull(REPO, include=["config.json"], quiet=True)
    root = store.default_model_dir(REPO)
    assert report["stale"] == [SHARD2] and not (root / SHARD2).exists()
    assert (root / SHARD1).read_bytes() == make_files()[SHARD1]  # same content at the new commit: kept
    m = store.load_manifest(REPO)
    assert m.commit == C2 and SHARD2 not in {f.path for f in m.files} and m.complete
    assert fake.resolve_gets() == []  # config.json was unchanged too
