"""`angel pull`: bring a hub repo into the local store, resumable and verified.

Order of work, so nothing is downloaded before it is known to fit:
  1. parse MODEL (alias, org/name, or hf.co/… / modelscope.cn/… prefix) and pick the source;
  2. resolve the revision to a commit and list every file with size and hash (angelcli.hub);
  3. plan each selected file: skip (verified before, size and mtime unchanged), verify (present but not
     recorded: hash it), resume (partial download on disk), download, or refetch (present but wrong);
  4. check free disk on the target filesystem against the bytes still to fetch plus a margin (exit 4);
  5. download in parallel (angelcli.transfer), check each file's sha256 (LFS) or git blob sha1 / size, move it
     into place atomically and record it in the manifest as it completes.
A file whose hash does not match is deleted and fetched again, up to INTEGRITY_ATTEMPTS downloads, then the
pull fails with exit 3 naming it. Ctrl-C, a network failure or a crash keeps every complete file and every
partial one; the next pull continues where this one stopped.
"""

from __future__ import annotations

import fnmatch
import os
import shutil
import socket
import threading
import time
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Iterator

from angelcli import aliases, hub, store, transfer
from angelcli.console import log
from angelcli.errors import AngelError, IntegrityError, ResourceError, UsageError
from angelcli.pull_progress import PullProgress, human_bytes, human_duration

SOURCES = ("auto", "hf", "modelscope")
MIN_MARGIN = 1 << 30  # free disk kept beyond the download: 1 GiB ...
MARGIN_FRACTION = 0.02  # ... or 2 % of the download, whichever is larger
INTEGRITY_ATTEMPTS = 3  # downloads of one file before a hash mismatch is final
RETRIES = 5  # transient-failure retries per file without progress
_HOST_PREFIXES = {"hf.co/": "hf", "huggingface.co/": "hf", "modelscope.cn/": "modelscope", "ms://": "modelscope"}


def free_bytes(path: Path) -> int:
    """Free bytes on the filesystem that holds `path` (or would, for a directory not created yet)."""
    p = Path(path)
    while not p.exists() and p != p.parent:
        p = p.parent
    return shutil.disk_usage(p).free


def disk_margin(needed: int) -> int:
    return max(MIN_MARGIN, int(needed * MARGIN_FRACTION)) if needed else 0


@dataclass(frozen=True)
class Target:
    repo_id: str
    alias: aliases.Alias | None
    source_hint: str | None  # from a hf.co/ or modelscope.cn/ prefix


def parse_model(name: str) -> Target:
    """MODEL argument -> repo id. UsageError for anything that is neither an alias nor org/name."""
    text = name.strip()
    hint = None
    for prefix, src in _HOST_PREFIXES.items():
        if text.lower().startswith(prefix):
            text, hint = text[len(prefix):], src
            break
    if text.lower() == "angel-tiny":
        raise UsageError("angel-tiny is embedded in angel; there is nothing to pull")
    repo = aliases.resolve_repo_id(text)
    if repo is None:
        known = ", ".join(aliases.ALIASES)
        raise UsageError(f"MODEL '{name}' is neither an alias ({known}) nor a hub id of the form org/name")
    return Target(repo, aliases.find_alias(text) or aliases.alias_for_repo(repo), hint)


def select_files(files: Iterable[Any], include: Iterable[str] = (), exclude: Iterable[str] = ()) -> list[Any]:
    """Files whose .path matches any --include glob (all when none) and no --exclude glob (fnmatch, like hf).

    A pattern ending in '/' means everything under that folder.
    """
    def norm(patterns: Iterable[str]) -> list[str]:
        return [p + "*" if p.endswith("/") else p for p in patterns if p]

    inc, exc = norm(include), norm(exclude)
    return [f for f in files
            if (not inc or any(fnmatch.fnmatch(f.path, p) for p in inc))
            and not any(fnmatch.fnmatch(f.path, p) for p in exc)]


def choose_source(requested: str, target: Target) -> str:
    """hf | modelscope. auto: a host prefix decides; HF_ENDPOINT means hf; without the ModelScope SDK, hf;
    otherwise the endpoint that answers a HEAD request faster."""
    if requested not in SOURCES:
        raise UsageError(f"--source must be one of {', '.join(SOURCES)} (got '{requested}')")
    if requested != "auto":
        return requested
    if target.source_hint:
        return target.source_hint
    if os.environ.get("HF_ENDPOINT") or not hub.modelscope_available():
        return "hf"
    with ThreadPoolExecutor(2) as pool:
        hf_f = pool.submit(hub.probe_latency, hub.hf_endpoint())
        ms_f = pool.submit(hub.probe_latency, hub.ms_endpoint())
        hf_s, ms_s = hf_f.result(), ms_f.result()
    pick = "modelscope" if ms_s is not None and (hf_s is None or ms_s < hf_s) else "hf"
    fmt = lambda s: "unreachable" if s is None else f"{s * 1000:.0f} ms"  # noqa: E731
    log(f"angel: source auto: huggingface {fmt(hf_s)}, modelscope {fmt(ms_s)} -> {pick}")
    return pick


def _list_remote(src: str, target: Target, revision: str | None) -> hub.RemoteRepo:
    if src == "modelscope":
        ms_id = target.alias.ms_repo_id if target.alias else target.repo_id
        return hub.list_modelscope(ms_id, revision)
    return hub.list_hf(target.repo_id, revision)


@dataclass
class FilePlan:
    rf: hub.RemoteFile
    action: str  # skip | verify | resume | download | refetch
    have: int = 0  # bytes already in the partial file

    @property
    def to_fetch(self) -> int:
        return self.rf.size - self.have if self.action in ("resume", "download", "refetch") else 0


def _same_content(rec: store.FileRecord | None, rf: hub.RemoteFile) -> bool:
    return rec is not None and rec.size == rf.size and rec.sha256 == rf.sha256 and rec.git_sha1 == rf.git_sha1


def partial_path(model_dir: Path, rf: hub.RemoteFile) -> Path:
    return model_dir / store.PARTIAL_DIR / f"{rf.content_key}.partial"


def plan_files(model_dir: Path, selected: list[hub.RemoteFile], records: dict[str, store.FileRecord]) -> list[FilePlan]:
    plans = []
    for rf in selected:
        final, rec = model_dir / rf.path, records.get(rf.path)
        try:
            st = final.stat()
        except OSError:
            part = partial_path(model_dir, rf)
            have = part.stat().st_size if part.is_file() else 0
            plans.append(FilePlan(rf, "resume" if 0 < have <= rf.size else "download", have if have <= rf.size else 0))
            continue
        if _same_content(rec, rf) and rec.mtime_ns == st.st_mtime_ns and st.st_size == rf.size:
            plans.append(FilePlan(rf, "skip"))
        elif st.st_size == rf.size:
            plans.append(FilePlan(rf, "verify"))
        else:
            plans.append(FilePlan(rf, "refetch"))
    return plans


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


@contextmanager
def pull_lock(model_dir: Path) -> Iterator[None]:
    """One pull per directory. O_EXCL lock file (flock is unreliable on NFS/Lustre, spec cli-ux §2.8)."""
    path, me = model_dir / store.LOCK_NAME, f"{socket.gethostname()}:{os.getpid()}"
    for _ in range(2):
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            try:
                owner = path.read_text().strip()
            except OSError:
                owner = ""
            host, _, pid = owner.partition(":")
            if host == socket.gethostname() and pid.isdigit() and not _pid_alive(int(pid)):
                path.unlink(missing_ok=True)  # stale lock of a process that died on this host
                continue
            raise UsageError(f"another pull ({owner or 'unknown'}) is writing {model_dir}; if none is running, "
                             f"delete {path}") from None
        os.write(fd, me.encode())
        os.close(fd)
        break
    try:
        yield
    finally:
        path.unlink(missing_ok=True)


def _offline_report(target: Target, existing: store.Manifest | None, revision: str | None,
                    include: list[str], exclude: list[str]) -> dict[str, Any]:
    """HF_HUB_OFFLINE: succeed only when the store already holds what was asked for."""
    hint = "unset HF_HUB_OFFLINE to download"
    if existing is None:
        raise ResourceError(f"HF_HUB_OFFLINE is set and {target.repo_id} is not in the store; {hint}")
    if revision and revision not in (existing.revision, existing.commit) and not (existing.commit or "").startswith(revision):
        raise ResourceError(f"HF_HUB_OFFLINE is set and the store has {target.repo_id}@{(existing.commit or '?')[:12]}, "
                            f"not '{revision}'; {hint}")
    wanted = select_files(existing.files, include, exclude)
    absent = set(store.missing_files(existing))
    missing = [f.path for f in wanted if f.path in absent]
    if missing or not wanted or not existing.complete:
        raise ResourceError(f"HF_HUB_OFFLINE is set and {target.repo_id} is incomplete in the store "
                            f"({len(missing)} of {len(wanted)} files missing{', e.g. ' + missing[0] if missing else ''}); "
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
        remote = _list_remote(src, target, revision)
    except AngelError as err:
        if source != "auto" or src != "modelscope":
            raise
        log(f"angel: modelscope: {err}; trying huggingface")
        src, remote = "hf", _list_remote("hf", target, revision)
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
    same_commit = same_dir and existing.commit == remote.commit
    records = dict(old) if same_commit else {}
    for rf in selected:
        rec = old.get(rf.path)
        records[rf.path] = rec if _same_content(rec, rf) else store.FileRecord(rf.path, rf.size, rf.sha256, rf.git_sha1)
    remote_paths = {rf.path for rf in remote.files}
    stale = [] if same_commit else [p for p in old if p not in records or p not in remote_paths]
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
        fetched = _run(manifest, remote, plans, max_workers=max_workers, quiet=quiet)
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
    import json

    try:
        cfg = json.loads((model_dir / "config.json").read_text("utf-8"))
    except (OSError, ValueError):
        return False
    return "speculators_model_type" in cfg or any("Eagle3" in str(a) for a in cfg.get("architectures") or ())


def _run(manifest: store.Manifest, remote: hub.RemoteRepo, plans: list[FilePlan], *, max_workers: int,
         quiet: bool) -> int:
    """Download / verify every non-skipped plan; returns bytes received. Raises the worst failure at the end."""
    todo = [p for p in plans if p.action != "skip"]
    if not todo:
        return 0
    model_dir = manifest.dir
    cancel, mlock = threading.Event(), threading.Lock()
    received = [0]
    headers = hub.hf_headers() if remote.source == "hf" else {}
    total = sum(p.rf.size for p in todo)

    def record_done(rf: hub.RemoteFile) -> None:
        with mlock:
            rec = manifest.record(rf.path)
            rec.mtime_ns = (model_dir / rf.path).stat().st_mtime_ns
            store.save_manifest(manifest)

    def expected(rf: hub.RemoteFile) -> tuple[str | None, str]:
        return (rf.sha256, "sha256") if rf.sha256 else (rf.git_sha1, "git sha1") if rf.git_sha1 else (None, "size")

    def work(plan: FilePlan, prog: PullProgress) -> None:
        rf = plan.rf
        want, kind = expected(rf)
        final, part = model_dir / rf.path, partial_path(model_dir, rf)
        prog.start_file(rf.path, rf.size)
        if plan.action == "verify":
            got = transfer.hash_file(final, rf.sha256, rf.git_sha1, rf.size, lambda n: prog.advance(rf.path, n, resumed=True))
            if want is None or got == want:
                record_done(rf)
                prog.finish_file(rf.path, "verified existing")
                return
            prog.advance(rf.path, -rf.size, resumed=True)
            prog.warn(f"{rf.path}: {kind} of the file on disk is {got[:12]}…, expected {want[:12]}…; fetching it again")
        got = None
        for attempt in range(1, INTEGRITY_ATTEMPTS + 1):
            if cancel.is_set():
                raise transfer.Cancelled(rf.path)
            got, size = _fetch_one(remote, rf, part, headers, prog, cancel, received)
            if size == rf.size and (want is None or got == want):
                final.parent.mkdir(parents=True, exist_ok=True)
                os.replace(part, final)
                record_done(rf)
                prog.finish_file(rf.path, f"{kind} ok" if want else "size ok")
                return
            part.unlink(missing_ok=True)
            prog.advance(rf.path, -size, resumed=True)
            what = f"{kind} {got[:12] if got else '?'}…, expected {want[:12]}…" if size == rf.size else \
                f"{size} bytes, expected {rf.size}"
            if attempt < INTEGRITY_ATTEMPTS:
                prog.warn(f"{rf.path}: downloaded copy is corrupt ({what}); fetching it again "
                          f"({attempt + 1}/{INTEGRITY_ATTEMPTS})")
            else:
                raise IntegrityError(f"{rf.path}: corrupt in {INTEGRITY_ATTEMPTS} downloads ({what}); the copy on "
                                     f"{remote.endpoint} or a proxy on the way is bad, nothing was accepted")

    errors: list[BaseException] = []
    with PullProgress(total, quiet=quiet) as prog:
        pool = ThreadPoolExecutor(max_workers=max_workers, thread_name_prefix="angel-pull")
        futures = {pool.submit(work, p, prog): p for p in todo}
        try:
            pending = set(futures)
            while pending:
                finished, pending = wait(pending, timeout=0.25, return_when=FIRST_COMPLETED)
                errors.extend(f.exception() for f in finished if f.exception() is not None)
        except KeyboardInterrupt:
            cancel.set()
            _close_connections()  # unblock workers waiting in a socket read
            pool.shutdown(wait=True, cancel_futures=True)
            prog.message("interrupted; complete and partial files are kept, rerun to resume")
            raise
        pool.shutdown(wait=True)
    if errors:
        worst = next((e for e in errors if isinstance(e, IntegrityError)), errors[0])
        more = f" ({len(errors) - 1} more file(s) failed too)" if len(errors) > 1 else ""
        if isinstance(worst, AngelError):
            raise type(worst)(f"{worst}{more}", worst.exit_code) from None
        if isinstance(worst, OSError):
            raise ResourceError(f"{getattr(worst, 'filename', '') or 'pull'}: {worst.strerror or worst}{more}") from None
        raise worst
    return received[0]


def _close_connections() -> None:
    try:
        from huggingface_hub.utils import close_session

        close_session()
    except Exception:  # noqa: BLE001 - best effort while interrupting
        pass


def _fetch_one(remote: hub.RemoteRepo, rf: hub.RemoteFile, part: Path, headers: dict[str, str], prog: PullProgress,
               cancel: threading.Event, received: list[int]) -> tuple[str | None, int]:
    """One download of `rf` into `part`; returns (digest, size on disk)."""
    def on_bytes(n: int, resumed: bool) -> None:
        if not resumed:
            received[0] += n
        prog.advance(rf.path, n, resumed=resumed)

    if remote.source == "hf":
        url = hub.hf_file_url(remote.repo_id, remote.commit, rf.path, remote.endpoint)
        res = transfer.fetch(url, part, size=rf.size, sha256=rf.sha256, git_sha1=rf.git_sha1, headers=headers,
                             label=rf.path, on_bytes=on_bytes, on_retry=prog.message, cancel=cancel, retries=RETRIES)
        return res.digest, part.stat().st_size
    # ModelScope: its SDK downloads (with its own ranged/parallel logic) into a staging dir; angel re-hashes.
    staging = part.parent / "modelscope"
    last: Exception | None = None
    for attempt in range(1, RETRIES + 1):
        try:
            got_path = Path(hub.modelscope_download(remote.repo_id, remote.commit, rf, str(staging)))
            break
        except AngelError:
            raise
        except Exception as err:  # noqa: BLE001 - SDK errors vary by version; retried, then reported
            last = err
            prog.message(f"{rf.path}: modelscope: {str(err).splitlines()[0] if str(err) else type(err).__name__}; "
                         f"retry {attempt}/{RETRIES}")
            transfer._sleep(transfer.RETRY_WAIT_S * attempt, cancel)
    else:
        raise ResourceError(f"{rf.path}: ModelScope download failed after {RETRIES} tries ({last})")
    part.parent.mkdir(parents=True, exist_ok=True)
    os.replace(got_path, part)
    received[0] += rf.size
    digest = transfer.hash_file(part, rf.sha256, rf.git_sha1, rf.size, lambda n: prog.advance(rf.path, n))
    return digest, part.stat().st_size
