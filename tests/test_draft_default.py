"""Speculation by default only where it is measured to pay (angelcli/eagle/attach.py speculation_pays)."""

import json

from angelcli.eagle.attach import TINY_DRAFT_DIR, record_measurement, speculation_pays
from angelcli.eagle.export import ANGEL_META


def test_policy_follows_the_record_per_device():
    slow = {"measured": {"cpu": {"speedup": 0.78}}}
    fast = {"measured": {"cpu": {"speedup": 1.3}, "cuda": {"speedup": 0.9}}}
    assert speculation_pays(slow, "cpu")[0] is False and "0.78x" in speculation_pays(slow, "cpu")[1]
    assert speculation_pays(fast, "cpu")[0] is True
    assert speculation_pays(fast, "cuda")[0] is False  # a record wins over the GPU default
    assert speculation_pays({}, "cpu")[0] is False and speculation_pays({}, "cuda")[0] is True


def test_record_measurement_writes_the_device_entry(tmp_path):
    (tmp_path / ANGEL_META).write_text(json.dumps({"format": "x", "training": {"steps": 1}}))
    record_measurement(tmp_path, {"device": "cpu", "speedup": 1.25, "tau": 2.9, "k": 3, "junk": 1})
    meta = json.loads((tmp_path / ANGEL_META).read_text())
    assert meta["training"] == {"steps": 1} and meta["measured"]["cpu"]["speedup"] == 1.25
    assert "junk" not in meta["measured"]["cpu"]


def test_shipped_tiny_draft_decodes_plainly_on_cpu_by_default_and_on_request_speculates(capsys):
    from angelcli.runtime import open_runtime

    meta = json.loads((TINY_DRAFT_DIR / ANGEL_META).read_text())
    assert meta["measured"]["cpu"]["speedup"] < 1  # measured by `angel draft-eval --record` (docs/eagle3.md)
    rt = open_runtime(None, device="cpu", dtype="float32", use_draft=None)
    assert rt.engine.speculator is None and "plain decoding" in capsys.readouterr().err
    rt = open_runtime(None, device="cpu", dtype="float32", use_draft=True)
    assert rt.engine.speculator is not None
