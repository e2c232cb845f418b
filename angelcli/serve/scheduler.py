"""Continuous batching over the engine's prefill / decode_step: requests join between decode steps.

    sched = Scheduler(engine, max_batch=16, max_queue=64, metrics=m)
    sched.start()                                   # one thread drives the engine
    sched.submit(req)                               # ServeRequest(prompt_ids, params, emit)
    req.cancel()                                    # retired before the next decode step
    sched.stop(timeout=10)                          # no more admissions; in-flight finish, then cancelled

One cache of `max_batch` rows lives for the server's lifetime; each running request owns one row ("slot").
A loop iteration: retire cancelled rows, admit waiting requests into free slots (each prompt prefilled
through its own one-row view, its first token sampled at once), then one decode step over every live row
(`cache.rows(live)`). A finished row is reset at once, which gives a paged cache's blocks back to the pool.
A request alone in the batch decodes through a one-row contiguous view: the very ops `angel generate` runs,
so its greedy tokens are those of `angel generate`; among others it takes the engine's ragged-batch path,
whose greedy tokens the tests compare with the sequential ones.

Events go to `req.emit(event)`: ("token", StepOutput) for each token (the last carries finish_reason), then
("end", finish_reason, stats dict) once; ("error", message) if the engine failed. finish_reason: stop |
length | cancelled | error. Without `post` they are emitted from this thread as they come; with
`post(batch)` (the HTTP server's: one hop to its event loop) each loop iteration hands over all of its
[(request, event)] at once, so a batch of B rows costs one wake-up of the loop per step, not B.

Speculative decoding: with a draft attached and one request alone (nothing running, nothing waiting), it
runs through engine.speculator.generate (chain drafting + verification, identical greedy output). When
another request arrives, the speculative run is closed and the request moves into a slot (its prompt and
tokens so far prefilled again), so the newcomer waits at most one verification round.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Callable

import torch

from angelcli.engine.sampling import SamplingParams, make_generator, sample, step_logprobs
from angelcli.errors import AngelError

FINISHED = ("stop", "length")


class QueueFull(Exception):
    """More requests waiting than --max-queue (HTTP 503)."""


class TooLong(Exception):
    """Prompt + max_tokens exceed the whole KV budget: it could never be admitted (HTTP 400)."""


class NotAccepting(Exception):
    """The server is shutting down (HTTP 503)."""


@dataclass
class ServeRequest:
    prompt_ids: list[int]
    params: SamplingParams  # stop_ids included
    emit: Callable[[tuple], None]
    rid: str = ""
    logprobs: bool = False  # the chosen token's logprob is wanted (top-k ones come with params.logprobs)
    cancelled: bool = False
    generated: list[int] = field(default_factory=list)
    arrived: float = field(default_factory=time.perf_counter)
    first_token_at: float | None = None
    done: bool = False
    _wake: Callable[[], None] | None = None

    def cancel(self) -> None:
        """Thread-safe: the scheduler retires the request before its next decode step."""
        if not self.done:
            self.cancelled = True
            if self._wake is not None:
                self._wake()


@dataclass
class _Active:
    req: ServeRequest
    budget: int  # tokens this request may generate
    last: int  # the newest token, not yet in the cache
    gen: torch.Generator | None


class Scheduler:
    def __init__(self, engine, *, max_batch: int = 16, max_queue: int = 64, metrics=None, speculate: bool = True,
                 post: Callable[[list], None] | None = None):
        self.engine, self.metrics, self.post = engine, metrics, post
        self._out: list[tuple[ServeRequest, tuple]] = []
        self.max_batch, self.max_queue = max(1, max_batch), max(0, max_queue)
        self.max_len = engine.max_seq_len
        self.cache = engine.new_cache(self.max_batch, self.max_len)
        self.free_slots = list(range(self.max_batch - 1, -1, -1))
        self.running: dict[int, _Active] = {}
        self.pending: deque[ServeRequest] = deque()
        self.cond = threading.Condition()
        self.accepting, self._stop = True, False
        self.speculator = getattr(engine, "speculator", None) if speculate else None
        self.spec: tuple[ServeRequest, object, int] | None = None  # (request, generator, budget)
        pool = getattr(self.cache, "pool", None)
        # A fixed paged pool (a GPU KV budget) admits a request only when its whole budget fits.
        self.kv_capacity = None if pool is None or pool.growable else pool.capacity_tokens
        self.block = pool.block_size if pool is not None else 1
        self.kv_reserved = 0
        self.thread = threading.Thread(target=self._loop, name="angel-scheduler", daemon=True)

    # ---- called from the server's threads ----
    def budget_for(self, prompt_ids: list[int], params: SamplingParams) -> int:
        return min(params.max_new_tokens, self.max_len - len(prompt_ids))

    def kv_need(self, prompt_ids: list[int], params: SamplingParams) -> int:
        n = len(prompt_ids) + self.budget_for(prompt_ids, params)
        return -(-n // self.block) * self.block

    def submit(self, req: ServeRequest) -> None:
        if self.kv_capacity is not None and self.kv_need(req.prompt_ids, req.params) > self.kv_capacity:
            raise TooLong(f"prompt + max_tokens need {self.kv_need(req.prompt_ids, req.params)} tokens of KV cache; "
                          f"the server's whole KV budget is {self.kv_capacity}")
        with self.cond:
            if not self.accepting:
                raise NotAccepting("the server is shutting down")
            # waiting beyond the free batch slots is the queue; --max-queue bounds it
            if len(self.pending) >= self.max_queue + max(0, self.max_batch - self.batch_size):
                raise QueueFull(f"{len(self.pending)} requests are waiting (--max-queue {self.max_queue})")
            req._wake = self.wake
            self.pending.append(req)
            self._gauges()
            self.cond.notify()

    def wake(self) -> None:
        with self.cond:
            self.cond.notify()

    def start(self) -> None:
        self.thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        """Stop admitting; let running requests finish for up to `timeout` s, then cancel the rest."""
        with self.cond:
            self.accepting = False
            for r in self.pending:
                r.cancelled = True
            self.cond.notify()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and (self.running or self.pending or self.spec):
            time.sleep(0.02)
        with self.cond:
            for a in self.running.values():
                a.req.cancelled = True
            if self.spec:
                self.spec[0].cancelled = True
            self._stop = True
            self.cond.notify()
        self.thread.join(timeout=5)

    @property
    def batch_size(self) -> int:
        return len(self.running) + (self.spec is not None)

    # ---- the scheduler thread ----
    def _gauges(self) -> None:
        if self.metrics is not None:
            self.metrics.set_gauges(queue=len(self.pending), batch=self.batch_size)

    def _loop(self) -> None:
        torch.set_grad_enabled(False)
        while True:
            with self.cond:
                while not (self.pending or self.running or self.spec or self._stop):
                    self.cond.wait()
                if self._stop and not (self.running or self.spec):
                    for r in self.pending:
                        self._end(r, "cancelled")
                    self.pending.clear()
                    self._flush()
                    return
                admit = self._take_admissible()
            try:
                if self.spec is not None:
                    self._spec_step()
                    self._flush()
                    self._gauges()
                    continue
                alone = len(admit) == 1 and not self.running and not self.pending
                for r in admit:
                    self._admit(r, speculate=alone)
                self._retire_cancelled()
                if self.running:
                    self._decode()
            except Exception as err:  # the engine failed: fail every request in flight, keep serving
                msg = str(err) if isinstance(err, AngelError) else f"{type(err).__name__}: {err}"
                for slot in list(self.running):
                    self._retire(slot, "error", msg)
                if self.spec is not None:
                    self._close_spec("error", msg)
            self._flush()
            self._gauges()

    def _take_admissible(self) -> list[ServeRequest]:
        """Waiting requests that fit now (free slot, KV budget), oldest first; cancelled ones are dropped."""
        out = []
        while self.pending:
            r = self.pending[0]
            if r.cancelled:
                self.pending.popleft()
                self._end(r, "cancelled")
                continue
            if self.spec is not None:  # a newcomer ends the speculative run; the loop migrates it first
                break
            if len(self.running) + len(out) >= self.max_batch:
                break
            need = self.kv_need(r.prompt_ids, r.params)
            if self.kv_capacity is not None and self.kv_reserved + need > self.kv_capacity:
                break
            self.kv_reserved += need if self.kv_capacity is not None else 0
            out.append(self.pending.popleft())
        return out

    def _admit(self, req: ServeRequest, speculate: bool = False) -> None:
        budget = self.budget_for(req.prompt_ids, req.params)
        if budget <= 0:
            self._release_kv(req)
            self._end(req, "length")
            return
        if speculate and self.speculator is not None:
            gen = self.speculator.generate(req.prompt_ids, req.params)
            self.spec = (req, gen, budget)
            return
        slot = self.free_slots.pop()
        row = self.cache.row(slot)
        row.reset()
        try:
            logits = self.engine.prefill(req.prompt_ids, row)  # [1, V]
        except Exception as err:  # this request fails alone; the batch goes on
            row.reset()
            self.free_slots.append(slot)
            self._release_kv(req)
            self._end(req, "error", str(err) if isinstance(err, AngelError) else f"{type(err).__name__}: {err}")
            return
        a = _Active(req, budget, -1, make_generator(req.params.seed, self.engine.device))
        self.running[slot] = a
        self._emit_tokens([slot], logits)

    def _retire_cancelled(self) -> None:
        for slot in [s for s, a in self.running.items() if a.req.cancelled]:
            self._retire(slot, "cancelled")

    def _decode(self) -> None:
        live = sorted(self.running)
        tokens = torch.tensor([self.running[s].last for s in live], device=self.engine.device)
        t0 = time.perf_counter()
        logits = self.engine.decode_step(tokens, self.cache.rows(live))  # [b, V]
        if self.metrics is not None:
            self.metrics.step(len(live), time.perf_counter() - t0)
        self._emit_tokens(live, logits)

    def _emit_tokens(self, slots: list[int], logits: torch.Tensor) -> None:
        """Sample one token per row of logits [b, V] (row j belongs to slots[j]) and hand it out."""
        acts = [self.running[s] for s in slots]
        if all(a.req.params.greedy for a in acts):
            ids_t = logits.argmax(dim=-1)
        else:
            ids_t = torch.cat([logits[j : j + 1].argmax(-1) if a.req.params.greedy
                               else sample(logits[j : j + 1], a.req.params, a.gen) for j, a in enumerate(acts)])
        k = max(a.req.params.logprobs for a in acts)
        if k or any(a.req.logprobs for a in acts):
            lp, top_v, top_i = step_logprobs(logits, ids_t, k)
            lp = lp.tolist()
            top_v, top_i = (top_v.tolist(), top_i.tolist()) if k else (None, None)
        else:  # nobody asked for logprobs: skip the log-softmax over the vocabulary
            lp, top_v, top_i = [0.0] * len(acts), None, None
        ids = ids_t.tolist()
        from angelcli.engine.engine import StepOutput

        for j, (slot, a) in enumerate(zip(slots, acts)):
            req, tid = a.req, ids[j]
            req.generated.append(tid)
            kk = req.params.logprobs
            finish = "stop" if tid in req.params.stop_ids else ("length" if len(req.generated) >= a.budget else None)
            self._token(req, StepOutput(tid, float(lp[j]), list(zip(top_i[j][:kk], top_v[j][:kk])) if kk else [],
                                        finish))
            a.last = tid
            if finish is not None:
                self._retire(slot, finish)

    def _token(self, req: ServeRequest, step) -> None:
        if req.first_token_at is None:
            req.first_token_at = time.perf_counter()
        if self.metrics is not None:
            self.metrics.tokens()
        self._send(req, ("token", step))

    def _retire(self, slot: int, reason: str, message: str | None = None) -> None:
        a = self.running.pop(slot)
        self.cache.row(slot).reset()  # paged: the row's blocks go back to the pool now
        self.free_slots.append(slot)
        self._release_kv(a.req)
        self._end(a.req, reason, message)

    def _release_kv(self, req: ServeRequest) -> None:
        if self.kv_capacity is not None:
            self.kv_reserved -= self.kv_need(req.prompt_ids, req.params)

    def _end(self, req: ServeRequest, reason: str, message: str | None = None, spec=None) -> None:
        req.done = True
        now = time.perf_counter()
        stats = {"prompt_tokens": len(req.prompt_ids), "completion_tokens": len(req.generated),
                 "time_to_first_token": (req.first_token_at - req.arrived) if req.first_token_at else None,
                 "total_time": now - req.arrived}
        if spec is not None:
            stats["speculative"] = spec
        if self.metrics is not None:
            self.metrics.finished(reason, stats)
        self._send(req, ("error", message) if reason == "error" else ("end", reason, stats))

    def _send(self, req: ServeRequest, event: tuple) -> None:
        if self.post is None:
            req.emit(event)
        else:
            self._out.append((req, event))

    def _flush(self) -> None:
        if self._out:
            batch, self._out = self._out, []
            self.post(batch)

    # ---- speculative decoding (one request alone) ----
    def _spec_step(self) -> None:
        req, gen, budget = self.spec
        if req.cancelled:
            self._close_spec("cancelled")
            return
        if self.pending and not all(r.cancelled for r in self.pending):
            self._migrate()
            return
        step = next(gen, None)
        if step is None:  # the generator ended without a finish_reason (budget 0)
            self._close_spec("length")
            return
        req.generated.append(step.token_id)
        self._token(req, step)
        if step.finish_reason is not None:
            self._close_spec(step.finish_reason)

    def _spec_stats(self) -> dict | None:
        st = getattr(self.speculator, "last_stats", None)
        if st is None or not getattr(st, "verify_passes", 0):
            return None
        return {"verify_passes": st.verify_passes, "round_tokens": st.round_tokens, "k": st.k}

    def _close_spec(self, reason: str, message: str | None = None) -> None:
        req, gen, _ = self.spec
        gen.close()  # the speculative cache is given back
        self.spec = None
        self._release_kv(req)
        self._end(req, reason, message, spec=self._spec_stats())

    def _migrate(self) -> None:
        """Move the speculative request into a batch slot: its prompt and tokens so far (all but the newest,
        which is the next decode input) are prefilled again."""
        req, gen, budget = self.spec
        gen.close()
        spec = self._spec_stats()
        if spec and self.metrics is not None:
            self.metrics.speculative(spec)
        self.spec = None
        if not req.generated:  # nothing produced yet: start it over in a slot (its KV stays reserved)
            self._admit(req)
            return
        slot = self.free_slots.pop()
        row = self.cache.row(slot)
        row.reset()
        self.engine.prefill(req.prompt_ids + req.generated[:-1], row)
        self.running[slot] = _Active(req, budget, req.generated[-1], make_generator(req.params.seed, self.engine.device))
