"""`angel pull [MODEL]`: download a model into the local store (resumable, verified)."""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer


def pull(
    model: str = typer.Argument("antangelmed", help="Alias (antangelmed, antangelmed-fp8, ling-flash-2.0, "
                                "ling-flash-eagle3) or hub id org/name; an hf.co/ or modelscope.cn/ prefix "
                                "picks the hub."),
    revision: Optional[str] = typer.Option(None, "--revision", help="Branch, tag or commit (default: main; "
                                           "ModelScope: master). Resolved to a commit and recorded."),
    include: Optional[List[str]] = typer.Option(None, "--include", help="Only files matching this glob (repeatable)."),
    exclude: Optional[List[str]] = typer.Option(None, "--exclude", help="Skip files matching this glob (repeatable)."),
    local_dir: Optional[Path] = typer.Option(None, "--local-dir", help="Put the files here instead of the store "
                                             "directory (the store still tracks them)."),
    source: str = typer.Option("auto", "--source", envvar="ANGEL_SOURCE",
                               help="hf | modelscope | auto (auto: faster endpoint; HF_ENDPOINT forces hf)."),
    max_workers: int = typer.Option(8, "--max-workers", envvar="ANGEL_MAX_WORKERS", help="Files downloaded at once."),
    dry_run: bool = typer.Option(False, "--dry-run", help="List files, sizes and the disk check; write nothing."),
    json_out: bool = typer.Option(False, "--json", help="Print the report as JSON on stdout."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress output (errors and warnings only)."),
) -> None:
    """Download a model into the local store (resumable, sha256-verified).

    The store is ~/.cache/angel (ANGEL_HOME moves it). Honours HF_ENDPOINT (mirrors), HF_TOKEN and
    HF_HUB_OFFLINE. The local path is printed last on stdout.
    """
    from angelcli import console
    from angelcli.errors import ResourceError
    from angelcli.pull import pull as run_pull
    from angelcli.pull_progress import human_bytes

    console.set_quiet(quiet)
    report = run_pull(model, revision=revision, include=include or [], exclude=exclude or [], local_dir=local_dir,
                      source=source, max_workers=max_workers, dry_run=dry_run, quiet=quiet)
    if json_out:
        console.emit_json(report)
    elif dry_run:
        for f in report["files"]:
            typer.echo(f"{f['action']:<9} {human_bytes(f['size']):>10}  {f['path']}")
        d = report["disk"]
        typer.echo(f"{report['model']}@{report['commit']} ({report['source']}): {len(report['files'])} files, "
                   f"{human_bytes(report['total_bytes'])}; to download {human_bytes(report['to_download_bytes'])}; "
                   f"free {human_bytes(d['free'])} (need {human_bytes(d['needed'] + d['margin'])} with margin): "
                   f"{'ok' if d['ok'] else 'NOT ENOUGH'}")
        typer.echo(report["path"])
    else:
        typer.echo(report["path"])
    if dry_run and not report["disk"]["ok"]:
        d = report["disk"]
        raise ResourceError(f"not enough free disk in {report['path']}: {human_bytes(d['needed'])} to download + "
                            f"{human_bytes(d['margin'])} margin, {human_bytes(d['free'])} free")
