"""The engine: token ids in, token ids out. It never imports the tokenizer.

    engine = Engine(model, cfg, device="cpu")
    for step in engine.generate(prompt_ids, SamplingParams(max_new_tokens=32, stop_ids=(eos,))):
        step.token_id, step.logprob, step.top_logprobs, step.finish_reason

The torch backend is the reference (any device). The triton backend and speculative decoding plug in
behind the same methods: `prefill`, `decode_step`, `generate`, and a cache with `trim(n)` for rollback.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Iterator

import torch

from angelcli.config import ModelConfig
from angelcli.engine.kv_cache import KVCache
from angelcli.engine.sampling import SamplingParams, make_generator, sample, step_logprobs
from angelcli.errors import UsageError


@dataclass
class StepOutput:
    token_id: int
    logprob: float
    top_logprobs: list[tuple[int, float]] = field(default_factory=list)  # best first
    finish_reason: str | None = None  # "stop" (hit a stop id) | "length" | None while running


@dataclass
class GenerationStats:
    prompt_tokens: int = 0
    generated_tokens: int = 0
    time_to_first_token: float = 0.0  # seconds from the call to the first generated token
    decode_tokens_per_s: float = 0.0  # generated tokens after the first / time they took
    total_time: float = 0.0

    def to_dict(self) -> dict:
        return {"prompt_tokens": self.prompt_tokens, "generated_tokens": self.generated_tokens,
                "time_to_first_token": round(self.time_to_first_token, 6),
                "decode_tokens_per_s": round(self.decode_tokens_per_s, 3), "total_time": round(self.total_time, 6)}


class Engine:
    def __init__(self, model, cfg: ModelConfig, *, device: str | torch.device = "cpu", max_seq_len: int | None = None,
                 backend: str = "torch"):
        self.model, self.cfg = model, cfg
        self.device = torch.device(device)
        self.dtype = next(model.parameters()).dtype
        self.max_seq_len = max_seq_len or min(cfg.max_position_embeddings, 8192)
        self.backend = backend
        self.last_stats = GenerationStats()

    def new_cache(self, batch: int = 1, max_len: int | None = None) -> KVCache:
        return KVCache(self.cfg, batch, max_len or self.max_seq_len, self.dtype, self.device)

    @torch.inference_mode()
    def prefill(self, ids: list[int] | torch.Tensor, cache: KVCache) -> torch.Tensor:
        """Run the prompt (appended to whatever the cache holds). Returns last-position logits [B, V] fp32."""
        t = torch.as_tensor(ids, dtype=torch.long, device=self.device)
        if t.dim() == 1:
            t = t[None]
        return self.model(t, cache, last_only=True).logits[:, -1]

    @torch.inference_mode()
    def decode_step(self, token_ids: torch.Tensor, cache: KVCache) -> torch.Tensor:
        """token_ids [B] -> next logits [B, V] fp32."""
        return self.model(token_ids.view(-1, 1).to(self.device), cache).logits[:, -1]

    def check_prompt(self, prompt_ids: list[int]) -> None:
        if not prompt_ids:
            raise UsageError("empty prompt: at least one token id is needed")
        bad = [i for i in prompt_ids if not 0 <= int(i) < self.cfg.vocab_size]
        if bad:
            raise UsageError(f"token id {bad[0]} is outside the vocabulary (0..{self.cfg.vocab_size - 1})")

    def generate(self, prompt_ids: list[int], params: SamplingParams) -> Iterator[StepOutput]:
        """Yield one StepOutput per generated token; the last one carries finish_reason.

        A stop id ends generation and is reported (finish_reason "stop") but callers leave it out of text.
        """
        self.check_prompt(prompt_ids)
        start = time.perf_counter()
        stats = self.last_stats = GenerationStats(prompt_tokens=len(prompt_ids))
        budget = min(params.max_new_tokens, self.max_seq_len - len(prompt_ids))
        if budget <= 0:
            if len(prompt_ids) >= self.max_seq_len:
                raise UsageError(f"prompt of {len(prompt_ids)} tokens does not fit max sequence length {self.max_seq_len}")
            return
        cache = self.new_cache(1, len(prompt_ids) + budget)
        gen = make_generator(params.seed, self.device)
        stop = set(params.stop_ids)
        logits = self.prefill(prompt_ids, cache)
        first_at = None
        for n in range(budget):
            token = sample(logits, params, gen)  # [1]
            lp, top_v, top_i = step_logprobs(logits, token, params.logprobs)
            tid = int(token.item())
            now = time.perf_counter()
            if first_at is None:
                first_at = now
                stats.time_to_first_token = now - start
            stats.generated_tokens = n + 1
            top = list(zip(top_i[0].tolist(), top_v[0].tolist())) if top_i is not None else []
            finish = "stop" if tid in stop else ("length" if n + 1 == budget else None)
            stats.total_time = now - start
            if stats.generated_tokens > 1:
                stats.decode_tokens_per_s = (stats.generated_tokens - 1) / max(now - first_at, 1e-9)
            yield StepOutput(tid, float(lp[0]), top, finish)
            if finish:
                return
            logits = self.decode_step(token, cache)
