"""FP8 e4m3 math: round-trip bounds per layout, edge blocks, scale semantics, refusals."""

import math

import pytest
import torch

from angelcli.quant import fp8


def _w(shape, seed=0, std=0.02):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(shape, generator=g) * std).to(torch.bfloat16)


def _bound(w, scale_full):
    # round-to-nearest e4m3: relative 2^-4 for normals, absolute 2^-10 * scale in the subnormal range
    return w.float().abs() / 16 + scale_full * 2.0**-10 + 1e-12


@pytest.mark.parametrize("shape", [(256, 384), (200, 130), (64, 32), (1, 300), (129, 1)])
@pytest.mark.parametrize("layout", ["tensor", "channel", "block"])
def test_roundtrip_elementwise_bound(shape, layout):
    w = _w(shape)
    sdtype = torch.float32 if layout == "block" else torch.bfloat16
    q, s = fp8.quantize(w, layout, scale_dtype=sdtype)
    assert q.dtype == torch.float8_e4m3fn and q.shape == w.shape and s.dtype == sdtype
    want = {"tensor": (1,), "channel": (shape[0], 1), "block": fp8.block_scale_shape(shape)}[layout]
    assert tuple(s.shape) == want
    d = fp8.dequantize(q, s, layout)
    full = {"tensor": lambda: s.float().expand(shape), "channel": lambda: s.float().expand(shape),
            "block": lambda: fp8.expand_block_scale(s.float(), shape)}[layout]()
    assert bool(((w.float() - d).abs() <= _bound(w, full)).all())
    assert fp8.error_stats(w, d)["rel_err"] < 0.035


def test_block_scales_are_per_tile_amax_over_448_with_edge_tiles():
    w = torch.zeros(300, 200)
    w[0, 0] = 4.48  # tile (0, 0)
    w[299, 199] = -0.896  # edge tile (2, 1): rows 256..299, cols 128..199
    w[130, 5] = 1e-9  # tile (1, 0): below the amax floor
    q, s = fp8.quantize_block(w)
    assert s.shape == (3, 2) and s.dtype == torch.float32
    assert s[0, 0].item() == pytest.approx(4.48 / 448)
    assert s[2, 1].item() == pytest.approx(0.896 / 448)
    assert s[1, 0].item() == pytest.approx(fp8.AMAX_FLOOR / 448)  # all-zero or tiny tiles get the floor
    assert s[0, 1].item() == pytest.approx(fp8.AMAX_FLOOR / 448)
    # the largest element of a tile maps exactly to ±448
    assert q[0, 0].float().item() == 448.0 and q[299, 199].float().item() == -448.0
    # weight_scale_inv is the multiplier: W ≈ q * scale_inv
    assert fp8.dequantize(q, s, "block")[0, 0].item() == pytest.approx(4.48, rel=1e-6)


def test_matches_zero_padded_reference_for_non_multiple_shapes():
    w = _w((130, 257), seed=3).float()
    q, s = fp8.quantize_block(w)
    padded = torch.zeros(256, 384)
    padded[:130, :257] = w
    qp, sp = fp8.quantize_block(padded)
    assert torch.equal(s, sp)
    assert torch.equal(q.float(), qp[:130, :257].float())


def test_per_channel_scale_is_row_amax():
    w = _w((16, 64), seed=1)
    q, s = fp8.quantize_per_channel(w, scale_dtype=torch.float32)
    assert torch.allclose(s[:, 0], w.float().abs().amax(1) / 448)
    assert torch.equal(q.float().abs().amax(1), torch.full((16,), 448.0))


def test_bf16_scale_is_rounded_before_quantising():
    w = _w((32, 48), seed=2)
    q, s = fp8.quantize_per_tensor(w, scale_dtype=torch.bfloat16)
    assert s.dtype == torch.bfloat16
    # dequantising with the stored (rounded) scale reproduces the quantiser's own grid exactly
    assert torch.equal(fp8.dequantize(q, s).float(), (q.float() * s.float()))
    assert fp8.error_stats(w, fp8.dequantize(q, s))["rel_err"] < 0.035


def test_nan_and_inf_refused():
    for bad in (float("nan"), float("inf")):
        w = torch.ones(4, 4)
        w[1, 2] = bad
        for layout in ("tensor", "channel", "block"):
            with pytest.raises(fp8.NonFiniteError):
                fp8.quantize(w, layout)


def test_saturates_instead_of_nan():
    assert torch.isfinite(fp8.to_fp8(torch.tensor([1e6, -1e6, 500.0])).float()).all()
    assert fp8.to_fp8(torch.tensor([1e6])).float().item() == 448.0


def test_infer_layout_and_mismatch():
    assert fp8.infer_layout((256, 128), (1,)) == "tensor"
    assert fp8.infer_layout((256, 128), (256, 1)) == "channel"
    assert fp8.infer_layout((256, 130), (2, 2)) == "block"
    with pytest.raises(ValueError):
        fp8.infer_layout((256, 128), (3, 1))
    with pytest.raises(ValueError):
        fp8.expand_block_scale(torch.ones(1, 1), (256, 128))


def test_activation_fake_quant():
    x = torch.randn(5, 300)
    for y in (fp8.fake_quant_per_token(x), fp8.fake_quant_token_group(x, 128),
              fp8.fake_quant_static(x, x.abs().max().reshape(1) / 448)):
        assert y.shape == x.shape
        assert ((x - y).norm() / x.norm()).item() < 0.05
    # per-token: a huge row does not hurt the others
    x[0] *= 1000
    y = fp8.fake_quant_per_token(x)
    assert ((x[1:] - y[1:]).norm() / x[1:].norm()).item() < 0.05


def test_error_stats_zero_weight():
    z = torch.zeros(3, 3)
    assert fp8.error_stats(z, z)["rel_err"] == 0.0
    assert math.isinf(fp8.error_stats(z, torch.ones(3, 3))["rel_err"])


@pytest.mark.parametrize("layout", ["tensor", "channel", "block"])
def test_one_pass_error_stats_equal_dequantised_comparison(layout):
    w = _w((200, 300), seed=5)
    q, s, st = fp8.quantize_with_error(w, layout, scale_dtype=torch.bfloat16 if layout != "block" else torch.float32)
    ref = fp8.error_stats(w, fp8.dequantize(q, s, layout))
    assert st["rel_err"] == pytest.approx(ref["rel_err"], rel=1e-5)
    assert st["max_abs_err"] == pytest.approx(ref["max_abs_err"], rel=1e-5)
    assert st["amax"] == ref["amax"]
    q2, s2 = fp8.quantize(w.float(), layout, scale_dtype=s.dtype)  # fp32 input is not modified in place
    assert torch.equal(q2.view(torch.uint8), q.view(torch.uint8)) and torch.equal(s2, s)


def test_fp8_table_conversion_matches_cast():
    q = torch.arange(256, dtype=torch.uint8).view(torch.float8_e4m3fn)
    a, b = fp8.fp8_to_float(q), q.float()
    assert torch.equal(a.isnan(), b.isnan()) and torch.equal(a[~a.isnan()], b[~b.isnan()])
