"""The local model store: where pulled models live and the manifest that says what each one is.

Layout (ANGEL_HOME overrides the root, default ~/.cache/angel):

    <home>/manifests/<org>--<name>.json   one manifest per model (repo id), written atomically
    <home>/models/<org>--<name>/          the repo's files as real files (engines load this directory)
        .angel-partial/                   resumable downloads, named by content hash (see angelcli.transfer)
        .angel-pull.lock                  held while a pull writes here

A pull with --local-dir puts the files elsewhere; the manifest's `path` points there and `managed` is false,
so `angel rm` deletes only the files the manifest lists, never the user's directory.

Manifest (JSON): format, repo, alias, kind ("model" | "eagle3-draft"), source ("hf" | "modelscope"), endpoint,
revision (as asked), commit (resolved), path, managed, complete, pulled_at (UTC ISO 8601), include, exclude,
remote_files / remote_size (whole repo at that commit), files: [{path, size, sha256, git_sha1, mtime_ns}],
draft (repo id of an attached draft or null), draft_for (repo ids a draft serves), corrupt (files `angel verify`
found damaged), verified_at (last clean checksum verification).
`mtime_ns` is set once a file was verified; a later pull trusts a file whose size and mtime still match and
re-hashes any other.
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from angelcli import aliases
from angelcli.console import warn
from angelcli.errors import UsageError
from angelcli.fsutil import atomic_write_json

MANIFEST_FORMAT = "angel-store-manifest/1"
PARTIAL_DIR = ".angel-partial"
LOCK_NAME = ".angel-pull.lock"


def home() -> Path:
    """Root of the store: $ANGEL_HOME, else ~/.cache/angel."""
    env = os.environ.get("ANGEL_HOME")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "angel"


def store_key(repo_id: str) -> str:
    """'MedAIBase/AntAngelMed' -> 'MedAIBase--AntAngelMed' (the name of its manifest and directory)."""
    return repo_id.replace("/", "--")


def manifest_path(repo_id: str) -> Path:
    return home() / "manifests" / f"{store_key(repo_id)}.json"


def default_model_dir(repo_id: str) -> Path:
    return home() / "models" / store_key(repo_id)


@dataclass
class FileRecord:
    path: str  # relative to the model directory, '/' separated
    size: int
    sha256: str | None = None  # LFS files
    git_sha1: str | None = None  # git blob id (non-LFS files on the HF hub)
    mtime_ns: int | None = None  # set when verified; None means "not (yet) verified"


@dataclass
class Manifest:
    repo: str
    path: str
    source: str = "hf"
    endpoint: str | None = None
    revision: str | None = None
    commit: str | None = None
    alias: str | None = None
    kind: str = "model"
    managed: bool = True
    complete: bool = False
    pulled_at: str | None = None
    include: list[str] = field(default_factory=list)
    exclude: list[str] = field(default_factory=list)
    remote_files: int | None = None
    remote_size: int | None = None
    files: list[FileRecord] = field(default_factory=list)
    draft: str | None = None
    draft_for: list[str] = field(default_factory=list)
    corrupt: list[str] = field(default_factory=list)  # files `angel verify` found damaged (cleared by a pull)
    verified_at: str | None = None  # last `angel verify` whose checksums all matched

    @property
    def name(self) -> str:
        return self.repo

    @property
    def dir(self) -> Path:
        return Path(self.path)

    @property
    def total_size(self) -> int:
        return sum(f.size for f in self.files)

    def record(self, rel: str) -> FileRecord | None:
        for f in self.files:
            if f.path == rel:
                return f
        return None

    def to_dict(self) -> dict[str, Any]:
        return {"format": MANIFEST_FORMAT, **asdict(self), "total_size": self.total_size}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "Manifest":
        known = {k: v for k, v in data.items() if k in cls.__dataclass_fields__}
        known["files"] = [FileRecord(**{k: v for k, v in f.items() if k in FileRecord.__dataclass_fields__})
                          for f in data.get("files", [])]
        return cls(**known)


def now_iso() -> str:
    return datetime.now(timezone.utc).replace(microsecond=0).isoformat().replace("+00:00", "Z")


def save_manifest(manifest: Manifest) -> Path:
    dest = manifest_path(manifest.repo)
    atomic_write_json(dest, manifest.to_dict())
    return dest


def load_manifest(repo_id: str) -> Manifest | None:
    """The manifest stored for `repo_id` (exact id), or None. A corrupt manifest is a UsageError naming it."""
    path = manifest_path(repo_id)
    if not path.is_file():
        return None
    return _read(path)


def _read(path: Path) -> Manifest:
    try:
        data = json.loads(path.read_text("utf-8"))
        if data.get("format") != MANIFEST_FORMAT:
            raise ValueError(f"format is {data.get('format')!r}, expected {MANIFEST_FORMAT!r}")
        return Manifest.from_dict(data)
    except (OSError, ValueError, TypeError) as err:
        raise UsageError(f"store manifest {path} is unreadable ({err}); delete it and pull again") from None


def list_manifests() -> list[Manifest]:
    """Every manifest in the store, sorted by repo id; unreadable ones are skipped with a warning."""
    out = []
    for path in sorted((home() / "manifests").glob("*.json")):
        try:
            out.append(_read(path))
        except UsageError as err:
            warn(str(err))
    return sorted(out, key=lambda m: m.repo.lower())


def find(name: str) -> Manifest | None:
    """Manifest for a store name (repo id), an alias, or a bare model name (the part after '/'), any case."""
    repo = aliases.resolve_repo_id(name)
    if repo is not None:
        exact = load_manifest(repo)
        if exact is not None:
            return exact
    key = name.strip().lower()
    manifests = list_manifests()
    for m in manifests:
        if m.repo.lower() == key or (repo is not None and m.repo.lower() == repo.lower()):
            return m
    short = [m for m in manifests if m.repo.split("/")[-1].lower() == key]
    return short[0] if len(short) == 1 else None


def lookup(name: str, *, include_incomplete: bool = False) -> Path | None:
    """Local directory of a store name or alias, or None when it is not (completely) pulled.

    `angelcli.resolve` calls this for every MODEL argument that is not a path; "angel-tiny" is handled there.
    """
    m = find(name)
    if m is None or not m.dir.is_dir():
        return None
    if not m.complete and not include_incomplete:
        return None
    return m.dir


def missing_files(m: Manifest) -> list[str]:
    """Paths the manifest lists that are absent or of the wrong size (cheap: stat only)."""
    out = []
    for f in m.files:
        try:
            if (m.dir / f.path).stat().st_size != f.size:
                out.append(f.path)
        except OSError:
            out.append(f.path)
    return out


def size_on_disk(m: Manifest) -> int:
    """Bytes this model occupies: listed files that exist plus resumable partial downloads."""
    total = 0
    for f in m.files:
        try:
            total += (m.dir / f.path).stat().st_size
        except OSError:
            pass
    partial = m.dir / PARTIAL_DIR
    if partial.is_dir():
        total += sum(p.stat().st_size for p in partial.rglob("*") if p.is_file())
    return total


def attached_draft(m: Manifest) -> str | None:
    """Repo id of the draft attached to `m`: explicit (manifest `draft`) or a pulled draft that serves it."""
    if m.draft:
        return m.draft
    for other in list_manifests():
        if other.kind == "eagle3-draft" and other.complete and m.repo.lower() in (r.lower() for r in other.draft_for):
            return other.repo
    return None


def attach_draft(model: str, draft: str) -> Manifest:
    """Record `draft` (store name, alias or repo id) as the speculative draft of `model`; returns the manifest."""
    m = find(model)
    if m is None:
        raise UsageError(f"{model}: not in the store (angel list shows what is)")
    d = find(draft)
    m.draft = d.repo if d is not None else draft
    save_manifest(m)
    return m


def remove(m: Manifest) -> int:
    """Delete a model's files and manifest; returns the bytes freed.

    A store-managed directory goes entirely; with --local-dir only the files the manifest lists (plus angel's
    partial downloads and lock) are deleted, and directories left empty are pruned.
    """
    freed = size_on_disk(m)
    root = m.dir
    if m.managed and root.is_dir() and root.resolve().is_relative_to((home() / "models").resolve()):
        shutil.rmtree(root)
    elif root.is_dir():
        for f in m.files:
            (root / f.path).unlink(missing_ok=True)
        shutil.rmtree(root / PARTIAL_DIR, ignore_errors=True)
        (root / LOCK_NAME).unlink(missing_ok=True)
        for d in sorted({(root / f.path).parent for f in m.files}, key=lambda p: len(p.parts), reverse=True):
            while d != root and d.is_relative_to(root):
                try:
                    d.rmdir()  # only succeeds when empty
                except OSError:
                    break
                d = d.parent
    manifest_path(m.repo).unlink(missing_ok=True)
    return freed
