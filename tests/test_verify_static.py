"""angel verify, static stage: exact accounting from config.json, header inventory, FP8 scales."""

from pathlib import Path

import pytest
import torch

from angelcli.errors import UsageError
from angelcli.fixtures import write_checkpoint
from angelcli.verify import VerifyOptions, verify
from angelcli.verify.quant_layout import layout_from_config
from tests import verify_fixtures as vf

STATIC = VerifyOptions(static_only=True)


def by_name(report):
    return {c["name"]: c for c in report["checks"]}


def failed(report):
    return {c["name"] for c in report["checks"] if c["status"] == "fail"}


@pytest.mark.parametrize("alias", ["antangelmed", "antangelmed-fp8", "ling-flash-2.0"])
def test_antangelmed_accounting_from_bundled_config(alias):
    report, _ = verify(alias, STATIC)  # nothing pulled: the bundled config stands in
    s = report["static"]
    assert report["path"] is None and report["config_source"] == "bundled"
    assert s["total_params_model_dtype"] == 102_889_697_280
    assert s["total_params_fp32"] == 7_936
    assert report["total_params"] == 102_889_705_216
    assert report["active_params"] == 6_152_269_824  # ≈ 6.15B with both embedding matrices
    assert s["active_params_non_embedding"] == 4_864_618_496
    assert report["activation_ratio"] == 8 / 256
    a = s["active_components"]
    assert a["routed_experts"] == 31 * 8 * 3 * 4096 * 1024
    assert a["shared_experts"] == 31 * 3 * 4096 * 1024
    assert a["routers"] == 31 * 256 * 4096
    assert a["attention"] == 32 * (4096 * 5120 + 4096 * 4096)
    assert a["dense_ffn"] == 3 * 4096 * 9216
    assert a["embeddings"] == a["lm_head"] == 157184 * 4096
    assert sum(a.values()) == report["active_params"]
    assert report["checks"] == [] and report["exit_code"] == 0


def test_not_pulled_alias_needs_static():
    with pytest.raises(UsageError, match="--static"):
        verify("antangelmed", VerifyOptions())


def test_clean_checkpoint_passes_every_inventory_check(tiny_ckpt):
    report, _ = verify(str(tiny_ckpt), STATIC)
    names = by_name(report)
    for n in ("inventory.shards", "inventory.tensors", "inventory.experts", "inventory.unexpected",
              "inventory.shapes", "inventory.dtypes", "inventory.expert_bias", "inventory.params"):
        assert names[n]["status"] == "pass", names[n]
    assert report["static"]["inventory"]["header_params"] == report["total_params"]
    assert report["routing"] is None and report["exit_code"] == 0


def _broken(tmp_path, mutate, **over) -> Path:
    cfg, sd = vf.base(**over)
    mutate(sd)
    return write_checkpoint(tmp_path / "broken", cfg, sd)


def test_missing_expert_tensor(tmp_path):
    name = "model.layers.2.mlp.experts.5.up_proj.weight"
    report, _ = verify(str(_broken(tmp_path, lambda sd: sd.pop(name))), STATIC)
    assert {"inventory.tensors", "inventory.experts", "inventory.params"} <= failed(report)
    assert name in by_name(report)["inventory.tensors"]["detail"]
    exp = by_name(report)["inventory.experts"]
    assert "layer 2 expert 5 lacks up_proj" in exp["detail"] and exp["layers"] == [2]
    assert report["exit_code"] == 3


def test_wrong_shape_and_dtype(tmp_path):
    def mutate(sd):
        sd["model.layers.1.mlp.experts.0.down_proj.weight"] = torch.zeros(64, 16, dtype=torch.bfloat16)
        sd["model.layers.2.mlp.gate.expert_bias"] = sd["model.layers.2.mlp.gate.expert_bias"].bfloat16()

    report, _ = verify(str(_broken(tmp_path, mutate)), STATIC)
    names = by_name(report)
    assert "model.layers.1.mlp.experts.0.down_proj.weight is [64, 16], expected [64, 32]" in names["inventory.shapes"]["detail"]
    assert "model.layers.2.mlp.gate.expert_bias is BF16, expected F32" in names["inventory.dtypes"]["detail"]
    assert names["inventory.expert_bias"]["status"] == "fail"
    assert report["exit_code"] == 3


def test_unexpected_tensor_and_nan_bias(tmp_path):
    def mutate(sd):
        sd["model.layers.3.enorm.weight"] = torch.ones(64, dtype=torch.bfloat16)  # an MTP layer the config lacks
        sd["model.layers.1.mlp.gate.expert_bias"] = torch.full((8,), float("nan"))

    report, _ = verify(str(_broken(tmp_path, mutate)), STATIC)
    names = by_name(report)
    assert "model.layers.3.enorm.weight" in names["inventory.unexpected"]["detail"]
    assert "model.layers.1.mlp.gate.expert_bias holds NaN" in names["inventory.expert_bias"]["detail"]


def test_truncated_shard_is_an_integrity_failure_not_a_crash(tmp_path):
    cfg, sd = vf.base()
    ck = write_checkpoint(tmp_path / "t", cfg, sd)
    shard = sorted(ck.glob("model-*.safetensors"))[1]
    shard.write_bytes(shard.read_bytes()[:-100])
    report, _ = verify(str(ck), STATIC)
    assert failed(report) == {"inventory.shards"} and shard.name in report["checks"][0]["detail"]
    assert report["exit_code"] == 3


@pytest.fixture(scope="module")
def fp8_ckpt(tmp_path_factory):
    cfg, sd = vf.base()
    return vf.write_fp8_block(tmp_path_factory.mktemp("fp8") / "m", cfg, sd, block=(16, 16))


def test_fp8_block_layout_passes(fp8_ckpt):
    report, _ = verify(str(fp8_ckpt), STATIC)
    assert failed(report) == set(), report["checks"]
    names = by_name(report)
    for n in ("quant.layout", "quant.scales", "quant.scales_finite"):
        assert names[n]["status"] == "pass"
    q = report["static"]["inventory"]["quantization"]
    assert q["method"] == "fp8" and q["block"] == [16, 16] and q["scales"] == q["quantised_weights"]
    assert report["static"]["inventory"]["header_params"] == report["total_params"]  # scales are not parameters


def _fp8_variant(tmp_path, mutate):
    cfg, sd = vf.base()
    ck = vf.write_fp8_block(tmp_path / "src", cfg, sd, block=(16, 16))
    from angelcli.loader import CheckpointReader

    reader = CheckpointReader(ck)
    q_sd = {n: reader.get(n) for n in reader.tensors}
    import json

    qcfg = json.loads((ck / "config.json").read_text())
    mutate(q_sd)
    return write_checkpoint(tmp_path / "variant", qcfg, q_sd)


def test_nan_fp8_scale(tmp_path):
    name = "model.layers.1.mlp.experts.3.gate_proj.weight_scale_inv"

    def mutate(sd):
        sd[name] = sd[name].clone()
        sd[name][0, 1] = float("nan")

    report, _ = verify(str(_fp8_variant(tmp_path, mutate)), STATIC)
    assert failed(report) == {"quant.scales_finite"}
    assert name in by_name(report)["quant.scales_finite"]["detail"]
    assert report["exit_code"] == 3


def test_missing_and_misshapen_fp8_scales(tmp_path):
    def mutate(sd):
        sd.pop("model.layers.0.attention.dense.weight_scale_inv")
        sd["model.layers.2.mlp.experts.0.down_proj.weight_scale_inv"] = torch.ones(4, 4)  # should be [4, 2]

    report, _ = verify(str(_fp8_variant(tmp_path, mutate)), STATIC)
    detail = by_name(report)["quant.scales"]["detail"]
    assert "2 scale problem(s)" in detail
    assert "model.layers.0.attention.dense.weight is F8_E4M3 without model.layers.0.attention.dense.weight_scale_inv" in detail
    assert report["exit_code"] == 3


def test_quantised_router_breaks_the_layout(tmp_path):
    def mutate(sd):
        w = sd["model.layers.1.mlp.gate.weight"]
        sd["model.layers.1.mlp.gate.weight"], sd["model.layers.1.mlp.gate.weight_scale_inv"] = vf.quant_block(w, 16, 16)

    report, _ = verify(str(_fp8_variant(tmp_path, mutate)), STATIC)
    assert "model.layers.1.mlp.gate.weight is F8_E4M3, but it must stay high precision" in \
        by_name(report)["quant.layout"]["detail"]


def test_compressed_tensors_channel_layout(tmp_path):
    cfg, sd = vf.base()
    report, _ = verify(str(vf.write_ct_channel(tmp_path / "ct", cfg, sd)), STATIC)
    assert failed(report) == set(), report["checks"]
    assert report["static"]["inventory"]["quantization"]["strategy"] == "channel"


def test_scale_shapes_round_up():
    lay = layout_from_config({"quant_method": "fp8", "weight_block_size": [128, 128]})
    assert lay.scale_shape((5120, 4096)) == (40, 32)  # fused QKV of AntAngelMed (spec §6)
    assert lay.scale_shape((1024, 4096)) == (8, 32) and lay.scale_shape((4096, 1024)) == (32, 8)
    assert lay.scale_shape((100, 300)) == (1, 3)
    assert lay.scale_name("x.weight") == "x.weight_scale_inv"
    with pytest.raises(UsageError, match="quant_method"):
        layout_from_config({"quant_method": "awq"})


def test_angel_tiny_default_model():
    report, _ = verify(None, STATIC)  # MODEL omitted: the embedded angel-tiny (or its random stand-in)
    assert report["model"] == "angel-tiny" and report["config_source"] == "local"
    assert failed(report) == set(), report["checks"]
    assert report["static"]["inventory"]["header_params"] == report["total_params"]
