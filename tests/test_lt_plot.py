"""benchmarks/lt_table.py's figure: a method x class heatmap (head -> tail) and grouped Many / Medium / Few bars."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def test_plot_draws_a_heatmap_and_grouped_bars(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("matplotlib")
    spec = importlib.util.spec_from_file_location("lt_table_plot", ROOT / "benchmarks" / "lt_table.py")
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, "lt_table_plot", mod)  # its dataclasses look their module up
    spec.loader.exec_module(mod)
    counts = [5, 500, 50, 20, 200]  # not sorted: the heatmap orders classes head -> tail
    runs = [{"method": m, "imbalance": 100.0, "error": "", "seed": s,
             "metrics": {"train_counts": counts, "per_class": [10.0 * k + s, 90.0, 50.0, None, 70.0],
                         "many": 80.0 + s, "medium": 50.0, "few": None if m == "b" else 5.0}}
            for k, m in enumerate(("a", "b")) for s in (0, 2)]
    runs.append({"method": "c", "imbalance": 100.0, "error": "boom", "seed": 0, "metrics": {}})
    drawn = {}
    import matplotlib.figure

    real = matplotlib.figure.Figure.savefig

    def keep(fig, path, **kw):  # the figure as it is saved: its axes, image and bars
        drawn["axes"] = fig.axes
        return real(fig, path, **kw)

    monkeypatch.setattr(matplotlib.figure.Figure, "savefig", keep)
    mod.plot(runs, ["a", "b", "c"], 100.0, tmp_path / "per_class.png")
    assert (tmp_path / "per_class.png").stat().st_size > 1000
    heat, bars = drawn["axes"][0], drawn["axes"][2]  # [1]: the colour bar
    grid = heat.get_images()[0].get_array()
    assert grid.shape == (2, 5)  # methods with results x classes; the failed run is left out
    assert [t.get_text() for t in heat.get_xticklabels()] == ["500", "200", "50", "20", "5"]
    assert [t.get_text() for t in heat.get_yticklabels()] == ["a", "b"]
    assert grid[0, 4] == 1.0 and grid[1, 4] == 11.0  # class with 5 images: mean over seeds 0 and 2
    widths = sorted(round(p.get_width(), 3) for p in bars.patches)
    assert widths.count(81.0) == 2 and widths.count(50.0) == 2 and widths.count(5.0) == 1  # b has no Few
