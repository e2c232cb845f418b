"""Data-free FP8 schemes (block, dynamic): exact layouts, configs, untouched tensors, interop, resume, refusals."""

import json
from pathlib import Path

import pytest
import torch
from safetensors import safe_open

from angelcli.errors import IntegrityError, UsageError
from angelcli.fixtures import random_state_dict, tiny_config, write_checkpoint, write_tiny_checkpoint
from angelcli.quant import schemes, stream
from angelcli.quant.run import QuantOptions, quantize_one

ALIGNED = dict(hidden_size=128, intermediate_size=256, moe_intermediate_size=128,
               moe_shared_expert_intermediate_size=128, num_attention_heads=4, num_key_value_heads=2, head_dim=32)
EDGE = dict(hidden_size=192, intermediate_size=320, moe_intermediate_size=160,
            moe_shared_expert_intermediate_size=160, num_attention_heads=4, num_key_value_heads=2, head_dim=48)


pytestmark = pytest.mark.usefixtures("one_thread")  # conftest.py: one intra-op thread


@pytest.fixture(scope="module")
def aligned(tmp_path_factory):
    return write_tiny_checkpoint(tmp_path_factory.mktemp("aligned") / "src", **ALIGNED)


@pytest.fixture(scope="module")
def edge(tmp_path_factory):
    return write_tiny_checkpoint(tmp_path_factory.mktemp("edge") / "src", shards=3, **EDGE)


def tensors_of(d: Path) -> dict[str, torch.Tensor]:
    out = {}
    for f in sorted(d.glob("*.safetensors")):
        with safe_open(str(f), "pt") as h:
            out.update({k: h.get_tensor(k) for k in h.keys()})
    return out


def st_dtypes(d: Path) -> dict[str, tuple[str, list]]:
    out = {}
    for f in sorted(d.glob("*.safetensors")):
        with safe_open(str(f), "pt") as h:
            for k in h.keys():
                s = h.get_slice(k)
                out[k] = (s.get_dtype(), s.get_shape())
    return out


def bitexact(a: torch.Tensor, b: torch.Tensor) -> bool:
    return (a.dtype == b.dtype and a.shape == b.shape
            and torch.equal(a.contiguous().view(torch.uint8), b.contiguous().view(torch.uint8)))


def run(src, out, **kw) -> dict:
    kw.setdefault("report", False)
    return quantize_one(str(src), out, QuantOptions(**kw))


def test_block_experts_exact_native_layout(aligned, tmp_path):
    out = tmp_path / "out"
    r = run(aligned, out)
    assert r["status"] == "done" and r["scheme"] == "block"
    cfg = json.loads((out / "config.json").read_text())
    src_cfg = json.loads((aligned / "config.json").read_text())
    assert {k: v for k, v in cfg.items() if k != "quantization_config"} == src_cfg
    qc = cfg["quantization_config"]
    assert {k: qc[k] for k in ("quant_method", "fmt", "activation_scheme", "weight_block_size")} == {
        "quant_method": "fp8", "fmt": "e4m3", "activation_scheme": "dynamic", "weight_block_size": [128, 128]}
    # experts-only: attention and the dense FFN stay BF16 and are declared so
    assert sorted(qc["ignored_layers"]) == sorted(
        [f"model.layers.{i}.attention.{p}" for i in range(3) for p in ("query_key_value", "dense")]
        + [f"model.layers.0.mlp.{p}_proj" for p in ("gate", "up", "down")])

    src_t, out_t, meta = tensors_of(aligned), tensors_of(out), st_dtypes(out)
    expected = set(src_t)
    for name, t in src_t.items():
        if schemes.is_target(name, "experts"):
            assert ".experts." in name or ".shared_experts." in name
            n, k = t.shape
            assert meta[name] == ("F8_E4M3", [n, k])
            assert meta[name + "_scale_inv"] == ("F32", [-(-n // 128), -(-k // 128)])
            expected.add(name + "_scale_inv")
            s = out_t[name + "_scale_inv"].repeat_interleave(128, 0)[:n].repeat_interleave(128, 1)[:, :k]
            w = out_t[name].float() * s
            assert ((w - t.float()).norm() / t.float().norm()).item() < 0.035
        else:
            assert bitexact(out_t[name], t), name  # never-quantised tensors are copied byte for byte
    assert set(out_t) == expected
    for name in ("model.word_embeddings.weight", "lm_head.weight", "model.norm.weight",
                 "model.layers.1.mlp.gate.weight", "model.layers.1.mlp.gate.expert_bias",
                 "model.layers.1.attention.query_key_value.weight"):
        assert meta[name][0] != "F8_E4M3"
    assert meta["model.layers.1.mlp.gate.expert_bias"][0] == "F32"

    index = json.loads((out / "model.safetensors.index.json").read_text())
    assert set(index["weight_map"]) == expected
    assert index["metadata"]["total_size"] == sum(t.numel() * t.element_size() for t in out_t.values())
    for f in ("tokenizer.json", "tokenizer_config.json", "generation_config.json", "special_tokens_map.json"):
        assert (out / f).read_bytes() == (aligned / f).read_bytes()
    man = json.loads((out / "manifest.json").read_text())
    assert man["scheme"] == "block" and man["targets"] == "experts" and man["quantization_config"] == qc
    assert set(man["tensors"]) == {n for n in src_t if schemes.is_target(n, "experts")}
    assert all(0 < s["rel_err"] < 0.035 for s in man["tensors"].values())
    assert man["tools"]["torch"] and "llmcompressor" in man["tools"] and len(man["source"]["fingerprint"]) == 64
    assert "FP8_BLOCK" in man["recipe"]["text"] and (out / "recipe.yaml").exists()
    assert not (out / stream.STATE_DIR).exists()


def test_block_all_targets_has_published_key_set(aligned, tmp_path):
    out = tmp_path / "out"
    run(aligned, out, targets="all")
    qc = json.loads((out / "config.json").read_text())["quantization_config"]
    assert qc == {"activation_scheme": "dynamic", "fmt": "e4m3", "quant_method": "fp8", "weight_block_size": [128, 128]}
    meta = st_dtypes(out)
    for name in ("model.layers.0.attention.query_key_value.weight", "model.layers.2.attention.dense.weight",
                 "model.layers.0.mlp.gate_proj.weight", "model.layers.0.mlp.down_proj.weight"):
        assert meta[name][0] == "F8_E4M3" and meta[name + "_scale_inv"][0] == "F32"
    assert meta["model.layers.0.attention.query_key_value.weight_scale_inv"][1] == [2, 1]  # [256, 128] / 128
    for name, (dt, _) in meta.items():
        if any(p in name for p in ("norm", "word_embeddings", "lm_head", "mlp.gate.")):
            assert dt != "F8_E4M3", name


def test_block_edge_tiles_and_fp8_block_dequantizer_interop(edge, tmp_path):
    from compressed_tensors.entrypoints.convert.converters.fp8block_dequantizer import FP8BlockDequantizer

    out = tmp_path / "out"
    run(edge, out, targets="all")
    meta = st_dtypes(out)
    assert meta["model.layers.1.mlp.experts.0.gate_proj.weight_scale_inv"] == ("F32", [2, 2])  # [160, 192]
    assert meta["model.layers.1.mlp.experts.0.down_proj.weight_scale_inv"] == ("F32", [2, 2])  # [192, 160]
    assert meta["model.layers.0.mlp.gate_proj.weight_scale_inv"] == ("F32", [3, 2])  # [320, 192]
    src_t = tensors_of(edge)
    modules = [n[: -len(".weight")] for n in src_t if schemes.is_target(n, "all")]
    deq = FP8BlockDequantizer(targets=modules, dtype=torch.float32).validate(tensors_of(out))
    assert set(deq) == set(src_t)
    for name, t in src_t.items():
        if schemes.is_target(name, "all"):
            assert ((deq[name] - t.float()).norm() / t.float().norm()).item() < 0.035, name
        else:
            assert bitexact(deq[name], t)


def test_dynamic_compressed_tensors_layout_and_library_roundtrip(edge, tmp_path):
    from compressed_tensors.entrypoints.convert.converters.ct_dequantizer import CompressedTensorsDequantizer

    out = tmp_path / "out"
    run(edge, out, scheme="dynamic")
    qc = json.loads((out / "config.json").read_text())["quantization_config"]
    assert qc["quant_method"] == "compressed-tensors" and qc["format"] == "float-quantized"
    assert qc["quantization_status"] == "compressed"
    g = qc["config_groups"]["group_0"]
    assert g["targets"] == ["Linear"]
    wq = g["weights"]
    assert (wq["strategy"], wq["dynamic"], wq["type"], wq["num_bits"]) == ("channel", False, "float", 8)
    assert (g["input_activations"]["strategy"], g["input_activations"]["dynamic"]) == ("token", True)
    assert "lm_head" in qc["ignore"] and "model.layers.1.mlp.gate" in qc["ignore"]
    assert "model.layers.1.attention.query_key_value" in qc["ignore"]
    assert "model.layers.0.mlp.gate_up_proj" in qc["ignore"]  # SGLang's fused dense FFN of layer 0
    meta, src_t = st_dtypes(out), tensors_of(edge)
    for name, t in src_t.items():
        if schemes.is_target(name, "experts"):
            base = name[: -len(".weight")]
            assert meta[name] == ("F8_E4M3", list(t.shape))
            assert meta[base + ".weight_scale"] == ("BF16", [t.shape[0], 1])
            assert base + ".input_scale" not in meta
    deq = CompressedTensorsDequantizer(out, dtype=torch.float32).validate(tensors_of(out))
    assert set(deq) == set(src_t)
    for name, t in src_t.items():
        if schemes.is_target(name, "experts"):
            assert ((deq[name] - t.float()).norm() / t.float().norm()).item() < 0.035, name
        else:
            assert bitexact(deq[name], t), name


def test_dequant_reader_and_engine_run(edge, tmp_path):
    from angelcli.engine import Engine
    from angelcli.engine.sampling import SamplingParams
    from angelcli.loader import load_model
    from angelcli.quant.dequant import DequantReader, load_dequantized_model

    for scheme in ("block", "dynamic"):
        out = tmp_path / scheme
        run(edge, out, scheme=scheme)
        reader = DequantReader(out)
        assert reader.scheme == scheme and reader.check_scales() == len(reader.quantized)
        model, cfg, _ = load_dequantized_model(out)
        ref, _, _ = load_model(edge, dtype=torch.float32)
        ids = torch.tensor([[5, 17, 42, 99, 7, 3]])
        # the dequantised view lands in the right stacked slots (gate rows, then up rows; w2)
        experts = model.model.layers[1].mlp.experts
        inter = cfg.moe_intermediate_size
        p = "model.layers.1.mlp.experts.6"
        assert torch.equal(experts.w13[6][:inter], reader.get(f"{p}.gate_proj.weight", dtype=torch.float32))
        assert torch.equal(experts.w13[6][inter:], reader.get(f"{p}.up_proj.weight", dtype=torch.float32))
        assert torch.equal(experts.w2[6], reader.get(f"{p}.down_proj.weight", dtype=torch.float32))
        # a random tiny model amplifies weight noise through routing flips; the logits still stay close
        a, b = ref(ids).logits, model(ids).logits
        assert ((a - b).norm() / a.norm()).item() < 0.3
        eng = Engine(model, cfg, device="cpu", max_seq_len=64)
        toks = [s.token_id for s in eng.generate([5, 17, 42], SamplingParams(temperature=0.0, max_new_tokens=4))]
        assert len(toks) == 4


def test_resume_after_interrupted_run(edge, tmp_path, monkeypatch):
    out, fresh = tmp_path / "out", tmp_path / "fresh"
    calls = []

    def die(name):
        calls.append(name)
        raise KeyboardInterrupt  # as if killed right after the first shard was committed

    monkeypatch.setattr(stream, "_after_shard", die)
    with pytest.raises(KeyboardInterrupt):
        run(edge, out, workers=1)
    assert calls == ["model-00001-of-00003.safetensors"]
    assert (out / "model-00001-of-00003.safetensors").exists()
    assert not (out / "model-00002-of-00003.safetensors").exists() and not (out / "manifest.json").exists()
    # a killed writer leaves a partial file behind; resume must ignore and remove it
    (out / ".model-00002-of-00003.safetensors.partial").write_bytes(b"garbage")
    monkeypatch.setattr(stream, "_after_shard", None)
    r = run(edge, out)
    assert r["shards_skipped"] == 1 and r["status"] == "done"
    assert not list(out.glob(".*.partial"))
    run(edge, fresh)
    for f in sorted(fresh.glob("*.safetensors")):
        assert (out / f.name).read_bytes() == f.read_bytes()
    m1, m2 = json.loads((out / "manifest.json").read_text()), json.loads((fresh / "manifest.json").read_text())
    assert m1["tensors"] == m2["tensors"]


def test_idempotent_force_and_foreign_dirs(aligned, tmp_path):
    out = tmp_path / "out"
    run(aligned, out)
    stamp = {f.name: f.stat().st_mtime_ns for f in out.iterdir()}
    again = run(aligned, out)
    assert again["status"] == "up-to-date"
    assert {f.name: f.stat().st_mtime_ns for f in out.iterdir()} == stamp
    with pytest.raises(UsageError, match="--force"):
        run(aligned, out, scheme="dynamic")
    assert run(aligned, out, scheme="dynamic", force=True)["status"] == "done"
    assert json.loads((out / "manifest.json").read_text())["scheme"] == "dynamic"
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine")
    with pytest.raises(UsageError, match="not an angel quantize output"):
        run(aligned, foreign, force=True)
    assert (foreign / "notes.txt").read_text() == "mine"


def test_dry_run_writes_nothing(aligned, tmp_path):
    out = tmp_path / "deep" / "out"
    r = run(aligned, out, dry_run=True)
    assert r["status"] == "dry-run" and r["disk_ok"] is True and not (tmp_path / "deep").exists()
    n_q = r["quantized_tensors"]
    assert n_q == 2 * 8 * 3 + 2 * 3  # two MoE layers: 8 experts + shared, 3 projections each
    assert 0 < r["output_bytes"] < r["source_bytes"]
    assert sum(s["output_bytes"] for s in r["shards"]) == r["output_bytes"]


def test_workers_give_identical_output(edge, tmp_path):
    run(edge, tmp_path / "w1", workers=1)
    run(edge, tmp_path / "w3", workers=3)
    for f in sorted((tmp_path / "w1").glob("*.safetensors")):
        assert (tmp_path / "w3" / f.name).read_bytes() == f.read_bytes()


def _broken(tmp_path, mutate, **over) -> Path:
    cfg = tiny_config(**over)
    sd = random_state_dict(cfg, seed=1)
    mutate(cfg, sd)
    return write_checkpoint(tmp_path / "broken", cfg, sd, shards=2)


def test_missing_expert_tensor(tmp_path):
    src = _broken(tmp_path, lambda c, sd: sd.pop("model.layers.2.mlp.experts.5.down_proj.weight"))
    with pytest.raises(IntegrityError, match=r"missing.*experts\.5\.down_proj") as e:
        run(src, tmp_path / "out")
    assert e.value.exit_code == 3 and not (tmp_path / "out").exists()


def test_wrong_shape(tmp_path):
    def mutate(c, sd):
        sd["model.layers.1.mlp.experts.0.gate_proj.weight"] = torch.zeros(16, 64, dtype=torch.bfloat16)
    src = _broken(tmp_path, mutate)
    with pytest.raises(IntegrityError, match=r"wrong shape.*experts\.0\.gate_proj"):
        run(src, tmp_path / "out")


def test_nan_weight_refused(tmp_path):
    def mutate(c, sd):
        sd["model.layers.1.mlp.experts.3.up_proj.weight"][4, 7] = float("nan")
    src = _broken(tmp_path, mutate)
    with pytest.raises(IntegrityError, match=r"experts\.3\.up_proj\.weight holds NaN"):
        run(src, tmp_path / "out")
    assert not (tmp_path / "out" / "manifest.json").exists()


def test_not_bailing_and_already_quantized(aligned, tmp_path):
    src = _broken(tmp_path, lambda c, sd: None)
    cfg = json.loads((src / "config.json").read_text())
    cfg["model_type"] = "llama"
    (src / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(UsageError, match="model_type"):
        run(src, tmp_path / "out")
    out = tmp_path / "fp8"
    run(aligned, out)
    with pytest.raises(UsageError, match="already quantised"):
        run(out, tmp_path / "again")


def test_unwritable_output(aligned, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(UsageError, match="cannot write"):
        run(aligned, blocker / "out")


def test_checkpoint_without_tokenizer_still_quantizes(tmp_path):
    src = write_tiny_checkpoint(tmp_path / "notok", tokenizer=False)
    r = quantize_one(str(src), tmp_path / "out", QuantOptions(eval=True))
    assert r["status"] == "done"
    assert r["report"]["weights"]["quantized_tensors"] > 0
    assert "no tokenizer" in r["report"]["model"]["skipped"]


def test_cli_json_batch_and_exit_codes(aligned, tmp_path, capsys):
    from angelcli.cli import main

    def cli(*args):
        with pytest.raises(SystemExit) as e:
            main(list(args))
        return e.value.code, capsys.readouterr()

    code, io = cli("quantize", str(aligned), "--out", str(tmp_path / "a"), "--no-report")
    assert code == 2 and "--fp8" in io.err
    code, io = cli("quantize", str(aligned), "--fp8", "--out", str(tmp_path / "a"), "--json", "--no-report")
    assert code == 0 and json.loads(io.out)["status"] == "done"
    code, io = cli("quantize", str(aligned), str(tmp_path / "missing"), "--fp8", "--out-dir", str(tmp_path / "d"),
                   "--json", "--no-report", "--scheme", "dynamic")
    res = json.loads(io.out)
    assert code == 2 and [r["status"] for r in res] == ["done", "error"]
    assert (tmp_path / "d" / f"{aligned.name}-FP8-dynamic" / "manifest.json").exists()
    code, io = cli("quantize", str(aligned), str(aligned), "--fp8", "--out", str(tmp_path / "x"))
    assert code == 2 and "--out-dir" in io.err
    code, io = cli("quantize", str(aligned), "--fp8", "--scheme", "int4", "--out", str(tmp_path / "y"))
    assert code == 2 and "--scheme" in io.err
    code, io = cli("quantize", str(aligned), "--fp8", "--dry-run", "--json", "--out", str(tmp_path / "z"))
    assert code == 0 and json.loads(io.out)["status"] == "dry-run" and not (tmp_path / "z").exists()


@pytest.mark.parametrize("scheme", ["block", "dynamic"])
def test_outputs_load_in_angels_fp8_loader(aligned, tmp_path, scheme):
    """angel's own FP8 loader (load_model) takes both layouts and computes what the dequantised view computes
    with per-token x 128-channel activation quantisation (the engine's scheme for every FP8 format)."""
    from angelcli.engine import Engine
    from angelcli.engine.sampling import SamplingParams
    from angelcli.loader import load_model
    from angelcli.quant.dequant import load_dequantized_model
    from angelcli.quant.report import install_activation_quant

    out = tmp_path / scheme
    run(aligned, out, scheme=scheme, targets="all")
    model, cfg, _ = load_model(out, dtype=torch.float32)
    ref, _, reader = load_dequantized_model(out, dtype=torch.float32)
    install_activation_quant(ref, reader, kind="block")
    ids = torch.tensor([[5, 17, 42, 99, 7, 3, 250, 11]])
    a, b = model(ids).logits, ref(ids).logits
    assert ((a - b).norm() / b.norm()).item() < 1e-4
    toks = [s.token_id for s in Engine(model, cfg, device="cpu", max_seq_len=32).generate(
        [5, 17, 42], SamplingParams(temperature=0.0, max_new_tokens=3))]
    assert len(toks) == 3


def test_fused_ignore_names_follow_the_targets():
    from angelcli.config import ModelConfig
    from angelcli.fixtures import tiny_config

    cfg = ModelConfig.from_dict({**tiny_config(), "first_k_dense_replace": 2})
    assert schemes.fused_ignore(cfg, "experts") == ["model.layers.0.mlp.gate_up_proj",
                                                    "model.layers.1.mlp.gate_up_proj"]
    assert schemes.fused_ignore(cfg, "all") == []  # quantised dense FFNs get the FP8 scheme, fused or not
    assert "model.layers.1.mlp.gate_up_proj" in schemes.ct_ignore(cfg, "experts")
