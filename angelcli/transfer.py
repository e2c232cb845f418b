"""Resumable, hashed download of one file over plain HTTP(S), on huggingface_hub's shared httpx session.

Why not hf_hub_download: since huggingface_hub's PR #4306 (June 2026) a partly downloaded file is deleted when
a process fails, so a 10 GB shard cut at 9.9 GB restarts from zero on the next run, and its integrity check is
size only (spec cli-ux §2.3–2.4). Here the partial file has a stable name derived from the expected content
hash (`<model>/.angel-partial/<sha256>.partial`), survives crashes and reboots, and is continued with an HTTP
Range request on the next attempt or the next run. Bytes are hashed while they are written (the existing
prefix is hashed once on resume), so verification costs no second read of a 10 GB file.

Range semantics: 206 continues the file; 200 to a Range request means the server ignored it, so the partial
is truncated and the file starts over; 416 means the partial is already complete (or longer than the file).
Transient failures (connection reset, timeout, cut body, 408/429/5xx) are retried with exponential backoff,
each retry reported through `on_retry`; the retry budget resets whenever new bytes arrived.
"""

from __future__ import annotations

import hashlib
import os
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from angelcli.errors import IntegrityError, ResourceError

CHUNK = 1 << 20
TRANSIENT_STATUS = {408, 429, 500, 502, 503, 504}
RETRY_WAIT_S = 1.0  # first backoff; doubles up to RETRY_WAIT_MAX_S (tests set 0)
RETRY_WAIT_MAX_S = 30.0


class Cancelled(Exception):
    """The pull was interrupted (Ctrl-C); the partial file is kept for the next run."""


@dataclass
class FetchResult:
    digest: str | None  # hex digest of the kind the caller asked for (None: size-only check)
    resumed_from: int  # bytes that were already on disk when this fetch started
    fetched: int  # bytes received over the network by this fetch


def new_hasher(sha256: str | None, git_sha1: str | None, size: int):
    """sha256 for LFS files; git's blob sha1 ('blob <size>\\0' + content) for small git files; else None."""
    if sha256:
        return hashlib.sha256()
    if git_sha1:
        h = hashlib.sha1()
        h.update(f"blob {size}\0".encode())
        return h
    return None


def hash_file(path: Path, sha256: str | None, git_sha1: str | None, size: int,
              on_bytes: Callable[[int], None] | None = None) -> str | None:
    """Digest of an existing file, of the same kind new_hasher() picks."""
    h = new_hasher(sha256, git_sha1, size)
    if h is None:
        return None
    with open(path, "rb") as fh:
        while chunk := fh.read(8 * CHUNK):
            h.update(chunk)
            if on_bytes:
                on_bytes(len(chunk))
    return h.hexdigest()


def read_timeout() -> float:
    try:
        return float(os.environ.get("HF_HUB_DOWNLOAD_TIMEOUT") or 30)
    except ValueError:
        return 30.0


class _Transient(Exception):
    pass


def fetch(url: str, partial: Path, *, size: int, sha256: str | None = None, git_sha1: str | None = None,
          headers: dict[str, str] | None = None, label: str = "",
          on_bytes: Callable[[int, bool], None] = lambda n, resumed: None,
          on_retry: Callable[[str], None] = lambda msg: None,
          cancel: threading.Event | None = None, retries: int = 5) -> FetchResult:
    """Bring `partial` to `size` bytes from `url`, resuming what is there; return its digest.

    on_bytes(n, resumed) reports progress: resumed=True for bytes found on disk and for discarded bytes (negative
    n), False for bytes received now. Raises Cancelled, ResourceError (retries exhausted, hub error) or
    IntegrityError (the server keeps sending a different size). The digest is NOT compared here: the caller
    decides what a mismatch means.
    """
    import httpx
    from huggingface_hub.utils import get_session, hf_raise_for_status

    label = label or partial.name
    partial.parent.mkdir(parents=True, exist_ok=True)
    have = partial.stat().st_size if partial.exists() else 0
    if have > size:  # cannot be a prefix of this content
        partial.unlink()
        have = 0
    hasher = new_hasher(sha256, git_sha1, size)
    if hasher is not None and have:
        with open(partial, "rb") as fh:
            while chunk := fh.read(8 * CHUNK):
                hasher.update(chunk)
    resumed_from, fetched = have, 0
    on_bytes(have, True)
    failures, wait = 0, RETRY_WAIT_S
    size_problem: str | None = None
    timeout = httpx.Timeout(read_timeout(), connect=min(10.0, read_timeout()))

    with open(partial, "ab") as out:

        def restart(reason: str) -> None:
            nonlocal have, hasher
            on_bytes(-have, True)
            out.flush()
            out.truncate(0)
            have = 0
            hasher = new_hasher(sha256, git_sha1, size)
            on_retry(f"{label}: {reason}; starting the file over")

        while have < size:  # an empty file needs no request: its digest is that of b""
            if cancel is not None and cancel.is_set():
                raise Cancelled(label)
            req = dict(headers or {})
            req["Accept-Encoding"] = "identity"  # sizes and Range offsets are of the stored bytes
            if have:
                req["Range"] = f"bytes={have}-"
            got_this_try = 0
            try:
                with get_session().stream("GET", url, headers=req, timeout=timeout) as resp:
                    if resp.status_code == 416:
                        size_problem = f"server refuses Range bytes={have}- (its file is shorter than {size})"
                        restart(size_problem)
                        raise _Transient(size_problem)
                    if resp.status_code in TRANSIENT_STATUS:
                        raise _Transient(f"HTTP {resp.status_code}")
                    hf_raise_for_status(resp)
                    if have and resp.status_code == 200:
                        restart("server ignored the Range request")
                    for chunk in resp.iter_bytes():  # as received: a cut connection loses nothing already read
                        if cancel is not None and cancel.is_set():
                            raise Cancelled(label)
                        if have + len(chunk) > size:
                            size_problem = f"server sends more than the {size} bytes the hub lists"
                            restart(size_problem)
                            raise _Transient(size_problem)
                        out.write(chunk)
                        if hasher is not None:
                            hasher.update(chunk)
                        have += len(chunk)
                        fetched += len(chunk)
                        got_this_try += len(chunk)
                        on_bytes(len(chunk), False)
                    out.flush()
                    if have < size:
                        raise _Transient(f"connection closed at {have} of {size} bytes")
            except (_Transient, httpx.TransportError) as err:
                out.flush()  # the file on disk holds exactly `have` bytes before any retry
                if cancel is not None and cancel.is_set():
                    raise Cancelled(label) from None  # the interrupt closed the connection: not a failure
                if got_this_try:
                    failures, wait = 0, RETRY_WAIT_S  # progress was made: a fresh retry budget
                    size_problem = None
                failures += 1
                if failures > retries:
                    if size_problem:
                        raise IntegrityError(f"{label}: {size_problem}, {retries} retries") from None
                    raise ResourceError(f"{label}: download failed after {retries} retries ({_one_line(err)}); "
                                        f"{have} bytes kept, rerun to resume") from None
                on_retry(f"{label}: {_one_line(err)}; retry {failures}/{retries} in {wait:g}s from byte {have}")
                sleep_or_cancel(wait, cancel)
                wait = min(wait * 2, RETRY_WAIT_MAX_S)
                continue
            except Cancelled:
                out.flush()
                raise
            except httpx.HTTPError as err:  # HfHubHTTPError from hf_raise_for_status: 4xx, not retryable
                raise ResourceError(f"{label}: {_one_line(err)}") from None
        out.flush()
        os.fsync(out.fileno())
    return FetchResult(hasher.hexdigest() if hasher is not None else None, resumed_from, fetched)


def _one_line(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    return text[0] if text else type(err).__name__


def sleep_or_cancel(seconds: float, cancel: threading.Event | None) -> None:
    """Wait `seconds`; raise Cancelled at once if `cancel` is set meanwhile."""
    if cancel is not None:
        if cancel.wait(seconds):
            raise Cancelled("interrupted")
    elif seconds > 0:
        time.sleep(seconds)
