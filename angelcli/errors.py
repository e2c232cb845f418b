"""Errors that the CLI turns into one line on stderr and a documented exit code.

Library code raises these instead of calling sys.exit, so the same functions are usable from Python and
tests can assert on the exit code without a subprocess. The codes are part of angel's interface:

    0   ok
    1   a check failed (verify found a violation, a comparison was out of bounds)
    2   usage error (bad flag, missing file, malformed input)
    3   verification / integrity failure (corrupt shard, checksum mismatch)
    4   not enough resources (disk, memory, GPUs)
    130 interrupted (Ctrl-C); work already finished is kept and a rerun resumes
"""

from __future__ import annotations

EXIT_OK = 0
EXIT_CHECK_FAILED = 1
EXIT_USAGE = 2
EXIT_INTEGRITY = 3
EXIT_RESOURCES = 4
EXIT_INTERRUPTED = 130


class AngelError(Exception):
    """Base class: `str(err)` is the whole one-line message; `exit_code` is what the CLI returns."""

    exit_code = EXIT_USAGE

    def __init__(self, message: str, exit_code: int | None = None):
        super().__init__(message)
        if exit_code is not None:
            self.exit_code = exit_code


class UsageError(AngelError):
    """Bad flag, missing path, malformed file or config field. Exit 2."""

    exit_code = EXIT_USAGE


class CheckFailed(AngelError):
    """A check that the user asked for did not pass. Exit 1."""

    exit_code = EXIT_CHECK_FAILED


class IntegrityError(AngelError):
    """Truncated or corrupt file, checksum or size mismatch. Exit 3."""

    exit_code = EXIT_INTEGRITY


class ResourceError(AngelError):
    """Not enough disk, memory or GPUs for the job. Exit 4."""

    exit_code = EXIT_RESOURCES
