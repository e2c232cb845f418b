"""Scriptable generation: requests (prompt, messages or token ids) -> JSON-ready results.

Used by `angel generate`; one request at a time through the engine, each result self-contained:
prompt, prompt_ids, ids, text, finish_reason, logprobs, stats.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable

from angelcli.engine.sampling import SamplingParams
from angelcli.errors import UsageError


@dataclass
class GenRequest:
    prompt: str | None = None
    messages: list[dict] | None = None
    input_ids: list[int] | None = None
    system: str | None = None
    raw: bool = False  # use `prompt` as-is, without the chat template

    def validate(self, where: str) -> None:
        given = [x is not None for x in (self.prompt, self.messages, self.input_ids)]
        if sum(given) != 1:
            raise UsageError(f"{where}: give exactly one of prompt, messages or input_ids")
        if self.messages is not None:
            if not isinstance(self.messages, list) or not self.messages:
                raise UsageError(f"{where}: 'messages' must be a non-empty list of {{role, content}} objects")
            for i, m in enumerate(self.messages):
                if not isinstance(m, dict) or not isinstance(m.get("role"), str) or "content" not in m:
                    raise UsageError(f"{where}: messages[{i}] needs a string 'role' and a 'content'")
        if self.input_ids is not None:
            if not isinstance(self.input_ids, list) or not self.input_ids or not all(
                    isinstance(i, int) and not isinstance(i, bool) for i in self.input_ids):
                raise UsageError(f"{where}: 'input_ids' must be a non-empty list of integers")
        if self.prompt is not None and not isinstance(self.prompt, str):
            raise UsageError(f"{where}: 'prompt' must be a string")


def parse_input_ids(text: str) -> list[int]:
    try:
        ids = [int(x) for x in text.replace(" ", "").split(",") if x != ""]
    except ValueError:
        raise UsageError(f"--input-ids: expected comma-separated integers, got {text!r}") from None
    if not ids:
        raise UsageError("--input-ids: no ids given")
    return ids


def read_messages_file(path: Path) -> list[dict]:
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise UsageError(f"--messages {path}: no such file") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise UsageError(f"--messages {path}: not valid JSON ({err})") from None
    if isinstance(data, dict) and "messages" in data:
        data = data["messages"]
    GenRequest(messages=data).validate(f"--messages {path}")
    return data


_SAMPLING_KEYS = {"max_new_tokens", "temperature", "top_p", "top_k", "seed", "logprobs"}


def read_batch_file(path: Path) -> list[tuple[GenRequest, dict]]:
    """One request per line: {"prompt"|"messages"|"input_ids", optional "system", "raw", sampling overrides}."""
    try:
        lines = Path(path).read_text(encoding="utf-8").splitlines()
    except FileNotFoundError:
        raise UsageError(f"--batch {path}: no such file") from None
    out = []
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        where = f"{path}:{n}"
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as err:
            raise UsageError(f"{where}: not valid JSON ({err.msg})") from None
        if not isinstance(obj, dict):
            raise UsageError(f"{where}: each line must be a JSON object")
        unknown = set(obj) - {"prompt", "messages", "input_ids", "system", "raw", "id"} - _SAMPLING_KEYS
        if unknown:
            raise UsageError(f"{where}: unknown field '{sorted(unknown)[0]}'")
        req = GenRequest(obj.get("prompt"), obj.get("messages"), obj.get("input_ids"), obj.get("system"),
                         bool(obj.get("raw", False)))
        req.validate(where)
        out.append((req, {k: obj[k] for k in _SAMPLING_KEYS | {"id"} if k in obj}))
    if not out:
        raise UsageError(f"--batch {path}: no requests in the file")
    return out


def prepare_prompt(rt, req: GenRequest):
    """-> (prompt text or None, prompt ids, tokenizer or None) for one request."""
    from angelcli.tokenizer import build_messages, encode, render_chat

    if req.input_ids is not None:
        tok = rt.tokenizer if (rt.model_dir / "tokenizer.json").exists() else None
        return None, list(req.input_ids), tok
    tok = rt.tokenizer
    if req.messages is not None:
        prompt_text = render_chat(tok, req.messages)
    elif req.raw:
        prompt_text = req.prompt
    else:
        prompt_text = render_chat(tok, build_messages(req.prompt, req.system))
    return prompt_text, encode(tok, prompt_text), tok


class _Result:
    """Collects one request's steps into its JSON result (text streamed through on_text)."""

    def __init__(self, prompt_text, prompt_ids, tok, params: SamplingParams, on_text=None):
        from angelcli.tokenizer import StreamDecoder

        self.prompt_text, self.prompt_ids, self.params, self.on_text = prompt_text, prompt_ids, params, on_text
        self.decoder = StreamDecoder(tok) if tok is not None else None
        self.ids, self.logprobs, self.pieces, self.finish = [], [], [], "length"

    def _emit(self, piece: str) -> None:
        if piece:
            self.pieces.append(piece)
            if self.on_text:
                self.on_text(piece)

    def add(self, step) -> bool:
        """Take one step; False once the request is over (a stop id is not part of the text)."""
        self.ids.append(step.token_id)
        if self.params.logprobs:
            self.logprobs.append([[i, lp] for i, lp in step.top_logprobs])
        if step.finish_reason == "stop":
            self.finish = "stop"
            return False
        if self.decoder is not None:
            self._emit(self.decoder.push(step.token_id))
        return step.finish_reason is None

    def result(self, stats) -> dict:
        if self.decoder is not None:
            self._emit(self.decoder.flush())
        return {
            "prompt": self.prompt_text,
            "prompt_ids": self.prompt_ids,
            "ids": self.ids,
            "text": "".join(self.pieces) if self.decoder is not None else None,
            "finish_reason": self.finish,
            "logprobs": self.logprobs if self.params.logprobs else None,
            "stats": stats.to_dict(),
        }


def run_request(rt, req: GenRequest, params: SamplingParams, on_text: Callable[[str], None] | None = None) -> dict:
    """Generate for one request; on_text receives decoded text as it streams. Returns the JSON result."""
    prompt_text, prompt_ids, tok = prepare_prompt(rt, req)
    params = replace(params, stop_ids=tuple(rt.eos_ids))
    res = _Result(prompt_text, prompt_ids, tok, params, on_text)
    for step in rt.engine.generate(prompt_ids, params):
        if not res.add(step):
            break
    return res.result(rt.engine.last_stats)


def run_batch(rt, jobs: list[tuple[GenRequest, dict]], params: SamplingParams) -> list[dict]:
    """Generate for several requests decoded together (engine.generate_batch); results in input order.
    Each job's dict overrides sampling fields (max_new_tokens, temperature, top_p, top_k, seed, logprobs)."""
    collectors, prompts, plist = [], [], []
    for req, over in jobs:
        prompt_text, prompt_ids, tok = prepare_prompt(rt, req)
        p = replace(params, **{k: v for k, v in over.items() if k in _SAMPLING_KEYS}, stop_ids=tuple(rt.eos_ids))
        collectors.append(_Result(prompt_text, prompt_ids, tok, p))
        prompts.append(prompt_ids)
        plist.append(p)
    for i, step in rt.engine.generate_batch(prompts, plist):
        collectors[i].add(step)
    return [c.result(st) for c, st in zip(collectors, rt.engine.batch_stats)]
