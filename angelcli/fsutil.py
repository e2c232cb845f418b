"""Crash-safe file writes: everything is written to a temporary name and renamed when complete.

A rename within one directory is atomic on POSIX, so a reader (or a resumed run) sees either the old file,
no file, or the complete new one; never a half-written shard. Temporary names start with '.' and end with
'.partial' so that `resume` logic and users can recognise and delete leftovers.
"""

from __future__ import annotations

import json
import os
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator


def partial_name(dest: Path) -> Path:
    return dest.with_name(f".{dest.name}.partial")


@contextmanager
def atomic_path(dest: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside `dest`; on success fsync and rename it to `dest`, else remove it."""
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = partial_name(dest)
    try:
        yield tmp
        with open(tmp, "rb") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, dest)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def atomic_write_bytes(dest: str | os.PathLike, data: bytes) -> None:
    with atomic_path(dest) as tmp:
        tmp.write_bytes(data)


def atomic_write_text(dest: str | os.PathLike, text: str) -> None:
    atomic_write_bytes(dest, text.encode("utf-8"))


def atomic_write_json(dest: str | os.PathLike, obj: Any) -> None:
    atomic_write_text(dest, json.dumps(obj, indent=2, ensure_ascii=False) + "\n")


def json_object_line(text: str, where: str) -> dict:
    """One JSON-lines record -> dict; UsageError (exit 2) naming `where` (e.g. "FILE:3") when it is not one."""
    from angelcli.errors import UsageError

    try:
        obj = json.loads(text)
    except json.JSONDecodeError as err:
        raise UsageError(f"{where}: not valid JSON ({err.msg} at column {err.colno})") from None
    if not isinstance(obj, dict):
        raise UsageError(f"{where}: each line must be a JSON object, got {type(obj).__name__}")
    return obj
