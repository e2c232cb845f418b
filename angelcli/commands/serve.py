"""`angel serve`: an OpenAI-compatible server on angel's engine, or the launch command for SGLang / vLLM."""

from __future__ import annotations

from typing import Optional

import typer


def serve(
    model: Optional[str] = typer.Argument(None, envvar="ANGEL_MODEL", help="Path, store name or alias (default: angel-tiny)."),
    engine: str = typer.Option("angel", "--engine", envvar="ANGEL_SERVE_ENGINE",
                               help="angel (built-in engine) | sglang | vllm (print or exec their launch command)."),
    host: str = typer.Option("127.0.0.1", "--host", envvar="ANGEL_HOST", help="Address to listen on."),
    port: int = typer.Option(8000, "--port", envvar="ANGEL_PORT"),
    api_key: Optional[str] = typer.Option(None, "--api-key", envvar="ANGEL_API_KEY",
                                          help="Require 'Authorization: Bearer KEY' on every route but /health."),
    served_name: Optional[str] = typer.Option(None, "--served-model-name", help="Model id clients use (default: MODEL)."),
    max_batch: int = typer.Option(16, "--max-batch", envvar="ANGEL_MAX_BATCH", help="Requests decoded together."),
    max_queue: int = typer.Option(64, "--max-queue", envvar="ANGEL_MAX_QUEUE",
                                  help="Requests that may wait for a batch slot; beyond it: HTTP 503."),
    threads: Optional[int] = typer.Option(None, "--threads", envvar="ANGEL_THREADS", help="CPU threads for torch."),
    shutdown_timeout: float = typer.Option(10.0, "--shutdown-timeout",
                                           help="Seconds in-flight requests may finish after Ctrl-C / SIGTERM."),
    log_requests: bool = typer.Option(False, "--log-requests", help="Access log on stderr."),
    draft: Optional[bool] = typer.Option(None, "--draft/--no-draft",
                                         help="Speculative decoding with the attached EAGLE3 draft (built-in: "
                                              "when one request runs alone, default on CUDA only; sglang: "
                                              "EAGLE3 flags, default when one is attached)."),
    draft_path: Optional[str] = typer.Option(None, "--draft-path", envvar="ANGEL_DRAFT", help="Draft directory or store name."),
    draft_k: Optional[int] = typer.Option(None, "--draft-k", envvar="ANGEL_DRAFT_K", help="Draft tokens per target pass."),
    device: str = typer.Option("auto", "--device", envvar="ANGEL_DEVICE", help="auto|cpu|cuda|cuda:N."),
    dtype: str = typer.Option("auto", "--dtype", envvar="ANGEL_DTYPE", help="auto|float32|bfloat16|float16."),
    backend: str = typer.Option("auto", "--backend", envvar="ANGEL_BACKEND", help="auto|torch|triton."),
    max_seq_len: Optional[int] = typer.Option(None, "--max-seq-len", "--context",
                                              help="Context length (built-in: allocated; sglang/vllm: --context-length, "
                                                   "YaRN above 32K)."),
    gpus: Optional[int] = typer.Option(None, "--gpus", help="sglang/vllm: GPUs per node (the planner picks TP)."),
    gpu_mem: Optional[float] = typer.Option(None, "--gpu-mem", help="sglang/vllm: GiB per GPU (default: detected or H20's 96)."),
    tp: Optional[int] = typer.Option(None, "--tp", help="sglang/vllm: tensor-parallel degree (default: the planner's)."),
    nnodes: int = typer.Option(1, "--nnodes", help="sglang/vllm: nodes of a multi-node deployment."),
    node_rank: Optional[int] = typer.Option(None, "--node-rank", help="sglang/vllm: this node's rank (exec); --print prints all."),
    dist_init_addr: Optional[str] = typer.Option(None, "--dist-init-addr", help="sglang/vllm: HOST:PORT of node 0."),
    print_only: bool = typer.Option(False, "--print", help="sglang/vllm: print the command(s) and exit."),
    extra: Optional[str] = typer.Option(None, "--extra-args", help="sglang/vllm: more arguments, appended as given."),
) -> None:
    """Serve a model over an OpenAI-compatible HTTP API (chat, completions, models, health, metrics).

    The built-in engine batches requests continuously; --engine sglang|vllm builds the launch command for an
    installed SGLang or vLLM from what angel knows (checkpoint kind, planner's TP, EAGLE3 draft, context) and
    runs it, or prints it with --print.

    Examples:
      angel serve                                   (angel-tiny on http://127.0.0.1:8000/v1)
      angel serve antangelmed-fp8 --api-key sk-local --port 8080
      angel serve antangelmed-fp8 --engine sglang --gpus 2 --gpu-mem 96 --print
      angel serve antangelmed --engine sglang --gpus 8 --nnodes 2 --dist-init-addr 10.0.0.1:5000 --print
    """
    from angelcli.errors import UsageError

    if engine not in ("angel", "sglang", "vllm"):
        raise UsageError(f"--engine must be angel, sglang or vllm, not {engine!r}")
    if engine == "angel":
        given = [f for f, v in (("--gpus", gpus), ("--gpu-mem", gpu_mem), ("--tp", tp), ("--node-rank", node_rank),
                                ("--dist-init-addr", dist_init_addr), ("--extra-args", extra)) if v is not None]
        given += ["--print"] * print_only + ["--nnodes"] * (nnodes != 1)
        if given:
            raise UsageError(f"{given[0]} applies to --engine sglang|vllm (the built-in engine serves one GPU or CPU)")
        from angelcli.serve.run import ServeOptions, serve_builtin

        serve_builtin(ServeOptions(model=model, host=host, port=port, api_key=api_key or None, served_name=served_name,
                                   device=device, dtype=dtype, backend=backend, max_seq_len=max_seq_len,
                                   max_batch=max_batch, max_queue=max_queue, threads=threads, draft=draft,
                                   draft_path=draft_path, draft_k=draft_k or 3, shutdown_timeout=shutdown_timeout,
                                   log_requests=log_requests))
        return
    from angelcli.serve.handoff import HandoffOptions, run_handoff

    run_handoff(HandoffOptions(model=model, engine=engine, host=host, port=port, api_key=api_key or None,
                               served_name=served_name, context=max_seq_len, gpus=gpus, gpu_mem=gpu_mem, tp=tp,
                               nnodes=nnodes, node_rank=node_rank, dist_init_addr=dist_init_addr, draft=draft,
                               draft_path=draft_path, draft_k=draft_k, extra=extra, print_only=print_only))
