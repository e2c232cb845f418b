"""`angel verify`: routing sparsity and checkpoint integrity, with test-runner exit codes."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer


def verify(
    model: Optional[str] = typer.Argument(None, envvar="ANGEL_MODEL",
                                          help="Path, store name or alias (default: angel-tiny)."),
    static: bool = typer.Option(False, "--static", help="Config accounting, header inventory and file checksums; "
                                "no forward pass (works for an alias before download)."),
    deep: bool = typer.Option(False, "--deep", help="Read every tensor and report NaN/inf values by tensor name."),
    no_checksums: bool = typer.Option(False, "--no-checksums", help="Skip hashing files against recorded checksums "
                                      "(store manifest or checksums.sha256)."),
    checksums_only: bool = typer.Option(False, "--checksums-only", help="Only hash the files against their "
                                        "recorded checksums."),
    write_checksums: bool = typer.Option(False, "--write-checksums", help="Record checksums.sha256 for a local "
                                         "directory (then verify checks it)."),
    workers: int = typer.Option(0, "--workers", "-j", envvar="ANGEL_WORKERS", min=0,
                                help="Files hashed in parallel (0 = one per core, at most 8)."),
    prompts: str = typer.Option("medical", "--prompts", envvar="ANGEL_VERIFY_PROMPTS",
                                help="medical (built-in set), random (no tokenizer needed) or a .jsonl/.txt data file."),
    max_tokens: int = typer.Option(128, "--max-tokens", min=1, help="Tokens per prompt (random: length of each sequence)."),
    num_random: int = typer.Option(8, "--num-random", min=1, help="Number of sequences for --prompts random."),
    seed: int = typer.Option(0, "--seed", help="Seed of --prompts random."),
    against: Optional[str] = typer.Option(None, "--against", help="Compare routing and logits with another "
                                          "checkpoint of the same architecture (e.g. its FP8 export)."),
    plot: Optional[Path] = typer.Option(None, "--plot", help="Write a layers x experts load heatmap (PNG)."),
    json_out: bool = typer.Option(False, "--json", help="Print the report as JSON on stdout."),
    device: str = typer.Option("auto", "--device", envvar="ANGEL_DEVICE", help="auto|cpu|cuda|cuda:N."),
    dtype: str = typer.Option("auto", "--dtype", envvar="ANGEL_DTYPE", help="auto|float32|bfloat16|float16."),
    max_dead: float = typer.Option(0.10, "--max-dead", min=0.0, max=1.0, help="Fail a layer when more than this share of experts "
                                   "is never chosen."),
    min_entropy: float = typer.Option(0.60, "--min-entropy", min=0.0, max=1.0, help="Fail a layer whose load entropy / log(E) is lower."),
    min_jaccard: float = typer.Option(0.80, "--min-jaccard", min=0.0, max=1.0, help="--against: fail a layer whose mean Jaccard of "
                                      "expert sets is lower."),
    max_kl: float = typer.Option(0.05, "--max-kl", min=0.0, help="--against: fail when the mean KL of the final logits is higher."),
) -> None:
    """Check sparsity and integrity: parameter accounting, tensor inventory, routing statistics.

    Exit status like a test runner: 0 all checks pass, 1 a routing check fails, 3 an integrity check fails
    (checksum mismatch, missing or malformed tensor, NaN/inf weights).

    Examples:
      angel verify antangelmed --static
      angel verify antangelmed --checksums-only
      angel verify ./AntAngelMed --static --deep
      angel verify ./my-export --write-checksums
      angel verify ./AntAngelMed --prompts medical --json > verify.json
      angel verify ./AntAngelMed --against ./AntAngelMed-FP8 --plot load.png
      angel verify ./checkpoint-without-tokenizer --prompts random --max-tokens 256
    """
    from angelcli.console import emit_json, log
    from angelcli.errors import CheckFailed, IntegrityError
    from angelcli.verify import Thresholds, VerifyOptions
    from angelcli.verify import verify as run_verify
    from angelcli.verify.checks import failure_summary
    from angelcli.verify.report import render_text
    from angelcli.verify.run import write_plot

    opts = VerifyOptions(static_only=static, prompts=prompts, max_tokens=max_tokens, num_random=num_random,
                         seed=seed, against=against, device=device, dtype=dtype, checksums=not no_checksums,
                         checksums_only=checksums_only, write_checksums=write_checksums, deep=deep,
                         workers=workers,
                         thresholds=Thresholds(max_dead_share=max_dead, min_entropy=min_entropy,
                                               min_jaccard=min_jaccard, max_kl=max_kl))
    if plot is not None:
        from angelcli.verify.run import check_plot_path

        check_plot_path(plot)
    report, checks = run_verify(model, opts)
    if json_out:
        emit_json(report)
    else:
        render_text(report)
    skipped = [c for c in checks if c.name == "checksums" and c.status == "skip"]
    if skipped and not report["exit_code"]:  # a failing run has its one error line; a passing one says what it lacked
        from angelcli.console import warn

        warn(skipped[0].detail)
    if plot is not None:
        write_plot(report, plot)
        log(f"load heatmap written to {plot}")
    if report["exit_code"] == IntegrityError.exit_code:
        raise IntegrityError(failure_summary(checks))
    if report["exit_code"]:
        raise CheckFailed(failure_summary(checks))
