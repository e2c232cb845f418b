"""Planning half of `angel pull`: what MODEL means, which files, from where, and what each file needs.

parse_model turns an alias, `org/name` or `hf.co/` / `modelscope.cn/` prefixed name into a repo id;
select_files applies --include / --exclude; choose_source settles --source auto; plan_files decides per file
whether it is complete (skip), present but unrecorded (verify), partly downloaded (resume), absent (download)
or present and wrong (refetch); pull_lock keeps two pulls out of one directory.
"""

from __future__ import annotations

import fnmatch
import os
import socket
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Iterator

from angelcli import aliases, hub, store
from angelcli.console import log
from angelcli.errors import UsageError

SOURCES = ("auto", "hf", "modelscope")
_HOST_PREFIXES = {"hf.co/": "hf", "huggingface.co/": "hf", "modelscope.cn/": "modelscope", "ms://": "modelscope"}


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


def list_remote(src: str, target: Target, revision: str | None) -> hub.RemoteRepo:
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


def same_content(rec: store.FileRecord | None, rf: hub.RemoteFile) -> bool:
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
        if same_content(rec, rf) and rec.mtime_ns == st.st_mtime_ns and st.st_size == rf.size:
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
