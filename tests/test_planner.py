"""Planner numbers against bailing-moe-v2.md §4, TP degree choice, and `angel plan` / `angel bench` CLIs."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from angelcli.config import ModelConfig
from angelcli.fixtures import tiny_config
from angelcli.planner import kv_bytes_per_token, make_plan, plan_config, reserve_bytes, valid_tp, weights_bytes

ROOT = Path(__file__).resolve().parent.parent


def _cli(*args):
    return subprocess.run([sys.executable, "-m", "angelcli", *args], capture_output=True, text=True, timeout=300,
                          env=dict(os.environ, PYTHONPATH=str(ROOT)))


def test_antangelmed_bytes_match_the_spec():
    bf16, _ = plan_config("antangelmed")
    fp8, _ = plan_config("antangelmed-fp8")
    assert weights_bytes(bf16) == 205_779_426_304  # 102,889,697,280 x 2 + 7,936 x 4
    assert weights_bytes(fp8) == 104_234_957_824  # e4m3 weights + bf16 rest + fp32 block scales
    assert kv_bytes_per_token(bf16) == 64 * 1024
    assert kv_bytes_per_token(bf16, tp=2) == 32 * 1024  # 2 of the 4 KV heads per rank
    assert kv_bytes_per_token(bf16, tp=8) == 16 * 1024  # 8 ranks > 4 KV heads: one (replicated) head each


def test_weights_split_over_ranks():
    fp8, _ = plan_config("antangelmed-fp8")
    one, two = weights_bytes(fp8, 1), weights_bytes(fp8, 2)
    embeddings = 157184 * 4096 * 2  # replicated on every rank
    routers = 31 * (256 * 4096 * 2 + 256 * 4)
    norms = 32 * (2 * 4096 * 2 + 2 * 128 * 2) + 4096 * 2
    assert two == (one - embeddings - routers - norms) // 2 + embeddings + routers + norms


def test_fp8_on_one_h20_does_not_fit_two_do():
    fp8, _ = plan_config("antangelmed-fp8")
    one = make_plan(fp8, gpus=1, gpu_mem_gb=96, model="antangelmed-fp8")
    assert not one.fits and one.weights_gb_per_gpu == pytest.approx(104.2, abs=0.05)
    assert "104.2 GB" in one.reasons[0] and "2 x 96 GB" in one.reasons[-1]
    two = make_plan(fp8, gpus=2, gpu_mem_gb=96)
    assert two.fits and two.tp == 2 and two.kv_tokens >= 32768
    assert two.kv_tokens == int((96e9 * 0.92 - weights_bytes(fp8, 2) - reserve_bytes(fp8, 2)) // (32 * 1024))
    assert 1 < reserve_bytes(fp8, 2) / 1e9 < 4  # CUDA context, workspaces, one 4K-token prefill chunk


def test_bf16_needs_four_h20_and_three_gpus_run_tp2():
    bf16, _ = plan_config("antangelmed")
    three = make_plan(bf16, gpus=3, gpu_mem_gb=96)
    assert three.tp == 2 and not three.fits and "TP 3" in three.notes[0]
    assert "4 x 96 GB" in three.reasons[-1]
    assert make_plan(bf16, gpus=4, gpu_mem_gb=96).fits
    assert valid_tp(bf16, 8) == [1, 2, 4, 8]


def test_context_that_does_not_fit_the_kv_budget():
    fp8, _ = plan_config("antangelmed-fp8")
    p = make_plan(fp8, gpus=2, gpu_mem_gb=96, context=2_000_000)
    assert not p.fits and "KV cache" in p.reasons[0]


def test_block_fp8_tp_needs_128_aligned_slices():
    qc = {"quant_method": "fp8", "fmt": "e4m3", "activation_scheme": "dynamic", "weight_block_size": [128, 128]}
    cfg = ModelConfig.from_dict(tiny_config(moe_intermediate_size=128, moe_shared_expert_intermediate_size=128,
                                            quantization_config=qc))
    assert valid_tp(cfg, 4) == [1]  # 64 / 2 rows per head slice cannot hold whole 128-row blocks


def test_plan_cli_exit_codes_and_json():
    r = _cli("plan", "antangelmed-fp8", "--gpus", "1", "--gpu-mem", "96")
    assert r.returncode == 4 and "does not fit" in r.stderr and "NO" in r.stdout
    r = _cli("plan", "antangelmed-fp8", "--gpus", "2", "--gpu-mem", "96", "--json")
    assert r.returncode == 0, r.stderr
    data = json.loads(r.stdout)
    assert data["fits"] is True and data["tp"] == 2
    assert data["weights_gb_per_gpu"] == pytest.approx(52.79, abs=0.01) and data["kv_tokens"] > 900_000


def test_bench_cli_smoke(tiny_ckpt):
    r = _cli("bench", str(tiny_ckpt), "--batches", "1,2", "--contexts", "8", "--tokens", "3", "--json")
    assert r.returncode == 0, r.stderr
    data = json.loads(r.stdout)
    assert data["bandwidth_source"] == "measured tensor copy" and data["peak_bandwidth_gbs"] > 0
    rows = data["results"]
    assert [(x["batch"], x["context"]) for x in rows] == [(1, 8), (2, 8)]
    for x in rows:
        assert x["decode_tokens_per_s"] > 0 and x["prefill_tokens_per_s"] > 0 and 0 < x["roofline_fraction"] < 1
    assert rows[1]["bytes_per_step"] > rows[0]["bytes_per_step"]  # more experts and KV rows touched


def test_engine_refuses_at_start_when_the_plan_does_not_fit(tiny_ckpt, monkeypatch):
    """On CUDA open_runtime plans with the device's real memory before loading; simulated here with a
    64 KB "GPU" (no CUDA is touched: the refusal comes first)."""
    import types

    import torch

    from angelcli import runtime
    from angelcli.errors import ResourceError

    monkeypatch.setattr(runtime, "pick_device", lambda device: "cuda:0")
    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda i: types.SimpleNamespace(total_memory=65536))
    with pytest.raises(ResourceError, match="does not fit: weights need") as err:
        runtime.open_runtime(str(tiny_ckpt), backend="torch")
    assert err.value.exit_code == 4
