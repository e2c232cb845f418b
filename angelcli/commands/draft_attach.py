"""`angel draft-attach`: check an EAGLE3 draft against a model and make it the model's default draft."""

from __future__ import annotations

from typing import Optional

import typer


def draft_attach(
    model: Optional[str] = typer.Argument(None, help="Target: path, store name or alias (default: angel-tiny)."),
    draft: Optional[str] = typer.Argument(None, help="Draft directory or store name (e.g. ling-flash-eagle3)."),
    k: int = typer.Option(3, "--k", help="Draft tokens per verification recorded with the attachment."),
    detach: bool = typer.Option(False, "--detach", help="Record that MODEL has no draft."),
    check_only: bool = typer.Option(False, "--check", help="Only check consistency; record nothing."),
    json_out: bool = typer.Option(False, "--json", help="Print the report as JSON."),
) -> None:
    """Check an EAGLE3 draft against MODEL and make it MODEL's default draft.

    Checks hidden size, vocabulary, d2t/t2d consistency and layer ids, then records the draft so `generate`
    and `chat` speculate with it by default (--no-draft turns it off for a run).

    Examples:
      angel draft-attach angel-tiny ./drafts/tiny
      angel pull ling-flash-eagle3 && angel draft-attach ling-flash-2.0 ling-flash-eagle3
      angel draft-attach antangelmed --detach
    """
    from angelcli.console import emit_json, log, warn
    from angelcli.eagle.attach import attach, check_draft, resolve_draft_dir

    if check_only:
        from angelcli.config import ModelConfig
        from angelcli.errors import UsageError
        from angelcli.resolve import resolve_model

        if draft is None:
            raise UsageError("DRAFT is required with --check")
        report = {"model": str(resolve_model(model)),
                  **check_draft(ModelConfig.from_file(resolve_model(model)), resolve_draft_dir(draft))}
    else:
        report = attach(model, draft, k=k, detach=detach)
    if json_out:
        emit_json(report)
        return
    for note in report.get("notes", []):
        warn(note)
    if report.get("detached"):
        log(f"{report['model']}: no draft (recorded in {report['record']})")
        return
    ids = report["layer_ids"]
    log(f"ok: {report['draft']} ({report['layout']} layout) fits {report['model']}: hidden {report['hidden_size']}, "
        f"vocab {report['vocab_size']} (draft {report['draft_vocab_size']}), layers {ids['foundation']} "
        f"(SGLang {ids['sglang']}, vLLM {ids['vllm']})")
    if "record" in report:
        log(f"attached: {report['record']}")
