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
# The GE2E voice encoder's weights ship in the resemblyzer wheel; its own requirements would
# replace webrtcvad-wheels with a module that needs pkg_resources (monitor/features/voice_id.py).
.venv/bin/python -m pip install -q --disable-pip-version-check --no-deps "resemblyzer==0.1.4"
echo "expose installed in $(pwd)/.venv  (activate: source .venv/bin/activate)"
