#!/usr/bin/env bash
# Creates a venv (.venv) and installs agl-tinker with its dev extra, offline-friendly and idempotent.
# torch is installed first and pinned to the CPU wheel so pip never pulls a multi-GB CUDA build unasked.
#   PYTHON=python3.13 bash scripts/bootstrap.sh          # the interpreter (default python3)
#   AGL_TINKER_VENV=/tmp/venv313 bash scripts/bootstrap.sh  # where the venv goes (default .venv here)
#   AGL_TINKER_TORCH=cpu bash scripts/bootstrap.sh       # a CPU build of torch or nothing: exit 3, one line,
#                                                        # where none is at hand (never the CUDA build)
#   AGL_TINKER_TORCH_INDEX=URL                           # PyTorch's CPU index or your mirror of it
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
VENV=${AGL_TINKER_VENV:-.venv}
TORCH_INDEX=${AGL_TINKER_TORCH_INDEX:-https://download.pytorch.org/whl/cpu}
stamp=$VENV/.agl-tinker-installed
want=$(cat pyproject.toml scripts/bootstrap.sh | sha256sum | cut -c1-16)
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
    exit 0
fi
[ -x "$VENV/bin/python" ] || "$PY" -m venv "$VENV"
"$VENV/bin/python" -m pip install -q --upgrade pip >/dev/null
# The CPU build of torch, for any Python it is built for, from PyTorch's CPU index (a ~200 MB wheel);
# a CPU wheel already at hand (pip's find-links, a local index) satisfies the same pin. Otherwise the
# configured indexes decide: on Linux x86_64 PyPI serves only a CUDA build (about 4.6 GB in the venv
# with its nvidia-* libraries); macOS, Windows and Linux aarch64 wheels on PyPI are CPU builds.
TORCH=torch==2.13.0
# `+cpu` is the local version PyTorch's CPU index gives its Linux/Windows wheels.
cpu_torch() { "$VENV/bin/python" -c 'import sys, torch; sys.exit(torch.version.cuda is not None)' 2>/dev/null; }
if ! "$VENV/bin/python" -m pip install -q --retries 0 --timeout 15 --only-binary torch \
        --index-url "$TORCH_INDEX" "$TORCH" 2>/dev/null; then
    py=$("$VENV/bin/python" -c 'import sys; print("%d.%d" % sys.version_info[:2])')
    if [ "${AGL_TINKER_TORCH:-}" = cpu ]; then
        # Local wheels only: what pip's find-links and file:// indexes hold, nothing downloaded.
        if "$VENV/bin/python" -m pip install -q --retries 0 --timeout 15 --only-binary torch --no-index \
                "$TORCH" 2>/dev/null && cpu_torch; then
            :
        else
            echo "bootstrap: no CPU build of $TORCH for Python $py at hand ($TORCH_INDEX unreachable, none in the local wheels); AGL_TINKER_TORCH=cpu refuses the CUDA build" >&2
            exit 3
        fi
    else
        echo "bootstrap: $TORCH_INDEX is unreachable; installing $TORCH for Python $py from the configured indexes (on Linux x86_64 without a local CPU wheel: the CUDA build, about 4.6 GB with its libraries; AGL_TINKER_TORCH_INDEX names a mirror of the CPU index)" >&2
        "$VENV/bin/python" -m pip install -q "$TORCH"
    fi
fi
"$VENV/bin/python" -m pip install -q -e ".[dev]"
echo "$want" > "$stamp"
