"""Kernel benchmarks and launch-config tuning on a CUDA GPU (`angel kernels --bench`, `angel tune`).

Benchmarks report achieved memory bandwidth and TFLOPS as a fraction of the device's peak, because on an
H20 (4.0 TB/s, 148 BF16 / 296 FP8 TFLOPS) most serving shapes are memory-bound: decode MoE and decode
attention should be judged by bytes/s, prefill GEMMs by FLOP/s. Bytes count what must be read at least
once (the weights of every expert actually hit, the KV cache up to seq_len) plus the outputs written.

Tuning sweeps candidate tiles per token count, keeps those whose shared memory fits, times each from
CUDA-graph replays (triton.testing.do_bench_cudagraph) and writes the fastest per M as a config file
(angelcli/ops/tuning.py format) into
$ANGEL_KERNEL_CONFIG_DIR or the directory given, never into the installed package.
Nothing here runs without a GPU; none of it was run when this file was written (no GPU was available).
"""

from __future__ import annotations

import datetime
import itertools
import json
from pathlib import Path

import torch

from angelcli.ops import cases
from angelcli.ops import reference as ref

# device name (tuning.device_name spelling) -> (bytes/s, BF16 FLOP/s, FP8 FLOP/s), dense, no sparsity
PEAKS = {
    "NVIDIA_H20": (4.0e12, 148e12, 296e12),
    "NVIDIA_H20-3e": (4.8e12, 148e12, 296e12),
    "NVIDIA_H100_80GB_HBM3": (3.35e12, 989e12, 1979e12),
    "NVIDIA_H800": (3.35e12, 989e12, 1979e12),
    "NVIDIA_H200": (4.8e12, 989e12, 1979e12),
}
MOE_M = (1, 8, 32, 128, 512, 2048, 8192)
GEMM_SHAPES = ((5120, 4096), (4096, 4096), (2048, 4096), (4096, 1024))
GEMM_M = (1, 16, 128, 1024, 4096)


def _time_ms(fn) -> float:
    """GPU time of one call, from CUDA-graph replays (as vLLM's benchmark_moe does): plain do_bench would
    add the host launch cost, which dominates at decode sizes and is not what a graphed step pays."""
    import triton.testing

    fn()  # compile and autotune outside the capture
    torch.cuda.synchronize()
    try:
        return float(triton.testing.do_bench_cudagraph(fn, rep=100))
    except Exception:  # noqa: BLE001 - an op that cannot be captured is timed eagerly
        return float(triton.testing.do_bench(fn, warmup=25, rep=100))


def _row(name, ms, nbytes, flops, fp8, peaks):
    bw, bf16, f8 = peaks or (None, None, None)
    peak_flops = f8 if fp8 else bf16
    return {"kernel": name, "ms": round(ms, 4), "GB/s": round(nbytes / ms / 1e6, 1),
            "TFLOPS": round(flops / ms / 1e9, 2),
            "bw_frac": round(nbytes / ms * 1e3 / bw, 3) if bw else None,
            "flops_frac": round(flops / ms * 1e3 / peak_flops, 3) if peak_flops else None}


def bench_kernels(quick: bool = False) -> dict:
    """Time fused_moe, fp8_gemm and decode attention at AntAngelMed shapes on the current GPU."""
    from angelcli.ops.decode_attention import attention_decode
    from angelcli.ops.fp8 import fp8_gemm
    from angelcli.ops.moe import fused_moe
    from angelcli.ops.tuning import device_name

    dev = device_name()
    peaks = PEAKS.get(dev)
    rows = []
    h, i, e, k = cases.H, cases.INTER, cases.E, cases.TOP_K
    for quant in ("fp8_block", "bf16"):
        for m in MOE_M[:3] if quick else MOE_M:
            kw = cases.moe_inputs(m, e, k, h, i, quant, device="cuda", n_group=8, topk_group=4)
            hit = int(torch.unique(kw["topk_ids"]).numel())
            wbytes = hit * 3 * h * i * (1 if quant != "bf16" else 2)
            ms = _time_ms(lambda: fused_moe(**kw))
            rows.append(_row(f"fused_moe[{quant}] M={m}", ms, wbytes + 4 * m * h, 2 * m * k * 3 * h * i,
                             quant != "bf16", peaks))
    for (n, kk), m in itertools.product(GEMM_SHAPES[:1] if quick else GEMM_SHAPES, GEMM_M):
        x = cases.randn(m, kk, seed=0, device="cuda")
        w, ws = cases.quantize_weight_block(cases.randn(n, kk, seed=1, scale=kk ** -0.5, device="cuda"))
        ms = _time_ms(lambda: fp8_gemm(x, w, ws))
        rows.append(_row(f"fp8_gemm N={n} K={kk} M={m}", ms, n * kk + 2 * m * (n + kk), 2 * m * n * kk, True,
                         peaks))
    for bsz, ctx in [(1, 4096), (1, 131072), (32, 4096)] if not quick else [(1, 4096)]:
        kc, vc, table, seq = cases.paged_cache([ctx] * bsz, cases.HKV, cases.D, 16, device="cuda")
        q = cases.randn(bsz, cases.HQ, cases.D, seed=3, device="cuda")
        ms = _time_ms(lambda: attention_decode(q, kc, vc, table, seq))
        nbytes = bsz * ctx * cases.HKV * cases.D * 2 * 2
        rows.append(_row(f"attention_decode B={bsz} ctx={ctx}", ms, nbytes, 4 * bsz * ctx * cases.HQ * cases.D,
                         False, peaks))
    return {"device": dev, "date": datetime.date.today().isoformat(), "peaks_known": peaks is not None,
            "triton": __import__("triton").__version__, "rows": rows}


def benchmarks_markdown(report: dict) -> str:
    """A dated section for docs/benchmarks.md."""
    lines = [f"## {report['date']} - {report['device']} (triton {report['triton']})", "",
             "| kernel | ms | GB/s | TFLOPS | of peak BW | of peak FLOPS |", "|---|---|---|---|---|---|"]
    for r in report["rows"]:
        lines.append(f"| {r['kernel']} | {r['ms']} | {r['GB/s']} | {r['TFLOPS']} | {r['bw_frac']} | "
                     f"{r['flops_frac']} |")
    return "\n".join(lines) + "\n"


# -------------------------------------------------------------------------------------------------- tune


def _shared_estimate(cfg: dict, a_bytes: int, w_bytes: int, gated: bool) -> int:
    """Bytes of shared memory the pipelined K loop needs (A tile + one or two W tiles per stage)."""
    per_stage = cfg["BLOCK_SIZE_M"] * cfg["BLOCK_SIZE_K"] * a_bytes
    per_stage += (2 if gated else 1) * cfg["BLOCK_SIZE_N"] * cfg["BLOCK_SIZE_K"] * w_bytes
    return per_stage * cfg["num_stages"]


def candidates(quant: str, gated: bool) -> list[dict]:
    out = []
    # a deliberately small grid (~100 points): each point costs a compile and a timed run per M
    for bm, bn, bk, gm, nw, ns in itertools.product((16, 32, 64, 128), (32, 64, 128, 256), (64, 128),
                                                    (1, 16), (4, 8), (3, 4)):
        if quant != "bf16" and bk != 128:
            continue  # FP8 paths quantise activations per 128-channel K step
        if nw == 8 and bm * bn < 128 * 128:
            continue
        cfg = dict(BLOCK_SIZE_M=bm, BLOCK_SIZE_N=bn, BLOCK_SIZE_K=bk, GROUP_SIZE_M=gm, num_warps=nw, num_stages=ns)
        if _shared_estimate(cfg, 2, 1 if quant != "bf16" else 2, gated) <= 200 * 1024:
            out.append(cfg)
    return out


def tune(kind: str, quant: str, out_dir: Path, ms: tuple[int, ...] = MOE_M, n: int | None = None,
         k: int | None = None, progress=None, experts: int = cases.E, inter: int = cases.INTER) -> Path:
    """Benchmark candidates per M for fused_moe (E experts of width I: 256 x 1024 at TP1, I/tp per TP shard;
    257 with the shared expert appended) or fp8_gemm (N x K); write the JSON file."""
    from angelcli.ops.fp8 import fp8_gemm
    from angelcli.ops.moe import fused_moe
    from angelcli.ops.tuning import FORMAT, device_name, gemm_config_name, moe_config_name

    dev = device_name()

    table = {"_format": FORMAT, "_provenance": f"measured by angel tune on {dev}, {datetime.date.today().isoformat()}, "
                            f"triton {__import__('triton').__version__}"}
    for m in ms:
        if kind == "moe":
            kw = cases.moe_inputs(m, experts, cases.TOP_K, cases.H, inter, quant, device="cuda",
                                  n_group=8 if experts % 8 == 0 else 1, topk_group=4 if experts % 8 == 0 else 1)
            run = lambda cfg: fused_moe(**kw, config=cfg)
            want = ref.fused_moe(**kw)
        else:
            x = cases.randn(m, k, seed=0, device="cuda")
            w, ws = cases.quantize_weight_block(cases.randn(n, k, seed=1, scale=k ** -0.5, device="cuda"))
            run = lambda cfg: fp8_gemm(x, w, ws, config=cfg)
            want = ref.fp8_gemm(x, w, ws)
        best = None
        for cfg in candidates(quant, gated=kind == "moe"):
            if cfg["BLOCK_SIZE_M"] > max(16, 4 * m):
                continue  # tiles far taller than the batch only add padding
            try:
                if cases.max_err(run(cfg), want) > cases.bf16_tol(want, cases.RTOL["fp8"]):
                    continue
                t = _time_ms(lambda: run(cfg))
            except Exception:  # noqa: BLE001 - a config that fails to compile or launch is skipped
                continue
            if best is None or t < best[0]:
                best = (t, cfg)
        if best is None:
            raise RuntimeError(f"tune: no candidate config ran for M={m}")
        table[str(m)] = best[1]
        if progress:
            progress(f"M={m}: {best[0]:.4f} ms with {best[1]}")
    name = moe_config_name(experts, inter, dev, quant) if kind == "moe" else gemm_config_name(n, k, dev, quant)
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / name
    path.write_text(json.dumps(table, indent=1) + "\n")
    return path
