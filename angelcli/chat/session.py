"""Conversation state for `angel chat`: messages, the model's chat template, streamed replies, statistics.

    session = ChatSession(runtime, system="You are AntAngelMed, a helpful medical assistant.")
    for chunk in session.stream("What is a fever?"):   # Chunk(kind="think"|"answer", text)
        print(chunk.text, end="")
    session.messages[-1].stats.line()                  # "[56 prompt tokens, 40 generated, ...]"

Every turn renders the whole conversation through the checkpoint's own chat template (angelcli.tokenizer)
and prefills it again; the engine's API takes a prompt and owns its cache, so nothing is reused across turns.

Reasoning: a reply that opens with `<think>` has its reasoning streamed as "think" chunks and stored apart
from the answer (Message.reasoning). It is handed to the template as `reasoning_content`, and the template
decides what later turns see; the Ling template keeps reasoning only for assistant turns after the last user
query, so earlier reasoning never reaches the next prompt.

Interrupted replies (Ctrl-C, or the caller closing the stream): the partial reply is KEPT in the conversation,
marked `interrupted=True` (transcripts show "[interrupted]"); its text, without the mark, is what later turns
see, so the model knows what it had said. `/clear` or a new session drops it.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Iterator

from angelcli.chat.think import THINK_OPEN, Chunk, ThinkSplitter  # noqa: F401  (Chunk: re-exported)
from angelcli.engine.sampling import SamplingParams
from angelcli.errors import UsageError
from angelcli.tokenizer import DEFAULT_SYSTEM, StreamDecoder, encode, render_chat

# /set names -> SamplingParams fields; `max_tokens` is the name users know from the OpenAI API and ollama.
SETTABLE = {"temperature": "temperature", "top_p": "top_p", "top_k": "top_k", "max_tokens": "max_new_tokens",
            "seed": "seed"}


@dataclass
class TurnStats:
    prompt_tokens: int = 0
    generated_tokens: int = 0
    time_to_first_token: float = 0.0  # seconds
    decode_tokens_per_s: float = 0.0  # tokens after the first / time they took
    total_time: float = 0.0  # seconds
    finish_reason: str = "stop"  # stop | length | interrupted
    acceptance_length: float | None = None  # mean tokens per target pass when a draft is attached

    def line(self) -> str:
        """The one-line summary printed after each reply (same wording as `angel generate`)."""
        parts = [f"{self.prompt_tokens} prompt tokens", f"{self.generated_tokens} generated",
                 f"first token {self.time_to_first_token * 1000:.0f} ms", f"{self.decode_tokens_per_s:.1f} tok/s"]
        if self.acceptance_length is not None:
            parts.append(f"mean acceptance {self.acceptance_length:.2f}")
        parts.append(f"finish: {self.finish_reason}")
        return "[" + ", ".join(parts) + "]"

    def to_dict(self) -> dict:
        d = {"prompt_tokens": self.prompt_tokens, "generated_tokens": self.generated_tokens,
             "time_to_first_token": round(self.time_to_first_token, 6),
             "decode_tokens_per_s": round(self.decode_tokens_per_s, 3), "total_time": round(self.total_time, 6),
             "finish_reason": self.finish_reason}
        if self.acceptance_length is not None:
            d["acceptance_length"] = round(self.acceptance_length, 4)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "TurnStats":
        known = {k: d[k] for k in cls.__dataclass_fields__ if k in d}
        return cls(**known)


@dataclass
class Message:
    role: str  # system | user | assistant
    content: str
    reasoning: str | None = None  # assistant only: the <think> block, kept apart from the answer
    interrupted: bool = False  # assistant only: the reply was stopped before it finished
    stats: TurnStats | None = None  # assistant only

    def template_dict(self) -> dict:
        """What the chat template receives (OpenAI style plus `reasoning_content`)."""
        d = {"role": self.role, "content": self.content}
        if self.reasoning:
            d["reasoning_content"] = self.reasoning
        return d

    def to_dict(self) -> dict:
        d = {"role": self.role, "content": self.content}
        if self.reasoning is not None:
            d["reasoning"] = self.reasoning
        if self.interrupted:
            d["interrupted"] = True
        if self.stats is not None:
            d["stats"] = self.stats.to_dict()
        return d

    @classmethod
    def from_dict(cls, d: dict, where: str) -> "Message":
        if not isinstance(d, dict) or d.get("role") not in ("system", "user", "assistant") \
                or not isinstance(d.get("content"), str):
            raise UsageError(f"{where}: each message needs a role (system|user|assistant) and a string content")
        reasoning = d.get("reasoning", d.get("reasoning_content"))
        stats = TurnStats.from_dict(d["stats"]) if isinstance(d.get("stats"), dict) else None
        return cls(d["role"], d["content"], reasoning if isinstance(reasoning, str) else None,
                   bool(d.get("interrupted", False)), stats)


def attach_draft(rt, want: bool | None) -> str | None:
    """Speculative-decoding hook for `--draft` / `--no-draft` (the EAGLE3 work, issue 10, fills it in).

    Contract: the runtime (angelcli.runtime.Runtime) has `attach_draft(required: bool) -> str | None`
    (the draft it attached, or None when the model has none recorded); other runtimes may offer the older
    engine hook `engine.attach_draft(model_dir, required)`. During a run the engine's `last_stats` carries
    `mean_acceptance_length`. want=None uses the model's recorded draft if any, True requires one, False
    runs without.
    """
    if want is False:
        return None
    if callable(getattr(rt, "attach_draft", None)):
        return rt.attach_draft(required=bool(want))
    hook = getattr(getattr(rt, "engine", None), "attach_draft", None)
    if hook is None:
        if want:
            raise UsageError("--draft: speculative decoding is not available in this build "
                             "(the engine has no draft support yet); run without --draft")
        return None
    return hook(rt.model_dir, required=bool(want))


class ChatSession:
    """One conversation with one loaded model (an angelcli.runtime.Runtime or anything shaped like it:
    .engine, .tokenizer, .eos_ids, .model_dir, .cfg)."""

    def __init__(self, runtime, *, system: str | None = DEFAULT_SYSTEM, params: SamplingParams | None = None,
                 draft: str | None = None, model_name: str | None = None, ignore_eos: bool = False):
        self.rt = runtime
        self.system = system or None
        self.params = params or SamplingParams(max_new_tokens=1024)
        self.draft = draft
        self.model_name = model_name or runtime.model_dir.name
        self.ignore_eos = ignore_eos
        self.messages: list[Message] = []  # user / assistant turns; the system prompt lives in self.system

    # -- conversation ------------------------------------------------------------------------------------
    def template_messages(self) -> list[dict]:
        head = [{"role": "system", "content": self.system}] if self.system else []
        return head + [m.template_dict() for m in self.messages]

    def render(self) -> str:
        """The prompt text for the next reply, exactly as the model's template renders it."""
        return render_chat(self.rt.tokenizer, self.template_messages(), add_generation_prompt=True)

    def clear(self) -> None:
        """Forget every turn (and with them the conversation's statistics); the system prompt stays."""
        self.messages.clear()

    def set_system(self, text: str | None) -> None:
        self.system = text or None

    def set_param(self, name: str, value: str) -> SamplingParams:
        """`/set NAME VALUE`; values are validated by SamplingParams (UsageError names the option)."""
        key = SETTABLE.get(name)
        if key is None:
            raise UsageError(f"/set: unknown parameter '{name}' (one of {', '.join(SETTABLE)})")
        try:
            if key == "seed" and value.lower() in ("none", "off", "random"):
                parsed = None
            elif key in ("top_k", "max_new_tokens", "seed"):
                parsed = int(value)
            else:
                parsed = float(value)
        except ValueError:
            raise UsageError(f"/set {name}: expected a number, got {value!r}") from None
        self.params = replace(self.params, **{key: parsed})
        return self.params

    # -- one reply ---------------------------------------------------------------------------------------
    def stream(self, text: str) -> Iterator[Chunk]:
        """Add the user message and stream the reply; the assistant message is appended when the stream
        ends, also when it is interrupted (KeyboardInterrupt inside, or .close() by the caller)."""
        if not text.strip():
            raise UsageError("empty message")
        tok = self.rt.tokenizer
        self.messages.append(Message("user", text))
        try:
            prompt_text = self.render()
            prompt_ids = encode(tok, prompt_text)
            self.rt.engine.check_prompt(prompt_ids)
            limit = getattr(self.rt.engine, "max_seq_len", None)
            if limit is not None and len(prompt_ids) >= limit:
                raise UsageError(f"the conversation ({len(prompt_ids)} tokens) no longer fits the context of "
                                 f"{limit} tokens; /clear starts over")
        except KeyboardInterrupt:  # Ctrl-C while the prompt was prepared: the question stays, marked
            self.record_interrupted()
            raise
        except BaseException:
            self.messages.pop()
            raise
        return self._run(prompt_ids, prompt_text)

    def record_interrupted(self) -> None:
        """After Ctrl-C before the first token: keep the question with an empty reply marked interrupted
        (a no-op when the reply was already recorded)."""
        if self.messages and self.messages[-1].role == "user":
            self.messages.append(Message("assistant", "", None, True, TurnStats(finish_reason="interrupted")))

    def _run(self, prompt_ids: list[int], prompt_text: str) -> Iterator[Chunk]:
        stop = () if self.ignore_eos else tuple(self.rt.eos_ids)
        params = replace(self.params, stop_ids=stop)
        decoder = StreamDecoder(self.rt.tokenizer)
        splitter = ThinkSplitter(start_in_think=prompt_text.rstrip().endswith(THINK_OPEN))
        engine = self.rt.engine
        steps = engine.generate(prompt_ids, params)
        finish, started = "length", False
        try:
            for step in steps:
                started = True
                if step.finish_reason == "stop":
                    finish = "stop"
                    break
                yield from splitter.feed(decoder.push(step.token_id))
                if step.finish_reason:
                    finish = step.finish_reason
            yield from splitter.feed(decoder.flush())
            yield from splitter.close()
        except (KeyboardInterrupt, GeneratorExit):
            finish = "interrupted"
            raise
        except BaseException:
            if not started:  # nothing was generated (e.g. an engine error): forget the question too
                self.messages.pop()
                finish = None
            else:
                finish = "interrupted"
            raise
        finally:
            steps.close()
            if finish is not None:
                # Whatever the decoder still holds belongs to the partial reply as well.
                if finish == "interrupted":
                    splitter.feed(decoder.flush())
                    splitter.close()
                self.messages.append(Message("assistant", splitter.answer_text, splitter.reasoning_text,
                                             finish == "interrupted", self._turn_stats(finish)))

    def _turn_stats(self, finish: str) -> TurnStats:
        st = getattr(self.rt.engine, "last_stats", None)
        if st is None:
            return TurnStats(finish_reason=finish)
        accept = getattr(st, "mean_acceptance_length", None) if self.draft else None
        return TurnStats(st.prompt_tokens, st.generated_tokens, st.time_to_first_token, st.decode_tokens_per_s,
                         st.total_time, finish, accept)

    # -- statistics --------------------------------------------------------------------------------------
    def stats(self) -> dict:
        """Totals over the conversation's replies (those with stats; loaded transcripts keep theirs)."""
        turns = [m.stats for m in self.messages if m.role == "assistant" and m.stats is not None]
        gen = sum(t.generated_tokens for t in turns)
        decode_tokens = sum(max(t.generated_tokens - 1, 0) for t in turns)
        decode_time = sum(max(t.total_time - t.time_to_first_token, 0.0) for t in turns)
        accepted = [t for t in turns if t.acceptance_length is not None and t.generated_tokens]
        last = turns[-1] if turns else None
        out = {
            "turns": len(turns),
            "interrupted": sum(t.finish_reason == "interrupted" for t in turns),
            "prompt_tokens": sum(t.prompt_tokens for t in turns),
            "generated_tokens": gen,
            "mean_time_to_first_token": sum(t.time_to_first_token for t in turns) / len(turns) if turns else 0.0,
            "decode_tokens_per_s": decode_tokens / decode_time if decode_time > 0 else 0.0,
            "total_time": sum(t.total_time for t in turns),
            "context_tokens": (last.prompt_tokens + last.generated_tokens) if last else 0,
            "context_limit": getattr(self.rt.engine, "max_seq_len", None),
        }
        if accepted:
            # Weighted by generated tokens: the mean over all target passes of the conversation.
            w = sum(t.generated_tokens for t in accepted)
            out["mean_acceptance_length"] = sum(t.acceptance_length * t.generated_tokens for t in accepted) / w
        return out

    def stats_text(self) -> str:
        s = self.stats()
        lines = [
            f"turns: {s['turns']} ({s['interrupted']} interrupted)",
            f"prompt tokens: {s['prompt_tokens']} (each turn re-reads the whole conversation)",
            f"generated tokens: {s['generated_tokens']}",
            f"mean time to first token: {s['mean_time_to_first_token'] * 1000:.0f} ms",
            f"decode speed: {s['decode_tokens_per_s']:.1f} tok/s",
            f"generation time: {s['total_time']:.2f} s",
            f"context: {s['context_tokens']}" + (f" of {s['context_limit']} tokens" if s["context_limit"] else " tokens"),
        ]
        if "mean_acceptance_length" in s:
            lines.append(f"mean acceptance length: {s['mean_acceptance_length']:.2f}")
        return "\n".join(lines)

    # -- transcripts -------------------------------------------------------------------------------------
    def save(self, path) -> str:
        """Write the transcript: JSON for *.json, Markdown otherwise. Returns the format written."""
        from angelcli.chat.transcript import save_transcript

        return save_transcript(self, path)

    def load(self, path) -> int:
        """Replace the conversation (and system prompt) with a saved transcript; returns the message count.
        Sampling settings are not taken from the file: the current ones stay."""
        from angelcli.chat.transcript import load_transcript

        system, messages = load_transcript(path)
        self.system, self.messages = system, messages
        return len(messages)


def sampling_defaults(model_dir) -> dict:
    """temperature / top_p / top_k from the checkpoint's generation_config.json, as transformers reads them:
    do_sample false means greedy. Without the file: temperature 0.7, top_p 0.95 (a common chat default)."""
    import json
    from pathlib import Path

    path = Path(model_dir) / "generation_config.json"
    try:
        gen = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        gen = None
    if not isinstance(gen, dict):
        return {"temperature": 0.7, "top_p": 0.95, "top_k": 0}
    if gen.get("do_sample") is False:
        return {"temperature": 0.0, "top_p": 1.0, "top_k": 0}
    return {"temperature": float(gen.get("temperature", 0.7) or 0.0), "top_p": float(gen.get("top_p", 1.0) or 1.0),
            "top_k": int(gen.get("top_k", 0) or 0)}
