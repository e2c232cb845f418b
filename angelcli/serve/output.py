"""One request's generated tokens -> OpenAI text pieces: detokenised, cut at stop strings, reasoning apart.

    out = TextOutput(tokenizer, stop=["\\n\\n"], split_think=True, start_in_think=False)
    for step in steps:
        deltas = out.push(step)        # [("reasoning"|"content", text)], ready to stream
        if out.stopped: break          # a stop string was seen: the request is cancelled
    deltas += out.close()

A stop id (finish_reason "stop") ends the reply and is not text. Stop strings are matched on the raw text
before the reasoning split, as OpenAI matches them on the output; text that could be the start of a stop
string is held back until the next piece decides it, so a streamed reply never shows part of one.
"""

from __future__ import annotations

from angelcli.chat.think import ThinkSplitter


class TextOutput:
    def __init__(self, tokenizer, stop: list[str] | None = None, split_think: bool = False,
                 start_in_think: bool = False):
        from angelcli.tokenizer import StreamDecoder

        self.tok = tokenizer
        self.decoder = StreamDecoder(tokenizer)
        self.stop = [s for s in (stop or []) if s]
        self.splitter = ThinkSplitter(start_in_think) if split_think else None
        self.held = ""  # decoded text not released yet (a possible stop-string start)
        self.stopped = False
        self.content: list[str] = []
        self.reasoning: list[str] = []
        self.token_ids: list[int] = []

    def _split(self, text: str) -> list[tuple[str, str]]:
        if not text:
            return []
        if self.splitter is None:
            out = [("content", text)]
        else:
            out = [("reasoning" if c.kind == "think" else "content", c.text) for c in self.splitter.feed(text)]
        for kind, t in out:
            (self.reasoning if kind == "reasoning" else self.content).append(t)
        return out

    def _release(self, text: str, final: bool) -> list[tuple[str, str]]:
        self.held += text
        if self.stop:
            hits = [i for i in (self.held.find(s) for s in self.stop) if i >= 0]
            if hits:
                self.stopped = True
                ready, self.held = self.held[: min(hits)], ""
                return self._split(ready)
            if not final:
                keep = max((_overlap(self.held, s) for s in self.stop), default=0)
                ready, self.held = self.held[: len(self.held) - keep], self.held[len(self.held) - keep:]
                return self._split(ready)
        ready, self.held = self.held, ""
        return self._split(ready)

    def push(self, step) -> list[tuple[str, str]]:
        """Take one StepOutput; returns the deltas it releases."""
        if self.stopped:
            return []
        self.token_ids.append(step.token_id)
        if step.finish_reason == "stop":
            return []
        return self._release(self.decoder.push(step.token_id), final=False)

    def close(self) -> list[tuple[str, str]]:
        """End of the reply: flush the decoder, the held text and the reasoning splitter."""
        out = [] if self.stopped else self._release(self.decoder.flush(), final=True)
        if self.splitter is not None:
            for c in self.splitter.close():
                kind = "reasoning" if c.kind == "think" else "content"
                (self.reasoning if kind == "reasoning" else self.content).append(c.text)
                out.append((kind, c.text))
        return out

    @property
    def content_text(self) -> str:
        return "".join(self.content)

    @property
    def reasoning_text(self) -> str | None:
        if self.splitter is None:
            return None
        return self.splitter.reasoning_text

    def token_text(self, tid: int) -> str:
        return self.tok.decode([tid])


def _overlap(text: str, stop: str) -> int:
    """Length of the longest end of `text` that is a proper start of `stop`."""
    for n in range(min(len(stop) - 1, len(text)), 0, -1):
        if stop.startswith(text[-n:]):
            return n
    return 0
