"""`angel kernels`: list the engine's kernels; `--check` verifies them (interpreter, sm_90 AOT, configs)."""

from __future__ import annotations

import os
import sys

import typer


def kernels(
    check: bool = typer.Option(False, "--check", help="Run every kernel in the Triton interpreter against its "
                               "torch twin, compile it for sm_90 (no GPU needed), check shared memory, FP8 wgmma "
                               "use and every shipped launch config; on a CUDA machine also run the compiled "
                               "kernels. Exit 1 if anything fails."),
    json_out: bool = typer.Option(False, "--json", help="Print the report as one JSON document on stdout."),
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
    if not check:
        from angelcli.ops.check import kernel_listing

        report = kernel_listing()
        if json_out:
            emit_json(report)
        else:
            for line in report["lines"]:
                typer.echo(line)
        return
    from angelcli.ops.check import check_kernels, format_report

    report = check_kernels(configs=configs, only=only or None, progress=lambda name: log(f"checking {name}"))
    if json_out:
        emit_json(report)
    else:
        for line in format_report(report):
            typer.echo(line)
    if not report["ok"]:
        bad = [r["name"] for r in report["kernels"] if not r["ok"]]
        raise CheckFailed(f"kernels --check: {len(bad)} failed: {', '.join(bad[:5])}{' ...' if len(bad) > 5 else ''}")
