"""FP8 checkpoints: native block fp8 and compressed-tensors (channel, static tensor, block) load, stay FP8 in
memory and run the same numbers as an independent float32 emulation; malformed ones are refused."""

import json

import pytest
import torch
from safetensors.torch import load_file, save_file

from angelcli.errors import IntegrityError, UsageError
from angelcli.fixtures import FP8_FORMATS, write_fp8_checkpoint
from angelcli.loader import load_model
from tests import reference_bailing as ref

FP8 = torch.float8_e4m3fn
SHAPE = dict(vocab_size=96, moe_intermediate_size=128, moe_shared_expert_intermediate_size=128)


def _read_all(d):
    sd = {}
    for f in sorted(d.glob("*.safetensors")):
        sd.update(load_file(str(f)))
    return {k: (v if v.dtype == FP8 else v.float()) for k, v in sd.items()}


def _dequant(sd, name):
    """Independent dequantisation from the checkpoint layout (kron-expanded blocks, broadcast rows)."""
    w, base = sd[name].float(), name[: -len("weight")]
    s = sd[base + "weight_scale_inv"] if base + "weight_scale_inv" in sd else sd[base + "weight_scale"]
    n, k = w.shape
    if s.numel() == 1:
        return w * s.reshape(())
    if tuple(s.shape) == (n, 1):
        return w * s
    return w * torch.kron(s, torch.ones(128, 128))[:n, :k]


def _fake_quant(x):
    """Per token, per 128 channels: scale = amax / 448 (floor 1e-10), round to e4m3, back to fp32."""
    out = torch.empty_like(x)
    for a in range(0, x.shape[-1], 128):
        g = x[:, a:a + 128]
        s = g.abs().amax(-1, keepdim=True).clamp(min=1e-10) / 448.0
        out[:, a:a + 128] = (g / s).clamp(-448, 448).to(FP8).float() * s
    return out


def _fp8_lin(x, sd, name):
    if sd[name].dtype == FP8:
        return _fake_quant(x) @ _dequant(sd, name).T
    return x @ sd[name].T


@pytest.mark.parametrize("fmt", list(FP8_FORMATS))
def test_fp8_checkpoint_matches_independent_emulation(tmp_path, fmt):
    write_fp8_checkpoint(tmp_path, fmt, seed=4, **SHAPE)
    cfg = json.loads((tmp_path / "config.json").read_text())
    model, mcfg, report = load_model(tmp_path, dtype=torch.float32)
    assert report.ok, report.summary()
    experts = model.model.layers[1].mlp.experts
    assert experts.w13.dtype == FP8 and experts.w2.dtype == FP8  # experts stay FP8 in memory
    assert experts.w13_scale.dtype == torch.float32
    assert model.model.layers[0].attention.dense.weight.dtype == FP8
    assert model.model.layers[1].mlp.gate.weight.dtype == torch.float32  # router never quantised
    assert (experts.w13_input_scale is not None) == FP8_FORMATS[fmt][2]

    sd = _read_all(tmp_path)
    # stacking: expert 3's up rows dequantise to what the checkpoint says
    I = mcfg.moe_intermediate_size
    from angelcli.model.fp8 import dequantize_weight

    half = experts.w13_scale.shape[1] // 2
    got = dequantize_weight(experts.w13[3][I:], experts.w13_scale[3][half:])
    assert torch.equal(got, _dequant(sd, "model.layers.1.mlp.experts.3.up_proj.weight"))

    ids = [5, 17, 42, 8, 77, 3, 60]
    want = ref.forward(cfg, sd, ids, lin=_fp8_lin)
    got = model(torch.tensor([ids])).logits[0]
    assert (got - want).abs().max() < 1e-4

    from angelcli.engine import Engine, SamplingParams

    steps = list(Engine(model, mcfg).generate(ids, SamplingParams(max_new_tokens=2)))
    seq = list(ids)
    for s in steps:
        assert s.token_id == int(ref.forward(cfg, sd, seq, lin=_fp8_lin)[-1].argmax())
        seq.append(s.token_id)


def test_fp8_weights_use_a_quarter_of_fp32_bytes(tmp_path):
    write_fp8_checkpoint(tmp_path, "fp8-block", **SHAPE)
    model, _, _ = load_model(tmp_path, dtype=torch.bfloat16)
    ex = model.model.layers[1].mlp.experts
    assert ex.w13.element_size() == 1 and ex.w13.numel() == 8 * 256 * 64


def _mutate(tmp_path, fn):
    for f in sorted(tmp_path.glob("model-*.safetensors")):
        t = load_file(str(f))
        if fn(t):
            save_file(t, str(f))
            index = json.loads((tmp_path / "model.safetensors.index.json").read_text())
            index["weight_map"] = {k: v for k, v in index["weight_map"].items() if v != f.name}
            index["weight_map"].update({k: f.name for k in t})
            (tmp_path / "model.safetensors.index.json").write_text(json.dumps(index))
            return
    raise AssertionError("tensor not found")


def test_missing_scale_is_named(tmp_path):
    write_fp8_checkpoint(tmp_path, "fp8-block", **SHAPE)
    name = "model.layers.2.mlp.experts.5.down_proj.weight_scale_inv"
    _mutate(tmp_path, lambda t: t.pop(name, None) is not None)
    with pytest.raises(IntegrityError, match="missing.*down_proj.weight_scale_inv"):
        load_model(tmp_path)


def test_wrong_scale_shape_is_named(tmp_path):
    write_fp8_checkpoint(tmp_path, "ct-channel", **SHAPE)
    name = "model.layers.0.attention.dense.weight_scale"

    def bad(t):
        if name in t:
            t[name] = torch.ones(7, 1, dtype=torch.bfloat16)
            return True
    _mutate(tmp_path, bad)
    with pytest.raises(IntegrityError, match="wrong shape.*attention.dense.weight_scale"):
        load_model(tmp_path)


def test_quantised_router_is_refused(tmp_path):
    write_fp8_checkpoint(tmp_path, "fp8-block", **SHAPE)
    name = "model.layers.1.mlp.gate.weight"

    def bad(t):
        if name in t:
            t[name] = t[name].to(FP8)
            t["model.layers.1.mlp.gate.weight_scale_inv"] = torch.ones(1, 1)
            return True
    _mutate(tmp_path, bad)
    with pytest.raises(IntegrityError, match="wrong dtype.*mlp.gate.weight is F8_E4M3"):
        load_model(tmp_path)


def test_fp8_tensors_without_quantization_config_are_refused(tmp_path):
    write_fp8_checkpoint(tmp_path, "fp8-block", **SHAPE)
    cfg = json.loads((tmp_path / "config.json").read_text())
    del cfg["quantization_config"]
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(IntegrityError, match="wrong dtype.*F8_E4M3"):
        load_model(tmp_path)


@pytest.mark.parametrize("qc, field", [
    ({"quant_method": "fp8", "fmt": "e4m3", "activation_scheme": "dynamic", "weight_block_size": [64, 64]},
     "weight_block_size"),
    ({"quant_method": "fp8", "fmt": "e5m2", "weight_block_size": [128, 128]}, "fmt"),
    ({"quant_method": "awq"}, "quant_method"),
    ({"quant_method": "compressed-tensors", "format": "pack-quantized", "config_groups": {
        "g": {"weights": {"num_bits": 4, "type": "int"}}}}, "format"),
])
def test_unsupported_quantization_config_names_the_field(tmp_path, qc, field):
    write_fp8_checkpoint(tmp_path, "fp8-block", **SHAPE)
    cfg = json.loads((tmp_path / "config.json").read_text())
    cfg["quantization_config"] = qc
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(UsageError, match=field):
        load_model(tmp_path)
