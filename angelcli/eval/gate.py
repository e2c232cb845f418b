"""The benchmark quality gate of `angel quantize ... --eval TASK --eval-data PATH [--max-drop 1.0]`.

For every model `quantize` produced (or found up to date), the source and the FP8 output run the same
benchmark questions (zero-shot log-likelihood, angel eval's paired comparison). The result joins the
quality report (`quant_report.json` key "benchmark", and the command's JSON result); when the FP8 accuracy
is more than `max_drop` points below the source's, the gate fails and quantize exits 1 (a check failed).
The checkpoint itself is kept: it is valid, it just did not pass the bar the user set.
"""

from __future__ import annotations

import json
from pathlib import Path

from angelcli.errors import UsageError

GATED_STATUSES = ("done", "up-to-date")


def check_gate_args(task: str, data: str | None, max_drop: float) -> None:
    from angelcli.eval.tasks import TASKS

    if task not in TASKS:
        raise UsageError(f"--eval must be ppl or one of {', '.join(TASKS)}, not {task!r}")
    if data is None:
        raise UsageError(f"--eval {task} needs --eval-data PATH (the benchmark's files; see docs/eval.md)")
    if max_drop < 0:
        raise UsageError("--max-drop must be >= 0 (accuracy points)")


def run_gate(results: list[dict], task: str, data: str, max_drop: float, limit: int | None = None) -> int:
    """Run the benchmark on each finished output, attach it to the result and its quant_report.json.
    Returns 1 when any output dropped more than max_drop points, else 0."""
    from angelcli.console import log
    from angelcli.eval.evaluate import evaluate
    from angelcli.eval.runner import EvalOptions
    from angelcli.fsutil import atomic_write_json

    code = 0
    for r in results:
        if r.get("status") not in GATED_STATUSES:
            continue
        log(f"benchmark gate: {task} on {r['source']} vs {r['output']}")
        s = evaluate([r["source"], r["output"]], task, data, EvalOptions(), limit=limit)
        src, q = s["models"]
        c = s["compare"]
        drop = 100 * (src["accuracy"] - q["accuracy"])
        bench = {"task": task, "data_files": s["data_files"], "questions": s["questions"],
                 "accuracy_source": src["accuracy"], "accuracy_fp8": q["accuracy"],
                 "ci95_source": src["ci95"], "ci95_fp8": q["ci95"], "drop_points": drop,
                 "difference_ci95": c["ci95"], "mcnemar": c["mcnemar"], "flips": c["flips"],
                 "max_drop": max_drop, "passed": drop <= max_drop}
        r.setdefault("report", {})
        if r["report"] is None:
            r["report"] = {}
        r["report"]["benchmark"] = bench
        path = Path(r["output"]) / "quant_report.json"
        try:
            rep = json.loads(path.read_text(encoding="utf-8")) if path.exists() else {}
        except (OSError, json.JSONDecodeError):
            rep = {}
        rep["benchmark"] = bench
        atomic_write_json(path, rep)
        log(f"benchmark gate: {task} {100 * src['accuracy']:.2f} % -> {100 * q['accuracy']:.2f} % "
            f"(drop {drop:+.2f} points, limit {max_drop:g}; McNemar p = {c['mcnemar']['p_value']:.3g}, "
            f"{len(c['flips'])} flipped): {'passed' if bench['passed'] else 'FAILED'}")
        if not bench["passed"]:
            r["gate"] = "failed"
            code = 1
    return code
