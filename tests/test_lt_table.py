"""Smoke test of benchmarks/lt_table.py: two methods, one epoch of two steps on digits-LT, in-process."""

from __future__ import annotations

import importlib.util
import json
import re
from pathlib import Path
from types import ModuleType

ROOT = Path(__file__).resolve().parents[1]
NUMBER = re.compile(r"^-?\d+(\.\d+)?( ± \d+(\.\d+)?)?$")


def _load_script() -> ModuleType:
    spec = importlib.util.spec_from_file_location("lt_table", ROOT / "benchmarks" / "lt_table.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_lt_table_smoke(tmp_path: Path) -> None:
    lt_table = _load_script()
    args = ["--dataset", "digits-lt", "--methods", "ce,balanced-softmax", "--quick", "--imbalance", "20",
            "--epochs", "1", "--steps", "2", "--out", str(tmp_path / "out")]
    out = lt_table.main(args)
    md = (out / "lt_table.md").read_text()
    rows = [line for line in md.splitlines() if line.startswith("| ") and not line.startswith("| method")]
    assert [r.split("|")[1].strip() for r in rows] == ["ce", "balanced-softmax"]
    for r in rows:
        cells = [c.strip() for c in r.strip("|").split("|")]
        assert len(cells) == 6, r
        assert all(NUMBER.match(c) for c in cells[1:5]), r  # All / Many / Medium / Few
        assert cells[5].endswith("×"), r
    assert "Few-shot vs cross-entropy (IF 20)" in md
    assert (out / "per_class.png").stat().st_size > 1000
    data = json.loads((out / "lt_table.json").read_text())
    assert {r["method"] for r in data["runs"]} == {"ce", "balanced-softmax"}
    assert all(not r["error"] for r in data["runs"])
    assert data["environment"]["torch"] and data["environment"]["cpu_count"]
    assert "ltreg" in data["environment"]["distributions"]
