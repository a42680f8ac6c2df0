"""The long-tail table: every registered method on real long-tailed data, same backbone and budget.

Fashion-MNIST (Debian ``dataset-fashion-mnist``) made long-tailed with the exponential profile at
IF 100 / 50 / 10, evaluated on its balanced 10k test set; resnet8, batch 128, lr 0.05, cosine, each
method's own views and hyper-parameters, several seeds. Writes ``lt_table.md`` (All / Many / Medium /
Few top-1, mean ± std over seeds, stage-1 seconds per epoch relative to ``ce`` in the same run),
``lt_table.json`` (every raw number and the environment) and ``per_class.png`` (a method x class heatmap
of per-class accuracy, classes head to tail, beside grouped Many / Medium / Few bars, at IF 100). ``--quick``: IF 100, 1 seed, 2 epochs of 5 steps, 300 test
images per class (a balanced subsample: evaluation dominates a CPU run that short). ``--jobs N`` trains
N runs at once with ``cpus // N`` threads each (small CPU models scale poorly over threads); every
finished run is appended to ``runs.jsonl`` so ``--resume`` skips what a killed run already measured.
"""

from __future__ import annotations

import argparse
import datetime as dt
import functools
import json
import multiprocessing
import os
import platform
import shlex
import signal
import statistics
import sys
import time
import traceback
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np
import torch

import ltreg
from ltreg.data.lt import LTData
from ltreg.method import get_method
from ltreg.registry import registry

GROUPS = ("top1", "many", "medium", "few")
# Hyper-parameters counted in epochs of a paper's schedule, as the fraction of stage 1 they mark; scaled to
# the table's budget (LDAM-DRW's re-weighting from epoch 160 of 200 would never start in a few epochs).
LABELS = {"top1": "All", "many": "Many", "medium": "Medium", "few": "Few"}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="IF 100, 1 seed, 2 epochs of 5 steps, 300 test/class")
    p.add_argument("--methods", help="comma-separated method names (default: every registered method)")
    p.add_argument("--imbalance", help="comma-separated imbalance factors (default 100,50,10; --quick: 100)")
    p.add_argument("--seeds", type=int, help="number of seeds, 0..N-1 (default 3; --quick: 1)")
    p.add_argument("--epochs", type=int, help="stage-1 epochs (default 5; --quick: 2)")
    p.add_argument("--steps", type=int, help="max steps per epoch (default 40; --quick: 5; 0: the whole epoch)")
    p.add_argument("--test-per-class", type=int, help="balanced test subsample (default: all; --quick: 300)")
    p.add_argument("--dataset", default="fashion-mnist-lt", help="or digits-lt, for a smoke test")
    p.add_argument("--out", default="benchmarks/out", help="output folder (run folders go under runs/)")
    p.add_argument("--jobs", type=int, default=1, help="runs trained at once, cpus // jobs threads each")
    p.add_argument("--resume", action="store_true", help="keep the runs in OUT/runs.jsonl made with this budget")
    args = p.parse_args(argv)
    q = args.quick
    args.imbalance = [float(x) for x in (args.imbalance or ("100" if q else "100,50,10")).split(",")]
    args.seeds = args.seeds or (1 if q else 3)
    args.epochs = args.epochs or (2 if q else 5)
    args.steps = (5 if q else 40) if args.steps is None else (args.steps or None)
    args.test_per_class = args.test_per_class or (300 if q else None)
    return args


def dataset_name(name: str, per_class: int | None) -> str:
    """``name``, or an in-process data set: its builder keeping ``per_class`` test images a class."""
    if per_class is None:
        return name
    base, sub = registry("datasets").get(name), f"{name}+test{per_class}"

    def build(**kwargs: Any) -> LTData:
        data = base(**kwargs)
        y = data.test.targets.numpy()
        keep = np.concatenate([np.flatnonzero(y == c)[:per_class] for c in range(data.test.num_classes)])
        keep.sort()
        return LTData(train=data.train, test=data.test.subset(keep), val=data.val)

    registry("datasets").register(sub, build)
    return sub


def select_methods(rows: list[dict[str, str]], wanted: str | None) -> tuple[list[str], list[str]]:
    """Methods to run (``ce`` first, always: it is the reference) and notes on the rows skipped."""
    broken = {r["name"] for r in rows if r["error"]}
    notes = [f"skipped {r['name']} ({r['dist']} {r['version']}): {r['error']}" for r in rows if r["error"]]
    names = [r["name"] for r in rows if not r["error"]]
    if wanted:
        asked = [m.strip() for m in wanted.split(",") if m.strip()]
        unknown = [m for m in asked if m not in names and m not in broken]
        if unknown:
            raise SystemExit(f"unknown method(s) {', '.join(unknown)}; registered: {', '.join(names)}")
        names = [m for m in asked if m in names]
    return ["ce"] + [m for m in names if m != "ce"], notes


def environment(rows: list[dict[str, str]], argv: list[str] | None) -> dict[str, Any]:
    """Command line, date, ltreg and plugin distributions, torch, CPUs."""
    dists = {"ltreg": metadata.version("ltreg")}
    dists.update({r["dist"]: r["version"] for r in rows if r["dist"] != "<in-process>"})
    cmd = [sys.executable, *sys.argv] if argv is None else [sys.executable, __file__, *argv]
    return {"command": shlex.join(cmd), "date": dt.datetime.now().astimezone().isoformat(timespec="seconds"),
            "distributions": dict(sorted(dists.items())), "torch": torch.__version__,
            "python": platform.python_version(), "cpu_count": os.cpu_count(),
            "cpus_usable": len(os.sched_getaffinity(0)), "torch_threads": torch.get_num_threads(),
            "load_average_start": [round(x, 2) for x in os.getloadavg()]}


def init_worker(threads: int, dataset: str, per_class: int | None) -> None:
    """A pool worker: its share of the CPUs, and the in-process test subsample registered again."""
    torch.set_num_threads(threads)
    dataset_name(dataset, per_class)


def budget(args: argparse.Namespace) -> dict[str, Any]:
    """What makes two runs of one (method, IF, seed) comparable: only such rows are resumed."""
    return {k: getattr(args, k) for k in ("dataset", "epochs", "steps", "test_per_class", "quick")}


def load_done(path: Path, args: argparse.Namespace) -> list[dict[str, Any]]:
    """Finished runs in ``runs.jsonl`` with this budget (``--resume``); otherwise the file starts empty."""
    if not args.resume or not path.exists():
        path.write_text("")
        return []
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return [r for r in rows if not r["error"] and r.get("budget") == budget(args)]


def run_task(task: tuple[str, float, int, argparse.Namespace, Path]) -> dict[str, Any]:
    method, imbalance, seed, args, out = task
    print(f"== {method}  IF {imbalance:g}  seed {seed}", flush=True)
    return run_one(method, imbalance, seed, args, out)


@functools.cache
def _train_size(data_name: str, imbalance: float, seed: int) -> int:
    from ltreg.data.build import DataArgs, build_data

    return len(build_data(DataArgs(dataset=data_name, imbalance=imbalance, seed=seed)).train)


def train_size(args: argparse.Namespace, imbalance: float, seed: int) -> int:
    """Training images of the table's data set at ``imbalance`` (built once per process and IF)."""
    return _train_size(args.data_name, imbalance, seed)


def budget_fraction(method: str, data_name: str, train_images: int, args: argparse.Namespace) -> float:
    """The share of the method's full run on this data set (its epochs, whole epochs of batch 128) that the
    table's budget is: ltreg scales every schedule declared in epochs, steps or EMA momentum, the warm-up
    and the length of stage 2 by it (``--budget-fraction``, see ``ltreg.budget``)."""
    from ltreg.config import resolve_config

    full_epochs = resolve_config(get_method(method), {"dataset": data_name}).cfg.epochs
    per_epoch = max(1, train_images // 128)
    steps = min(args.steps or per_epoch, per_epoch)
    return min(1.0, args.epochs * steps / (full_epochs * per_epoch))


def run_one(method: str, imbalance: float, seed: int, args: argparse.Namespace, out: Path) -> dict[str, Any]:
    """One training run; a failure is recorded (and printed), the others go on."""
    cfg: dict[str, Any] = dict(
        dataset=args.data_name, imbalance=imbalance, seed=seed, backbone="resnet8", batch_size=128, lr=0.05,
        weight_decay=5e-4, schedule="cosine", warmup_epochs=0, epochs=args.epochs,
        max_steps_per_epoch=args.steps,
        eval_batch_size=1000, checkpoint_every=max(1, args.epochs), log_every=10**6,
        output_dir=str(out / "runs" / f"{method}-if{imbalance:g}-seed{seed}"), overwrite=True,
        budget_fraction=budget_fraction(method, args.data_name, train_size(args, imbalance, seed), args))
    start = time.perf_counter()
    row: dict[str, Any] = {"method": method, "imbalance": imbalance, "seed": seed, "config": cfg,
                           "budget": budget(args)}
    try:
        result = ltreg.train(method, **cfg)
    except Exception as exc:  # noqa: BLE001 - one broken method must not sink the table
        traceback.print_exc()
        return {**row, "error": f"{type(exc).__name__}: {exc}", "wall_seconds": time.perf_counter() - start}
    s1 = [h["seconds"] for h in result.history if h.get("stage") == 1]
    s1 = s1[1:] if len(s1) > 1 else s1  # the first epoch carries one-off warm-up costs
    return {**row, "error": "", "metrics": result.metrics, "history": result.history,
            "stage1_epoch_seconds": statistics.fmean(s1) if s1 else float("nan"),
            "wall_seconds": round(time.perf_counter() - start, 2)}


def summarise(runs: list[dict[str, Any]], methods: list[str], imbalance: float) -> dict[str, dict[str, Any]]:
    """Per method at one IF: mean and std over seeds of each group, the epoch-time ratio to ce, errors."""
    out: dict[str, dict[str, Any]] = {}
    for m in methods:
        ok = [r for r in runs if r["method"] == m and r["imbalance"] == imbalance and not r["error"]]
        errs = [r["error"] for r in runs if r["method"] == m and r["imbalance"] == imbalance and r["error"]]
        row: dict[str, Any] = {"seeds": len(ok), "errors": errs}
        for g in GROUPS:
            vals = [v for r in ok if (v := r["metrics"][g]) is not None and v == v]  # None (NaN before 0.2): no class
            std = statistics.stdev(vals) if len(vals) > 1 else None
            row[g] = (statistics.fmean(vals), std) if vals else None
        row["epoch_seconds"] = statistics.fmean(r["stage1_epoch_seconds"] for r in ok) if ok else None
        row["num"] = {g: ok[0]["metrics"][f"num_{g}"] for g in GROUPS[1:]} if ok else {}
        out[m] = row
    ce = out.get("ce", {}).get("epoch_seconds")
    for row in out.values():
        row["time_vs_ce"] = row["epoch_seconds"] / ce if ce and row["epoch_seconds"] else None
    return out


def cell(v: tuple[float, float | None] | None) -> str:
    if v is None:
        return "–"
    return f"{v[0]:.2f}" if v[1] is None else f"{v[0]:.2f} ± {v[1]:.2f}"


def markdown(env: dict[str, Any], args: argparse.Namespace, notes: list[str],
             tables: dict[float, dict[str, dict[str, Any]]]) -> str:
    resumed = f" (plus {env['resumed']} runs kept from OUT/runs.jsonl by --resume)" if env.get("resumed") else ""
    lines = ["# Long-tail table", "", f"- command: `{env['command']}`", f"- date: {env['date']}",
             f"- distributions: {', '.join(f'{k} {v}' for k, v in env['distributions'].items())}",
             f"- torch {env['torch']}, Python {env['python']}, {env['cpu_count']} CPUs "
             f"({env['cpus_usable']} usable, {env['torch_threads']} torch threads), "
             f"load average at start {' '.join(map(str, env['load_average_start']))}",
             f"- data: {args.dataset}, exponential profile; balanced test set"
             f"{f' ({args.test_per_class} images per class)' if args.test_per_class else ''}",
             f"- budget: resnet8, batch 128, lr 0.05, cosine, {args.epochs} epoch(s) of "
             f"{args.steps or 'all'} steps, {args.seeds} seed(s); "
             f"{args.jobs} run(s) at a time; wall time {env['wall_seconds']:.0f} s{resumed}; "
             f"{env['runs']} runs took {env['run_seconds']:.0f} s summed over runs",
             "- s/epoch vs ce: mean stage-1 epoch seconds (the first left out when there are more) over ce's",
             "- every schedule in epochs, steps or EMA momentum, the warm-up and stage 2 scaled to the share of "
             "each method's full run that this budget is (--budget-fraction, ltreg.budget)",
             *[f"- {n}" for n in notes]]
    if len(tables) > 1:
        lines += ["", f"## Overview  (All / Few top-1 %, mean ± std over {args.seeds} seed(s))", "",
                  "| method | " + " | ".join(f"IF {imb:g} {LABELS[g]}" for imb in tables for g in ("top1", "few"))
                  + " |", "|---" * (1 + 2 * len(tables)) + "|"]
        for m in next(iter(tables.values())):
            lines.append(f"| {m} | " + " | ".join(cell(t[m][g]) for t in tables.values() for g in ("top1", "few"))
                         + " |")
    for imb, summary in tables.items():
        num = next((r["num"] for r in summary.values() if r["num"]), {})
        heads = [LABELS[g] + (f" ({num[g]} cls)" if g in num else "") for g in GROUPS]
        lines += ["", f"## IF {imb:g}  (top-1 %, mean ± std over {args.seeds} seed(s))", "",
                  "| method | " + " | ".join(heads) + " | s/epoch vs ce |", "|---" * 6 + "|"]
        for m, r in summary.items():
            ratio = "–" if r["time_vs_ce"] is None else f"{r['time_vs_ce']:.2f}×"
            err = f" (failed: {r['errors'][0][:80]})" if r["errors"] else ""
            lines.append(f"| {m}{err} | " + " | ".join(cell(r[g]) for g in GROUPS) + f" | {ratio} |")
        ce_few = summary.get("ce", {}).get("few")
        if ce_few is None and num.get("few") == 0:
            lines += ["", f"No class has fewer than the few-shot threshold of training images at IF {imb:g}: "
                      "no Few column."]
        elif ce_few is not None:
            behind = [m for m, r in summary.items()
                      if m != "ce" and (r["few"] is None or r["few"][0] <= ce_few[0])]
            lines += ["", f"Few-shot vs cross-entropy (IF {imb:g}): methods that do not beat ce on Few "
                      f"({ce_few[0]:.2f} %) here: " + (", ".join(behind) or "none") + "."]
    return "\n".join(lines) + "\n"


def _mean(values: list[Any]) -> float:
    """Mean of the numbers in ``values`` (None: a split without classes); NaN when none."""
    nums = [float(v) for v in values if isinstance(v, (int, float))]
    return sum(nums) / len(nums) if nums else float("nan")


def plot(runs: list[dict[str, Any]], methods: list[str], imbalance: float, path: Path) -> None:
    """Two panels that read at a glance: a method x class heatmap of per-class top-1 (classes head -> tail,
    each labelled with its training images; mean over seeds) and grouped Many / Medium / Few bars per method."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows, names, counts = [], [], None
    splits: dict[str, list[float]] = {"many": [], "medium": [], "few": []}
    for m in methods:
        ok = [r for r in runs if r["method"] == m and r["imbalance"] == imbalance and not r["error"]]
        if not ok:
            continue
        counts = torch.tensor(ok[0]["metrics"]["train_counts"], dtype=torch.float64)
        per_class = [[float("nan") if v is None else v for v in r["metrics"]["per_class"]] for r in ok]
        rows.append(torch.tensor(per_class, dtype=torch.float64).nanmean(0))
        names.append(m)
        for split, values in splits.items():
            values.append(_mean([r["metrics"].get(split) for r in ok]))
    if counts is None:
        return
    order = counts.argsort(descending=True, stable=True)  # head -> tail
    grid = torch.stack(rows)[:, order].numpy()
    n_cls = grid.shape[1]
    fig, (ax, cx, bx) = plt.subplots(1, 3, figsize=(7.5 + 0.35 * min(n_cls, 40), 1.4 + 0.42 * len(names)),
                                     gridspec_kw={"width_ratios": [max(2.0, min(n_cls, 40) / 4), 0.08, 2.2]})
    im = ax.imshow(grid, aspect="auto", cmap="viridis", vmin=0, vmax=100)
    step = max(1, n_cls // 40)
    ax.set_xticks(range(0, n_cls, step), [str(int(counts[order][i])) for i in range(0, n_cls, step)],
                  rotation=90 if n_cls > 12 else 0, fontsize=7)
    ax.set_yticks(range(len(names)), names, fontsize=8)
    ax.set_xlabel("classes, head -> tail (training images per class)")
    if n_cls <= 20:
        for i in range(grid.shape[0]):
            for j in range(n_cls):
                if grid[i, j] == grid[i, j]:
                    ax.text(j, i, f"{grid[i, j]:.0f}", ha="center", va="center", fontsize=6,
                            color="white" if grid[i, j] < 60 else "black")
    fig.colorbar(im, cax=cx, label="test top-1 of the class (%)")
    ax.set_title(f"per-class top-1, IF {imbalance:g} (mean over seeds)", fontsize=9)
    height = 0.8 / 3
    for k, (split, color) in enumerate((("many", "tab:blue"), ("medium", "tab:orange"), ("few", "tab:red"))):
        ys = [i + (k - 1) * height for i in range(len(names))]
        bx.barh(ys, splits[split], height=height, color=color, label=split.capitalize())
    bx.set_yticks(range(len(names)), [])
    bx.set_ylim(len(names) - 0.5, -0.5)  # the rows of the heatmap, top to bottom
    bx.set_xlim(0, 100)
    bx.set_xlabel("top-1 (%)")
    bx.set_title("Many / Medium / Few", fontsize=9)
    bx.grid(axis="x", alpha=0.3)
    bx.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.1 - 0.6 / len(names)), ncol=3, frameon=False)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv: list[str] | None = None) -> Path:
    args = parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    rows = ltreg.list_methods()
    env = environment(rows, argv)
    methods, notes = select_methods(rows, args.methods)
    for n in notes:
        print(n, file=sys.stderr)
    args.data_name = dataset_name(args.dataset, args.test_per_class)
    log = out / "runs.jsonl"
    # ce first within each (IF, seed), then the others: the same load conditions for the time ratio
    order = [(m, imb, seed) for imb in args.imbalance for seed in range(args.seeds) for m in methods]
    runs = [r for r in load_done(log, args) if (r["method"], r["imbalance"], r["seed"]) in order]
    done = {(r["method"], r["imbalance"], r["seed"]) for r in runs}
    env["resumed"] = len(runs)
    tasks = [(m, imb, seed, args, out) for m, imb, seed in order if (m, imb, seed) not in done]
    t0 = time.perf_counter()
    threads = max(1, len(os.sched_getaffinity(0)) // args.jobs)
    pool = multiprocessing.get_context("spawn").Pool(
        args.jobs, init_worker, (threads, args.dataset, args.test_per_class)) if args.jobs > 1 else None
    # SIGTERM unwinds through ``finally`` so the pool's workers stop with the table instead of finishing their run
    on_term = signal.signal(signal.SIGTERM, lambda *_: sys.exit(143)) if pool else None
    try:
        for row in pool.imap_unordered(run_task, tasks) if pool else map(run_task, tasks):
            runs.append(row)
            with log.open("a") as f:
                f.write(json.dumps(row, default=str) + "\n")
            print(f"-- {row['method']}  IF {row['imbalance']:g}  seed {row['seed']}: {row['wall_seconds']:.0f} s "
                  f"({len(runs)}/{len(order)} done, {time.perf_counter() - t0:.0f} s)", flush=True)
    finally:
        if pool:
            pool.terminate()
            signal.signal(signal.SIGTERM, on_term)
        registry("datasets").unregister(args.data_name)  # a no-op for a registered name: only local ones go
    runs.sort(key=lambda r: order.index((r["method"], r["imbalance"], r["seed"])))
    env["wall_seconds"] = round(time.perf_counter() - t0, 1)
    env["runs"], env["run_seconds"] = len(runs), round(sum(r["wall_seconds"] for r in runs), 1)
    env["load_average_end"] = [round(x, 2) for x in os.getloadavg()]
    tables = {imb: summarise(runs, methods, imb) for imb in args.imbalance}
    text = markdown(env, args, notes, tables)
    (out / "lt_table.md").write_text(text)
    (out / "lt_table.json").write_text(json.dumps(
        {"environment": env, "args": vars(args), "skipped": notes, "runs": runs,
         "summary": {f"{k:g}": v for k, v in tables.items()}}, indent=1, default=str))
    plot_if = 100.0 if 100.0 in args.imbalance else max(args.imbalance)
    plot(runs, methods, plot_if, out / "per_class.png")
    print(text)
    print(f"wrote {out / 'lt_table.md'}, {out / 'lt_table.json'}, {out / 'per_class.png'} "
          f"in {env['wall_seconds']:.0f}s")
    return out


if __name__ == "__main__":
    main()
