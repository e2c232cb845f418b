"""The terminal side of `angel chat`: a prompt-toolkit REPL and a runner for piped input.

Interactive (stdin and stdout are terminals): `>>> ` prompt with history (FileHistory under ANGEL_HOME,
Ctrl-R search, fish-style suggestions), tab completion of slash commands, multiline input (\"\"\" blocks, or
Esc Enter for a new line), replies streamed token by token, reasoning dimmed, a dim stats line after each
reply. Ctrl-C while a reply streams stops it and keeps the (marked) partial reply in the conversation;
Ctrl-C at the prompt clears the line, a second one on an empty line quits (130); Ctrl-D or /exit quits (0).

Non-interactive (piped stdin, or --once): one prompt per line (a \"\"\" block spans lines), all in one
conversation; slash commands work too. Replies go to stdout, reasoning, stats and notices to stderr.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Iterable, Iterator, TextIO

from angelcli.chat.slash import help_text, make_completer, open_block, run_slash, unwrap_block
from angelcli.errors import EXIT_USAGE, EXIT_INTERRUPTED, AngelError

DISCLAIMER = "Note: answers come from a language model and are not medical advice; consult a clinician."
_DIM, _RED, _RESET = "\x1b[2m", "\x1b[31m", "\x1b[0m"
# Control characters a model may emit (ESC sequences, carriage returns, bells) must not drive the user's
# terminal: on a terminal they are shown as U+FFFD. Newline and tab pass.
_CONTROLS = {c: "\ufffd" for c in [*range(0, 9), *range(11, 32), 127, *range(128, 160)]}


class ChatIO:
    """Where each kind of output goes. Interactive: everything on the terminal (out), reasoning and stats
    dimmed. Non-interactive: only reply text on out; reasoning, stats, notices and errors on err."""

    def __init__(self, out: TextIO | None = None, err: TextIO | None = None, *, interactive: bool,
                 color: bool | None = None):
        self.out = out or sys.stdout
        self.err = err or sys.stderr
        self.interactive = interactive
        if color is None:
            color = interactive and not os.environ.get("NO_COLOR") and _isatty(self.out)
        self.color = color
        self.errors = 0  # error() calls: a piped chat whose slash commands failed exits 2

    def _write(self, stream: TextIO, text: str, style: str = "") -> None:
        if self.color and style and text:
            text = f"{style}{text}{_RESET}"
        stream.write(text)
        stream.flush()

    def _model_text(self, text: str) -> str:
        return text.translate(_CONTROLS) if self.interactive else text

    def answer(self, text: str) -> None:
        self._write(self.out, self._model_text(text))

    def think(self, text: str) -> None:
        self._write(self.out if self.interactive else self.err, self._model_text(text), _DIM)

    def info(self, text: str) -> None:
        self._write(self.out if self.interactive else self.err, text + "\n")

    def stats(self, text: str) -> None:
        self._write(self.out if self.interactive else self.err, text + "\n", _DIM)

    def error(self, text: str) -> None:
        self.errors += 1
        self._write(self.out if self.interactive else self.err, f"error: {text}\n", _RED)


def _isatty(stream) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False


def reply(session, text: str, io: ChatIO, *, catch_interrupt: bool = True):
    """Stream one reply to io and print its stats line. Returns the assistant Message.

    Ctrl-C (KeyboardInterrupt) stops the reply; the session keeps the partial reply, marked interrupted.
    With catch_interrupt the chat goes on, otherwise the interrupt is re-raised once the reply is recorded."""
    stream = session.stream(text)
    kind, interrupted = None, False
    try:
        for chunk in stream:
            if kind == "think" and chunk.kind == "answer":
                _end_think(io)
            kind = chunk.kind
            (io.think if kind == "think" else io.answer)(chunk.text)
    except KeyboardInterrupt:
        stream.close()  # records the partial reply when the interrupt came between two chunks
        session.record_interrupted()  # the interrupt came before the stream started: keep the question
        interrupted = True
    if kind == "think":  # the reply ended inside its reasoning
        _end_think(io)
    io.answer("\n")
    msg = session.messages[-1]
    if interrupted:
        io.stats("[interrupted]")
    if msg.role == "assistant" and msg.stats is not None:
        io.stats(msg.stats.line())
    if interrupted and not catch_interrupt:
        raise KeyboardInterrupt
    return msg


def _end_think(io: ChatIO) -> None:
    io.think("\n")  # closes the reasoning line (stderr when piped)
    if io.interactive:
        io.answer("\n")  # a blank line between the dimmed reasoning and the answer


def read_script(lines: Iterable[str]) -> Iterator[str]:
    """Prompts from piped lines: one per non-empty line; a line opening \"\"\" collects until the closing one."""
    block: list[str] | None = None
    for raw in lines:
        line = raw.rstrip("\r\n")
        if block is not None:
            block.append(line)
            if open_block("\n".join(block)):
                continue
            yield unwrap_block("\n".join(block))
            block = None
        elif line.strip():
            if open_block(line):
                block = [line]
            else:
                yield unwrap_block(line)
    if block is not None:  # unclosed block at end of input: send what there is
        yield unwrap_block("\n".join(block) + '\n"""')


def run_noninteractive(session, lines: Iterable[str], io: ChatIO, *, disclaimer: bool = True) -> int:
    """Answer each prompt of `lines` in one conversation; AngelError (e.g. context full) ends with its code.
    A failed slash command (/load of a bad file, /save to an unwritable path) is reported and the script goes
    on, but the exit status is 2 so that a script sees it."""
    if disclaimer:
        io.info(DISCLAIMER)
    for prompt in read_script(lines):
        if not prompt.strip():
            continue
        if prompt.lstrip().startswith("/"):
            if run_slash(session, prompt, io):
                break
            continue
        reply(session, prompt, io, catch_interrupt=False)
    return EXIT_USAGE if io.errors else 0


def open_history(path: Path | None, io: ChatIO):
    """FileHistory at `path`, or in-memory history when disabled or the file cannot be written (a warning,
    never a crash: an unwritable history file must not stop the chat)."""
    from prompt_toolkit.history import FileHistory, InMemoryHistory

    if path is None:
        return InMemoryHistory()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "a", encoding="utf-8"):
            pass
        return FileHistory(str(path))
    except OSError as err:
        io.error(f"history file {path} is not writable ({err.strerror}); history is kept for this session only")
        return InMemoryHistory()


def _key_bindings():
    from prompt_toolkit.filters import is_searching
    from prompt_toolkit.key_binding import KeyBindings

    kb = KeyBindings()

    @kb.add("enter", filter=~is_searching)
    def _enter(event):
        buf = event.current_buffer
        if open_block(buf.text):
            buf.insert_text("\n")
        else:
            buf.validate_and_handle()

    @kb.add("escape", "enter", filter=~is_searching)
    def _newline(event):
        event.current_buffer.insert_text("\n")

    return kb


class _NoEcho:
    """While a reply streams the terminal is in cooked mode; keys typed ahead would be echoed into the middle
    of the reply. Echo is switched off meanwhile (Ctrl-C still raises SIGINT) and restored afterwards; the
    typed-ahead keys stay queued for the next prompt."""

    def __init__(self, enabled: bool):
        self.enabled, self.saved = enabled, None

    def __enter__(self):
        if self.enabled:
            try:
                import termios

                fd = sys.stdin.fileno()
                self.saved = termios.tcgetattr(fd)
                quiet = termios.tcgetattr(fd)
                quiet[3] &= ~termios.ECHO
                termios.tcsetattr(fd, termios.TCSANOW, quiet)
            except (ImportError, OSError, ValueError):
                self.saved = None
        return self

    def __exit__(self, *exc):
        if self.saved is not None:
            import termios

            try:
                termios.tcsetattr(sys.stdin.fileno(), termios.TCSANOW, self.saved)
            except (OSError, ValueError):
                pass
        return False


class ChatREPL:
    """The interactive loop. `input`/`output` are prompt_toolkit objects (tests pass a pipe input and
    DummyOutput); replies and notices go through `io`."""

    def __init__(self, session, io: ChatIO, *, history_path: Path | None, disclaimer: bool = True,
                 input=None, output=None):
        self.session, self.io = session, io
        self.history_path, self.disclaimer = history_path, disclaimer
        self.input, self.output = input, output

    def _prompt_session(self):
        from prompt_toolkit import PromptSession
        from prompt_toolkit.auto_suggest import AutoSuggestFromHistory
        from prompt_toolkit.formatted_text import HTML

        return PromptSession(
            message=">>> ", multiline=True, prompt_continuation="... ", key_bindings=_key_bindings(),
            history=open_history(self.history_path, self.io), auto_suggest=AutoSuggestFromHistory(),
            completer=make_completer(), complete_while_typing=False, enable_history_search=False,
            placeholder=HTML("<style fg='ansibrightblack'>Send a message (/? for help)</style>"),
            input=self.input, output=self.output)

    def run(self) -> int:
        io = self.io
        io.info(f"angel chat: {self.session.model_name} - /help for commands, Ctrl-D or /exit to quit")
        if self.disclaimer:
            io.stats(DISCLAIMER)
        ps = self._prompt_session()
        ctrl_c = False  # the previous prompt ended with Ctrl-C on an empty line
        while True:
            try:
                text = ps.prompt()
            except KeyboardInterrupt:
                if ctrl_c:
                    return EXIT_INTERRUPTED
                if not ps.default_buffer.text.strip():
                    ctrl_c = True
                    io.stats("(Ctrl-C again, Ctrl-D or /exit to quit)")
                continue
            except EOFError:
                return 0
            ctrl_c = False
            if not text.strip():
                continue
            if text.lstrip().startswith("/"):
                if run_slash(self.session, text.strip(), io):
                    return 0
                continue
            try:
                with _NoEcho(self.input is None and _isatty(sys.stdin)):
                    reply(self.session, unwrap_block(text), io)
            except AngelError as err:
                io.error(str(err))
            except KeyboardInterrupt:  # before the reply started (while the prompt was being prepared)
                io.stats("[interrupted]")
            except Exception as err:  # noqa: BLE001 - an engine failure (e.g. out of memory) must not end the chat
                if os.environ.get("ANGEL_DEBUG"):
                    raise
                io.error(f"{type(err).__name__}: {err} (the conversation is kept; ANGEL_DEBUG=1 shows the traceback)")


__all__ = ["ChatIO", "ChatREPL", "DISCLAIMER", "help_text", "read_script", "reply", "run_noninteractive"]
