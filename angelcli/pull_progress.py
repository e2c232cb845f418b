"""Download progress for `angel pull`, on stderr.

On a terminal: rich bars, one for the total (bytes, speed, ETA) and one per file while it is active; retry and
integrity messages print above the bars. Otherwise (CI logs, pipes): plain lines, at most one status line every
`interval` seconds plus one line per finished file, so batch logs stay readable. --quiet prints nothing but
warnings. Thread-safe: workers report from a thread pool.
"""

from __future__ import annotations

import threading
import time
from typing import Any

from angelcli import console


def human_bytes(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if abs(n) < 1000 or unit == "TB":
            return f"{n:.1f} {unit}" if unit != "B" else f"{int(n)} B"
        n /= 1000
    return f"{n:.1f} TB"  # pragma: no cover


def human_duration(seconds: float) -> str:
    seconds = int(seconds)
    h, rest = divmod(seconds, 3600)
    m, s = divmod(rest, 60)
    return f"{h}h{m:02d}m" if h else f"{m}m{s:02d}s"


class PullProgress:
    """Report bytes per file and in total. Use as a context manager."""

    def __init__(self, total_bytes: int, *, quiet: bool = False, interval: float = 5.0, tty: bool | None = None):
        self.total = total_bytes
        self.quiet = quiet
        self.interval = interval
        self.tty = console.stderr_is_tty() if tty is None else tty
        self._lock = threading.Lock()
        self._done = 0
        self._fresh = 0  # bytes received in this run (speed excludes resumed bytes)
        self._start = time.monotonic()
        self._last_line = self._start  # first status line after `interval`; short pulls print only file lines
        self._active: dict[str, Any] = {}
        self._rich = None
        self._total_task = None

    def __enter__(self) -> "PullProgress":
        if self.tty and not self.quiet:
            from rich.console import Console
            from rich.progress import (BarColumn, DownloadColumn, Progress, TextColumn, TimeRemainingColumn,
                                       TransferSpeedColumn)

            self._rich = Progress(
                TextColumn("{task.description}", justify="left"), BarColumn(), DownloadColumn(),
                TransferSpeedColumn(), TimeRemainingColumn(), console=Console(stderr=True), transient=False,
            )
            self._rich.start()
            self._total_task = self._rich.add_task("[bold]total", total=self.total)
        return self

    def __exit__(self, *exc: object) -> None:
        if self._rich is not None:
            self._rich.stop()
        elif not self.quiet and self._fresh:
            self._status_line(force=True)

    def start_file(self, path: str, size: int) -> None:
        with self._lock:
            if self._rich is not None:
                name = path if len(path) <= 40 else "…" + path[-39:]
                self._active[path] = self._rich.add_task(f"  {name}", total=size)
            else:
                self._active[path] = 0

    def advance(self, path: str, n: int, *, resumed: bool = False) -> None:
        """n bytes more of `path` (negative: discarded); `resumed` bytes were on disk before this run."""
        with self._lock:
            self._done += n
            if not resumed:
                self._fresh += n
            if self._rich is not None:
                task = self._active.get(path)
                if task is not None:
                    self._rich.update(task, advance=n)
                self._rich.update(self._total_task, advance=n)
        if self._rich is None and not self.quiet:
            self._status_line()

    def finish_file(self, path: str, note: str) -> None:
        with self._lock:
            task = self._active.pop(path, None)
            if self._rich is not None and task is not None:
                self._rich.remove_task(task)
        self.message(f"{path}: {note}")

    def message(self, text: str) -> None:
        """A line above the bars (TTY) or a plain log line; suppressed by --quiet."""
        if self.quiet:
            return
        if self._rich is not None:
            self._rich.console.print(f"angel: {text}", markup=False, highlight=False)
        else:
            console.log(f"angel: {text}")

    def warn(self, text: str) -> None:
        """Like message() but also shown with --quiet (retries, corrupt files)."""
        if self._rich is not None:
            self._rich.console.print(f"angel: warning: {text}", markup=False, highlight=False)
        else:
            console.warn(text)

    def _status_line(self, force: bool = False) -> None:
        now = time.monotonic()
        with self._lock:
            if not force and now - self._last_line < self.interval:
                return
            self._last_line = now
            done, fresh, active = self._done, self._fresh, len(self._active)
        elapsed = max(now - self._start, 1e-9)
        speed = fresh / elapsed
        pct = 100.0 * done / self.total if self.total else 100.0
        eta = human_duration((self.total - done) / speed) if speed > 0 and done < self.total else "-"
        console.log(f"angel: pull {human_bytes(done)} / {human_bytes(self.total)} ({pct:.1f}%), "
                    f"{human_bytes(speed)}/s, ETA {eta}, {active} active")
