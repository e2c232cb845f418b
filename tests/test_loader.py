"""Loader round trip and every error case, through the library and through the CLI."""

import json
import shutil

import pytest
import torch
from safetensors.torch import load_file, save_file

from angelcli.errors import IntegrityError, UsageError
from angelcli.fixtures import random_state_dict, tiny_config, write_checkpoint
from angelcli.loader import CheckpointReader, load_model


def _ckpt(tmp_path, shards=2, **over):
    cfg = tiny_config(vocab_size=64, **over)
    sd = random_state_dict(cfg, seed=1)
    write_checkpoint(tmp_path, cfg, sd, shards=shards)
    return cfg, sd


@pytest.mark.parametrize("shards", [1, 2, 3])
def test_round_trip_every_tensor(tmp_path, shards):
    cfg, sd = _ckpt(tmp_path, shards=shards)
    model, mcfg, report = load_model(tmp_path, dtype=torch.bfloat16)
    assert report.ok
    params = dict(model.named_parameters())
    I = mcfg.moe_intermediate_size
    for name, t in sd.items():
        if ".experts." in name:
            layer, e, proj = name.split(".")[2], int(name.split(".")[5]), name.split(".")[6]
            if proj == "down_proj":
                got = params[f"model.layers.{layer}.mlp.experts.w2"][e]
            else:
                w13 = params[f"model.layers.{layer}.mlp.experts.w13"][e]
                got = w13[:I] if proj == "gate_proj" else w13[I:]
        else:
            got = params[name]
        assert got.dtype == (torch.float32 if name.endswith("expert_bias") else torch.bfloat16)
        assert torch.equal(got.float(), t.float()), name
    assert not any(p.is_meta for p in model.parameters())


def test_expert_bias_kept_fp32_even_when_loading_fp16(tmp_path):
    _ckpt(tmp_path)
    model, _, _ = load_model(tmp_path, dtype=torch.float16)
    assert model.model.layers[1].mlp.gate.expert_bias.dtype == torch.float32
    assert model.model.layers[1].mlp.experts.w13.dtype == torch.float16


def _rewrite_shard(tmp_path, mutate):
    shard = sorted(tmp_path.glob("model-*.safetensors"))[-1]
    tensors = load_file(str(shard))
    mutate(tensors)
    save_file(tensors, str(shard))
    index = json.loads((tmp_path / "model.safetensors.index.json").read_text())
    index["weight_map"] = {k: v for k, v in index["weight_map"].items() if v != shard.name}
    index["weight_map"].update({k: shard.name for k in tensors})
    (tmp_path / "model.safetensors.index.json").write_text(json.dumps(index))


def test_report_missing_unexpected_shape_dtype(tmp_path):
    _ckpt(tmp_path)

    def mutate(t):
        t.pop("lm_head.weight")
        t["model.extra.weight"] = torch.zeros(2)
        t["model.norm.weight"] = torch.ones(7, dtype=torch.bfloat16)
        name = next(k for k in t if k.endswith("expert_bias"))
        t[name] = t[name].bfloat16()

    _rewrite_shard(tmp_path, mutate)
    from angelcli.config import ModelConfig
    from angelcli.loader import check_inventory

    report = check_inventory(ModelConfig.from_file(tmp_path), CheckpointReader(tmp_path))
    assert report.missing == ["lm_head.weight"]
    assert report.unexpected == ["model.extra.weight"]
    assert report.wrong_shape[0][0] == "model.norm.weight"
    assert report.wrong_dtype[0][0].endswith("expert_bias") and report.wrong_dtype[0][1] == "BF16"
    with pytest.raises(IntegrityError, match="missing"):
        load_model(tmp_path)


def test_truncated_shard_names_the_file(tmp_path):
    _ckpt(tmp_path)
    shard = sorted(tmp_path.glob("model-*.safetensors"))[0]
    data = shard.read_bytes()
    shard.write_bytes(data[: len(data) - 100])
    with pytest.raises(IntegrityError, match=shard.name):
        load_model(tmp_path)


def test_garbage_shard_and_missing_shard(tmp_path):
    _ckpt(tmp_path)
    shards = sorted(tmp_path.glob("model-*.safetensors"))
    shards[0].write_bytes(b"\x05\x00\x00\x00\x00\x00\x00\x00{bad}")
    with pytest.raises(IntegrityError, match="corrupt"):
        load_model(tmp_path)
    shards[1].unlink()
    with pytest.raises(IntegrityError, match="missing"):
        load_model(tmp_path)


def test_bad_index_and_missing_paths(tmp_path):
    with pytest.raises(UsageError, match="no such model directory"):
        CheckpointReader(tmp_path / "nope")
    _ckpt(tmp_path)
    (tmp_path / "model.safetensors.index.json").write_text("{not json")
    with pytest.raises(IntegrityError, match="index"):
        load_model(tmp_path)
    empty = tmp_path / "empty"
    empty.mkdir()
    shutil.copy(tmp_path / "config.json", empty / "config.json")
    with pytest.raises(UsageError, match="no \\*.safetensors"):
        load_model(empty)


def test_config_errors_name_the_field(tmp_path):
    cfg = tiny_config(score_function="softmax")
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(UsageError, match="score_function"):
        load_model(tmp_path)
    (tmp_path / "config.json").write_text("{")
    with pytest.raises(UsageError, match="not valid JSON"):
        load_model(tmp_path)


def test_meta_build_of_the_full_size_model_allocates_nothing():
    from angelcli.config import ModelConfig
    from angelcli.model import BailingMoeForCausalLM

    real = tiny_config(vocab_size=157184, hidden_size=4096, intermediate_size=9216, num_hidden_layers=32,
                       num_attention_heads=32, num_key_value_heads=4, head_dim=128, num_experts=256,
                       num_experts_per_tok=8, n_group=8, topk_group=4, moe_intermediate_size=1024,
                       moe_shared_expert_intermediate_size=1024)
    with torch.device("meta"):
        m = BailingMoeForCausalLM(ModelConfig.from_dict(real))
    n = sum(p.numel() for p in m.parameters())
    assert n == 102_889_697_280 + 7_936  # spec §4: BF16 + FP32 parameter count
