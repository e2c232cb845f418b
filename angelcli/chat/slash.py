"""Slash commands of `angel chat` and their tab completion; shared by the REPL and the piped-input runner.

A line starting with "/" is never sent to the model: a known command runs, an unknown one gets a hint.
`run_slash(session, line, io)` returns True when the chat should end (/exit).
"""

from __future__ import annotations

from angelcli.errors import AngelError

# name -> (argument synopsis, one-line description); the order is the order /help prints.
COMMANDS: dict[str, tuple[str, str]] = {
    "/help": ("", "show commands and keys"),
    "/system": ("[TEXT]", "show or set the system prompt (the conversation is kept)"),
    "/clear": ("", "forget the conversation (the system prompt stays)"),
    "/save": ("FILE", "save the transcript: FILE.json as JSON, anything else as Markdown"),
    "/load": ("FILE", "replace the conversation with a saved transcript"),
    "/set": ("[NAME VALUE]", "show settings, or set temperature | top_p | top_k | max_tokens | seed"),
    "/stats": ("", "statistics for the whole conversation"),
    "/model": ("", "the loaded model, device, backend and draft"),
    "/exit": ("", "quit (also Ctrl-D)"),
}
ALIASES = {"/?": "/help", "/bye": "/exit", "/quit": "/exit", "/q": "/exit"}

KEYS_HELP = """\
keys:
  Enter              send            Esc Enter        new line
  \"\"\" ... \"\"\"        multiline message (Enter inside the block adds a line)
  Up / Down          history         Ctrl-R           search history
  Tab                complete /commands and file names
  Ctrl-C             stop the reply (the conversation is kept); twice on an empty line quits
  Ctrl-D             quit"""


def help_text() -> str:
    width = max(len(f"{name} {arg}".strip()) for name, (arg, _) in COMMANDS.items())
    lines = ["commands:"]
    for name, (arg, desc) in COMMANDS.items():
        lines.append(f"  {f'{name} {arg}'.strip():<{width}}  {desc}")
    return "\n".join(lines) + "\n" + KEYS_HELP


def unwrap_block(text: str) -> str:
    """'\"\"\"\\nline 1\\nline 2\\n\"\"\"' -> 'line 1\\nline 2' (the multiline delimiters removed)."""
    s = text.strip()
    if s.startswith('"""'):
        s = s[3:]
        if s.endswith('"""'):
            s = s[:-3]
        return s.strip("\n")
    return text


def open_block(text: str) -> bool:
    """True while a \"\"\" block is open: an odd number of delimiters so far."""
    return text.count('"""') % 2 == 1


def settings_text(session) -> str:
    p = session.params
    return (f"temperature {p.temperature}, top_p {p.top_p}, top_k {p.top_k}, max_tokens {p.max_new_tokens}, "
            f"seed {p.seed}")


def model_text(session) -> str:
    rt, cfg = session.rt, session.rt.cfg
    lines = [f"model: {session.model_name} ({rt.model_dir})"]
    if cfg is not None:
        lines.append(f"architecture: {getattr(cfg, 'model_type', '?')}, {cfg.num_hidden_layers} layers, hidden "
                     f"{cfg.hidden_size}, {cfg.num_experts} experts (top-{cfg.num_experts_per_tok}, "
                     f"{cfg.num_shared_experts} shared), vocab {cfg.vocab_size}")
    ctx = getattr(rt.engine, "max_seq_len", None)
    lines.append(f"device: {getattr(rt, 'device', '?')}, dtype {getattr(rt, 'dtype', '?')}, "
                 f"backend {getattr(rt, 'backend', '?')}" + (f", context {ctx} tokens" if ctx else ""))
    lines.append(f"draft: {session.draft or 'none'}")
    return "\n".join(lines)


def run_slash(session, line: str, io) -> bool:
    """Run one slash command; errors are printed, never raised. True means: end the chat."""
    name, _, arg = line.strip().partition(" ")
    name = ALIASES.get(name.lower(), name.lower())
    arg = arg.strip()
    try:
        if name == "/exit":
            return True
        if name == "/help":
            io.info(help_text())
        elif name == "/system":
            if arg:
                session.set_system(unwrap_block(arg))
                io.info("system prompt set")
            else:
                io.info(f"system prompt: {session.system!r}" if session.system else "no system prompt")
        elif name == "/clear":
            session.clear()
            io.info("conversation cleared")
        elif name == "/save":
            if not arg:
                io.error("/save needs a file name, e.g. /save visit.md or /save visit.json")
            else:
                fmt = session.save(arg)
                io.info(f"saved {len(session.messages)} messages to {arg} ({fmt})")
        elif name == "/load":
            if not arg:
                io.error("/load needs a file name")
            else:
                n = session.load(arg)
                io.info(f"loaded {n} messages from {arg}")
        elif name == "/set":
            parts = arg.split()
            if not parts:
                io.info(settings_text(session))
            elif len(parts) != 2:
                io.error("usage: /set temperature|top_p|top_k|max_tokens|seed VALUE")
            else:
                session.set_param(parts[0].lower(), parts[1])
                io.info(settings_text(session))
        elif name == "/stats":
            io.info(session.stats_text())
        elif name == "/model":
            io.info(model_text(session))
        else:
            io.error(f"unknown command {name}; /help lists the commands")
    except AngelError as err:
        io.error(str(err))
    return False


def make_completer():
    """prompt_toolkit completer: command names, /set parameter names, file paths after /save and /load."""
    from prompt_toolkit.completion import Completer, Completion, PathCompleter
    from prompt_toolkit.document import Document

    from angelcli.chat.session import SETTABLE

    paths = PathCompleter(expanduser=True)

    class SlashCompleter(Completer):
        def get_completions(self, document, complete_event):
            text = document.text_before_cursor
            if not text.startswith("/") or "\n" in text:
                return
            if " " not in text:
                for name in list(COMMANDS) + list(ALIASES):
                    if name.startswith(text.lower()):
                        yield Completion(name, start_position=-len(text),
                                         display_meta=COMMANDS.get(name, ("", "alias"))[1])
                return
            cmd, rest = text.split(" ", 1)
            if cmd == "/set" and " " not in rest:
                for key in SETTABLE:
                    if key.startswith(rest.lower()):
                        yield Completion(key, start_position=-len(rest))
            elif cmd in ("/save", "/load"):
                yield from paths.get_completions(Document(rest, len(rest)), complete_event)

    return SlashCompleter()
