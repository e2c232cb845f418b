"""`angel eval` end to end on angel-tiny: JSON summary, markdown report, --generate, --compare against the
block-FP8 quantization, and the quantize quality gate."""

import json

import pytest

from angelcli.cli import main
from tests import eval_samples as S


def _run(capsys, *args) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as e:
        main(list(args))
    out = capsys.readouterr()
    return e.value.code, out.out, out.err


def _many_medqa(root, n=24):
    """n MedQA-format questions: the sample's six with their options rotated (answers move with them)."""
    items = []
    for k in range(n):
        q, o, a = S.EN[k % len(S.EN)]
        s = k // len(S.EN) % 4
        items.append((f"{q} (variant {k})", o[s:] + o[:s], (a - s) % 4))
    return S.write_medqa(root, items)


def test_eval_medqa_json_and_report(tmp_path, capsys):
    root = S.write_medqa(tmp_path / "medqa")
    code, out, err = _run(capsys, "eval", "--task", "medqa", "--data", str(root), "--fewshot", "2", "--json",
                          "--items", "--report", str(tmp_path / "r.md"))
    assert code == 0, err
    s = json.loads(out)
    m = s["models"][0]
    assert s["questions"] == m["questions"] == 6 and s["fewshot"] == 2
    items = s["items"][0]
    assert len(items) == 6 and m["correct"] == sum(r["correct"] for r in items)
    assert m["accuracy"] == pytest.approx(m["correct"] / 6)
    assert m["ci95"][0] <= m["accuracy"] <= m["ci95"][1]
    for r, (q, o, a) in zip(items, S.EN):
        lls = r["loglikelihoods"]
        assert len(lls) == 4 and r["pred"] == "ABCD"[lls.index(max(lls))] and r["correct"] == (r["pred"] == "ABCD"[a])
    md = (tmp_path / "r.md").read_text()
    assert "| angel-tiny |" in md and "few-shot: 2" in md
    assert "angel-tiny: medqa accuracy" in err and "questions" in err


def test_eval_generate_scores_multi_answer_questions(tmp_path, capsys):
    root = S.write_cmb(tmp_path / "cmb")
    code, out, err = _run(capsys, "eval", "--task", "cmb", "--data", str(root), "--generate", "--max-new-tokens", "4",
                          "--json", "--items")
    assert code == 0, err
    s = json.loads(out)
    assert s["mode"] == "generate" and s["questions"] == 5 and s["skipped_multi_answer"] == 0
    items = s["items"][0]
    assert items[-1]["gold"] == "ABD" and all("reply" in r for r in items)
    assert s["models"][0]["unanswered"] == sum(r["pred"] is None for r in items)
    # the log-likelihood mode leaves the multiple-answer question out and says so
    code, out, _ = _run(capsys, "eval", "--task", "cmb", "--data", str(root), "--json")
    assert json.loads(out)["skipped_multi_answer"] == 1 and json.loads(out)["questions"] == 4


def test_limit_and_seeded_sample(tmp_path, capsys):
    root = _many_medqa(tmp_path / "mq", 12)
    code, out, _ = _run(capsys, "eval", "--task", "medqa", "--data", str(root), "--limit", "3", "--json", "--items")
    assert [r["id"] for r in json.loads(out)["items"][0]] == [f"phrases_no_exclude_test.jsonl:{i}" for i in (1, 2, 3)]
    runs = []
    for _ in range(2):
        code, out, _ = _run(capsys, "eval", "--task", "medqa", "--data", str(root), "--limit", "3", "--sample",
                            "--seed", "5", "--json", "--items")
        runs.append([r["id"] for r in json.loads(out)["items"][0]])
    assert runs[0] == runs[1] and len(set(runs[0])) == 3


@pytest.mark.slow
def test_compare_against_block_fp8(tmp_path, capsys):
    code, _, err = _run(capsys, "quantize", "--fp8", "--out", str(tmp_path / "fp8"), "--no-report")
    assert code == 0, err
    root = _many_medqa(tmp_path / "mq")
    code, out, err = _run(capsys, "eval", "--task", "medqa", "--data", str(root), "--compare", str(tmp_path / "fp8"),
                          "--json", "--items", "--report", str(tmp_path / "c.md"))
    assert code == 0, err
    s = json.loads(out)
    a, b = s["models"]
    c = s["compare"]
    assert a["questions"] == b["questions"] == 24
    assert c["difference"] == pytest.approx(b["accuracy"] - a["accuracy"])
    assert c["ci95"][0] <= c["difference"] <= c["ci95"][1]
    ia, ib = s["items"]
    flipped = [x["id"] for x, y in zip(ia, ib) if x["correct"] != y["correct"]]
    assert [f["id"] for f in c["flips"]] == flipped
    assert c["mcnemar"]["only_a_correct"] + c["mcnemar"]["only_b_correct"] == len(flipped)
    # FP8 moves the option log-likelihoods a little, never wildly (block FP8 of angel-tiny: ~1e-2 nats)
    drift = max(abs(p - q) for x, y in zip(ia, ib) for p, q in zip(x["loglikelihoods"], y["loglikelihoods"]))
    assert 0 < drift < 0.5
    assert "Paired comparison" in (tmp_path / "c.md").read_text() and "McNemar" in err


def test_quantize_gate_fails_on_a_large_drop(tmp_path, monkeypatch):
    from angelcli.eval import evaluate as ev
    from angelcli.eval.gate import run_gate

    def fake(models, task, data, opts, **kw):
        return {"data_files": ["x"], "questions": 100,
                "models": [{"accuracy": 0.60, "ci95": [0.5, 0.7]}, {"accuracy": 0.58, "ci95": [0.48, 0.68]}],
                "compare": {"ci95": [-0.04, 0.0], "mcnemar": {"p_value": 0.04}, "flips": [{"id": "1"}]}}

    monkeypatch.setattr(ev, "evaluate", fake)
    out = tmp_path / "out"
    out.mkdir()
    (out / "quant_report.json").write_text(json.dumps({"weights": {"rel_err_mean": 0.02}}))
    results = [{"status": "done", "source": "src", "output": str(out), "report": {"weights": {}}}]
    assert run_gate(results, "medqa", "d", max_drop=1.0) == 1
    rep = json.loads((out / "quant_report.json").read_text())
    assert rep["weights"] == {"rel_err_mean": 0.02} and rep["benchmark"]["drop_points"] == pytest.approx(2.0)
    assert results[0]["gate"] == "failed" and rep["benchmark"]["passed"] is False
    assert run_gate(results, "medqa", "d", max_drop=2.5) == 0
    assert run_gate([{"status": "dry-run"}], "medqa", "d", 1.0) == 0


def test_quantize_eval_task_needs_its_data(capsys):
    code, _, err = _run(capsys, "quantize", "--fp8", "--eval", "medqa")
    assert code == 2 and "--eval-data" in err
    code, _, err = _run(capsys, "quantize", "--fp8", "--eval", "usmle", "--eval-data", "x")
    assert code == 2 and "--eval must be ppl or one of" in err


def test_eval_help_does_not_import_torch():
    import subprocess
    import sys

    code = "import sys; from angelcli.cli import app; import angelcli.commands.eval; print('torch' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True).stdout.strip() == "False"


def test_compare_results_lists_flips_and_counts():
    from angelcli.eval.evaluate import compare_results

    gold = list("ABCDABCDAB")
    pa = list("ABCDAAAAAB")  # 7 right
    pb = list("ABCCABCDBB")  # 8 right: fixes 6,7,8 (0-based 5,6,7), breaks 3 and 8
    a = [{"id": str(i), "gold": g, "pred": p, "correct": g == p} for i, (g, p) in enumerate(zip(gold, pa))]
    b = [{"id": str(i), "gold": g, "pred": p, "correct": g == p} for i, (g, p) in enumerate(zip(gold, pb))]
    c = compare_results(a, b, seed=0)
    assert c["difference_points"] == pytest.approx(10.0)
    assert [(f["id"], f["change"]) for f in c["flips"]] == [("3", "broken"), ("5", "fixed"), ("6", "fixed"),
                                                            ("7", "fixed"), ("8", "broken")]
    assert (c["mcnemar"]["only_a_correct"], c["mcnemar"]["only_b_correct"]) == (2, 3)
    assert c["mcnemar"]["p_value"] == pytest.approx(1.0)  # 2 vs 3 of 5: exact two-sided p = 1
    assert c["changed_answers"] == 5 and c["ci95"][0] <= 0.1 <= c["ci95"][1]


def test_plain_progress_lines_show_an_eta(capsys, monkeypatch):
    from angelcli import console

    clock = iter([0.0, 10.0, 10.0, 10.0, 40.0, 40.0, 40.0])
    monkeypatch.setattr(console.time, "monotonic", lambda: next(clock))
    bar = console._PlainProgress("eval", total=4, unit="questions", interval=0.0)
    bar.advance(1)  # 1 question in 10 s: 3 left, 30 s
    bar.advance(3)  # done: no ETA on the last line
    lines = capsys.readouterr().err.splitlines()
    assert lines[0].endswith("ETA 0:00:30") and "ETA" not in lines[1] and "4/4 questions" in lines[1]
