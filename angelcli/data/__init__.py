"""Packaged medical data and user-supplied data files.

    load_split(name)       -> list[dict]   "train" | "calib" | "eval" of the built-in medical corpus
    load_prompts()         -> list[str]    short demo questions (en + zh), none of them in any split
    load_prompt_rows()     -> list[dict]   the same with their language and topic words (angelcli/tiny/probe.py)
    read_user_data(path)   -> list[dict]   a user's .jsonl or .txt, validated and normalised
    render_sample(s, tok)  -> str          a sample as model input text (chat template or plain text)

Samples are dicts with exactly one of:
    "messages": [{"role": "system"|"user"|"assistant"|"tool", "content": str}, ...]   (a conversation)
    "text": str                                                                     (plain text)
Built-in samples also carry "lang" ("en"|"zh") and "kind" (condition, symptom, medication, triage, ...).

Accepted user files (UTF-8):
    .jsonl  one JSON object per line (blank lines skipped), each one of
            {"messages": [...]}                        a conversation
            {"text": "..."}                            plain text
            {"prompt": "...", "response": "..."}       one exchange (response optional)
    .txt    one sample per paragraph; paragraphs are separated by blank lines
Malformed input raises UsageError naming the file and line.
"""

from __future__ import annotations

import json
from functools import lru_cache
from pathlib import Path

from angelcli.errors import UsageError

MEDICAL_DIR = Path(__file__).resolve().parent / "medical"
SPLITS = ("train", "calib", "eval")
ROLES = ("system", "user", "assistant", "tool")


@lru_cache(maxsize=None)
def _load_jsonl(path: Path) -> tuple[dict, ...]:
    with open(path, encoding="utf-8") as fh:
        return tuple(json.loads(line) for line in fh if line.strip())


def load_split(name: str) -> list[dict]:
    """The built-in medical corpus split `name` ("train", "calib" or "eval"), as a fresh list of samples."""
    if name not in SPLITS:
        raise UsageError(f"unknown data split {name!r}: choose one of {', '.join(SPLITS)}")
    path = MEDICAL_DIR / f"{name}.jsonl"
    if not path.is_file():
        raise UsageError(f"{path}: built-in corpus file is missing (reinstall angelcli or run python -m angelcli.tiny.corpus)")
    return [json.loads(json.dumps(s)) for s in _load_jsonl(path)]  # deep copy: callers may edit samples


def load_prompt_rows() -> list[dict]:
    """The built-in demo questions as rows {"prompt", "lang", "topic": [words an on-topic answer contains]}."""
    return [dict(row) for row in _load_jsonl(MEDICAL_DIR / "prompts.jsonl")]


def load_prompts() -> list[str]:
    """The built-in demo questions (English first, then Chinese)."""
    return [row["prompt"] for row in load_prompt_rows()]


def _check_messages(msgs, where: str) -> list[dict]:
    if not isinstance(msgs, list) or not msgs:
        raise UsageError(f"{where}: \"messages\" must be a non-empty list of {{\"role\", \"content\"}} objects")
    out = []
    for i, m in enumerate(msgs):
        if not isinstance(m, dict):
            raise UsageError(f"{where}: messages[{i}] must be an object with \"role\" and \"content\"")
        role, content = m.get("role"), m.get("content")
        if role not in ROLES:
            raise UsageError(f"{where}: messages[{i}].role is {role!r}; expected one of {', '.join(ROLES)}")
        if not isinstance(content, str):
            raise UsageError(f"{where}: messages[{i}].content must be a string")
        out.append({**m, "role": role, "content": content})
    if all(m["role"] == "system" for m in out):
        raise UsageError(f"{where}: \"messages\" has only system messages; add a user or assistant turn")
    return out


def _normalise(obj, where: str) -> dict:
    if not isinstance(obj, dict):
        raise UsageError(f"{where}: expected a JSON object, got {type(obj).__name__}")
    if "messages" in obj:
        return {"messages": _check_messages(obj["messages"], where)}
    if "text" in obj:
        if not isinstance(obj["text"], str) or not obj["text"].strip():
            raise UsageError(f"{where}: \"text\" must be a non-empty string")
        return {"text": obj["text"]}
    if "prompt" in obj:
        prompt, response = obj["prompt"], obj.get("response")
        if not isinstance(prompt, str) or not prompt.strip():
            raise UsageError(f"{where}: \"prompt\" must be a non-empty string")
        msgs = [{"role": "user", "content": prompt}]
        if response is not None:
            if not isinstance(response, str):
                raise UsageError(f"{where}: \"response\" must be a string")
            msgs.append({"role": "assistant", "content": response})
        return {"messages": msgs}
    keys = ", ".join(sorted(map(str, obj))) or "none"
    raise UsageError(f"{where}: object has none of the keys \"messages\", \"text\" or \"prompt\" (it has: {keys})")


def _read_text(path: Path) -> str:
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise UsageError(f"{path}: cannot read: {exc.strerror or exc}") from exc
    try:
        return data.decode("utf-8-sig")  # tolerate the byte-order mark some Windows editors write
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        raise UsageError(f"{path}:{line}: not valid UTF-8 (byte {exc.start})") from exc


def read_user_data(path: str | Path) -> list[dict]:
    """Read and validate a user data file (.jsonl or .txt); return normalised samples (see module doc)."""
    p = Path(path)
    if not p.exists():
        raise UsageError(f"{p}: no such file")
    if p.is_dir():
        raise UsageError(f"{p}: is a directory; give a .jsonl or .txt file")
    suffix = p.suffix.lower()
    if suffix not in (".jsonl", ".txt"):
        raise UsageError(f"{p}: unsupported file type {suffix or '(none)'!r}; use .jsonl or .txt")
    text = _read_text(p)
    out: list[dict] = []
    if suffix == ".jsonl":
        for lineno, line in enumerate(text.splitlines(), 1):
            if not line.strip():
                continue
            where = f"{p}:{lineno}"
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as exc:
                raise UsageError(f"{where}: invalid JSON ({exc.msg} at column {exc.colno})") from exc
            out.append(_normalise(obj, where))
    else:
        para: list[str] = []
        for line in text.splitlines() + [""]:
            if line.strip():
                para.append(line)
            elif para:
                out.append({"text": "\n".join(para)})
                para = []
    if not out:
        raise UsageError(f"{p}: no samples found (the file is empty or only blank lines)")
    return out


def render_sample(sample: dict, tokenizer=None, add_generation_prompt: bool = False) -> str:
    """Model input text: a conversation through the tokenizer's chat template, or plain text as is."""
    if "text" in sample:
        return sample["text"]
    if tokenizer is None:
        raise ValueError("render_sample needs a tokenizer to render a conversation")
    return tokenizer.apply_chat_template(sample["messages"], tokenize=False, add_generation_prompt=add_generation_prompt)
