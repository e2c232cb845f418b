"""`angel kernels --check`: every kernel run in the interpreter against its twin, compiled for sm_90.

For each op case (angelcli/ops/cases.py) the row reports:
    interpreter_max_err / tolerance   Triton interpreter on CPU vs the torch twin, at a small shape
    aot_sm90                          every launch the op makes at AntAngelMed's shapes (1 and 4096 tokens,
                                      recorded with meta tensors) compiles for sm_90 (no GPU needed)
    shared_bytes                      the largest shared-memory need among them (limit 227 KB)
    fp8_wgmma                         FP8 GEMMs: does any launch use `wgmma ... e4m3` (None for non-GEMMs);
                                      launches with BLOCK_M >= 64 must, smaller tiles use f16 mma.sync
    registers / spill_bytes           the most registers per thread and spill bytes (stores + loads) among
                                      the compiled launches, from ptxas -v for sm_90a; any spill fails
    gpu_max_err                       on a CUDA machine: the compiled kernel vs the twin (None without one)
For every distinct launch config in the shipped JSON files there is a row too: the config run in the
interpreter at a small shape, and compiled at the real AntAngelMed shape (meta tensors: no memory).

Compiles are deduplicated per (kernel, constexprs, warps, stages) across all rows and cached
(aot.register_usage keeps ptxas' numbers by kernel hash), so identical tiles shared by many config files
cost one compile.

Failure (exit 1): an error above tolerance, a kernel that does not compile, shared memory over the
limit, a kernel that spills registers, or an FP8 GEMM with BLOCK_M >= 64 that does not use wgmma e4m3
(below 64, f16 mma.sync is the
expected instruction; shared/spec/fp8.md Part D).
"""

from __future__ import annotations

import time
from typing import Callable

import torch

from angelcli.ops import cases
from angelcli.ops._runtime import Launch, record_launches
from angelcli.ops.aot import SHARED_LIMIT_SM90, aot_compile
from angelcli.ops.tuning import parse_config_name, quant_of, shipped_configs

GEMM_KERNELS = {"_moe_gemm_kernel", "_fp8_gemm_kernel"}
FP8_QUANT_IDS = {1, 2}  # _moe_gemm_kernel QUANT values with FP8 weights


def _is_fp8_gemm(rec: Launch) -> bool:
    if rec.name == "_fp8_gemm_kernel":
        return True
    return rec.name == "_moe_gemm_kernel" and rec.constexprs.get("QUANT") in FP8_QUANT_IDS


_compiled: dict[tuple, object] = {}  # (kernel, constexprs, warps, stages) -> AotResult | Exception


def _compile_cached(rec: Launch):
    key = (rec.name, tuple(sorted(rec.constexprs.items())), rec.num_warps, rec.num_stages)
    if key not in _compiled:
        try:
            _compiled[key] = aot_compile(rec)
        except Exception as err:  # noqa: BLE001 - reported per kernel, never a traceback
            _compiled[key] = err
    return _compiled[key]


def _compile_all(recs: list[Launch], row: dict) -> None:
    """AOT-compile each distinct launch; fill aot_sm90, shared_bytes, mma, fp8_wgmma, registers,
    spill_bytes and failures."""
    seen, kinds, fp8_mma = set(), [], []
    row.update(aot_sm90=True, shared_bytes=0, registers=0, spill_bytes=0)
    for rec in recs:
        key = (rec.name, tuple(sorted(rec.constexprs.items())), rec.num_warps, rec.num_stages)
        if key in seen:
            continue
        seen.add(key)
        res = _compile_cached(rec)
        if isinstance(res, Exception):
            row["aot_sm90"] = False
            row["failures"].append(f"{rec.name}: sm_90 compile failed: {type(res).__name__}: {str(res)[:200]}")
            continue
        row["shared_bytes"] = max(row["shared_bytes"], res.shared_bytes)
        kinds.append(f"{rec.name}:{res.mma}")
        if res.registers is None or res.spill_bytes is None:
            row["registers"] = row["spill_bytes"] = None
            row["failures"].append(f"{rec.name}: ptxas -v gave no register report")
        elif row["spill_bytes"] is not None:
            row["registers"] = max(row["registers"], res.registers)
            row["spill_bytes"] += res.spill_bytes
            if res.spill_bytes:
                row["failures"].append(f"{rec.name}: spills {res.spill_bytes} B of registers on sm_90a "
                                       f"({res.registers} registers)")
        if res.shared_bytes > SHARED_LIMIT_SM90:
            row["failures"].append(f"{rec.name}: {res.shared_bytes} B shared memory > {SHARED_LIMIT_SM90}")
        if _is_fp8_gemm(rec):
            fp8_mma.append(res.mma == "wgmma.e4m3")
            if rec.constexprs.get("BLOCK_M", 0) >= 64 and res.mma != "wgmma.e4m3":
                row["failures"].append(f"{rec.name}: BLOCK_M >= 64 but the PTX uses {res.mma}, not wgmma e4m3")
    row["mma"] = sorted(set(kinds))
    # True if the FP8 GEMM uses FP8 tensor cores in at least one launch (the BLOCK_M >= 64 ones must:
    # checked above); decode-sized tiles below 64 rows use f16 mma.sync by design.
    row["fp8_wgmma"] = any(fp8_mma) if fp8_mma else None


def _measure(run: Callable[[str], tuple[float, float]], row: dict, device: str, key: str) -> list[Launch]:
    with record_launches() as recs:
        try:
            err, tol = run(device)
        except Exception as exc:  # noqa: BLE001
            row["failures"].append(f"{device} run failed: {type(exc).__name__}: {str(exc)[:200]}")
            return recs
    row[key] = err
    row["tolerance"] = tol
    if not err <= tol:
        row["failures"].append(f"{device}: max error {err:.3g} > tolerance {tol:.3g}")
    return recs


def real_shape_launches(name: str) -> list[Launch]:
    """The launches op case `name` makes at AntAngelMed's shapes, decode- and prefill-sized (meta tensors)."""
    with record_launches() as recs:
        for m in cases.REAL_M:
            cases.real_shape_call(name, m)
    return recs


def check_case(name: str, run: Callable[[str], tuple[float, float]], gpu: bool) -> dict:
    """Interpreter vs twin at a small shape; sm_90 compile of the launches at the real shapes."""
    row = {"name": name, "kind": "op", "interpreter_max_err": None, "tolerance": None, "gpu_max_err": None,
           "failures": []}
    _measure(run, row, "cpu", "interpreter_max_err")
    try:
        recs = real_shape_launches(name)
    except Exception as exc:  # noqa: BLE001
        row["failures"].append(f"real-shape launch failed: {type(exc).__name__}: {exc}")
        recs = []
    if recs:
        _compile_all(recs, row)
    else:
        row.update(aot_sm90=False, shared_bytes=None, fp8_wgmma=None, mma=[], registers=None, spill_bytes=None)
    if gpu:
        _measure(run, row, "cuda", "gpu_max_err")
    row["ok"] = not row["failures"]
    return row


def _config_rows(gpu: bool, interpret: bool = True, device: str | None = None,
                 sink: Callable[[dict], None] | None = None) -> list[dict]:
    """One row per distinct (op, quant, config) among the shipped files (only `device`'s files if given);
    sink(row) as each row is done."""
    distinct: dict[tuple, dict] = {}
    for fname, table in shipped_configs():
        fields = parse_config_name(fname)
        if device is not None and fields.get("device_name") != device:
            continue
        quant = quant_of(fields)
        op = "fused_moe" if "E" in fields else "fp8_gemm"
        for m, cfg in sorted(table.items()):
            key = (op, quant, tuple(sorted(cfg.items())))
            entry = distinct.setdefault(key, {"op": op, "quant": quant, "cfg": cfg, "fields": fields, "m": m,
                                              "used_by": []})
            entry["used_by"].append(f"{fname}@M={m}")
    rows = []
    for entry in distinct.values():
        cfg, op, quant, fields = entry["cfg"], entry["op"], entry["quant"], entry["fields"]
        tiles = f"{cfg['BLOCK_SIZE_M']}x{cfg['BLOCK_SIZE_N']}x{cfg['BLOCK_SIZE_K']} g{cfg['GROUP_SIZE_M']} " \
                f"w{cfg['num_warps']} s{cfg['num_stages']}"
        row = {"name": f"{op}[{quant}] {tiles}", "kind": "config", "config": cfg, "used_by": entry["used_by"],
               "interpreter_max_err": None, "tolerance": None, "gpu_max_err": None, "failures": []}
        if op == "fused_moe":
            small = lambda dev, q=quant, c=cfg: cases.run_fused_moe(33, 8, 2, 256, 256, q, dev, config=c)
        else:
            small = lambda dev, q=quant, c=cfg: cases.run_fp8_gemm(33, 256, 384, q.split("_")[1], dev, config=c)
        if interpret:
            _measure(small, row, "cpu", "interpreter_max_err")
        with record_launches() as recs:
            try:
                _meta_launch(op, quant, cfg, fields, entry["m"])
            except Exception as exc:  # noqa: BLE001
                row["failures"].append(f"real-shape launch failed: {type(exc).__name__}: {exc}")
        _compile_all([r for r in recs if r.name in GEMM_KERNELS], row)
        if gpu:
            _measure(small, row, "cuda", "gpu_max_err")
        row["ok"] = not row["failures"]
        rows.append(row)
        if sink:
            sink(row)
    return rows


def _meta_launch(op: str, quant: str, cfg: dict, fields: dict, m: int) -> None:
    """Call the wrapper with meta tensors of the real shape: records launches, allocates nothing."""
    meta = torch.device("meta")
    f8, bf = torch.float8_e4m3fn, torch.bfloat16
    if op == "fused_moe":
        from angelcli.ops.moe import fused_moe

        e, inter, hidden, top_k = int(fields["E"]), int(fields["N"]), 4096, 8
        wdt = bf if quant == "bf16" else f8
        kw = {}
        if quant == "fp8_block":
            kw = dict(w13_scale=torch.empty(e, 2 * inter // 128, hidden // 128, device=meta),
                      w2_scale=torch.empty(e, hidden // 128, inter // 128, device=meta))
        elif quant == "fp8_channel":
            kw = dict(w13_scale=torch.empty(e, 2 * inter, device=meta), w2_scale=torch.empty(e, hidden, device=meta))
        fused_moe(torch.empty(m, hidden, dtype=bf, device=meta),
                  torch.empty(e, 2 * inter, hidden, dtype=wdt, device=meta),
                  torch.empty(e, hidden, inter, dtype=wdt, device=meta),
                  torch.empty(m, top_k, device=meta), torch.empty(m, top_k, dtype=torch.int32, device=meta),
                  config=cfg, **kw)
    else:
        from angelcli.ops.fp8 import fp8_gemm

        n, k = int(fields["N"]), int(fields["K"])
        scale = (torch.empty(-(-n // 128), -(-k // 128), device=meta) if quant == "fp8_block"
                 else torch.empty(n, device=meta))
        fp8_gemm(torch.empty(m, k, dtype=bf, device=meta), torch.empty(n, k, dtype=f8, device=meta), scale,
                 config=cfg)


def check_kernels(configs: bool = True, gpu: bool | None = None, only: list[str] | None = None,
                  progress: Callable[[str], None] | None = None,
                  on_rows: Callable[[dict], None] | None = None) -> dict:
    """Run every check; returns {"ok", "gpu", "seconds", "kernels": [row, ...]} (rows described above).
    on_rows(report so far, "partial": True) after each row (op and config rows alike): a caller under a
    time limit (scripts/device_check.sh) keeps what finished."""
    import triton

    from angelcli.ops.aot import interpret_env_conflict

    if interpret_env_conflict():
        raise RuntimeError("TRITON_INTERPRET=1 was set before triton was imported; unset it (the check runs "
                           "the interpreter itself and needs the compiler too)")
    gpu = torch.cuda.is_available() if gpu is None else gpu
    start = time.monotonic()
    rows = []

    def report() -> dict:
        return {"ok": all(r["ok"] for r in rows), "gpu": torch.cuda.get_device_name() if gpu else None,
                "triton": triton.__version__, "seconds": round(time.monotonic() - start, 1), "kernels": rows}

    def add(row: dict) -> None:
        rows.append(row)
        if on_rows:
            on_rows(dict(report(), partial=True))

    for name, run in cases.CHECK_CASES.items():
        if only and not any(name.startswith(o) for o in only):
            continue
        if progress:
            progress(name)
        add(check_case(name, run, gpu))
    if configs and not only:
        if progress:
            progress("shipped configs")
        _config_rows(gpu, sink=add)
    return report()


def save_report(path: str, report: dict) -> None:
    """Write the report as JSON to path via a temp name and a rename (a reader never sees half a file)."""
    import json
    import os
    import tempfile

    d = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(dir=d, prefix=".kernels-check.")
    with os.fdopen(fd, "w") as f:
        json.dump(report, f, indent=1, default=str)
    os.replace(tmp, path)


def format_report(report: dict) -> list[str]:
    """Human-readable lines for a check_kernels report."""
    lines = [f"{'kernel':<44} {'ok':<4} {'interp err / tol':<22} {'sm_90':<6} {'shared':>8}  {'regs/spill':<11} "
             f"{'fp8 wgmma':<9} gpu err"]
    for r in report["kernels"]:
        err, tol = r.get("interpreter_max_err"), r.get("tolerance")
        et = "-" if err is None else f"{err:.3g} / {tol:.3g}"
        shared = "-" if r.get("shared_bytes") is None else f"{r['shared_bytes'] / 1024:.0f} KB"
        wg = {None: "-", True: "yes", False: "no"}[r.get("fp8_wgmma")]
        gpu = "-" if r.get("gpu_max_err") is None else f"{r['gpu_max_err']:.3g}"
        regs = "-" if r.get("registers") is None else f"{r['registers']}/{r['spill_bytes']}"
        lines.append(f"{r['name']:<44} {'ok' if r['ok'] else 'FAIL':<4} {et:<22} "
                     f"{'yes' if r.get('aot_sm90') else 'no':<6} {shared:>8}  {regs:<11} {wg:<9} {gpu}")
        lines.extend(f"    {f}" for f in r["failures"])
    gpu = report["gpu"] or "none (compiled kernels not run)"
    lines.append(f"{sum(r['ok'] for r in report['kernels'])}/{len(report['kernels'])} ok in {report['seconds']} s; "
                 f"triton {report['triton']}; GPU: {gpu}")
    return lines


def kernel_listing() -> dict:
    """What `angel kernels` prints: the ops, what runs them here, and the launch configs for this device."""
    import angelcli.ops as ops
    from angelcli.ops.tuning import CONFIG_DIR, config_dirs, device_name

    dev = device_name()
    probe = torch.empty(0, device="cuda" if torch.cuda.is_available() else "cpu")
    files = sorted({p.name for d in config_dirs() if d.is_dir() for p in d.glob(f"*device_name={dev}*.json")})
    ops_info = [{"op": name, "module": f"angelcli/ops/{mod}.py", "backend": ops.backend_for(probe)}
                for name, mod in ops.KERNEL_MODULES.items()]
    lines = [f"{o['op']:<20} {o['module']:<36} runs on: {o['backend']}" for o in ops_info]
    lines.append(f"device: {dev}; backend setting: {ops.backend()} (ANGEL_OPS_BACKEND)")
    lines.append(f"launch configs for this device: {len(files)} file(s) in {', '.join(str(d) for d in config_dirs())}"
                 if files else f"no launch configs for this device in {CONFIG_DIR} (defaults are used)")
    lines.extend(f"  {f}" for f in files)
    return {"device": dev, "backend": ops.backend(), "ops": ops_info, "config_files": files, "lines": lines}
