"""angel verify, dynamic stage: routing statistics, layer streaming, --against, broken routers."""

import json
import math
import shutil

import pytest
import torch

from angelcli.config import ModelConfig
from angelcli.errors import UsageError
from angelcli.fixtures import tiny_config, write_checkpoint
from angelcli.loader import CheckpointReader, load_model
from angelcli.model.moe import RouterOutput
from angelcli.verify import Thresholds, VerifyOptions, verify
from angelcli.verify.dynamic import compare_routing, layer_stats, routing_checks
from angelcli.verify.stream import LayerStreamer, stream_forward
from tests import verify_fixtures as vf

RANDOM = VerifyOptions(prompts="random", max_tokens=48, num_random=6)


def statuses(report):
    return {c["name"]: c["status"] for c in report["checks"]}


def router(ids, logits=None, layer=1, E=8):
    ids = torch.tensor(ids)
    logits = torch.zeros(ids.shape[0], E) if logits is None else torch.tensor(logits, dtype=torch.float32)
    return RouterOutput(layer, logits, ids, torch.ones(ids.shape, dtype=torch.float32))


def test_stats_by_hand():
    # E=8 in 4 groups {0,1} {2,3} {4,5} {6,7}, top-2, at most 2 groups per token.
    cfg = ModelConfig.from_dict(tiny_config(moe_router_enable_expert_bias=False))
    s = layer_stats(router([[0, 1], [0, 2], [0, 1], [4, 5]]), cfg)
    assert s["expert_load"] == [3, 2, 1, 0, 1, 1, 0, 0]
    assert s["load_sum"] == 8 == s["tokens"] * s["top_k"]
    assert s["dead_experts"] == [3, 6, 7]
    assert s["max_load"] == 3 and s["mean_load"] == 1.0 and s["max_mean_ratio"] == 3.0
    p = [3 / 8, 2 / 8, 1 / 8, 1 / 8, 1 / 8]
    assert s["entropy"] == pytest.approx(-sum(x * math.log(x) for x in p))
    assert s["entropy_norm"] == pytest.approx(s["entropy"] / math.log(8))
    assert s["max_groups"] == 2 and s["group_violations"] == 0 and s["top_k_violations"] == 0
    assert s["bias_changed_share"] is None  # no expert_bias in this config


def test_violations_by_hand():
    cfg = ModelConfig.from_dict(tiny_config(topk_group=1))
    s = layer_stats(router([[0, 2], [3, 3], [4, 5], [1, 9]]), cfg)
    assert s["group_violations"] == 1  # [0, 2] spans groups 0 and 1 (limit 1); [3, 3] and [1, 9] are one group
    assert s["top_k_violations"] == 2  # a duplicate and an id outside 0..7
    checks = {c.name: c for c in routing_checks([s], cfg, Thresholds())}
    assert checks["routing.top_k"].failed and checks["routing.top_k"].layers == [1]
    assert checks["routing.group_limit"].failed
    assert checks["routing.dead_experts"].status == "skip"  # 4 tokens x 2 / 8 experts: too few to judge


def test_bias_changed_share_by_hand():
    cfg = ModelConfig.from_dict(tiny_config())
    # Token 0: without bias experts 0 and 1 win (logits 4, 3); the recorded choice 6, 7 came from the bias.
    # Token 1: experts 6 and 7 win either way.
    logits = [[4, 3, 0, 0, 0, 0, 0, 0], [0, 0, 0, 0, 0, 0, 10, 9]]
    s = layer_stats(router([[6, 7], [6, 7]], logits), cfg)
    assert s["bias_changed_share"] == 0.5
    assert s["bias_swapped_mean"] == 1.0


def test_compare_routing_by_hand():
    a = [router([[0, 1], [2, 3], [4, 5]])]
    b = [router([[1, 0], [2, 4], [6, 7]])]
    (layer,) = compare_routing(a, b, 8)
    assert layer["identical_share"] == pytest.approx(1 / 3)
    assert layer["mean_jaccard"] == pytest.approx((1 + 1 / 3 + 0) / 3)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_streaming_equals_full_model(tiny_ckpt, dtype):
    model, cfg, _ = load_model(tiny_ckpt, dtype=dtype)
    model.fast_inference = False  # the streamer runs the decoder-layer modules: compare with their forward, bitwise
    prompts = [[5, 9, 1, 33, 7, 2, 88], [3, 4], list(range(20, 60))]
    res = stream_forward(LayerStreamer(CheckpointReader(tiny_ckpt), cfg, dtype, "cpu"), prompts, keep_final=True)
    with torch.no_grad():
        full = [model(torch.tensor([p]), return_router=True) for p in prompts]
    assert [r.layer for r in res.router] == list(cfg.moe_layers)
    for k, r in enumerate(res.router):
        assert torch.equal(r.logits, torch.cat([f.router[k].logits for f in full]))
        assert torch.equal(r.topk_ids, torch.cat([f.router[k].topk_ids for f in full]))
        assert torch.equal(r.topk_weights, torch.cat([f.router[k].topk_weights for f in full]))
    for h, f in zip(res.final_hidden, full):
        assert torch.equal(model.lm_head(h).float(), f.logits[0])


def test_random_prompts_report(tiny_ckpt):
    report, _ = verify(str(tiny_ckpt), RANDOM)
    assert report["exit_code"] == 0, report["checks"]
    r = report["routing"]
    assert r["tokens"] == 6 * 48 and r["prompts"]["source"] == "random"
    for s in r["layers"]:
        assert {"layer", "tokens", "top_k", "expert_load"} <= set(s)
        assert sum(s["expert_load"]) == s["tokens"] * s["top_k"] == 288 * 2
    assert [s["layer"] for s in r["layers"]] == [1, 2]
    json.dumps(report)  # everything is JSON-serialisable


def test_medical_and_file_prompts(tiny_ckpt, tmp_path):
    from angelcli.data import load_prompts

    report, _ = verify(str(tiny_ckpt), VerifyOptions(prompts="medical", max_tokens=40))
    r = report["routing"]
    assert r["sequences"] == len(load_prompts()) and r["tokens"] <= 40 * r["sequences"]
    f = tmp_path / "p.jsonl"
    f.write_text('{"text": "Is ibuprofen safe with food?"}\n{"prompt": "fever in an infant"}\n'
                 '{"messages": [{"role": "user", "content": "chest pain"}, {"role": "assistant", "content": "call"}]}\n')
    report, _ = verify(str(tiny_ckpt), VerifyOptions(prompts=str(f)))
    assert report["routing"]["sequences"] == 3 and report["routing"]["prompts"]["source"] == str(f)
    t = tmp_path / "p.txt"
    t.write_text("first paragraph\nstill the first\n\nsecond one\n")
    report, _ = verify(str(tiny_ckpt), VerifyOptions(prompts=str(t)))
    assert report["routing"]["sequences"] == 2
    with pytest.raises(UsageError, match="no such file"):
        verify(str(tiny_ckpt), VerifyOptions(prompts=str(tmp_path / "nope.jsonl")))


def test_text_prompts_need_a_tokenizer(tmp_path):
    cfg, sd = vf.base()
    ck = write_checkpoint(tmp_path / "notok", cfg, sd)
    with pytest.raises(UsageError, match="--prompts random"):
        verify(str(ck), VerifyOptions(prompts="medical"))
    report, _ = verify(str(ck), RANDOM)
    assert report["exit_code"] == 0


def test_collapsed_router_fails_routing_checks(tmp_path):
    cfg, sd = vf.base()
    ck = write_checkpoint(tmp_path / "collapsed", cfg, vf.collapse_router(cfg, sd, experts=(0, 1)))
    report, _ = verify(str(ck), RANDOM)
    st = statuses(report)
    assert st["routing.dead_experts"] == "fail" and st["routing.balance"] == "fail"
    assert st["routing.top_k"] == "pass" and st["inventory.tensors"] == "pass"
    for s in report["routing"]["layers"]:
        assert s["dead_experts"] == [2, 3, 4, 5, 6, 7] and s["expert_load"][:2] == [288, 288]
        assert s["entropy_norm"] == pytest.approx(math.log(2) / math.log(8))
    detail = next(c["detail"] for c in report["checks"] if c["name"] == "routing.dead_experts")
    assert "layer 1, 6 of 8 never chosen" in detail
    assert report["exit_code"] == 1


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    """A checkpoint, a byte-identical copy, a perturbed-router variant and its block-FP8 export."""
    root = tmp_path_factory.mktemp("pair")
    cfg, sd = vf.base(seed=3)
    a = write_checkpoint(root / "a", cfg, sd)
    same = root / "same"
    shutil.copytree(a, same)
    perturbed = write_checkpoint(root / "perturbed", cfg, vf.perturb_router(cfg, sd))
    fp8 = vf.write_fp8_block(root / "fp8", cfg, sd, block=(16, 16))
    return a, same, perturbed, fp8


def test_against_identical_and_perturbed(pair):
    a, same, perturbed, _ = pair
    report, _ = verify(str(a), VerifyOptions(prompts="random", max_tokens=48, num_random=6, against=str(same)))
    assert all(s["identical_share"] == 1.0 and s["mean_jaccard"] == 1.0 for s in report["against"]["layers"])
    d = report["against"]["logits"]
    assert d["kl_mean"] < 1e-6 and d["top1_agreement"] == 1.0 and d["positions"] == 288
    assert statuses(report)["against.routing"] == "pass" and report["exit_code"] == 0

    report, _ = verify(str(a), VerifyOptions(prompts="random", max_tokens=48, num_random=6, against=str(perturbed),
                                             thresholds=Thresholds(min_jaccard=0.99)))
    layers = report["against"]["layers"]
    assert all(s["identical_share"] < 1.0 and s["mean_jaccard"] < 1.0 for s in layers)
    assert report["against"]["logits"]["kl_mean"] > 0
    assert statuses(report)["against.routing"] == "fail" and report["exit_code"] == 1


def test_against_fp8_export(pair):
    a, _, _, fp8 = pair
    report, _ = verify(str(a), VerifyOptions(prompts="random", max_tokens=48, num_random=6, against=str(fp8)))
    layers = report["against"]["layers"]
    # FP8 rounding moves a few near-tie routing decisions, never most of them.
    assert all(0.8 < s["mean_jaccard"] < 1.0 for s in layers)
    assert 0 < report["against"]["logits"]["kl_mean"] < 0.2  # a random tiny model has small logit margins


def test_fp8_dequantised_layer_matches_bf16(pair):
    a, _, _, fp8 = pair
    cfg = ModelConfig.from_file(fp8)
    ref = LayerStreamer(CheckpointReader(a), ModelConfig.from_file(a), torch.float32, "cpu")
    q = LayerStreamer(CheckpointReader(fp8), cfg, torch.float32, "cpu")
    for name in ("model.layers.1.mlp.experts.3.up_proj.weight", "model.layers.0.attention.query_key_value.weight"):
        w, wq = ref.tensor(name), q.tensor(name)
        assert wq.shape == w.shape
        # e4m3 keeps 3 mantissa bits: every element within 2^-4 of itself (plus the subnormal floor of its
        # block); a scale applied to the wrong block breaks this bound.
        assert bool(((w - wq).abs() <= w.abs() / 16 + 1e-3 * w.abs().amax()).all())
        assert float((w - wq).abs().mean()) > 0
    assert torch.equal(ref.tensor("model.layers.1.mlp.gate.weight"), q.tensor("model.layers.1.mlp.gate.weight"))


def test_against_other_architecture_is_a_usage_error(tiny_ckpt, tmp_path):
    cfg, sd = vf.base(num_experts=16, n_group=4)
    other = write_checkpoint(tmp_path / "other", cfg, sd)
    with pytest.raises(UsageError, match="num_experts"):
        verify(str(tiny_ckpt), VerifyOptions(prompts="random", against=str(other)))


def test_against_a_broken_checkpoint_is_an_integrity_failure(pair, tmp_path):
    a = pair[0]
    cfg, sd = vf.base(seed=3)
    sd.pop("model.layers.2.mlp.gate.expert_bias")
    other = write_checkpoint(tmp_path / "broken", cfg, sd)
    report, _ = verify(str(a), VerifyOptions(prompts="random", max_tokens=16, against=str(other)))
    st = statuses(report)
    assert st["against.inventory.tensors"] == "fail" and st["against.routing"] == "skip"
    assert report["against"] is None and report["routing"]["tokens"] == 8 * 16
    assert report["exit_code"] == 3
