"""`angel bench MODEL --count-launches`: kernels of one decode step / MoE layer / prefill chunk on the meta
device (no weights, no GPU), through the triton backend's own code path."""

import json

import pytest




@pytest.mark.parametrize("tp", [1, 2])
def test_fp8_decode_step_is_launch_lean(run, tp):
    r = run("bench", "antangelmed-fp8", "--count-launches", "--tp", tp, "--device-name", "NVIDIA H200", "--json")
    assert r.returncode in (0, None), r.stderr
    rep = json.loads(r.stdout)
    by = rep["by_kernel"]
    assert sum(by.values()) == rep["kernels_per_step"]
    layers = 32
    # Before this work a MoE layer took 23 kernels at TP 1 (the router alone: two fp32 upcasts, a GEMM and
    # the top-k kernel). Now: fused norm+quant x2, QKV, QK-norm+RoPE+KV write, split-K attention + merge,
    # output projection, router (+ the shared expert's slots), fused MoE with the shared expert inside.
    assert rep["kernels_per_moe_layer"] <= 14
    assert by["_route_gemm_kernel"] == layers - 1 and "_route_kernel" not in by
    assert "_kv_write_kernel" not in by and by.get("aten.linear", 0) == 1  # lm_head only (bf16)
    assert by.get("aten.to", 0) <= 3 and "aten.silu" not in by  # no per-layer conversions, no unfused MLP
    assert by["_decode_split_kernel"] == by["_decode_merge_kernel"] == layers
    assert rep["collectives"].get("nccl.all_reduce", 0) == (2 * layers if tp > 1 else 0)
    assert rep["collectives_per_moe_layer"] == (2 if tp > 1 else 0)
    assert rep["kernels_per_prefill_chunk"] > 0 and isinstance(rep["config_misses"], list)


def test_count_launches_usage_errors(run):
    r = run("bench", "--count-launches", "--json")
    assert r.returncode == 2 and "MODEL" in r.stderr
    r = run("bench", "antangelmed-fp8", "--count-launches", "--tp", "3")
    assert r.returncode == 2 and "--tp 3" in r.stderr


def test_config_misses_name_the_files_a_device_lacks():
    from angelcli.launch_count import count_launches

    rep = count_launches("antangelmed-fp8", tp=1, batch=3, device_name="Made Up GPU")
    assert rep["config_misses"] and all("device_name=Made_Up_GPU" in m for m in rep["config_misses"])
    assert any(m.startswith("E=257,N=1024,") for m in rep["config_misses"])  # routed + shared expert
