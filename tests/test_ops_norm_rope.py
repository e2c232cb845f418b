"""rms_norm (with and without the fused residual add) and qk-norm + partial NeoX RoPE: interpreter vs twin.

Both kernels reproduce the HF rounding points, so most outputs are bit-identical to the twin; the
tolerance (2e-2 of the output range) only absorbs fp32 summation order in the mean of squares.
"""

from __future__ import annotations

import pytest
import torch

from angelcli.ops import cases
from angelcli.ops import reference as ref
from angelcli.ops.rmsnorm import rms_norm
from angelcli.ops.rope import qk_norm_rope


@pytest.mark.parametrize("shape", [(1, 64), (33, 100), (511, 128), (3, 5, 4096)])
@pytest.mark.parametrize("residual", [False, True])
def test_rms_norm_matches_twin(shape, residual):
    err, tol = cases.run_rms_norm(shape, residual=residual)
    assert err <= tol


def test_rms_norm_hf_rounding_order():
    # normalise in fp32, round to bf16, THEN multiply by the bf16 weight (not one fused fp32 multiply)
    x = torch.tensor([[1.0, 2.0, 3.0, 4.0]], dtype=torch.bfloat16)
    w = torch.tensor([1.1, 0.9, 1.3, 0.7], dtype=torch.bfloat16)
    x32 = x.float()
    normed = (x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + 1e-6)).to(torch.bfloat16)
    assert torch.equal(rms_norm(x, w, 1e-6), normed * w)
    assert torch.equal(ref.rms_norm(x, w, 1e-6), normed * w)


def test_rms_norm_residual_stream_and_strided_rows():
    x = cases.randn(8, 256, seed=1)[::2]  # strided rows
    r = cases.randn(4, 256, seed=2)
    w = torch.ones(256, dtype=torch.bfloat16)
    y, s = rms_norm(x, w, 1e-6, residual=r)
    assert torch.equal(s, x + r)  # the new residual is the bf16 sum
    assert torch.equal(y, rms_norm(x + r, w, 1e-6))


def test_rms_norm_checks():
    with pytest.raises(ValueError, match="weight"):
        rms_norm(torch.zeros(2, 8, dtype=torch.bfloat16), torch.ones(9, dtype=torch.bfloat16), 1e-6)
    with pytest.raises(TypeError, match="dtype"):
        rms_norm(torch.zeros(2, 8, dtype=torch.int32), torch.ones(8), 1e-6)


@pytest.mark.parametrize("t,hq,hkv,d,rot", [(1, 4, 1, 128, 64), (33, 8, 1, 128, 64), (33, 32, 4, 128, 64),
                                            (5, 2, 2, 96, 32), (3, 4, 2, 64, 64)])
def test_qk_norm_rope_matches_twin(t, hq, hkv, d, rot):
    err, tol = cases.run_qk_norm_rope(t, hq, hkv, d, rot)
    assert err <= tol


def test_rope_is_neox_on_the_first_rotary_dims_only():
    # unit weights, position 0 is the identity; pass-through dims are only normalised
    d, rot = 8, 4
    qkv = cases.randn(2, 3 * d, seed=3)
    ones = torch.ones(d, dtype=torch.bfloat16)
    cache = ref.rope_cache(16, rot, 10000.0)
    q, k = qk_norm_rope(qkv, torch.tensor([0, 5]), ones, ones, cache, 1, 1, 1e-6)
    qn = ref.rms_norm(qkv[:, :d], ones, 1e-6)
    assert torch.equal(q[0, 0], qn[0])
    assert torch.equal(q[1, 0, rot:], qn[1, rot:])
    theta = 5 * 10000.0 ** (-torch.arange(0, rot, 2).float() / rot)  # pairs (j, j + rot/2)
    c, s = theta.cos().to(torch.bfloat16).float(), theta.sin().to(torch.bfloat16).float()
    x1, x2 = qn[1, :2].float(), qn[1, 2:4].float()
    assert torch.allclose(q[1, 0, :2].float(), x1 * c - x2 * s, atol=2e-2)
    assert torch.allclose(q[1, 0, 2:4].float(), x2 * c + x1 * s, atol=2e-2)


def test_qk_norm_rope_checks():
    qkv = torch.zeros(2, 6 * 8, dtype=torch.bfloat16)
    w = torch.ones(8, dtype=torch.bfloat16)
    with pytest.raises(ValueError, match="not \\(Hq \\+ 2 Hkv\\)"):
        qk_norm_rope(qkv, torch.tensor([0, 1]), w, w, ref.rope_cache(4, 4, 1e4), 3, 2, 1e-6)
    with pytest.raises(ValueError, match="rotary_dim"):
        qk_norm_rope(qkv, torch.tensor([0, 1]), w, w, ref.rope_cache(4, 10, 1e4)[:, :9].contiguous(), 4, 1, 1e-6)
