"""Make the stock `lm_eval --model angel ...` command know angel's model type.

lm-evaluation-harness 0.4 discovers model types only from its own MODEL_MAPPING and whatever the running
process registered; it reads no entry points. So the bootstrap installs a one-line `angelcli-lm-eval.pth`
into the environment's site-packages (`install_pth`), which imports this module at interpreter start-up.

Start-up cost matters here (every Python process in the venv pays it), so this module imports nothing
heavy and does nothing but put a finder on sys.meta_path. When some process later imports
`lm_eval.models` (the module that fills the harness's model registry), the finder lets the real import
run and then registers "angel" as a lazy placeholder pointing at angelcli.eval.lm_eval_adapter:AngelLM:
the adapter (and torch) load only if a run actually asks for `--model angel`.
"""

from __future__ import annotations

import sys

TARGET = "lm_eval.models"
ADAPTER = "angelcli.eval.lm_eval_adapter:AngelLM"
PTH_NAME = "angelcli-lm-eval.pth"
# One line, executed by site.py at start-up; it must never break an interpreter (angel uninstalled, say).
PTH_LINE = 'import sys; exec("try:\\n import angelcli.eval.lm_eval_hook as _h; _h.install()\\nexcept Exception:\\n pass")\n'


def register(models_module) -> None:
    """Register "angel" in the harness's model registry (no-op if present or if the API moved)."""
    try:
        from lm_eval.api.registry import model_registry

        if "angel" not in model_registry:
            model_registry.register("angel", target=ADAPTER)
    except Exception:  # an lm_eval without this registry API: `python -m angelcli.eval.lm_eval_cli` still works
        pass


class _Loader:  # duck-typed loader/finder: importlib.abc would cost every interpreter start-up an import
    def __init__(self, inner):
        self.inner = inner

    def create_module(self, spec):
        return self.inner.create_module(spec)

    def exec_module(self, module):
        self.inner.exec_module(module)
        register(module)


class _Finder:
    """Wraps the loader of `lm_eval.models` so that registration follows its execution."""

    def find_spec(self, fullname, path, target=None):
        if fullname != TARGET:
            return None
        for finder in sys.meta_path:
            if finder is self or not hasattr(finder, "find_spec"):
                continue
            spec = finder.find_spec(fullname, path, target)
            if spec is not None and spec.loader is not None:
                spec.loader = _Loader(spec.loader)
                return spec
        return None


def install() -> None:
    """Called from the .pth line at start-up; idempotent."""
    if TARGET in sys.modules:
        register(sys.modules[TARGET])
        return
    if not any(isinstance(f, _Finder) for f in sys.meta_path):
        sys.meta_path.insert(0, _Finder())


def install_pth(python_purelib: str | None = None):
    """Write the start-up line into site-packages (the bootstrap runs this with the venv's python) -> its Path."""
    import sysconfig
    from pathlib import Path

    site = Path(python_purelib or sysconfig.get_paths()["purelib"])
    path = site / PTH_NAME
    tmp = path.with_suffix(".tmp")
    tmp.write_text(PTH_LINE)
    tmp.replace(path)
    return path

