"""Validation and normalisation of OpenAI-style chat messages, shared by every door text comes in through.

`angel generate --messages/--batch`, chat `/load` and `angel serve` all accept the same shape, so they all go
through `normalize_messages`: bad input becomes one UsageError (exit 2) whose message names the field path,
e.g. ``messages[2].content: expected a string or a list of text parts, got 42``, instead of a template
error deep inside transformers (or, worse, a message silently dropped by the template).

    normalize_messages([{"role": "user", "content": [{"type": "text", "text": "hi"}]}])
    -> [{"role": "user", "content": "hi"}]

The chat template (assets/ling_chat_template.jinja) renders system, user, assistant and tool turns; it has no
branch for any other role, which is why an unknown role must be refused rather than passed through.
"""

from __future__ import annotations

import json

from angelcli.errors import UsageError

ROLES = ("system", "user", "assistant", "tool")
# OpenAI's newer name for the system turn; the Ling template knows only "system".
_ALIASES = {"developer": "system"}
# Fields the template reads besides role/content; anything else a client sends (e.g. "name") is dropped.
_KEEP = ("tool_calls", "tool_call_id", "name")


def _show(value) -> str:
    """A short JSON rendering of a bad value for an error message (null, 42, {"a": 1}, ...)."""
    try:
        text = json.dumps(value, ensure_ascii=False)
    except (TypeError, ValueError):
        text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _content_text(content, where: str, role: str, has_tool_calls: bool) -> str:
    """str | [text parts] (| None for an assistant turn that only calls tools) -> one string."""
    if isinstance(content, str):
        return content
    if content is None and role == "assistant" and has_tool_calls:
        return ""
    if isinstance(content, list) and content:
        texts = []
        for j, part in enumerate(content):
            at = f"{where}[{j}]"
            if isinstance(part, str):  # some clients send bare strings in the list
                texts.append(part)
                continue
            if not isinstance(part, dict):
                raise UsageError(f"{at}: expected a content part object {{\"type\": \"text\", \"text\": ...}}, "
                                 f"got {_show(part)}")
            kind = part.get("type", "text")
            if kind != "text":
                raise UsageError(f"{at}.type: {_show(kind)} parts are not supported (angel's model reads only "
                                 f"text parts)")
            if not isinstance(part.get("text"), str):
                raise UsageError(f"{at}.text: expected a string, got {_show(part.get('text'))}")
            texts.append(part["text"])
        # Parts are pieces of one message; a newline keeps words of adjacent parts apart (as vLLM/SGLang do).
        return "\n".join(texts)
    raise UsageError(f"{where}: expected a string or a list of text parts, got {_show(content)}")


def normalize_messages(messages, where: str = "messages") -> list[dict]:
    """Validate a list of chat messages and return plain {role, content[, reasoning_content, tool_calls, ...]}
    dicts whose content is always a string. Raises UsageError (exit 2) naming the first bad field."""
    if isinstance(messages, dict) and isinstance(messages.get("messages"), list):
        messages = messages["messages"]
    if not isinstance(messages, list):
        raise UsageError(f"{where}: expected a list of {{role, content}} objects, got {_show(messages)}")
    if not messages:
        raise UsageError(f"{where}: the list is empty (give at least one {{role, content}} message)")
    out = []
    for i, m in enumerate(messages):
        at = f"{where}[{i}]"
        if not isinstance(m, dict):
            raise UsageError(f"{at}: expected an object with 'role' and 'content', got {_show(m)}")
        if "role" not in m:
            raise UsageError(f"{at}.role: missing (expected {', '.join(ROLES)})")
        role = m["role"]
        if not isinstance(role, str):
            raise UsageError(f"{at}.role: expected a string, got {_show(role)}")
        role = _ALIASES.get(role, role)
        if role not in ROLES:
            raise UsageError(f"{at}.role: unknown role {role!r} (expected {', '.join(ROLES)})")
        tool_calls = m.get("tool_calls")
        if tool_calls is not None and (role != "assistant" or not isinstance(tool_calls, list)):
            raise UsageError(f"{at}.tool_calls: expected a list on an assistant message, got {_show(tool_calls)}")
        if "content" not in m and not (role == "assistant" and tool_calls):
            raise UsageError(f"{at}.content: missing")
        msg = {"role": role, "content": _content_text(m.get("content"), f"{at}.content", role, bool(tool_calls))}
        reasoning = m.get("reasoning_content", m.get("reasoning"))
        if reasoning is not None:
            if not isinstance(reasoning, str):
                raise UsageError(f"{at}.reasoning_content: expected a string, got {_show(reasoning)}")
            if role == "assistant":
                msg["reasoning_content"] = reasoning
        for key in _KEEP:
            if m.get(key) is not None:
                msg[key] = m[key]
        out.append(msg)
    return out
