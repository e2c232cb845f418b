"""Config validation, YaRN numbers from the spec, and streaming detokenisation."""

import math

import pytest
import torch

from angelcli.config import ModelConfig
from angelcli.errors import UsageError
from angelcli.fixtures import tiny_config


@pytest.mark.parametrize("field,value", [
    ("score_function", "softmax"), ("model_type", "llama"), ("n_group", 3), ("topk_group", 9),
    ("num_experts_per_tok", 0), ("partial_rotary_factor", 0.0), ("num_nextn_predict_layers", 1),
    ("rope_scaling", {"type": "linear", "factor": 2.0}), ("hidden_act", "gelu"),
])
def test_unsupported_values_name_the_field(field, value):
    with pytest.raises(UsageError, match=field):
        ModelConfig.from_dict(tiny_config(**{field: value}))


def test_derived_fields_and_round_trip():
    cfg = ModelConfig.from_dict(tiny_config(some_unknown_key=5))
    assert cfg.rotary_dim == 8 and cfg.moe_layers == (1, 2)
    d = cfg.to_dict()
    assert d["some_unknown_key"] == 5 and "rotary_dim" not in d


def test_yarn_matches_spec_numbers():
    from angelcli.model.layers import yarn_inv_freq

    cfg = ModelConfig.from_dict(tiny_config(head_dim=128, num_attention_heads=4, hidden_size=512,
                                            rope_scaling={"factor": 4.0, "original_max_position_embeddings": 32768, "type": "yarn"}))
    inv, mscale = yarn_inv_freq(cfg)
    base = torch.tensor([600000.0 ** (-2 * j / 64) for j in range(32)])
    assert abs(mscale - (0.1 * math.log(4) + 1)) < 1e-6  # 1.138629
    # spec: low = 12, high = 21: dims below 12 keep their frequency, from 21 on they are divided by 4
    assert torch.allclose(inv[:13], base[:13], rtol=1e-6)
    assert torch.allclose(inv[21:], base[21:] / 4, rtol=1e-6)
    assert (inv[13:21] < base[13:21]).all() and (inv[13:21] > base[13:21] / 4).all()


def test_stream_decoder_never_splits_utf8(tiny_ckpt):
    from angelcli.tokenizer import StreamDecoder, load_tokenizer

    tok = load_tokenizer(tiny_ckpt)
    text = "糖尿病患者常见口渴 and fatigue. 胸痛请就医"
    ids = tok.encode(text, add_special_tokens=False)
    dec = StreamDecoder(tok)
    pieces = [dec.push(i) for i in ids] + [dec.flush()]
    assert "".join(pieces) == text
    assert all("\ufffd" not in p for p in pieces)


def test_missing_tokenizer_is_usage_error(tmp_path):
    from angelcli.tokenizer import load_tokenizer

    with pytest.raises(UsageError, match="--input-ids"):
        load_tokenizer(tmp_path)
