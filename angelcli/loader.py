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


def check_inventory(cfg: ModelConfig, reader: CheckpointReader) -> LoadReport:
    """Compare the checkpoint's tensors with what the architecture needs (headers only, no weights read)."""
    from angelcli.model.bailing import expected_checkpoint_names, expected_shape, is_fp32_tensor

    report = LoadReport()
    expected = expected_checkpoint_names(cfg)
    have = reader.tensors
    exp_set = set(expected)
    report.missing = [n for n in expected if n not in have]
    report.unexpected = [n for n in have if n not in exp_set]
    for n in expected:
        if n not in have:
            continue
        info = have[n]
        want = expected_shape(cfg, n)
        if info.shape != want:
            report.wrong_shape.append((n, info.shape, want))
        allowed = {"F32"} if is_fp32_tensor(n) else WEIGHT_DTYPES
        if info.dtype not in allowed:
            report.wrong_dtype.append((n, info.dtype, "/".join(sorted(allowed))))
    return report


def load_model(model_dir: str | Path, *, dtype=None, device="cpu", strict: bool = True, progress: bool = False):
    """Build BailingMoeForCausalLM from a checkpoint directory. Returns (model, cfg, report).

    dtype: torch dtype for the weights (default: config torch_dtype); expert_bias always stays fp32.
    strict: raise IntegrityError (exit 3) when the inventory does not match the architecture.
    """
    import torch
    from torch import nn

    from angelcli.model.bailing import BailingMoeForCausalLM, map_checkpoint_name
    from angelcli.model.layers import Rotary

    model_dir = Path(model_dir)
    cfg = ModelConfig.from_file(model_dir)
    if cfg.quantization_config:
        raise UsageError(f"{model_dir}: quantized checkpoint ({cfg.quantization_config.get('quant_method')}); "
                         "the torch backend loads BF16/FP16/FP32 checkpoints")
    reader = CheckpointReader(model_dir)
    report = check_inventory(cfg, reader)
    if strict and not report.ok:
        raise IntegrityError(f"{model_dir}: checkpoint does not match config.json: {report.summary()}")
    if dtype is None:
        dtype = getattr(torch, str(cfg.torch_dtype).replace("torch.", ""), torch.bfloat16)
    device = torch.device(device)

    with torch.device("meta"):
        model = BailingMoeForCausalLM(cfg)
    params = dict(model.named_parameters())
    filled: dict[str, torch.Tensor] = {}

    def target_dtype(pname: str):
        return torch.float32 if pname.endswith("expert_bias") else dtype

    names = [n for n in reader.tensors if n not in report.unexpected]
    from angelcli.console import progress as progress_bar

    with progress_bar("loading", total=len(names), unit="tensors") if progress else _nullbar() as bar:
        for name in names:
            pname, expert, part = map_checkpoint_name(name)
            if pname not in params:
                continue
            t = reader.get(name)
            if expert is None:
                filled[pname] = t.to(device=device, dtype=target_dtype(pname))
            else:
                if pname not in filled:
                    filled[pname] = torch.empty(params[pname].shape, dtype=dtype, device=device)
                dest = filled[pname][expert]
                if part is not None:
                    rows = dest.shape[0] // 2
                    dest = dest[part * rows : (part + 1) * rows]
                dest.copy_(t)
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


class _nullbar:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False

    def advance(self, n=1, note=None):
        pass
