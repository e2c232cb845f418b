"""Batched log-likelihood of continuations on angel's engine (token ids in, log-probabilities out).

    scores = loglikelihoods(engine, [(context_ids, continuation_ids), ...])   # -> [(logprob, is_greedy)]

The value for one request is what a single teacher-forced forward of `context + continuation` gives
(engine.score): the sum over continuation tokens of log_softmax(logits at the previous position)[token],
and whether every continuation token is the argmax there (lm-eval's is_greedy). Batching only changes how
many forwards compute it:

* requests whose forward input is the same sequence are computed once (a multiple-choice question whose
  options are one token each, " A" / " B" / ..., needs a single forward of its context: the option
  log-probabilities are all read from the last position);
* distinct sequences are right-padded to the longest in the batch and run as one [B, T] forward with a
  fresh cache. Attention is causal, so a row's positions never see the padding that follows them, and MoE
  routing is per token: each row's logits are those of its own forward (tests compare with engine.score);
* only the positions that are scored get the vocabulary projection (torch backend: logits_mask; the triton
  backend's paged runner projects every position, so its batches are capped at ~2 GiB of fp32 logits);
* long sequences run in chunks of the engine's prefill_chunk, like prefill.

The one way a batched score can differ from the single forward beyond rounding: the batch's matmul shapes
change the last bits of the router scores, and a token whose top-k experts are nearly tied may then route
differently (measured once in 240 options on angel-tiny, 5e-3 nats; docs/eval.md). max_batch=1 avoids it.

Contexts longer than the engine's max_seq_len are cut from the left, as lm-eval's HF model does.
With tensor parallelism the work goes through engine.score, one sequence at a time (the workers mirror it).
"""

from __future__ import annotations

from typing import Callable

import torch

FULL_LOGITS_BYTES = 2 << 30


def _plan(requests: list[tuple[list[int], list[int]]], max_len: int):
    """-> (unique input sequences, per request (sequence index, continuation ids), truncated count)."""
    seqs: dict[tuple[int, ...], int] = {}
    need: list[int] = []  # per sequence: how many trailing positions are scored (max over its requests)
    plan = []
    truncated = 0
    for ctx, cont in requests:
        if not cont:
            raise ValueError("empty continuation")
        if not ctx:
            raise ValueError("empty context: prefix a start token (lm-eval uses its prefix_token_id)")
        full = list(ctx) + list(cont)
        inp = tuple(full[:-1])
        if len(inp) > max_len:
            inp = inp[-max_len:]
            truncated += 1
        n = min(len(cont), len(inp))  # a continuation longer than the window is scored on what fits
        j = seqs.setdefault(inp, len(seqs))
        if j == len(need):
            need.append(n)
        need[j] = max(need[j], n)
        plan.append((j, list(cont)[-n:]))
    return list(seqs), need, plan, truncated


def _batches(seqs: list[tuple[int, ...]], batch_tokens: int, max_batch: int) -> list[list[int]]:
    """Sequence indices grouped longest first so that B x T_max stays within batch_tokens."""
    order = sorted(range(len(seqs)), key=lambda i: -len(seqs[i]))
    out, cur = [], []
    for i in order:
        tmax = len(seqs[cur[0]]) if cur else len(seqs[i])
        if cur and ((len(cur) + 1) * tmax > batch_tokens or len(cur) >= max_batch):
            out.append(cur)
            cur = []
        cur.append(i)
    if cur:
        out.append(cur)
    return out


@torch.inference_mode()
def _forward_batch(engine, rows: list[tuple[int, ...]], need: list[int]) -> list[torch.Tensor]:
    """Right-padded batch forward -> per row the fp32 logits of its last need[r] positions, [need[r], V]."""
    B, T = len(rows), max(len(r) for r in rows)
    dev = engine.device
    ids = torch.zeros(B, T, dtype=torch.long)
    mask = torch.zeros(B, T, dtype=torch.bool)
    for b, r in enumerate(rows):
        ids[b, : len(r)] = torch.tensor(r, dtype=torch.long)
        mask[b, len(r) - need[b] : len(r)] = True
    ids, mask = ids.to(dev), mask.to(dev)
    cache = engine.new_cache(B, T)
    parts, where = [], []
    try:
        for a in range(0, T, engine.prefill_chunk):
            tc, mc = ids[:, a : a + engine.prefill_chunk], mask[:, a : a + engine.prefill_chunk]
            if engine.backend == "torch":
                logits = engine.net(tc, cache, logits_mask=mc).logits  # [N, V], N = mc.sum()
            else:
                logits = engine.net(tc, cache).logits[mc]
            if logits.shape[0]:
                parts.append(logits.float())
                where.append(mc.nonzero()[:, 0])
    finally:
        cache.reset()
    flat, row_of = torch.cat(parts), torch.cat(where)  # chunk-major; positions ascend within each row
    return [flat[row_of == b] for b in range(B)]


def _logits_tp(engine, seq: tuple[int, ...], n: int) -> torch.Tensor:
    return engine.score(list(seq))[-n:].float()


def loglikelihoods(engine, requests: list[tuple[list[int], list[int]]], *, batch_tokens: int = 8192,
                   max_batch: int = 64, on_progress: Callable[[int], None] | None = None
                   ) -> list[tuple[float, bool]]:
    """[(context ids, continuation ids)] -> [(sum of continuation log-probs, is_greedy)], in request order.

    on_progress(k) is called after each batch with the number of requests it completed."""
    seqs, need, plan, _ = _plan(requests, engine.max_seq_len)
    if engine.backend != "torch":  # the paged runner projects every position: keep [B*T, V] fp32 near 2 GiB
        batch_tokens = min(batch_tokens, max(512, FULL_LOGITS_BYTES // (4 * engine.cfg.vocab_size)))
    by_seq: dict[int, list[int]] = {}
    for r, (j, _) in enumerate(plan):
        by_seq.setdefault(j, []).append(r)
    out: list[tuple[float, bool] | None] = [None] * len(requests)
    for group in _batches(seqs, max(1, batch_tokens), max(1, max_batch)):
        if engine.tp is not None:
            logits = [_logits_tp(engine, seqs[j], need[j]) for j in group]
        else:
            logits = _forward_batch(engine, [seqs[j] for j in group], [need[j] for j in group])
        done = 0
        for j, lg in zip(group, logits):
            logp = torch.log_softmax(lg, dim=-1)  # [need, V]
            greedy = lg.argmax(dim=-1)
            for r in by_seq[j]:
                cont = plan[r][1]
                n = len(cont)
                tgt = torch.tensor(cont, device=logp.device)
                rows = logp[-n:]
                lp = float(rows.gather(1, tgt[:, None]).sum())
                out[r] = (lp, bool((greedy[-n:] == tgt).all()))
                done += 1
        if on_progress is not None:
            on_progress(done)
    return out  # type: ignore[return-value]


def truncated_count(requests: list[tuple[list[int], list[int]]], max_len: int) -> int:
    return _plan(requests, max_len)[3]
