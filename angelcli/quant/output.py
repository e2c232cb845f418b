"""The output directory of `angel quantize`: source identity, resume/replace state, side files, index.

An output directory is either absent or empty (fresh), an interrupted run (`.angel-quant/state.json` with the
same fingerprint: resume), a finished one (`manifest.json` whose fingerprint matches and whose files are intact:
up to date, nothing to do), or something else: another angel output is replaced only with --force, and a
directory that is not an angel output is never touched. The fingerprint is the source's (sha256 over config.json
and every shard header) plus the options that change the result.
"""

from __future__ import annotations

import hashlib
import json
import re
import shutil
from pathlib import Path

from angelcli.errors import UsageError
from angelcli.fsutil import atomic_path, atomic_write_json
from angelcli.quant.stream import STATE_DIR

MANIFEST_NAME = "manifest.json"
MANIFEST_FORMAT = "angel-quant-manifest/1"
SKIP_COPY = {"config.json", "model.safetensors.index.json", MANIFEST_NAME, "recipe.yaml", "quant_report.json",
             "checksums.sha256"}  # the output gets its own checksums, of its own files


def source_fingerprint(src: Path, files: list[Path]) -> str:
    """sha256 over config.json and every shard's name, size and header (cheap; identifies the content)."""
    h = hashlib.sha256((src / "config.json").read_bytes())
    for f in files:
        with open(f, "rb") as fh:
            n = int.from_bytes(fh.read(8), "little")
            h.update(f"{f.name}:{f.stat().st_size}:".encode())
            h.update(fh.read(n))
    return h.hexdigest()


def source_identity(src: Path) -> dict:
    """Where the source came from: store repo / revision / commit when known, else an HF cache snapshot id."""
    info: dict = {"path": str(src)}
    try:
        from angelcli import store

        for m in store.list_manifests():
            if Path(m.dir).resolve() == src.resolve():
                info.update(repo=m.repo, revision=m.revision, commit=m.commit)
                break
    except Exception:  # noqa: BLE001 - the store is optional here; identity falls back to the path
        pass
    if "commit" not in info:
        m = re.search(r"/snapshots/([0-9a-f]{40})(/|$)", str(src.resolve()))
        info["commit"] = m.group(1) if m else None
    return info


def tool_versions() -> dict:
    from importlib import metadata

    from angelcli import __version__

    out = {"angel": __version__}
    for dist in ("torch", "safetensors", "transformers", "compressed-tensors", "llmcompressor"):
        try:
            out[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            out[dist] = None
    return out


def read_json(path: Path) -> dict | None:
    try:
        data = json.loads(path.read_text("utf-8"))
        return data if isinstance(data, dict) else None
    except (OSError, json.JSONDecodeError, UnicodeDecodeError):
        return None


def output_state(out: Path, fingerprint: dict, force: bool) -> str:
    """'fresh' | 'resume' | 'complete' | 'replace' for `out`; UsageError when it must not be touched."""
    if not out.exists():
        return "fresh"
    if not out.is_dir():
        raise UsageError(f"{out}: exists and is not a directory")
    if not any(out.iterdir()):
        return "fresh"
    manifest = read_json(out / MANIFEST_NAME)
    state = read_json(out / STATE_DIR / "state.json")
    if manifest and manifest.get("format") == MANIFEST_FORMAT:
        files_ok = all((out / f["name"]).exists() and (out / f["name"]).stat().st_size == f["size"]
                       for f in manifest.get("files", []))
        if manifest.get("fingerprint") == fingerprint and files_ok:
            return "complete"
        if force:
            return "replace"
        why = ("was made from a different source or with different options" if files_ok
               else "has missing or changed files")
        raise UsageError(f"{out}: holds an angel FP8 output that {why}; pass --force to replace it")
    if state is not None:
        if state.get("fingerprint") == fingerprint:
            return "resume"
        if force:
            return "replace"
        raise UsageError(f"{out}: holds an interrupted angel run with different source or options; "
                         "pass --force to start over")
    raise UsageError(f"{out}: exists and is not an angel quantize output; choose a new or empty directory")


def prepare(out: Path, state: str, fingerprint: dict) -> None:
    if state == "replace":
        shutil.rmtree(out)
    try:
        (out / STATE_DIR).mkdir(parents=True, exist_ok=True)
        atomic_write_json(out / STATE_DIR / "state.json", {"fingerprint": fingerprint})
    except OSError as err:
        raise UsageError(f"{out}: cannot write the output here ({err.strerror})") from None


def existing_parent(p: Path) -> Path:
    while not p.exists() and p != p.parent:
        p = p.parent
    return p


def check_writable(out: Path) -> None:
    """UsageError (exit 2) when `out` cannot be created or written: a read-only or pseudo filesystem (/proc),
    a parent that is a file, no permission. Checked before the disk-space check, which would otherwise blame
    the size of a filesystem that was never writable."""
    import os

    parent = existing_parent(out)
    if not parent.is_dir():
        raise UsageError(f"--out {out}: cannot write there ({parent} is not a directory)")
    try:
        total = shutil.disk_usage(parent).total
    except OSError as err:
        raise UsageError(f"--out {out}: cannot use {parent} ({err.strerror})") from None
    if total == 0 or not os.access(parent, os.W_OK | os.X_OK):
        raise UsageError(f"--out {out}: cannot write there ({parent} is not writable)")


def finish_modes(out: Path) -> None:
    """Every output file readable like any other file the user creates (umask), whatever wrote it
    (llmcompressor's save leaves 0600 temp-file modes behind)."""
    import os

    umask = os.umask(0)
    os.umask(umask)
    for p in out.iterdir():
        if p.is_file():
            os.chmod(p, 0o666 & ~umask)


def copy_side_files(src: Path, out: Path) -> list[str]:
    """Copy the tokenizer, generation config and other non-weight top-level files (atomically)."""
    copied = []
    for f in sorted(src.iterdir()):
        if not f.is_file() or f.name.startswith(".") or f.suffix == ".safetensors" or f.name in SKIP_COPY:
            continue
        with atomic_path(out / f.name) as tmp:
            shutil.copyfile(f, tmp)
        copied.append(f.name)
    return copied


def write_index(out: Path, shard_names: list[str]) -> dict[str, str]:
    from angelcli.quant.st_io import read_layout

    weight_map, total = {}, 0
    for name in shard_names:
        layout, _ = read_layout(out / name)
        for raw in layout:
            weight_map[raw.name] = name
            total += raw.nbytes
    atomic_write_json(out / "model.safetensors.index.json",
                      {"metadata": {"total_size": total}, "weight_map": dict(sorted(weight_map.items()))})
    return weight_map
