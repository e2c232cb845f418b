"""MoE kernels under the Triton interpreter vs their torch twins: moe_align, route, fused_moe.

The interpreter runs on CPU tensors without any environment variable (angelcli/ops/_runtime.py), so these
tests need neither a GPU nor TRITON_INTERPRET. Shapes cover the degenerate and odd cases the kernels
must handle: 1 / 33 / 511 tokens, top-k 1 and 8, 8 and 256 experts with group routing, hidden and
intermediate sizes that are not multiples of 128 where the layout allows it.
"""

from __future__ import annotations

import pytest
import torch

from angelcli.ops import cases
from angelcli.ops import reference as ref
from angelcli.ops.align import moe_align
from angelcli.ops.moe import fused_moe
from angelcli.ops.router import route


def test_moe_align_worked_example():
    ids = torch.tensor([[2, 0], [1, 2], [2, 3]], dtype=torch.int32)
    sorted_ids, expert_ids, total = moe_align(ids, 4, 4)
    assert sorted_ids.tolist() == [1, 6, 6, 6, 2, 6, 6, 6, 0, 3, 4, 6, 5, 6, 6, 6, 6, 6, 6, 6]
    assert expert_ids.tolist() == [0, 1, 2, 3, -1]
    assert total.tolist() == [16]
    for got, want in zip((sorted_ids, expert_ids, total), ref.moe_align(ids, 4, 4)):
        assert torch.equal(got, want)


@pytest.mark.parametrize("t,k,e,block_m", [(1, 8, 256, 16), (33, 8, 256, 16), (511, 8, 256, 64), (511, 1, 8, 16),
                                           (7, 2, 8, 1), (33, 8, 8, 128)])
def test_moe_align_matches_twin(t, k, e, block_m):
    err, tol = cases.run_moe_align(t, k, e, block_m)
    assert err == tol == 0


def test_moe_align_int64_ids_and_capacity_bound():
    ids = torch.randint(0, 5, (9, 3), dtype=torch.int64)
    sorted_ids, expert_ids, total = moe_align(ids, 5, 4)
    # every pair appears exactly once; the capacity is the documented worst case
    pairs = sorted_ids[sorted_ids < 27].sort().values
    assert torch.equal(pairs, torch.arange(27, dtype=torch.int32))
    assert sorted_ids.numel() == -(-(27 + 5 * 3) // 4) * 4
    assert int(total) % 4 == 0 and int(total) <= sorted_ids.numel()


def test_moe_align_empty():
    sorted_ids, expert_ids, total = moe_align(torch.zeros(0, 8, dtype=torch.int32), 256, 16)
    assert sorted_ids.numel() == 0 and expert_ids.numel() == 0 and int(total) == 0


@pytest.mark.parametrize("t,e,k,n_group,topk_group", [(1, 8, 1, 1, 1), (33, 8, 2, 4, 2), (33, 256, 8, 8, 4),
                                                      (511, 8, 8, 1, 1), (511, 64, 8, 8, 4), (33, 256, 1, 8, 1)])
def test_route_matches_twin(t, e, k, n_group, topk_group):
    err, tol = cases.run_route(t, e, k, n_group, topk_group)
    assert err <= tol


def test_route_tie_rule_lower_index_wins():
    # all scores equal: groups 0 and 1 are kept, then experts 0..3 in order
    w, ids = route(torch.zeros(3, 16), None, 4, n_group=4, topk_group=2)
    assert ids.tolist() == [[0, 1, 2, 3]] * 3
    assert torch.allclose(w, torch.full((3, 4), 0.25))
    err, tol = cases.run_route(5, 256, 8, 8, 4, ties=True)
    assert err <= tol


def test_route_semantics_by_hand():
    # 4 experts in 2 groups; the bias pulls expert 3 in, but its weight comes from the unbiased score
    logits = torch.tensor([[2.0, 1.0, -1.0, -2.0]])
    bias = torch.tensor([0.0, 0.0, 0.0, 5.0])
    w, ids = route(logits, bias, 2, n_group=2, topk_group=1, routed_scaling_factor=2.5)
    assert ids.tolist() == [[3, 2]]  # group 1 (experts 2, 3) wins 5.12+0.27 vs 0.88+0.73
    s = torch.sigmoid(logits[0, [3, 2]])
    assert torch.allclose(w[0], s / (s.sum() + 1e-20) * 2.5)
    w1, ids1 = route(logits, None, 1, routed_scaling_factor=2.5)  # top-1: no renormalisation
    assert ids1.tolist() == [[0]] and torch.allclose(w1[0, 0], torch.sigmoid(torch.tensor(2.0)) * 2.5)


def test_route_rejects_bad_grouping():
    with pytest.raises(ValueError, match="n_group"):
        route(torch.zeros(2, 10), None, 2, n_group=4, topk_group=2)
    with pytest.raises(ValueError, match="top_k"):
        route(torch.zeros(2, 16), None, 9, n_group=4, topk_group=2)


@pytest.mark.parametrize("t,e,k,h,i,quant", [
    (1, 8, 1, 64, 128, "bf16"),
    (33, 8, 2, 200, 96, "bf16"),  # H, I not multiples of 128 (bf16 allows any size)
    (511, 8, 1, 128, 128, "bf16"),
    (33, 8, 8, 256, 128, "fp8_block"),
    (9, 16, 4, 200, 128, "fp8_block"),  # H = 200: a partial last 128-block along K of w13 / N of w2
    (17, 8, 2, 136, 72, "fp8_channel"),  # per-channel scales allow any size
])
def test_fused_moe_matches_twin(t, e, k, h, i, quant):
    err, tol = cases.run_fused_moe(t, e, k, h, i, quant)
    assert err <= tol


def test_fused_moe_256_experts_group_routing_top8():
    # 5 tokens x top-8 over 256 experts: ~40 experts hit, one padded block each (the decode pattern)
    cfg = dict(BLOCK_SIZE_M=16, BLOCK_SIZE_N=128, BLOCK_SIZE_K=128, GROUP_SIZE_M=1, num_warps=4, num_stages=3)
    err, tol = cases.run_fused_moe(5, 256, 8, 128, 128, "fp8_block", n_group=8, topk_group=4, config=cfg)
    assert err <= tol


@pytest.mark.parametrize("cfg", [
    dict(BLOCK_SIZE_M=64, BLOCK_SIZE_N=128, BLOCK_SIZE_K=128, GROUP_SIZE_M=16, num_warps=4, num_stages=3),
    dict(BLOCK_SIZE_M=32, BLOCK_SIZE_N=32, BLOCK_SIZE_K=128, GROUP_SIZE_M=4, num_warps=4, num_stages=2),
])
def test_fused_moe_other_tiles(cfg):
    err, tol = cases.run_fused_moe(33, 8, 2, 256, 128, "fp8_block", config=cfg)
    assert err <= tol
    err, tol = cases.run_fused_moe(33, 8, 2, 256, 128, "bf16", config=dict(cfg, BLOCK_SIZE_K=32))
    assert err <= tol


@pytest.mark.slow
def test_fused_moe_full_width_fp8():
    # the real H = 4096, I = 1024 (one token, two experts), with a wide-N config to keep the interpreter brisk
    cfg = dict(BLOCK_SIZE_M=16, BLOCK_SIZE_N=256, BLOCK_SIZE_K=128, GROUP_SIZE_M=1, num_warps=4, num_stages=3)
    err, tol = cases.run_fused_moe(1, 8, 2, 4096, 1024, "fp8_block", config=cfg)
    assert err <= tol


def test_fused_moe_routing_weight_and_combine_order():
    # tiny shapes: every rounding point matches the twin bit for bit; zero routing weights give zeros
    kw = cases.moe_inputs(4, 2, 2, 64, 32, "bf16")
    out = fused_moe(**kw)
    want = ref.fused_moe(**kw)
    assert torch.equal(out, want)
    kw["topk_weights"] = kw["topk_weights"] * 0
    assert fused_moe(**kw).abs().max() == 0


def test_fused_moe_argument_checks():
    kw = cases.moe_inputs(3, 4, 2, 64, 64, "fp8_block")
    with pytest.raises(ValueError, match="I % 128"):
        fused_moe(**kw)  # I = 64 with block scales would mix gate and up rows
    kw = cases.moe_inputs(3, 4, 2, 64, 128, "fp8_block")
    with pytest.raises(ValueError, match="needs w2_scale"):
        fused_moe(**{**kw, "w2_scale": None})
    with pytest.raises(ValueError, match="scale shape"):
        fused_moe(**{**kw, "w13_scale": kw["w13_scale"][:, :1]})
    with pytest.raises(TypeError, match="dtype"):
        fused_moe(**{**kw, "x": kw["x"].float()})
    bad = dict(BLOCK_SIZE_M=16, BLOCK_SIZE_N=64, BLOCK_SIZE_K=64, GROUP_SIZE_M=1, num_warps=4, num_stages=2)
    with pytest.raises(ValueError, match="BLOCK_SIZE_K must be 128"):
        fused_moe(**kw, config=bad)


@pytest.mark.parametrize("quant", ["fp8_block", "fp8_channel"])
def test_fused_moe_prequantized_input_is_identical(quant):
    # quantise once per layer (quantize_act_fp8), pass (xq, scale): the same bytes as quantising inside
    from angelcli.ops.fp8 import quantize_act_fp8

    kw = cases.moe_inputs(9, 8, 2, 256, 128, quant, seed=3)
    pair = quantize_act_fp8(kw["x"])
    want = fused_moe(**kw)
    assert torch.equal(fused_moe(**{**kw, "x": pair}), want)
    assert torch.equal(fused_moe(**{**kw, "x": pair[0]}, x_scale=pair[1]), want)
    twin = ref.fused_moe(**{**kw, "x": pair})
    assert torch.equal(twin, ref.fused_moe(**kw))
    assert cases.max_err(want, twin) <= cases.bf16_tol(twin, cases.RTOL["fp8"])
    with pytest.raises(ValueError, match="needs x_scale"):
        fused_moe(**{**kw, "x": pair[0]})
    with pytest.raises(TypeError, match="bf16 experts"):
        fused_moe(**{**cases.moe_inputs(3, 4, 2, 256, 128, "bf16"), "x": pair[0][:3]}, x_scale=pair[1][:3])


@pytest.mark.parametrize("quant,si", [("bf16", 128), ("bf16", 320), ("fp8_block", 256), ("fp8_block", 384),
                                      ("fp8_channel", 200)])
def test_shared_expert_as_extra_experts(quant, si):
    # routed I = 128; the shared width Is is equal, a multiple, or not a multiple (zero-padded last slice)
    from angelcli.ops.shared_expert import append_shared_expert, shared_expert_routing

    t, e, k, h, i = 9, 8, 2, 256, 128
    kw = cases.moe_inputs(t, e, k, h, i, quant, seed=5)
    gate = cases.randn(si, h, seed=11, scale=h ** -0.5)
    up = cases.randn(si, h, seed=12, scale=h ** -0.5)
    down = cases.randn(h, si, seed=13, scale=si ** -0.5)
    if quant == "bf16":
        sw = dict(gate=gate, up=up, down=down)
        sk = {}
    else:
        fn = cases.quantize_weight_block if quant == "fp8_block" else cases.quantize_weight_channel
        (gq, gs), (uq, us), (dq, ds) = fn(gate), fn(up), fn(down)
        sw = dict(gate=gq, up=uq, down=dq)
        sk = dict(gate_scale=gs, up_scale=us, down_scale=ds)
    w13c, w2c, s13, s2, n = append_shared_expert(kw["w13"], kw["w2"], **sw, w13_scale=kw.get("w13_scale"),
                                                 w2_scale=kw.get("w2_scale"), **sk)
    assert n == -(-si // i) and w13c.shape == (e + n, 2 * i, h) and w2c.shape == (e + n, h, i)
    w, ids = shared_expert_routing(kw["topk_weights"], kw["topk_ids"], e, n)
    assert ids.shape == (t, k + n) and torch.equal(ids[:, k:], torch.arange(e, e + n).expand(t, n).to(ids.dtype))
    combined = dict(x=kw["x"], w13=w13c, w2=w2c, topk_weights=w, topk_ids=ids, w13_scale=s13, w2_scale=s2)
    got = fused_moe(**combined)  # the kernel (interpreter) on the combined experts
    twin = ref.fused_moe(**combined)
    assert cases.max_err(got, twin) <= cases.bf16_tol(twin, cases.RTOL["fp8" if quant != "bf16" else "bf16"])
    # the unfused model: routed experts, plus the shared MLP run as one expert of weight 1, added in bf16
    routed = ref.fused_moe(**kw)
    one = dict(topk_weights=torch.ones(t, 1), topk_ids=torch.zeros(t, 1, dtype=torch.int32))
    s13_full = None if quant == "bf16" else torch.cat([sk["gate_scale"], sk["up_scale"]])[None]
    s2_full = None if quant == "bf16" else sk["down_scale"][None]
    shared = ref.fused_moe(kw["x"], torch.cat([sw["gate"], sw["up"]])[None], sw["down"][None], **one,
                           w13_scale=s13_full, w2_scale=s2_full)
    want = routed + shared
    assert cases.max_err(twin, want) <= cases.bf16_tol(want, 3e-2)
