"""Ahead-of-time compilation of recorded launches for sm_90, without a GPU.

`triton.compile(ASTSource(fn, signature, constexprs, attrs), target=GPUTarget("cuda", 90, 32))` runs the
whole NVIDIA pipeline (TTIR -> TTGIR -> LLVM -> PTX -> cubin via the bundled ptxas) on a CPU-only
machine. The signature is derived from a launch that actually ran (angelcli/ops/_runtime.py records
them), using triton's own runtime specialisation (`native_specialize_impl`): the same types, the same
"divisible by 16" hints and the same `== 1` constant folding that a JIT launch on a GPU would apply.

What comes back is what the checker needs: shared memory per block (Hopper allows 227 KB), registers
are not known before load, and the PTX, where we look for the tensor-core instruction actually used
(`wgmma ... e4m3.e4m3` = FP8 tensor cores; `mma.sync ... f16` = operands up-converted; see
shared/spec/fp8.md Part D: wgmma needs BLOCK_M >= 64).
"""

from __future__ import annotations

import dataclasses
import os
import re
from typing import Any

from angelcli.ops._runtime import Launch, compiled

SM90 = (90, 32)  # (capability, warp size)
SHARED_LIMIT_SM90 = 227 * 1024  # max dynamic shared memory per block on H100 / H20 / H800


@dataclasses.dataclass
class AotResult:
    kernel: str
    constexprs: dict[str, Any]
    num_warps: int
    num_stages: int
    shared_bytes: int
    mma: str  # "wgmma.e4m3", "wgmma.bf16", "mma.sync.f16", "mma.sync.bf16", ..., or "none"
    ptx_bytes: int


_WGMMA = re.compile(r"wgmma\.mma_async\.sync\.aligned\.m\d+n\d+k\d+\.(\w+)\.(\w+)\.(\w+)")
_MMA = re.compile(r"mma\.sync\.aligned\.m\d+n\d+k\d+\.row\.col\.(\w+)\.(\w+)\.(\w+)")


def mma_kind(ptx: str) -> str:
    """Which tensor-core instruction the PTX uses ("wgmma.<a-type>", "mma.sync.<a-type>" or "none")."""
    m = _WGMMA.search(ptx)
    if m:
        return f"wgmma.{m.group(2)}"
    m = _MMA.search(ptx)
    if m:
        return f"mma.sync.{m.group(2)}"
    return "none"


def interpret_env_conflict() -> bool:
    """True if TRITON_INTERPRET was on when triton.language was imported: AOT cannot work in-process."""
    import triton.language.standard as std
    from triton.runtime.jit import JITFunction

    return not isinstance(std.zeros, JITFunction)


def aot_compile(rec: Launch, overrides: dict[str, Any] | None = None, num_warps: int | None = None,
                num_stages: int | None = None, target: tuple[int, int] = SM90) -> AotResult:
    """Compile one recorded launch for `target` (default sm_90), optionally with other meta-parameters."""
    import triton
    from triton._C.libtriton import native_specialize_impl
    from triton.backends.compiler import BaseBackend, GPUTarget

    if interpret_env_conflict():
        raise RuntimeError("TRITON_INTERPRET=1 was set when triton was imported; ahead-of-time compilation "
                           "needs a process without it")
    fn = compiled(rec.kernel)
    constexprs = dict(rec.constexprs, **(overrides or {}))
    signature: dict[str, str] = {}
    attrs: dict[tuple[int], list] = {}
    for i, name in enumerate(fn.arg_names):
        if name in constexprs:
            signature[name] = "constexpr"
            continue
        ty, key = native_specialize_impl(BaseBackend, rec.args[name], False, True, True)
        if ty == "constexpr":  # ints equal to 1 are folded in, as the JIT does at launch
            constexprs[name] = key
            signature[name] = "constexpr"
            continue
        signature[name] = ty
        if key == "D":
            attrs[(i,)] = [["tt.divisibility", 16]]
    nw = rec.num_warps if num_warps is None else num_warps
    ns = rec.num_stages if num_stages is None else num_stages
    src = triton.compiler.ASTSource(fn=fn, signature=signature, constexprs=constexprs, attrs=attrs)
    kernel = triton.compile(src, target=GPUTarget("cuda", target[0], target[1]),
                            options={"num_warps": nw, "num_stages": ns, "enable_fp_fusion": True})
    ptx = kernel.asm["ptx"]
    if os.environ.get("ANGEL_DUMP_PTX"):
        with open(os.path.join(os.environ["ANGEL_DUMP_PTX"], f"{rec.name}-{kernel.hash[:8]}.ptx"), "w") as f:
            f.write(ptx)
    return AotResult(kernel=rec.name, constexprs={k: v for k, v in constexprs.items() if k.isupper()},
                     num_warps=nw, num_stages=ns, shared_bytes=int(kernel.metadata.shared), mma=mma_kind(ptx),
                     ptx_bytes=len(ptx))
