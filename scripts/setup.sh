#!/usr/bin/env bash
# Create .venv and install expose with its test tools. Safe to re-run.
# torch is pinned first: an unpinned resolve pulls several GB of CUDA wheels on CPU machines.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
    "$PY" -m venv .venv
fi
.venv/bin/python -m pip install -q --disable-pip-version-check "torch==${EXPOSE_TORCH_VERSION:-2.13.0}"
.venv/bin/python -m pip install -q --disable-pip-version-check -e ".[dev]"
echo "expose installed in $(pwd)/.venv  (activate: source .venv/bin/activate)"
