"""The engine's fused kernels under the Triton interpreter against their torch twins.

    route_gemm     router GEMM (fp32) + bias + group-limited top-k in one launch (atomic last-program routing)
    rms_norm_fp8   RMSNorm (+ residual add) that also writes the FP8 e4m3 quantisation of its output
"""

from __future__ import annotations

import pytest
import torch

from angelcli.ops import reference as ref
from angelcli.ops.rmsnorm import rms_norm_fp8
from angelcli.ops.router_gemm import route_gemm


def _rand(*shape, seed=0, scale=1.0, dtype=torch.bfloat16):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(*shape, generator=g) * scale).to(dtype)


@pytest.mark.parametrize("t,e,h,n_group,topk_group,top_k", [
    (1, 64, 96, 8, 4, 6),  # decode: one token, several expert-block programs, the last one routes
    (3, 16, 64, 4, 2, 2),
    (37, 32, 200, 1, 1, 4),  # ungrouped, hidden not a multiple of the K tile
    (70, 32, 64, 4, 2, 3),  # two token blocks of 64: one ticket each
])
def test_route_gemm_matches_twin(t, e, h, n_group, topk_group, top_k):
    x, w = _rand(t, h, seed=1), _rand(e, h, seed=2, scale=0.1)
    bias = _rand(e, seed=3, scale=0.1, dtype=torch.float32)
    got_w, got_ids, got_logits = route_gemm(x, w, bias, top_k, n_group, topk_group, 2.5)
    want_w, want_ids, want_logits = ref.route_gemm(x, w, bias, top_k, n_group, topk_group, 2.5)
    assert (got_logits - want_logits).abs().max() < 1e-5  # fp32 GEMM, summation order only
    assert torch.equal(got_ids, want_ids)
    assert (got_w - want_w).abs().max() < 1e-6


def test_route_gemm_tickets_reset_between_launches():
    """The per-token-block ticket goes back to zero, so a second launch (a graph replay) routes again."""
    x, w = _rand(2, 64, seed=4), _rand(16, 64, seed=5, scale=0.1)
    first = route_gemm(x, w, None, 2, 4, 2)
    second = route_gemm(x, w, None, 2, 4, 2)
    assert torch.equal(first[1], second[1]) and torch.equal(first[0], second[0])
    from angelcli.ops.router_gemm import _tickets

    assert int(_tickets["cpu"].abs().sum()) == 0


@pytest.mark.parametrize("n,h", [(1, 256), (5, 384), (33, 128)])
@pytest.mark.parametrize("residual", [False, True])
def test_rms_norm_fp8_matches_twin_bit_for_bit(n, h, residual):
    x, w = _rand(n, h, seed=6), (_rand(h, seed=7, dtype=torch.float32).abs() + 0.5).to(torch.bfloat16)
    r = _rand(n, h, seed=8) if residual else None
    y, s, (q, scale) = rms_norm_fp8(x, w, 1e-6, r)
    y_ref, s_ref, (q_ref, scale_ref) = ref.rms_norm_fp8(x, w, 1e-6, r)
    assert torch.equal(y, y_ref) and torch.equal(scale, scale_ref)
    assert torch.equal(q.view(torch.uint8), q_ref.view(torch.uint8))
    assert (s is None) == (not residual) and (s is None or torch.equal(s, s_ref))


def test_rms_norm_fp8_refuses_partial_groups():
    with pytest.raises(ValueError, match="multiple of 128"):
        rms_norm_fp8(_rand(2, 100), torch.ones(100, dtype=torch.bfloat16), 1e-6)
