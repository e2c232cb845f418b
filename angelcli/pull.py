"""`angel pull`: bring a hub repo into the local store, resumable and verified.

Order of work, so nothing is downloaded before it is known to fit:
  1. parse MODEL (alias, org/name, or hf.co/… / modelscope.cn/… prefix) and pick the source
     (angelcli.pull_plan);
  2. resolve the revision to a commit and list every file with size and hash (angelcli.hub);
  3. plan each selected file: skip (verified before, size and mtime unchanged), verify (present but not
     recorded: hash it), resume (partial download on disk), download, or refetch (present but wrong);
  4. check free disk on the target filesystem against the bytes still to fetch plus a margin (exit 4);
  5. download in parallel (angelcli.pull_run, angelcli.transfer), check each file's sha256 (LFS) or git
     blob sha1 / size, move it into place atomically and record it in the manifest as it completes.
A file whose hash does not match is deleted and fetched again, up to INTEGRITY_ATTEMPTS downloads, then the
pull fails with exit 3 naming it. Ctrl-C, a network failure or a crash keeps every complete file and every
partial one; the next pull continues where this one stopped.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path
from typing import Any, Iterable

from angelcli import aliases, hub, store
from angelcli.console import log
from angelcli.errors import AngelError, ResourceError, UsageError
from angelcli.pull_plan import (SOURCES, FilePlan, Target, choose_source, list_remote, parse_model, plan_files,
                                pull_lock, same_content, select_files)
from angelcli.pull_progress import human_bytes, human_duration
from angelcli.pull_run import INTEGRITY_ATTEMPTS, RETRIES, run_downloads

__all__ = ["pull", "free_bytes", "disk_margin", "parse_model", "select_files", "SOURCES", "INTEGRITY_ATTEMPTS",
           "RETRIES"]

MIN_MARGIN = 1 << 30  # free disk kept beyond the download: 1 GiB ...
MARGIN_FRACTION = 0.02  # ... or 2 % of the download, whichever is larger


def free_bytes(path: Path) -> int:
    """Free bytes on the filesystem that holds `path` (or would, for a directory not created yet)."""
    p = Path(path)
    while not p.exists() and p != p.parent:
        p = p.parent
    return shutil.disk_usage(p).free


def disk_margin(needed: int) -> int:
    return max(MIN_MARGIN, int(needed * MARGIN_FRACTION)) if needed else 0


def _offline_report(target: Target, existing: store.Manifest | None, revision: str | None,
                    include: list[str], exclude: list[str]) -> dict[str, Any]:
    """HF_HUB_OFFLINE: succeed only when the store already holds what was asked for."""
    hint = "unset HF_HUB_OFFLINE to download"
    if existing is None:
        raise ResourceError(f"HF_HUB_OFFLINE is set and {target.repo_id} is not in the store; {hint}")
    commit = existing.commit or ""
    if revision and revision not in (existing.revision, commit) and not commit.startswith(revision):
        raise ResourceError(f"HF_HUB_OFFLINE is set and the store has {target.repo_id}@{commit[:12] or '?'}, "
                            f"not '{revision}'; {hint}")
    wanted = select_files(existing.files, include, exclude)
    absent = set(store.missing_files(existing))
    missing = [f.path for f in wanted if f.path in absent]
    if missing or not wanted or not existing.complete:
        raise ResourceError(f"HF_HUB_OFFLINE is set and {target.repo_id} is incomplete in the store "
                            f"({len(missing)} of {len(wanted)} files missing"
                            f"{', e.g. ' + missing[0] if missing else ''}); "
                            f"{hint} and resume")
    log(f"angel: offline: {target.repo_id}@{(existing.commit or '')[:12]} is complete in the store")
    return _report(target, existing.source, existing.endpoint, existing.revision, existing.commit, existing.dir,
                   [FilePlan(hub.RemoteFile(f.path, f.size, f.sha256, f.git_sha1), "skip") for f in wanted],
                   dry_run=False, offline=True, complete=True)


def _report(target: Target, source: str, endpoint: str | None, revision: str | None, commit: str | None,
            model_dir: Path, plans: list[FilePlan], **extra: Any) -> dict[str, Any]:
    return {
        "model": target.repo_id, "alias": target.alias.name if target.alias else None, "source": source,
        "endpoint": endpoint, "revision": revision, "commit": commit, "path": str(model_dir),
        "files": [{"path": p.rf.path, "size": p.rf.size, "sha256": p.rf.sha256, "action": p.action} for p in plans],
        "total_bytes": sum(p.rf.size for p in plans), "to_download_bytes": sum(p.to_fetch for p in plans),
        **extra,
    }


def pull(model: str = aliases.DEFAULT_MODEL, *, revision: str | None = None, include: Iterable[str] = (),
         exclude: Iterable[str] = (), local_dir: str | os.PathLike | None = None, source: str = "auto",
         max_workers: int = 8, dry_run: bool = False, quiet: bool = False) -> dict[str, Any]:
    """Pull `model` into the store (or `local_dir`) and return a report dict (see docs/pull.md).

    dry_run: resolve, list and check disk; write nothing; the report's disk.ok says whether it would fit.
    Raises UsageError (2), IntegrityError (3), ResourceError (4, disk / network / offline), Cancelled on Ctrl-C
    (as KeyboardInterrupt).
    """
    include, exclude = list(include), list(exclude)
    if max_workers < 1:
        raise UsageError(f"--max-workers must be at least 1 (got {max_workers})")
    target = parse_model(model)
    existing = store.load_manifest(target.repo_id)
    if hub.offline():
        return _offline_report(target, existing, revision, include, exclude)
    src = choose_source(source, target)
    try:
        remote = list_remote(src, target, revision)
    except AngelError as err:
        if source != "auto" or src != "modelscope":
            raise
        log(f"angel: modelscope: {err}; trying huggingface")
        src, remote = "hf", list_remote("hf", target, revision)
    selected = select_files(remote.files, include, exclude)
    if not selected:
        raise UsageError(f"no file of {target.repo_id} matches --include {include or '*'} / --exclude {exclude or '-'}")
    log(f"angel: {target.repo_id}@{remote.revision} -> commit {remote.commit[:12]} on {remote.endpoint} "
        f"({len(selected)} of {len(remote.files)} files, {human_bytes(sum(f.size for f in selected))})")

    model_dir = (Path(local_dir).expanduser().resolve() if local_dir is not None
                 else existing.dir if existing is not None else store.default_model_dir(target.repo_id))
    managed = local_dir is None and (existing is None or existing.managed)
    same_dir = existing is not None and existing.dir == model_dir
    old = {f.path: f for f in existing.files} if same_dir else {}
    if existing is not None and not same_dir:
        log(f"angel: note: the earlier copy at {existing.dir} is no longer tracked by the store")
    # The directory always holds one commit. Files pulled earlier but not selected now stay when their content
    # is unchanged at this commit (a pull of the same commit adds to what is there); outdated ones are removed.
    remote_by_path = {rf.path: rf for rf in remote.files}
    records = {path: rec for path, rec in old.items()
               if path in remote_by_path and same_content(rec, remote_by_path[path])}
    for rf in selected:
        if rf.path not in records:
            records[rf.path] = store.FileRecord(rf.path, rf.size, rf.sha256, rf.git_sha1)
    stale = [path for path in old if path not in records]
    plans = plan_files(model_dir, selected, old)

    needed = sum(p.to_fetch for p in plans)
    free, margin = free_bytes(model_dir), disk_margin(needed)
    disk = {"free": free, "needed": needed, "margin": margin, "ok": free >= needed + margin}
    report = _report(target, src, remote.endpoint, remote.revision, remote.commit, model_dir, plans,
                     dry_run=dry_run, disk=disk, stale=stale)
    if dry_run:
        return report
    if not disk["ok"]:
        raise ResourceError(f"not enough free disk for {target.repo_id} in {model_dir}: {human_bytes(needed)} to "
                            f"download + {human_bytes(margin)} margin, {human_bytes(free)} free; free space or "
                            f"choose --local-dir / ANGEL_HOME on a larger disk")

    if src == "hf" and hub.disable_xet_for_mirror(remote.endpoint):
        log(f"angel: mirror endpoint {remote.endpoint}: Xet transfers disabled (they bypass HF_ENDPOINT)")
    model_dir.mkdir(parents=True, exist_ok=True)
    start = time.monotonic()
    with pull_lock(model_dir):
        manifest = store.Manifest(
            repo=target.repo_id, path=str(model_dir), source=src, endpoint=remote.endpoint, revision=remote.revision,
            commit=remote.commit, alias=target.alias.name if target.alias else None,
            kind=target.alias.kind if target.alias else "model", managed=managed, include=include, exclude=exclude,
            remote_files=len(remote.files), remote_size=remote.total_size, files=list(records.values()),
            draft=existing.draft if existing is not None else None,
            draft_for=list(target.alias.draft_for) if target.alias else [],
        )
        store.save_manifest(manifest)
        for rel in stale:
            (model_dir / rel).unlink(missing_ok=True)
            log(f"angel: removed {rel} (not part of commit {remote.commit[:12]} / this selection)")
        fetched = run_downloads(manifest, remote, plans, max_workers=max_workers, quiet=quiet)
        manifest.complete = all(r.mtime_ns is not None for r in manifest.files) and not store.missing_files(manifest)
        manifest.pulled_at = store.now_iso()
        if manifest.complete:  # what is left in the partial dir belongs to no wanted file (e.g. an old commit)
            shutil.rmtree(model_dir / store.PARTIAL_DIR, ignore_errors=True)
        if not target.alias and _looks_like_draft(model_dir):
            manifest.kind = "eagle3-draft"
        store.save_manifest(manifest)
    elapsed = time.monotonic() - start
    done = sum(1 for p in plans if p.action != "skip")
    log(f"angel: {target.repo_id}@{remote.commit[:12]}: {len(plans)} files, {human_bytes(report['total_bytes'])} "
        f"({done} fetched or verified, {len(plans) - done} already complete) in {human_duration(elapsed)}")
    report.update(downloaded_bytes=fetched, elapsed_s=round(elapsed, 3), complete=manifest.complete)
    return report


def _looks_like_draft(model_dir: Path) -> bool:
    try:
        cfg = json.loads((model_dir / "config.json").read_text("utf-8"))
    except (OSError, ValueError):
        return False
    return "speculators_model_type" in cfg or any("Eagle3" in str(a) for a in cfg.get("architectures") or ())
