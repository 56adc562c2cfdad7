"""The layout rule on the code: each stage imports only the stages its docstring allows.

Every subpackage's ``__init__`` docstring has a line ``May import: a, b, ...`` (stage names:
monitor's subpackages, ``profiles``, ``exporters``; the base modules ``errors``, ``config`` and
``metrics`` are open to all). This test reads every module's imports with ``ast`` (no import
is executed) and fails on any import of a stage not on that list, and checks that the README's
layout table names exactly the subpackages in the tree.
"""

from __future__ import annotations

import ast
import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
BASE = {"errors", "config", "metrics"}


def _stage_dirs() -> dict[str, Path]:
    stages = {d.name: d for d in sorted((REPO / "monitor").iterdir()) if (d / "__init__.py").is_file()}
    stages["profiles"] = REPO / "profiles"
    stages["exporters"] = REPO / "exporters"
    return stages


def _allowed(pkg: Path) -> set[str]:
    doc = ast.get_docstring(ast.parse((pkg / "__init__.py").read_text())) or ""
    m = re.search(r"^May import: (.*)$", doc, re.M)
    assert m, f"{pkg.relative_to(REPO)}/__init__.py: its docstring must say 'May import: ...'"
    names = [n.strip().removeprefix("monitor.") for n in m.group(1).split(",")]
    return {n for n in names if n and not n.startswith("(")}


def _stage_of(module: str) -> str | None:
    """expose.monitor.features.track -> 'features'; expose.profiles.store -> 'profiles';
    base modules and the package itself -> None."""
    parts = module.split(".")
    if parts[0] != "expose" or len(parts) < 2:
        return None
    if parts[1] != "monitor":
        return parts[1]
    if len(parts) < 3 or parts[2] in BASE or parts[2] == "__version__":
        return None
    return parts[2]


def _imports(path: Path) -> list[tuple[int, str]]:
    out = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            out.append((node.lineno, node.module))
            out += [(node.lineno, f"{node.module}.{a.name}") for a in node.names]
        elif isinstance(node, ast.Import):
            out += [(node.lineno, a.name) for a in node.names]
    return out


def test_every_stage_imports_only_what_its_docstring_allows() -> None:
    stages = _stage_dirs()
    assert {"media", "features", "model", "live", "api", "cli"} <= set(stages)
    violations = []
    for name, pkg in stages.items():
        allowed = _allowed(pkg) | {name}
        unknown = allowed - set(stages)
        assert not unknown, f"{name}: 'May import' names unknown stages {sorted(unknown)}"
        for path in sorted(pkg.rglob("*.py")):
            for line, module in _imports(path):
                target = _stage_of(module)
                if target is not None and target in stages and target not in allowed:
                    where = f"{path.relative_to(REPO)}:{line}"
                    violations.append(f"{where} imports {module} ({name} may not import {target})")
    assert not violations, "\n".join(violations)


def test_base_modules_import_no_stage() -> None:
    stages = _stage_dirs()
    for base in sorted(BASE):
        path = REPO / "monitor" / f"{base}.py"
        bad = [m for _, m in _imports(path) if _stage_of(m) in stages]
        assert not bad, f"monitor/{base}.py imports stages {bad}"


def test_the_rule_catches_a_violation(tmp_path: Path) -> None:
    """The checker itself: a features module importing live is reported."""
    bad = tmp_path / "bad.py"
    bad.write_text("from expose.monitor.live.monitor import LiveMonitor\nimport expose.monitor.api.app\n")
    found = {_stage_of(m) for _, m in _imports(bad)}
    assert {"live", "api"} <= found
    assert "live" not in _allowed(REPO / "monitor" / "features")


def test_readme_layout_table_matches_the_tree() -> None:
    readme = (REPO / "README.md").read_text()
    section = readme.split("## Layout", 1)
    assert len(section) == 2, "README needs a '## Layout' section"
    listed = set(re.findall(r"^\| `monitor/(\w+)/` \|", section[1], re.M))
    actual = {d.name for d in (REPO / "monitor").iterdir() if d.is_dir() and not d.name.startswith((".", "_"))}
    assert listed == actual, f"README lists {sorted(listed)}, the tree has {sorted(actual)}"


@pytest.mark.parametrize("module", ["expose.monitor.alerts.policy", "expose.monitor.alerts.events",
                                    "expose.monitor.live.watchdog", "expose.monitor.config"])
def test_light_modules_do_not_pull_in_torch(module: str) -> None:
    code = f"import sys, {module}; sys.exit(1 if 'torch' in sys.modules else 0)"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, f"importing {module} imports torch\n{proc.stderr}"


def test_only_the_expose_name_is_installed(tmp_path: Path) -> None:
    """Outside the repository, the generic names are not importable; expose.* is."""
    code = ("import importlib.util as u, sys; "
            "bad = [n for n in ('monitor', 'profiles', 'exporters') if u.find_spec(n)]; "
            "import expose.monitor, expose.profiles, expose.exporters; "
            "sys.exit(f'importable: {bad}' if bad else 0)")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr or proc.stdout
