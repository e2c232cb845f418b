"""Start `angel serve` on the built-in engine: open the model, start the scheduler, run uvicorn.

Ctrl-C / SIGTERM: the listening socket closes at once (no new connections); requests in flight keep
decoding for up to `shutdown_timeout` seconds, then the rest are cancelled, and the process exits 0.
A second Ctrl-C exits at once.
"""

from __future__ import annotations

import contextlib
import signal
import threading
import time
from dataclasses import dataclass

from angelcli.errors import UsageError


@dataclass
class ServeOptions:
    model: str | None = None
    host: str = "127.0.0.1"
    port: int = 8000
    api_key: str | None = None
    served_name: str | None = None
    device: str = "auto"
    dtype: str = "auto"
    backend: str = "auto"
    max_seq_len: int | None = None
    max_batch: int = 16
    max_queue: int = 64
    threads: int | None = None
    draft: bool | None = None
    draft_path: str | None = None
    draft_k: int = 3
    shutdown_timeout: float = 10.0
    log_requests: bool = False


def _server_class():
    import uvicorn

    class Server(uvicorn.Server):
        """uvicorn re-raises a caught SIGINT/SIGTERM after its graceful shutdown (exit status 130/143);
        angel's documented behaviour is a clean exit 0 after the bounded drain, so the signals only set
        should_exit here (a second one forces the exit)."""

        @contextlib.contextmanager
        def capture_signals(self):
            if threading.current_thread() is not threading.main_thread():
                yield
                return

            def handle(sig, frame):
                if self.should_exit:
                    self.force_exit = True
                self.should_exit = True

            old = {s: signal.signal(s, handle) for s in (signal.SIGINT, signal.SIGTERM)}
            try:
                yield
            finally:
                for s, h in old.items():
                    signal.signal(s, h)

    return Server


def build_state(opts: ServeOptions):
    """Open the model and build the scheduler + app state (no socket yet)."""
    import torch

    from angelcli.runtime import open_runtime
    from angelcli.serve.app import ServerState
    from angelcli.serve.metrics import Metrics
    from angelcli.serve.protocol import Context
    from angelcli.serve.scheduler import Scheduler

    if opts.max_batch < 1:
        raise UsageError("--max-batch must be >= 1")
    if opts.max_queue < 0:
        raise UsageError("--max-queue must be >= 0")
    if opts.threads:
        torch.set_num_threads(opts.threads)

    # use_draft None: speculate only where the draft's recorded measurement says it pays (CUDA by default,
    # not angel-tiny on a CPU); the same rule as generate and chat (angelcli/eagle/attach.py).
    use_draft = opts.draft
    rt = open_runtime(opts.model, device=opts.device, dtype=opts.dtype, backend=opts.backend,
                      max_seq_len=opts.max_seq_len, use_draft=use_draft, draft=opts.draft_path,
                      draft_k=opts.draft_k)
    name = opts.served_name or opts.model or rt.model_dir.name
    names = tuple(dict.fromkeys([name, opts.model or name, rt.model_dir.name, str(rt.model_dir)]))
    metrics = Metrics(name)
    sched = Scheduler(rt.engine, max_batch=opts.max_batch, max_queue=opts.max_queue, metrics=metrics)
    ctx = Context(rt.tokenizer, names, rt.engine.max_seq_len, tuple(rt.eos_ids), rt.cfg.vocab_size)
    spec = getattr(rt.engine, "speculator", None)
    state = ServerState(sched, metrics, ctx, opts.api_key, int(time.time()), spec.k if spec is not None else None)
    return rt, state


def serve_builtin(opts: ServeOptions) -> None:
    import uvicorn

    from angelcli.console import log
    from angelcli.serve.app import build_app

    _check_port(opts.host, opts.port)
    import sys

    # The scheduler thread and the HTTP event loop share the GIL; with the default 5 ms switch interval
    # the loop waits a whole interval after each socket write, which starves streaming at high batch.
    sys.setswitchinterval(0.0005)
    rt, state = build_state(opts)
    sched = state.scheduler

    @contextlib.asynccontextmanager
    async def lifespan(app):
        sched.start()
        yield
        sched.stop(timeout=1.0)  # what uvicorn's graceful wait left running is cancelled here

    app = build_app(state, lifespan=lifespan)

    config = uvicorn.Config(app, host=opts.host, port=opts.port, log_level="info" if opts.log_requests else "warning",
                            access_log=opts.log_requests, timeout_graceful_shutdown=opts.shutdown_timeout,
                            lifespan="on")
    server = _server_class()(config)
    spec = f", speculative decoding with {rt.draft_dir} (k={state.spec_k}) when one request runs alone" \
        if rt.draft_dir else ""
    log(f"angel serve: {state.ctx.model_names[0]} on {rt.device}/{rt.backend} ({rt.dtype}), context "
        f"{state.ctx.max_len}, up to {sched.max_batch} requests per batch{spec}")
    log(f"angel serve: OpenAI-compatible API at http://{opts.host}:{opts.port}/v1"
        f"{' (API key required)' if opts.api_key else ''}; Ctrl-C stops")
    try:
        server.run()
    finally:
        rt.close()
    log("angel serve: stopped")


def _check_port(host: str, port: int) -> None:
    """Fail before loading the model when the address cannot be bound (uvicorn would exit 1 later)."""
    import socket

    if not 0 <= port <= 65535:
        raise UsageError(f"--port must be in 0..65535, not {port}")
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as err:
        raise UsageError(f"--host {host}: cannot resolve it ({err})") from None
    fam, _, _, _, addr = infos[0]
    with socket.socket(fam, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(addr)
        except OSError as err:
            raise UsageError(f"--port {port}: cannot listen on {host}:{port} ({err.strerror})") from None
