"""angel chat on the real tiny model: the session renders and generates like `angel generate`; the command
line (--once, piped stdin, usage errors) run in-process through angelcli.cli.main."""

import io
import sys

import pytest

from angelcli.chat.repl import ChatIO, reply
from angelcli.chat.session import ChatSession
from angelcli.engine.sampling import SamplingParams


def quiet_io():
    return ChatIO(io.StringIO(), io.StringIO(), interactive=False, color=False)


def test_session_renders_like_generate(tiny_ckpt):
    from angelcli.generate import GenRequest, run_request
    from angelcli.runtime import open_runtime
    from angelcli.tokenizer import DEFAULT_SYSTEM

    rt = open_runtime(str(tiny_ckpt), device="cpu")
    params = SamplingParams(max_new_tokens=12)
    ref = run_request(rt, GenRequest(prompt="What is a fever?", system=DEFAULT_SYSTEM), params)
    s = ChatSession(rt, params=params)
    msg = reply(s, "What is a fever?", quiet_io())
    assert rt.engine.last_stats.prompt_tokens == len(ref["prompt_ids"])
    assert msg.stats.generated_tokens == len(ref["ids"])
    if msg.reasoning is None:
        assert msg.content == ref["text"]
    else:  # the random fixture happened to open with <think>: the split must account for the whole text
        assert ref["text"].lstrip().startswith("<think>") and ref["text"].endswith(msg.content)


def run_main(capsys, *args):
    """`angel chat ...` in-process (torch is already imported, so no 5 s start-up); -> (code, out, err)."""
    from angelcli.cli import main

    with pytest.raises(SystemExit) as exc:
        main(["chat", *args])
    cap = capsys.readouterr()
    return exc.value.code, cap.out, cap.err


def test_cli_once_and_piped_stdin(tiny_ckpt, capsys, monkeypatch):
    code, out, err = run_main(capsys, str(tiny_ckpt), "--once", "What is a fever?", "-n", "6", "--temperature", "0")
    assert code == 0, err
    assert "not medical advice" in err and "6 generated" in err and "not medical advice" not in out
    assert out.endswith("\n") and "generated" not in out
    monkeypatch.setattr(sys, "stdin", io.StringIO("hi\n你好\n/stats\n"))
    code, out, err = run_main(capsys, str(tiny_ckpt), "-n", "4", "--no-disclaimer")
    assert code == 0, err
    assert err.count("4 generated") == 2 and "turns: 2" in err and "medical advice" not in err
    assert out.count("\n") >= 2


@pytest.mark.parametrize("flags,match", [(["--draft"], "--draft"),
                                         (["--top-p", "0"], "--top-p"), (["--tp", "0"], "--tp")])
def test_cli_usage_errors_are_one_line(tiny_ckpt, capsys, flags, match):
    code, _, err = run_main(capsys, str(tiny_ckpt), "--once", "x", *flags)
    assert code == 2 and match in err and "Traceback" not in err and len(err.strip().splitlines()) == 1
