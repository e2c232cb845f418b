"""Read an FP8 checkpoint back as high-precision tensors under the BF16 checkpoint's names.

`DequantReader(dir)` understands both output layouts angel writes (and the published ones they follow):
  native fp8            `X.weight` F8_E4M3 + `X.weight_scale_inv` F32 blocks (quantization_config
                        quant_method "fp8", weight_block_size [bn, bk])
  compressed-tensors    `X.weight` F8_E4M3 + `X.weight_scale` [1] | [N, 1] | blocks (+ `X.input_scale` [1])
`names` lists the tensors of the equivalent BF16 checkpoint; `get(name)` returns W ≈ W_fp8 * scale (fp32 math,
cast once), other tensors unchanged. Every scale is checked finite and positive when read: a NaN, inf, zero or
negative scale is refused (IntegrityError naming the tensor), never dequantised into garbage.

`load_dequantized_model(dir)` builds angel's BailingMoeForCausalLM from such a checkpoint (the quality report's
FP8 view; independent of the engine's own FP8 loader).
"""

from __future__ import annotations

from pathlib import Path

from angelcli.config import ModelConfig
from angelcli.errors import IntegrityError, UsageError
from angelcli.loader import CheckpointReader

SCALE_SUFFIXES = (".weight_scale_inv", ".weight_scale", ".input_scale")


class DequantReader:
    """Tensor access to an FP8 checkpoint directory in dequantised form."""

    def __init__(self, model_dir: str | Path):
        self.dir = Path(model_dir)
        self.cfg = ModelConfig.from_file(self.dir)
        qc = self.cfg.quantization_config
        if not qc:
            raise UsageError(f"{self.dir}: config.json has no quantization_config (not an FP8 checkpoint)")
        self.quant_config = qc
        self.method = qc.get("quant_method")
        if self.method == "fp8":
            self.block = tuple(qc.get("weight_block_size") or (128, 128))
            self.scheme = "block"
        elif self.method == "compressed-tensors":
            group = next(iter((qc.get("config_groups") or {}).values()), None)
            if not group or not group.get("weights"):
                raise IntegrityError(f"{self.dir}/config.json: compressed-tensors config without a weights scheme")
            w, a = group["weights"], group.get("input_activations") or {}
            if w.get("type") != "float" or w.get("num_bits") != 8:
                kind = f"{w.get('type')}{w.get('num_bits')}"
                raise UsageError(f"{self.dir}: compressed-tensors weights are {kind}, not FP8")
            self.block = tuple(w.get("block_structure") or (128, 128))
            strategy = w.get("strategy")
            static_in = bool(a) and not a.get("dynamic")
            self.scheme = {"block": "block", "channel": "dynamic",
                           "tensor": "static" if static_in else "dynamic"}.get(strategy, strategy)
            self.weight_strategy = strategy
        else:
            raise UsageError(f"{self.dir}: quant_method {self.method!r} is not FP8 (fp8 | compressed-tensors)")
        self.reader = CheckpointReader(self.dir)
        self.scale_of: dict[str, str] = {}
        self.input_scale_of: dict[str, str] = {}
        for name, info in self.reader.tensors.items():
            if info.dtype != "F8_E4M3":
                continue
            if not name.endswith(".weight"):
                raise IntegrityError(f"{self.dir}: FP8 tensor {name} is not a weight")
            base = name[: -len(".weight")]
            cand = f"{name}_scale_inv" if self.method == "fp8" else f"{base}.weight_scale"
            if cand not in self.reader.tensors:
                raise IntegrityError(f"{self.dir}: {name} is FP8 but its scale {cand} is missing")
            self.scale_of[name] = cand
            if f"{base}.input_scale" in self.reader.tensors:
                self.input_scale_of[name] = f"{base}.input_scale"
        scales = set(self.scale_of.values()) | set(self.input_scale_of.values())
        orphans = [n for n in self.reader.tensors if n.endswith(SCALE_SUFFIXES) and n not in scales]
        if orphans:
            raise IntegrityError(f"{self.dir}: scale tensor {orphans[0]} has no FP8 weight")
        self.names = [n for n in self.reader.tensors if n not in scales]

    @property
    def quantized(self) -> list[str]:
        return list(self.scale_of)

    def _checked_scale(self, name: str):
        s = self.reader.get(name).float()
        import torch

        if not bool(torch.isfinite(s).all()) or not bool((s > 0).all()):
            bad = s[~(torch.isfinite(s) & (s > 0))].flatten()[0].item()
            raise IntegrityError(f"{self.dir}: scale {name} holds {bad!r}; FP8 scales must be finite and positive")
        return s

    def get(self, name: str, dtype=None):
        """Tensor `name` of the equivalent high-precision checkpoint (dequantised when stored in FP8)."""
        import torch

        from angelcli.quant import fp8

        t = self.reader.get(name)
        if name not in self.scale_of:
            return t if dtype is None or name.endswith("expert_bias") else t.to(dtype)
        s = self._checked_scale(self.scale_of[name])
        try:
            return fp8.dequantize(t, s, block=self.block, dtype=dtype or torch.bfloat16)
        except ValueError as err:
            raise IntegrityError(f"{self.dir}: {name}: {err}") from None

    def raw(self, name: str):
        """(fp8 weight, scale) as stored."""
        return self.reader.get(name), self._checked_scale(self.scale_of[name])

    def input_scale(self, name: str):
        """Static input scale [1] of quantised weight `name` (None for dynamic activations)."""
        sname = self.input_scale_of.get(name)
        return None if sname is None else self._checked_scale(sname)

    def check_scales(self) -> int:
        """Read and check every scale tensor; returns how many were checked."""
        for n in list(self.scale_of.values()) + list(self.input_scale_of.values()):
            self._checked_scale(n)
        return len(self.scale_of) + len(self.input_scale_of)


def load_dequantized_model(model_dir: str | Path, dtype=None, device: str = "cpu"):
    """BailingMoeForCausalLM with every FP8 weight dequantised into `dtype` (default float32).
    Returns (model, cfg, reader)."""
    import torch
    from torch import nn

    from angelcli.model.bailing import (BailingMoeForCausalLM, expected_checkpoint_names, expected_shape,
                                        map_checkpoint_name)
    from angelcli.model.layers import Rotary

    dtype = dtype or torch.float32
    reader = DequantReader(model_dir)
    cfg = reader.cfg
    expected = expected_checkpoint_names(cfg)
    have = set(reader.names)
    missing = [n for n in expected if n not in have]
    if missing:
        raise IntegrityError(f"{model_dir}: checkpoint is missing {missing[0]} ({len(missing)} missing)")
    extra = sorted(have - set(expected))
    if extra:
        raise IntegrityError(f"{model_dir}: unexpected tensor {extra[0]}")
    with torch.device("meta"):
        model = BailingMoeForCausalLM(cfg)
    params = dict(model.named_parameters())
    filled: dict[str, torch.Tensor] = {}
    for name in expected:
        want = expected_shape(cfg, name)
        if tuple(reader.reader.tensors[name].shape) != want:
            got = list(reader.reader.tensors[name].shape)
            raise IntegrityError(f"{model_dir}: {name} has shape {got}, expected {list(want)}")
        pname, expert, part = map_checkpoint_name(name)
        t = reader.get(name, dtype=dtype)
        tdtype = torch.float32 if pname.endswith("expert_bias") else dtype
        if expert is None:
            filled[pname] = t.to(device=device, dtype=tdtype)
            continue
        if pname not in filled:
            filled[pname] = torch.empty(params[pname].shape, dtype=dtype, device=device)
        dest = filled[pname][expert]
        if part is not None:
            rows = dest.shape[0] // 2
            dest = dest[part * rows : (part + 1) * rows]
        dest.copy_(t)
    for pname, tensor in filled.items():
        mod_name, _, attr = pname.rpartition(".")
        model.get_submodule(mod_name)._parameters[attr] = nn.Parameter(tensor, requires_grad=False)
    model.rotary = Rotary(cfg).to(device)
    model.eval()
    return model, cfg, reader
