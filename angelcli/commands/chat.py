"""`angel chat`: talk to AntAngelMed (or angel-tiny) in the terminal, or answer piped prompts."""

from __future__ import annotations

from typing import Optional

import typer

_DEFAULT_SYSTEM = "You are AntAngelMed, a helpful medical assistant."


def chat(
    model: Optional[str] = typer.Argument(None, envvar="ANGEL_MODEL", help="Path, store name or alias (default: angel-tiny)."),
    system: str = typer.Option(_DEFAULT_SYSTEM, "--system", help="System prompt (\"\" for none)."),
    once: Optional[str] = typer.Option(None, "--once", help="Answer this one message, print the reply and exit."),
    draft: Optional[bool] = typer.Option(
        None, "--draft/--no-draft",
        help="Speculative decoding with the model's EAGLE3 draft (default: use it when one is attached and "
             "measured faster on this device; on CPU angel-tiny's draft measured 0.68x (tau 3.2: a "
             "verification pass costs several plain steps there), so angel-tiny decodes plainly on a CPU)."),
    max_new_tokens: int = typer.Option(1024, "--max-new-tokens", "-n", envvar="ANGEL_MAX_NEW_TOKENS",
                                       help="Longest reply in tokens (/set max_tokens changes it)."),
    temperature: Optional[float] = typer.Option(None, "--temperature", "-t",
                                                help="0 = greedy (default: the checkpoint's generation_config)."),
    top_p: Optional[float] = typer.Option(None, "--top-p"),
    top_k: Optional[int] = typer.Option(None, "--top-k", help="0 = off."),
    seed: Optional[int] = typer.Option(None, "--seed"),
    no_history: bool = typer.Option(False, "--no-history", envvar="ANGEL_NOHISTORY",
                                    help="Do not read or write the input history file (ANGEL_HOME/chat_history)."),
    no_disclaimer: bool = typer.Option(False, "--no-disclaimer", envvar="ANGEL_NO_DISCLAIMER",
                                       help="Skip the notice that answers are not medical advice."),
    ignore_eos: bool = typer.Option(False, "--ignore-eos", help="Keep generating past the end of the turn (benchmarks, tests)."),
    backend: str = typer.Option("auto", "--backend", envvar="ANGEL_BACKEND", help="auto|torch|triton."),
    tp: int = typer.Option(1, "--tp", envvar="ANGEL_TP", help="Tensor-parallel degree (GPUs of one node)."),
    device: str = typer.Option("auto", "--device", envvar="ANGEL_DEVICE", help="auto|cpu|cuda|cuda:N."),
    dtype: str = typer.Option("auto", "--dtype", envvar="ANGEL_DTYPE", help="auto|float32|bfloat16|float16."),
    max_seq_len: Optional[int] = typer.Option(None, "--max-seq-len", help="Context length to allocate."),
) -> None:
    """Chat with a model: streamed replies, slash commands, history, transcripts.

    Interactive when stdin and stdout are terminals; /help inside lists commands and keys.

    Piped input: each line is one message of the same conversation; replies on stdout, stats on stderr.

    Examples:
      angel chat
      angel chat antangelmed-fp8 --tp 2 --temperature 0.6
      angel chat --once "What are common symptoms of type 2 diabetes?"
      printf 'What is hypertension?\\n高血压有什么症状？\\n' | angel chat --no-disclaimer
    """
    import inspect
    import sys

    from angelcli.chat.repl import DISCLAIMER, ChatIO, ChatREPL, reply, run_noninteractive
    from angelcli.chat.session import ChatSession, attach_draft, sampling_defaults
    from angelcli.console import log
    from angelcli.engine.sampling import SamplingParams
    from angelcli.errors import UsageError
    from angelcli.resolve import TINY_NAME, angel_home, resolve_model
    from angelcli.runtime import open_runtime

    if tp < 1:
        raise UsageError("--tp must be >= 1")
    if once is not None and not once.strip():
        raise UsageError("--once: the message is empty")
    extra = {}
    if tp != 1:
        if "tp" not in inspect.signature(open_runtime).parameters:
            raise UsageError(f"--tp {tp}: tensor parallelism is not available in this build; run with --tp 1")
        extra["tp"] = tp
    model_dir = resolve_model(model)
    if draft:  # say so before loading a 200 GB model
        from angelcli.eagle.attach import attached_draft

        if attached_draft(model_dir, model) is None:
            raise UsageError(f"--draft: {model_dir} has no draft attached (`angel draft-attach MODEL DRAFT` "
                             "records one)")
    defaults = sampling_defaults(model_dir)
    params = SamplingParams(
        temperature=defaults["temperature"] if temperature is None else temperature,
        top_p=defaults["top_p"] if top_p is None else top_p,
        top_k=defaults["top_k"] if top_k is None else top_k,
        max_new_tokens=max_new_tokens, seed=seed)
    log(f"loading {model or TINY_NAME} ...")
    rt = open_runtime(str(model_dir), device=device, dtype=dtype, backend=backend, max_seq_len=max_seq_len, **extra)
    try:
        draft_name = attach_draft(rt, draft)
        session = ChatSession(rt, system=system, params=params, draft=draft_name, model_name=model or TINY_NAME,
                              ignore_eos=ignore_eos)

        interactive = once is None and sys.stdin.isatty() and sys.stdout.isatty()
        io = ChatIO(interactive=interactive)
        if once is not None:
            if not no_disclaimer:
                io.info(DISCLAIMER)
            reply(session, once, io, catch_interrupt=False)
            return
        if not interactive:
            code = run_noninteractive(session, sys.stdin, io, disclaimer=not no_disclaimer)
        else:
            history = None if no_history else angel_home() / "chat_history"
            code = ChatREPL(session, io, history_path=history, disclaimer=not no_disclaimer).run()
        if code:
            raise typer.Exit(code)
    finally:
        if hasattr(rt, "close"):
            rt.close()  # stops tensor-parallel workers

