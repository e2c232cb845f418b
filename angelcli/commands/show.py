"""`angel show MODEL`: config summary, parameters, format, size, commit, source and draft of a model."""

from __future__ import annotations

from typing import Optional

import typer


def show(
    model: Optional[str] = typer.Argument(None, envvar="ANGEL_MODEL",
                                          help="Store name, alias or directory (default: angel-tiny)."),
    json_out: bool = typer.Option(False, "--json", help="Print the description as JSON on stdout."),
) -> None:
    """Describe a model: config, parameters, format, size, commit, source, draft.

    Works before download for aliases (bundled config).
    """
    from angelcli import console
    from angelcli.describe import describe, format_text

    info = describe(model)
    if json_out:
        console.emit_json(info)
    else:
        typer.echo(format_text(info))
