"""`angel kernels` and `angel kernels --check [--json]`: report shape, exit codes, failure detection."""

from __future__ import annotations

import json

import pytest

from angelcli.cli import main
from angelcli.ops import cases, check


def run(argv, capsys):
    with pytest.raises(SystemExit) as exc:
        main(argv)
    out = capsys.readouterr()
    return exc.value.code, out.out, out.err


def test_kernels_lists_ops(capsys):
    code, out, _ = run(["kernels"], capsys)
    assert code == 0
    assert "fused_moe" in out and "angelcli/ops/moe.py" in out and "runs on: torch" in out
    code, out, _ = run(["kernels", "--json"], capsys)
    report = json.loads(out)
    assert code == 0 and {o["op"] for o in report["ops"]} >= {"fused_moe", "attention_decode", "fp8_gemm"}


def test_check_only_names_an_unknown_kernel(capsys):
    code, _, err = run(["kernels", "--check", "--only", "nosuch"], capsys)
    assert code == 2 and "--only nosuch" in err and "moe_align" in err


def test_check_json_report(capsys):
    code, out, err = run(["kernels", "--check", "--json", "--only", "moe_align", "--only", "rms_norm"], capsys)
    assert code == 0, err
    report = json.loads(out)
    assert report["ok"] and report["gpu"] is None and report["triton"]
    rows = {r["name"]: r for r in report["kernels"]}
    assert set(rows) == {"moe_align", "rms_norm", "rms_norm_fp8"}  # --only is a name prefix
    for r in rows.values():
        assert r["interpreter_max_err"] <= r["tolerance"]
        assert r["aot_sm90"] is True and r["shared_bytes"] <= 227 * 1024 and r["fp8_wgmma"] is None
        assert r["spill_bytes"] == 0 and 0 < r["registers"] <= 255
    assert "checking moe_align" in err


def test_check_human_report_and_failure_exit_code(capsys, monkeypatch):
    monkeypatch.setitem(cases.CHECK_CASES, "rms_norm", lambda dev: (0.5, 0.1))  # a kernel off by too much
    code, out, err = run(["kernels", "--check", "--only", "rms_norm", "--only", "quantize_fp8"], capsys)
    assert code == 1
    assert "rms_norm" in out and "FAIL" in out and "max error 0.5 > tolerance 0.1" in out
    assert "quantize_fp8" in out and "rms_norm_fp8" in out and "2/3 ok" in out  # --only is a name prefix
    assert err.strip().splitlines()[-1] == "angel: error: kernels --check: 1 failed: rms_norm"


def test_check_reports_compile_and_shared_memory_failures(monkeypatch):
    def boom(rec, *a, **k):
        raise RuntimeError("ptxas exploded")

    monkeypatch.setattr(check, "aot_compile", boom)
    monkeypatch.setattr(check, "_compiled", {})
    row = check.check_case("quantize_fp8", cases.CHECK_CASES["quantize_fp8"], gpu=False)
    assert not row["ok"] and row["aot_sm90"] is False and "ptxas exploded" in row["failures"][0]

    class Huge:
        shared_bytes, mma, registers, spill_bytes = 300 * 1024, "wgmma.bf16", 40, 0

    monkeypatch.setattr(check, "aot_compile", lambda rec, *a, **k: Huge())
    monkeypatch.setattr(check, "_compiled", {})
    row = check.check_case("quantize_fp8", cases.CHECK_CASES["quantize_fp8"], gpu=False)
    assert not row["ok"] and "shared memory" in row["failures"][0]


def test_fp8_gemm_without_wgmma_at_64_rows_fails(monkeypatch):
    class NoWgmma:
        shared_bytes, mma, registers, spill_bytes = 1024, "mma.sync.f16", 100, 0

    monkeypatch.setattr(check, "aot_compile", lambda rec, *a, **k: NoWgmma())
    monkeypatch.setattr(check, "_compiled", {})
    recs = check.real_shape_launches("fp8_gemm[block]")
    row = {"failures": []}
    check._compile_all(recs, row)
    assert row["fp8_wgmma"] is False
    assert any("not wgmma e4m3" in f for f in row["failures"])


def test_register_spills_fail_the_check(monkeypatch):
    class Spills:
        shared_bytes, mma, registers, spill_bytes = 1024, "wgmma.e4m3", 255, 124

    monkeypatch.setattr(check, "aot_compile", lambda rec, *a, **k: Spills())
    monkeypatch.setattr(check, "_compiled", {})
    row = {"failures": []}
    check._compile_all(check.real_shape_launches("fp8_gemm[block]"), row)
    assert row["spill_bytes"] > 0 and row["registers"] == 255
    assert any("spills 124 B" in f for f in row["failures"])


def test_ptxas_usage_parser():
    from angelcli.ops.aot import parse_ptxas_usage

    log = ("ptxas info    : Compiling entry function '_moe_gemm_kernel' for 'sm_90a'\n"
           "ptxas info    : Function properties for _moe_gemm_kernel\n"
           "    56 bytes stack frame, 56 bytes spill stores, 72 bytes spill loads\n"
           "ptxas info    : Used 255 registers, used 1 barriers, 56 bytes cumulative stack size\n")
    assert parse_ptxas_usage(log) == {"registers": 255, "spill_bytes": 128}
    assert parse_ptxas_usage("nothing here") is None


def test_command_module_imports_no_torch():
    import subprocess
    import sys

    code = "import sys, angelcli.commands.kernels; sys.exit('torch' in sys.modules or 'triton' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0


def test_bench_and_tune_need_a_gpu(capsys, monkeypatch):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert run(["kernels", "--bench"], capsys)[0] == 4
    assert run(["tune", "--kind", "moe"], capsys)[0] == 4
    code, _, err = run(["tune", "--kind", "gemm", "--quant", "fp8_block"], capsys)
    assert code == 2 and "--n, --k" in err


def test_tune_candidates_fit_and_markdown_report():
    from angelcli.ops import bench

    fp8 = bench.candidates("fp8_block", gated=True)
    assert fp8 and all(c["BLOCK_SIZE_K"] == 128 for c in fp8)
    assert all(bench._shared_estimate(c, 2, 1, True) <= 200 * 1024 for c in fp8)
    md = bench.benchmarks_markdown({"date": "2026-11-24", "device": "NVIDIA_H20", "triton": "3.9.0", "rows": [
        bench._row("fused_moe[fp8_block] M=1", 0.5, 2e9, 1e9, True, bench.PEAKS["NVIDIA_H20"])]})
    assert "## 2026-11-24 - NVIDIA_H20" in md and "| fused_moe[fp8_block] M=1 | 0.5 | 4000.0 | 2.0 | 1.0 |" in md


def test_check_save_keeps_rows_of_a_stopped_run(capsys, tmp_path, monkeypatch):
    """--save rewrites the report after every row, so a check killed by a time limit leaves what finished."""
    saved = []
    monkeypatch.setattr(check, "save_report", lambda path, rep: saved.append((path, json.loads(json.dumps(rep)))))
    monkeypatch.setitem(cases.CHECK_CASES, "rms_norm", lambda dev: (0.5, 0.1))
    path = str(tmp_path / "report.json")
    code, out, _ = run(["kernels", "--check", "--json", "--save", path, "--only", "rms_norm"], capsys)
    assert code == 1
    rows_seen = [len(rep["kernels"]) for _, rep in saved]
    assert rows_seen == [1, 2, 2] and all(p == path for p, _ in saved)  # two rows, then the final report
    assert saved[0][1]["partial"] is True and saved[0][1]["ok"] is False and "partial" not in saved[-1][1]
    assert saved[-1][1]["kernels"] == json.loads(out)["kernels"]


def test_save_report_writes_whole_files(tmp_path):
    path = tmp_path / "r.json"
    check.save_report(str(path), {"ok": True, "kernels": []})
    check.save_report(str(path), {"ok": False, "kernels": [{"name": "x"}]})
    assert json.loads(path.read_text())["kernels"] == [{"name": "x"}]
    assert [p.name for p in tmp_path.iterdir()] == ["r.json"]  # no temp file left behind
