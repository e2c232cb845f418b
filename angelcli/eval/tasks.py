"""The benchmark tasks `angel eval --task` knows, and loading one from a local file or directory."""

from __future__ import annotations

from pathlib import Path

from angelcli.errors import UsageError
from angelcli.eval.items import TaskData

# task -> (module, loader, takes --subjects, what PATH is)
TASKS: dict[str, tuple[str, str, bool, str]] = {
    "medqa": ("tasks_en", "load_medqa", False, "phrases_no_exclude_test.jsonl or its directory"),
    "medmcqa": ("tasks_en", "load_medmcqa", False, "dev.json or its directory"),
    "pubmedqa": ("tasks_en", "load_pubmedqa", False, "ori_pqal.json (+ test_ground_truth.json) or its directory"),
    "mmlu-medical": ("tasks_en", "load_mmlu_medical", True, "MMLU's data/ directory (test/, dev/)"),
    "cmb": ("tasks_zh", "load_cmb", False, "CMB-Exam directory (CMB-val/, CMB-test/) or CMB-val-merge.json"),
    "cmexam": ("tasks_zh", "load_cmexam", False, "CMExam's test.csv or its directory"),
    "cmmlu-medical": ("tasks_zh", "load_cmmlu_medical", True, "CMMLU or C-Eval data directory"),
}


def load_task(task: str, data: str | Path | None, fewshot: int = 0, subjects: list[str] | None = None) -> TaskData:
    """UsageError (exit 2) for an unknown task, a missing file or a malformed record."""
    import importlib

    if task not in TASKS:
        raise UsageError(f"--task must be one of {', '.join(TASKS)}, not {task!r}")
    if data is None:
        raise UsageError(f"--task {task} needs --data PATH ({TASKS[task][3]}; see docs/eval.md)")
    if fewshot < 0:
        raise UsageError("--fewshot must be >= 0")
    mod, fn, takes_subjects, _ = TASKS[task]
    loader = getattr(importlib.import_module(f"angelcli.eval.{mod}"), fn)
    if subjects and not takes_subjects:
        raise UsageError(f"--subjects applies to mmlu-medical and cmmlu-medical, not {task}")
    td = loader(Path(data).expanduser(), fewshot, subjects) if takes_subjects else loader(Path(data).expanduser(),
                                                                                        fewshot)
    if not td.items:
        raise UsageError(f"--data {data}: no {task} questions found in {', '.join(td.files) or data}")
    return td
