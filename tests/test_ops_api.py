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
    (tmp_path / name).write_text(json.dumps({"_provenance": "test", "1": small, "256": big}))
    monkeypatch.setenv("ANGEL_KERNEL_CONFIG_DIR", str(tmp_path))
    tuning.load_config_file.cache_clear()
    try:
        assert tuning.moe_config(3, 8, 128, 2, "fp8_block") == (small, name)
        assert tuning.moe_config(200, 8, 128, 2, "fp8_block") == (big, name)
        cfg, source = tuning.moe_config(3, 8, 256, 2, "fp8_block")  # no such file: the default
        assert source == "default" and cfg["BLOCK_SIZE_K"] == 128
        assert tuning.default_moe_config(4096, 256, 8, "bf16")["BLOCK_SIZE_M"] >= 64
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


def test_shipped_configs_cover_antangelmed_on_h20_and_h100():
    files = dict(tuning.shipped_configs())
    for dev in ("NVIDIA_H20", "NVIDIA_H100_80GB_HBM3"):
        for quant in ("fp8_block", "bf16"):
            table = files[tuning.moe_config_name(256, 1024, dev, quant)]
            assert {1, 8, 64, 512, 4096, 16384} <= set(table)
            for m, cfg in table.items():
                if quant != "bf16":
                    assert cfg["BLOCK_SIZE_K"] == 128
                assert cfg["BLOCK_SIZE_M"] <= max(16, 2 * m)  # no huge padding for tiny batches
        for n, k in [(5120, 4096), (4096, 4096), (2048, 4096), (4096, 1024), (18432, 4096), (4096, 9216)]:
            assert tuning.gemm_config_name(n, k, dev, "fp8_block") in files
    parsed = tuning.parse_config_name("E=256,N=1024,device_name=NVIDIA_H20,dtype=fp8_w8a8,block_shape=[128,128].json")
    assert parsed["block_shape"] == "[128,128]" and tuning.quant_of(parsed) == "fp8_block"


def test_dispatch_on_cpu_uses_the_twin_by_default(monkeypatch):
    monkeypatch.delenv("ANGEL_OPS_BACKEND", raising=False)
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    logits = torch.randn(4, 16)
    w, ids = ops.route(logits, None, 2, n_group=4, topk_group=2)
    w2, ids2 = ref.route(logits, None, 2, n_group=4, topk_group=2)
    assert torch.equal(ids, ids2) and torch.equal(w, w2)
