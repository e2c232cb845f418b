"""The `angel` command: a thin typer app that dispatches to angelcli.commands.<verb>.

Every verb lives in its own module under angelcli/commands/ and imports only typer at module level; the
library code it calls (torch, transformers, triton) is imported inside the command body. So building this
app for `angel --help` never imports torch (tests/test_cli.py checks it).

main() turns AngelError into one line on stderr plus its exit code (angelcli/errors.py), Ctrl-C into 130,
and any unexpected exception into one line (the traceback only with ANGEL_DEBUG=1).
"""

from __future__ import annotations

import importlib
import os
import sys

import typer

from angelcli.errors import EXIT_INTERRUPTED, AngelError

INTERRUPTED_MESSAGE = ("angel: interrupted (exit 130); finished work is kept: run the same command again to resume "
                       "(pull and quantize continue where they stopped)")

# (verb, "module:function"). A verb module is imported when the app is built; keep those imports light.
COMMANDS: list[tuple[str, str]] = [
    ("generate", "angelcli.commands.generate:generate"),
    ("chat", "angelcli.commands.chat:chat"),
    ("pull", "angelcli.commands.pull:pull"),
    ("list", "angelcli.commands.list:list_models"),
    ("show", "angelcli.commands.show:show"),
    ("rm", "angelcli.commands.rm:rm"),
    ("verify", "angelcli.commands.verify:verify"),
    ("kernels", "angelcli.commands.kernels:kernels"),
    ("tune", "angelcli.commands.tune:tune"),
    ("tiny-train", "angelcli.commands.tiny_train:tiny_train"),
    ("plan", "angelcli.commands.plan:plan"),
    ("bench", "angelcli.commands.bench:bench"),
    ("quantize", "angelcli.commands.quantize:quantize"),
    ("eval", "angelcli.commands.eval:eval_cmd"),
    ("draft-train", "angelcli.commands.draft_train:draft_train"),
    ("draft-attach", "angelcli.commands.draft_attach:draft_attach"),
    ("draft-eval", "angelcli.commands.draft_eval:draft_eval"),
    ("serve", "angelcli.commands.serve:serve"),
]

app = typer.Typer(
    name="angel",
    help="angel: pull, quantize, verify, draft and chat with AntAngelMed (BailingMoeV2).\n\n"
    "Every MODEL argument takes a local path, a name in the local store or an alias "
    "(default: the embedded angel-tiny).",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)


def _version(value: bool) -> None:
    if value:
        from angelcli import __version__

        typer.echo(f"angel {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True, help="Print the version."),
) -> None:
    """angel: AntAngelMed toolkit."""


def _register() -> None:
    for verb, target in COMMANDS:
        module_name, func_name = target.split(":")
        app.command(verb)(getattr(importlib.import_module(module_name), func_name))


_register()


def _quiet_flag_types() -> None:
    """Plain flags (--json, --raw) take no value; typer's help would still print `<bool>` after them."""
    try:
        from typer.core import TyperOption
    except ImportError:
        return
    orig = getattr(TyperOption, "display_type_rich", None)
    if orig is None or getattr(orig, "_angel", False):
        return

    def display_type_rich(self, ctx):
        return None if getattr(self, "is_flag", False) else orig(self, ctx)

    display_type_rich._angel = True
    TyperOption.display_type_rich = display_type_rich


_quiet_flag_types()


def _click_exceptions() -> dict[str, tuple[type, ...]]:
    """Exception classes of click and of typer's vendored copy of click (newer typer ships its own)."""
    mods = []
    try:
        from typer._click import exceptions as vendored

        mods.append(vendored)
    except ImportError:
        pass
    try:
        from click import exceptions as upstream

        mods.append(upstream)
    except ImportError:
        pass
    return {name: tuple(getattr(m, name) for m in mods if hasattr(m, name))
            for name in ("Exit", "Abort", "ClickException")}


def main(argv: list[str] | None = None) -> None:
    """Entry point of the console script; exits with angel's documented codes."""
    cx = _click_exceptions()
    args = sys.argv[1:] if argv is None else argv
    try:
        rv = app(args=args, prog_name="angel", standalone_mode=False)
        code = rv if isinstance(rv, int) else 0
        if code == EXIT_INTERRUPTED:  # typer turns Ctrl-C into a silent Exit(130) and returns its code
            print(INTERRUPTED_MESSAGE, file=sys.stderr)
    except cx["Exit"] as err:
        code = err.exit_code
        if code == EXIT_INTERRUPTED:
            print(INTERRUPTED_MESSAGE, file=sys.stderr)
    except cx["Abort"]:  # click turns Ctrl-C into Abort
        print(INTERRUPTED_MESSAGE, file=sys.stderr)
        code = EXIT_INTERRUPTED
    except cx["ClickException"] as err:
        # One line like every other angel error (click's own format is a three-line usage block).
        ctx = getattr(err, "ctx", None)
        hint = f" (see {ctx.command_path} --help)" if ctx is not None else ""
        msg = " ".join(err.format_message().split())
        print(f"angel: error: {msg}{hint}", file=sys.stderr)
        code = err.exit_code
    except AngelError as err:
        print(f"angel: error: {err}", file=sys.stderr)
        code = err.exit_code
    except KeyboardInterrupt:
        print(INTERRUPTED_MESSAGE, file=sys.stderr)
        code = EXIT_INTERRUPTED
    except BrokenPipeError:
        code = 0
    except Exception as err:  # noqa: BLE001 - last resort: one line, never a traceback by default
        if os.environ.get("ANGEL_DEBUG"):
            raise
        print(f"angel: internal error: {type(err).__name__}: {err} (ANGEL_DEBUG=1 shows the traceback)",
              file=sys.stderr)
        code = 1
    sys.stdout.flush()
    sys.exit(code)
