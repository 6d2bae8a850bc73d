#!/usr/bin/env bash
# Creates .venv and installs agl-tinker with its dev extra, offline-friendly and idempotent.
# torch is installed first and pinned to the CPU wheel so pip never pulls a multi-GB CUDA build.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
stamp=.venv/.agl-tinker-installed
want=$(cat pyproject.toml scripts/bootstrap.sh | sha256sum | cut -c1-16)
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
    exit 0
fi
[ -x .venv/bin/python ] || "$PY" -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip >/dev/null
# The CPU build of torch, for any Python it is built for, from PyTorch's CPU index (a ~200 MB wheel);
# where that index is unreachable, the same pin from the configured indexes: on Linux x86_64 PyPI
# serves only a CUDA build (several GB) unless a CPU wheel is at hand locally.
TORCH=torch==2.13.0
if ! .venv/bin/python -m pip install -q --retries 0 --timeout 15 --only-binary torch \
        --index-url https://download.pytorch.org/whl/cpu "$TORCH" 2>/dev/null; then
    echo "bootstrap: PyTorch's CPU index is unreachable; installing $TORCH from the configured indexes" >&2
    .venv/bin/python -m pip install -q "$TORCH"
fi
.venv/bin/python -m pip install -q -e ".[dev]"
echo "$want" > "$stamp"
