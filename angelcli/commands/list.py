"""`angel list`: models in the local store."""

from __future__ import annotations

import typer


def list_models(
    json_out: bool = typer.Option(False, "--json", help="Print the list as JSON on stdout."),
) -> None:
    """List the models in the local store.

    Columns: name, alias, commit, size on disk, status (complete / partial / corrupt: `angel verify` found a
    file that does not match its checksum; `angel pull` repairs it), source, pull time.
    """
    from angelcli import console, store
    from angelcli.pull_progress import human_bytes

    rows = []
    for m in store.list_manifests():
        missing = store.missing_files(m)
        # "corrupt" once `angel verify` found a file whose checksum does not match (until a pull repairs it)
        status = "corrupt" if m.corrupt else "complete" if m.complete and not missing else "partial"
        rows.append({"name": m.repo, "alias": m.alias, "commit": m.commit, "size_on_disk": store.size_on_disk(m),
                     "files": len(m.files), "status": status, "source": m.source, "kind": m.kind,
                     "pulled_at": m.pulled_at, "path": str(m.dir), "corrupt_files": list(m.corrupt),
                     "verified_at": m.verified_at})
    if json_out:
        console.emit_json(rows)
        return
    if not rows:
        console.log(f"angel: the store ({store.home()}) is empty; try: angel pull antangelmed")
        return
    table = [("NAME", "ALIAS", "COMMIT", "SIZE", "STATUS", "SOURCE", "PULLED")]
    table += [(r["name"], r["alias"] or "-", (r["commit"] or "-")[:12], human_bytes(r["size_on_disk"]), r["status"],
               r["source"], r["pulled_at"] or "-") for r in rows]
    widths = [max(len(row[i]) for row in table) for i in range(len(table[0]))]
    for row in table:
        typer.echo("   ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip())
