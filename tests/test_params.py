"""Parameter accounting: the spec §4 numbers, and an independent tensor enumeration (spec §2) as a cross-check."""

from __future__ import annotations

import json
import math
import struct

import pytest

from angelcli.aliases import bundled_config
from angelcli.errors import UsageError
from angelcli.params import count_from_safetensors, count_params, human_count, is_bailing_moe


def test_antangelmed_exact_counts():
    p = count_params(bundled_config("antangelmed"))
    assert p.bf16 == 102_889_697_280
    assert p.fp32 == 7_936
    assert p.total == 102_889_705_216
    assert p.active == 6_152_269_824
    assert p.active_non_embedding == 4_864_618_496
    assert p.active_non_embedding - p.active_components["routers"] == 4_832_112_640  # "4.8B non-embedding"
    assert p.routed_ratio == 8 / 256
    assert p.components["embeddings"] == p.components["lm_head"] == 643_825_664
    assert p.components["attention"] + p.components["norms"] - 4096 == 1_208_229_888
    assert p.components["dense_ffn"] == 113_246_208
    assert sum(v for k, v in p.components.items() if k != "expert_bias_fp32") == p.bf16
    assert sum(p.active_components.values()) == p.active


def test_bytes_bf16_and_block_fp8():
    p = count_params(bundled_config("antangelmed"))
    assert p.bytes_bf16 == 205_779_426_304
    assert p.fp8_quantized == 101_569_265_664
    assert p.bf16 - p.fp8_quantized == 1_320_431_616
    assert p.fp8_scale_blocks == 6_199_296
    assert p.bytes_fp8_block == 104_234_957_824
    # The FP8 alias describes the same weights.
    q = count_params(bundled_config("antangelmed-fp8"))
    assert (q.bf16, q.fp32, q.bytes_fp8_block) == (p.bf16, p.fp32, p.bytes_fp8_block)


def test_mtp_layer_adds_spec_amount():
    cfg = bundled_config("ling-flash-2.0")
    cfg["num_nextn_predict_layers"] = 1
    p = count_params(cfg)
    assert p.bf16 - 102_889_697_280 == 3_306_180_864
    assert p.fp32 == 7_936 + 256
    assert p.active == 6_152_269_824  # the MTP layer is not on the normal decode path


def _enumerate_tensors(cfg: dict) -> dict[str, tuple[tuple[int, ...], str]]:
    """Tensor names and shapes written out from the spec §2 table (independent of angelcli.params)."""
    h, v, hd = cfg["hidden_size"], cfg["vocab_size"], cfg["head_dim"]
    nh, nkv, ne = cfg["num_attention_heads"], cfg["num_key_value_heads"], cfg["num_experts"]
    t: dict[str, tuple[tuple[int, ...], str]] = {"model.word_embeddings.weight": ((v, h), "bf16")}
    for i in range(cfg["num_hidden_layers"]):
        p = f"model.layers.{i}."
        t[p + "input_layernorm.weight"] = ((h,), "bf16")
        t[p + "attention.query_key_value.weight"] = (((nh + 2 * nkv) * hd, h), "bf16")
        t[p + "attention.query_layernorm.weight"] = ((hd,), "bf16")
        t[p + "attention.key_layernorm.weight"] = ((hd,), "bf16")
        t[p + "attention.dense.weight"] = ((h, nh * hd), "bf16")
        t[p + "post_attention_layernorm.weight"] = ((h,), "bf16")
        if i < cfg["first_k_dense_replace"]:
            f = cfg["intermediate_size"]
            for n in ("gate_proj", "up_proj"):
                t[p + f"mlp.{n}.weight"] = ((f, h), "bf16")
            t[p + "mlp.down_proj.weight"] = ((h, f), "bf16")
            continue
        t[p + "mlp.gate.weight"] = ((ne, h), "bf16")
        t[p + "mlp.gate.expert_bias"] = ((ne,), "fp32")
        m = cfg["moe_intermediate_size"]
        for e in [f"experts.{e}" for e in range(ne)] + ["shared_experts"]:
            mm = m * cfg["num_shared_experts"] if e == "shared_experts" else m
            t[p + f"mlp.{e}.gate_proj.weight"] = ((mm, h), "bf16")
            t[p + f"mlp.{e}.up_proj.weight"] = ((mm, h), "bf16")
            t[p + f"mlp.{e}.down_proj.weight"] = ((h, mm), "bf16")
    t["model.norm.weight"] = ((h,), "bf16")
    t["lm_head.weight"] = ((v, h), "bf16")
    return t


def test_small_config_matches_tensor_enumeration():
    cfg = bundled_config("antangelmed")
    cfg.update(hidden_size=64, vocab_size=1000, head_dim=16, num_attention_heads=4, num_key_value_heads=2,
               num_hidden_layers=3, intermediate_size=96, moe_intermediate_size=32, num_experts=6,
               num_experts_per_tok=2, first_k_dense_replace=1)
    tensors = _enumerate_tensors(cfg)
    bf16 = sum(math.prod(s) for s, d in tensors.values() if d == "bf16")
    fp32 = sum(math.prod(s) for s, d in tensors.values() if d == "fp32")
    p = count_params(cfg)
    assert (p.bf16, p.fp32) == (bf16, fp32)
    one_expert = 3 * 64 * 32
    assert p.active_components["routed_experts"] == 2 * 2 * one_expert


def test_full_config_tensor_count_is_spec_value():
    cfg = bundled_config("antangelmed")
    cfg["num_experts"] = 256
    assert len(_enumerate_tensors(cfg)) == 24_161  # spec §2
    tensors = _enumerate_tensors(cfg)
    assert sum(math.prod(s) for s, d in tensors.values() if d == "bf16") == count_params(cfg).bf16


def test_tied_embeddings_drop_the_head():
    cfg = bundled_config("antangelmed")
    cfg["tie_word_embeddings"] = True
    assert count_params(cfg).bf16 == 102_889_697_280 - 643_825_664


def test_bad_configs_name_the_field():
    cfg = bundled_config("antangelmed")
    del cfg["num_experts"]
    with pytest.raises(UsageError, match="num_experts"):
        count_params(cfg)
    with pytest.raises(UsageError, match="llama"):
        count_params(bundled_config("ling-flash-eagle3"))
    assert not is_bailing_moe(bundled_config("ling-flash-eagle3"))


def test_count_from_safetensors_reads_headers_only(tmp_path):
    header = {
        "__metadata__": {"format": "pt"},
        "a": {"dtype": "BF16", "shape": [3, 4], "data_offsets": [0, 24]},
        "b": {"dtype": "F32", "shape": [5], "data_offsets": [24, 44]},
    }
    raw = json.dumps(header).encode()
    (tmp_path / "m.safetensors").write_bytes(struct.pack("<Q", len(raw)) + raw + b"\0" * 44)
    assert count_from_safetensors(tmp_path) == {"BF16": 12, "F32": 5}
    (tmp_path / "bad.safetensors").write_bytes(b"123")
    with pytest.raises(UsageError, match="bad.safetensors"):
        count_from_safetensors(tmp_path)


def test_human_count():
    assert human_count(102_889_697_280) == "102.89B"
    assert human_count(6_152_269_824) == "6.15B"
    assert human_count(999) == "999"
