"""`angel verify` on the command line: JSON keys, text table, exit status 0 / 1 / 3, --plot."""

import io
import json
import os
import struct
import subprocess
import sys
from pathlib import Path

from angelcli.fixtures import write_checkpoint
from angelcli.verify import VerifyOptions, verify
from angelcli.verify.plot import png_bytes
from angelcli.verify.report import render_text
from tests import verify_fixtures as vf

ROOT = Path(__file__).resolve().parent.parent


def angel(*args):
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    return subprocess.run([sys.executable, "-m", "angelcli", "verify", *args], capture_output=True, text=True,
                          env=env, timeout=300)


def test_static_alias_json():
    r = angel("antangelmed", "--static", "--json")
    assert r.returncode == 0, r.stderr
    rep = json.loads(r.stdout)
    assert {"total_params", "active_params", "activation_ratio", "checks", "routing"} <= set(rep)
    assert rep["total_params"] == 102_889_705_216 and rep["active_params"] == 6_152_269_824
    assert rep["activation_ratio"] == 0.03125 and rep["routing"] is None


def test_random_json_and_plot(tiny_ckpt, tmp_path):
    png = tmp_path / "load.png"
    r = angel(str(tiny_ckpt), "--prompts", "random", "--max-tokens", "32", "--json", "--plot", str(png))
    assert r.returncode == 0, r.stderr
    rep = json.loads(r.stdout)
    assert rep["passed"] and all(c["status"] in ("pass", "skip") for c in rep["checks"])
    for layer in rep["routing"]["layers"]:
        assert {"layer", "tokens", "top_k", "expert_load"} <= set(layer)
        assert sum(layer["expert_load"]) == layer["tokens"] * layer["top_k"] == 8 * 32 * 2
    data = png.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    width, height = struct.unpack(">II", data[16:24])
    assert width % 8 == 0 and height % len(rep["routing"]["layers"]) == 0  # 8 experts x 2 MoE layers of cells


def test_collapsed_router_exits_1_with_one_line(tmp_path):
    cfg, sd = vf.base()
    ck = write_checkpoint(tmp_path / "collapsed", cfg, vf.collapse_router(cfg, sd))
    r = angel(str(ck), "--prompts", "random", "--max-tokens", "32")
    assert r.returncode == 1, r.stderr
    err = [line for line in r.stderr.splitlines() if line.startswith("angel:")]
    assert len(err) == 1 and "routing.dead_experts" in err[0] and "routing.balance" in err[0]
    assert "Traceback" not in r.stderr
    assert "routing.dead_experts" in r.stdout and "FAIL" in r.stdout  # the table is the report


def test_missing_expert_exits_3(tmp_path):
    cfg, sd = vf.base()
    sd.pop("model.layers.1.mlp.experts.7.down_proj.weight")
    ck = write_checkpoint(tmp_path / "missing", cfg, sd)
    r = angel(str(ck), "--prompts", "random")
    assert r.returncode == 3, r.stderr
    assert "model.layers.1.mlp.experts.7.down_proj.weight" in r.stderr
    assert "routing" in r.stdout and "SKIP" in r.stdout  # integrity failed: routing not run


def test_text_report_lists_every_check(tiny_ckpt):
    report, _ = verify(str(tiny_ckpt), VerifyOptions(prompts="random", max_tokens=32))
    buf = io.StringIO()
    render_text(report, buf)
    out = buf.getvalue()
    for c in report["checks"]:
        assert c["name"] in out
    assert "6,152,269,824" not in out and f"{report['total_params']:,}" in out
    assert out.rstrip().splitlines()[-1].startswith("OK:")


def test_png_writer_size():
    data = png_bytes([[0.0, 1.0, 2.0], [0.5, 0.5, 3.0]], cell_w=4, cell_h=3)
    assert struct.unpack(">II", data[16:24]) == (12, 6)
