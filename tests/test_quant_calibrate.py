"""Static FP8 through llmcompressor oneshot on angel's own model class; all-experts calibration; scale checks."""

import json
import re
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from angelcli.errors import CheckFailed, IntegrityError, UsageError
from angelcli.fixtures import write_tiny_checkpoint
from angelcli.quant import calib_data, schemes
from angelcli.quant.run import QuantOptions, quantize_one

TEXTS = ["Patients with type 2 diabetes often report thirst, frequent urination and fatigue.",
         "A doctor should be seen when chest pain spreads to the arm or jaw.",
         "Take ibuprofen with food; stop and seek care if you vomit blood.",
         "High blood pressure rarely causes symptoms, so check it regularly.",
         "糖尿病患者常见口渴、多尿和乏力。", "胸痛向手臂放射时请立即就医。"]


pytestmark = pytest.mark.usefixtures("one_thread")  # conftest.py: one intra-op thread


@pytest.fixture(scope="module")
def calib_file(tmp_path_factory):
    p = tmp_path_factory.mktemp("calib") / "calib.jsonl"
    rows = [{"text": t} if i % 2 else {"prompt": t, "response": "Please consult a clinician."}
            for i, t in enumerate(TEXTS)]
    p.write_text("\n".join(json.dumps(r, ensure_ascii=False) for r in rows) + "\n", encoding="utf-8")
    return p


@pytest.fixture(scope="module")
def src(tmp_path_factory):
    return write_tiny_checkpoint(tmp_path_factory.mktemp("static") / "src")


@pytest.fixture(scope="module")
def collapsed(tmp_path_factory):
    """Router that always picks experts 0 and 1: a huge expert_bias wins every top-k."""
    d = write_tiny_checkpoint(tmp_path_factory.mktemp("collapsed") / "src", shards=1)
    sd = load_file(str(d / "model.safetensors"))
    for k in sd:
        if k.endswith("expert_bias"):
            b = torch.zeros_like(sd[k])
            b[:2] = 100.0
            sd[k] = b
    save_file(sd, str(d / "model.safetensors"), metadata={"format": "pt"})
    return d


def static(src, out, calib, **kw):
    kw.setdefault("report", False)
    opts = QuantOptions(scheme="static", calib=str(calib), num_samples=6, max_seq_len=64, **kw)
    return quantize_one(str(src), out, opts)


@pytest.fixture(scope="module")
def static_out(src, calib_file, tmp_path_factory):
    out = tmp_path_factory.mktemp("static-out") / "out"
    static(src, out, calib_file)
    return out


def _tensors(d: Path) -> dict:
    out = {}
    for f in d.glob("*.safetensors"):
        with safe_open(str(f), "pt") as h:
            out.update({k: h.get_tensor(k) for k in h.keys()})
    return out


def test_static_layout_config_and_scales(src, static_out):
    qc = json.loads((static_out / "config.json").read_text())["quantization_config"]
    assert qc["quant_method"] == "compressed-tensors" and qc["format"] == "float-quantized"
    g = next(iter(qc["config_groups"].values()))
    assert (g["weights"]["strategy"], g["weights"]["type"], g["weights"]["num_bits"]) == ("tensor", "float", 8)
    assert (g["input_activations"]["strategy"], g["input_activations"]["dynamic"]) == ("tensor", False)
    # llmcompressor resolved the recipe's regexes to concrete module names
    assert "model.layers.0.attention.query_key_value" in qc["ignore"] and "lm_head" in qc["ignore"]
    assert "model.layers.1.mlp.gate" in qc["ignore"]
    assert "model.layers.0.mlp.gate_up_proj" in qc["ignore"]  # SGLang's fused dense FFN (schemes.fused_ignore)
    src_t, out_t = _tensors(src), _tensors(static_out)
    want = set(src_t)
    for name, t in src_t.items():
        if schemes.is_target(name, "experts"):
            base = name[: -len(".weight")]
            want |= {base + ".weight_scale", base + ".input_scale"}
            assert out_t[name].dtype == torch.float8_e4m3fn and out_t[name].shape == t.shape
            for s in (base + ".weight_scale", base + ".input_scale"):
                assert out_t[s].dtype == torch.bfloat16 and out_t[s].shape == (1,)
                assert torch.isfinite(out_t[s].float()).all() and (out_t[s].float() > 0).all()
            w = out_t[name].float() * out_t[base + ".weight_scale"].float()
            assert ((w - t.float()).norm() / t.float().norm()).item() < 0.035
        else:
            assert t.dtype == out_t[name].dtype, name
            assert torch.equal(t.view(torch.uint8), out_t[name].view(torch.uint8)), name
    assert set(out_t) == want
    # all experts saw every token: gate/up inputs are the same tensor for every expert of a layer
    for layer in (1, 2):
        s = {out_t[f"model.layers.{layer}.mlp.experts.{e}.gate_proj.input_scale"].item() for e in range(8)}
        assert len(s) == 1
    man = json.loads((static_out / "manifest.json").read_text())
    cal = man["calibration"]
    assert cal["samples"] == 6 and cal["all_experts"] is True and cal["min_tokens_per_module"] > 0
    assert man["recipe"]["from"] == "recipes/fp8-static-experts.yaml" and "scheme: FP8" in man["recipe"]["text"]
    assert len(man["tensors"]) == 54


def test_static_output_roundtrips_through_compressed_tensors_and_dequant_reader(src, static_out):
    from compressed_tensors.entrypoints.convert.converters.ct_dequantizer import CompressedTensorsDequantizer

    from angelcli.quant.dequant import DequantReader, load_dequantized_model

    src_t = _tensors(src)
    # process(), not validate(): compressed-tensors dequantises weights only and (by design) leaves the
    # activation input_scale tensors in place, which its validate() then reports as residual
    deq = CompressedTensorsDequantizer(static_out, dtype=torch.float32).process(_tensors(static_out))
    inputs = {n[: -len("weight")] + "input_scale" for n in src_t if schemes.is_target(n, "experts")}
    assert set(deq) - set(src_t) == inputs
    reader = DequantReader(static_out)
    assert reader.scheme == "static" and len(reader.input_scale_of) == 54
    for name, t in src_t.items():
        if schemes.is_target(name, "experts"):
            # compressed-tensors multiplies in the scale dtype (bf16), angel in fp32: equal up to bf16 rounding
            assert torch.allclose(deq[name], reader.get(name, dtype=torch.float32), rtol=2**-7, atol=1e-7)
            assert reader.input_scale(name).item() > 0
    model, cfg, _ = load_dequantized_model(static_out)
    assert model(torch.tensor([[3, 4, 5]])).logits.shape == (1, 3, cfg.vocab_size)


def test_uncalibrated_experts_detected_then_fixed_by_all_experts(collapsed, calib_file, tmp_path):
    out = tmp_path / "out"
    first = r"received no calibration tokens \(first: model\.layers\.1\.mlp\.experts\.2\."
    with pytest.raises(CheckFailed, match=first) as e:
        static(collapsed, out, calib_file, all_experts=False)
    assert e.value.exit_code == 1 and not out.exists()  # nothing written, not even the directory
    r = static(collapsed, out, calib_file, all_experts=True)
    assert r["status"] == "done"
    t = _tensors(out)
    scales = [v.float().item() for k, v in t.items() if k.endswith("input_scale")]
    assert len(scales) == 54 and min(scales) > 0


def test_calib_model_is_angels_model_and_all_experts_keeps_routed_output(src):
    from llmcompressor.modeling.moe.context import moe_calibration_context

    from angelcli.loader import load_model
    from angelcli.quant.calib_model import build_calib_model, calibrate_all_experts

    raw = json.loads((src / "config.json").read_text())
    calib = build_calib_model(src, raw, dtype=torch.float32)
    ref, _, _ = load_model(src, dtype=torch.float32)
    ids = torch.tensor([[7, 8, 9, 10, 11, 12, 13, 14]])
    base = calib(ids).logits
    assert torch.allclose(base, ref(ids).logits, atol=1e-5)
    calls = {}
    hooks = [m.register_forward_pre_hook(lambda mod, a, n=n: calls.__setitem__(n, calls.get(n, 0) + a[0].shape[0]))
             for n, m in calib.named_modules() if re.fullmatch(r".*experts\.\d+\.gate_proj", n)]
    with moe_calibration_context():
        assert calibrate_all_experts()
        every = calib(ids).logits
    for h in hooks:
        h.remove()
    assert not calibrate_all_experts()
    assert torch.allclose(every, base, atol=1e-5)
    assert len(calls) == 16 and set(calls.values()) == {8}  # every expert of both MoE layers saw all 8 tokens


def test_nan_scales_refused(static_out, tmp_path):
    import shutil

    from angelcli.quant.calibrate import check_calibration
    from angelcli.quant.dequant import DequantReader

    bad = tmp_path / "bad"
    shutil.copytree(static_out, bad)
    shard = next(bad.glob("*.safetensors"))
    sd = load_file(str(shard))
    sd["model.layers.2.mlp.experts.4.down_proj.input_scale"] = torch.tensor([float("nan")], dtype=torch.bfloat16)
    sd["model.layers.1.mlp.experts.0.up_proj.weight_scale"] = torch.tensor([0.0], dtype=torch.bfloat16)
    save_file(sd, str(shard), metadata={"format": "pt"})
    reader = DequantReader(bad)
    with pytest.raises(IntegrityError, match=r"experts\.0\.up_proj\.weight_scale holds 0\.0"):
        reader.get("model.layers.1.mlp.experts.0.up_proj.weight")
    with pytest.raises(IntegrityError, match="finite and positive"):
        reader.check_scales()

    class Lin(torch.nn.Module):
        def __init__(self, s):
            super().__init__()
            self.input_scale = torch.tensor([s])
            self.weight_scale = torch.tensor([0.01])

    model = torch.nn.Module()
    model.a, model.b = Lin(0.5), Lin(float("nan"))
    with pytest.raises(CheckFailed, match=r"b\.input_scale = nan"):
        check_calibration(model, "all", {"a": 4, "b": 4})
    assert check_calibration(model, "all", {"a": 4}) == {"a": 0.5}


def test_recipes_are_llmcompressor_recipes_matching_targets():
    from compressed_tensors.utils.match import match_name
    from llmcompressor.modifiers.quantization import QuantizationModifier
    from llmcompressor.recipe import Recipe

    from angelcli.config import ModelConfig
    from angelcli.fixtures import tiny_config

    cfg = ModelConfig.from_dict(tiny_config())
    files = sorted(schemes.RECIPES_DIR.glob("fp8-*.yaml"))
    assert len(files) == 6
    for scheme in schemes.SCHEMES:
        for targets in schemes.TARGETS:
            path = schemes.recipe_file(scheme, targets)
            text = path.read_text()
            assert text == schemes.recipe_yaml(scheme, targets)  # the shipped files never drift from the code
            (mod,) = Recipe.create_instance(str(path)).modifiers
            assert isinstance(mod, QuantizationModifier) and mod.scheme == schemes.PRESET[scheme]
            for m in schemes.linear_modules(cfg):
                ignored = any(match_name(m, p) for p in mod.ignore)
                assert ignored != schemes.is_target(m + ".weight", targets), (path.name, m)


def test_calib_data_sources_and_rendering(tmp_path, src):
    from angelcli.tokenizer import load_tokenizer

    j = tmp_path / "c.jsonl"
    j.write_text('{"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]}\n'
                 '\n{"prompt": "q?", "response": "a."}\n{"text": "t"}\n')
    s = calib_data.load_samples(str(j))
    assert s[0]["messages"][1]["content"] == "hello"
    assert s[1]["messages"][0] == {"role": "user", "content": "q?"} and s[2] == {"text": "t"}
    t = tmp_path / "c.txt"
    t.write_text("first para\nline two\n\nsecond para\n")
    assert [x["text"] for x in calib_data.load_samples(str(t))] == ["first para\nline two", "second para"]
    (tmp_path / "bad.jsonl").write_text('{"text": "ok"}\n{oops\n')
    with pytest.raises(UsageError, match=r"bad\.jsonl:2"):
        calib_data.load_samples(str(tmp_path / "bad.jsonl"))
    (tmp_path / "empty.txt").write_text("\n")
    with pytest.raises(UsageError, match="no samples"):
        calib_data.load_samples(str(tmp_path / "empty.txt"))
    with pytest.raises(UsageError, match="no such file"):
        calib_data.load_samples("nope.jsonl")
    builtin = calib_data.load_samples("medical", split="calib")
    assert len(builtin) > 10 and all("messages" in x or "text" in x for x in builtin)
    tok = load_tokenizer(src)
    text = calib_data.render(tok, {"text": "fever"})
    assert "<role>HUMAN</role>" in text and "fever" in text and text.rstrip().endswith("<role>ASSISTANT</role>")
    ids = calib_data.tokenize_samples(tok, s * 5, num_samples=3, max_seq_len=8)
    assert calib_data.tokenize_samples(tok, builtin, 4, 4096) and len(calib_data.render(tok, builtin[0])) > 0
    assert len(ids) == 3 and all(2 <= len(x) <= 8 for x in ids)


def test_static_needs_tokenizer(tmp_path, calib_file):
    d = write_tiny_checkpoint(tmp_path / "notok", tokenizer=False)
    with pytest.raises(UsageError, match="needs a tokenizer"):
        static(d, tmp_path / "out", calib_file)


def test_disk_offload_gives_identical_output_and_leaves_source_untouched(src, static_out, calib_file, tmp_path):
    import hashlib

    before = {f.name: hashlib.sha256(f.read_bytes()).hexdigest() for f in src.glob("*.safetensors")}
    out = tmp_path / "offloaded"
    r = static(src, out, calib_file, offload="disk")
    assert r["status"] == "done" and not (out / ".angel-quant").exists()
    a, b = _tensors(static_out), _tensors(out)
    assert set(a) == set(b)
    for k in a:
        assert torch.equal(a[k].view(torch.uint8), b[k].view(torch.uint8)), k
    assert before == {f.name: hashlib.sha256(f.read_bytes()).hexdigest() for f in src.glob("*.safetensors")}


def test_static_output_loads_in_angels_fp8_loader(static_out):
    from angelcli.loader import load_model
    from angelcli.quant.dequant import load_dequantized_model
    from angelcli.quant.report import install_activation_quant

    model, cfg, _ = load_model(static_out, dtype=torch.float32)
    ref, _, reader = load_dequantized_model(static_out, dtype=torch.float32)
    install_activation_quant(ref, reader, kind="block")  # angel's engine quantises activations dynamically
    ids = torch.tensor([[5, 17, 42, 99, 7, 3]])
    a, b = model(ids).logits, ref(ids).logits
    assert ((a - b).norm() / b.norm()).item() < 1e-4
