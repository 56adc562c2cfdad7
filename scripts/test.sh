#!/usr/bin/env bash
# Set up (idempotent), lint and type-check, then run the test suite. Tests read ../shared (corpus and face model).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install-system-deps.sh  # chromium, GStreamer RTSP server, GL libs (skips without root)
bash scripts/setup.sh
export EXPOSE_FACE_MODEL="${EXPOSE_FACE_MODEL:-$(cd .. && pwd)/shared/models/face_landmarker.task}"
bash scripts/lint.sh  # ruff + mypy first: a lint or type error fails the run
exec .venv/bin/python -m pytest -q "$@"
