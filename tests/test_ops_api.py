"""The public API of angelcli.ops: backend switch, signature parity with the twins, launch configs."""

from __future__ import annotations

import inspect
import json

import pytest
import torch

import angelcli.ops as ops
from angelcli.ops import cases, tuning
from angelcli.ops import reference as ref


def test_every_op_has_a_kernel_and_a_twin_with_one_signature():
    for name in ops.KERNEL_MODULES:
        twin = inspect.signature(getattr(ref, name))
        assert inspect.signature(ops.kernel_impl(name)) == twin, name
        assert inspect.signature(getattr(ops, name)) == twin, name
        assert name in ops.__all__
    # importing a kernel module must not shadow the op of the same name on the package
    assert callable(ops.moe_align) and callable(ops.fused_moe) and callable(ops.fp8_gemm)


def test_backend_switch(monkeypatch):
    monkeypatch.delenv("ANGEL_OPS_BACKEND", raising=False)
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    cpu = torch.zeros(1)
    assert ops.backend() == "auto" and ops.backend_for(cpu) == "torch"
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    assert ops.backend_for(cpu) == "triton"
    monkeypatch.delenv("TRITON_INTERPRET")
    with ops.use("triton"):
        assert ops.backend_for(cpu) == "triton"
        with ops.use("torch"):
            assert ops.backend_for(cpu) == "torch"
        assert ops.backend() == "triton"
    assert ops.backend() == "auto"
    monkeypatch.setenv("ANGEL_OPS_BACKEND", "torch")
    assert ops.backend() == "torch"
    monkeypatch.setenv("ANGEL_OPS_BACKEND", "cuda")
    with pytest.raises(ValueError, match="ANGEL_OPS_BACKEND"):
        ops.backend()
    with pytest.raises(ValueError, match="expected one of"):
        ops.use("numpy")


def test_switch_really_switches(monkeypatch):
    monkeypatch.delenv("ANGEL_OPS_BACKEND", raising=False)
    calls = []
    from angelcli.ops import rmsnorm

    real = rmsnorm.rms_norm
    monkeypatch.setattr(rmsnorm, "rms_norm", lambda *a, **k: calls.append("triton") or real(*a, **k))
    x, w = cases.randn(3, 64, seed=0), torch.ones(64, dtype=torch.bfloat16)
    with ops.use("torch"):
        y_torch = ops.rms_norm(x, w, 1e-6)
    assert calls == []
    with ops.use("triton"):  # CPU tensors: the kernel runs in the interpreter
        y_triton = ops.rms_norm(x, w, 1e-6)
    assert calls == ["triton"] and torch.equal(y_torch, y_triton)


def test_config_lookup_nearest_m_and_default(tmp_path, monkeypatch, capsys):
    name = tuning.moe_config_name(8, 128, "cpu", "fp8_block")
    assert name == "E=8,N=128,device_name=cpu,dtype=fp8_w8a8,block_shape=[128,128].json"
    small = dict(BLOCK_SIZE_M=16, BLOCK_SIZE_N=32, BLOCK_SIZE_K=128, GROUP_SIZE_M=1, num_warps=4, num_stages=2)
    big = dict(small, BLOCK_SIZE_M=64, BLOCK_SIZE_N=128)
    (tmp_path / name).write_text(json.dumps({"_format": tuning.FORMAT, "_provenance": "test", "1": small,
                                             "256": big}))
    monkeypatch.setenv("ANGEL_KERNEL_CONFIG_DIR", str(tmp_path))
    tuning.load_config_file.cache_clear()
    try:
        assert tuning.moe_config(3, 8, 128, 2, "fp8_block") == (small, name)
        assert tuning.moe_config(200, 8, 128, 2, "fp8_block") == (big, name)
        cfg, source = tuning.moe_config(3, 8, 256, 2, "fp8_block")  # no such file: the default
        assert source == "default" and cfg["BLOCK_SIZE_K"] == 128
        assert tuning.default_moe_config(4096, 256, 8, "bf16")["BLOCK_SIZE_M"] >= 64
        with tuning.record_lookups() as looks:
            tuning.moe_config(3, 8, 128, 2, "fp8_block")
        assert looks == [{"kernel": "fused_moe", "key": {"E": 8, "N": 128}, "quant": "fp8_block", "m": 3,
                          "device": "cpu", "hit": True, "file": name, "reason": None}]
        assert tuning.default_moe_config(1, 256, 8, "bf16")["BLOCK_SIZE_M"] == 16
    finally:
        tuning.load_config_file.cache_clear()


def test_missing_config_warns_once_on_gpu(monkeypatch, capsys):
    monkeypatch.setattr(tuning, "device_name", lambda device=None: "NVIDIA_Imaginary")
    monkeypatch.setattr(tuning, "_warned", set())
    tuning.gemm_config(4, 128, 256, "fp8_block")
    tuning.gemm_config(8, 128, 256, "fp8_block")
    err = capsys.readouterr().err
    assert err.count("no tuned kernel config N=128,K=256,device_name=NVIDIA_Imaginary") == 1


def test_invalid_configs_are_rejected():
    good = dict(BLOCK_SIZE_M=16, BLOCK_SIZE_N=32, BLOCK_SIZE_K=128, GROUP_SIZE_M=1, num_warps=4, num_stages=2)
    assert tuning.validate_config(good) == good
    with pytest.raises(ValueError, match="missing num_stages"):
        tuning.validate_config({k: v for k, v in good.items() if k != "num_stages"})
    with pytest.raises(ValueError, match="power of two"):
        tuning.validate_config(dict(good, BLOCK_SIZE_N=48))
    with pytest.raises(ValueError, match=">= 16"):
        tuning.validate_config(dict(good, BLOCK_SIZE_M=8))


def _model_lookups(model: str, tp: int) -> set[tuple]:
    """What a TP shard of the model looks up, read off the module tree on the meta device (independent of
    derive_configs.lookup_shapes): every FP8 Linear (and each gate/up pair fused), the routed experts and
    the routed experts with the shared expert appended."""
    from torch import nn

    from angelcli.model.bailing import BailingMoeForCausalLM, keeps_high_precision
    from angelcli.model.parallel import TensorParallel
    from angelcli.ops.derive_configs import model_config

    cfg = model_config(model)
    fp8 = bool(cfg.quantization_config)
    with torch.device("meta"):
        net = BailingMoeForCausalLM(cfg, TensorParallel(0, tp) if tp > 1 else None)
    quant = "fp8_block" if fp8 else "bf16"
    out = set()
    for name, mod in net.named_modules():
        if fp8 and isinstance(mod, nn.Linear) and not keeps_high_precision(name + ".weight") \
                and "lm_head" not in name and not name.endswith(".gate"):
            out.add(("fp8_gemm", *mod.weight.shape))
            if name.endswith("gate_proj"):
                out.add(("fp8_gemm", 2 * mod.weight.shape[0], mod.weight.shape[1]))
        if hasattr(mod, "w13") and hasattr(mod, "inter"):
            out.add(("fused_moe", mod.w13.shape[0], mod.inter, quant))
            out.add(("fused_moe", mod.w13.shape[0] + 1, mod.inter, quant))  # shared expert appended
    return out


@pytest.mark.parametrize("model", ["antangelmed", "antangelmed-fp8"])
def test_shipped_configs_hit_every_lookup_of_the_model(model):
    from angelcli.ops.derive_configs import DEVICES

    for tp in (1, 2, 4, 8):
        wanted = _model_lookups(model, tp)
        assert any(w[0] == "fused_moe" for w in wanted)
        for dev in DEVICES:
            with tuning.device_override(dev), tuning.record_lookups() as looks:
                for w in wanted:
                    for m in (1, 32, 4096):
                        if w[0] == "fused_moe":
                            tuning.moe_config(m, w[1], w[2], 8, w[3])
                        else:
                            tuning.gemm_config(m, w[1], w[2], "fp8_block")
            assert len(looks) == 3 * len(wanted)
            missed = sorted({lk["file"] for lk in looks if not lk["hit"]})
            assert not missed, f"{model} tp{tp} {dev}: {missed}"
            assert all(lk["device"] == dev.replace(" ", "_") for lk in looks)


def test_shipped_files_carry_format_and_provenance():
    for path in sorted(tuning.CONFIG_DIR.glob("*.json")):
        raw = json.loads(path.read_text())
        assert raw["_format"] == tuning.FORMAT and "derived by rule" in raw["_provenance"], path.name
        table = tuning.parse_config_file(path)
        assert {1, 4096} <= set(table)
        quant = tuning.quant_of(tuning.parse_config_name(path.name))
        for m, cfg in table.items():
            assert cfg["BLOCK_SIZE_K"] == (128 if quant != "bf16" else 64)
            assert cfg["BLOCK_SIZE_M"] <= max(16, 2 * m)  # no huge padding for tiny batches
    parsed = tuning.parse_config_name("E=256,N=1024,device_name=NVIDIA_H20,dtype=fp8_w8a8,block_shape=[128,128].json")
    assert parsed["block_shape"] == "[128,128]" and tuning.quant_of(parsed) == "fp8_block"


def test_rule_default_keeps_the_sms_busy():
    from angelcli.ops.derive_configs import gemm_rule, moe_rule

    # the old fallback (16x64 tiles) gave qkv decode 80 CTAs on 132 SMs; the rule aims for >= one per SM
    for n, k in [(5120, 4096), (4096, 4096), (2560, 4096), (4096, 2048), (768, 4096)]:
        cfg = gemm_rule(1, n, k, 132)
        assert -(-n // cfg["BLOCK_SIZE_N"]) >= 132 or cfg["BLOCK_SIZE_N"] == 16
    cfg = moe_rule(1, 256, 1024, 4096, 8, "fp8_block", 132)  # 8 experts hit: GEMM1 tiles of 32 outputs
    assert 8 * 1024 // (cfg["BLOCK_SIZE_N"] // 2) >= 132
    assert moe_rule(4096, 256, 1024, 4096, 8, "fp8_block", 132)["BLOCK_SIZE_M"] == 64
    with tuning.device_override("NVIDIA H20"):
        cfg, source = tuning.moe_config(1, 300, 1024, 8, "fp8_block")  # no file: the rule, for 78 SMs
    assert source == "default" and cfg == moe_rule(1, 300, 1024, 4096, 8, "fp8_block", 78)


@pytest.mark.parametrize("content,why", [
    ({"triton_version": "3.1.0", "1": {}}, "not an angel launch-config file"),  # vLLM's marker key
    ({"1": {"BLOCK_SIZE_M": 16, "BLOCK_SIZE_N": 64, "BLOCK_SIZE_K": 128, "GROUP_SIZE_M": 1, "num_warps": 4,
            "num_stages": 3}}, "not an angel launch-config file"),  # a vLLM file: no format marker
    ({"_format": tuning.FORMAT, "triton_version": "3.1.0"}, "unknown key 'triton_version'"),
    ({"_format": tuning.FORMAT, "1": {"BLOCK_SIZE_M": 16}}, "missing"),
])
def test_foreign_config_files_are_rejected_with_one_line(tmp_path, monkeypatch, capsys, content, why):
    name = tuning.moe_config_name(8, 128, "NVIDIA_H20", "fp8_block")
    (tmp_path / name).write_text(json.dumps(content))
    monkeypatch.setenv("ANGEL_KERNEL_CONFIG_DIR", str(tmp_path))
    monkeypatch.setattr(tuning, "_warned", set())
    tuning.load_config_file.cache_clear()
    try:
        with tuning.device_override("NVIDIA H20"), tuning.record_lookups() as looks:
            cfg, source = tuning.moe_config(3, 8, 128, 2, "fp8_block")
        assert source == "default" and cfg["BLOCK_SIZE_K"] == 128
        assert not looks[0]["hit"] and why in looks[0]["reason"]
        err = capsys.readouterr().err
        lines = [ln for ln in err.splitlines() if "ignoring kernel config" in ln]
        assert len(lines) == 1 and name in lines[0] and why in lines[0]
    finally:
        tuning.load_config_file.cache_clear()


def test_dispatch_on_cpu_uses_the_twin_by_default(monkeypatch):
    monkeypatch.delenv("ANGEL_OPS_BACKEND", raising=False)
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    logits = torch.randn(4, 16)
    w, ids = ops.route(logits, None, 2, n_group=4, topk_group=2)
    w2, ids2 = ref.route(logits, None, 2, n_group=4, topk_group=2)
    assert torch.equal(ids, ids2) and torch.equal(w, w2)


def test_meta_device_step_records_hits_for_a_named_device():
    # what `angel bench --count-launches --device-name ...` does: wrappers on meta tensors, lookups recorded
    from angelcli.ops.fp8 import fp8_gemm
    from angelcli.ops.moe import fused_moe

    meta, f8, bf = torch.device("meta"), torch.float8_e4m3fn, torch.bfloat16
    with tuning.device_override("NVIDIA H20"), tuning.record_lookups() as looks:
        x = torch.empty(1, 4096, dtype=bf, device=meta)
        fp8_gemm(x, torch.empty(2560, 4096, dtype=f8, device=meta), torch.empty(20, 32, device=meta))  # qkv tp2
        fused_moe(x, torch.empty(257, 1024, 4096, dtype=f8, device=meta), torch.empty(257, 4096, 512, dtype=f8,
                  device=meta), torch.empty(1, 9, device=meta), torch.empty(1, 9, dtype=torch.int32, device=meta),
                  w13_scale=torch.empty(257, 8, 32, device=meta), w2_scale=torch.empty(257, 32, 4, device=meta))
        fp8_gemm(x, torch.empty(4096, 4096, dtype=f8, device=meta), torch.empty(32, 32, device=meta))
    assert [(lk["kernel"], lk["hit"]) for lk in looks] == [("fp8_gemm", True), ("fused_moe", True),
                                                           ("fp8_gemm", True)]
    assert looks[1]["file"] == "E=257,N=512,device_name=NVIDIA_H20,dtype=fp8_w8a8,block_shape=[128,128].json"
    with tuning.device_override("NVIDIA H20"), tuning.record_lookups() as looks:
        fp8_gemm(x, torch.empty(4000, 4096, dtype=f8, device=meta), torch.empty(32, 32, device=meta))
    assert not looks[0]["hit"] and looks[0]["reason"] == "missing"


def test_shipped_configs_are_what_the_generator_writes(tmp_path):
    from angelcli.ops import derive_configs

    assert derive_configs.main(["--out", str(tmp_path)]) == 0
    written = sorted(p.name for p in tmp_path.glob("*.json"))
    assert written == sorted(p.name for p in tuning.CONFIG_DIR.glob("*.json"))
    for name in written:
        assert (tmp_path / name).read_text() == (tuning.CONFIG_DIR / name).read_text(), name
