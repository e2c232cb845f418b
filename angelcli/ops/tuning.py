"""Launch configurations are data: JSON files keyed by shape, device and dtype, looked up by nearest M.

File names (in angelcli/ops/configs/, or in $ANGEL_KERNEL_CONFIG_DIR, which is searched first):

    fused MoE   E={E},N={I},device_name={dev}[,dtype=fp8_w8a8[,block_shape=[128,128]|,per_channel_quant=True]].json
    FP8 GEMM    N={N},K={K},device_name={dev},dtype=fp8_w8a8[,block_shape=[128,128]|,per_channel_quant=True].json

E = experts, I = expert intermediate size (w2.shape[2]), N x K = the dense weight; dev = the CUDA device name
with spaces replaced by "_" (e.g. NVIDIA_H20, NVIDIA_H100_80GB_HBM3). The names look like vLLM's, the
contents are not interchangeable (docs/kernels.md "Config file format"): a file must carry
`"_format": "angel-launch-config/2"`; a file without it, or with any other non-comment key that is not
a token count (vLLM writes "triton_version"), is rejected with a one-line warning naming the file and
the lookup falls back as if the file did not exist. A file maps the token count M (as a string) to
{"BLOCK_SIZE_M", "BLOCK_SIZE_N", "BLOCK_SIZE_K", "GROUP_SIZE_M", "num_warps", "num_stages"}; keys starting
with "_" are comments ("_provenance" says where the numbers come from). The entry with the nearest M is
used (ties: the smaller M). For fused MoE, BLOCK_SIZE_N is the number of weight rows per tile in both
GEMMs; GEMM1 interleaves gate and up rows, so its tile yields BLOCK_SIZE_N / 2 outputs.

Without a usable file the default is derived by the same rule that generated the shipped files
(angelcli/ops/derive_configs.py: tiles sized from the device's SM count and shared memory), so a miss
never leaves most SMs idle; on a GPU a warning is printed once per missing file.

Two hooks for tools that count what a step looks up (e.g. `angel bench --count-launches`):

    with tuning.device_override("NVIDIA H20"):         # look up as if on this device (meta tensors, no GPU)
        with tuning.record_lookups() as lookups:        # every fused_moe / fp8_gemm config lookup inside
            ...run a step...
    misses = [l for l in lookups if not l["hit"]]

Each recorded lookup is a dict: {"kernel": "fused_moe" | "fp8_gemm", "key": {"E", "N"} or {"N", "K"},
"quant", "m", "device" (file spelling), "hit": bool, "file": the file name looked for, "reason": None or
"missing" or "rejected: ..."}. Files are read once per process (lru_cache).
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
from pathlib import Path
from typing import Iterator

CONFIG_DIR = Path(__file__).resolve().parent / "configs"
CONFIG_KEYS = ("BLOCK_SIZE_M", "BLOCK_SIZE_N", "BLOCK_SIZE_K", "GROUP_SIZE_M", "num_warps", "num_stages")
FORMAT = "angel-launch-config/2"  # /2: GEMM1 tiles interleave gate and up rows (BLOCK_SIZE_N = weight rows)
_warned: set[str] = set()
_recorders: list[list[dict]] = []
_device_override: list[str] = []


class ConfigFileError(ValueError):
    """A config file that is not angel's (foreign keys, no format marker) or holds an invalid entry."""


def device_name(device=None) -> str:
    """The config-file spelling of the current CUDA device ("cpu" without CUDA), or of the override."""
    if _device_override:
        return _device_override[-1]
    import torch

    if not torch.cuda.is_available() or (device is not None and torch.device(device).type != "cuda"):
        return "cpu"
    return torch.cuda.get_device_name(device).replace(" ", "_")


@contextlib.contextmanager
def device_override(name: str) -> Iterator[str]:
    """Look configs up as if running on the device called `name` ("NVIDIA H20" or "NVIDIA_H20")."""
    spelled = name.strip().replace(" ", "_")
    _device_override.append(spelled)
    try:
        yield spelled
    finally:
        _device_override.pop()


@contextlib.contextmanager
def record_lookups() -> Iterator[list[dict]]:
    """Collect every config lookup made inside the block (see the module docstring for the fields)."""
    rec: list[dict] = []
    _recorders.append(rec)
    try:
        yield rec
    finally:
        _recorders.remove(rec)


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


def parse_config_file(path: Path) -> dict[int, dict]:
    """{M: config} of one file; ConfigFileError (one line, naming the file) if it is not angel's format."""
    try:
        raw = json.loads(path.read_text())
    except (OSError, ValueError) as err:
        raise ConfigFileError(f"{path}: not readable JSON ({err})") from None
    if not isinstance(raw, dict):
        raise ConfigFileError(f"{path}: expected a JSON object mapping token counts to configs")
    if raw.get("_format") != FORMAT:
        raise ConfigFileError(f"{path}: not an angel launch-config file (needs \"_format\": \"{FORMAT}\"; "
                              "vLLM's files look alike but tile GEMM1 differently)")
    foreign = [k for k in raw if not k.startswith("_") and not k.isdigit()]
    if foreign:
        raise ConfigFileError(f"{path}: unknown key {foreign[0]!r} (keys are token counts or _comments)")
    try:
        return {int(m): validate_config(c, f"{path.name}[{m}]") for m, c in raw.items() if not m.startswith("_")}
    except (ValueError, TypeError, AttributeError) as err:
        raise ConfigFileError(f"{path}: {err}") from None


@functools.lru_cache(maxsize=None)
def load_config_file(name: str) -> tuple[Path, dict[int, dict]] | None:
    """(path, {M: config}) from the first directory holding a valid `name`, or None. A rejected file
    is skipped with a one-line warning (once) and the next directory is tried."""
    for d in config_dirs():
        path = d / name
        if path.is_file():
            try:
                return path, parse_config_file(path)
            except ConfigFileError as err:
                _rejected[name] = str(err)
                _warn_once(f"rejected:{path}", f"ignoring kernel config {err}")
    return None


_rejected: dict[str, str] = {}


def validate_config(cfg: dict, where: str = "config") -> dict:
    """Check the six keys and power-of-two tiles; returns a plain dict of ints."""
    if not isinstance(cfg, dict):
        raise ValueError(f"{where}: expected an object with {', '.join(CONFIG_KEYS)}")
    missing = [k for k in CONFIG_KEYS if k not in cfg]
    if missing:
        raise ValueError(f"{where}: missing {', '.join(missing)}")
    extra = [k for k in cfg if k not in CONFIG_KEYS]
    if extra:
        raise ValueError(f"{where}: unknown key {extra[0]!r}")
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


def _warn_once(key: str, message: str | None = None) -> None:
    if key not in _warned:
        _warned.add(key)
        from angelcli.console import warn

        warn(message or f"no tuned kernel config {key}; using the rule-derived default (`angel tune` "
                        "measures one)")


def default_moe_config(m: int, num_experts: int, top_k: int, quant: str, inter: int = 1024,
                       hidden: int = 4096, device: str | None = None) -> dict:
    """The rule of derive_configs for a fused-MoE lookup that found no file."""
    from angelcli.ops.derive_configs import device_sms, moe_rule

    return moe_rule(m, num_experts, inter, hidden, top_k, quant, device_sms(device))


def default_gemm_config(m: int, quant: str, n: int = 4096, k: int = 4096, device: str | None = None) -> dict:
    """The rule of derive_configs for an fp8_gemm lookup that found no file."""
    from angelcli.ops.derive_configs import device_sms, gemm_rule

    return gemm_rule(m, n, k, device_sms(device))


def _lookup(kernel: str, key: dict, quant: str, m: int, name: str, dev: str):
    found = load_config_file(name)
    if found is None and dev not in ("cpu",):
        _warn_once(name)
    for rec in _recorders:
        rec.append({"kernel": kernel, "key": key, "quant": quant, "m": m, "device": dev, "hit": found is not None,
                    "file": name, "reason": None if found else ("rejected: " + _rejected[name]
                                                                if name in _rejected else "missing")})
    return found


def moe_config(m: int, num_experts: int, inter: int, top_k: int, quant: str, device=None,
               hidden: int = 4096) -> tuple[dict, str]:
    """(config, source) for fused_moe with M tokens; source is the file name or "default"."""
    dev = device_name(device)
    name = moe_config_name(num_experts, inter, dev, quant)
    found = _lookup("fused_moe", {"E": num_experts, "N": inter}, quant, m, name, dev)
    if found is not None:
        return dict(_nearest(found[1], m)), name
    return default_moe_config(m, num_experts, top_k, quant, inter, hidden, dev), "default"


def gemm_config(m: int, n: int, k: int, quant: str, device=None) -> tuple[dict, str]:
    """(config, source) for fp8_gemm with M rows."""
    dev = device_name(device)
    name = gemm_config_name(n, k, dev, quant)
    found = _lookup("fp8_gemm", {"N": n, "K": k}, quant, m, name, dev)
    if found is not None:
        return dict(_nearest(found[1], m)), name
    return default_gemm_config(m, quant, n, k, dev), "default"


def shipped_configs() -> list[tuple[str, dict[int, dict]]]:
    """Every config file shipped in angelcli/ops/configs, parsed and validated (for `angel kernels --check`)."""
    return [(path.name, parse_config_file(path)) for path in sorted(CONFIG_DIR.glob("*.json"))]


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
