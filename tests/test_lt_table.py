"""benchmarks/lt_table.py: a smoke run on digits-LT, equal shares of each method's run in every stage (refused
otherwise), the not-converged mark, and the published numbers against the result file they cite."""

from __future__ import annotations

import importlib.util
import json
import re
import shutil
import statistics
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest

ROOT = Path(__file__).resolve().parents[1]
NUMBER = re.compile(r"^-?\d+(\.\d+)?( ± \d+(\.\d+)?)?$")


def _load_script() -> ModuleType:
    spec = importlib.util.spec_from_file_location("lt_table", ROOT / "benchmarks" / "lt_table.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["lt_table"] = module  # its dataclasses resolve their annotations through sys.modules
    spec.loader.exec_module(module)
    return module


def test_lt_table_smoke(tmp_path: Path) -> None:
    """ce (one stage) and supcon (cRT stage 2) at the default share 0.1, epochs capped at 2 steps: stage 1
    3 of 30 epochs, supcon's stage 2 1 of 10; the table states the steps per stage."""
    lt_table = _load_script()
    args = ["--dataset", "digits-lt", "--methods", "ce,supcon", "--quick", "--imbalance", "20",
            "--steps", "2", "--out", str(tmp_path / "out")]
    out = lt_table.main(args)
    md = (out / "lt_table.md").read_text()
    rows = [line for line in md.splitlines() if line.startswith("| ") and not line.startswith("| method")]
    assert [r.split("|")[1].strip().split(" ")[0] for r in rows] == ["ce", "supcon"]
    for r in rows:
        cells = [c.strip() for c in r.strip("|").split("|")]
        assert len(cells) == 7, r
        assert all(NUMBER.match(c) for c in cells[1:5]), r  # All / Many / Medium / Few
        assert cells[6].endswith("×"), r
    assert [r.split("|")[6].strip() for r in rows] == ["6", "6+2"]  # 3 x 2 steps; 3 x 2 + 1 x 2
    assert "trains 0.1 of its own full run in every stage" in md and "capped at 2 steps" in md
    assert "Few-shot vs cross-entropy (IF 20)" in md
    assert (out / "per_class.png").stat().st_size > 1000
    data = json.loads((out / "lt_table.json").read_text())
    assert {r["method"] for r in data["runs"]} == {"ce", "supcon"}
    assert all(not r["error"] for r in data["runs"])
    assert data["plans"]["supcon"] == [{"stage": 1, "full_epochs": 30, "epochs": 3},
                                       {"stage": 2, "full_epochs": 10, "epochs": 1}]
    assert data["environment"]["torch"] and data["environment"]["machine"]
    assert "ltreg" in data["environment"]["distributions"]
    assert lt_table.markdown(data) == md  # the markdown is a function of the result file alone
    first, last = sorted(r["finished"] for r in data["runs"])
    assert f"runs finished {first} … {last}" in md


def test_table_skips_tuned_pretrained_recipes_unless_named() -> None:
    """LIFT adapts a pretrained ViT: the ResNet-8-from-scratch table skips it with a note that names the way to
    run it anyway; named with ``--methods`` it runs."""
    lt_table = _load_script()
    rows = [{"name": n, "dist": "x", "version": "0", "error": ""} for n in ("ce", "lift", "supcon")]
    methods, notes = lt_table.select_methods(rows, None)
    assert methods == ["ce", "supcon"]
    assert len(notes) == 1 and "skipped lift" in notes[0] and "--methods lift" in notes[0]
    assert lt_table.select_methods(rows, "lift") == (["ce", "lift"], [])


def test_generator_refuses_unequal_stage_shares(tmp_path: Path) -> None:
    """1/30 of supcon's run is 1 of its 30 stage-1 epochs but a third of one of its 10 cRT epochs: stage 2 would
    train a larger share than stage 1 (the loop trains at least one epoch), so the table stops before training
    anything; a finished run whose stages differ from the plan is refused too."""
    lt_table = _load_script()
    assert [p.epochs for p in lt_table.plan("ce", "digits-lt", 1 / 30)] == [1]
    with pytest.raises(lt_table.UnequalShares, match="supcon 0.333333 of its 10 stage-2 epochs"):
        lt_table.plan("supcon", "digits-lt", 1 / 30)
    assert [p.epochs for p in lt_table.plan("cogloat", "digits-lt", 0.1)] == [3, 10]
    with pytest.raises(lt_table.UnequalShares, match="ce 1.5 of its 30 stage-1 epochs"):
        lt_table.plan("ce", "digits-lt", 0.05)
    out = tmp_path / "out"
    with pytest.raises(lt_table.UnequalShares):
        lt_table.main(["--dataset", "digits-lt", "--methods", "ce,supcon", "--share", str(1 / 30), "--quick",
                       "--imbalance", "20", "--out", str(out)])
    assert not (out / "runs").exists()  # refused before any run
    plan = [{"stage": 1, "full_epochs": 30, "epochs": 3}, {"stage": 2, "full_epochs": 10, "epochs": 1}]
    hist = [{"stage": 1, "steps": 4}] * 3 + [{"stage": 2, "steps": 4}]
    row = {"method": "supcon", "imbalance": 20.0, "seed": 0, "plan": plan, "history": hist}
    lt_table.check_shares(row)  # as planned: passes
    with pytest.raises(lt_table.UnequalShares, match="unequal shares"):
        lt_table.check_shares({**row, "history": hist + [{"stage": 2, "steps": 4}]})  # 2 stage-2 epochs
    with pytest.raises(lt_table.UnequalShares, match="unequal shares"):
        lt_table.check_shares({**row, "history": hist[:3] + [{"stage": 2, "steps": 9}]})  # longer stage-2 epochs


def test_not_converged_mark() -> None:
    lt_table = _load_script()
    hist = [{"stage": 1, "loss": 2.0, "reb": 5.0}, {"stage": 1, "loss": 1.5, "reb": 4.9}, {"stage": 2, "loss": 0.1}]
    ce = lt_table.converged({"method": "ce", "history": hist}, 0.05)
    assert ce == {"loss": "loss", "first": 2.0, "last": 1.5, "converged": True}
    reb = lt_table.converged({"method": "rebsupcon", "history": hist}, 0.05)  # main loss L_reb: 2 % fall
    assert reb["loss"] == "reb" and reb["converged"] is False
    assert lt_table.converged({"method": "rebsupcon", "history": hist}, 0.01)["converged"] is True


def test_lt_table_jobs_and_resume(tmp_path: Path) -> None:
    """Two runs at once in spawned workers; ``--resume`` keeps the finished runs and trains only the new ones."""
    out = tmp_path / "out"
    base = [sys.executable, str(ROOT / "benchmarks" / "lt_table.py"), "--dataset", "digits-lt", "--methods",
            "ce,balanced-softmax", "--quick", "--imbalance", "20", "--steps", "1",
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
    hist = [{"stage": 1, "steps": 3, "loss": 2.0}, {"stage": 1, "steps": 3, "loss": 1.0}]
    runs = [{"method": m, "imbalance": 10.0, "seed": s, "error": "", "stage1_epoch_seconds": 1.0 + s,
             "history": hist, "metrics": {**metrics, "top1": 70.0 + s}} for m in ("ce", "supcon") for s in (0, 1)]
    summary = lt_table.summarise(runs, ["ce", "supcon"], 10.0)
    assert summary["ce"]["few"] is None and summary["ce"]["num"]["few"] == 0
    old = [{**r, "metrics": {**r["metrics"], "few": float("nan")}} for r in runs]  # metrics of ltreg < 0.2
    assert lt_table.summarise(old, ["ce", "supcon"], 10.0)["ce"]["few"] is None
    assert summary["ce"]["top1"] == (70.5, statistics.stdev([70.0, 71.0]))
    assert summary["supcon"]["time_vs_ce"] == 1.0 and summary["ce"]["steps"] == [(6,)]
    assert lt_table.cell(summary["ce"]["few"]) == "–"


def test_published_numbers_match_their_result_files(tmp_path: Path) -> None:
    """README.md, docs/benchmarks.md and benchmarks/README.md carry the table only as generated blocks, each
    equal to its cited result file rendered again; a changed number in a copy is caught."""
    lt_table = _load_script()
    assert lt_table.stale_blocks(ROOT) == []
    methods = {"ce", "supcon", "rebsupcon", "ecl", "cogloat", "iccl", "acl", "balanced-softmax"}
    for name in lt_table.PUBLISHED:
        text = (ROOT / name).read_text()
        blocks = lt_table.published_blocks(text)
        assert blocks, f"{name} has no generated table block"
        outside = lt_table.BLOCK.sub("", text)
        typed = [ln for ln in outside.splitlines() if ln.startswith("| ") and ln.split("|")[1].strip() in methods]
        assert typed == [], f"{name}: table rows typed by hand outside the generated blocks: {typed[:2]}"
    copy = tmp_path / "repo"
    for name in (*lt_table.PUBLISHED, str(lt_table.RESULTS)):
        (copy / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(ROOT / name, copy / name)
    doc = copy / "docs" / "benchmarks.md"
    text = doc.read_text()
    cited, part, content = lt_table.published_blocks(text)[0]
    number = re.search(r"\| (\d+\.\d\d)", content)
    assert number, "the block holds no number"
    doc.write_text(text.replace(content, content.replace(number.group(0), "| 99.99", 1)))
    assert lt_table.stale_blocks(copy) == [f"docs/benchmarks.md: the {part} block differs from {cited} "
                                           "(run benchmarks/lt_table.py --publish)"]
    lt_table.publish(copy / lt_table.RESULTS, copy)  # regenerating repairs it
    assert lt_table.stale_blocks(copy) == []
