"""FP8 weights at runtime: the two checkpoint formats, scale layouts, and the torch-backend reference math.

Formats angel loads (shared/spec/fp8.md §1.7, §2.1; bailing-moe-v2.md §6):

  native "fp8" (DeepSeek-style, what inclusionAI's converter writes)
      quantization_config {quant_method: fp8, fmt: e4m3, activation_scheme: dynamic, weight_block_size: [128,128]}
      X.weight  float8_e4m3fn [N, K]   +   X.weight_scale_inv  fp32 [ceil(N/128), ceil(K/128)]
  compressed-tensors "float-quantized" (what llm-compressor / `angel quantize` writes)
      quantization_config {quant_method: compressed-tensors, format: float-quantized, config_groups: ...}
      X.weight  float8_e4m3fn [N, K]   +   X.weight_scale  bf16  [N, 1] (channel) | [1] (tensor) | block
      (+ X.input_scale [1] for static activations)

Both scales are *multipliers* despite the "_inv": W ~= W_fp8 * scale, broadcast over a 128x128 tile
(block), a row (channel) or the whole matrix (tensor). In memory angel keeps one normalised layout per
weight, fp32: block [ceil(N/128), ceil(K/128)] or per-channel [N] (a per-tensor scale is expanded to
per-channel, which is exact). Those are the two layouts the Triton kernels take (angelcli/ops).

Activations are quantised dynamically, per token and per 128 input channels, in both backends:
    s[m, g] = max(amax(x[m, 128g : 128g + 128]), 1e-10) / 448,   xq = clamp(x / s, +-448) -> e4m3
This is the scheme native checkpoints declare (activation_scheme dynamic) and the one the kernels run. For
compressed-tensors checkpoints with *static* per-tensor input scales the finer dynamic grouping is used as
well (it is at least as accurate); the static scales are loaded, checked and kept, not applied.
The torch backend dequantises on the fly: y = dequant(xq) @ dequant(W)^T in fp32, then cast to x.dtype,
which is exactly what the kernels compute up to fp32 summation order.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from angelcli.errors import UsageError

FP8_MAX = 448.0  # largest finite float8_e4m3fn
GROUP = 128  # activation group and weight block edge
SCALE_EPS = 1e-10  # amax floor, so an all-zero group gets a finite scale
FP8_DTYPE = torch.float8_e4m3fn
SCALE_SUFFIXES = ("weight_scale_inv", "weight_scale")


def cdiv(a: int, b: int) -> int:
    return -(-int(a) // int(b))


# ------------------------------------------------------------------------------------------ config


@dataclass(frozen=True)
class QuantScheme:
    """What a checkpoint's quantization_config promises (the tensors themselves are checked by the loader)."""

    method: str  # "fp8" (native block) | "compressed-tensors"
    scale_suffix: str  # companion of X.weight: "weight_scale_inv" | "weight_scale"
    weight_strategy: str  # "block" | "channel" | "tensor" | "mixed" (compressed-tensors groups may differ)
    static_input: bool  # compressed-tensors static activation scales (X.input_scale tensors)

    def describe(self) -> str:
        act = "static input scales (applied dynamically)" if self.static_input else "dynamic activations"
        return f"{self.method} fp8 e4m3, {self.weight_strategy} weight scales, {act}"


def parse_quant_config(qc: dict | None, where: str = "config.json") -> QuantScheme | None:
    """quantization_config -> QuantScheme, or None for an unquantised checkpoint. UsageError names the field."""
    if not qc:
        return None
    if not isinstance(qc, dict):
        raise UsageError(f"{where}: 'quantization_config' must be an object")
    method = qc.get("quant_method")
    if method == "fp8":
        fmt = qc.get("fmt", "e4m3")
        if fmt != "e4m3":
            raise UsageError(f"{where}: quantization_config.fmt is {fmt!r}; angel runs e4m3 FP8 only")
        block = qc.get("weight_block_size")
        if block is None:
            raise UsageError(f"{where}: quantization_config has no weight_block_size; angel loads block FP8 "
                             "([128, 128]) in the native 'fp8' format")
        if list(block) != [GROUP, GROUP]:
            raise UsageError(f"{where}: quantization_config.weight_block_size is {block}; only [128, 128] is supported")
        if qc.get("activation_scheme", "dynamic") != "dynamic":
            raise UsageError(f"{where}: quantization_config.activation_scheme must be 'dynamic' with block scales")
        return QuantScheme("fp8", "weight_scale_inv", "block", False)
    if method == "compressed-tensors":
        fmt = qc.get("format")
        groups = qc.get("config_groups") or {}
        if not isinstance(groups, dict) or not groups:
            raise UsageError(f"{where}: quantization_config.config_groups is missing or empty")
        strategies, static = set(), False
        for gname, group in groups.items():
            gfmt = group.get("format") or fmt
            if gfmt not in ("float-quantized", "naive-quantized", None):
                raise UsageError(f"{where}: quantization_config format {gfmt!r} (group {gname}); angel loads "
                                 "'float-quantized' FP8")
            w = group.get("weights") or {}
            if w.get("num_bits") != 8 or w.get("type") != "float":
                raise UsageError(f"{where}: config_groups.{gname}.weights is not 8-bit float (num_bits "
                                 f"{w.get('num_bits')}, type {w.get('type')}); angel loads FP8 e4m3 only")
            if w.get("symmetric") is False:
                raise UsageError(f"{where}: config_groups.{gname}.weights is asymmetric; FP8 weights are symmetric")
            strat = w.get("strategy", "tensor")
            if strat not in ("tensor", "channel", "block"):
                raise UsageError(f"{where}: config_groups.{gname}.weights.strategy {strat!r} is not supported "
                                 "(tensor, channel or block)")
            if strat == "block" and list(w.get("block_structure") or []) != [GROUP, GROUP]:
                raise UsageError(f"{where}: config_groups.{gname}.weights.block_structure must be [128, 128]")
            strategies.add(strat)
            act = group.get("input_activations")
            if act:
                if act.get("num_bits") != 8 or act.get("type") != "float":
                    raise UsageError(f"{where}: config_groups.{gname}.input_activations is not 8-bit float")
                static = static or not act.get("dynamic", False)
        if qc.get("quantization_status", "compressed") not in ("compressed", "frozen"):
            raise UsageError(f"{where}: quantization_status {qc.get('quantization_status')!r}; angel loads "
                             "compressed checkpoints")
        strategy = strategies.pop() if len(strategies) == 1 else "mixed"
        return QuantScheme("compressed-tensors", "weight_scale", strategy, static)
    raise UsageError(f"{where}: quantization_config.quant_method {method!r} is not supported "
                     "(angel loads 'fp8' and 'compressed-tensors' FP8)")


# ------------------------------------------------------------------------------------- scale layouts


def scale_layout(weight_shape, scale_shape) -> str:
    """'block' | 'channel' | 'tensor' for a weight [N, K] and a checkpoint scale; ValueError otherwise.

    block [ceil(N/128), ceil(K/128)]; channel [N, 1] or [N]; tensor [1], [1, 1] or [] (scalar).
    A [1, 1] scale of a weight with N, K <= 128 is both block and tensor: the same numbers either way.
    """
    n, k = int(weight_shape[-2]), int(weight_shape[-1])
    ss = tuple(int(v) for v in scale_shape)
    if ss == (cdiv(n, GROUP), cdiv(k, GROUP)):
        return "block"
    if ss in ((n, 1), (n,)):
        return "channel"
    if ss in ((), (1,), (1, 1)):
        return "tensor"
    raise ValueError(f"scale shape {list(ss)} fits no FP8 layout of weight {[n, k]} (block "
                     f"{[cdiv(n, GROUP), cdiv(k, GROUP)]}, channel {[n, 1]} or tensor [1])")


def normalised_scale_shape(weight_shape, scale_shape) -> tuple[int, ...]:
    """The in-memory layout: block scales as they are, channel and tensor scales as per-channel [N]."""
    if scale_layout(weight_shape, scale_shape) == "block":
        return tuple(int(v) for v in scale_shape)
    return (int(weight_shape[-2]),)


def normalise_scale(weight_shape, scale: torch.Tensor) -> torch.Tensor:
    """Checkpoint scale -> fp32 in the in-memory layout (see normalised_scale_shape)."""
    layout = scale_layout(weight_shape, scale.shape)
    s = scale.float()
    if layout == "block":
        return s.contiguous()
    if layout == "channel":
        return s.reshape(-1).contiguous()
    return s.reshape(1).expand(int(weight_shape[-2])).contiguous()  # per-tensor -> per-channel, exact


# ------------------------------------------------------------------------------------ quantise / dequantise


def dequantize_weight(w: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """FP8 weight [N, K] + in-memory scale (block [gN, gK] or channel [N]) -> fp32 [N, K]."""
    n, k = w.shape
    s = scale.float()
    if s.dim() == 2:
        s = s.repeat_interleave(GROUP, dim=0)[:n].repeat_interleave(GROUP, dim=1)[:, :k]
        return w.float() * s
    return w.float() * s[:, None]


def quantize_act(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Dynamic per-token, per-128-channel FP8: x [M, K] -> (xq [M, K] fp8, scale [M, ceil(K/128)] fp32)."""
    m, k = x.shape
    g = cdiv(k, GROUP)
    xf = F.pad(x.float(), (0, g * GROUP - k)).view(m, g, GROUP)
    amax = xf.abs().amax(dim=-1).clamp(min=SCALE_EPS)
    # A tensor divisor: on CUDA torch multiplies by the reciprocal of a Python-float divisor (not correctly
    # rounded), which would put this twin one ulp off the kernels' IEEE division (ops/reference.py).
    scale = amax / torch.full_like(amax, FP8_MAX)  # [M, G]
    xq = (xf / scale[..., None]).clamp(-FP8_MAX, FP8_MAX).to(FP8_DTYPE)
    return xq.view(m, g * GROUP)[:, :k], scale


def fake_quant_act(x: torch.Tensor) -> torch.Tensor:
    """x [M, K] -> fp32 [M, K] as the FP8 GEMMs see it (quantised then dequantised)."""
    xq, s = quantize_act(x)
    return xq.float() * s.repeat_interleave(GROUP, dim=-1)[:, : x.shape[1]]


def fp8_linear(x: torch.Tensor, w: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """Reference FP8 linear: x [..., K] (any float dtype), w [N, K] fp8, scale in-memory layout -> [..., N]
    in x.dtype. fp32 math: dequant(quant(x)) @ dequant(w)^T, one rounding at the end (as the kernels)."""
    lead = x.shape[:-1]
    a = fake_quant_act(x.reshape(-1, x.shape[-1]))
    y = a @ dequantize_weight(w, scale).T
    return y.to(x.dtype).reshape(*lead, w.shape[0])


def quantize_weight(w: torch.Tensor, layout: str, scale_dtype=torch.float32) -> tuple[torch.Tensor, torch.Tensor]:
    """Quantise a weight [N, K] for fixtures and tests: -> (fp8 [N, K], checkpoint-layout scale).

    layout 'block' -> scale [ceil(N/128), ceil(K/128)]; 'channel' -> [N, 1]; 'tensor' -> [1].
    scale = amax / 448 over the tile / row / matrix (floored at 1e-12), rounded to `scale_dtype` first so
    the stored scale is exactly the one used (compressed-tensors stores bf16 scales)."""
    n, k = w.shape
    wf = w.float()
    if layout == "block":
        gn, gk = cdiv(n, GROUP), cdiv(k, GROUP)
        padded = F.pad(wf, (0, gk * GROUP - k, 0, gn * GROUP - n)).view(gn, GROUP, gk, GROUP)
        scale = (padded.abs().amax(dim=(1, 3)) / FP8_MAX).clamp(min=1e-12).to(scale_dtype)  # [gN, gK]
        full = scale.float().repeat_interleave(GROUP, 0)[:n].repeat_interleave(GROUP, 1)[:, :k]
    elif layout == "channel":
        scale = (wf.abs().amax(dim=1, keepdim=True) / FP8_MAX).clamp(min=1e-12).to(scale_dtype)  # [N, 1]
        full = scale.float()
    elif layout == "tensor":
        scale = (wf.abs().amax().reshape(1) / FP8_MAX).clamp(min=1e-12).to(scale_dtype)  # [1]
        full = scale.float()
    else:
        raise ValueError(f"unknown FP8 layout {layout!r}")
    q = (wf / full).clamp(-FP8_MAX, FP8_MAX).to(FP8_DTYPE)
    return q.contiguous(), scale.contiguous()


# ------------------------------------------------------------------------------------------ modules


class Fp8Linear(nn.Module):
    """A bias-free linear layer whose weight stays FP8 in memory: weight [N, K] fp8, weight_scale fp32
    (block [ceil(N/128), ceil(K/128)] or per-channel [N]), optional static input_scale [1] (kept, unused)."""

    def __init__(self, in_features: int, out_features: int, scale_shape: tuple[int, ...], static_input: bool = False):
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        self.weight = nn.Parameter(torch.empty(out_features, in_features, dtype=FP8_DTYPE), requires_grad=False)
        self.weight_scale = nn.Parameter(torch.empty(scale_shape, dtype=torch.float32), requires_grad=False)
        self.input_scale = (nn.Parameter(torch.empty(1, dtype=torch.float32), requires_grad=False)
                            if static_input else None)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return fp8_linear(x, self.weight, self.weight_scale)

    def extra_repr(self) -> str:
        kind = "block" if self.weight_scale.dim() == 2 else "channel"
        return f"in={self.in_features}, out={self.out_features}, fp8 e4m3, {kind} scales"


def swap_to_fp8(model: nn.Module, layers: dict[str, tuple[tuple[int, ...], bool]]) -> None:
    """Replace nn.Linear modules by Fp8Linear before loading (model on the meta device).

    layers: module name (e.g. "model.layers.0.attention.dense") -> (in-memory scale shape, static input).
    """
    for name, (scale_shape, static) in layers.items():
        parent_name, _, attr = name.rpartition(".")
        parent = model.get_submodule(parent_name)
        old = getattr(parent, attr)
        if not isinstance(old, nn.Linear):
            raise TypeError(f"{name}: expected nn.Linear to quantise, found {type(old).__name__}")
        setattr(parent, attr, Fp8Linear(old.in_features, old.out_features, scale_shape, static))
