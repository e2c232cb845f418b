"""angelcli.ops: the GPU kernels of angel's engine, each with a plain-torch twin.

Model code calls only these functions, never `kernel[grid]`. Every op exists twice with one signature:
a Triton kernel behind a checked host wrapper (in the module KERNEL_MODULES names; module names differ
from op names so that importing a kernel module never shadows the op on this package) and a torch twin
(angelcli/ops/reference.py). Which one runs is decided per call:

    backend "auto" (default): CUDA tensors -> Triton (compiled); CPU tensors -> torch twin, unless
                              TRITON_INTERPRET=1 is set, then Triton in the interpreter
    backend "triton":         Triton always (CPU tensors run in the interpreter: slow, exact semantics)
    backend "torch":          the twin always

Choose with `ops.use("torch")` (also a context manager: `with ops.use("triton"): ...`) or the
environment variable ANGEL_OPS_BACKEND=torch|triton|auto. `ops.backend_for(tensor)` says what a call
would run. Layouts, shapes and the FP8 scheme: docs/kernels.md.
"""

from __future__ import annotations

import functools
import importlib
import os

from angelcli.ops import reference
from angelcli.ops.reference import rope_cache
from angelcli.ops.shared_expert import append_shared_expert, shared_expert_routing

__all__ = [
    "use", "backend", "backend_for",
    "moe_align", "route", "route_gemm", "fused_moe",
    "rms_norm", "rms_norm_fp8", "silu_mul", "qk_norm_rope", "qk_norm_rope_cache", "rope_cache",
    "kv_cache_write", "attention_prefill", "attention_decode", "attention_decode_fp8",
    "quantize_fp8", "quantize_act_fp8", "fp8_gemm",
    "append_shared_expert", "shared_expert_routing",
]

BACKENDS = ("auto", "torch", "triton")

# public op -> module in angelcli/ops holding its Triton wrapper (same name, same signature as the twin)
KERNEL_MODULES = {
    "moe_align": "align",
    "route": "router",
    "route_gemm": "router_gemm",
    "fused_moe": "moe",
    "rms_norm": "rmsnorm",
    "rms_norm_fp8": "rmsnorm",
    "silu_mul": "activation",
    "qk_norm_rope": "rope",
    "qk_norm_rope_cache": "rope",
    "kv_cache_write": "attention",
    "attention_prefill": "attention",
    "attention_decode": "decode_attention",
    "attention_decode_fp8": "decode_attention",
    "quantize_fp8": "fp8",
    "quantize_act_fp8": "fp8",
    "fp8_gemm": "fp8",
}

_choice: str | None = None  # set by use(); None = environment / auto


def backend() -> str:
    """The configured backend name: "auto", "torch" or "triton"."""
    name = _choice or os.environ.get("ANGEL_OPS_BACKEND", "auto").strip().lower() or "auto"
    if name not in BACKENDS:
        raise ValueError(f"ANGEL_OPS_BACKEND={name!r}: expected one of {', '.join(BACKENDS)}")
    return name


def backend_for(tensor) -> str:
    """"torch" or "triton": what an op called with this (first) tensor would run."""
    name = backend()
    if name != "auto":
        return name
    if tensor.device.type == "cuda":
        return "triton"
    interp = os.environ.get("TRITON_INTERPRET", "").strip().lower() in ("1", "true", "yes", "on")
    return "triton" if interp and tensor.device.type == "cpu" else "torch"


class use:
    """Select the backend for the rest of the process, or for a `with` block."""

    def __init__(self, name: str):
        global _choice
        if name not in BACKENDS:
            raise ValueError(f"ops.use({name!r}): expected one of {', '.join(BACKENDS)}")
        self._previous = _choice
        _choice = name

    def __enter__(self) -> "use":
        return self

    def __exit__(self, *exc) -> None:
        global _choice
        _choice = self._previous


def kernel_impl(name: str):
    """The Triton host wrapper of op `name` (imports triton on first use)."""
    return getattr(importlib.import_module(f"angelcli.ops.{KERNEL_MODULES[name]}"), name)


def _dispatching(name: str):
    twin = getattr(reference, name)

    @functools.wraps(twin)  # same name, docstring and signature as the twin
    def op(*args, **kwargs):
        first = args[0] if args else next(iter(kwargs.values()))
        if isinstance(first, (tuple, list)):  # a pre-quantised activation (xq, scale)
            first = first[0]
        impl = kernel_impl(name) if backend_for(first) == "triton" else twin
        return impl(*args, **kwargs)

    return op


moe_align = _dispatching("moe_align")
route = _dispatching("route")
route_gemm = _dispatching("route_gemm")
fused_moe = _dispatching("fused_moe")
rms_norm = _dispatching("rms_norm")
rms_norm_fp8 = _dispatching("rms_norm_fp8")
silu_mul = _dispatching("silu_mul")
qk_norm_rope = _dispatching("qk_norm_rope")
qk_norm_rope_cache = _dispatching("qk_norm_rope_cache")
kv_cache_write = _dispatching("kv_cache_write")
attention_prefill = _dispatching("attention_prefill")
attention_decode = _dispatching("attention_decode")
attention_decode_fp8 = _dispatching("attention_decode_fp8")
quantize_fp8 = _dispatching("quantize_fp8")
quantize_act_fp8 = _dispatching("quantize_act_fp8")
fp8_gemm = _dispatching("fp8_gemm")
