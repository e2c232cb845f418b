"""`angel draft-eval`: acceptance length, per-position acceptance and speedup of a draft in angel's engine."""

from __future__ import annotations

from typing import Optional

import typer


def torch_threads() -> int:
    import torch

    return torch.get_num_threads()


def draft_eval(
    model: Optional[str] = typer.Argument(None, envvar="ANGEL_MODEL", help="Target: path, store name or alias (default: angel-tiny)."),
    draft: Optional[str] = typer.Option(None, "--draft", help="Draft directory or store name (default: the attached one)."),
    k: int = typer.Option(3, "--k", help="Draft depth: draft tokens per verification along one path."),
    topk: int = typer.Option(4, "--topk", envvar="ANGEL_DRAFT_TOPK",
                             help="Candidates per draft node: > 1 drafts a tree (greedy), 1 = a chain."),
    draft_tokens: Optional[int] = typer.Option(None, "--draft-tokens", envvar="ANGEL_DRAFT_TOKENS",
                                               help="Tree nodes verified per target pass (default 8 at --k 3)."),
    data: str = typer.Option("medical", "--data", help="Held-out prompts: medical | PATH | random."),
    prompts: int = typer.Option(32, "--prompts", help="Number of held-out prompts."),
    max_new_tokens: int = typer.Option(128, "--max-new-tokens", "-n"),
    temperature: float = typer.Option(0.0, "--temperature", "-t", help="0 = greedy (also checks identical output)."),
    seed: int = typer.Option(0, "--seed"),
    threads: int = typer.Option(0, "--threads", help="CPU threads for torch (0 = its default)."),
    dtype: str = typer.Option("auto", "--dtype", envvar="ANGEL_DTYPE"),
    device: str = typer.Option("auto", "--device", envvar="ANGEL_DEVICE"),
    backend: str = typer.Option("auto", "--backend", envvar="ANGEL_BACKEND"),
    json_out: bool = typer.Option(False, "--json", help="Print the report as JSON."),
    record: bool = typer.Option(False, "--record", help="Store the measured speed in the draft's angel-draft.json: "
                                "generate and chat speculate by default only where it is above 1x."),
) -> None:
    """Measure a draft: acceptance length, per-position acceptance, speedup.

    tau = tokens per target pass (bonus included), per-position acceptance, target passes per token and
    wall-clock speedup against plain decoding (plain and speculative tokens/s measured alternately in the
    same run), on held-out prompts. Greedy runs draft a tree (--topk candidates per node, --draft-tokens
    nodes verified in one target pass, EAGLE-2's dynamic tree); --topk 1 measures the chain.

    Examples:
      angel draft-eval --k 3
      angel draft-eval --k 3 --topk 1          # the chain: one candidate per depth
      angel draft-eval antangelmed --draft ./drafts/med --prompts 64 --json
    """
    from angelcli.console import emit_json
    from angelcli.eagle.data import eval_prompts
    from angelcli.eagle.evaluate import eval_draft
    from angelcli.errors import CheckFailed
    from angelcli.runtime import open_runtime

    from angelcli.errors import UsageError

    if k < 1:
        raise UsageError(f"--k must be >= 1, got {k}")
    if topk < 1:
        raise UsageError(f"--topk must be >= 1, got {topk}")
    if prompts < 1:
        raise UsageError(f"--prompts must be >= 1, got {prompts}")
    if max_new_tokens < 1:
        raise UsageError(f"--max-new-tokens must be >= 1, got {max_new_tokens}")
    if threads > 0:
        import torch

        torch.set_num_threads(threads)
    rt = open_runtime(model, device=device, dtype=dtype, backend=backend, use_draft=True, draft=draft, draft_k=k,
                      draft_topk=topk, draft_tokens=draft_tokens)
    tok = rt.tokenizer if data != "random" else None
    ids = eval_prompts(tok, data, prompts, seed=seed, vocab_size=rt.cfg.vocab_size)
    report = eval_draft(rt, rt.engine, ids, max_new_tokens=max_new_tokens, temperature=temperature, seed=seed)
    report.update(model=str(rt.model_dir), draft=str(rt.draft_dir), data=data, threads=torch_threads())
    if record:
        from angelcli.eagle.attach import record_measurement

        record_measurement(rt.draft_dir, report)
    if json_out:
        emit_json(report)
    else:  # the result is the command's data: stdout (the progress lines above went to stderr)
        import sys

        per = ", ".join("-" if a is None else f"{a:.2f}" for a in report["per_position_acceptance"])
        shape = f" (tree: top-{report['topk']}, {report['draft_tokens']} nodes)" if report["topk"] > 1 else " (chain)"
        sys.stdout.write(f"tau {report['tau']} at k={report['k']}{shape} on {report['prompts']} prompt(s); per-position "
                         f"acceptance [{per}]; {report['target_passes_per_token']} target passes per token; "
                         f"speedup {report['speedup']}x ({report['plain_tokens_per_s']} -> "
                         f"{report['speculative_tokens_per_s']} tok/s)\n")
    if report["identical"] is False:
        raise CheckFailed(f"speculative greedy output differs from plain greedy on {len(report['mismatches'])} "
                          "prompt(s); this is a bug (or a near-tie in reduced precision)")
