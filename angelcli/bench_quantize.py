"""Block-FP8 conversion throughput: angel's converter vs llmcompressor's model_free_ptq (`just bench-quantize`).

Writes a full-width slice checkpoint with the fixtures' tensor names (hidden 4096, moe_intermediate 1024, 256
experts, 32/4 heads of 128, one dense + one MoE layer; vocabulary configurable) in shards of --shard-gb, then in
the same run and on the same shards:
  * disk read bandwidth: every shard read once sequentially after evicting it from the page cache;
  * angel `quantize --fp8 --scheme block --targets experts`, --workers 1 and --workers N;
  * llmcompressor `model_free_ptq(scheme="FP8_BLOCK")` with the same tensor selection, max_workers 1 and N, with
    torch's default intra-op threads and with one intra-op thread (what angel's converter uses per worker).
Each conversion runs in a fresh child process with the shards evicted from the page cache first; it reports its
wall time (import excluded) and its peak resident set (VmHWM of the child's own image). No absolute targets: the
table compares the tools.

    python -m angelcli.bench_quantize [--dir D] [--experts 256] [--vocab 157184] [--shard-gb 2] [--workers 2] [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

MFP_IGNORE = ["lm_head", r"re:.*mlp\.gate$", "model.word_embeddings", r"re:.*attention\.(query_key_value|dense)$",
              r"re:model\.layers\.\d+\.mlp\.(gate|up|down)_proj$"]


def slice_config(experts: int, vocab: int) -> dict:
    from angelcli.fixtures import tiny_config

    return tiny_config(vocab_size=vocab, hidden_size=4096, intermediate_size=9216, num_hidden_layers=2,
                       num_attention_heads=32, num_key_value_heads=4, head_dim=128, num_experts=experts,
                       num_experts_per_tok=8, n_group=8 if experts % 8 == 0 else 1,
                       topk_group=4 if experts % 8 == 0 else 1,
                       moe_intermediate_size=1024, moe_shared_expert_intermediate_size=1024, first_k_dense_replace=1)


def write_slice(out: Path, experts: int, vocab: int, shard_bytes: int) -> Path:
    """Stream a random slice checkpoint to disk tensor by tensor (never the whole state dict in memory)."""
    import torch

    from angelcli.config import ModelConfig
    from angelcli.fsutil import atomic_write_json
    from angelcli.model.bailing import expected_checkpoint_names, expected_shape, is_fp32_tensor
    from angelcli.quant.st_io import ShardWriter, nbytes_of

    cfg_dict = slice_config(experts, vocab)
    cfg = ModelConfig.from_dict(cfg_dict)
    out.mkdir(parents=True, exist_ok=True)
    names = expected_checkpoint_names(cfg)
    groups, cur, size = [], [], 0
    for n in names:
        dt = "F32" if is_fp32_tensor(n) else "BF16"
        b = nbytes_of(dt, expected_shape(cfg, n))
        if cur and size + b > shard_bytes:
            groups.append(cur)
            cur, size = [], 0
        cur.append((n, dt, expected_shape(cfg, n)))
        size += b
    groups.append(cur)
    g = torch.Generator().manual_seed(0)
    weight_map = {}
    for k, group in enumerate(groups):
        fname = f"model-{k + 1:05d}-of-{len(groups):05d}.safetensors"
        w = ShardWriter(out / fname, group)
        for n, dt, shape in group:
            t = torch.randn(shape, generator=g, dtype=torch.float32).mul_(1.0 / shape[-1] ** 0.5)
            w.write(n, t.to(torch.float32 if dt == "F32" else torch.bfloat16))
            weight_map[n] = fname
        w.close()
    atomic_write_json(out / "model.safetensors.index.json", {"metadata": {}, "weight_map": weight_map})
    atomic_write_json(out / "config.json", cfg_dict)
    return out


def evict(paths: list[Path]) -> None:
    """Drop the files' pages from the page cache (clean pages only; no root needed)."""
    for p in paths:
        fd = os.open(p, os.O_RDONLY)
        try:
            os.fsync(fd)
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


def read_bandwidth(paths: list[Path]) -> float:
    evict(paths)
    buf = bytearray(64 << 20)
    total, t0 = 0, time.perf_counter()
    for p in paths:
        with open(p, "rb", buffering=0) as fh:
            while n := fh.readinto(buf):
                total += n
    return total / (time.perf_counter() - t0)


CHILD = r"""
import json, sys, time
kind, src, out, workers = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
if kind == "angel":
    from pathlib import Path
    from angelcli.quant.run import QuantOptions, quantize_one
    from angelcli.console import set_quiet
    set_quiet(True)
    t0 = time.perf_counter()
    quantize_one(src, Path(out), QuantOptions(scheme="block", targets="experts", workers=workers, report=False))
else:
    import os
    os.environ["LLM_COMPRESSOR_LOG_LEVEL"] = "ERROR"
    import torch
    if kind == "mfp-1t":
        torch.set_num_threads(1)  # same kernel threading as angel uses
    from llmcompressor import model_free_ptq
    t0 = time.perf_counter()
    model_free_ptq(src, out, scheme="FP8_BLOCK", ignore=json.loads(sys.argv[5]), max_workers=workers, device="cpu")
dt = time.perf_counter() - t0
# VmHWM: this process image's own peak (ru_maxrss would also count the parent's image inherited at fork)
hwm = next(int(l.split()[1]) for l in open("/proc/self/status") if l.startswith("VmHWM:"))
print(json.dumps({"seconds": dt, "peak_rss_bytes": hwm * 1024}))
"""


def run_child(kind: str, src: Path, out: Path, workers: int) -> dict:
    import shutil

    shutil.rmtree(out, ignore_errors=True)
    evict(sorted(src.glob("*.safetensors")))
    env = dict(os.environ, TQDM_DISABLE="1")
    proc = subprocess.run([sys.executable, "-c", CHILD, kind, str(src), str(out), str(workers), json.dumps(MFP_IGNORE)],
                          capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        raise RuntimeError(f"{kind} failed:\n{proc.stderr[-3000:]}")
    res = json.loads(proc.stdout.strip().splitlines()[-1])
    out_bytes = sum(f.stat().st_size for f in out.glob("*.safetensors"))
    shutil.rmtree(out, ignore_errors=True)
    tool = {"angel": "angel quantize", "mfp": "llmcompressor model_free_ptq",
            "mfp-1t": "llmcompressor model_free_ptq, 1 intra-op thread"}[kind]
    return {"tool": tool, "workers": workers,
            **res, "output_bytes": out_bytes}


def bench(root: Path, experts: int, vocab: int, shard_gb: float, workers: int) -> dict:
    src = root / "slice"
    if not (src / "config.json").exists():
        t0 = time.perf_counter()  # in a child, so this process stays small (its children fork from it)
        subprocess.run([sys.executable, "-c", "import sys; from pathlib import Path; from angelcli.bench_quantize "
                        "import write_slice; write_slice(Path(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), "
                        "int(sys.argv[4]))", str(src), str(experts), str(vocab), str(int(shard_gb * (1 << 30)))],
                       check=True)
        print(f"wrote slice checkpoint in {time.perf_counter() - t0:.0f} s", file=sys.stderr)
    shards = sorted(src.glob("*.safetensors"))
    src_bytes = sum(p.stat().st_size for p in shards)
    res = {"source_bytes": src_bytes, "shards": len(shards),
           "largest_shard_bytes": max(p.stat().st_size for p in shards), "experts": experts, "vocab": vocab,
           "cpus": os.cpu_count(), "read_bandwidth_Bps": read_bandwidth(shards), "runs": []}
    for w in sorted({1, workers}):
        for kind in ("angel", "mfp", "mfp-1t"):
            r = run_child(kind, src, root / f"out-{kind}-{w}", w)
            r["throughput_Bps"] = src_bytes / r["seconds"]
            r["rss_over_largest_shard"] = r["peak_rss_bytes"] / res["largest_shard_bytes"]
            res["runs"].append(r)
            print(f"{r['tool']} workers={w}: {r['seconds']:.1f} s, {r['throughput_Bps'] / 1e6:.0f} MB/s, "
                  f"peak RSS {r['peak_rss_bytes'] / 1e9:.2f} GB", file=sys.stderr)
    return res


def markdown(res: dict) -> str:
    lines = [f"source {res['source_bytes'] / 1e9:.2f} GB in {res['shards']} shards (largest "
             f"{res['largest_shard_bytes'] / 1e9:.2f} GB), {res['cpus']} CPUs, cold-cache disk read "
             f"{res['read_bandwidth_Bps'] / 1e6:.0f} MB/s", "",
             "| tool | workers | seconds | throughput MB/s | peak RSS GB | RSS / largest shard |",
             "|---|---|---|---|---|---|"]
    for r in res["runs"]:
        lines.append(f"| {r['tool']} | {r['workers']} | {r['seconds']:.1f} | {r['throughput_Bps'] / 1e6:.0f} | "
                     f"{r['peak_rss_bytes'] / 1e9:.2f} | {r['rss_over_largest_shard']:.2f} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dir", help="work directory (kept; the slice is reused when present). Default: a temp dir")
    ap.add_argument("--experts", type=int, default=256)
    ap.add_argument("--vocab", type=int, default=157184)
    ap.add_argument("--shard-gb", type=float, default=2.0)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args(argv)
    if a.dir:
        res = bench(Path(a.dir), a.experts, a.vocab, a.shard_gb, a.workers)
    else:
        with tempfile.TemporaryDirectory(prefix="angel-bench-q-") as d:
            res = bench(Path(d), a.experts, a.vocab, a.shard_gb, a.workers)
    print(json.dumps(res) if a.json else markdown(res))
    return 0


if __name__ == "__main__":
    sys.exit(main())
