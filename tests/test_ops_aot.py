"""Ahead-of-time compilation for sm_90 (Hopper: H20 / H100 / H800) without a GPU.

Each op's launches at AntAngelMed's real shapes, decode-sized (1 token) and prefill-sized (4096 tokens),
are recorded with meta tensors and compiled with triton.compile(..., target=GPUTarget("cuda", 90, 32)):
they must compile, fit Hopper's 227 KB of shared memory per block, and the FP8 GEMMs must use FP8
tensor cores (wgmma e4m3) whenever BLOCK_M >= 64. The shipped launch configs are compiled the same way.
"""

from __future__ import annotations

import pytest

from angelcli.ops import cases, check
from angelcli.ops.aot import SHARED_LIMIT_SM90, aot_compile, mma_kind


@pytest.mark.parametrize("name", list(cases.CHECK_CASES))
def test_op_compiles_for_sm90(name):
    recs = check.real_shape_launches(name)
    assert recs, name
    row = {"failures": []}
    check._compile_all(recs, row)
    assert row["aot_sm90"] and not row["failures"], row["failures"]
    assert 0 <= row["shared_bytes"] <= SHARED_LIMIT_SM90 and row["spill_bytes"] == 0
    if name.startswith(("fused_moe[fp8", "fp8_gemm")):
        assert row["fp8_wgmma"] is True  # the prefill-sized launch (BLOCK_M >= 64) uses wgmma e4m3


def test_fp8_tile_below_64_rows_uses_f16_mma():
    recs = [r for r in check.real_shape_launches("fp8_gemm[block]")
            if r.name == "_fp8_gemm_kernel" and r.constexprs["BLOCK_M"] < 64]
    assert recs and aot_compile(recs[0]).mma == "mma.sync.f16"


def test_mma_kind_parser():
    assert mma_kind("wgmma.mma_async.sync.aligned.m64n128k32.f32.e4m3.e4m3 {...}") == "wgmma.e4m3"
    assert mma_kind("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {...}") == "mma.sync.bf16"
    assert mma_kind("ld.global.b32") == "none"


@pytest.mark.slow
def test_every_shipped_config_compiles_for_sm90():
    rows = check._config_rows(gpu=False, interpret=False)
    assert len(rows) >= 10
    bad = [(r["name"], r["failures"]) for r in rows if not r["ok"]]
    assert not bad
    assert any(r["fp8_wgmma"] for r in rows)
