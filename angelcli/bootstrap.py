"""Set up a virtual environment and run the demo or the test suite: the two README commands.

    python3 -m angelcli.bootstrap demo    # .venv + install + medical questions (English, Chinese) to angel-tiny
    python3 -m angelcli.bootstrap test    # .venv + install with test extras + the whole test suite

Standard library only: it runs on a fresh machine that has nothing but Python 3.11+. It is safe to rerun:
the install step is skipped while pyproject.toml is unchanged.

Why torch is installed first and on its own: with no torch present, `pip install torch` on Linux picks a
CUDA build of several GB even on a machine without a GPU. On CPU machines we ask for the CPU build of
torch 2.13.0, first from the wheels the local pip configuration already knows (no network), then from
the PyTorch CPU index. On GPU machines the declared range admits the CUDA builds users already run.
Set ANGEL_TORCH_SPEC to force a requirement (e.g. "torch==2.14.0") and ANGEL_VENV to move the venv.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CPU_TORCH = "torch==2.13.0"
GPU_TORCH = "torch>=2.10,<=2.14.0"
CPU_INDEX = "https://download.pytorch.org/whl/cpu"
DEMO_QUESTIONS = (
    "What are common symptoms of type 2 diabetes?",
    "晚上总是睡不着有什么办法？",
)
# Room for a whole answer: angel-tiny's English diabetes answer (six symptoms, then when to see a doctor) ends its
# turn at 118 tokens; 96 cut it off mid-sentence. tests/test_angel_tiny.py checks both close within this.
DEMO_MAX_NEW_TOKENS = 160


def _say(msg: str) -> None:
    print(f"[bootstrap] {msg}", file=sys.stderr, flush=True)


def _run(cmd: list[str], check: bool = True, **kw) -> int:
    _say(" ".join(cmd))
    rc = subprocess.call(cmd, **kw)
    if check and rc != 0:
        _say(f"command failed with exit code {rc}")
        sys.exit(rc)
    return rc


def _pip(pip: list[str], args: list[str], what: str, fallback: str | None = None) -> bool:
    """One pip step with one summary line: pip's own output (progress, retries, warnings; >100 lines when an
    index is unreachable) is kept and shown, last lines only, when the step fails for good. With `fallback`
    a failure is expected and only says what is tried next."""
    import time

    start = time.monotonic()
    _say(f"{what} ...")
    proc = subprocess.run(pip + ["--no-input", *args], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                          errors="replace")
    if proc.returncode == 0:
        _say(f"{what}: done ({time.monotonic() - start:.0f} s)")
        return True
    if fallback:
        _say(f"{what}: not available ({fallback})")
        return False
    tail = [ln for ln in proc.stdout.splitlines() if ln.strip()][-15:]
    for ln in tail:
        print(f"    {ln}", file=sys.stderr)
    _say(f"{what}: pip failed with exit code {proc.returncode} (its last lines are above)")
    sys.exit(proc.returncode)


def _has_gpu() -> bool:
    smi = shutil.which("nvidia-smi")
    if not smi:
        return False
    try:
        return subprocess.run([smi, "-L"], capture_output=True, timeout=20).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


def venv_dir() -> Path:
    return Path(os.environ.get("ANGEL_VENV", ROOT / ".venv"))


def _bin(name: str) -> Path:
    return venv_dir() / "bin" / name


def ensure_venv(extras: str) -> None:
    vdir = venv_dir()
    py = _bin("python")
    if not py.exists():
        _run([sys.executable, "-m", "venv", str(vdir)])
    pip = [str(py), "-m", "pip", "--disable-pip-version-check", "-q"]
    stamp = vdir / ".angel-install"
    want = hashlib.sha256((ROOT / "pyproject.toml").read_bytes() + extras.encode()).hexdigest()
    if stamp.exists() and stamp.read_text().strip() == want:
        return
    have_torch = subprocess.call([str(py), "-c", "import torch"], stderr=subprocess.DEVNULL) == 0
    if not have_torch:
        spec = os.environ.get("ANGEL_TORCH_SPEC")
        if spec:
            _pip(pip, ["install", spec], f"installing {spec}")
        elif _has_gpu():
            _pip(pip, ["install", GPU_TORCH], f"installing {GPU_TORCH}")
        # CPU: local wheels first (no network), then the PyTorch CPU index (one try, short timeout: a machine
        # whose pip reaches only its configured index would otherwise print pages of retries), then that index.
        elif not _pip(pip, ["install", "--no-index", CPU_TORCH], f"installing {CPU_TORCH} from local wheels",
                      fallback="trying the PyTorch CPU index"):
            if not _pip(pip, ["install", CPU_TORCH, "--index-url", CPU_INDEX, "--retries", "0", "--timeout", "15"],
                        f"installing {CPU_TORCH} from {CPU_INDEX}", fallback="trying the configured index"):
                _pip(pip, ["install", CPU_TORCH], f"installing {CPU_TORCH}")
    _pip(pip, ["install", "-e", f"{ROOT}[{extras}]" if extras else str(ROOT)],
         f"installing angel{f'[{extras}]' if extras else ''} and its dependencies")
    # The stock `lm_eval --model angel` needs "angel" registered in its process: a start-up hook does it
    # (angelcli/eval/lm_eval_hook.py explains why a .pth file and not an entry point).
    _run([str(py), "-c", "from angelcli.eval.lm_eval_hook import install_pth; install_pth()"])
    stamp.write_text(want + "\n")


def demo() -> int:
    ensure_venv("")
    angel = str(_bin("angel"))
    rc = 0
    for n, question in enumerate(DEMO_QUESTIONS):
        _say(f"question: {question}")
        # The disclaimer once is enough; each question is its own one-turn chat.
        extra = ["--no-disclaimer"] if n else []
        cmd = [angel, "chat", "--once", question, "--max-new-tokens", str(DEMO_MAX_NEW_TOKENS), *extra]
        rc = _run(cmd, check=False) or rc
    return rc


def test(pytest_args: list[str]) -> int:
    ensure_venv("test")
    if shutil.which("tmux") is None and shutil.which("apt-get") and os.geteuid() == 0:
        # The real-terminal chat test drives angel inside tmux; it skips with a reason when absent.
        _run(["apt-get", "install", "-y", "-q", "tmux"], check=False, stdout=subprocess.DEVNULL)
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    return _run([str(_bin("python")), "-m", "pytest", *pytest_args], check=False, cwd=ROOT, env=env)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] not in ("demo", "test", "install"):
        print(__doc__, file=sys.stderr)
        return 2
    if argv[0] == "demo":
        return demo()
    if argv[0] == "install":
        ensure_venv("test")
        return 0
    return test(argv[1:] or ["-q"])


if __name__ == "__main__":
    sys.exit(main())
