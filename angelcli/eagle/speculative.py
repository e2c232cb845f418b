"""Speculative decoding inside angel's engine: chain drafting, verification, KV rollback (spec eagle3.md §3).

One round, for a batch of B sequences that all hold n tokens in the target cache (the last emitted token x
is not in it yet):
    1. the drafter proposes k tokens d1..dk (chain: each from the previous draft step);
    2. the target runs once over [x, d1..dk] at positions n..n+k, capturing its aux features;
    3. verification accepts a prefix d1..dm and picks one more token y (the correction, or the bonus after
       all k): greedy = longest prefix equal to the target argmax; sampling = the lossless rejection rule;
    4. the target cache is trimmed by k-m (rejected tokens leave no trace) and the drafter drops its own
       speculative entries, then re-extends itself with the *target's* features of x, d1..dm.
The round emits m+1 tokens from one target pass; tau (mean acceptance length) = emitted / passes.

Batches run in lockstep so one KVCache length fits all rows: the round keeps m = min over rows. A row that
accepted more emits its own accepted draft token at position m, which is already a token the rule produced
for that row, so outputs stay exactly those of per-row decoding (greedy) or of the target distribution
(sampling); only some acceptance is given up. Prompts of a batch must have equal length (the torch cache has
one length for all rows).

The target is driven through its forward contract (model(ids, cache, capture_layers=...) -> logits, hidden)
and the cache's trim(n): any backend whose model and cache honour those two runs speculative decoding.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Iterator

import torch

from angelcli.eagle.tree import TreeView, greedy_walk, propose_tree, tree_capacity, tree_mask, tree_supported
from angelcli.engine.engine import GenerationStats, StepOutput
from angelcli.engine.sampling import SamplingParams, filter_logits, make_generator, step_logprobs
from angelcli.errors import UsageError

DEFAULT_K = 3
DEFAULT_TOPK = 4  # tree drafting in `generate`, `chat`, `serve` and `draft-eval` (eagle/tree.py)


def default_draft_tokens(k: int, topk: int) -> int:
    """Tree nodes verified per round unless --draft-tokens says: 8 at k = 3 (SGLang's default node count),
    2k + 2 for deeper trees; the chain's k when topk is 1."""
    return k if topk == 1 else min(max(8, 2 * k + 2), tree_capacity(k, topk))


@dataclass
class SpecStats(GenerationStats):
    k: int = 0
    topk: int = 1  # > 1: the rounds drafted trees of draft_tokens nodes
    draft_tokens: int = 0
    verify_passes: int = 0  # target forwards after the prefill
    round_tokens: int = 0  # tokens those passes produced (accepted drafts + one each)
    drafted: int = 0
    accepted: int = 0
    reached: list[int] = field(default_factory=list)  # per draft position: rounds that examined it
    accepted_at: list[int] = field(default_factory=list)  # per draft position: rounds that accepted it

    @property
    def mean_acceptance_length(self) -> float:
        return self.round_tokens / self.verify_passes if self.verify_passes else 0.0

    def per_position(self) -> list[float]:
        """alpha_j = P(draft token j accepted | tokens before it accepted)."""
        return [a / r if r else 0.0 for a, r in zip(self.accepted_at, self.reached)]

    def to_dict(self) -> dict:
        d = super().to_dict()
        d["speculative"] = {
            "k": self.k, "topk": self.topk, "draft_tokens": self.draft_tokens,
            "mean_acceptance_length": round(self.mean_acceptance_length, 4),
            "verify_passes": self.verify_passes, "drafted": self.drafted, "accepted": self.accepted,
            "per_position_acceptance": [round(x, 4) for x in self.per_position()],
        }
        return d


# ---- verification rules (pure functions; tests check them analytically) ---------------------------------

def greedy_accept(target_logits: torch.Tensor, draft: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """target_logits [B, k+1, V], draft [B, k] -> (accepted count m [B], target argmax [B, k+1])."""
    best = target_logits.argmax(-1)
    k = draft.shape[1]
    match = (draft == best[:, :k]).long()
    return match.cumprod(1).sum(1), best


def accept_probability(p: torch.Tensor, q: torch.Tensor | None, x: torch.Tensor) -> torch.Tensor:
    """min(1, p(x) / q(x)); q None = the draft was deterministic (a point mass at x, q(x) = 1).
    p, q [..., V], x [...] -> [...]."""
    px = p.gather(-1, x[..., None]).squeeze(-1)
    if q is None:
        return px.clamp(max=1.0)
    qx = q.gather(-1, x[..., None]).squeeze(-1)
    return torch.where(qx > 0, (px / qx.clamp(min=1e-30)).clamp(max=1.0), torch.ones_like(px))


def residual_distribution(p: torch.Tensor, q: torch.Tensor | None, x: torch.Tensor) -> torch.Tensor:
    """Where to sample after rejecting x: normalise(max(0, p - q)); point-mass q means p with x removed.
    When nothing is left (p == q, so rejection had probability 0) it falls back to p."""
    if q is None:
        r = p.scatter(-1, x[..., None], 0.0)
    else:
        r = (p - q).clamp(min=0.0)
    total = r.sum(-1, keepdim=True)
    return torch.where(total > 0, r / total.clamp(min=1e-30), p)


def rejection_verify(p: torch.Tensor, draft: torch.Tensor, q: torch.Tensor | None,
                     gen: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Lossless speculative sampling (Leviathan et al.). p [B, k+1, V] target probabilities (after
    temperature / top-k / top-p), draft [B, k], q [B, k, V] draft probabilities or None (deterministic draft).
    -> (accepted count m [B], y [B]: the token for position m, drawn from the residual at the first rejection
    or from p[:, k] when all k were accepted)."""
    B, k = draft.shape
    rows = torch.arange(B, device=p.device)
    if k:
        acc_p = accept_probability(p[:, :k], q, draft)
        u = torch.rand(acc_p.shape, generator=gen, device=p.device, dtype=acc_p.dtype)
        m = (u < acc_p).long().cumprod(1).sum(1)
    else:
        m = torch.zeros(B, dtype=torch.long, device=p.device)
    p_at = p[rows, m]
    dist = p_at
    rejected = m < k
    if bool(rejected.any()):
        j = m.clamp(max=k - 1)
        res = residual_distribution(p_at, None if q is None else q[rows, j], draft[rows, j])
        dist = torch.where(rejected[:, None], res, p_at)
    y = torch.multinomial(dist.float(), 1, generator=gen).squeeze(-1)
    return m, y


def target_probs(logits: torch.Tensor, params: SamplingParams) -> torch.Tensor:
    """Raw logits [..., V] -> the distribution plain sampling draws from (temperature, top-k, top-p)."""
    shape = logits.shape
    flat = filter_logits(logits.reshape(-1, shape[-1]).float() / params.temperature, params.top_k, params.top_p)
    return flat.softmax(-1).reshape(shape)


# ---- drafters -------------------------------------------------------------------------------------------

class Eagle3Drafter:
    """Drives an Eagle3Draft with its own one-layer KV cache.

    Draft cache entry t holds (target feature of position t, embedding of token t+1) at RoPE position t: the
    "stable" entries, built only from target features. A proposal first extends the cache with pending
    target features, then chains k-1 more steps on its own hidden state; those speculative entries are
    trimmed at commit (vLLM PR #14464: draft-fed entries must not survive).
    """

    def __init__(self, draft):
        self.draft = draft
        self.aux_layers = tuple(draft.config.aux_layers)
        self.cache = None
        self.pending: tuple[torch.Tensor, torch.Tensor] | None = None
        self.speculative = 0

    def start(self, prompt: torch.Tensor, features: torch.Tensor, first: torch.Tensor, max_len: int) -> None:
        """prompt [B, T], features [B, T, 3Ht] (target, prompt positions), first [B] = first emitted token."""
        self.cache = self.draft.new_cache(prompt.shape[0], max_len)
        self.pending = (features, torch.cat([prompt[:, 1:], first[:, None]], 1))
        self.speculative = 0

    def _pick(self, logits: torch.Tensor, params: SamplingParams, gen):
        """Draft logits [B, Vd] -> (target ids [B], q [B, V] or None)."""
        d = self.draft
        if params.greedy:
            return d.to_target_ids(logits.argmax(-1)), None
        qd = filter_logits(logits / params.temperature, params.top_k, params.top_p).softmax(-1)
        pick = torch.multinomial(qd, 1, generator=gen).squeeze(-1)
        return d.to_target_ids(pick), d.scatter_to_target(qd)

    @torch.inference_mode()
    def propose(self, k: int, params: SamplingParams, gen=None):
        """-> (draft tokens [B, k] target ids, q [B, k, V] or None)."""
        feats, toks = self.pending
        B = toks.shape[0]
        if k == 0:
            return toks.new_zeros(B, 0), None
        d, cache = self.draft, self.cache
        feats = feats.to(d.fc.weight.dtype)
        pos = torch.arange(cache.seq_len, cache.seq_len + toks.shape[1], device=toks.device).expand(B, -1)
        _, h = d(toks, d.fuse(feats), pos, cache, head=False)  # the head only where a token is proposed
        self.pending = (feats[:, :0], toks[:, :0])
        out, qs = [], []
        h = h[:, -1:]
        logits = d.logits(h)[:, -1]
        for j in range(k):
            tok, q = self._pick(logits, params, gen)
            out.append(tok)
            qs.append(q)
            if j + 1 < k:
                pos = torch.full((B, 1), cache.seq_len, device=toks.device)
                logits, h = d(tok[:, None], h, pos, cache)
                logits = logits[:, -1]
        self.speculative = k - 1
        return torch.stack(out, 1), (None if qs[0] is None else torch.stack(qs, 1))

    def commit(self, features: torch.Tensor, tokens: torch.Tensor) -> None:
        """Accepted positions: target features [B, m+1, 3Ht] of x, d1..dm and the tokens d1..dm, y."""
        self.cache.trim(self.speculative)
        self.speculative = 0
        feats, toks = self.pending
        self.pending = (torch.cat([feats.to(features.dtype), features], 1), torch.cat([toks, tokens], 1))


# ---- the engine -----------------------------------------------------------------------------------------

class SpeculativeEngine:
    """Speculative generation on top of an Engine (its `net` forward, `new_cache`, limits). Engine.generate
    delegates here once a draft is attached (Engine.attach_draft); generate() has the same contract and
    its SpecStats land in the engine's last_stats too. Other attributes read through to the engine."""

    def __init__(self, engine, drafter, k: int = DEFAULT_K, topk: int = 1, draft_tokens: int | None = None):
        """k: draft depth per verification. topk > 1: greedy single-sequence rounds draft a tree (eagle/tree.py)
        with `topk` candidates per node and the `draft_tokens` best nodes verified (default_draft_tokens);
        topk 1 is the chain."""
        if k < 1:
            raise UsageError("--k must be >= 1 (draft tokens per verification)")
        if topk < 1:
            raise UsageError(f"--draft-topk must be >= 1, got {topk}")
        most = tree_capacity(k, topk)
        n = draft_tokens if draft_tokens is not None else default_draft_tokens(k, topk)
        if topk > 1 and not k <= n <= most:
            raise UsageError(f"--draft-tokens must be in {k}..{most} for a depth-{k} tree with {topk} candidates "
                             f"per node, got {n}")
        from angelcli.eagle.model import Eagle3Draft

        if isinstance(drafter, Eagle3Draft):
            drafter = Eagle3Drafter(drafter)
        self.base, self.drafter, self.k = engine, drafter, k
        self.topk, self.draft_tokens = topk, (n if topk > 1 else k)
        self.last_stats = SpecStats(k=k)

    def __getattr__(self, name):
        return getattr(self.base, name)

    @torch.inference_mode()
    def _forward(self, ids: torch.Tensor, cache, last_only: bool):
        aux = tuple(self.drafter.aux_layers)
        out = self.base.net(ids, cache, capture_layers=aux, last_only=last_only)
        feats = torch.cat([out.hidden[i] for i in aux], -1) if aux else None
        return out.logits, feats

    def _rounds(self, prompts: torch.Tensor, params: SamplingParams, budget: int, stats: SpecStats,
                gen) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Yield (tokens [B, j], target logits [B, j, V]) as they are decided; at most `budget` tokens."""
        B, T = prompts.shape
        cache = self.base.new_cache(B, T + budget + 1 + self.draft_tokens)  # a tree writes all its nodes first
        try:
            yield from self._decode(cache, prompts, params, budget, stats, gen)
        finally:
            cache.reset()  # paged caches give their blocks back at once

    def _decode(self, cache, prompts, params, budget, stats, gen):
        B, T = prompts.shape
        chunk = getattr(self.base, "prefill_chunk", T) or T  # long prompts in pieces, as Engine.prefill does
        parts = [self._forward(prompts[:, a : a + chunk], cache, last_only=True) for a in range(0, T, chunk)]
        logits = parts[-1][0][:, -1]
        feats = torch.cat([f for _, f in parts], 1) if parts[0][1] is not None else None
        first = self._choose(logits, params, gen)
        yield first[:, None], logits[:, None]
        produced, last = 1, first
        extra = self.k * self.topk if self.topk > 1 else 0  # the draft's tree entries until commit
        self.drafter.start(prompts, feats, first, T + budget + 1 + extra)
        tree = self.topk > 1 and params.greedy and isinstance(self.drafter, Eagle3Drafter) and tree_supported(cache)
        stats.topk, stats.draft_tokens = (self.topk, self.draft_tokens) if tree else (1, self.k)
        while produced < budget:
            kk = min(self.k, budget - produced - 1)
            if tree and kk:
                m_rows, emitted, kept, drafted = self._tree_round(cache, last, kk)
            else:
                m_rows, emitted, kept, drafted = self._chain_round(cache, last, kk, params, gen)
            m = emitted.shape[1] - 1
            stats.verify_passes += 1
            stats.round_tokens += m + 1
            stats.drafted += drafted
            stats.accepted += m
            for j in range(kk):  # per-position verification outcomes of every row give alpha_j
                stats.reached[j] += int((m_rows >= j).sum())
                stats.accepted_at[j] += int((m_rows > j).sum())
            produced += m + 1
            last = emitted[:, -1]
            yield emitted, kept

    def _chain_round(self, cache, last: torch.Tensor, kk: int, params: SamplingParams, gen):
        """One chain round for the batch -> (accepted per row m_rows [B], emitted [B, m+1] with m = min(m_rows),
        target logits of the emitted tokens [B, m+1, V], draft tokens verified)."""
        draft, q = self.drafter.propose(kk, params, gen)
        logits, feats = self._forward(torch.cat([last[:, None], draft], 1), cache, last_only=False)
        if params.greedy:
            m_rows, best = greedy_accept(logits, draft)
            m = int(m_rows.min())
            y = best[:, m]
        else:
            m_rows, y_rows = rejection_verify(target_probs(logits, params), draft, q, gen)
            m = int(m_rows.min())
            y = torch.where(m_rows > m, draft[:, min(m, kk - 1)] if kk else y_rows, y_rows)
        cache.trim(kk - m)
        emitted = torch.cat([draft[:, :m], y[:, None]], 1)
        self.drafter.commit(feats[:, : m + 1] if feats is not None else None, emitted)
        return m_rows, emitted, logits[:, : m + 1], kk

    def _tree_round(self, cache, last: torch.Tensor, kk: int):
        """One greedy tree round for one row -> (accepted m as a [1] tensor, emitted [1, m+1], target logits
        of the emitted tokens [1, m+1, V], tree nodes verified)."""
        t = propose_tree(self.drafter, kk, self.topk, min(self.draft_tokens, tree_capacity(kk, self.topk)))
        past = cache.seq_len
        view = TreeView(cache, [0, *t.depths], tree_mask(t.parents, cache.device))
        logits, feats = self._forward(torch.cat([last, t.tokens])[None], view, last_only=False)
        best = logits[0].argmax(-1)
        path = greedy_walk(t.parents, t.tokens.tolist(), best.tolist())
        keep = [0, *(p + 1 for p in path)]
        cache.compact(past, keep)
        emitted = torch.cat([t.tokens[path], best[keep[-1]][None]])[None]
        self.drafter.commit(feats[:, keep] if feats is not None else None, emitted)
        return torch.tensor([len(path)]), emitted, logits[:, keep], len(t.parents)

    @staticmethod
    def _choose(logits: torch.Tensor, params: SamplingParams, gen) -> torch.Tensor:
        if params.greedy:
            return logits.argmax(-1)
        return torch.multinomial(target_probs(logits, params), 1, generator=gen).squeeze(-1)

    def _prepare(self, n_prompt: int, params: SamplingParams) -> tuple[int, SpecStats]:
        budget = min(params.max_new_tokens, self.base.max_seq_len - n_prompt)
        if budget <= 0 and n_prompt >= self.base.max_seq_len:
            raise UsageError(f"prompt of {n_prompt} tokens does not fit max sequence length {self.base.max_seq_len}")
        stats = SpecStats(prompt_tokens=n_prompt, k=self.k, reached=[0] * self.k, accepted_at=[0] * self.k)
        self.last_stats = self.base.last_stats = stats
        return budget, stats

    def generate(self, prompt_ids: list[int], params: SamplingParams) -> Iterator[StepOutput]:
        """Same contract as Engine.generate (one StepOutput per token, finish_reason on the last)."""
        self.base.check_prompt(prompt_ids)
        start = time.perf_counter()
        budget, stats = self._prepare(len(prompt_ids), params)
        if budget <= 0:
            return
        gen = make_generator(params.seed, self.base.device)
        stop = set(params.stop_ids)
        prompt = torch.as_tensor([prompt_ids], dtype=torch.long, device=self.base.device)
        n, first_at = 0, None
        for tokens, logits in self._rounds(prompt, params, budget, stats, gen):
            lp, top_v, top_i = step_logprobs(logits[0], tokens[0], params.logprobs)
            now = time.perf_counter()
            if first_at is None:
                first_at = now
                stats.time_to_first_token = now - start
            for j, tid in enumerate(tokens[0].tolist()):
                n += 1
                stats.generated_tokens = n
                stats.total_time = now - start
                if n > 1:
                    stats.decode_tokens_per_s = (n - 1) / max(now - first_at, 1e-9)
                finish = "stop" if tid in stop else ("length" if n == budget else None)
                top = list(zip(top_i[j].tolist(), top_v[j].tolist())) if top_i is not None else []
                yield StepOutput(tid, float(lp[j]), top, finish)
                if finish:
                    return

    def generate_lockstep(self, prompts: list[list[int]], params: SamplingParams) -> list[list[int]]:
        """Equal-length prompts speculated together in lockstep; each row stops at its own stop id or the
        budget. Returns the token ids per row (stats in last_stats)."""
        if not prompts or len({len(p) for p in prompts}) != 1:
            raise UsageError("generate_lockstep: prompts must be non-empty and of equal length")
        for p in prompts:
            self.base.check_prompt(p)
        start = time.perf_counter()
        budget, stats = self._prepare(len(prompts[0]), params)
        outs: list[list[int]] = [[] for _ in prompts]
        if budget <= 0:
            return outs
        gen = make_generator(params.seed, self.base.device)
        stop = set(params.stop_ids)
        done = [False] * len(prompts)
        ids = torch.as_tensor(prompts, dtype=torch.long, device=self.base.device)
        for tokens, _ in self._rounds(ids, params, budget, stats, gen):
            for r, row in enumerate(tokens.tolist()):
                for tid in row:
                    if done[r]:
                        break
                    outs[r].append(tid)
                    done[r] = tid in stop or len(outs[r]) >= budget
            if all(done):
                break
        stats.generated_tokens = sum(len(o) for o in outs)
        stats.total_time = time.perf_counter() - start
        return outs
