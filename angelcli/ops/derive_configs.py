"""Derive launch configs by rule (SM count, shared memory) for every lookup a model makes; write the files.

    python -m angelcli.ops.derive_configs [--out DIR] [--model antangelmed --model antangelmed-fp8]
                                          [--tp 1 --tp 2 ...] [--device "NVIDIA H20" ...] [--check]

`lookup_shapes(cfg, tp)` is the one place that lists what a decode step and a prefill chunk of a
BailingMoeV2 model look up at one tensor-parallel degree (extend it when the engine gains a GEMM): the
routed fused MoE (E experts of I/tp), the same with the shared expert appended as extra experts
(ops.shared_expert: ceil(Is/I) slices of width I/tp), and for FP8 checkpoints every dense FP8 GEMM:
attention query_key_value and dense, the shared expert's gate and up (separate and fused) and down,
and the dense first layers' MLP (gate/up separate and fused, down), each as this rank's shard. The
router (fp32 torch GEMM) and lm_head (bf16 torch GEMM) make no lookup.

The rule (until `angel tune` measures on the device; every file says so in "_provenance"):
  * fused MoE, per token count M with P = M*top_k (token, expert) pairs over E experts: an expert hit
    sees r = P / min(E, P) rows on average, BLOCK_M = the smallest of 16 / 32 / 64 holding r (little
    padding; 64 rows switch to FP8 wgmma, shared/spec/fp8.md Part D). BLOCK_N = the widest of 256 / 128
    / 64 weight rows whose GEMM1 grid (M blocks x I/(BLOCK_N/2) tiles) still gives 2 CTAs per SM
    (decode is memory-bound: enough loads in flight matters more than tile reuse), else 64.
  * dense FP8 GEMM: BLOCK_M 16 / 32 / 64 / 128 for M <= 16 / 32 / 512 / above; BLOCK_N = the widest
    of 256 / 128 / 64 / 32 / 16 that still gives one CTA per SM (else 16), capped at 128 when BLOCK_M
    is 128 (a 128x256 tile spills registers on sm_90, checked by `angel kernels --check`).
  * num_warps 8 for MoE tiles of >= 32x256 and GEMM tiles of >= 64x256 or 128x128, else 4; num_stages
    as many as fit in 3/4 of the 227 KB shared memory, 5 at most while memory-bound (BLOCK_M <= 32), 3
    for the 64+ row tiles (registers); GROUP_SIZE_M 1 while there are fewer M blocks than 8, else 8
    (L2 reuse of weights).
  * BLOCK_K 128 for FP8 (one activation group per K step), 64 for bf16.
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import sys
from dataclasses import dataclass
from pathlib import Path

SMEM_SM90 = 227 * 1024
DEVICES = ("NVIDIA H20", "NVIDIA H20-3e", "NVIDIA H200", "NVIDIA H100 80GB HBM3")
MODELS = ("antangelmed", "antangelmed-fp8")
TPS = (1, 2, 4, 8)
# token counts per file: decode batches (x speculative tokens) up to prefill chunks of 4096
M_POINTS = (1, 2, 4, 8, 16, 24, 32, 48, 64, 96, 128, 192, 256, 384, 512, 768, 1024, 1536, 2048, 3072, 4096)


@dataclass(frozen=True)
class Lookup:
    """One config file a model looks up: kind "fused_moe" (a=E, b=N=I) or "fp8_gemm" (a=N, b=K)."""

    kind: str
    a: int
    b: int
    quant: str
    what: str  # which layer(s) ask for it

    def file_name(self, device: str) -> str:
        from angelcli.ops.tuning import gemm_config_name, moe_config_name

        dev = device.replace(" ", "_")
        if self.kind == "fused_moe":
            return moe_config_name(self.a, self.b, dev, self.quant)
        return gemm_config_name(self.a, self.b, dev, self.quant)


def _cdiv(a: int, b: int) -> int:
    return -(-a // b)


def lookup_shapes(cfg, tp: int) -> list[Lookup]:
    """Every fused_moe / fp8_gemm config lookup of `cfg` (a ModelConfig) at tensor-parallel degree tp."""
    from angelcli.model.parallel import kv_slice

    h, d = cfg.hidden_size, cfg.head_dim
    fp8 = bool(cfg.quantization_config)
    moe_quant = "fp8_block" if fp8 else "bf16"
    inter = cfg.moe_intermediate_size // tp
    out = [Lookup("fused_moe", cfg.num_experts, inter, moe_quant, "routed experts")]
    if cfg.num_shared_experts:
        slices = _cdiv(cfg.shared_intermediate_size, cfg.moe_intermediate_size)
        out.append(Lookup("fused_moe", cfg.num_experts + slices, inter, moe_quant, "routed + shared expert"))
    if not fp8:
        return out  # bf16 dense layers run torch GEMMs: no lookup
    q = "fp8_block"
    hq = cfg.num_attention_heads // tp
    hkv = kv_slice(cfg, 0, tp)[1]
    out += [Lookup("fp8_gemm", (hq + 2 * hkv) * d, h, q, "attention query_key_value"),
            Lookup("fp8_gemm", h, hq * d, q, "attention dense")]
    if cfg.num_shared_experts:
        si = cfg.shared_intermediate_size // tp
        out += [Lookup("fp8_gemm", si, h, q, "shared expert gate_proj / up_proj"),
                Lookup("fp8_gemm", 2 * si, h, q, "shared expert gate+up fused"),
                Lookup("fp8_gemm", h, si, q, "shared expert down_proj")]
    if cfg.first_k_dense_replace:
        di = cfg.intermediate_size // tp
        out += [Lookup("fp8_gemm", di, h, q, "dense MLP gate_proj / up_proj"),
                Lookup("fp8_gemm", 2 * di, h, q, "dense MLP gate+up fused"),
                Lookup("fp8_gemm", h, di, q, "dense MLP down_proj")]
    return out


# ------------------------------------------------------------------------------------------------ rule


def device_sms(device: str | None) -> int:
    """SM count of a device (file spelling or plain name): the live GPU's, else angel's GPU table, else 132."""
    try:
        import torch

        if device not in (None, "cpu") and torch.cuda.is_available() \
                and torch.cuda.get_device_name().replace(" ", "_") == device.replace(" ", "_"):
            return int(torch.cuda.get_device_properties(0).multi_processor_count)
    except Exception:  # noqa: BLE001 - no driver: fall back to the table
        pass
    if device:
        table = json.loads((Path(__file__).resolve().parents[1] / "assets" / "gpus.json").read_text())["gpus"]
        spaced = device.replace("_", " ").lower()
        best = None
        for info in table.values():
            for pat in info.get("match", []):
                if pat.lower() in spaced and (best is None or len(pat) > best[0]):
                    best = (len(pat), info.get("sms"))
        if best and best[1]:
            return int(best[1])
    return 132


def _stages(bm: int, bn: int, bk: int, a_bytes: int, w_bytes: int, cap: int) -> int:
    per_stage = bm * bk * a_bytes + bn * bk * w_bytes
    return max(2, min(cap, (SMEM_SM90 * 3 // 4) // per_stage))


def _cfg(bm, bn, bk, gm, nw, ns) -> dict:
    return dict(BLOCK_SIZE_M=bm, BLOCK_SIZE_N=bn, BLOCK_SIZE_K=bk, GROUP_SIZE_M=gm, num_warps=nw, num_stages=ns)


def moe_rule(m: int, num_experts: int, inter: int, hidden: int, top_k: int, quant: str, sms: int) -> dict:
    """Config for fused_moe with M tokens (see the module docstring)."""
    pairs = max(1, m * top_k)
    hit = min(num_experts, pairs)
    rows = pairs / hit
    bm = 16 if rows <= 16 else 32 if rows <= 32 else 64
    blocks_m = hit * math.ceil(rows / bm)
    bn = 64
    for cand in (256, 128, 64):
        if blocks_m * _cdiv(inter, cand // 2) >= 2 * sms:
            bn = cand
            break
    fp8 = quant != "bf16"
    bk = 128 if fp8 else 64
    nw = 8 if bm * bn >= 32 * 256 else 4  # 32x256 with 4 warps spills on sm_90a (angel kernels --check)
    ns = _stages(bm, bn, bk, 1 if fp8 else 2, 1 if fp8 else 2, 5 if bm <= 32 else 3)
    return _cfg(bm, bn, bk, 1 if blocks_m < 8 else 8, nw, ns)


def gemm_rule(m: int, n: int, k: int, sms: int) -> dict:
    """Config for fp8_gemm with M rows of an N x K weight (see the module docstring)."""
    bm = 16 if m <= 16 else 32 if m <= 32 else 64 if m <= 512 else 128
    blocks_m = _cdiv(max(m, 1), bm)
    widest = 128 if bm == 128 else 256
    bn = 16
    for cand in (256, 128, 64, 32, 16):
        if cand <= widest and blocks_m * _cdiv(n, cand) >= sms:
            bn = cand
            break
    nw = 8 if bm * bn >= 64 * 256 or bm * bn >= 128 * 128 else 4
    ns = _stages(bm, bn, 128, 1, 1, 5 if bm <= 32 else 3)
    return _cfg(bm, bn, 128, 1 if blocks_m < 8 else 8, nw, ns)


# ------------------------------------------------------------------------------------------- generate


def model_config(name: str):
    from angelcli.aliases import bundled_config
    from angelcli.config import ModelConfig

    raw = bundled_config(name)
    if raw is None:
        raise SystemExit(f"derive_configs: no bundled config for model {name!r}")
    return ModelConfig.from_dict(raw, source=f"{name} (bundled)")


def derive_table(lk: Lookup, device: str, cfg, used_by: str | None = None) -> dict:
    """{"_format", "_provenance", "M": config, ...} for one lookup on one device."""
    from angelcli.ops.tuning import FORMAT

    sms = device_sms(device)
    table: dict = {"_format": FORMAT,
                   "_provenance": f"derived by rule (angelcli/ops/derive_configs.py) for {device} ({sms} SMs, "
                                  f"{SMEM_SM90 // 1024} KB shared memory), not measured; "
                                  f"used by: {used_by or lk.what}; "
                                  f"regenerate with `python -m angelcli.ops.derive_configs`, measure with "
                                  f"`angel tune`"}
    for m in M_POINTS:
        if lk.kind == "fused_moe":
            table[str(m)] = moe_rule(m, lk.a, lk.b, cfg.hidden_size, cfg.num_experts_per_tok, lk.quant, sms)
        else:
            table[str(m)] = gemm_rule(m, lk.a, lk.b, sms)
    return table


def generate(out_dir: Path, models=MODELS, tps=TPS, devices=DEVICES) -> dict[str, dict]:
    """Write one file per distinct (lookup, device); returns {file name: table}. Existing files whose
    provenance is not "derived by rule" (e.g. measured by `angel tune`) are kept."""
    found: dict[str, tuple] = {}
    whats: dict[str, set[str]] = {}
    for model in models:
        cfg = model_config(model)
        for tp in tps:
            for lk in lookup_shapes(cfg, tp):
                for dev in devices:
                    name = lk.file_name(dev)
                    whats.setdefault(name, set()).add(f"{lk.what} ({model} tp{tp})")
                    found.setdefault(name, (lk, dev, cfg))
    out_dir.mkdir(parents=True, exist_ok=True)
    files = {}
    for name, (lk, dev, cfg) in found.items():
        table = files[name] = derive_table(lk, dev, cfg, ", ".join(sorted(whats[name])))
        path = out_dir / name
        if path.exists():
            try:
                if "derived by rule" not in json.loads(path.read_text()).get("_provenance", "derived by rule"):
                    continue  # a measured file wins over the rule
            except ValueError:
                pass
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(dumps(table))
        os.replace(tmp, path)
    return files


def dumps(table: dict) -> str:
    """One key per line (entries stay on one line each, so diffs of re-derived files stay readable)."""
    return "{\n" + ",\n".join(f" {json.dumps(k)}: {json.dumps(v)}" for k, v in table.items()) + "\n}\n"


def main(argv: list[str] | None = None) -> int:
    from angelcli.ops.tuning import CONFIG_DIR

    p = argparse.ArgumentParser(prog="python -m angelcli.ops.derive_configs", description=__doc__.split("\n")[0])
    p.add_argument("--out", default=str(CONFIG_DIR), help="directory (default: the shipped angelcli/ops/configs)")
    p.add_argument("--model", action="append", help=f"bundled model alias (default: {', '.join(MODELS)})")
    p.add_argument("--tp", action="append", type=int, help=f"tensor-parallel degree (default: {TPS})")
    p.add_argument("--device", action="append", help=f"device name (default: {', '.join(DEVICES)})")
    args = p.parse_args(argv)
    files = generate(Path(args.out), tuple(args.model or MODELS), tuple(args.tp or TPS),
                     tuple(args.device or DEVICES))
    print(f"{len(files)} config files in {args.out} ({datetime.date.today().isoformat()})", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
