"""`angel generate`: scriptable, tokenizer-aware generation with JSON output."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer


def generate(
    model: Optional[str] = typer.Argument(None, envvar="ANGEL_MODEL", help="Path, store name or alias (default: angel-tiny)."),
    prompt: Optional[str] = typer.Option(None, "--prompt", "-p", help="User message (chat template applied)."),
    system: Optional[str] = typer.Option(None, "--system", help="System message."),
    messages: Optional[Path] = typer.Option(None, "--messages", help="JSON file with an OpenAI-style list of messages."),
    input_ids: Optional[str] = typer.Option(None, "--input-ids", help="Comma-separated token ids (no tokenizer needed)."),
    raw: bool = typer.Option(False, "--raw", help="Use --prompt as-is, without the chat template."),
    batch: Optional[Path] = typer.Option(None, "--batch", help="JSONL file, one request per line; one JSON result per line."),
    max_new_tokens: int = typer.Option(256, "--max-new-tokens", "-n", envvar="ANGEL_MAX_NEW_TOKENS"),
    temperature: float = typer.Option(0.0, "--temperature", "-t", help="0 = greedy."),
    top_p: float = typer.Option(1.0, "--top-p"),
    top_k: int = typer.Option(0, "--top-k", help="0 = off."),
    seed: Optional[int] = typer.Option(None, "--seed"),
    logprobs: int = typer.Option(0, "--logprobs", help="Report the top K logprobs per generated token."),
    dtype: str = typer.Option("auto", "--dtype", envvar="ANGEL_DTYPE", help="auto|float32|bfloat16|float16."),
    device: str = typer.Option("auto", "--device", envvar="ANGEL_DEVICE", help="auto|cpu|cuda|cuda:N."),
    backend: str = typer.Option("auto", "--backend", envvar="ANGEL_BACKEND", help="auto|torch|triton."),
    max_seq_len: Optional[int] = typer.Option(None, "--max-seq-len", help="Context length to allocate."),
    tp: int = typer.Option(1, "--tp", envvar="ANGEL_TP", help="Tensor-parallel GPUs (processes launched by angel)."),
    batch_size: int = typer.Option(32, "--batch-size", help="Requests of a --batch file decoded together."),
    draft: Optional[bool] = typer.Option(None, "--draft/--no-draft",
                                         help="Speculative decoding with the model's EAGLE3 draft "
                                              "(default: on when one is attached and measured faster on "
                                              "this device; on CPU angel-tiny's draft measured 0.68x "
                                              "(tau 3.2: a verification pass costs several plain steps "
                                              "there), so angel-tiny decodes plainly on a CPU)."),
    draft_path: Optional[str] = typer.Option(None, "--draft-path", envvar="ANGEL_DRAFT",
                                             help="Speculate with this draft directory or store name."),
    draft_k: int = typer.Option(3, "--draft-k", envvar="ANGEL_DRAFT_K", help="Draft depth per target pass."),
    draft_topk: int = typer.Option(4, "--draft-topk", envvar="ANGEL_DRAFT_TOPK",
                                   help="Draft candidates per node: > 1 verifies a tree (greedy, one prompt at "
                                        "a time), 1 a chain."),
    draft_tokens: Optional[int] = typer.Option(None, "--draft-tokens", envvar="ANGEL_DRAFT_TOKENS",
                                               help="Tree nodes verified per target pass (default 8 at k 3)."),
    json_out: bool = typer.Option(False, "--json", help="Print one JSON result (always on with --batch)."),
) -> None:
    """Generate a reply to a prompt, messages, token ids or a batch file.

    Examples:
      angel generate --prompt "What are common symptoms of type 2 diabetes?"
      angel generate antangelmed --messages chat.json --json
      angel generate --input-ids 12,7,99 --max-new-tokens 8 --json
      angel generate --batch requests.jsonl > results.jsonl
      angel generate --prompt "..." --no-draft   (plain decoding even when a draft is attached)
      angel generate antangelmed-fp8 --tp 2 --prompt "..."
    """
    import sys
    from angelcli.console import emit_json, log, progress
    from angelcli.engine.sampling import SamplingParams
    from angelcli.errors import UsageError
    from angelcli.batch_file import read_batch_file
    from angelcli.generate import GenRequest, parse_input_ids, read_messages_file, run_batch, run_request
    from angelcli.runtime import open_runtime

    if logprobs > 20:
        raise UsageError(f"--logprobs must be between 0 and 20, got {logprobs}")
    if draft_k < 1:
        raise UsageError(f"--draft-k must be >= 1, got {draft_k}")
    if draft_topk < 1:
        raise UsageError(f"--draft-topk must be >= 1, got {draft_topk}")
    params = SamplingParams(temperature=temperature, top_p=top_p, top_k=top_k, max_new_tokens=max_new_tokens,
                            seed=seed, logprobs=logprobs)
    if batch is not None:
        if any(x is not None for x in (prompt, messages, input_ids)):
            raise UsageError("--batch cannot be combined with --prompt, --messages or --input-ids")
        entries = read_batch_file(batch, system)
    else:
        req = GenRequest(prompt=prompt, system=system, raw=raw,
                         messages=read_messages_file(messages) if messages else None,
                         input_ids=parse_input_ids(input_ids) if input_ids else None)
        if req.prompt is None and req.messages is None and req.input_ids is None:
            raise UsageError("nothing to generate from: give --prompt, --messages, --input-ids or --batch")
        if prompt is not None and not prompt.strip() and not raw:
            raise UsageError("--prompt is empty (type a message)")
        req.validate("arguments")
        jobs = [(req, {})]
    if batch_size < 1:
        raise UsageError("--batch-size must be >= 1")
    if batch is not None and not any(e.job for e in entries):  # nothing runnable: no need to load the model
        _run_batch_file(None, entries, params, batch_size, batch)
        return
    rt = open_runtime(model, device=device, dtype=dtype, backend=backend, max_seq_len=max_seq_len, tp=tp,
                      use_draft=draft, draft=draft_path, draft_k=draft_k,
                      draft_topk=draft_topk, draft_tokens=draft_tokens)
    try:
        if batch is not None:
            _run_batch_file(rt, entries, params, batch_size, batch)
            return
        req = jobs[0][0]
        stream = None if json_out else (lambda s: (sys.stdout.write(s), sys.stdout.flush()))
        result = run_request(rt, req, params, on_text=stream)
    finally:
        rt.close()
    if json_out:
        emit_json(result)
        return
    if result["text"] is None:
        sys.stdout.write(",".join(map(str, result["ids"])))
    sys.stdout.write("\n")
    st = result["stats"]
    spec = st.get("speculative")
    tau = f", tau {spec['mean_acceptance_length']:.2f} (k={spec['k']})" if spec else ""
    log(f"[{st['prompt_tokens']} prompt tokens, {st['generated_tokens']} generated, "
        f"first token {st['time_to_first_token'] * 1000:.0f} ms, {st['decode_tokens_per_s']:.1f} tok/s{tau}, "
        f"finish: {result['finish_reason']}]")


def _run_batch_file(rt, entries, params, batch_size: int, path) -> None:
    """Results in file order, a bad line's {"id", "line", "error"} in its place; exit 2 at the end if any failed."""
    from angelcli.console import emit_json, progress
    from angelcli.errors import UsageError
    from angelcli.generate import run_batch

    good = [e for e in entries if e.job is not None]
    failed = []
    cursor = 0  # entries before this index have been written

    def write_upto(limit: int) -> None:
        nonlocal cursor
        while cursor < limit:
            e = entries[cursor]
            if e.error is not None:
                failed.append(e)
                emit_json(e.error_record())
            elif e.result is not None:
                emit_json(e.result)
            cursor += 1

    with progress("generate", total=len(good), unit="requests") as bar:
        for a in range(0, len(good), batch_size):
            group = good[a : a + batch_size]
            for e, result in zip(group, run_batch(rt, [e.job for e in group], params)):
                if "error" in result:
                    e.error = f"{path}:{e.line}: {result['error']}"
                else:
                    e.result = {"id": e.id, **result}
            write_upto(entries.index(group[-1]) + 1)
            bar.advance(len(group))
        write_upto(len(entries))
    if failed:
        raise UsageError(f"--batch {path}: {len(failed)} of {len(entries)} line(s) failed, the others were written "
                         f"(first: {failed[0].error})")
