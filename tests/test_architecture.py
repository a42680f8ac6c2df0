"""The shape of the house: the layers of ``pyproject.toml`` checked by import-linter, a short loop.

The layer list in ``[tool.importlinter]`` is the one written statement of ltreg's architecture
(``docs/architecture.md`` draws it); ``lint-imports`` checks it over every import, function-level and
``TYPE_CHECKING`` ones included, for the core and for every plugin (plugins import only ``ltreg``).
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import ROOT

tomllib = pytest.importorskip("tomllib")  # Python 3.11+

PKG = ROOT / "ltreg"
LINT = [sys.executable, "-c", "import sys; from importlinter.cli import lint_imports_command; "
        "sys.exit(lint_imports_command())"]


def _contracts() -> list[dict]:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["importlinter"]["contracts"]


def _lint(cwd: Path, env_path: str | None = None) -> subprocess.CompletedProcess[str]:
    env = None
    if env_path is not None:
        import os

        env = {**os.environ, "PYTHONPATH": env_path}
    return subprocess.run([*LINT, "--no-cache"], cwd=cwd, env=env, capture_output=True, text=True, timeout=300)


def test_import_contracts_are_kept() -> None:
    out = _lint(ROOT)
    assert out.returncode == 0, out.stdout[-4000:] + out.stderr[-2000:]
    assert "0 broken" in out.stdout


def test_every_module_sits_in_a_layer() -> None:
    """A new module must be placed in the layer list, or the contract would not see its imports."""
    layers = next(c for c in _contracts() if c["id"] == "layers")["layers"]
    named = {m.strip() for layer in layers for m in layer.replace(":", "|").split("|")}
    missing = []
    for path in PKG.rglob("*.py"):
        parts = path.relative_to(PKG).with_suffix("").parts
        if parts[-1] == "__init__":
            parts = parts[:-1]
        if not parts or (path.name == "__init__.py" and any(n.startswith(".".join(parts) + ".") for n in named)):
            continue  # ltreg/__init__.py (the public API, above every layer) or a package whose modules are placed
        if not any(".".join(parts[:i]) in named for i in range(1, len(parts) + 1)):
            missing.append(".".join(parts))
    assert not missing, f"modules in no layer of pyproject.toml [tool.importlinter]: {missing}"


def test_an_upward_import_fails_naming_both_modules(tmp_path: Path) -> None:
    """The check can fail: a copy of the package with one planted upward import breaks the layers contract."""
    shutil.copytree(PKG, tmp_path / "ltreg", ignore=shutil.ignore_patterns("__pycache__"))
    planted = tmp_path / "ltreg" / "optim.py"
    planted.write_text(planted.read_text() + "\n\ndef _planted():\n    from ltreg.loop import fit  # noqa\n")
    layers = next(c for c in _contracts() if c["id"] == "layers")
    toml = "\n".join([
        "[tool.importlinter]", 'root_packages = ["ltreg"]', "", "[[tool.importlinter.contracts]]",
        'id = "layers"', 'name = "layers"', 'type = "layers"', 'containers = ["ltreg"]',
        "layers = [" + ", ".join(f'"{x}"' for x in layers["layers"]) + "]", ""])
    (tmp_path / "pyproject.toml").write_text(toml)
    out = _lint(tmp_path, env_path=str(tmp_path))
    assert out.returncode != 0
    assert "ltreg.optim is not allowed to import ltreg.loop" in out.stdout, out.stdout[-3000:]


def test_the_loop_is_short() -> None:
    assert len((PKG / "loop.py").read_text().splitlines()) < 250


def test_every_public_name_resolves() -> None:
    """``ltreg.__all__`` is the public API: each name, lazy ones included, is importable from ``ltreg``."""
    import ltreg

    missing = [name for name in ltreg.__all__ if not hasattr(ltreg, name)]
    assert not missing, missing
    assert len(set(ltreg.__all__)) == len(ltreg.__all__), "a name is listed twice in ltreg.__all__"
