"""Smoke test of benchmarks/lt_table.py: two methods, one epoch of two steps on digits-LT, in-process."""

from __future__ import annotations

import importlib.util
import json
import re
import statistics
import subprocess
import sys
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


def test_lt_table_jobs_and_resume(tmp_path: Path) -> None:
    """Two runs at once in spawned workers; ``--resume`` keeps the finished runs and trains only the new ones."""
    out = tmp_path / "out"
    base = [sys.executable, str(ROOT / "benchmarks" / "lt_table.py"), "--dataset", "digits-lt", "--methods",
            "ce,balanced-softmax", "--quick", "--imbalance", "20", "--epochs", "1", "--steps", "2",
            "--test-per-class", "20", "--jobs", "2", "--out", str(out)]
    first = subprocess.run([*base, "--seeds", "1"], capture_output=True, text=True, timeout=300)
    assert first.returncode == 0, first.stderr[-3000:]
    kept = {(r["method"], r["seed"]): r["wall_seconds"] for r in map(json.loads, (out / "runs.jsonl").open())}
    assert set(kept) == {("ce", 0), ("balanced-softmax", 0)}

    second = subprocess.run([*base, "--seeds", "2", "--resume"], capture_output=True, text=True, timeout=300)
    assert second.returncode == 0, second.stderr[-3000:]
    trained = re.findall(r"^== (\S+)  IF 20  seed (\d)", second.stdout, flags=re.M)
    assert sorted(trained) == [("balanced-softmax", "1"), ("ce", "1")]
    data = json.loads((out / "lt_table.json").read_text())
    assert data["environment"]["resumed"] == 2
    assert [(r["method"], r["seed"]) for r in data["runs"]] == [
        ("ce", 0), ("balanced-softmax", 0), ("ce", 1), ("balanced-softmax", 1)]
    assert all(r["wall_seconds"] == kept[(r["method"], 0)] for r in data["runs"] if r["seed"] == 0)
    assert data["summary"]["20"]["ce"]["seeds"] == 2
    assert "2 run(s) at a time" in (out / "lt_table.md").read_text()


def test_lt_table_group_without_classes() -> None:
    """At IF 10 on Fashion-MNIST-LT no class is few-shot: the metric is None (NaN in older metrics), the cell
    is "–", not a crash."""
    lt_table = _load_script()
    metrics = {"top1": 70.0, "many": 66.0, "medium": 83.0, "few": None, "few_reason": "no class has fewer than 240",
               "num_many": 7, "num_medium": 3, "num_few": 0}
    runs = [{"method": m, "imbalance": 10.0, "seed": s, "error": "", "stage1_epoch_seconds": 1.0 + s,
             "metrics": {**metrics, "top1": 70.0 + s}} for m in ("ce", "supcon") for s in (0, 1)]
    summary = lt_table.summarise(runs, ["ce", "supcon"], 10.0)
    assert summary["ce"]["few"] is None and summary["ce"]["num"]["few"] == 0
    old = [{**r, "metrics": {**r["metrics"], "few": float("nan")}} for r in runs]  # metrics of ltreg < 0.2
    assert lt_table.summarise(old, ["ce", "supcon"], 10.0)["ce"]["few"] is None
    assert summary["ce"]["top1"] == (70.5, statistics.stdev([70.0, 71.0]))
    assert summary["supcon"]["time_vs_ce"] == 1.0
    assert lt_table.cell(summary["ce"]["few"]) == "–"
