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


# ---------------------------------------------------------------------------------------------------------
# Batched sampling: every row with its own temperature / top-k / top-p / seed, in a fixed number of
# kernels whatever the batch (no per-row loop). Randomness is counter based: row r's noise at decode step n
# is a hash of (seed_r, n, token id), so a seeded request draws the same tokens alone or in any batch, on
# every tensor-parallel rank, with no generator state to carry. Drawing argmax(logits' + Gumbel noise) over
# the filtered, temperature-scaled logits is exactly a sample of their softmax (the Gumbel-max trick).
# ---------------------------------------------------------------------------------------------------------

_MASK32 = 0xFFFFFFFF


def _hash32(x: torch.Tensor) -> torch.Tensor:
    """A 32-bit integer mix (int64 tensors holding 32-bit values; products wrap, the low 32 bits stay exact)."""
    x = x & _MASK32
    x = (x ^ (x >> 16)) * 0x7FEB352D & _MASK32
    x = (x ^ (x >> 15)) * 0x846CA68B & _MASK32
    return x ^ (x >> 16)


def gumbel_noise(seeds: torch.Tensor, steps: torch.Tensor, vocab: int) -> torch.Tensor:
    """seeds [b], steps [b] int64 -> Gumbel(0, 1) noise [b, vocab] fp32, a pure function of its inputs."""
    ids = torch.arange(vocab, device=seeds.device, dtype=torch.int64)[None]
    row = _hash32(_hash32(seeds) ^ (steps * 0x9E3779B9 & _MASK32))[:, None]  # [b, 1]
    bits = _hash32(row ^ _hash32(ids + 0x632BE5AB))  # [b, V]
    u = (bits.double() + 0.5) / 2.0**32  # uniform in (0, 1), never 0 or 1
    return (-torch.log(-torch.log(u))).float()


def sample_batch(logits: torch.Tensor, params: list[SamplingParams], seeds: list[int], step: int) -> torch.Tensor:
    """logits [b, V] fp32 -> ids [b] int64: greedy rows take the argmax, the others sample from their own
    temperature / top-k / top-p filtered softmax (same filter as filter_logits) with counter-based noise."""
    return sample_rows(logits, *sampling_tensors(params, seeds, step, logits.shape[-1], logits.device))


def sampling_tensors(params: list[SamplingParams], seeds: list[int], step: int, vocab: int, device):
    """Per-row settings as tensors: (temps [b] f32, top_k [b] i64, top_p [b] f32, greedy [b] bool,
    seeds [b] i64, steps [b] i64) (static graph inputs take them by copy)."""
    return (torch.tensor([p.temperature if not p.greedy else 1.0 for p in params], device=device),
            torch.tensor([p.top_k if 0 < p.top_k < vocab else vocab for p in params], device=device),
            torch.tensor([p.top_p for p in params], device=device),
            torch.tensor([p.greedy for p in params], device=device),
            torch.tensor(seeds, dtype=torch.int64, device=device),
            torch.full((len(params),), step, dtype=torch.int64, device=device))


def sample_rows(logits: torch.Tensor, temps: torch.Tensor, top_k: torch.Tensor, top_p: torch.Tensor,
                greedy: torch.Tensor, seeds: torch.Tensor, steps: torch.Tensor) -> torch.Tensor:
    """sample_batch on tensors only (no host values, so it can run inside a CUDA graph)."""
    scaled = logits / temps[:, None]
    vals, order = scaled.sort(dim=-1, descending=True)  # [b, V]
    kth = vals.gather(1, (top_k - 1)[:, None])  # ties with the k-th value stay, as in filter_logits
    vals = vals.masked_fill(vals < kth, float("-inf"))
    probs = vals.softmax(dim=-1)
    drop = (probs.cumsum(dim=-1) - probs) >= top_p[:, None]  # the best token always survives
    vals = vals.masked_fill(drop & (top_p < 1.0)[:, None], float("-inf"))
    noise = gumbel_noise(seeds, steps, logits.shape[-1]).gather(1, order)
    picked = order.gather(1, (vals + noise).argmax(dim=-1, keepdim=True)).squeeze(1)
    return torch.where(greedy, logits.argmax(dim=-1), picked)
