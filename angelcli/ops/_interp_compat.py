"""Make the Triton 3.9 interpreter compute bf16 / fp8 the way the GPU does.

The interpreter (TRITON_INTERPRET=1, or an `InterpretedFunction`) runs kernels with numpy. numpy has no
bfloat16 or float8 types, so the interpreter stores them as raw uint16 / uint8 bit patterns, and three of
its code paths then go wrong (checked on triton 3.9.0; triton-lang/triton#11584 was closed as "not
supported yet"):

1. `tl.dot` on bf16 operands multiplies the bit patterns (results around 1e10). Only 8-bit floats are
   converted before `np.matmul`.
2. `x.to(tl.bfloat16)` from fp32 truncates the mantissa; the GPU rounds to nearest even. In the
   RMSNorm / SiLU epilogues this is a one-ulp difference in ~half of all outputs.
3. `x.to(tl.float8e4nv)` rounds with a carry bug: 31.6 becomes 16.0 (the GPU gives 32.0). Every FP8
   path would be tested against garbage.

`install()` replaces exactly those three builder methods, and makes every other arithmetic op on a bf16
or fp8 operand raise instead of silently computing on bit patterns. The kernels in angelcli/ops follow
the rule this enforces, which is also what we want numerically: load, `.to(tl.float32)`, compute, cast
once on the way out; bf16 / fp8 values only ever feed `tl.dot`, casts, `tl.where` and stores.

Conversions go through torch (exact round-to-nearest-even), with the fp8 result saturated to +-448 like
the GPU's `cvt.rn.satfinite.e4m3x2.f32`. None of this touches compiled (GPU) kernels.
"""

from __future__ import annotations

import numpy as np

_installed = False


def _torch_dtypes():
    import torch
    import triton.language as tl

    return {
        tl.bfloat16: torch.bfloat16,
        tl.float16: torch.float16,
        tl.float32: torch.float32,
        tl.float64: torch.float64,
        tl.float8e4nv: torch.float8_e4m3fn,
        tl.float8e5: torch.float8_e5m2,
    }


# Storage dtype the interpreter uses for each narrow float (numpy has no native type for them).
_BITS = {"bf16": np.int16, "fp8e4nv": np.uint8, "fp8e5": np.uint8}


def _to_torch(data, tl_dtype):
    import torch

    arr = np.ascontiguousarray(np.asarray(data))
    tdt = _torch_dtypes()[tl_dtype]
    bits = _BITS.get(tl_dtype.name)
    if bits is not None:
        return torch.from_numpy(arr.view(bits).copy()).view(tdt)
    return torch.from_numpy(arr.copy())


def _from_torch(t, tl_dtype, np_dtype):
    import torch

    bits = _BITS.get(tl_dtype.name)
    if bits is not None:
        raw = t.view(torch.int16 if bits is np.int16 else torch.uint8).numpy()
        return raw.view(np_dtype)
    return t.numpy().astype(np_dtype, copy=False)


def _convert(src, dst_tl):
    """Round-to-nearest-even float conversion of a TensorHandle, saturating for fp8 e4m3."""
    import torch
    import triton.language as tl
    from triton.runtime import interpreter as interp

    x = _to_torch(src.data, src.dtype.scalar).to(torch.float32)
    if dst_tl == tl.float8e4nv:
        x = x.clamp(-448.0, 448.0)  # satfinite; NaN stays NaN
    out = x.to(_torch_dtypes()[dst_tl])
    return interp.TensorHandle(_from_torch(out, dst_tl, interp._get_np_dtype(dst_tl)), dst_tl)


def install() -> None:
    """Patch the interpreter builder once per process (idempotent; no-op on unknown triton internals)."""
    global _installed
    if _installed:
        return
    import triton.language as tl
    from triton.runtime import interpreter as interp

    builder = getattr(interp, "InterpreterBuilder", None)
    needed = ("cast_impl", "create_fp_to_fp", "create_dot", "binary_op", "unary_op")
    if builder is None or not all(hasattr(builder, n) for n in needed):
        _installed = True  # a future triton with another interpreter layout; tests will tell
        return
    narrow = {tl.bfloat16, tl.float8e4nv, tl.float8e5}
    floats = set(_torch_dtypes())
    orig_cast, orig_fp2fp, orig_dot = builder.cast_impl, builder.create_fp_to_fp, builder.create_dot
    orig_binary, orig_unary = builder.binary_op, builder.unary_op

    def cast_impl(self, src, dst_type):
        s, d = src.dtype.scalar, dst_type.scalar
        if s in floats and d in floats and (s in narrow or d in narrow):
            return _convert(src, d)
        return orig_cast(self, src, dst_type)

    def create_fp_to_fp(self, src, dst_type, rounding_mode):
        s, d = src.dtype.scalar, dst_type.scalar
        if s in floats and d in floats and (s in narrow or d in narrow):
            return _convert(src, d)
        return orig_fp2fp(self, src, dst_type, rounding_mode)

    def create_dot(self, a, b, d, input_precision, max_num_imprecise_acc):
        # bf16 x bf16 products are exact in fp32, so upcasting first is what the tensor cores compute.
        if a.dtype.scalar == tl.bfloat16:
            a = _convert(a, tl.float32)
        if b.dtype.scalar == tl.bfloat16:
            b = _convert(b, tl.float32)
        return orig_dot(self, a, b, d, input_precision, max_num_imprecise_acc)

    def _refuse(op_name, *handles):
        for h in handles:
            if getattr(h.dtype, "scalar", h.dtype) in narrow:
                raise TypeError(
                    f"interpreter: {op_name} on a {h.dtype.scalar} operand would compute on bit patterns; "
                    "convert with .to(tl.float32) first (see angelcli/ops/_interp_compat.py)")

    def binary_op(self, lhs, rhs, op):
        _refuse(getattr(op, "__name__", "binary op"), lhs, rhs)
        return orig_binary(self, lhs, rhs, op)

    def unary_op(self, arg, op):
        _refuse(getattr(op, "__name__", "unary op"), arg)
        return orig_unary(self, arg, op)

    builder.cast_impl = cast_impl
    builder.create_fp_to_fp = create_fp_to_fp
    builder.create_dot = create_dot
    builder.binary_op = binary_op
    builder.unary_op = unary_op
    _patch_scalar_index(interp)
    _installed = True


def _patch_scalar_index(interp) -> None:
    """Triton 3.6's interpreter turns a scalar tensor into a Python int with `int(data)`, but its scalars
    are 1-element 1-D numpy arrays, which numpy 2.x refuses to convert ("only 0-dimensional arrays can be
    converted to Python scalars": every `range(0, tl.cdiv(...))` loop failed on the H200 machine). Later
    triton versions use .item(); re-set `__index__` the same way after triton's own patch."""
    orig = getattr(interp, "_patch_lang_tensor", None)
    if orig is None or getattr(orig, "_angel_index", False):
        return

    def patched(tensor, scope):
        orig(tensor, scope)
        scope.set_attr(tensor, "__index__", lambda self: int(self.handle.data.reshape(-1)[0]))

    patched._angel_index = True
    interp._patch_lang_tensor = patched
