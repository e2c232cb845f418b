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
        """Check the request's shape; messages are normalised in place (angelcli.messages)."""
        from angelcli.messages import normalize_messages

        given = [x is not None for x in (self.prompt, self.messages, self.input_ids)]
        if sum(given) != 1:
            raise UsageError(f"{where}: give exactly one of prompt, messages or input_ids")
        if self.messages is not None:
            self.messages = normalize_messages(self.messages, f"{where}: messages")
        if self.input_ids is not None:
            if not isinstance(self.input_ids, list) or not self.input_ids or not all(
                    isinstance(i, int) and not isinstance(i, bool) for i in self.input_ids):
                raise UsageError(f"{where}: 'input_ids' must be a non-empty list of integers")
            if any(i < 0 for i in self.input_ids):
                raise UsageError(f"{where}: 'input_ids' holds a negative id ({min(self.input_ids)})")
        if self.prompt is not None:
            if not isinstance(self.prompt, str):
                raise UsageError(f"{where}: 'prompt' must be a string")
            if not self.prompt.strip() and not self.raw:
                raise UsageError(f"{where}: 'prompt' is empty (type a message)")
        if self.system is not None and not isinstance(self.system, str):
            raise UsageError(f"{where}: 'system' must be a string")


def parse_input_ids(text: str) -> list[int]:
    try:
        ids = [int(x) for x in text.replace(" ", "").split(",") if x != ""]
    except ValueError:
        raise UsageError(f"--input-ids: expected comma-separated integers, got {text!r}") from None
    if not ids:
        raise UsageError("--input-ids: no ids given")
    if min(ids) < 0:
        raise UsageError(f"--input-ids: token ids are >= 0, got {min(ids)}")
    return ids


def read_messages_file(path: Path) -> list[dict]:
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise UsageError(f"--messages {path}: no such file") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise UsageError(f"--messages {path}: not valid JSON ({err})") from None
    except (OSError, ValueError) as err:
        raise UsageError(f"--messages {path}: cannot read ({err})") from None
    if isinstance(data, dict) and "messages" in data:
        data = data["messages"]
    from angelcli.messages import normalize_messages

    return normalize_messages(data, f"--messages {path}: messages")


_SAMPLING_KEYS = {"max_new_tokens", "temperature", "top_p", "top_k", "seed", "logprobs"}


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
    limit = getattr(rt.engine, "max_seq_len", None)
    if limit is not None and len(prompt_ids) >= limit:
        raise UsageError(f"the prompt has {len(prompt_ids)} tokens and does not fit the context of {limit} tokens "
                         f"(--max-seq-len, at most the model's max_position_embeddings)")
    res = _Result(prompt_text, prompt_ids, tok, params, on_text)
    for step in rt.engine.generate(prompt_ids, params):
        if not res.add(step):
            break
    return res.result(rt.engine.last_stats)


def run_batch(rt, jobs: list[tuple[GenRequest, dict]], params: SamplingParams) -> list[dict]:
    """Generate for several requests decoded together (engine.generate_batch); results in input order.
    Each job's dict overrides sampling fields (max_new_tokens, temperature, top_p, top_k, seed, logprobs).
    A job that cannot run (its prompt does not fit, an id outside the vocabulary, ...) gets {"error": "..."}
    as its result and the others still run."""
    out: list[dict | None] = [None] * len(jobs)
    collectors, prompts, plist, where = [], [], [], []
    for n, (req, over) in enumerate(jobs):
        try:
            prompt_text, prompt_ids, tok = prepare_prompt(rt, req)
            p = replace(params, **{k: v for k, v in over.items() if k in _SAMPLING_KEYS}, stop_ids=tuple(rt.eos_ids))
            rt.engine.check_prompt(prompt_ids)
            if len(prompt_ids) >= rt.engine.max_seq_len:
                raise UsageError(f"prompt of {len(prompt_ids)} tokens does not fit the context of "
                                 f"{rt.engine.max_seq_len} tokens (--max-seq-len)")
        except UsageError as err:
            out[n] = {"error": str(err)}
            continue
        collectors.append(_Result(prompt_text, prompt_ids, tok, p))
        prompts.append(prompt_ids)
        plist.append(p)
        where.append(n)
    if prompts:
        for i, step in rt.engine.generate_batch(prompts, plist):
            collectors[i].add(step)
        for n, c, st in zip(where, collectors, rt.engine.batch_stats):
            out[n] = c.result(st)
    return out  # type: ignore[return-value]
