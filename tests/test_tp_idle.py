"""Tensor-parallel workers idle on a host-side queue, not inside a collective: with the process group's
timeout shortened to 3 s (standing in for NCCL's 30-minute watchdog), a worker left idle for twice that
still serves the next call, with the same tokens as before."""

import time

import torch

from angelcli.engine import SamplingParams
from angelcli.fixtures import write_tiny_checkpoint
from angelcli.runtime import open_runtime


def test_idle_tp_worker_survives_the_collective_timeout(tmp_path, monkeypatch):
    ck = write_tiny_checkpoint(tmp_path / "ck", tokenizer=False, seed=5)
    monkeypatch.setenv("ANGEL_TP_TIMEOUT_S", "3")
    rt = open_runtime(str(ck), device="cpu", dtype="float32", backend="torch", tp=2)
    try:
        params = SamplingParams(max_new_tokens=4)
        first = [s.token_id for s in rt.engine.generate([3, 50, 7, 99], params)]
        time.sleep(7)  # idle: a worker waiting in a broadcast would time out after 3 s and die
        assert all(p.is_alive() for p in rt.launch.procs)
        again = [s.token_id for s in rt.engine.generate([3, 50, 7, 99], params)]
        logits = rt.engine.score([3, 50, 7, 99])
    finally:
        rt.close()
    assert again == first and len(first) == 4
    assert torch.isfinite(logits).all()
