#!/usr/bin/env bash
# Lint and type-check (run by scripts/test.sh before pytest; CI fails on any finding).
# mypy cannot follow setuptools' editable import hook, and the source folders (monitor/,
# profiles/, exporters/) are installed as expose.monitor, expose.profiles, expose.exporters;
# so the expose namespace is laid out here as links (build/typecheck/expose/*), which
# pyproject's mypy_path points at.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
tree=build/typecheck/expose
mkdir -p "$tree"
for pkg in monitor profiles exporters; do
    ln -sfn "../../../$pkg" "$tree/$pkg"
done
"$PY" -m ruff check .
"$PY" -m mypy               # the packages (pyproject: [tool.mypy] packages)
"$PY" -m mypy tests bench   # tests and benchmarks against them
