"""Launch configurations are data: JSON files keyed by shape, device and dtype, looked up by nearest M.

File names follow vLLM's convention (so its tuning habits carry over), in angelcli/ops/configs/ or in
$ANGEL_KERNEL_CONFIG_DIR, which is searched first:

    fused MoE   E={E},N={I},device_name={dev}[,dtype=fp8_w8a8[,block_shape=[128,128]|,per_channel_quant=True]].json
    FP8 GEMM    N={N},K={K},device_name={dev},dtype=fp8_w8a8[,block_shape=[128,128]|,per_channel_quant=True].json

E = experts, I = expert intermediate size (w2.shape[2]), N x K = the dense weight; dev = the CUDA device name
with spaces replaced by "_" (e.g. NVIDIA_H20, NVIDIA_H100_80GB_HBM3). A file maps the token count M (as a
string) to {"BLOCK_SIZE_M", "BLOCK_SIZE_N", "BLOCK_SIZE_K", "GROUP_SIZE_M", "num_warps", "num_stages"};
keys starting with "_" are comments (provenance). The entry with the nearest M is used. Without a file,
a default heuristic is used and a warning is printed once per missing file. Files are read once per
process (lru_cache).
"""

from __future__ import annotations

import functools
import json
import os
from pathlib import Path

CONFIG_DIR = Path(__file__).resolve().parent / "configs"
CONFIG_KEYS = ("BLOCK_SIZE_M", "BLOCK_SIZE_N", "BLOCK_SIZE_K", "GROUP_SIZE_M", "num_warps", "num_stages")
_warned: set[str] = set()


def device_name(device=None) -> str:
    """The config-file spelling of the current CUDA device ("cpu" without CUDA)."""
    import torch

    if not torch.cuda.is_available() or (device is not None and torch.device(device).type != "cuda"):
        return "cpu"
    return torch.cuda.get_device_name(device).replace(" ", "_")


def _quant_suffix(quant: str) -> str:
    return {"bf16": "", "fp8_block": ",dtype=fp8_w8a8,block_shape=[128,128]",
            "fp8_channel": ",dtype=fp8_w8a8,per_channel_quant=True"}[quant]


def moe_config_name(num_experts: int, inter: int, device: str, quant: str) -> str:
    return f"E={num_experts},N={inter},device_name={device}{_quant_suffix(quant)}.json"


def gemm_config_name(n: int, k: int, device: str, quant: str) -> str:
    return f"N={n},K={k},device_name={device}{_quant_suffix(quant)}.json"


def config_dirs() -> list[Path]:
    extra = os.environ.get("ANGEL_KERNEL_CONFIG_DIR")
    return ([Path(extra)] if extra else []) + [CONFIG_DIR]


@functools.lru_cache(maxsize=None)
def load_config_file(name: str) -> tuple[Path, dict[int, dict]] | None:
    """(path, {M: config}) from the first directory holding `name`, or None."""
    for d in config_dirs():
        path = d / name
        if path.is_file():
            raw = json.loads(path.read_text())
            return path, {int(m): validate_config(c, f"{path.name}[{m}]") for m, c in raw.items()
                          if not m.startswith("_")}
    return None


def validate_config(cfg: dict, where: str = "config") -> dict:
    """Check the six keys and power-of-two tiles; returns a plain dict of ints."""
    missing = [k for k in CONFIG_KEYS if k not in cfg]
    if missing:
        raise ValueError(f"{where}: missing {', '.join(missing)}")
    out = {k: int(cfg[k]) for k in CONFIG_KEYS}
    for k in ("BLOCK_SIZE_M", "BLOCK_SIZE_N", "BLOCK_SIZE_K", "num_warps"):
        v = out[k]
        if v < 1 or v & (v - 1):
            raise ValueError(f"{where}: {k}={v} must be a power of two")
    if out["BLOCK_SIZE_M"] < 16 or out["BLOCK_SIZE_N"] < 16 or out["BLOCK_SIZE_K"] < 16:
        raise ValueError(f"{where}: tl.dot needs BLOCK_SIZE_M/N/K >= 16")
    if out["GROUP_SIZE_M"] < 1 or out["num_stages"] < 1:
        raise ValueError(f"{where}: GROUP_SIZE_M and num_stages must be >= 1")
    return out


def _nearest(table: dict[int, dict], m: int) -> dict:
    return table[min(table, key=lambda key: (abs(key - m), key))]


def _warn_once(name: str) -> None:
    if name not in _warned:
        _warned.add(name)
        from angelcli.console import warn

        warn(f"no tuned kernel config {name}; using the default (performance may be sub-optimal; "
             "`angel tune` writes one)")


def default_moe_config(m: int, num_experts: int, top_k: int, quant: str) -> dict:
    """Heuristic when no file matches: small BLOCK_M while each expert sees few tokens (memory-bound:
    padding rows cost bandwidth), BLOCK_M 64+ once experts see enough rows for wgmma to pay off."""
    per_expert = m * top_k / max(num_experts, 1)
    bk = 128 if quant != "bf16" else 64
    if per_expert <= 16:
        cfg = dict(BLOCK_SIZE_M=16, BLOCK_SIZE_N=64, BLOCK_SIZE_K=bk, GROUP_SIZE_M=1, num_warps=4, num_stages=3)
    elif per_expert <= 48:
        cfg = dict(BLOCK_SIZE_M=32, BLOCK_SIZE_N=64, BLOCK_SIZE_K=bk, GROUP_SIZE_M=8, num_warps=4, num_stages=3)
    else:
        cfg = dict(BLOCK_SIZE_M=64, BLOCK_SIZE_N=128, BLOCK_SIZE_K=bk, GROUP_SIZE_M=8, num_warps=4, num_stages=3)
    return cfg


def default_gemm_config(m: int, quant: str) -> dict:
    bk = 128
    if m <= 16:
        return dict(BLOCK_SIZE_M=16, BLOCK_SIZE_N=64, BLOCK_SIZE_K=bk, GROUP_SIZE_M=1, num_warps=4, num_stages=4)
    if m <= 64:
        return dict(BLOCK_SIZE_M=32, BLOCK_SIZE_N=64, BLOCK_SIZE_K=bk, GROUP_SIZE_M=8, num_warps=4, num_stages=4)
    return dict(BLOCK_SIZE_M=64, BLOCK_SIZE_N=128, BLOCK_SIZE_K=bk, GROUP_SIZE_M=8, num_warps=4, num_stages=3)


def moe_config(m: int, num_experts: int, inter: int, top_k: int, quant: str, device=None) -> tuple[dict, str]:
    """(config, source) for fused_moe with M tokens; source is the file name or "default"."""
    name = moe_config_name(num_experts, inter, device_name(device), quant)
    found = load_config_file(name)
    if found is not None:
        return dict(_nearest(found[1], m)), name
    if device_name(device) != "cpu":
        _warn_once(name)
    return default_moe_config(m, num_experts, top_k, quant), "default"


def gemm_config(m: int, n: int, k: int, quant: str, device=None) -> tuple[dict, str]:
    """(config, source) for fp8_gemm with M rows."""
    name = gemm_config_name(n, k, device_name(device), quant)
    found = load_config_file(name)
    if found is not None:
        return dict(_nearest(found[1], m)), name
    if device_name(device) != "cpu":
        _warn_once(name)
    return default_gemm_config(m, quant), "default"


def shipped_configs() -> list[tuple[str, dict[int, dict]]]:
    """Every config file shipped in angelcli/ops/configs, parsed and validated (for `angel kernels --check`)."""
    out = []
    for path in sorted(CONFIG_DIR.glob("*.json")):
        raw = json.loads(path.read_text())
        out.append((path.name, {int(m): validate_config(c, f"{path.name}[{m}]") for m, c in raw.items()
                                if not m.startswith("_")}))
    return out


def parse_config_name(name: str) -> dict[str, str]:
    """"E=256,N=1024,device_name=X,dtype=fp8_w8a8,block_shape=[128,128].json" -> {"E": "256", ...}."""
    body = name[:-5] if name.endswith(".json") else name
    fields, depth, cur = [], 0, ""
    for ch in body:  # split on commas outside the [..] of block_shape
        depth += ch == "["
        depth -= ch == "]"
        if ch == "," and depth == 0:
            fields.append(cur)
            cur = ""
        else:
            cur += ch
    fields.append(cur)
    return dict(f.split("=", 1) for f in fields if "=" in f)


def quant_of(fields: dict[str, str]) -> str:
    """The quant key ("bf16", "fp8_block", "fp8_channel") a parsed file name stands for."""
    if fields.get("dtype") != "fp8_w8a8":
        return "bf16"
    return "fp8_channel" if fields.get("per_channel_quant") == "True" else "fp8_block"
