"""`angel rm MODEL...`: delete models from the local store."""

from __future__ import annotations

import sys
from typing import List

import typer


def rm(
    models: List[str] = typer.Argument(..., help="Store names or aliases (angel list shows them)."),
    yes: bool = typer.Option(False, "--yes", "-y", help="Delete without asking."),
    json_out: bool = typer.Option(False, "--json", help="Print what was deleted as JSON on stdout."),
) -> None:
    """Delete models from the local store (asks first unless --yes).

    For a pull made with --local-dir only the files angel downloaded are deleted, never the directory's
    other content.
    """
    from angelcli import console, store
    from angelcli.errors import UsageError
    from angelcli.pull_progress import human_bytes

    found = []
    for name in models:
        m = store.find(name)
        if m is None:
            raise UsageError(f"{name}: not in the store (angel list shows what is)")
        found.append(m)
    if not yes and not sys.stdin.isatty():
        raise UsageError("angel rm asks before deleting and stdin is not a terminal: pass --yes")
    removed = []
    for m in found:
        size = store.size_on_disk(m)
        if not yes and not typer.confirm(f"Delete {m.repo} ({human_bytes(size)}) at {m.dir}?", default=False,
                                         err=True):
            console.log(f"angel: kept {m.repo}")
            continue
        freed = store.remove(m)
        removed.append({"name": m.repo, "path": str(m.dir), "freed_bytes": freed})
        console.log(f"angel: deleted {m.repo} ({human_bytes(freed)} freed)")
    if json_out:
        console.emit_json(removed)
