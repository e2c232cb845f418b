"""`angel chat` in a real terminal: tmux runs it on the default angel-tiny, the test types and reads the screen.

A question gets a streamed answer and a stats line; Ctrl-C in the middle of a long reply returns to the
prompt; /save writes the transcript; /exit ends with status 0.
"""

import os
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
TMUX = shutil.which("tmux")

pytestmark = pytest.mark.skipif(
    TMUX is None, reason="tmux is not installed: the real-terminal chat test drives `angel chat` inside tmux "
                         "(`python -m angelcli.bootstrap test` installs it with apt-get when run as root)")


class Pane:
    def __init__(self, socket: str):
        self.base = [TMUX, "-L", socket, "-f", "/dev/null"]

    def tmux(self, *args, check=True) -> str:
        r = subprocess.run([*self.base, *args], capture_output=True, text=True, timeout=20)
        if check and r.returncode != 0:
            raise AssertionError(f"tmux {' '.join(args)}: {r.stderr}")
        return r.stdout

    def screen(self) -> str:
        return self.tmux("capture-pane", "-p", "-J", "-S", "-", "-t", "chat")

    def type(self, text: str) -> None:
        self.tmux("send-keys", "-t", "chat", "-l", text)
        self.tmux("send-keys", "-t", "chat", "Enter")

    def wait(self, cond, what: str, timeout: float = 30.0) -> str:
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            s = self.screen()
            if cond(s):
                return s
            time.sleep(0.1)
        raise AssertionError(f"timed out waiting for {what}; screen:\n{self.screen()[-3000:]}")


def prompts(screen: str) -> int:
    return sum(line.startswith(">>> ") for line in screen.splitlines())


def test_chat_in_tmux(tmp_path):
    rc_file, transcript = tmp_path / "rc", tmp_path / "visit.md"
    env = {"ANGEL_HOME": str(tmp_path / "home"), "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1",
           "TOKENIZERS_PARALLELISM": "false", "TERM": "xterm-256color", "LANG": "C.UTF-8", "NO_COLOR": ""}
    chat = " ".join(shlex.quote(a) for a in [sys.executable, "-m", "angelcli", "chat", "--temperature", "0",
                                              "--max-new-tokens", "24", "--ignore-eos"])
    exports = " ".join(f"{k}={shlex.quote(v)}" for k, v in env.items())
    shell = f"cd {shlex.quote(str(ROOT))} && env {exports} {chat}; echo $? > {shlex.quote(str(rc_file))}"
    pane = Pane(f"angel-chat-test-{os.getpid()}")
    pane.tmux("new-session", "-d", "-s", "chat", "-x", "150", "-y", "40", shell)
    try:
        pane.wait(lambda s: prompts(s) >= 1, "the first prompt", timeout=90)
        assert "not medical advice" in pane.screen()

        pane.type("What is a fever?")
        s = pane.wait(lambda s: prompts(s) >= 2, "the reply and a new prompt")
        assert "24 generated" in s and "tok/s" in s and "first token" in s

        # A long reply, interrupted: text must grow on screen while it streams, then Ctrl-C stops it.
        pane.type("/set max_tokens 100000")
        pane.wait(lambda s: "max_tokens 100000" in s, "/set to answer")
        pane.type("Tell me everything about diabetes.")
        question = pane.wait(lambda s: "Tell me everything about diabetes." in s and len(s.split(
            "Tell me everything about diabetes.", 1)[1].strip()) > 20, "the long reply to start streaming")
        # (polled: a reply can pass through stretches of blank lines that leave the visible screen unchanged)
        pane.wait(lambda s: s != question, "the screen to change while the reply streams", timeout=20)
        pane.tmux("send-keys", "-t", "chat", "C-c")
        s = pane.wait(lambda s: prompts(s) >= 4, "the prompt after Ctrl-C")
        assert "[interrupted]" in s and "finish: interrupted" in s

        pane.type(f"/save {transcript}")
        pane.wait(lambda s: "saved 4 messages" in s, "/save to confirm")
        text = transcript.read_text(encoding="utf-8")
        assert "What is a fever?" in text and "Tell me everything about diabetes." in text
        assert "*[interrupted] [" in text

        pane.type("/exit")
        end = time.monotonic() + 20
        while not (rc_file.exists() and rc_file.read_text().strip()) and time.monotonic() < end:
            time.sleep(0.1)
        assert rc_file.read_text().strip() == "0"
        history = (tmp_path / "home" / "chat_history").read_text(encoding="utf-8")
        assert "What is a fever?" in history
    finally:
        pane.tmux("kill-server", check=False)
