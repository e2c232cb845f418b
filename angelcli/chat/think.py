"""Reasoning apart from the answer: a streaming splitter for a reply's leading `<think>` block.

    sp = ThinkSplitter()
    for piece in pieces: chunks = sp.feed(piece)     # [Chunk("think"|"answer", text)]
    chunks += sp.close()
    sp.reasoning_text, sp.answer_text
"""

from __future__ import annotations

from dataclasses import dataclass

THINK_OPEN, THINK_CLOSE = "<think>", "</think>"


@dataclass
class Chunk:
    kind: str  # "think" (reasoning) | "answer"
    text: str


class ThinkSplitter:
    """Splits streamed text into reasoning and answer.

    Only a `<think>` block at the very start of a reply (leading whitespace allowed) is reasoning, as the
    template reads it; a tag later in the answer is answer text. `start_in_think` covers templates whose
    generation prompt already opened the block. Tags may arrive split over several pieces; a possible tag
    prefix at the end of the text seen so far is held back until the next piece decides it.
    Newlines right after `<think>` and right after `</think>` are dropped, as the template strips them.
    """

    def __init__(self, start_in_think: bool = False):
        self.mode = "think" if start_in_think else "start"  # start -> think -> answer, or start -> answer
        self.buf = ""
        self.strip_newlines = start_in_think
        self.reasoning: list[str] = []
        self.answer: list[str] = []
        self.saw_think = start_in_think

    def _emit(self, kind: str, text: str, out: list[Chunk]) -> None:
        if self.strip_newlines:
            text = text.lstrip("\n")
            if not text:
                return
            self.strip_newlines = False
        if text:
            (self.reasoning if kind == "think" else self.answer).append(text)
            out.append(Chunk(kind, text))

    def feed(self, text: str) -> list[Chunk]:
        self.buf += text
        out: list[Chunk] = []
        while self.buf:
            if self.mode == "start":
                head = self.buf.lstrip()
                if head.startswith(THINK_OPEN):
                    self.buf = head[len(THINK_OPEN):]
                    self.mode, self.saw_think, self.strip_newlines = "think", True, True
                    continue
                if not head or THINK_OPEN.startswith(head):
                    break  # only whitespace or a partial tag so far: wait
                self.mode = "answer"
            if self.mode == "answer":
                self._emit("answer", self.buf, out)
                self.buf = ""
                break
            i = self.buf.find(THINK_CLOSE)
            if i >= 0:
                self._emit("think", self.buf[:i], out)
                self.buf = self.buf[i + len(THINK_CLOSE):]
                self.mode, self.strip_newlines = "answer", True
                continue
            keep = _partial_suffix(self.buf, THINK_CLOSE)
            self._emit("think", self.buf[: len(self.buf) - keep], out)
            self.buf = self.buf[len(self.buf) - keep:]
            break
        return out

    def close(self) -> list[Chunk]:
        """End of the reply: whatever was held back is emitted as it stands."""
        out: list[Chunk] = []
        if self.buf:
            self._emit("think" if self.mode == "think" else "answer", self.buf, out)
            self.buf = ""
        return out

    @property
    def reasoning_text(self) -> str | None:
        return "".join(self.reasoning).rstrip("\n") if self.saw_think else None

    @property
    def answer_text(self) -> str:
        return "".join(self.answer)


def _partial_suffix(text: str, tag: str) -> int:
    """Length of the longest end of `text` that is a proper start of `tag`."""
    for n in range(min(len(tag) - 1, len(text)), 0, -1):
        if tag.startswith(text[-n:]):
            return n
    return 0
