import os
import sys
from pathlib import Path

from types import SimpleNamespace

import pytest

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

# Tests must never reach a hub.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture(scope="session")
def tiny_ckpt(tmp_path_factory):
    """One shared tiny random checkpoint (3 layers, 8 experts in 4 groups, top-2)."""
    from angelcli.fixtures import write_tiny_checkpoint

    return write_tiny_checkpoint(tmp_path_factory.mktemp("tiny") / "ckpt")


@pytest.fixture(scope="module")
def one_thread():
    """For modules of tiny matmuls (`pytestmark = pytest.mark.usefixtures("one_thread")`): they gain nothing
    from intra-op threads, and on a busy 2-core machine spinning OpenMP workers make every op ~10x slower.
    Restored after the module."""
    import torch

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(autouse=True)
def _isolated_home(tmp_path, monkeypatch):
    monkeypatch.setenv("ANGEL_HOME", str(tmp_path / "angel-home"))


@pytest.fixture
def run(capsys):
    """Run `angel ARGS` in this process (fast: torch is imported once) -> result with returncode/stdout/stderr."""
    from angelcli.cli import main

    def _run(*args):
        with pytest.raises(SystemExit) as exit_info:
            main([str(a) for a in args])
        out = capsys.readouterr()
        return SimpleNamespace(returncode=exit_info.value.code, stdout=out.out, stderr=out.err)

    return _run
