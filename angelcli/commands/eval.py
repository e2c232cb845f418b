"""`angel eval`: medical benchmarks (MedQA, MedMCQA, PubMedQA, MMLU / CMMLU / C-Eval medical, CMB, CMExam)
from local files on angel's engine; `--compare` for a paired test of two models on the same questions."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer


def eval_cmd(
    model: Optional[str] = typer.Argument(None, envvar="ANGEL_MODEL",
                                          help="Path, store name or alias (default: angel-tiny)."),
    task: str = typer.Option(..., "--task", "-T", help="medqa | medmcqa | pubmedqa | mmlu-medical | cmb | cmexam | "
                                                       "cmmlu-medical."),
    data: Path = typer.Option(..., "--data", envvar="ANGEL_EVAL_DATA",
                              help="The data set's released file or directory (docs/eval.md)."),
    compare: Optional[str] = typer.Option(None, "--compare", help="Second model: both run the same questions; "
                                                                  "paired difference, McNemar, flipped items."),
    fewshot: int = typer.Option(0, "--fewshot", "-k", help="Examples from the train/dev split before each question."),
    generate: bool = typer.Option(False, "--generate", help="Ask through the chat template and read the answer "
                                                            "letter from the reply (default: option log-likelihood)."),
    limit: Optional[int] = typer.Option(None, "--limit", help="Only N questions (the first N; a seeded sample "
                                                              "with --sample)."),
    sample: bool = typer.Option(False, "--sample", help="With --limit: a random sample seeded by --seed."),
    seed: int = typer.Option(1234, "--seed", help="Few-shot sampling, --sample and the bootstrap."),
    subjects: Optional[str] = typer.Option(None, "--subjects", help="mmlu-medical / cmmlu-medical: comma-separated "
                                                                    "subset of subjects."),
    batch_size: int = typer.Option(16, "--batch-size", help="Questions per engine call."),
    max_new_tokens: int = typer.Option(32, "--max-new-tokens", help="--generate: reply length."),
    report: Optional[Path] = typer.Option(None, "--report", help="Write a markdown report to this file."),
    dtype: str = typer.Option("auto", "--dtype", envvar="ANGEL_DTYPE", help="auto|float32|bfloat16|float16."),
    device: str = typer.Option("auto", "--device", envvar="ANGEL_DEVICE", help="auto|cpu|cuda|cuda:N."),
    backend: str = typer.Option("auto", "--backend", envvar="ANGEL_BACKEND", help="auto|torch|triton."),
    max_seq_len: Optional[int] = typer.Option(None, "--max-seq-len", help="Context length (longer prompts are cut "
                                                                          "from the left)."),
    tp: int = typer.Option(1, "--tp", envvar="ANGEL_TP", help="Tensor-parallel GPUs (processes launched by angel)."),
    items_out: bool = typer.Option(False, "--items", help="With --json: include every question's result."),
    json_out: bool = typer.Option(False, "--json", help="Print the summary as JSON on stdout."),
) -> None:
    """Score a model on a medical benchmark from local files.

    Examples:
      angel eval --task medqa --data MedQA/data_clean/questions/US/4_options --json
      angel eval antangelmed --task mmlu-medical --data mmlu/data --fewshot 5 --report mmlu.md
      angel eval antangelmed --task cmb --data CMB/data/CMB-Exam --generate
      angel eval antangelmed --task medqa --data DIR --compare antangelmed-fp8
    """
    from angelcli.console import emit_json, log
    from angelcli.errors import UsageError
    from angelcli.eval.evaluate import evaluate
    from angelcli.eval.report import markdown, summary_lines
    from angelcli.eval.runner import EvalOptions
    from angelcli.fsutil import atomic_write_text

    if limit is not None and limit < 1:
        raise UsageError("--limit must be >= 1")
    if batch_size < 1:
        raise UsageError("--batch-size must be >= 1")
    if max_new_tokens < 1:
        raise UsageError("--max-new-tokens must be >= 1")
    opts = EvalOptions(mode="generate" if generate else "loglikelihood", fewshot=fewshot, seed=seed,
                       batch_size=batch_size, max_new_tokens=max_new_tokens)
    models = [model] + ([compare] if compare else [])
    summary = evaluate(models, task, data, opts, limit=limit,
                       subjects=[s.strip() for s in subjects.split(",") if s.strip()] if subjects else None,
                       device=device, dtype=dtype, backend=backend, max_seq_len=max_seq_len, tp=tp,
                       sample_seed=seed if sample else None, keep_items=items_out)
    if report is not None:
        atomic_write_text(report, markdown(summary))
        log(f"report written to {report}")
    for line in summary_lines(summary):
        log(line)
    if json_out:
        emit_json(summary)
