"""Ahead-of-time compilation of recorded launches for sm_90, without a GPU.

`triton.compile(ASTSource(fn, signature, constexprs, attrs), target=GPUTarget("cuda", 90, 32))` runs the
whole NVIDIA pipeline (TTIR -> TTGIR -> LLVM -> PTX -> cubin via the bundled ptxas) on a CPU-only
machine. The signature is derived from a launch that actually ran (angelcli/ops/_runtime.py records
them), using triton's own runtime specialisation (`native_specialize_impl`): the same types, the same
"divisible by 16" hints and the same `== 1` constant folding that a JIT launch on a GPU would apply.

What comes back is what the checker needs: shared memory per block (Hopper allows 227 KB), the PTX,
where we look for the tensor-core instruction actually used (`wgmma ... e4m3.e4m3` = FP8 tensor cores;
`mma.sync ... f16` = operands up-converted; see shared/spec/fp8.md Part D: wgmma needs BLOCK_M >= 64),
and registers per thread plus spill bytes. Triton only learns those when a GPU driver loads the cubin
(`n_regs` / `n_spills`), so they are read from ptxas' own `-v` report instead: the log of the compile
itself when triton ran ptxas (knobs.nvidia.dump_ptxas_log), else a second `ptxas -v` over the PTX, and
kept in a small JSON cache keyed by the kernel hash (`$ANGEL_PTXAS_CACHE`, default
~/.cache/angel/ptxas-usage.json) so a re-run of the check costs no ptxas time at all.
"""

from __future__ import annotations

import contextlib
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
    registers: int | None = None  # per thread, from ptxas -v
    spill_bytes: int | None = None  # spill stores + spill loads, from ptxas -v


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
    with _ptxas_log() as log:
        kernel = triton.compile(src, target=GPUTarget("cuda", target[0], target[1]),
                                options={"num_warps": nw, "num_stages": ns, "enable_fp_fusion": True})
    ptx = kernel.asm["ptx"]
    usage = register_usage(kernel.hash, ptx, log.getvalue(), target[0])
    if os.environ.get("ANGEL_DUMP_PTX"):
        with open(os.path.join(os.environ["ANGEL_DUMP_PTX"], f"{rec.name}-{kernel.hash[:8]}.ptx"), "w") as f:
            f.write(ptx)
    return AotResult(kernel=rec.name, constexprs={k: v for k, v in constexprs.items() if k.isupper()},
                     num_warps=nw, num_stages=ns, shared_bytes=int(kernel.metadata.shared), mma=mma_kind(ptx),
                     ptx_bytes=len(ptx), registers=usage.get("registers"), spill_bytes=usage.get("spill_bytes"))


# ------------------------------------------------------------------------------ registers and spills

_USAGE = re.compile(r"Used (\d+) registers.*?(\d+) bytes spill stores, (\d+) bytes spill loads", re.S)
_usage_cache: dict[str, dict] | None = None


def parse_ptxas_usage(log: str) -> dict | None:
    """{"registers", "spill_bytes"} from a `ptxas -v` log (None if the log has no usage line)."""
    regs = re.search(r"Used (\d+) registers", log)
    spills = re.search(r"(\d+) bytes spill stores, (\d+) bytes spill loads", log)
    if not regs or not spills:
        return None
    return {"registers": int(regs.group(1)), "spill_bytes": int(spills.group(1)) + int(spills.group(2))}


@contextlib.contextmanager
def _ptxas_log():
    """Capture the ptxas -v log triton prints when it compiles (not when the kernel comes from its cache)."""
    import io

    buf = io.StringIO()
    try:
        from triton import knobs

        old = knobs.nvidia.dump_ptxas_log
        knobs.nvidia.dump_ptxas_log = True
    except (ImportError, AttributeError):  # older triton: no knob, the fallback runs ptxas itself
        knobs, old = None, None
    try:
        with contextlib.redirect_stdout(buf):
            yield buf
    finally:
        if knobs is not None:
            knobs.nvidia.dump_ptxas_log = old


def _cache_path():
    from pathlib import Path

    return Path(os.environ.get("ANGEL_PTXAS_CACHE") or Path.home() / ".cache" / "angel" / "ptxas-usage.json")


def _load_usage_cache() -> dict:
    global _usage_cache
    if _usage_cache is None:
        import json

        try:
            _usage_cache = json.loads(_cache_path().read_text())
        except (OSError, ValueError):
            _usage_cache = {}
    return _usage_cache


def _store_usage(key: str, usage: dict) -> None:
    import json
    import tempfile

    cache = _load_usage_cache()
    cache[key] = usage
    path = _cache_path()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".ptxas-usage.")
        with os.fdopen(fd, "w") as f:
            json.dump(cache, f)
        os.replace(tmp, path)
    except OSError:
        pass  # a read-only home only costs a re-run of ptxas next time


def _run_ptxas(ptx: str, capability: int) -> str:
    """`ptxas -v` over the PTX with triton's own ptxas binary; returns its log."""
    import subprocess
    import tempfile

    from triton.backends.nvidia import compiler as nv

    try:
        ptxas = nv.get_ptxas(capability).path
    except TypeError:  # triton versions whose get_ptxas takes no argument
        ptxas = nv.get_ptxas().path
    arch = nv.sm_arch_from_capability(capability)
    with tempfile.TemporaryDirectory() as d:
        src = os.path.join(d, "k.ptx")
        with open(src, "w") as f:
            f.write(ptx)
        base = [ptxas, "-lineinfo", "-v", f"--gpu-name={arch}", src, "-o", os.path.join(d, "k.cubin")]
        for extra in (["--regAllocOptLevel=2"], []):  # triton 3.9 passes it; older ptxas may not know it
            run = subprocess.run(base[:3] + extra + base[3:], capture_output=True, text=True)
            if run.returncode == 0:
                return run.stderr + run.stdout
    return ""


def register_usage(kernel_hash: str, ptx: str, log: str, capability: int) -> dict:
    """Registers and spill bytes of a compiled kernel (cached by hash; see the module docstring)."""
    key = f"{kernel_hash}:sm{capability}"
    cache = _load_usage_cache()
    if key in cache:
        return cache[key]
    usage = parse_ptxas_usage(log) or parse_ptxas_usage(_run_ptxas(ptx, capability))
    if usage is None:
        return {}
    _store_usage(key, usage)
    return usage
