"""`angel eval` end to end: load the task, run one model (or two on the same items), summarise.

    summary = evaluate(["angel-tiny"], "medqa", "data/medqa", EvalOptions(), limit=100)
    summary = evaluate(["antangelmed", "antangelmed-fp8"], ...)      # --compare: adds summary["compare"]

The summary is the JSON `angel eval --json` prints: task, mode, few-shot, seed, data files, and per model
accuracy with its 95 % Wilson interval, acc_norm (log-likelihood mode), per-subject accuracy, timing; with
two models the paired difference (B - A) with a bootstrap 95 % interval, McNemar's test and the flipped
items. Models run one after the other, the first released before the second loads.
"""

from __future__ import annotations

import gc

from angelcli.eval import stats
from angelcli.eval.runner import EvalOptions, run_items, select_items
from angelcli.eval.tasks import load_task


def _model_summary(spec: str | None, path: str, results: list[dict], seconds: float, mode: str) -> dict:
    n = len(results)
    k = sum(r["correct"] for r in results)
    lo, hi = stats.wilson(k, n)
    out = {"model": spec or "angel-tiny", "path": path, "questions": n, "correct": k,
           "accuracy": k / n if n else 0.0, "ci95": [lo, hi]}
    if mode == "loglikelihood":
        out["acc_norm"] = sum(r["correct_norm"] for r in results) / n if n else 0.0
    else:
        out["unanswered"] = sum(r["pred"] is None for r in results)
    subjects: dict[str, list[bool]] = {}
    for r in results:
        if r.get("subject"):
            subjects.setdefault(r["subject"], []).append(r["correct"])
    if len(subjects) > 1:
        out["per_subject"] = {s: {"questions": len(v), "accuracy": sum(v) / len(v)}
                              for s, v in sorted(subjects.items())}
    out["seconds"] = round(seconds, 3)
    out["questions_per_s"] = round(n / seconds, 3) if seconds > 0 else None
    return out


def compare_results(a: list[dict], b: list[dict], seed: int) -> dict:
    """Paired comparison of two models' per-item results (same items, same order)."""
    ca, cb = [r["correct"] for r in a], [r["correct"] for r in b]
    boot = stats.paired_bootstrap(ca, cb, seed=seed)
    flips = [{"id": x["id"], "subject": x.get("subject", ""), "gold": x["gold"], "pred_a": x["pred"],
              "pred_b": y["pred"], "change": "fixed" if y["correct"] else "broken"}
             for x, y in zip(a, b) if x["correct"] != y["correct"]]
    return {"difference": boot["difference"], "difference_points": 100 * boot["difference"],
            "ci95": boot["ci95"], "bootstrap_rounds": boot["rounds"], "mcnemar": stats.mcnemar(ca, cb),
            "flips": flips, "changed_answers": sum(x["pred"] != y["pred"] for x, y in zip(a, b))}


def evaluate(models: list[str | None], task: str, data, opts: EvalOptions, *, limit: int | None = None,
             subjects: list[str] | None = None, device: str = "auto", dtype: str = "auto", backend: str = "auto",
             max_seq_len: int | None = None, tp: int = 1, sample_seed: int | None = None, keep_items: bool = False) -> dict:
    from angelcli.console import log
    from angelcli.runtime import open_runtime

    td = load_task(task, data, opts.fewshot, subjects)
    items, skipped = select_items(td, opts.mode, limit, sample_seed)
    if not items:
        from angelcli.errors import UsageError

        raise UsageError(f"--task {task}: no questions to score in {opts.mode} mode "
                         f"({skipped} multiple-answer questions need --generate)")
    log(f"{task}: {len(items)} questions from {', '.join(td.files)}"
        + (f" ({skipped} multiple-answer left out; --generate scores them)" if skipped else ""))
    summary = {"task": task, "mode": opts.mode, "fewshot": opts.fewshot, "seed": opts.seed, "limit": limit,
               "data_files": td.files, "questions": len(items), "skipped_multi_answer": skipped, "models": []}
    per_model = []
    for n, spec in enumerate(models):
        rt = open_runtime(spec, device=device, dtype=dtype, backend=backend, max_seq_len=max_seq_len, tp=tp)
        try:
            label = f"{task} [{spec or 'angel-tiny'}]" if len(models) > 1 else task
            results, secs = run_items(rt, td, items, opts, label=label)
            summary["models"].append(_model_summary(spec, str(rt.model_dir), results, secs, opts.mode))
            per_model.append(results)
        finally:
            rt.close()
            del rt
            gc.collect()
    if len(per_model) == 2:
        summary["compare"] = compare_results(per_model[0], per_model[1], opts.seed)
    if keep_items:
        summary["items"] = per_model
    return summary
