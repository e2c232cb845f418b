"""File checksums: the `checksums.sha256` file (sha256sum format) and parallel, streaming verification.

Where a model directory's expected digests come from (angelcli.verify.integrity picks):
  * the store manifest of a pulled model: the hub's sha256 of each LFS file, git's blob sha1 of small files;
  * `checksums.sha256` beside the files: written by `angel quantize` for every output file and by
    `angel verify DIR --write-checksums` for a local directory (lines "<64 hex>  <relative path>", the
    format `sha256sum -c` reads).

    write_checksums(dir, ["config.json", "model.safetensors"])
    read_checksums(dir / "checksums.sha256")                 -> {"config.json": "ab12...", ...}
    check_files(dir, [Expected("model.safetensors", 123, sha256="ab12...")])  -> [Mismatch(...)]

Hashing reads 8 MiB blocks (hashlib releases the GIL on them, so a thread pool uses several cores) and reports
bytes to a progress callback.
"""

from __future__ import annotations

import hashlib
import os
import re
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from angelcli.errors import IntegrityError
from angelcli.fsutil import atomic_write_text

CHECKSUMS_NAME = "checksums.sha256"
_BLOCK = 8 << 20
_LINE = re.compile(r"([0-9a-fA-F]{64}) [ *](.+)")


@dataclass
class Expected:
    path: str  # relative to the model directory, '/' separated
    size: int | None = None
    sha256: str | None = None
    git_sha1: str | None = None  # git blob id ("blob <size>\0" + content), what the HF hub lists for small files

    @property
    def kind(self) -> str:
        return "sha256" if self.sha256 else "git sha1" if self.git_sha1 else "size"


@dataclass
class Mismatch:
    path: str
    problem: str  # one line: "missing", "size 12 bytes, expected 14", "sha256 mismatch (...)"


def _stream_into(h, path: Path, on_bytes: Callable[[int], None] | None) -> str:
    """Feed the file to hash object `h` block by block (reporting progress) -> its hex digest."""
    with open(path, "rb") as fh:
        while block := fh.read(_BLOCK):
            h.update(block)
            if on_bytes:
                on_bytes(len(block))
    return h.hexdigest()


def sha256_file(path: Path, on_bytes: Callable[[int], None] | None = None) -> str:
    return _stream_into(hashlib.sha256(), path, on_bytes)


def _digest(path: Path, exp: Expected, on_bytes) -> str:
    if exp.sha256:
        return sha256_file(path, on_bytes)
    h = hashlib.sha1()  # git's blob id: what the hub lists for files that are not LFS
    h.update(f"blob {path.stat().st_size}\0".encode())
    return _stream_into(h, path, on_bytes)


def check_one(root: Path, exp: Expected, on_bytes=None) -> Mismatch | None:
    """Stat, then (when a digest is known) hash one file. None when it matches."""
    path = root / exp.path
    try:
        size = path.stat().st_size
    except FileNotFoundError:
        return Mismatch(exp.path, "missing")
    except OSError as err:
        return Mismatch(exp.path, f"unreadable ({err.strerror})")
    if exp.size is not None and size != exp.size:
        return Mismatch(exp.path, f"size {size:,} bytes, expected {exp.size:,}")
    if exp.kind == "size":
        return None
    want = (exp.sha256 or exp.git_sha1 or "").lower()
    try:
        got = _digest(path, exp, on_bytes)
    except OSError as err:
        return Mismatch(exp.path, f"unreadable ({err.strerror})")
    if got != want:
        return Mismatch(exp.path, f"{exp.kind} mismatch (expected {want[:12]}..., got {got[:12]}...): the file is "
                                  "corrupt")
    return None


def default_workers() -> int:
    return max(1, min(8, os.cpu_count() or 1))


def check_files(root: Path, expected: list[Expected], *, workers: int = 0,
                on_bytes: Callable[[int], None] | None = None) -> list[Mismatch]:
    """Check every file, `workers` at a time (0: one per core, at most 8); mismatches in the given order."""
    workers = workers or default_workers()
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="angel-hash") as pool:
        results = list(pool.map(lambda e: check_one(root, e, on_bytes), expected))
    return [m for m in results if m is not None]


def read_checksums(path: Path) -> dict[str, str]:
    """checksums.sha256 -> {relative path: sha256}. IntegrityError naming the line for a malformed one."""
    out: dict[str, str] = {}
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as err:
        raise IntegrityError(f"{path}: unreadable ({err})") from None
    for n, line in enumerate(text.splitlines(), 1):
        if not line.strip() or line.startswith("#"):
            continue
        m = _LINE.fullmatch(line.rstrip("\r"))
        if m is None:
            raise IntegrityError(f"{path}:{n}: not a sha256sum line (expected '<64 hex digits>  <file name>')")
        name = m[2]
        if name.startswith("/") or ".." in Path(name).parts:
            raise IntegrityError(f"{path}:{n}: {name!r} is outside the model directory")
        out[name] = m[1].lower()
    return out


def listed_files(root: Path) -> list[str]:
    """Every regular file under `root` that a checksum file should cover (angel's own state and hidden files
    left out), '/' separated, sorted."""
    out = []
    for p in sorted(root.rglob("*")):
        rel = p.relative_to(root)
        if not p.is_file() or any(part.startswith(".") for part in rel.parts) or rel.as_posix() == CHECKSUMS_NAME:
            continue
        out.append(rel.as_posix())
    return out


def write_checksums(root: Path, names: list[str] | None = None, *, workers: int = 0,
                    on_bytes: Callable[[int], None] | None = None, extra: dict[str, str] | None = None) -> Path:
    """Hash `names` (default: listed_files) and write root/checksums.sha256 atomically; returns its path.
    extra: {name: sha256} of files about to be written (their digest is known from their bytes)."""
    names = listed_files(root) if names is None else list(names)
    names = sorted(n for n in names if n not in (extra or {}))
    workers = workers or default_workers()
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="angel-hash") as pool:
        digests = dict(zip(names, pool.map(lambda n: sha256_file(root / n, on_bytes), names)))
    digests.update(extra or {})
    dest = root / CHECKSUMS_NAME
    atomic_write_text(dest, "".join(f"{digests[n]}  {n}\n" for n in sorted(digests)))
    return dest
