"""`angel generate --batch FILE`: one JSON request per line, validated line by line.

A bad line must not cost the good ones: each line becomes either a job or an error entry, in file order, and
the command writes `{"id": ..., "line": n, "error": "..."}` in that line's place while the others run. Errors
name the file, the line and the field, e.g. ``req.jsonl:3: max_new_tokens must be an integer >= 0, got -1``.

    entries = read_batch_file(path, params)     # [BatchEntry]
    entry.job -> (GenRequest, overrides) | None, entry.error -> str | None, entry.id, entry.line
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from angelcli.errors import UsageError
from angelcli.fsutil import json_object_line
from angelcli.generate import _SAMPLING_KEYS, GenRequest

_REQUEST_KEYS = {"prompt", "messages", "input_ids", "system", "raw", "id"}


@dataclass
class BatchEntry:
    line: int  # 1-based line number in the file
    id: object  # the line's "id", else its 0-based position among the requests
    job: tuple[GenRequest, dict] | None = None
    error: str | None = None
    result: dict | None = None  # the JSON result once the job ran

    def error_record(self) -> dict:
        return {"id": self.id, "line": self.line, "error": self.error}


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_num(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def check_overrides(obj: dict, where: str) -> dict:
    """The sampling fields of one line, type- and range-checked with the field's own name."""
    rules = {
        "max_new_tokens": (lambda v: _is_int(v) and v >= 0, "an integer >= 0"),
        "temperature": (lambda v: _is_num(v) and v >= 0, "a number >= 0"),
        "top_p": (lambda v: _is_num(v) and 0 < v <= 1, "a number in (0, 1]"),
        "top_k": (lambda v: _is_int(v) and v >= 0, "an integer >= 0"),
        "seed": (lambda v: v is None or (_is_int(v) and -2**63 <= v < 2**64), "a 64-bit integer or null"),
        "logprobs": (lambda v: _is_int(v) and 0 <= v <= 20, "an integer from 0 to 20"),
    }
    out = {}
    for key in _SAMPLING_KEYS:
        if key in obj:
            ok, want = rules[key]
            if not ok(obj[key]):
                raise UsageError(f"{where}: {key} must be {want}, got {json.dumps(obj[key])}")
            out[key] = obj[key]
    return out


def _parse_line(text: str, where: str, default_system: str | None) -> tuple[GenRequest, dict]:
    obj = json_object_line(text, where)
    unknown = set(obj) - _REQUEST_KEYS - _SAMPLING_KEYS
    if unknown:
        raise UsageError(f"{where}: unknown field '{sorted(unknown)[0]}'")
    if "raw" in obj and not isinstance(obj["raw"], bool):
        raise UsageError(f"{where}: raw must be true or false, got {json.dumps(obj['raw'])}")
    system = obj.get("system", default_system)
    req = GenRequest(obj.get("prompt"), obj.get("messages"), obj.get("input_ids"), system, bool(obj.get("raw")))
    req.validate(where)
    return req, check_overrides(obj, where)


def read_batch_file(path: Path, default_system: str | None = None) -> list[BatchEntry]:
    """Every non-empty line of `path` as a BatchEntry (job or error). UsageError only when the file itself is
    unusable (missing, unreadable, no requests)."""
    path = Path(path)
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise UsageError(f"--batch {path}: no such file") from None
    except OSError as err:
        raise UsageError(f"--batch {path}: cannot read ({err.strerror})") from None
    entries: list[BatchEntry] = []
    for n, line in enumerate(raw.split(b"\n"), 1):
        if not line.strip():
            continue
        entry = BatchEntry(line=n, id=len(entries))
        where = f"{path}:{n}"
        try:
            text = line.decode("utf-8")
            try:
                given = json.loads(text).get("id")
                if given is not None:
                    entry.id = given
            except (json.JSONDecodeError, AttributeError):
                pass
            entry.job = _parse_line(text, where, default_system)
        except UnicodeDecodeError:
            entry.error = f"{where}: not UTF-8 text"
        except UsageError as err:
            entry.error = str(err)
        entries.append(entry)
    if not entries:
        raise UsageError(f"--batch {path}: no requests in the file")
    return entries
