"""MODEL arguments -> a local checkpoint directory.

Accepted forms, in order: nothing or "angel-tiny" (the embedded default model), an existing path, a name or
alias known to the local store (angelcli/store.py, filled by `angel pull`).
"""

from __future__ import annotations

import os
from pathlib import Path

from angelcli.errors import IntegrityError, UsageError

TINY_NAME = "angel-tiny"
TINY_DIR = Path(__file__).resolve().parent / "assets" / "angel-tiny"


def angel_home() -> Path:
    """The local store and cache root: $ANGEL_HOME, default ~/.cache/angel."""
    return Path(os.environ.get("ANGEL_HOME") or Path.home() / ".cache" / "angel")


def tiny_path() -> Path:
    """The embedded angel-tiny checkpoint (shipped inside the package)."""
    if not (TINY_DIR / "config.json").exists():
        raise IntegrityError(f"{TINY_DIR}: the embedded angel-tiny is missing from this installation (reinstall angel)")
    return TINY_DIR


def resolve_model(spec: str | os.PathLike | None) -> Path:
    """Return the checkpoint directory for MODEL; UsageError with a hint when nothing matches."""
    if spec is None or str(spec) in ("", TINY_NAME):
        return tiny_path()
    path = Path(spec).expanduser()
    if path.exists():
        if path.is_file() and path.name == "config.json":
            path = path.parent
        if not path.is_dir():
            raise UsageError(f"{path}: MODEL must be a directory with config.json and *.safetensors")
        if not (path / "config.json").exists():
            raise UsageError(f"{path}: no config.json in this directory")
        return path
    try:
        from angelcli import store
    except ImportError:
        store = None
    if store is not None and hasattr(store, "lookup"):
        found = store.lookup(str(spec))
        if found is not None:
            return Path(found)
    raise UsageError(f"model '{spec}' not found: not a path and not in the local store "
                     f"({angel_home()}); try `angel pull {spec}` or `angel list`")
