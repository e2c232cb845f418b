"""Quality report: weight-error summary, BF16 vs FP8 model comparison, activation quantisation emulation."""

import json

import pytest
import torch
from safetensors.torch import load_file, save_file

from angelcli.fixtures import write_tiny_checkpoint
from angelcli.quant import report
from angelcli.quant.run import QuantOptions, quantize_one


pytestmark = pytest.mark.usefixtures("one_thread")  # conftest.py: one intra-op thread


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("report")
    src = write_tiny_checkpoint(root / "src")
    ev = root / "eval.txt"
    ev.write_text("\n\n".join([
        "Patients with type 2 diabetes often report thirst, frequent urination and fatigue.",
        "A doctor should be seen when chest pain spreads to the arm or jaw.",
        "High blood pressure rarely causes symptoms, so check it regularly.",
        "糖尿病患者常见口渴、多尿和乏力。"]), encoding="utf-8")
    out = root / "fp8"
    res = quantize_one(str(src), out, QuantOptions(eval_data=str(ev), eval_samples=4, max_seq_len=96))
    return src, out, ev, res


def test_report_in_result_file_and_manifest(setup):
    src, out, _, res = setup
    rep = res["report"]
    w, m = rep["weights"], rep["model"]
    assert w["quantized_tensors"] == 54 and set(w["groups"]) == {"routed_experts", "shared_experts"}
    assert 0 < w["rel_err_mean"] <= w["rel_err_max"] < 0.035 and len(w["worst"]) == 5
    assert m["samples"] == 4 and m["activation_quant"] == "block"
    assert m["perplexity_bf16"] > 1 and m["perplexity_fp8"] > 1
    assert abs(m["perplexity_delta_pct"]) < 10
    assert 0.5 < m["top1_agreement"] <= 1.0
    assert set(m["routing_agreement"]) == {"1", "2"} and 0.5 < m["routing_agreement_min"] <= 1.0
    assert json.loads((out / "quant_report.json").read_text()) == rep
    assert json.loads((out / "manifest.json").read_text())["report"] == rep


def test_report_sees_damage(setup, tmp_path):
    """A corrupted expert scale shows up as worse agreement: the comparison is not a rubber stamp."""
    import shutil

    from angelcli.quant.calib_data import load_samples, tokenize_samples
    from angelcli.tokenizer import load_tokenizer

    src, out, ev, res = setup
    bad = tmp_path / "bad"
    shutil.copytree(out, bad)
    for shard in bad.glob("*.safetensors"):
        sd = load_file(str(shard))
        hit = False
        for k in list(sd):
            if k.endswith("_scale_inv") and ".layers.1." in k:
                sd[k] = sd[k] * 8  # every layer-1 expert weight 8x too large
                hit = True
        if hit:
            save_file(sd, str(shard), metadata={"format": "pt"})
    ids = tokenize_samples(load_tokenizer(src), load_samples(str(ev)), 4, 96)
    good, worse = report.evaluate(src, out, ids), report.evaluate(src, bad, ids)
    assert good["top1_agreement"] == res["report"]["model"]["top1_agreement"]
    assert worse["top1_agreement"] < good["top1_agreement"]
    assert worse["routing_agreement"]["2"] < good["routing_agreement"]["2"]
    assert abs(worse["perplexity_delta_pct"]) > abs(good["perplexity_delta_pct"])


def test_activation_quant_hooks_follow_the_scheme(setup, tmp_path):
    from angelcli.quant.dequant import load_dequantized_model

    src, out, _, _ = setup
    dyn = tmp_path / "dyn"
    quantize_one(str(src), dyn, QuantOptions(scheme="dynamic", targets="all", report=False))
    # bounds: quantising a random tiny model's attention moves logits a lot (no outliers to protect, sharp
    # softmax), so the all-targets case only has to stay finite and change
    for d, n_linear, bound in ((out, 2 * 3, 0.3), (dyn, 3 * 2 + 3 + 2 * 3, 1.0)):
        model, cfg, reader = load_dequantized_model(d)
        ids = torch.tensor([[3, 9, 27, 81, 4, 16]])
        before = model(ids).logits
        n = report.install_activation_quant(model, reader)
        assert n == n_linear + 2 * cfg.num_experts * 3  # hooked linears + routed experts of both MoE layers
        after = model(ids).logits
        assert not torch.equal(before, after) and torch.isfinite(after).all()
        assert ((before - after).norm() / before.norm()).item() < bound


def test_summarize_errors_groups_and_worst():
    stats = {"model.layers.1.mlp.experts.0.up_proj.weight": {"rel_err": 0.02, "max_abs_err": 0.1, "amax": 1.0},
             "model.layers.1.mlp.shared_experts.up_proj.weight": {"rel_err": 0.03, "max_abs_err": 0.1, "amax": 1.0},
             "model.layers.0.attention.dense.weight": {"rel_err": 0.01, "max_abs_err": 0.1, "amax": 1.0},
             "model.layers.0.mlp.down_proj.weight": {"rel_err": 0.025, "max_abs_err": 0.1, "amax": 1.0}}
    s = report.summarize_errors(stats, worst=2)
    assert set(s["groups"]) == {"routed_experts", "shared_experts", "attention", "dense_ffn"}
    assert [w["tensor"] for w in s["worst"]] == ["model.layers.1.mlp.shared_experts.up_proj.weight",
                                                 "model.layers.0.mlp.down_proj.weight"]
    assert s["rel_err_max"] == 0.03 and s["rel_err_mean"] == pytest.approx(0.02125)
