"""Batched sampling (engine/sampling.py:sample_batch): per-row settings and seeds, no per-row loop."""

import torch
from torch.utils._python_dispatch import TorchDispatchMode

from angelcli.engine.sampling import SamplingParams, filter_logits, sample_batch

MIX = [SamplingParams(temperature=0.7, top_k=3, seed=1), SamplingParams(), SamplingParams(temperature=1.3, top_p=0.8),
       SamplingParams(temperature=1.0, top_k=5, top_p=0.9)]


def _logits(b, v=32, seed=0):
    return torch.randn(b, v, generator=torch.Generator().manual_seed(seed)) * 2


def test_each_row_samples_as_if_alone_and_reproducibly():
    x = _logits(4)
    seeds = [11, 12, 13, 14]
    both = sample_batch(x, MIX, seeds, step=5)
    for i in range(4):
        assert sample_batch(x[i : i + 1], [MIX[i]], [seeds[i]], step=5).item() == both[i].item()
    assert torch.equal(both, sample_batch(x, MIX, seeds, step=5))
    assert both[1].item() == x[1].argmax().item()  # the greedy row
    steps = [sample_batch(x, MIX, seeds, step=s)[0].item() for s in range(20)]
    assert len(set(steps)) > 1  # the noise changes with the step


def test_samples_follow_the_filtered_softmax():
    x = _logits(1, v=6, seed=3)
    p = SamplingParams(temperature=0.8, top_k=4, top_p=0.95)
    want = filter_logits(x / p.temperature, p.top_k, p.top_p).softmax(-1)[0]
    n = 4000
    got = torch.bincount(torch.stack([sample_batch(x, [p], [99], s) for s in range(n)]).flatten(), minlength=6)
    assert got[want == 0].sum() == 0  # never outside top-k / top-p
    assert (got.float() / n - want).abs().max() < 0.03


class _Ops(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.n = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.n += 1
        return func(*args, **(kwargs or {}))


def test_no_per_row_loop():
    """The number of tensor ops does not grow with the batch (the old sampler looped over rows)."""
    counts = []
    for b in (2, 8):
        mode = _Ops()
        with mode:
            sample_batch(_logits(b), (MIX * 2)[:b], list(range(b)), step=0)
        counts.append(mode.n)
    assert counts[0] == counts[1]
