"""Data-free FP8 conversion (schemes `block` and `dynamic`), streamed shard by shard, resumable.

No model is built. For each source shard (CheckpointReader's shard list) the output shard of the same name is
planned from the header alone (which tensors become F8_E4M3 + scale, which are copied), then written tensor by
tensor (angelcli.quant.st_io.ShardWriter): a quantised weight is read, converted and written; every other
tensor is copied as a raw byte range, so never-quantised tensors are bit-exact. Peak memory is therefore about
one tensor per worker (the largest quantised weight in fp32, plus its FP8 copy), well under one shard.

Crash safety and resume: a shard is written to `.<name>.partial` and renamed when complete, then a small
done-record with its per-tensor error statistics is written to `<out>/.angel-quant/done/<name>.json`. A rerun
with the same source and options skips every shard whose record and output file (of the recorded size) exist;
stray `.partial` files from a killed run are removed. `--workers N` converts N shards concurrently (threads:
file I/O and torch kernels release the GIL), each on one intra-op thread; 0 = one per core (at most 8).
"""

from __future__ import annotations

import json
import os
import threading
from concurrent.futures import FIRST_EXCEPTION, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path

from angelcli.errors import IntegrityError, UsageError
from angelcli.fsutil import atomic_write_json, partial_name
from angelcli.quant import schemes
from angelcli.quant.st_io import ShardWriter, nbytes_of, read_layout

STATE_DIR = ".angel-quant"
MAX_AUTO_WORKERS = 8
FLOAT_WEIGHTS = {"BF16", "F16", "F32"}

# Test hook: called with the shard name after each shard is committed (tests raise here to simulate a kill).
_after_shard = None


@dataclass
class ShardPlan:
    """One output shard: its name, the source shard, and the (name, dtype, shape) list to write in order."""

    name: str
    source: Path
    entries: list[tuple[str, str, tuple[int, ...]]] = field(default_factory=list)
    quantized: list[str] = field(default_factory=list)  # source weight names converted to FP8

    @property
    def out_bytes(self) -> int:
        return sum(nbytes_of(d, s) for _, d, s in self.entries)


def plan_shard(source: Path, scheme: str, targets: str) -> ShardPlan:
    """Header-only plan of the output shard for `source` (raises IntegrityError on unquantisable inputs)."""
    layout, _ = read_layout(source)
    plan = ShardPlan(source.name, source)
    for raw in layout:
        if not schemes.is_target(raw.name, targets):
            plan.entries.append((raw.name, raw.dtype, raw.shape))
            continue
        if raw.dtype not in FLOAT_WEIGHTS or len(raw.shape) != 2:
            raise IntegrityError(f"{source}: {raw.name} is {raw.dtype} {list(raw.shape)}; "
                                 "expected a 2-D BF16/F16/F32 weight (is this checkpoint already quantised?)")
        plan.quantized.append(raw.name)
        plan.entries.append((raw.name, "F8_E4M3", raw.shape))
        sdtype = schemes.scale_dtype_name(scheme, raw.dtype)
        for role, sname in schemes.scale_names(scheme, raw.name).items():
            if role == "weight":
                plan.entries.append((sname, sdtype, schemes.scale_shape(scheme, raw.shape)))
    return plan


def _convert_shard(plan: ShardPlan, out_dir: Path, scheme: str, bar, lock: threading.Lock) -> dict:
    """Write one output shard; returns its done-record (file, size, per-tensor stats, weight names)."""
    from angelcli.quant import fp8
    from angelcli.quant.st_io import TORCH_DTYPES, read_tensor

    dest = out_dir / plan.name
    tmp = partial_name(dest)
    layout_kind = schemes.weight_layout(scheme)
    stats: dict[str, dict] = {}
    layout, _ = read_layout(plan.source)
    quantized = set(plan.quantized)
    writer = ShardWriter(tmp, plan.entries, metadata={"format": "pt"})
    try:
        with open(plan.source, "rb") as fh, ThreadPoolExecutor(max_workers=1) as reader:
            # read-ahead: the next weight to quantise is read while the current one is converted
            todo = [raw for raw in layout if raw.name in quantized]
            pending = reader.submit(read_tensor, fh, todo[0]) if todo else None
            qi = 0
            for raw in layout:
                if raw.name not in quantized:
                    writer.copy_raw(fh, raw)
                else:
                    w = pending.result()
                    qi += 1
                    pending = reader.submit(read_tensor, fh, todo[qi]) if qi < len(todo) else None
                    sdtype = TORCH_DTYPES[schemes.scale_dtype_name(scheme, raw.dtype)]
                    try:
                        q, s, stats[raw.name] = fp8.quantize_with_error(w, layout_kind, scale_dtype=sdtype)
                    except fp8.NonFiniteError:
                        raise IntegrityError(f"{plan.source}: {raw.name} holds NaN or inf values; "
                                             "refusing to quantise it (the scale would be NaN)") from None
                    writer.write(raw.name, q)
                    writer.write(schemes.scale_names(scheme, raw.name)["weight"], s)
                    del w, q, s
                with lock:
                    bar.advance(raw.nbytes)
        writer.close()
    except BaseException:
        writer.abort()
        raise
    tmp.replace(dest)
    record = {"file": plan.name, "size": dest.stat().st_size, "source_size": plan.source.stat().st_size,
              "tensors": [e[0] for e in plan.entries], "stats": stats}
    atomic_write_json(out_dir / STATE_DIR / "done" / f"{plan.name}.json", record)
    return record


def _load_done(out_dir: Path, plan: ShardPlan) -> dict | None:
    """The done-record of a shard if it is complete and its file is intact (by size), else None."""
    rec_path = out_dir / STATE_DIR / "done" / f"{plan.name}.json"
    dest = out_dir / plan.name
    try:
        rec = json.loads(rec_path.read_text("utf-8"))
    except (OSError, json.JSONDecodeError):
        return None
    if (not dest.exists() or dest.stat().st_size != rec.get("size")
            or rec.get("source_size") != plan.source.stat().st_size):
        return None
    if rec.get("tensors") != [e[0] for e in plan.entries]:
        return None
    return rec


def convert(plans: list[ShardPlan], out_dir: Path, scheme: str, workers: int = 1) -> tuple[list[dict], int]:
    """Convert every planned shard not already done. Returns (done-records in plan order, shards skipped)."""
    from angelcli.console import log, progress

    import torch

    if scheme not in ("block", "dynamic"):
        raise UsageError(f"--scheme {scheme} is not data-free (use the calibration path)")
    if workers < 0:
        raise UsageError("--workers must be >= 1 (or 0 for one per CPU core)")
    for stray in out_dir.glob(".*.partial"):
        stray.unlink(missing_ok=True)  # left by a killed run; the shard will be redone
    records: dict[str, dict] = {}
    todo = []
    for plan in plans:
        rec = _load_done(out_dir, plan)
        if rec is not None:
            records[plan.name] = rec
        else:
            todo.append(plan)
    skipped = len(plans) - len(todo)
    if skipped:
        log(f"resuming: {skipped} of {len(plans)} shards already converted")
    total = sum(raw.nbytes for p in todo for raw in read_layout(p.source)[0])
    if workers == 0:
        workers = max(1, min(os.cpu_count() or 1, MAX_AUTO_WORKERS, len(todo)))
    lock = threading.Lock()
    # Parallelism is across shards: each worker runs its kernels on one intra-op thread. Elementwise kernels on
    # 16-64 MB tensors gain little from intra-op threads, and spinning intra-op pools on a busy machine were
    # measured 4x slower than one thread (docs/benchmarks.md).
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return _run(todo, plans, records, out_dir, scheme, workers, total, lock), skipped
    finally:
        torch.set_num_threads(threads)


def _run(todo, plans, records, out_dir, scheme, workers, total, lock) -> list[dict]:
    from angelcli.console import progress

    with progress(f"fp8 {scheme}", total=total, unit="B") as bar:
        if workers == 1 or len(todo) <= 1:
            for plan in todo:
                records[plan.name] = _convert_shard(plan, out_dir, scheme, bar, lock)
                if _after_shard is not None:
                    _after_shard(plan.name)
        else:
            with ThreadPoolExecutor(max_workers=workers) as pool:
                futures = {pool.submit(_convert_shard, p, out_dir, scheme, bar, lock): p for p in todo}
                done, pending = wait(futures, return_when=FIRST_EXCEPTION)
                for f in pending:
                    f.cancel()
                for f in done:
                    rec = f.result()  # re-raises the first failure
                    records[rec["file"]] = rec
                    if _after_shard is not None:
                        _after_shard(rec["file"])
    return [records[p.name] for p in plans]
