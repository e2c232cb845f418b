"""Reading the benchmark files as their authors distribute them, with errors that name the file and field.

Every failure is a UsageError (exit 2): a missing file names the file that was looked for and where it comes
from (docs/eval.md), a malformed record names the file, the line or record, and the field.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

from angelcli.errors import UsageError
from angelcli.fsutil import json_object_line


def find_file(root: Path, names: list[str], what: str, task: str) -> Path:
    """`root` itself when it is a file named like one of `names` (or any file when names is empty), else the
    first of `names` found under the directory `root` (searched recursively, in the order given)."""
    root = Path(root).expanduser()
    if not root.exists():
        raise UsageError(f"--data {root}: no such file or directory")
    if root.is_file():
        return root
    for name in names:
        if (root / name).is_file():
            return root / name
        hits = sorted(p for p in root.rglob(Path(name).name) if p.is_file() and p.as_posix().endswith(name))
        if hits:
            return hits[0]
    raise UsageError(f"--data {root}: no {' or '.join(names)} ({what}; see docs/eval.md, task {task})")


def find_optional(root: Path, names: list[str]) -> Path | None:
    root = Path(root).expanduser()
    base = root if root.is_dir() else root.parent
    for name in names:
        if (base / name).is_file():
            return base / name
        if root.is_dir():
            hits = sorted(p for p in root.rglob(Path(name).name) if p.is_file() and p.as_posix().endswith(name))
            if hits:
                return hits[0]
    return None


def read_jsonl(path: Path) -> list[tuple[str, dict]]:
    """-> [(where, record)] for a JSON-lines file (where = 'file:line')."""
    out = []
    try:
        lines = Path(path).read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as err:
        raise UsageError(f"{path}: cannot read ({err})") from None
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        out.append((f"{path}:{n}", json_object_line(line, f"{path}:{n}")))
    return out


def read_json(path: Path):
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as err:
        raise UsageError(f"{path}: cannot read ({err})") from None
    except json.JSONDecodeError as err:
        raise UsageError(f"{path}: not valid JSON ({err.msg} at line {err.lineno})") from None


def read_json_records(path: Path) -> list[tuple[str, dict]]:
    """A JSON array of objects (CMB) or JSON lines (MedMCQA's release names its JSON-lines files .json)."""
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except json.JSONDecodeError:
        return read_jsonl(path)
    except (OSError, UnicodeDecodeError) as err:
        raise UsageError(f"{path}: cannot read ({err})") from None
    if isinstance(data, dict):
        return [(f"{path}:1", data)]  # a JSON-lines file holding a single line
    if not isinstance(data, list) or not all(isinstance(r, dict) for r in data):
        raise UsageError(f"{path}: expected a JSON array of objects or one JSON object per line")
    return [(f"{path}[{i}]", r) for i, r in enumerate(data)]


def read_csv(path: Path, header: bool = True) -> list[tuple[str, dict | list]]:
    """-> [(where, row)]; rows are dicts keyed by the header, or lists when the file has none (MMLU)."""
    try:
        with open(path, encoding="utf-8-sig", newline="") as f:
            rows = list(csv.reader(f))
    except (OSError, UnicodeDecodeError) as err:
        raise UsageError(f"{path}: cannot read ({err})") from None
    except csv.Error as err:
        raise UsageError(f"{path}: not valid CSV ({err})") from None
    if not header:
        return [(f"{path}:{n}", r) for n, r in enumerate(rows, 1) if r]
    if not rows:
        raise UsageError(f"{path}: empty CSV file (a header row is expected)")
    head = [h.strip() for h in rows[0]]
    return [(f"{path}:{n}", dict(zip(head, r))) for n, r in enumerate(rows[1:], 2) if r]


def loc_id(where: str) -> str:
    """A record's id from its location ('.../test.jsonl:3' -> 'test.jsonl:3'): unique across splits, so a
    few-shot pool never mistakes a train record for the test item it shares a line number with."""
    return Path(where).name


def field(where: str, rec: dict, *names: str, kind=str):
    """The first of `names` present in `rec`, checked to be of `kind`; UsageError naming the field if absent."""
    for name in names:
        if name in rec and rec[name] is not None:
            value = rec[name]
            if kind is str and isinstance(value, (int, float)) and not isinstance(value, bool):
                value = str(value)
            if not isinstance(value, kind):
                raise UsageError(f"{where}: field '{name}' must be {kind.__name__}, not {type(value).__name__}")
            return value
    raise UsageError(f"{where}: missing field '{names[0]}'")
