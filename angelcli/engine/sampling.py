"""Token selection on the device: greedy, temperature, top-k, top-p, with a seeded generator.

Sampling stays on the logits' device and returns a tensor, so the decode loop only synchronises with the host
when it needs the id (to stream it or check for a stop id).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from angelcli.errors import UsageError


@dataclass
class SamplingParams:
    temperature: float = 0.0  # 0 = greedy
    top_p: float = 1.0
    top_k: int = 0  # 0 = off
    max_new_tokens: int = 256
    seed: int | None = None
    logprobs: int = 0  # top-K logprobs to report per step
    stop_ids: tuple[int, ...] = ()

    def __post_init__(self) -> None:
        if not self.temperature >= 0 or self.temperature == float("inf"):  # also NaN
            raise UsageError(f"--temperature must be >= 0 and finite, got {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise UsageError("--top-p must be in (0, 1]")
        if self.top_k < 0:
            raise UsageError("--top-k must be >= 0")
        if self.max_new_tokens < 0:
            raise UsageError("--max-new-tokens must be >= 0")
        if self.logprobs < 0:
            raise UsageError("--logprobs must be >= 0")
        if self.seed is not None and not -2**63 <= self.seed < 2**64:  # torch generators take 64-bit seeds
            raise UsageError(f"--seed must be a 64-bit integer, got {self.seed}")

    @property
    def greedy(self) -> bool:
        return self.temperature == 0


def make_generator(seed: int | None, device: torch.device) -> torch.Generator | None:
    if seed is None:
        return None
    g = torch.Generator(device=device)
    g.manual_seed(int(seed))
    return g


def filter_logits(logits: torch.Tensor, top_k: int, top_p: float) -> torch.Tensor:
    """logits [B, V] (already temperature-scaled) -> logits with everything outside top-k / top-p at -inf."""
    if top_k and top_k < logits.shape[-1]:
        kth = logits.topk(top_k, dim=-1).values[:, -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p < 1.0:
        sorted_logits, order = logits.sort(dim=-1, descending=True)
        probs = sorted_logits.softmax(dim=-1)
        # Drop a token when the mass before it already reaches top_p; the best token always survives.
        drop = (probs.cumsum(dim=-1) - probs) >= top_p
        sorted_logits = sorted_logits.masked_fill(drop, float("-inf"))
        logits = torch.full_like(logits, float("-inf")).scatter(-1, order, sorted_logits)
    return logits


def sample(logits: torch.Tensor, params: SamplingParams, generator: torch.Generator | None = None) -> torch.Tensor:
    """logits [B, V] fp32 -> token ids [B] int64."""
    if params.greedy:
        return logits.argmax(dim=-1)
    scaled = filter_logits(logits / params.temperature, params.top_k, params.top_p)
    probs = scaled.softmax(dim=-1)
    return torch.multinomial(probs, 1, generator=generator).squeeze(-1)


def step_logprobs(logits: torch.Tensor, chosen: torch.Tensor, k: int):
    """Log-probabilities under the model's own distribution (before temperature and filters).

    logits [B, V], chosen [B] -> (chosen logprob [B], top-k values [B, k], top-k ids [B, k])."""
    lp = torch.log_softmax(logits.float(), dim=-1)
    picked = lp.gather(-1, chosen[:, None]).squeeze(-1)
    top = lp.topk(min(k, lp.shape[-1]), dim=-1) if k else None
    return picked, (top.values if top is not None else None), (top.indices if top is not None else None)
