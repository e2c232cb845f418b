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


@pytest.mark.parametrize("n,inter", [(1, 256), (3, 1024), (17, 192)])
@pytest.mark.parametrize("quant", [False, True])
def test_silu_mul_matches_twin(n, inter, quant):
    from angelcli.ops.activation import silu_mul

    gu = _rand(n, 2 * inter, seed=9, scale=2.0)
    h, hq = silu_mul(gu, quant)
    h_ref, hq_ref = ref.silu_mul(gu, quant)
    # silu's exp may differ in the last fp32 bit from torch's, which can move a bf16 rounding by one ulp
    assert (h.float() - h_ref.float()).abs().max() <= 2 ** -7 * h_ref.float().abs().max()
    if quant:  # the quantisation of the kernel's own h is exact
        q, s = hq
        q_ref, s_ref = ref.quantize_fp8(h)
        assert torch.equal(q.view(torch.uint8), q_ref.view(torch.uint8)) and torch.equal(s, s_ref)
    else:
        assert hq is None and hq_ref is None


@pytest.mark.parametrize("dims", [(4, 2, 16, 8), (8, 1, 128, 64)])  # (Hq, Hkv, D, rotary_dim)
def test_qk_norm_rope_cache_matches_twin(dims):
    """QK-norm + RoPE + paged KV write in one launch: same q and the same cache contents as the twin
    (qk_norm_rope then kv_cache_write); padding tokens (slot -1) write nothing."""
    from angelcli.ops.rope import qk_norm_rope_cache

    hq, hkv, d, rot = dims
    t, nb, bs = 5, 4, 4
    qkv = _rand(t, (hq + 2 * hkv) * d, seed=10)
    pos = torch.tensor([0, 3, 7, 12, 2])
    slots = torch.tensor([1, 6, -1, 13, 8])
    table = ref.rope_cache(16, rot, 600000.0, torch.bfloat16)
    qw, kw = _rand(d, seed=11) * 0.1 + 1, _rand(d, seed=12) * 0.1 + 1
    caches = [(torch.zeros(nb, bs, hkv, d, dtype=torch.bfloat16), torch.zeros(nb, bs, hkv, d, dtype=torch.bfloat16))
              for _ in range(2)]
    got = qk_norm_rope_cache(qkv, pos, qw, kw, table, hq, hkv, 1e-6, *caches[0], slots)
    want = ref.qk_norm_rope_cache(qkv, pos, qw, kw, table, hq, hkv, 1e-6, *caches[1], slots)
    assert torch.equal(got[0], want[0]) and torch.equal(got[1], want[1])
    assert torch.equal(caches[0][0], caches[1][0]) and torch.equal(caches[0][1], caches[1][1])
    assert caches[0][0].view(-1, hkv, d)[slots[slots >= 0]].abs().sum() > 0


def test_attention_decode_fp8_quantises_each_head():
    """Decode attention whose merge also writes the FP8 input of the output projection (D = 128)."""
    from angelcli.ops.decode_attention import attention_decode, attention_decode_fp8

    b, hq, hkv, d, bs, nb = 2, 4, 2, 128, 16, 6
    q = _rand(b, hq, d, seed=13)
    kc, vc = _rand(nb, bs, hkv, d, seed=14), _rand(nb, bs, hkv, d, seed=15)
    table = torch.tensor([[0, 2, 4], [1, 3, 5]], dtype=torch.int32)
    lens = torch.tensor([40, 7], dtype=torch.int32)
    out, (oq, scale) = attention_decode_fp8(q, kc, vc, table, lens, num_splits=3)
    assert torch.equal(out, attention_decode(q, kc, vc, table, lens, num_splits=3))
    q_ref, s_ref = ref.quantize_fp8(out.reshape(b, -1))
    assert torch.equal(oq.view(torch.uint8), q_ref.view(torch.uint8)) and torch.equal(scale, s_ref)
    want, (wq, ws) = ref.attention_decode_fp8(q, kc, vc, table, lens)
    assert (out.float() - want.float()).abs().max() < 2e-2


@pytest.mark.parametrize("n_shared", [1, 3])
def test_route_gemm_appends_shared_expert_slots(n_shared):
    """The extra slots the fused MoE needs to run the shared expert: ids E .. E+n-1, weight 1, after the
    routed ones (what ops.shared_expert_routing builds with four more kernels)."""
    from angelcli.ops import shared_expert_routing

    x, w = _rand(3, 64, seed=16), _rand(16, 64, seed=17, scale=0.1)
    got_w, got_ids, _ = route_gemm(x, w, None, 2, 4, 2, 1.0, n_shared)
    base_w, base_ids, _ = ref.route_gemm(x, w, None, 2, 4, 2, 1.0)
    want_w, want_ids = shared_expert_routing(base_w, base_ids, 16, n_shared)
    assert torch.equal(got_ids, want_ids.to(torch.int32)) and (got_w - want_w).abs().max() < 1e-6
    assert torch.equal(ref.route_gemm(x, w, None, 2, 4, 2, 1.0, n_shared)[1], got_ids)
