#!/usr/bin/env bash
# `angel kernels --check` under triton 3.6.0 (what many GPU machines have, the project's H200 among them),
# in its own venv (.venv-triton36, gitignored), leaving .venv's triton alone.
# torch: $TORCH_WHEEL if set, else a local CPU wheel in /opt/wheels, else `torch` from the index.
# angel's other dependencies (typer, rich, ...) are borrowed from .venv through a .pth file placed after the
# venv's own site-packages, so this venv's torch and triton win and nothing else is downloaded.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${VENV:-.venv-triton36}
if [ ! -x "$VENV/bin/python" ] || ! "$VENV/bin/python" -c "import triton, torch; assert triton.__version__ == '3.6.0'" 2>/dev/null; then
  python3 -m venv "$VENV"
  WHEEL=${TORCH_WHEEL:-$(ls /opt/wheels/torch-*+cpu-*.whl 2>/dev/null | head -n 1 || true)}
  "$VENV/bin/pip" install -q "triton==3.6.0" "${WHEEL:-torch}"
fi
OWN_SITE=$("$VENV/bin/python" -c "import sysconfig; print(sysconfig.get_paths()['purelib'])")
.venv/bin/python -c "import sys; print('\n'.join(p for p in sys.path if p.endswith('site-packages')))" \
  > "$OWN_SITE/zz-angel-main-venv.pth"
echo "$PWD" > "$OWN_SITE/zz-angel-src.pth"
"$VENV/bin/python" -c "import triton, torch; print(f'triton {triton.__version__}, torch {torch.__version__}')" >&2
exec "$VENV/bin/python" -m angelcli kernels --check "$@"
