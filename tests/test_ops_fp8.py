"""FP8 activation quantisation and the FP8 block / per-channel GEMM: interpreter vs twin.

quantize_fp8 must be bit-exact (same IEEE divisions, same clamp, round-to-nearest-even e4m3); the GEMM
differs from the twin only by fp32 summation order. Block edges: K and N of 127 / 128 / 129 / 300 put
the last 128-group and the last scale block at every offset.
"""

from __future__ import annotations

import pytest
import torch
import triton
import triton.language as tl

from angelcli.ops import cases
from angelcli.ops import reference as ref
from angelcli.ops.fp8 import _round_to_e4m3, fp8_gemm, quantize_fp8


@pytest.mark.parametrize("m,k", [(1, 64), (33, 300), (511, 128), (3, 1000), (2, 129)])
def test_quantize_fp8_bit_exact(m, k):
    assert cases.run_quantize_fp8(m, k) == (0.0, 0.0)


def test_quantize_fp8_scheme():
    x = torch.zeros(2, 256, dtype=torch.bfloat16)
    x[0, 5] = 896.0  # amax 896 -> scale 2, the max maps to 448
    x[0, 6] = -3.0
    x[1, 200] = 1e-3
    q, s = quantize_fp8(x)
    assert s[0, 0] == 2.0 and s[1, 0] == pytest.approx(1e-10 / 448)  # all-zero group: the amax floor
    assert float(q[0, 5].float()) == 448.0 and float(q[0, 6].float()) == -1.5
    assert torch.allclose(ref.dequantize_fp8_act(q, s)[1, 200], torch.tensor(1e-3), rtol=0.07)


@pytest.mark.parametrize("m,n,k,layout", [
    (1, 64, 128, "block"), (33, 200, 300, "block"), (5, 129, 127, "block"), (64, 128, 256, "block"),
    (17, 130, 256, "channel"), (1, 96, 129, "channel"),
])
def test_fp8_gemm_matches_twin(m, n, k, layout):
    err, tol = cases.run_fp8_gemm(m, n, k, layout)
    assert err <= tol


def test_fp8_gemm_prequantized_equals_on_the_fly():
    err, tol = cases.run_fp8_gemm(33, 256, 384, "block", prequantized=True)
    assert err <= tol
    x = cases.randn(9, 256, seed=1)
    w, ws = cases.quantize_weight_block(cases.randn(64, 256, seed=2, scale=1 / 16))
    xq, xs = quantize_fp8(x)
    # the in-kernel quantisation is the same arithmetic as quantize_fp8: identical products
    assert torch.equal(fp8_gemm(x, w, ws), fp8_gemm(xq, w, ws, x_scale=xs))


def test_fp8_gemm_wide_tiles_and_leading_dims():
    cfg = dict(BLOCK_SIZE_M=64, BLOCK_SIZE_N=128, BLOCK_SIZE_K=128, GROUP_SIZE_M=4, num_warps=4, num_stages=3)
    err, tol = cases.run_fp8_gemm(70, 300, 256, "block", config=cfg)
    assert err <= tol
    x = cases.randn(2, 3, 128, seed=3)
    w, ws = cases.quantize_weight_channel(cases.randn(32, 128, seed=4))
    assert fp8_gemm(x, w, ws).shape == (2, 3, 32)
    assert torch.equal(fp8_gemm(x, w, ws).reshape(6, 32), fp8_gemm(x.reshape(6, 128), w, ws))


def test_fp8_scale_layouts():
    assert ref.fp8_scale_layout((300, 129), (3, 2)) == "block"
    assert ref.fp8_scale_layout((300, 129), (300,)) == "channel"
    assert ref.fp8_scale_layout((8, 300, 129), (8, 300, 1)) == "channel"
    with pytest.raises(ValueError, match="fits neither"):
        ref.fp8_scale_layout((300, 129), (2, 2))


def test_fp8_gemm_checks():
    x = cases.randn(4, 256, seed=0)
    w, ws = cases.quantize_weight_block(cases.randn(128, 256, seed=1))
    with pytest.raises(ValueError, match="x_scale"):
        fp8_gemm(quantize_fp8(x)[0], w, ws)
    with pytest.raises(ValueError, match="K=255"):
        fp8_gemm(x[:, :255], w, ws)
    bad = dict(BLOCK_SIZE_M=16, BLOCK_SIZE_N=64, BLOCK_SIZE_K=64, GROUP_SIZE_M=1, num_warps=4, num_stages=2)
    with pytest.raises(ValueError, match="BLOCK_SIZE_K"):
        fp8_gemm(x, w, ws, config=bad)


@triton.jit
def _round_probe(x_ptr, y_ptr, n, BLOCK: tl.constexpr):
    offs = tl.arange(0, BLOCK)
    tl.store(y_ptr + offs, _round_to_e4m3(tl.load(x_ptr + offs, mask=offs < n)), mask=offs < n)


def test_round_to_e4m3_is_correct_rne_before_the_cast():
    # The kernel rounds to the e4m3 grid in fp32 itself (a plain cast double-rounded on the H200 baseline).
    # Every e4m3 value, every midpoint between neighbours (ties -> even) and random values must land where
    # torch's correctly rounded cast puts them, before any fp32 -> fp8 conversion happens.
    from angelcli.ops._runtime import launch

    grid = torch.arange(256, dtype=torch.uint8).view(torch.float8_e4m3fn).float()
    grid = grid[grid.isfinite() & (grid.abs() <= 448)].unique()
    mids = (grid[1:] + grid[:-1]) / 2
    x = torch.cat([grid, mids, torch.randn(2000) * 40, torch.rand(500) * 2 ** -6]).clamp(-448, 448)
    y = torch.empty_like(x)
    launch(_round_probe, (1,), "cpu", args=dict(x_ptr=x, y_ptr=y, n=x.numel()), constexprs=dict(BLOCK=4096))
    assert torch.equal(y, x.to(torch.float8_e4m3fn).float())
