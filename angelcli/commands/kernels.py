"""`angel kernels`: list the engine's kernels; `--check` verifies them (interpreter, sm_90 AOT, configs);
`--bench` times them on a GPU."""

from __future__ import annotations

import os
import sys

import typer


def kernels(
    check: bool = typer.Option(False, "--check", help="Run every kernel in the Triton interpreter against its "
                               "torch twin, compile it for sm_90 (no GPU needed), check shared memory, FP8 wgmma "
                               "use and every shipped launch config; on a CUDA machine also run the compiled "
                               "kernels. Exit 1 if anything fails."),
    bench: bool = typer.Option(False, "--bench", help="Time the kernels at AntAngelMed shapes on this GPU and report "
                               "achieved bandwidth / TFLOPS as a fraction of the device's peak (needs CUDA)."),
    write: str = typer.Option(None, "--write", metavar="FILE", help="With --bench: append a dated markdown table "
                              "to FILE (e.g. docs/benchmarks.md)."),
    json_out: bool = typer.Option(False, "--json", help="Print the report as one JSON document on stdout."),
    save: str = typer.Option(None, "--save", metavar="FILE", help="With --check: also write the JSON report to "
                             "FILE after every row (temp name, then rename), so a run stopped by a time limit "
                             "leaves the rows done so far (marked \"partial\": true)."),
    configs: bool = typer.Option(True, "--configs/--no-configs", help="Also check every shipped launch config."),
    only: list[str] = typer.Option(None, "--only", help="Check only kernels whose name starts with this "
                                   "(repeatable); skips the config rows."),
    quiet: bool = typer.Option(False, "--quiet", "-q", envvar="ANGEL_QUIET", help="No progress lines on stderr."),
) -> None:
    """List angel's GPU kernels, or verify them with --check."""
    if "triton" not in sys.modules:
        os.environ.pop("TRITON_INTERPRET", None)  # the check drives the interpreter itself; AOT needs it unset
    from angelcli.console import emit_json, log, set_quiet
    from angelcli.errors import CheckFailed

    set_quiet(quiet)
    if bench:
        _bench(write, json_out)
        return
    if not check:
        from angelcli.ops.check import kernel_listing

        report = kernel_listing()
        if json_out:
            emit_json(report)
        else:
            for line in report["lines"]:
                typer.echo(line)
        return
    from angelcli.ops.check import check_kernels, format_report, save_report

    if only:
        from angelcli.errors import UsageError
        from angelcli.ops import cases

        names = list(cases.CHECK_CASES)
        for o in only:
            if not any(n.startswith(o) for n in names):
                raise UsageError(f"--only {o}: no kernel check starts with it (known: {', '.join(names)})")
    on_rows = (lambda rep: save_report(save, rep)) if save else None
    report = check_kernels(configs=configs, only=only or None, progress=lambda name: log(f"checking {name}"),
                           on_rows=on_rows)
    if save:
        save_report(save, report)
    if json_out:
        emit_json(report)
    else:
        for line in format_report(report):
            typer.echo(line)
    if not report["ok"]:
        bad = [r["name"] for r in report["kernels"] if not r["ok"]]
        raise CheckFailed(f"kernels --check: {len(bad)} failed: {', '.join(bad[:5])}{' ...' if len(bad) > 5 else ''}")


def _bench(write: str | None, json_out: bool) -> None:
    import torch

    from angelcli.console import emit_json
    from angelcli.errors import ResourceError
    from angelcli.ops.bench import bench_kernels, benchmarks_markdown

    if not torch.cuda.is_available():
        raise ResourceError("kernels --bench: needs a CUDA GPU (none visible to torch)")
    report = bench_kernels()
    text = benchmarks_markdown(report)
    if write:
        from pathlib import Path

        path = Path(write)
        path.write_text((path.read_text() + "\n" if path.exists() else "# Kernel benchmarks\n\n") + text)
    if json_out:
        emit_json(report)
    else:
        typer.echo(text, nl=False)
