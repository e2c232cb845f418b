"""Tensor parallelism launched by angel itself: one process per GPU (or per CPU slot with gloo).

    rt = open_runtime(model, tp=2)      # this process becomes rank 0; rank 1 is spawned here
    rt.engine.generate(...)             # rank 0 drives, rank 1 mirrors the call in lockstep
    rt.close()                          # tells the workers to exit (also registered with atexit)

The parent process is rank 0: it keeps the terminal (chat reads stdin, generate prints), loads its slice
of the weights and runs its share of every layer. Ranks 1..N-1 are spawned (multiprocessing "spawn")
with the same runtime settings; each loads its own slice (angelcli/model/parallel.py) and then serves:
it waits for a call from rank 0 (Engine.generate_batch / generate / score), runs the same call (same
inputs, seeded sampling, identical logits after the all-gather, hence identical tokens), and waits for the
next one. Calls travel over a host-side channel (one multiprocessing queue per worker), NOT a collective:
an idle worker sleeps in queue.get() for as long as chat waits for its user, where a broadcast would be
killed by the process group's (NCCL watchdog) timeout. Per decode step rank 0 also broadcasts a go/stop
flag (Engine._tp_go; ranks are in lockstep then), so a consumer that stops early leaves every rank at the
same point. Workers ignore SIGINT: Ctrl-C reaches rank 0 only.

Collectives: NCCL on CUDA (rank r uses cuda:r), gloo on CPU. Rendezvous over TCP on 127.0.0.1 with a free
port chosen by rank 0 (single node only).
"""

from __future__ import annotations

import atexit
import datetime
import os
import signal
import socket

import torch
import torch.distributed as dist

from angelcli.errors import ResourceError
from angelcli.model.parallel import TensorParallel

INIT_TIMEOUT = datetime.timedelta(minutes=30)  # loading 100 GB of weights per rank can take a while


def group_timeout() -> datetime.timedelta:
    """The process group's collective timeout ($ANGEL_TP_TIMEOUT_S; tests shorten it)."""
    raw = os.environ.get("ANGEL_TP_TIMEOUT_S", "").strip()
    return datetime.timedelta(seconds=float(raw)) if raw else INIT_TIMEOUT


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def init_group(rank: int, world: int, port: int, device_type: str, calls=None) -> TensorParallel:
    """Join the group; `calls` is this rank's host channel (rank 0: the list of worker queues)."""
    backend = "nccl" if device_type == "cuda" else "gloo"
    if device_type == "cuda":
        torch.cuda.set_device(rank)
    else:  # CPU ranks share the cores: oversubscribed BLAS threads and gloo polling slow everything down
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // world))
    dist.init_process_group(backend, init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world,
                            timeout=group_timeout())
    tp = TensorParallel(rank, world, dist.group.WORLD)
    tp.calls = calls  # send_call / recv_call
    return tp


class Launch:
    """The spawned workers of one tensor-parallel runtime (held by rank 0)."""

    def __init__(self, world: int, runtime_kwargs: dict, device_type: str):
        import multiprocessing as mp

        if device_type == "cuda" and torch.cuda.device_count() < world:
            raise ResourceError(f"--tp {world}: only {torch.cuda.device_count()} CUDA devices are visible")
        self.world, self.port = world, free_port()
        ctx = mp.get_context("spawn")
        self.status = ctx.Queue()  # each worker reports ("ok" | "error", rank, message) after loading
        self.calls = [ctx.Queue() for _ in range(1, world)]  # rank 0 -> worker r: (method, args)
        self.procs = [ctx.Process(target=_worker_main, args=(r, world, self.port, runtime_kwargs, device_type,
                                                             self.status, self.calls[r - 1]),
                                  daemon=True, name=f"angel-tp{r}")
                      for r in range(1, world)]
        for p in self.procs:
            p.start()
        self.closed = False
        self.healthy = True
        self.threads = torch.get_num_threads()  # init_group lowers it on CPU; close() restores it
        atexit.register(self.close)
        self.tp = init_group(0, world, self.port, device_type, calls=self.calls)

    def wait_ready(self) -> None:
        """Block until every worker has loaded its slice; a worker's failure becomes this process's error."""
        import queue

        from angelcli.errors import AngelError

        pending = set(range(1, self.world))
        while pending:
            try:
                kind, rank, message, code = self.status.get(timeout=1.0)
            except queue.Empty:
                dead = [p for p in self.procs if p.exitcode is not None]
                if dead:
                    self.healthy = False
                    raise ResourceError(f"--tp {self.world}: worker {dead[0].name} exited with code "
                                        f"{dead[0].exitcode} while loading") from None
                continue
            if kind == "error":
                self.healthy = False
                raise AngelError(f"--tp {self.world}: rank {rank}: {message}", code)
            pending.discard(rank)

    def close(self) -> None:
        """Send the workers home and tear the group down (idempotent)."""
        if self.closed:
            return
        self.closed = True
        if self.healthy:
            try:
                send_call(self.tp, "exit", ())
            except Exception:  # noqa: BLE001 - a dead worker must not turn exit into a hang report
                pass
        for p in self.procs:
            p.join(timeout=30 if self.healthy else 1)
            if p.is_alive():
                p.terminate()
        if dist.is_initialized() and self.healthy:
            dist.destroy_process_group()
        torch.set_num_threads(self.threads)


def _worker_main(rank: int, world: int, port: int, runtime_kwargs: dict, device_type: str, status,
                 calls) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    from angelcli.console import set_quiet
    from angelcli.errors import AngelError
    from angelcli.runtime import open_runtime

    set_quiet(True)  # rank 0 reports; the workers stay silent
    try:
        tp = init_group(rank, world, port, device_type, calls=calls)
        rt = open_runtime(**runtime_kwargs, _tp=tp)
    except AngelError as err:
        status.put(("error", rank, str(err), err.exit_code))
        return
    except Exception as err:  # noqa: BLE001 - reported by rank 0 as one line
        status.put(("error", rank, f"{type(err).__name__}: {err}", 1))
        return
    status.put(("ok", rank, "", 0))
    serve(rt.engine)
    dist.destroy_process_group()


def send_call(tp: TensorParallel, method: str, args: tuple) -> None:
    """Rank 0: hand the call to every worker over its host queue (returns at once)."""
    for q in tp.calls:
        q.put((method, args))


def recv_call(tp: TensorParallel) -> tuple[str, tuple]:
    """Worker: block on the host queue until rank 0 sends a call (no collective, no timeout)."""
    return tp.calls.get()


def broadcast_flag(tp: TensorParallel, go: bool, device: torch.device) -> bool:
    """Rank 0's go/stop decision for the next decode step, on every rank (rank 0 does not wait for it)."""
    dev = device if dist.get_backend(tp.group) == "nccl" else torch.device("cpu")
    flag = torch.tensor([int(go)], dtype=torch.int32, device=dev)
    dist.broadcast(flag, src=0, group=tp.group)
    return go if tp.rank == 0 else bool(flag.item())


def serve(engine) -> None:
    """Worker loop: run each call rank 0 broadcasts until it says exit."""
    while True:
        method, args = recv_call(engine.tp)
        if method == "exit":
            return
        if method == "generate_batch":
            for _ in engine.generate_batch(*args):
                pass
        elif method == "score":
            engine.score(*args)
        else:
            raise RuntimeError(f"tensor-parallel worker: unknown call {method!r}")
