"""File-level integrity for `angel verify`: recorded checksums, and the store's verdict on a pulled model.

Expected digests, in order of trust:
  1. the store manifest of a pulled model (the hub's sha256 per LFS file, git blob sha1 per small file);
  2. `checksums.sha256` in the directory (written by `angel quantize`, or `angel verify DIR --write-checksums`).
With neither, the check is "skip": integrity could not be checked, which the report says in words.

A pulled model found corrupt is marked in its manifest (`corrupt`: the bad files, whose verified mtime is
cleared so the next `angel pull` re-hashes and re-fetches them); `angel list` / `show` then say "corrupt". A
later clean verify (or a new pull) clears the mark.
"""

from __future__ import annotations

import threading
from pathlib import Path

from angelcli import store
from angelcli.checksums import CHECKSUMS_NAME, Expected, check_files, read_checksums, write_checksums
from angelcli.errors import UsageError
from angelcli.verify.checks import INTEGRITY, Check, check, skip


def manifest_for(model_dir: Path) -> store.Manifest | None:
    """The store manifest whose files live in `model_dir`, if any."""
    try:
        target = model_dir.resolve()
    except OSError:
        return None
    for m in store.list_manifests():
        try:
            if m.dir.resolve() == target:
                return m
        except OSError:
            continue
    return None


def expected_files(model_dir: Path) -> tuple[str | None, list[Expected], store.Manifest | None]:
    """(where the digests come from, [Expected], manifest or None). Source None: nothing recorded."""
    manifest = manifest_for(model_dir)
    listed: dict[str, Expected] = {}
    source = None
    sums = model_dir / CHECKSUMS_NAME
    if sums.is_file():
        for name, digest in read_checksums(sums).items():
            listed[name] = Expected(name, None, sha256=digest)
        source = CHECKSUMS_NAME
    if manifest is not None:
        for f in manifest.files:
            listed[f.path] = Expected(f.path, f.size, f.sha256, f.git_sha1)
        source = "store manifest (hub checksums)" + (f" + {CHECKSUMS_NAME}" if source else "")
    return source, sorted(listed.values(), key=lambda e: e.path), manifest


def _record_verdict(manifest: store.Manifest, bad: list[str]) -> None:
    manifest.corrupt = list(bad)
    for rec in manifest.files:
        if rec.path in bad:
            rec.mtime_ns = None  # a later pull must re-hash (and re-fetch) it, not trust size + mtime
    if not bad:
        manifest.verified_at = store.now_iso()
    try:
        store.save_manifest(manifest)
    except OSError:
        pass  # a read-only store still gets the verdict on the terminal


def checksum_check(model_dir: Path, workers: int = 0) -> tuple[Check, dict]:
    """Hash every recorded file (parallel, streaming, progress bar in bytes). -> (check, report summary)."""
    from angelcli.console import progress

    source, expected, manifest = expected_files(model_dir)
    if source is None:
        detail = (f"integrity could not be checked: no checksums recorded for {model_dir} (`angel verify "
                  f"{model_dir} --write-checksums` records them now)")
        return skip("checksums", INTEGRITY, detail), {"source": None, "files": 0}
    total = 0
    for e in expected:
        try:
            total += (model_dir / e.path).stat().st_size
        except OSError:
            pass
    lock = threading.Lock()
    with progress("verify checksums", total=total, unit="B") as bar:
        def on_bytes(n: int) -> None:
            with lock:
                bar.advance(n)

        bad = check_files(model_dir, expected, workers=workers, on_bytes=on_bytes)
    if manifest is not None:
        _record_verdict(manifest, [m.path for m in bad])
    hashed = sum(1 for e in expected if e.kind != "size")
    summary = {"source": source, "files": len(expected), "hashed": hashed, "bytes": total,
               "bad": [{"path": m.path, "problem": m.problem} for m in bad]}
    if bad:
        more = f" ({len(bad) - 1} more bad file(s))" if len(bad) > 1 else ""
        return check("checksums", INTEGRITY, False, f"{model_dir / bad[0].path}: {bad[0].problem}{more}"), summary
    return check("checksums", INTEGRITY, True, f"{len(expected)} file(s) match the {source} ({hashed} hashed, "
                                               f"{total / 1e9:.2f} GB)"), summary


def record_checksums(model_dir: Path | None, workers: int = 0) -> Path:
    """--write-checksums: hash every file of a local directory into checksums.sha256."""
    from angelcli.console import progress

    if model_dir is None:
        raise UsageError("--write-checksums needs a model directory with files (this MODEL is not pulled)")
    if manifest_for(model_dir) is not None:
        raise UsageError(f"--write-checksums: {model_dir} is a pulled model; its checksums come from the hub "
                         "(plain `angel verify` checks them)")
    from angelcli.checksums import listed_files

    names = listed_files(model_dir)
    total = sum((model_dir / n).stat().st_size for n in names)
    lock = threading.Lock()
    try:
        with progress("hashing", total=total, unit="B") as bar:
            def on_bytes(n: int) -> None:
                with lock:
                    bar.advance(n)

            return write_checksums(model_dir, names, workers=workers, on_bytes=on_bytes)
    except OSError as err:
        raise UsageError(f"--write-checksums: cannot write {model_dir / CHECKSUMS_NAME} ({err.strerror})") from None
