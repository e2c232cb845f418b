"""Chat transcripts on disk: JSON (exact) and Markdown (for people, and loadable again).

JSON, for FILE.json:
    {"format": "angel-chat-transcript", "version": 1, "model": NAME, "model_dir": PATH, "saved_at": ISO-8601,
     "sampling": {...}, "system": TEXT|null, "messages": [{role, content, reasoning?, interrupted?, stats?}],
     "stats": {conversation totals}}
`/load` also takes a plain OpenAI-style list of {role, content[, reasoning_content]} or {"messages": [...]}.

Markdown, any other name: one section per message, each introduced by an HTML comment that Markdown viewers
hide and the loader splits on (`<!-- angel:user -->` then `## User`). Reasoning sits in a <details> block,
reply metadata (interrupted, stats) in an `<!-- angel:meta {json} -->` comment followed by a readable line.
Message text is written verbatim, so a transcript saved and loaded again gives the same conversation.
"""

from __future__ import annotations

import json
import re
from datetime import datetime, timezone
from pathlib import Path

from angelcli.errors import UsageError
from angelcli.fsutil import atomic_write_text

FORMAT = "angel-chat-transcript"
HEADINGS = {"system": "System", "user": "User", "assistant": "Assistant"}
_SECTION = re.compile(r"^<!-- angel:(system|user|assistant) -->\n", re.MULTILINE)
_META = re.compile(r"\n\n<!-- angel:meta (\{[^\n]*\}) -->\n[^\n]*\Z")
_DETAILS_OPEN = "<details><summary>Reasoning</summary>\n\n"
_DETAILS_CLOSE = "\n\n<!-- angel:end-reasoning -->\n</details>\n\n"


def transcript_dict(session) -> dict:
    from dataclasses import asdict

    sampling = {k: v for k, v in asdict(session.params).items() if k != "stop_ids"}
    return {
        "format": FORMAT, "version": 1,
        "model": session.model_name, "model_dir": str(session.rt.model_dir),
        "saved_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "sampling": sampling, "draft": session.draft,
        "system": session.system,
        "messages": [m.to_dict() for m in session.messages],
        "stats": session.stats(),
    }


def to_markdown(session) -> str:
    d = transcript_dict(session)
    s = d["sampling"]
    head = [
        "# angel chat transcript",
        "",
        f"<!-- {FORMAT} v1 -->",
        f"- model: `{d['model']}` ({d['model_dir']})",
        f"- saved: {d['saved_at']}",
        f"- sampling: temperature {s['temperature']}, top_p {s['top_p']}, top_k {s['top_k']}, "
        f"max_tokens {s['max_new_tokens']}, seed {s['seed']}",
    ]
    sections = []
    if session.system:
        sections.append(("system", session.system, None))
    sections += [(m.role, m.content, m) for m in session.messages]
    out = ["\n".join(head) + "\n\n"]
    for role, content, msg in sections:
        body = ""
        if msg is not None and msg.reasoning is not None:
            body += _DETAILS_OPEN + msg.reasoning + _DETAILS_CLOSE
        body += content
        if msg is not None and (msg.interrupted or msg.stats is not None):
            meta = {"interrupted": msg.interrupted, "stats": msg.stats.to_dict() if msg.stats else None}
            shown = ("[interrupted] " if msg.interrupted else "") + (msg.stats.line() if msg.stats else "")
            body += f"\n\n<!-- angel:meta {json.dumps(meta, ensure_ascii=False)} -->\n*{shown.strip()}*"
        # Every section ends with one blank line; the loader removes exactly that.
        out.append(f"<!-- angel:{role} -->\n## {HEADINGS[role]}\n\n{body}\n\n")
    return "".join(out)


def save_transcript(session, path) -> str:
    path = Path(path).expanduser()
    if path.is_dir():
        raise UsageError(f"/save {path}: is a directory; give a file name (.md or .json)")
    if not path.parent.is_dir():  # never create directories the user did not ask for (e.g. at /)
        raise UsageError(f"/save {path}: directory {path.parent} does not exist")
    fmt = "json" if path.suffix.lower() == ".json" else "markdown"
    text = (json.dumps(transcript_dict(session), indent=2, ensure_ascii=False) + "\n" if fmt == "json"
            else to_markdown(session))
    try:
        atomic_write_text(path, text)
    except OSError as err:
        raise UsageError(f"/save {path}: cannot write ({err.strerror or err})") from None
    return fmt


def load_transcript(path):
    """-> (system text or None, [Message]) from a JSON or Markdown transcript."""
    from angelcli.chat.session import Message

    path = Path(path).expanduser()
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise UsageError(f"/load {path}: no such file") from None
    except (OSError, UnicodeDecodeError) as err:
        raise UsageError(f"/load {path}: cannot read ({err})") from None
    if path.suffix.lower() == ".json" or text.lstrip().startswith(("{", "[")):
        try:
            data = json.loads(text)
        except json.JSONDecodeError as err:
            raise UsageError(f"/load {path}: not valid JSON ({err.msg}, line {err.lineno})") from None
        raw = data.get("messages") if isinstance(data, dict) else data
        if not isinstance(raw, list):
            raise UsageError(f"/load {path}: expected a transcript or a list of messages")
        from angelcli.messages import normalize_messages

        norm = normalize_messages(raw, f"/load {path}: messages")  # names the bad field; content parts joined
        for i, n in enumerate(norm):
            if n["role"] == "tool":
                raise UsageError(f"/load {path}: messages[{i}].role: tool turns cannot be continued in a chat")
        msgs = [Message.from_dict({**m, "role": n["role"], "content": n["content"]}, f"/load {path}: messages[{i}]")
                for i, (m, n) in enumerate(zip(raw, norm))]
        system = data.get("system") if isinstance(data, dict) else None
    else:
        system, msgs = None, _parse_markdown(text, path)
    # A system message inside the list (OpenAI style, or Markdown) becomes the session's system prompt.
    if msgs and msgs[0].role == "system":
        system = msgs.pop(0).content
    if any(m.role == "system" for m in msgs):
        raise UsageError(f"/load {path}: a system message is only allowed first")
    return (system if isinstance(system, str) and system else None), msgs


def _parse_markdown(text: str, path: Path):
    from angelcli.chat.session import Message, TurnStats

    marks = list(_SECTION.finditer(text))
    if not marks:
        raise UsageError(f"/load {path}: not an angel chat transcript (no <!-- angel:ROLE --> sections)")
    msgs = []
    for n, m in enumerate(marks):
        role = m.group(1)
        end = marks[n + 1].start() if n + 1 < len(marks) else len(text)
        sec = text[m.end():end]
        heading = f"## {HEADINGS[role]}\n\n"
        if sec.startswith(heading):
            sec = sec[len(heading):]
        # Sections end with the blank line we wrote before the next one; a hand-edited file may differ.
        sec = sec[:-2] if sec.endswith("\n\n") else sec.rstrip("\n")
        msg = Message(role, "")
        meta = _META.search(sec)
        if meta:
            try:
                info = json.loads(meta.group(1))
            except json.JSONDecodeError:
                raise UsageError(f"/load {path}: broken angel:meta comment in message {n + 1}") from None
            msg.interrupted = bool(info.get("interrupted"))
            msg.stats = TurnStats.from_dict(info["stats"]) if isinstance(info.get("stats"), dict) else None
            sec = sec[: meta.start()]
        if sec.startswith(_DETAILS_OPEN) and _DETAILS_CLOSE in sec:
            reasoning, sec = sec[len(_DETAILS_OPEN):].split(_DETAILS_CLOSE, 1)
            msg.reasoning = reasoning
        msg.content = sec
        msgs.append(msg)
    return msgs
