"""How a host wrapper launches a kernel: compiled on CUDA tensors, interpreted on CPU tensors.

Every kernel in angelcli/ops is written once with `@triton.jit`. Whether `@triton.jit` returns a
compiled `JITFunction` or an `InterpretedFunction` depends on TRITON_INTERPRET at *decoration* time,
which is awkward for a library: `angel kernels --check` needs both in one process (run interpreted on
CPU, compile ahead of time for sm_90). So `launch()` rebuilds the variant it needs from the plain
Python function (`kernel.fn`): CPU tensors run in the interpreter, CUDA tensors run compiled.

Triton's own standard library (tl.zeros, tl.sum, tl.cumsum, ...) and any `@triton.jit` helper are
JITFunctions too, and a JITFunction refuses to be called from Python. While an interpreted launch runs,
`_interpreting()` lets such calls go through the interpreter instead, which is what TRITON_INTERPRET=1
at import would have arranged. So no environment variable has to be set before anything is imported,
and test files cannot disturb each other. Do NOT set TRITON_INTERPRET=1 globally (e.g. in a conftest):
triton then builds its standard library as interpreted functions and ahead-of-time compilation in that
process fails ("'block_argument' object has no attribute 'dtype'").

`record_launches()` captures every launch (kernel, arguments, meta-parameters) so the checker can
compile exactly what ran, for sm_90, without a GPU (see angelcli/ops/aot.py).
"""

from __future__ import annotations

import contextlib
import dataclasses
from typing import Any, Iterator

_variants: dict[tuple[int, str], Any] = {}
_recorders: list[list["Launch"]] = []


@dataclasses.dataclass
class Launch:
    """One kernel launch as the wrapper issued it (arguments in the kernel's parameter order)."""

    kernel: Any  # the @triton.jit object as defined in the module
    grid: tuple[int, ...]
    args: dict[str, Any]  # runtime arguments: tensors, ints, floats
    constexprs: dict[str, Any]
    num_warps: int
    num_stages: int

    @property
    def name(self) -> str:
        return self.kernel.fn.__name__


def _variant(kernel, mode: str):
    """The interpreted or compiled variant of a kernel, built once from its Python function."""
    key = (id(kernel), mode)
    if key not in _variants:
        if mode == "interpret":
            from triton.runtime.interpreter import InterpretedFunction

            from angelcli.ops import _interp_compat

            _interp_compat.install()
            _variants[key] = InterpretedFunction(kernel.fn)
        else:
            from triton.runtime.jit import JITFunction

            _variants[key] = kernel if isinstance(kernel, JITFunction) else JITFunction(kernel.fn)
    return _variants[key]


def compiled(kernel):
    """The JITFunction for a kernel whatever TRITON_INTERPRET said at import (for AOT compilation)."""
    return _variant(kernel, "compile")


def launch(kernel, grid, device, args: dict[str, Any], constexprs: dict[str, Any],
           num_warps: int = 4, num_stages: int = 2) -> None:
    """Launch `kernel[grid]` with keyword arguments: compiled on CUDA, interpreted on the CPU, only
    recorded on the meta device (a wrapper called with meta tensors does all its checks and config
    choices for real model shapes without allocating anything)."""
    grid = tuple(int(g) for g in grid)
    for rec in _recorders:
        rec.append(Launch(kernel, grid, dict(args), dict(constexprs), num_warps, num_stages))
    dev_type = getattr(device, "type", str(device))
    if any(g == 0 for g in grid) or dev_type == "meta":
        return  # meta tensors: shapes only; used to record real-size launches for AOT checks
    mode = "interpret" if dev_type == "cpu" else "compile"
    fn = _variant(kernel, mode)
    # enable_fp_fusion is passed explicitly: triton 3.9 warns when it is left to its changing default.
    opts = dict(num_warps=num_warps, num_stages=num_stages, enable_fp_fusion=True)
    if mode == "interpret":
        with _interpreting():
            fn[grid](**args, **constexprs, **opts)
    else:
        fn[grid](**args, **constexprs, **opts)


@contextlib.contextmanager
def _interpreting() -> Iterator[None]:
    """Route calls of JITFunctions (triton's stdlib, our helpers) through the interpreter meanwhile.

    The interpreter swaps triton.language's builtins for numpy versions while a kernel runs, but only in
    the modules the kernel's own globals name (`tl`); stdlib helpers reach them through `tl.core`. Both are
    patched once here for the whole launch (InterpretedFunction.__call__ would re-patch on every helper
    call, which dominated run time, and never restores, which breaks later compilation in the process).
    """
    import types

    import triton.language as tl
    from triton.runtime import interpreter
    from triton.runtime.jit import JITFunction

    anchor = types.FunctionType((lambda: None).__code__, {"tl": tl, "core": tl.core})
    scope = interpreter._patch_lang(anchor)
    original = JITFunction.__call__

    def call(self, *args, **kwargs):
        return _variant(self, "interpret").rewrite()(*args, **kwargs)

    JITFunction.__call__ = call
    try:
        yield
    finally:
        JITFunction.__call__ = original
        scope.restore()


@contextlib.contextmanager
def record_launches() -> Iterator[list[Launch]]:
    """Collect every launch made inside the block (kernels still run)."""
    rec: list[Launch] = []
    _recorders.append(rec)
    try:
        yield rec
    finally:
        _recorders.remove(rec)


# ----------------------------------------------------------------------------------------------------
# Argument checks shared by the wrappers. They raise ValueError / TypeError naming the argument: a bad
# call is a programming error in the caller, not a user error.
# ----------------------------------------------------------------------------------------------------


def check_tensor(name: str, t, *, ndim: int | None = None, dtypes=None, shape=None, device=None,
                 inner_contiguous: bool = True) -> None:
    import torch

    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name}: expected a torch.Tensor, got {type(t).__name__}")
    if ndim is not None and t.dim() != ndim:
        raise ValueError(f"{name}: expected {ndim} dims, got shape {tuple(t.shape)}")
    if dtypes is not None and t.dtype not in dtypes:
        allowed = ", ".join(str(d).replace("torch.", "") for d in dtypes)
        raise TypeError(f"{name}: dtype {str(t.dtype).replace('torch.', '')} not in ({allowed})")
    if shape is not None:
        for i, (got, want) in enumerate(zip(t.shape, shape)):
            if want is not None and got != want:
                raise ValueError(f"{name}: shape {tuple(t.shape)}, expected {tuple(shape)} (dim {i})")
    if device is not None and t.device != device:
        raise ValueError(f"{name}: on {t.device}, expected {device} (all operands on one device)")
    if inner_contiguous and t.dim() > 0 and t.numel() > 0 and t.stride(-1) != 1:
        raise ValueError(f"{name}: last dimension must be contiguous (stride {t.stride()})")


def next_pow2(n: int) -> int:
    return 1 if n <= 1 else 1 << (int(n) - 1).bit_length()


def cdiv(a: int, b: int) -> int:
    return -(-int(a) // int(b))
