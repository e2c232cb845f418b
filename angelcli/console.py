"""Where output goes: data on stdout, progress and logs on stderr.

Long work shows a rich progress bar when stderr is a terminal and plain, rate-limited lines otherwise
(CI logs, pipes), so scripted batch jobs get readable logs instead of carriage-return noise.
"""

from __future__ import annotations

import json
import sys
import time
from contextlib import contextmanager
from typing import Any, Iterator

_quiet = False


def set_quiet(quiet: bool) -> None:
    global _quiet
    _quiet = quiet


def log(msg: str) -> None:
    """One line of progress or information on stderr (suppressed by --quiet)."""
    if not _quiet:
        print(msg, file=sys.stderr, flush=True)


def warn(msg: str) -> None:
    print(f"angel: warning: {msg}", file=sys.stderr, flush=True)


def _finite(obj: Any) -> Any:
    """NaN / inf -> None, recursively (bare NaN is not JSON; a consumer's parser would reject the line)."""
    if isinstance(obj, float):
        return obj if obj == obj and obj not in (float("inf"), float("-inf")) else None
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_finite(v) for v in obj]
    return obj


def emit_json(obj: Any) -> None:
    """Write one JSON document to stdout (one line, UTF-8, non-ASCII kept, always strict JSON)."""
    try:
        text = json.dumps(obj, ensure_ascii=False, allow_nan=False)
    except ValueError:
        text = json.dumps(_finite(obj), ensure_ascii=False, allow_nan=False)
    sys.stdout.write(text + "\n")
    sys.stdout.flush()


def stderr_is_tty() -> bool:
    try:
        return sys.stderr.isatty()
    except (AttributeError, ValueError):
        return False


class _PlainProgress:
    """Progress as plain lines: at most one line every `interval` seconds, plus the final one."""

    def __init__(self, description: str, total: float | None, unit: str, interval: float = 5.0):
        self.description, self.total, self.unit, self.interval = description, total, unit, interval
        self.done = 0.0
        self.start = time.monotonic()
        self.last = 0.0

    def advance(self, n: float = 1.0, note: str | None = None) -> None:
        self.done += n
        now = time.monotonic()
        if now - self.last >= self.interval or (self.total is not None and self.done >= self.total):
            self.last = now
            self._line(self._with_eta(note))

    def _with_eta(self, note: str | None) -> str | None:
        """Prefix the note with the estimated time left (while a total is known and not yet reached)."""
        rate = self.done / max(time.monotonic() - self.start, 1e-9)
        if self.total is None or not 0 < self.done < self.total or rate <= 0:
            return note
        left = int((self.total - self.done) / rate)
        eta = f"ETA {left // 3600}:{left // 60 % 60:02d}:{left % 60:02d}"
        return f"{eta} {note}" if note else eta

    def update(self, completed: float, note: str | None = None) -> None:
        self.advance(completed - self.done, note)

    def _line(self, note: str | None) -> None:
        elapsed = max(time.monotonic() - self.start, 1e-9)
        extra = f" {note}" if note else ""
        if self.unit == "B":  # bytes read as 21.3 MB, not 2.23455e+07 B
            from angelcli.pull_progress import human_bytes

            total = f"/{human_bytes(self.total)}" if self.total is not None else ""
            log(f"{self.description}: {human_bytes(self.done)}{total} ({human_bytes(self.done / elapsed)}/s){extra}")
            return
        total = f"/{self.total:g}" if self.total is not None else ""
        log(f"{self.description}: {self.done:g}{total} {self.unit} ({self.done / elapsed:.1f} {self.unit}/s){extra}")


class _RichProgress:
    def __init__(self, progress, task):
        self._p, self._t = progress, task

    def advance(self, n: float = 1.0, note: str | None = None) -> None:
        self._p.update(self._t, advance=n, **({"note": note} if note else {}))

    def update(self, completed: float, note: str | None = None) -> None:
        self._p.update(self._t, completed=completed, **({"note": note} if note else {}))


@contextmanager
def progress(description: str, total: float | None = None, unit: str = "it") -> Iterator[Any]:
    """Yield an object with advance(n, note=None) and update(completed, note=None)."""
    if _quiet:
        yield _PlainProgress(description, total, unit, interval=float("inf"))
        return
    if not stderr_is_tty():
        yield _PlainProgress(description, total, unit)
        return
    from rich.console import Console
    from rich.progress import (BarColumn, DownloadColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn,
                               TimeRemainingColumn, TransferSpeedColumn)

    # bytes as "1.2/4.5 GB 300 MB/s", everything else as "3/24"
    counts = (DownloadColumn(), TransferSpeedColumn()) if unit == "B" else (MofNCompleteColumn(),)
    with Progress(
        TextColumn("[bold]{task.description}"), BarColumn(), *counts, TimeElapsedColumn(),
        TimeRemainingColumn(), TextColumn("{task.fields[note]}"),
        console=Console(stderr=True), transient=False,
    ) as p:
        task = p.add_task(description, total=total, note="")
        yield _RichProgress(p, task)
