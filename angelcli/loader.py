"""Generic checkpoint loader: sharded or single-file safetensors -> BailingMoeForCausalLM.

The loader knows nothing about the architecture beyond what the model module declares: the expected tensor
names and shapes (`expected_checkpoint_names`, `expected_shape`) and the name table that routes per-expert
tensors into stacked parameters (`map_checkpoint_name`). It

  1. reads config.json and the shard list (model.safetensors.index.json, else model.safetensors, else every
     *.safetensors file), and parses each shard's header, checking that the file really holds all the bytes
     the header promises: a truncated or corrupt shard fails here, naming the file, before any weight is read;
  2. compares the tensor inventory with the architecture: missing, unexpected, wrong-shape, wrong-dtype;
  3. builds the model on the meta device (no random init, a 103B model costs nothing here) and fills every
     parameter from memory-mapped shards, tensor by tensor, directly in the target dtype and device.
"""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass, field
from pathlib import Path

from angelcli.config import ModelConfig
from angelcli.errors import IntegrityError, UsageError

INDEX_NAME = "model.safetensors.index.json"
SINGLE_NAME = "model.safetensors"
ST_DTYPE_BYTES = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2, "I64": 8, "I32": 4, "I16": 2, "I8": 1, "U8": 1,
                  "BOOL": 1, "F8_E4M3": 1, "F8_E5M2": 1}
WEIGHT_DTYPES = {"BF16", "F16", "F32"}


@dataclass
class TensorInfo:
    file: Path
    dtype: str  # safetensors dtype string: "BF16", "F32", "F8_E4M3", ...
    shape: tuple[int, ...]


def read_safetensors_header(path: Path) -> dict[str, TensorInfo]:
    """Parse one shard's header and check the file is complete; raises IntegrityError naming the file."""
    try:
        size = path.stat().st_size
        with open(path, "rb") as fh:
            head = fh.read(8)
            if len(head) < 8:
                raise IntegrityError(f"{path}: truncated safetensors file ({size} bytes, no header)")
            (n,) = struct.unpack("<Q", head)
            if n > size - 8 or n > 100_000_000:
                raise IntegrityError(f"{path}: corrupt or truncated safetensors header (claims {n} bytes, file has {size})")
            meta = json.loads(fh.read(n))
    except OSError as err:
        raise UsageError(f"{path}: cannot read ({err.strerror})") from None
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise IntegrityError(f"{path}: corrupt safetensors header (not JSON)") from None
    data_len = size - 8 - n
    out: dict[str, TensorInfo] = {}
    for name, info in meta.items():
        if name == "__metadata__":
            continue
        try:
            dtype, shape, (start, end) = info["dtype"], tuple(info["shape"]), info["data_offsets"]
        except (KeyError, TypeError, ValueError):
            raise IntegrityError(f"{path}: corrupt header entry for {name}") from None
        if end > data_len:
            raise IntegrityError(f"{path}: truncated: tensor {name} ends at byte {end} of the data section, "
                                 f"file holds only {data_len} (re-download this shard)")
        numel = 1
        for d in shape:
            numel *= d
        if dtype in ST_DTYPE_BYTES and end - start != numel * ST_DTYPE_BYTES[dtype]:
            raise IntegrityError(f"{path}: corrupt header: {name} has {end - start} bytes for shape {list(shape)} {dtype}")
        out[name] = TensorInfo(path, dtype, shape)
    return out


class CheckpointReader:
    """Tensor-level access to a checkpoint directory: names, dtypes, shapes, and memory-mapped reads."""

    def __init__(self, model_dir: str | Path):
        self.dir = Path(model_dir)
        if not self.dir.exists():
            raise UsageError(f"{self.dir}: no such model directory")
        if not self.dir.is_dir():
            raise UsageError(f"{self.dir}: not a directory (MODEL is a directory with config.json and *.safetensors)")
        self.files = self._shard_files()
        self.tensors: dict[str, TensorInfo] = {}
        for f in self.files:
            for name, info in read_safetensors_header(f).items():
                if name in self.tensors:
                    raise IntegrityError(f"{f}: tensor {name} also appears in {self.tensors[name].file.name}")
                self.tensors[name] = info
        if self._weight_map:
            for name, fname in self._weight_map.items():
                if name not in self.tensors or self.tensors[name].file.name != fname:
                    raise IntegrityError(f"{self.dir / INDEX_NAME}: lists {name} in {fname}, but that shard does not hold it")
        self._handles: dict[Path, object] = {}

    def _shard_files(self) -> list[Path]:
        index = self.dir / INDEX_NAME
        self._weight_map: dict[str, str] = {}
        if index.exists():
            try:
                wm = json.loads(index.read_text())["weight_map"]
                assert isinstance(wm, dict)
            except (json.JSONDecodeError, KeyError, AssertionError, UnicodeDecodeError):
                raise IntegrityError(f"{index}: not a valid safetensors index (needs a 'weight_map' object)") from None
            self._weight_map = wm
            files = []
            for fname in dict.fromkeys(wm.values()):
                p = self.dir / fname
                if not p.exists():
                    raise IntegrityError(f"{p}: shard listed in {INDEX_NAME} is missing")
                files.append(p)
            return files
        if (self.dir / SINGLE_NAME).exists():
            return [self.dir / SINGLE_NAME]
        files = sorted(self.dir.glob("*.safetensors"))
        if not files:
            raise UsageError(f"{self.dir}: no *.safetensors weights found")
        return files

    def get(self, name: str):
        """Read one tensor (memory-mapped file, only this tensor's bytes are touched)."""
        from safetensors import SafetensorError, safe_open

        info = self.tensors[name]
        try:
            if info.file not in self._handles:
                self._handles[info.file] = safe_open(str(info.file), framework="pt")
            return self._handles[info.file].get_tensor(name)
        except SafetensorError as err:
            raise IntegrityError(f"{info.file}: cannot read {name} ({err})") from None


@dataclass
class LoadReport:
    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    wrong_shape: list[tuple[str, tuple, tuple]] = field(default_factory=list)  # (name, got, want)
    wrong_dtype: list[tuple[str, str, str]] = field(default_factory=list)  # (name, got, allowed)

    @property
    def ok(self) -> bool:
        return not (self.missing or self.unexpected or self.wrong_shape or self.wrong_dtype)

    def to_dict(self) -> dict:
        return {"missing": self.missing, "unexpected": self.unexpected,
                "wrong_shape": [[n, list(g), list(w)] for n, g, w in self.wrong_shape],
                "wrong_dtype": [list(x) for x in self.wrong_dtype]}

    def summary(self) -> str:
        parts = []
        for label, items in (("missing", self.missing), ("unexpected", self.unexpected)):
            if items:
                parts.append(f"{len(items)} {label} (first: {items[0]})")
        if self.wrong_shape:
            n, g, w = self.wrong_shape[0]
            parts.append(f"{len(self.wrong_shape)} wrong shape (first: {n} is {list(g)}, expected {list(w)})")
        if self.wrong_dtype:
            n, g, w = self.wrong_dtype[0]
            parts.append(f"{len(self.wrong_dtype)} wrong dtype (first: {n} is {g}, expected {w})")
        return "; ".join(parts) or "ok"


FP8_ST = "F8_E4M3"
SCALE_DTYPES = {"F32", "BF16", "F16"}


@dataclass
class Fp8Weight:
    """One FP8 weight of a quantised checkpoint and its companions (checkpoint names)."""

    weight: str
    scale: str
    input_scale: str | None  # static activation scale, when the checkpoint has one


def fp8_weights(cfg: ModelConfig, reader: CheckpointReader) -> dict[str, Fp8Weight]:
    """The checkpoint's FP8 weights (stored as F8_E4M3) with the names of their companion tensors."""
    from angelcli.model.bailing import expected_checkpoint_names
    from angelcli.model.fp8 import parse_quant_config

    scheme = parse_quant_config(cfg.quantization_config)
    out: dict[str, Fp8Weight] = {}
    if scheme is None:
        return out
    for name in expected_checkpoint_names(cfg):
        info = reader.tensors.get(name)
        if info is None or info.dtype != FP8_ST:
            continue
        base = name[: -len("weight")]
        inp = base + "input_scale"
        out[name] = Fp8Weight(name, base + scheme.scale_suffix, inp if inp in reader.tensors else None)
    return out


def check_inventory(cfg: ModelConfig, reader: CheckpointReader) -> LoadReport:
    """Compare the checkpoint's tensors with what the architecture needs (headers only, no weights read).

    Quantised checkpoints: a weight may be F8_E4M3 (unless the model keeps it in high precision: router,
    embeddings, head, norms) and then needs its scale tensor, whose shape must be one of the FP8 layouts.
    """
    from angelcli.model.bailing import expected_checkpoint_names, expected_shape, is_fp32_tensor, keeps_high_precision
    from angelcli.model.fp8 import cdiv, scale_layout

    report = LoadReport()
    expected = expected_checkpoint_names(cfg)
    have = reader.tensors
    fp8 = fp8_weights(cfg, reader)
    companions = {}
    for w in fp8.values():
        companions[w.scale] = w.weight
        if w.input_scale:
            companions[w.input_scale] = w.weight
    exp_set = set(expected) | set(companions)
    report.missing = [n for n in [*expected, *companions] if n not in have]
    report.unexpected = [n for n in have if n not in exp_set]
    for n in expected:
        if n not in have:
            continue
        info = have[n]
        want = expected_shape(cfg, n)
        if info.shape != want:
            report.wrong_shape.append((n, info.shape, want))
        if is_fp32_tensor(n):
            allowed = {"F32"}
        elif n in fp8 and not keeps_high_precision(n):
            allowed = {FP8_ST}
        else:
            allowed = WEIGHT_DTYPES
        if info.dtype not in allowed:
            report.wrong_dtype.append((n, info.dtype, "/".join(sorted(allowed))))
    for n, wname in companions.items():
        if n not in have:
            continue
        info, wshape = have[n], have[wname].shape
        if info.dtype not in SCALE_DTYPES:
            report.wrong_dtype.append((n, info.dtype, "/".join(sorted(SCALE_DTYPES))))
        if n.endswith("input_scale"):
            if info.shape not in ((), (1,)):
                report.wrong_shape.append((n, info.shape, (1,)))
            continue
        try:
            scale_layout(wshape, info.shape)
        except ValueError:
            report.wrong_shape.append((n, info.shape, (cdiv(wshape[0], 128), cdiv(wshape[1], 128))))
    return report


def load_model(model_dir: str | Path, *, dtype=None, device="cpu", strict: bool = True, progress: bool = False,
               tp=None):
    """Build BailingMoeForCausalLM from a checkpoint directory. Returns (model, cfg, report).

    dtype: torch dtype for the high-precision weights (default: config torch_dtype); expert_bias stays fp32,
    FP8 weights stay float8_e4m3fn and their scales fp32 (angelcli/model/fp8.py).
    strict: raise IntegrityError (exit 3) when the inventory does not match the architecture.
    tp: a TensorParallel (angelcli/model/parallel.py): build and read only this rank's slice.
    """
    import torch
    from torch import nn

    from angelcli.model.bailing import BailingMoeForCausalLM, map_checkpoint_name
    from angelcli.model.fp8 import FP8_DTYPE, normalise_scale, parse_quant_config, scale_layout
    from angelcli.model.layers import Rotary
    from angelcli.model.parallel import check_tp, shard_scale, shard_weight

    model_dir = Path(model_dir)
    cfg = ModelConfig.from_file(model_dir)
    parse_quant_config(cfg.quantization_config, str(model_dir / "config.json"))  # refuse unsupported schemes early
    reader = CheckpointReader(model_dir)
    report = check_inventory(cfg, reader)
    if strict and not report.ok:
        raise IntegrityError(f"{model_dir}: checkpoint does not match config.json: {report.summary()}")
    if dtype is None:
        dtype = getattr(torch, str(cfg.torch_dtype).replace("torch.", ""), torch.bfloat16)
    device = torch.device(device)
    fp8 = fp8_weights(cfg, reader)
    tp = tp if tp is not None and tp.world > 1 else None
    if tp is not None:
        block = any(scale_layout(reader.tensors[w.weight].shape, reader.tensors[w.scale].shape) == "block"
                    for w in fp8.values() if w.scale in reader.tensors)
        problems = check_tp(cfg, tp.world, block_fp8=block)
        if problems:
            raise UsageError(f"--tp {tp.world}: {problems[0]}")

    owner = {}  # companion tensor -> the FP8 weight it belongs to
    for w in fp8.values():
        owner[w.scale] = w.weight
        if w.input_scale:
            owner[w.input_scale] = w.weight

    def local(name: str, t):
        """A checkpoint tensor as this rank stores it: sliced for tensor parallelism, scales normalised."""
        if name in owner:
            if name.endswith("input_scale"):
                return t.reshape(1).float()
            wname = owner[name]
            wshape = reader.tensors[wname].shape
            sliced = shard_scale(cfg, tp, wname, wshape, scale_layout(wshape, t.shape), t)
            lshape = shard_weight(cfg, tp, wname, torch.empty(wshape, device="meta")).shape
            return normalise_scale(lshape, sliced)
        return shard_weight(cfg, tp, name, t) if name.endswith(".weight") else t

    def meta(name: str):
        return local(name, torch.empty(reader.tensors[name].shape, device="meta"))

    with torch.device("meta"):
        model = BailingMoeForCausalLM(cfg, tp)
        _swap_fp8(model, fp8, meta)
    params = dict(model.named_parameters())
    filled: dict[str, torch.Tensor] = {}
    keep = ("expert_bias", "_scale")  # fp32 whatever `dtype` says (expert_bias, weight/input scales)

    def target_dtype(pname: str):
        p = params[pname]
        return p.dtype if p.dtype == FP8_DTYPE or pname.endswith(keep) else dtype

    names = [n for n in reader.tensors if n not in report.unexpected]
    from angelcli.console import progress as progress_bar

    with progress_bar("loading", total=len(names), unit="tensors") if progress else _nullbar() as bar:
        for name in names:
            pname, expert, part = map_checkpoint_name(name)
            if pname not in params:
                continue
            t = local(name, reader.get(name))
            if expert is None:
                if tuple(t.shape) != tuple(params[pname].shape):
                    raise IntegrityError(f"{model_dir}: {name} loads as {list(t.shape)}, the model needs "
                                         f"{list(params[pname].shape)} for {pname}")
                filled[pname] = t.to(device=device, dtype=target_dtype(pname))
            else:
                if pname not in filled:
                    filled[pname] = torch.empty(params[pname].shape, dtype=target_dtype(pname), device=device)
                dest = filled[pname][expert]
                if part is not None:
                    rows = dest.shape[0] // 2
                    dest = dest[part * rows : (part + 1) * rows]
                dest.copy_(t.reshape(dest.shape))
            bar.advance(1)

    for pname, tensor in filled.items():
        mod_name, _, attr = pname.rpartition(".")
        module = model.get_submodule(mod_name)
        module._parameters[attr] = nn.Parameter(tensor, requires_grad=False)
    left = [n for n, p in model.named_parameters() if p.is_meta]
    if left:
        raise IntegrityError(f"{model_dir}: parameters not filled from the checkpoint: {left[:3]}")
    model.rotary = Rotary(cfg).to(device)
    model.eval()
    return model, cfg, report


def _swap_fp8(model, fp8: dict[str, Fp8Weight], meta) -> None:
    """Turn the modules whose checkpoint weights are FP8 into FP8 modules (model on the meta device).

    meta(name) gives a checkpoint tensor's local, normalised shape without reading it. Stacked experts of
    one layer must be all FP8 with one scale layout (the kernels take one layout per layer).
    """
    import re

    from angelcli.model.fp8 import swap_to_fp8

    dense, experts = {}, {}
    for w in fp8.values():
        m = re.fullmatch(r"model\.layers\.(\d+)\.mlp\.experts\.(\d+)\.(gate|up|down)_proj\.weight", w.weight)
        if m:
            experts.setdefault(int(m[1]), {})[(int(m[2]), m[3])] = w
        else:
            dense[w.weight[: -len(".weight")]] = (tuple(meta(w.scale).shape), w.input_scale is not None)
    swap_to_fp8(model, dense)
    for layer, ws in experts.items():
        mod = model.model.layers[layer].mlp.experts
        E = mod.w13.shape[0]
        where = f"model.layers.{layer}.mlp.experts"
        if len(ws) != 3 * E:
            raise IntegrityError(f"{where}: {len(ws)} of {3 * E} expert weights are FP8; a layer's experts must "
                                 "be quantised all together")
        gate, up, down = (tuple(meta(ws[(0, p)].scale).shape) for p in ("gate", "up", "down"))
        for (e, p), w in ws.items():
            if tuple(meta(w.scale).shape) != {"gate": gate, "up": up, "down": down}[p]:
                raise IntegrityError(f"{w.scale}: scale layout differs from expert 0's; a layer's experts "
                                     "must share one FP8 scale layout")
        w13_scale = (gate[0] + up[0], *gate[1:])  # gate rows / blocks, then up
        static = any(w.input_scale for w in ws.values())
        mod.to_fp8(w13_scale, down, static)


class _nullbar:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False

    def advance(self, n=1, note=None):
        pass
