"""Execution half of `angel pull`: download or verify the planned files in parallel, accept only good ones.

Each worker brings one file to its final place: hash an unrecorded existing file (verify), or fetch it into its
content-named partial (angelcli.transfer for Hugging Face, the ModelScope SDK otherwise), compare the digest,
and rename it over the final path. A mismatch deletes the partial and fetches again, up to INTEGRITY_ATTEMPTS
downloads; then IntegrityError (exit 3). The manifest records each file as soon as it is in place, so an
interrupted pull loses nothing that finished. Errors of one file do not stop the others; the worst one is raised
at the end (integrity first).
"""

from __future__ import annotations

import os
import threading
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait
from pathlib import Path

from angelcli import hub, store, transfer
from angelcli.errors import AngelError, IntegrityError, ResourceError
from angelcli.pull_plan import FilePlan, partial_path
from angelcli.pull_progress import PullProgress

INTEGRITY_ATTEMPTS = 3  # downloads of one file before a hash mismatch is final
RETRIES = 5  # transient-failure retries per file without progress


def run_downloads(manifest: store.Manifest, remote: hub.RemoteRepo, plans: list[FilePlan], *, max_workers: int,
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
            got = transfer.hash_file(final, rf.sha256, rf.git_sha1, rf.size,
                                     lambda n: prog.advance(rf.path, n, resumed=True))
            if want is None or got == want:
                record_done(rf)
                prog.finish_file(rf.path, "verified existing")
                return
            prog.advance(rf.path, -rf.size, resumed=True)
            prog.warn(f"{rf.path}: {kind} of the file on disk is {got[:12]}…, expected {want[:12]}…; "
                      f"fetching it again")
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
            where = getattr(worst, "filename", "") or "pull"
            raise ResourceError(f"{where}: {worst.strerror or worst}{more}") from None
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
            transfer.sleep_or_cancel(transfer.RETRY_WAIT_S * attempt, cancel)
    else:
        raise ResourceError(f"{rf.path}: ModelScope download failed after {RETRIES} tries ({last})")
    part.parent.mkdir(parents=True, exist_ok=True)
    os.replace(got_path, part)
    received[0] += rf.size
    digest = transfer.hash_file(part, rf.sha256, rf.git_sha1, rf.size, lambda n: prog.advance(rf.path, n))
    return digest, part.stat().st_size
