"""The long-tail table: every registered method on real long-tailed data, same backbone, same share of its run.

Fashion-MNIST (Debian ``dataset-fashion-mnist``) made long-tailed with the exponential profile at
IF 100 / 10, evaluated on its balanced 10k test set; resnet8, batch 128, lr 0.05, cosine, each
method's own views and hyper-parameters, several seeds.

**Equal shares.** Every method trains the same share ``--share`` of *its own* full run in *every* stage:
stage 1 gets ``share x`` its full stage-1 epochs, stage 2 ``share x`` its rebalancer's full epochs, and
every schedule in epochs, steps or EMA momentum is scaled to that share (``--budget-fraction``). A share
that does not give a whole number of epochs in some stage of some method is refused before any training
(:class:`UnequalShares`), and so is a finished run whose recorded steps per stage do not match the plan.
The table states the steps each stage took.

**Convergence.** A row is marked "not converged" when its main loss (:data:`MAIN_LOSS`) over the last
stage-1 epoch has not fallen below its first-epoch value by at least ``--margin`` (relative).

Writes ``lt_table.md`` (the markdown it publishes), ``lt_table.json`` (every raw number, the plan and the
environment: the *result file*) and ``per_class.png``. ``--publish`` copies the result file to
``benchmarks/results/`` and rewrites the generated blocks of README.md, docs/benchmarks.md and
benchmarks/README.md from it (``<!-- lt_table results=... part=... -->`` ... ``<!-- /lt_table -->``); a
test re-renders every block from the result file it cites. ``--quick``: IF 100, 1 seed, epochs capped at 5
steps, 300 test images per class. ``--jobs N`` trains N runs at once with ``cpus // N`` threads each; every
finished run is appended to ``runs.jsonl`` so ``--resume`` skips what a killed run already measured.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import inspect
import json
import multiprocessing
import os
import platform
import re
import shlex
import signal
import statistics
import sys
import time
import traceback
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np
import torch

import ltreg
from ltreg.budget import scale_count
from ltreg.data.lt import LTData
from ltreg.method import get_method
from ltreg.registry import registry

GROUPS = ("top1", "many", "medium", "few")
LABELS = {"top1": "All", "many": "Many", "medium": "Medium", "few": "Few"}
ROOT = Path(__file__).resolve().parents[1]
RESULTS = Path("benchmarks/results/lt_table.json")  # the published result file, relative to the repository
PUBLISHED = ("README.md", "docs/benchmarks.md", "benchmarks/README.md")
#: The loss part whose descent decides "converged": the total, except where the total's weights change
#: during the run (ECL re-weights its terms after epoch 0: its classifier term is what predicts) or where
#: the method's own term is one part of it (Reb-SupCon's L_reb, the term issue 29 found stuck at its start).
MAIN_LOSS = {"ecl": "lc", "rebsupcon": "reb"}


class UnequalShares(SystemExit):
    """A method would train unequal shares of its full run in its stages: the table refuses it."""


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="IF 100, 1 seed, epochs capped at 5 steps, 300 test/class")
    p.add_argument("--methods", help="comma-separated method names (default: every registered method)")
    p.add_argument("--imbalance", help="comma-separated imbalance factors (default 100,10; --quick: 100)")
    p.add_argument("--seeds", type=int, help="number of seeds, 0..N-1 (default 3; --quick: 1)")
    p.add_argument("--share", type=float, default=0.1,
                   help="share of each method's own full run, in every stage (default 0.1: 3 of 30 epochs, "
                        "1 of 10 cRT epochs)")
    p.add_argument("--steps", type=int, help="cap on steps per epoch, both stages (smoke runs; default: whole "
                                             "epochs; --quick: 5)")
    p.add_argument("--margin", type=float, default=0.05,
                   help="relative fall of the main loss (first to last stage-1 epoch) below which a row is "
                        "marked not converged (default 0.05)")
    p.add_argument("--test-per-class", type=int, help="balanced test subsample (default: all; --quick: 300)")
    p.add_argument("--dataset", default="fashion-mnist-lt", help="or digits-lt, for a smoke test")
    p.add_argument("--out", default="benchmarks/out", help="output folder (run folders go under runs/)")
    p.add_argument("--jobs", type=int, default=1, help="runs trained at once, cpus // jobs threads each")
    p.add_argument("--resume", action="store_true", help="keep the runs in OUT/runs.jsonl made with this budget")
    p.add_argument("--publish", action="store_true",
                   help=f"copy the result file to {RESULTS} and regenerate the blocks in {', '.join(PUBLISHED)}")
    args = p.parse_args(argv)
    q = args.quick
    args.imbalance = [float(x) for x in (args.imbalance or ("100" if q else "100,10")).split(",")]
    args.seeds = args.seeds or (1 if q else 3)
    args.steps = (5 if q else None) if args.steps is None else (args.steps or None)
    args.test_per_class = args.test_per_class or (300 if q else None)
    if not 0 < args.share <= 1:
        raise SystemExit(f"--share must be in (0, 1], got {args.share}")
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
    if not wanted:  # the table trains one small CNN from scratch: a recipe that adapts a pretrained model is another track
        tuned = [n for n in names if get_method(n).tuner.name != "full"]
        notes += [f"skipped {n}: it adapts a pretrained backbone (tuner {get_method(n).tuner.name}); this table trains "
                  f"resnet8 from scratch (docs/foundation-models.md; --methods {n} to try it anyway)" for n in tuned]
        names = [n for n in names if n not in tuned]
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
    return {"command": shlex.join(cmd), "date": now(),
            "distributions": dict(sorted(dists.items())), "torch": torch.__version__,
            "python": platform.python_version(), "cpu_count": os.cpu_count(),
            "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, "
                       + (f"GPU {torch.cuda.get_device_name(0)}" if torch.cuda.is_available() else "no GPU"),
            "cpus_usable": len(os.sched_getaffinity(0)), "torch_threads": torch.get_num_threads(),
            "load_average_start": [round(x, 2) for x in os.getloadavg()]}


def init_worker(threads: int, dataset: str, per_class: int | None) -> None:
    """A pool worker: its share of the CPUs, and the in-process test subsample registered again."""
    torch.set_num_threads(threads)
    dataset_name(dataset, per_class)


def budget(args: argparse.Namespace) -> dict[str, Any]:
    """What makes two runs of one (method, IF, seed) comparable: only such rows are resumed."""
    return {k: getattr(args, k) for k in ("dataset", "share", "steps", "test_per_class", "quick")}


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


@dataclass(frozen=True)
class StagePlan:
    """One stage of a method in the table: its full run (epochs) and the epochs the table trains."""

    stage: int
    full_epochs: int
    epochs: int


def full_stages(method: str, data_name: str) -> list[tuple[int, int]]:
    """``(stage, full epochs)`` of the method's own full run on this data set: stage 1's epochs, and its
    rebalancer's epochs when it has a trained stage 2."""
    from ltreg.config import resolve_config

    spec = get_method(method)
    rc = resolve_config(spec, {"dataset": data_name})
    stages = [(1, rc.cfg.epochs)]
    if spec.rebalance is not None:
        declared = spec.stage2_epochs(rc.hparams)  # the spec's Stage(epochs=...); None: the rebalancer's default
        cls = registry("rebalancers").get(spec.rebalance.name)
        default = inspect.signature(cls).parameters.get("epochs")
        full = rc.cfg.stage2_epochs if rc.cfg.stage2_epochs is not None else declared if declared is not None else (
            default.default if default is not None else 0)
        if full:
            stages.append((2, int(full)))
    return stages


def plan(method: str, data_name: str, share: float) -> tuple[StagePlan, ...]:
    """Epochs per stage at ``share`` of the method's full run; :class:`UnequalShares` unless every stage gets
    exactly that share in whole epochs (the loop scales stage 2 by ``scale_count``: checked to agree)."""
    out = []
    for stage, full in full_stages(method, data_name):
        epochs = full * share
        trained = scale_count(full, share) if stage == 2 else round(epochs)
        if abs(epochs - round(epochs)) > 1e-9 or round(epochs) < 1 or trained != round(epochs):
            raise UnequalShares(
                f"lt_table: --share {share:g} gives {method} {epochs:g} of its {full} stage-{stage} epochs, not a "
                f"whole number >= 1: its stages would train unequal shares of its full run. Pick a share that "
                f"makes every stage of every method whole (e.g. 0.1), or leave {method} out with --methods.")
        out.append(StagePlan(stage, full, round(epochs)))
    return tuple(out)


def stage_steps(history: list[dict[str, Any]]) -> dict[int, tuple[int, int]]:
    """``stage -> (epochs, steps)`` recorded in a run's history."""
    out: dict[int, tuple[int, int]] = {}
    for h in history:
        e, n = out.get(h["stage"], (0, 0))
        out[h["stage"]] = (e + 1, n + int(h["steps"]))
    return out


def check_shares(row: dict[str, Any]) -> None:
    """Refuse a finished run whose recorded stages differ from its plan, or whose stages' epochs differ in
    length (then equal epoch shares would not be equal step shares)."""
    done = stage_steps(row["history"])
    want = {p["stage"]: p["epochs"] for p in row["plan"]}
    per_epoch = {s: n / e for s, (e, n) in done.items()}
    if {s: e for s, (e, _) in done.items()} != want or len(set(per_epoch.values())) > 1:
        raise UnequalShares(
            f"lt_table: {row['method']} IF {row['imbalance']:g} seed {row['seed']} trained (epochs, steps) per stage "
            f"{done}, planned epochs {want}: unequal shares of its full run; the table is not written.")


def converged(row: dict[str, Any], margin: float) -> dict[str, Any]:
    """The main loss's first and last stage-1 epoch means and whether it fell by at least ``margin``."""
    key = MAIN_LOSS.get(row["method"], "loss")
    vals = [h[key] for h in row["history"] if h["stage"] == 1 and key in h]
    first, last = vals[0], vals[-1]
    return {"loss": key, "first": first, "last": last, "converged": (first - last) >= margin * abs(first)}


def run_one(method: str, imbalance: float, seed: int, args: argparse.Namespace, out: Path) -> dict[str, Any]:
    """One training run at the method's planned epochs per stage; a failure is recorded (and printed), the
    others go on."""
    stages = args.plans[method]
    cfg: dict[str, Any] = dict(
        dataset=args.data_name, imbalance=imbalance, seed=seed, backbone="resnet8", batch_size=128, lr=0.05,
        weight_decay=5e-4, schedule="cosine", warmup_epochs=0, epochs=stages[0].epochs,
        max_steps_per_epoch=args.steps, eval_batch_size=1000, checkpoint_every=stages[0].epochs, log_every=10**6,
        output_dir=str(out / "runs" / f"{method}-if{imbalance:g}-seed{seed}"), overwrite=True,
        budget_fraction=args.share)
    start = time.perf_counter()
    row: dict[str, Any] = {"method": method, "imbalance": imbalance, "seed": seed, "config": cfg,
                           "budget": budget(args), "plan": [dataclasses.asdict(p) for p in stages]}
    try:
        result = ltreg.train(method, **cfg)
    except Exception as exc:  # noqa: BLE001 - one broken method must not sink the table
        traceback.print_exc()
        return {**row, "error": f"{type(exc).__name__}: {exc}", "wall_seconds": time.perf_counter() - start,
                "finished": now()}
    s1 = [h["seconds"] for h in result.history if h.get("stage") == 1]
    s1 = s1[1:] if len(s1) > 1 else s1  # the first epoch carries one-off warm-up costs
    return {**row, "error": "", "metrics": result.metrics, "history": result.history,
            "stage1_epoch_seconds": statistics.fmean(s1) if s1 else float("nan"),
            "wall_seconds": round(time.perf_counter() - start, 2), "finished": now()}


def now() -> str:
    """The local time as ISO 8601 to the second: when a run finished (a table resumed from several invocations
    states the span its runs were trained in)."""
    return dt.datetime.now().astimezone().isoformat(timespec="seconds")


def summarise(runs: list[dict[str, Any]], methods: list[str], imbalance: float,
              margin: float = 0.05) -> dict[str, dict[str, Any]]:
    """Per method at one IF: mean and std over seeds of each group, the epoch-time ratio to ce, errors, the
    steps per stage and whether the main loss left its start by ``margin`` in every seed."""
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
        row["steps"] = sorted({tuple(n for _, (_, n) in sorted(stage_steps(r["history"]).items())) for r in ok})
        row["convergence"] = [converged(r, margin) for r in ok]
        row["converged"] = all(c["converged"] for c in row["convergence"]) if ok else None
        out[m] = row
    ce = out.get("ce", {}).get("epoch_seconds")
    for row in out.values():
        row["time_vs_ce"] = row["epoch_seconds"] / ce if ce and row["epoch_seconds"] else None
    return out


def cell(v: tuple[float, float | None] | list | None) -> str:
    if v is None:
        return "–"
    return f"{v[0]:.2f}" if v[1] is None else f"{v[0]:.2f} ± {v[1]:.2f}"


def _steps(r: dict[str, Any]) -> str:
    return " / ".join("+".join(str(n) for n in s) for s in r["steps"]) or "–"


def portable(command: str) -> str:
    """The recorded command as a reader runs it: the interpreter as ``.venv/bin/python``, the script by its
    path in the repository, an absolute ``--out`` folder as ``OUT`` (no machine's paths in the docs)."""
    words = shlex.split(command)
    out = []
    for i, w in enumerate(words):
        if i == 0 and w.endswith(("python", "python3")):
            w = ".venv/bin/python"
        elif w.endswith("benchmarks/lt_table.py"):
            w = "benchmarks/lt_table.py"
        elif i and words[i - 1] == "--out" and os.path.isabs(w):
            w = "OUT"
        out.append(w)
    return shlex.join(out)


def markdown(result: dict[str, Any], part: str = "full") -> str:
    """The published markdown of a result file: ``part="full"`` (header, every IF's table, notes) or
    ``"overview"`` (the header's first lines and one All / Few table over the IFs). A function of the result
    file alone, so the test can re-render every published block from the file it cites."""
    env, args, notes = result["environment"], result["args"], result["skipped"]
    tables = {float(k): v for k, v in result["summary"].items()}
    margin = args["margin"]
    resumed = f" (plus {env['resumed']} runs kept from OUT/runs.jsonl by --resume)" if env.get("resumed") else ""
    finished = sorted(r["finished"] for r in result["runs"] if r.get("finished"))  # older result files lack it
    span = f"; runs finished {finished[0]} … {finished[-1]}" if finished else ""
    cap = f", epochs capped at {args['steps']} steps (a smoke run)" if args["steps"] else ""
    subsample = f" ({args['test_per_class']} images per class)" if args["test_per_class"] else ""
    head = [f"- command: `{portable(env['command'])}`", f"- date: {env['date']}{span}; machine: {env['machine']}",
            f"- data: {args['dataset']}, exponential profile; balanced test set{subsample}",
            f"- budget: resnet8, batch 128, lr 0.05, cosine; every method trains {args['share']:g} of its own "
            f"full run in every stage{cap} (steps per stage in the table: stage 1 + stage 2), every schedule "
            f"in epochs, steps or EMA momentum scaled to that share; {args['seeds']} seed(s)",
            f"- *not converged*: the main loss (the total; ECL: L_LC; Reb-SupCon: L_reb) fell by less than "
            f"{margin:.0%} from the first to the last stage-1 epoch in some seed"]
    if part == "overview":
        lines = [*head, "", "| method | " + " | ".join(
            f"IF {imb:g} {LABELS[g]}" for imb in tables for g in ("top1", "few")) + " | steps |",
            "|---" * (2 + 2 * len(tables)) + "|"]
        for m in next(iter(tables.values())):
            flag = "" if all(t[m]["converged"] is not False for t in tables.values()) else " *(not converged)*"
            lines.append(f"| {m}{flag} | " + " | ".join(cell(t[m][g]) for t in tables.values()
                                                           for g in ("top1", "few"))
                         + f" | {_steps(next(iter(tables.values()))[m])} |")
        return "\n".join(lines) + "\n"
    lines = ["# Long-tail table", "", *head,
             f"- distributions: {', '.join(f'{k} {v}' for k, v in env['distributions'].items())}",
             f"- torch {env['torch']}, Python {env['python']}, {env['cpus_usable']} usable CPUs, "
             f"{env['torch_threads']} torch threads, load average at start "
             f"{' '.join(map(str, env['load_average_start']))}; {args['jobs']} run(s) at a time; wall time "
             f"{env['wall_seconds']:.0f} s{resumed}; {env['runs']} runs took {env['run_seconds']:.0f} s summed",
             "- s/epoch vs ce: mean stage-1 epoch seconds (the first left out when there are more) over ce's",
             *[f"- {n}" for n in notes]]
    for imb, summary in tables.items():
        num = next((r["num"] for r in summary.values() if r["num"]), {})
        heads = [LABELS[g] + (f" ({num[g]} cls)" if g in num else "") for g in GROUPS]
        lines += ["", f"## IF {imb:g}  (top-1 %, mean ± std over {args['seeds']} seed(s))", "",
                  "| method | " + " | ".join(heads) + " | steps | s/epoch vs ce |", "|---" * 7 + "|"]
        for m, r in summary.items():
            ratio = "–" if r["time_vs_ce"] is None else f"{r['time_vs_ce']:.2f}×"
            err = f" (failed: {r['errors'][0][:80]})" if r["errors"] else ""
            flag = " *(not converged)*" if r["converged"] is False else ""
            lines.append(f"| {m}{err}{flag} | " + " | ".join(cell(r[g]) for g in GROUPS)
                         + f" | {_steps(r)} | {ratio} |")
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


BLOCK = re.compile(r"(<!-- lt_table results=(\S+) part=(\w+) -->\n)(.*?)(<!-- /lt_table -->)", re.S)


def published_blocks(text: str) -> list[tuple[str, str, str]]:
    """``(result file, part, content)`` of every generated block in a markdown text."""
    return [(m.group(2), m.group(3), m.group(4)) for m in BLOCK.finditer(text)]


def stale_blocks(root: Path = ROOT) -> list[str]:
    """Every generated block in :data:`PUBLISHED` whose text differs from its cited result file rendered
    again (or whose file is missing), as ``"doc: reason"``; empty when the docs match their result files."""
    bad = []
    for name in PUBLISHED:
        for cited, part, content in published_blocks((root / name).read_text()):
            path = root / cited
            if not path.is_file():
                bad.append(f"{name}: cites {cited}, which does not exist")
            elif content != markdown(json.loads(path.read_text()), part):
                bad.append(f"{name}: the {part} block differs from {cited} (run benchmarks/lt_table.py --publish)")
    return bad


def publish(result_file: Path, root: Path = ROOT) -> list[Path]:
    """Copy ``result_file`` to :data:`RESULTS` and regenerate every block in :data:`PUBLISHED` that cites it."""
    dest = root / RESULTS
    dest.parent.mkdir(parents=True, exist_ok=True)
    if result_file.resolve() != dest.resolve():
        dest.write_text(result_file.read_text())
    result = json.loads(dest.read_text())
    changed = []
    for name in PUBLISHED:
        path = root / name
        text = path.read_text()
        new = BLOCK.sub(lambda m: m.group(1) + markdown(result, m.group(3)) + m.group(5)
                        if m.group(2) == str(RESULTS) else m.group(0), text)
        if new != text:
            path.write_text(new)
            changed.append(path)
    return changed


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
    args.plans = {m: plan(m, args.data_name, args.share) for m in methods}  # refuses unequal shares, before any run
    log = out / "runs.jsonl"
    # ce first within each (IF, seed), then the others: the same load conditions for the time ratio; seeds
    # outermost, so a table cut short is complete for every IF and method in its first seeds (``--resume``)
    order = [(m, imb, seed) for seed in range(args.seeds) for imb in args.imbalance for m in methods]
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
    for r in runs:
        if not r["error"]:
            check_shares(r)
    tables = {imb: summarise(runs, methods, imb, args.margin) for imb in args.imbalance}
    saved = {k: v for k, v in vars(args).items() if k != "plans"}
    result = json.loads(json.dumps(
        {"environment": env, "args": saved, "skipped": notes,
         "plans": {m: [dataclasses.asdict(p) for p in ps] for m, ps in args.plans.items()},
         "summary": {f"{k:g}": v for k, v in tables.items()}, "runs": runs}, default=str))
    text = markdown(result)
    (out / "lt_table.md").write_text(text)
    (out / "lt_table.json").write_text(json.dumps(result, indent=1))
    plot_if = 100.0 if 100.0 in args.imbalance else max(args.imbalance)
    plot(runs, methods, plot_if, out / "per_class.png")
    print(text)
    print(f"wrote {out / 'lt_table.md'}, {out / 'lt_table.json'}, {out / 'per_class.png'} "
          f"in {env['wall_seconds']:.0f}s")
    if args.publish:
        changed = publish(out / "lt_table.json")
        print(f"published {RESULTS}; regenerated {', '.join(map(str, changed)) or 'no block (none cites it)'}")
    return out


if __name__ == "__main__":
    main()
