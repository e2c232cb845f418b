"""The serve scheduler batches continuously: requests that join and leave a running batch get exactly the
greedy tokens they get alone, cancelled ones leave within a step, and a paged cache gets its blocks back."""

import threading
import time

import pytest
import torch

from angelcli.engine import Engine, SamplingParams
from angelcli.loader import load_model
from angelcli.serve.metrics import Metrics
from angelcli.serve.scheduler import QueueFull, Scheduler, ServeRequest, TooLong

PROMPTS = [[5, 9, 100, 7], [1, 2], [40, 41, 42, 43, 44, 45, 46], [300], [7, 7, 7], [11, 250, 3, 99, 18]]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    from angelcli.fixtures import write_tiny_checkpoint

    path = write_tiny_checkpoint(tmp_path_factory.mktemp("tiny-serve") / "ckpt")
    net, cfg, _ = load_model(path, dtype=torch.float32, device="cpu")
    return net, cfg


class Collector:
    def __init__(self):
        self.tokens, self.end, self.done = [], None, threading.Event()

    def __call__(self, ev):
        if ev[0] == "token":
            self.tokens.append(ev[1].token_id)
        else:
            self.end = ev
            self.done.set()


def alone(engine, prompt, n):
    return [s.token_id for s in engine.generate(prompt, SamplingParams(max_new_tokens=n))]


def run_staggered(engine, sched, lengths, gap=0.01):
    sched.start()
    cols = []
    try:
        for p, n in zip(PROMPTS, lengths):
            c = Collector()
            sched.submit(ServeRequest(p, SamplingParams(max_new_tokens=n), c))
            cols.append(c)
            if len(cols) == 1:  # the rest join a batch that is already decoding, however fast a step is
                deadline = time.monotonic() + 30
                while len(c.tokens) < 2 and not c.done.is_set() and time.monotonic() < deadline:
                    time.sleep(0.001)
            else:
                time.sleep(gap)
        for c in cols:
            assert c.done.wait(60)
    finally:
        sched.stop(timeout=5)
    return cols


@pytest.mark.parametrize("backend", ["torch", "paged"])
def test_joining_and_leaving_requests_keep_their_greedy_tokens(tiny, backend):
    net, cfg = tiny
    kw = dict(backend="triton", paged_ops="torch") if backend == "paged" else {}
    engine = Engine(net, cfg, device="cpu", max_seq_len=128, **kw)
    lengths = [40, 3, 9, 15, 1, 6]
    want = [alone(engine, p, n) for p, n in zip(PROMPTS, lengths)]
    m = Metrics("t")
    sched = Scheduler(engine, max_batch=4, max_queue=8, metrics=m)
    cols = run_staggered(engine, sched, lengths)
    assert [c.tokens for c in cols] == want
    assert all(c.end[0] == "end" and c.end[1] == "length" for c in cols)
    assert m.decode_steps > 0 and m.decode_rows > m.decode_steps  # rows really were decoded together
    if backend == "paged":  # every finished row gave its blocks back
        pool = sched.cache.pool
        assert len(pool.free) == pool.num_blocks


def test_cancel_retires_within_a_step_and_frees_the_slot(tiny):
    net, cfg = tiny
    engine = Engine(net, cfg, device="cpu", max_seq_len=4096)
    sched = Scheduler(engine, max_batch=2, max_queue=1)
    long_ = Collector()
    req = ServeRequest([5, 6, 7], SamplingParams(max_new_tokens=3000), long_)
    sched.start()
    try:
        sched.submit(req)
        while len(long_.tokens) < 3:
            time.sleep(0.005)
        req.cancel()
        assert long_.done.wait(10)
        n_at_end = len(long_.tokens)
        assert long_.end[1] == "cancelled" and n_at_end < 3000
        time.sleep(0.1)
        assert len(long_.tokens) == n_at_end  # nothing after the end
        assert sched.batch_size == 0 and len(sched.free_slots) == 2
    finally:
        sched.stop(timeout=5)


def test_queue_full_and_stop_cancels_in_flight(tiny):
    net, cfg = tiny
    engine = Engine(net, cfg, device="cpu", max_seq_len=4096)
    sched = Scheduler(engine, max_batch=1, max_queue=1)
    a, b = Collector(), Collector()
    sched.submit(ServeRequest([5], SamplingParams(max_new_tokens=3000), a))
    sched.submit(ServeRequest([6], SamplingParams(max_new_tokens=3000), b))
    with pytest.raises(QueueFull):
        sched.submit(ServeRequest([7], SamplingParams(max_new_tokens=3), Collector()))
    sched.start()
    while not a.tokens:
        time.sleep(0.005)
    t = time.monotonic()
    sched.stop(timeout=0.2)  # a cannot finish 3000 tokens in 0.2 s: it is cancelled, b never starts
    assert time.monotonic() - t < 5
    assert a.end[1] == "cancelled" and b.end[1] == "cancelled" and not b.tokens


def test_speculative_request_moves_into_the_batch_when_another_arrives():
    """angel-tiny with its shipped draft: a lone request speculates; a newcomer makes it migrate to a batch
    slot (prompt + tokens so far prefilled again) and both keep their greedy tokens."""
    from angelcli.runtime import open_runtime

    rt = open_runtime(None, device="cpu", use_draft=True)
    engine = rt.engine
    assert engine.speculator is not None
    prompts, n = [[5, 9, 100, 7, 12], [33, 44, 55]], 40
    plain = Engine(rt.model, rt.cfg, device="cpu")
    want = [[s.token_id for s in plain.generate(p, SamplingParams(max_new_tokens=n))] for p in prompts]
    m = Metrics("t")
    sched = Scheduler(engine, max_batch=4, max_queue=4, metrics=m)
    a, b = Collector(), Collector()
    sched.start()
    try:
        sched.submit(ServeRequest(prompts[0], SamplingParams(max_new_tokens=n), a))
        while len(a.tokens) < 10:
            time.sleep(0.002)
        assert sched.spec is not None
        sched.submit(ServeRequest(prompts[1], SamplingParams(max_new_tokens=n), b))
        assert a.done.wait(60) and b.done.wait(60)
    finally:
        sched.stop(timeout=5)
    assert [a.tokens, b.tokens] == want
    assert m.spec_passes > 0 and m.decode_rows > m.decode_steps


def test_fixed_kv_budget_admits_what_fits_and_refuses_what_never_can(tiny):
    """A paged pool with a fixed budget (the planner's kv_tokens on a GPU): requests wait until their
    prompt + max_tokens fit beside the running ones, and one larger than the whole budget is refused."""
    net, cfg = tiny
    engine = Engine(net, cfg, device="cpu", max_seq_len=256, backend="triton", paged_ops="torch", kv_tokens=64)
    sched = Scheduler(engine, max_batch=4, max_queue=8)
    assert sched.kv_capacity == 64
    with pytest.raises(TooLong):
        sched.submit(ServeRequest([5] * 10, SamplingParams(max_new_tokens=100), Collector()))
    cols = [Collector() for _ in range(3)]
    want = [alone(engine, [5 + i, 9, 11], 20) for i in range(3)]
    sched.start()
    try:
        for i, c in enumerate(cols):  # 3 x 32 tokens > 64: the third waits for a finished row
            sched.submit(ServeRequest([5 + i, 9, 11], SamplingParams(max_new_tokens=20), c))
        for c in cols:
            assert c.done.wait(60)
    finally:
        sched.stop(timeout=5)
    assert [c.tokens for c in cols] == want and sched.kv_reserved == 0
    assert len(sched.cache.pool.free) == sched.cache.pool.num_blocks
