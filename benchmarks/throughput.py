"""Training throughput of ltreg against a plain hand-written PyTorch loop, measured in the same run.

Both sides train the same timm backbone on the same data with the same augmentation pipeline, the
same global batch, SGD (momentum 0.9, weight decay 5e-4) and cross-entropy (ltreg's ``ce`` method).
Each side runs in a fresh process per round, and rounds are interleaved (ltreg, plain, ltreg,
plain, ...), so a busy or drifting machine shifts both sides alike; the table gives the median
images/s of each side over the rounds and their ratio.

Only the steady state is timed, the same way on both sides: every run trains ``--epochs`` epochs of
``--steps`` steps, and only epochs 2..n count (process launch, data set build, model build, the
first epoch's warm-up / ``torch.compile`` and the final evaluation are left out). ltreg's epoch
seconds come from ``RunResult.history`` (the ``seconds`` it writes to ``metrics.csv``); the plain
loop times its epochs the same way: from creating the loader iterator to the epoch's last step,
ending with a host sync (and, on two processes, an all-reduce of the loss sum).

Modes (``--mode a,b`` runs several, one table):

* ``cpu1``  one process on CPU, ResNet-20 on Fashion-MNIST-LT; goal ltreg/plain >= 0.95.
* ``cpu2``  two processes on CPU (gloo): ltreg under ``python -m accelerate.commands.launch --multi_gpu
            --num_processes 2`` against a plain DDP loop (``DistributedSampler``, local batch norm)
            under ``python -m torch.distributed.run --nproc_per_node 2``; goal >= 0.90.
* ``data``  ltreg's data pipeline alone (decode + views + collate, its own loader, no model) with the
            default ``num_workers`` (None: ltreg's choice) against ``num_workers=0``; no goal, it shows
            whether the data keeps up with the model (compare with the model modes' img/s).
* ``cuda``  one GPU, ``mixed_precision=bf16`` + ``channels_last``, ResNet-50 at 224 px on synthetic data
            made in-process (nothing downloaded, weights initialised locally); goal >= 0.95 of the
            plain loop with the same settings. ``--device cpu --precision no`` runs the same code path on CPU.

Run from the repository root with the project's virtual environment::

    .venv/bin/python benchmarks/throughput.py --mode cpu1 --quick
    .venv/bin/python benchmarks/throughput.py --mode cpu1,cpu2,data
    .venv/bin/python benchmarks/throughput.py --mode cuda,data --dataset synthetic --strict

Exit status: 0 when every measurement ran (a missed goal prints FAIL in the table; ``--strict`` turns
it into exit status 3), 1 when a run failed (its command and output tail are printed).
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import platform
import shlex
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
TAG = "THROUGHPUT_RESULT "
LR, MOMENTUM, WEIGHT_DECAY = 0.1, 0.9, 5e-4

#: Per-mode defaults; ``--quick`` replaces the budget keys with QUICK's, explicit flags win over both.
MODES: dict[str, dict[str, Any]] = {
    "cpu1": {"dataset": "fashion-mnist-lt", "backbone": "resnet20", "batch_size": 128, "epochs": 3, "steps": 10,
             "rounds": 3, "procs": 1, "device": "cpu", "precision": "no", "channels_last": False,
             "num_workers": 0, "goal": 0.95},
    "cpu2": {"dataset": "fashion-mnist-lt", "backbone": "resnet20", "batch_size": 128, "epochs": 3, "steps": 10,
             "rounds": 3, "procs": 2, "device": "cpu", "precision": "no", "channels_last": False,
             "num_workers": 0, "goal": 0.90},
    "data": {"dataset": "fashion-mnist-lt", "backbone": "resnet8", "batch_size": 128, "epochs": 3, "steps": 20,
             "rounds": 3, "procs": 1, "device": "cpu", "precision": "no", "channels_last": False,
             "num_workers": None, "goal": None},
    "cuda": {"dataset": "synthetic", "backbone": "resnet50", "batch_size": 256, "epochs": 4, "steps": 25,
             "rounds": 3, "procs": 1, "device": "cuda", "precision": "bf16", "channels_last": True,
             "num_workers": min(12, max(1, (os.cpu_count() or 1) - 2)), "goal": 0.95, "image_size": 224},
}
#: ``--quick`` checks that a mode runs end to end in about a minute on 2 shared cores: a smaller model
#: and batch for the CPU modes, so its ratio is a smoke figure, not the goal's measurement.
QUICK: dict[str, dict[str, Any]] = {
    "cpu1": {"backbone": "resnet8", "batch_size": 64, "epochs": 2, "steps": 3, "rounds": 2},
    "cpu2": {"backbone": "resnet8", "batch_size": 64, "epochs": 2, "steps": 3, "rounds": 2},
    "data": {"epochs": 2, "steps": 4, "rounds": 2},
    "cuda": {"epochs": 3, "steps": 10, "rounds": 2},
}
#: Test images kept per class: the final evaluation of each ltreg run is not timed, only waited for.
TEST_PER_CLASS = 20


# -- data sets both sides build in-process -------------------------------------------------------
class RepeatSource:
    """``n`` images cycling over ``k`` random uint8 images ``[C, S, S]`` (synthetic, made locally)."""

    def __init__(self, images: Any, n: int) -> None:
        self.images, self.n = images, n

    def __len__(self) -> int:
        return self.n

    def load(self, i: int) -> Any:
        return self.images[int(i) % self.images.shape[0]]


def synthetic_lt(seed: int = 0, image_size: int = 224, train_images: int = 8192, num_classes: int = 10,
                 imbalance: float = 10.0, unique: int = 64, **_: Any) -> Any:
    """A long-tailed synthetic RGB set: ``train_images`` or more images of side ``image_size * 8 / 7``
    (cropped to ``image_size`` by the views, as decoded photos are), ``imbalance`` = n_max / n_min."""
    import torch

    from ltreg.data.lt import LTData, LTDataset, lt_counts

    n_max = max(2, train_images // num_classes)
    while sum(lt_counts(n_max, num_classes, imbalance)) < train_images:
        n_max = int(n_max * 1.25) + 1
    counts = lt_counts(n_max, num_classes, imbalance)
    g = torch.Generator().manual_seed(seed)
    side = image_size * 8 // 7 if image_size >= 96 else image_size
    base = torch.randint(0, 256, (unique, 3, side, side), dtype=torch.uint8, generator=g)
    targets = torch.cat([torch.full((c,), k, dtype=torch.long) for k, c in enumerate(counts)])
    common = {"num_classes": num_classes, "class_names": [f"class{k}" for k in range(num_classes)], "channels": 3,
              "image_size": image_size, "allow_flip": True, "mean": (0.485, 0.456, 0.406), "std": (0.229, 0.224, 0.225),
              "many_thr": n_max // 5, "few_thr": n_max // 25}
    test_targets = torch.arange(num_classes).repeat_interleave(TEST_PER_CLASS)
    return LTData(train=LTDataset("synthetic-lt", RepeatSource(base, len(targets)), targets, **common),
                  test=LTDataset("synthetic-lt-test", RepeatSource(base, len(test_targets)), test_targets, **common))


def register_dataset(name: str) -> str:
    """The registered name of ``name`` for this benchmark: ``synthetic``, or ``name`` with a small test set."""
    import numpy as np

    from ltreg.data.lt import LTData
    from ltreg.registry import registry

    if name == "synthetic":
        registry("datasets").register("bench-synthetic", synthetic_lt)
        return "bench-synthetic"
    base, sub = registry("datasets").get(name), f"{name}+test{TEST_PER_CLASS}"

    def build(**kwargs: Any) -> LTData:
        data = base(**kwargs)
        y = data.test.targets.numpy()
        keep = np.sort(np.concatenate([np.flatnonzero(y == c)[:TEST_PER_CLASS] for c in range(data.test.num_classes)]))
        return LTData(train=data.train, test=data.test.subset(keep), val=data.val)

    registry("datasets").register(sub, build)
    return sub


def dataset_kwargs(w: dict[str, Any]) -> dict[str, Any]:
    if w["dataset"] != "synthetic":
        return {}
    need = (w["steps"] + 2) * w["batch_size"]  # ltreg's loader reads one batch past the last step
    return {"image_size": w["image_size"], "train_images": max(need, 1024)}


def _rank() -> int:
    return int(os.environ.get("RANK", "0"))


def _emit(payload: dict[str, Any]) -> None:
    if _rank() == 0:
        print(TAG + json.dumps(payload), flush=True)


def _timed(rows: list[dict[str, Any]], batch_size: int) -> dict[str, Any]:
    """Images/s over epochs 2..n of ``rows`` (each with ``steps`` and ``seconds``)."""
    timed = rows[1:] if len(rows) > 1 else rows
    steps, seconds = sum(r["steps"] for r in timed), sum(r["seconds"] for r in timed)
    return {"img_s": steps * batch_size / seconds if seconds > 0 else float("nan"), "timed_steps": steps,
            "timed_seconds": round(seconds, 4), "epoch_seconds": [r["seconds"] for r in rows]}


# -- the two sides, run inside worker processes ---------------------------------------------------
def worker_ltreg(w: dict[str, Any]) -> None:
    """ltreg's public API, as a user calls it: ``ltreg.train("ce", ...)``."""
    import torch

    import ltreg
    from ltreg import distributed as D

    name = register_dataset(w["dataset"])
    kw: dict[str, Any] = dict(
        dataset=name, dataset_kwargs=dataset_kwargs(w), backbone=w["backbone"], batch_size=w["batch_size"],
        epochs=w["epochs"], max_steps_per_epoch=w["steps"], lr=LR, momentum=MOMENTUM, weight_decay=WEIGHT_DECAY,
        schedule="cosine", warmup_epochs=0, seed=0, cpu=w["device"] == "cpu", mixed_precision=w["precision"],
        output_dir=w["run_dir"], overwrite=True, checkpoint_every=10**6,
    )
    # New fields (issue 21): passed when asked for; None / False keeps ltreg's default behaviour.
    if w["num_workers"] is not None:
        kw["num_workers"] = w["num_workers"]
    for flag in ("channels_last", "compile"):
        if w[flag]:
            kw[flag] = True
    result = ltreg.train("ce", **kw)
    rows = [r for r in result.history if r.get("stage", 1) == 1]
    model = D.unwrap(result.model)
    convs = [m.weight for m in model.modules()  # 3x3 (or larger) kernels over > 1 channel: layout is unambiguous
             if isinstance(m, torch.nn.Conv2d) and m.weight.shape[1] > 1 and m.weight.shape[-1] > 1]
    _emit({**_timed(rows, w["batch_size"]), "threads": torch.get_num_threads(),
           "global_bn": any(isinstance(m, D.GlobalBatchNorm) for m in model.modules()),
           "channels_last_weights": bool(convs) and all(c.is_contiguous(memory_format=torch.channels_last)
                                                        for c in convs),
           "compiled": any(type(m).__name__ == "OptimizedModule" for m in model.modules())})


def worker_plain(w: dict[str, Any]) -> None:
    """The loop a user writes by hand: a Dataset applying the same pipeline, DataLoader, timm model, SGD."""
    import timm
    import torch
    import torch.distributed as dist
    import torch.nn.functional as F
    from torch.utils.data import DataLoader, Dataset, DistributedSampler

    import ltreg
    import ltreg.models.cifar_resnet  # noqa: F401 - registers resnet8/20/32 into timm
    from ltreg.data.build import DataArgs, build_data
    from ltreg.data.views import build_pipeline

    world = int(os.environ.get("WORLD_SIZE", "1"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if w["device"] == "cuda":
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
    else:
        device = torch.device("cpu")
    if world > 1:
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    torch.manual_seed(0)
    name = register_dataset(w["dataset"])
    train = build_data(DataArgs(dataset=name, seed=0, kwargs=dataset_kwargs(w))).train
    ce = ltreg.get_method("ce")
    pipeline = build_pipeline(ce.views_for(ce.hparams)[0], train)

    class TrainSet(Dataset):
        def __len__(self) -> int:
            return len(train)

        def __getitem__(self, i: int) -> tuple[Any, int]:
            return pipeline(train.source.load(i)), int(train.targets[i])

    ds = TrainSet()
    sampler = DistributedSampler(ds, shuffle=True, seed=0) if world > 1 else None
    loader = DataLoader(ds, batch_size=w["batch_size"] // world, shuffle=sampler is None, sampler=sampler,
                        num_workers=w["num_workers"] or 0, drop_last=True, pin_memory=device.type == "cuda")
    model = timm.create_model(w["backbone"], pretrained=False, num_classes=train.num_classes,
                              in_chans=train.channels).to(device)
    if w["channels_last"]:
        model = model.to(memory_format=torch.channels_last)
    if world > 1:
        model = torch.nn.parallel.DistributedDataParallel(model, device_ids=[local_rank] if device.type == "cuda" else None)
    forward = torch.compile(model) if w["compile"] else model
    optimizer = torch.optim.SGD(model.parameters(), lr=LR, momentum=MOMENTUM, weight_decay=WEIGHT_DECAY)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=w["epochs"] * w["steps"])
    bf16 = w["precision"] == "bf16"
    rows = []
    for epoch in range(w["epochs"]):
        if sampler is not None:
            sampler.set_epoch(epoch)
        start = time.time()
        total, steps = torch.zeros((), device=device), 0
        for x, y in loader:
            x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
            if w["channels_last"]:
                x = x.contiguous(memory_format=torch.channels_last)
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
                loss = F.cross_entropy(forward(x), y)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
            total += loss.detach().float()
            steps += 1
            if steps == w["steps"]:
                break
        if world > 1:
            dist.all_reduce(total)
        mean_loss = float(total) / max(1, steps * world)  # host sync: the epoch's work is done
        if not math.isfinite(mean_loss):
            raise SystemExit(f"plain loop: non-finite loss in epoch {epoch + 1}")
        rows.append({"steps": steps, "seconds": time.time() - start})
    _emit({**_timed(rows, w["batch_size"]), "threads": torch.get_num_threads()})
    if world > 1:
        dist.destroy_process_group()


def worker_data(w: dict[str, Any], workers: int | None) -> None:
    """ltreg's own training loader (built by ``build_run`` + ``stage1_setup``), iterated as its loop does."""
    import torch

    import ltreg
    from ltreg.config import resolve_config
    from ltreg.run import build_run
    from ltreg.stages import stage1_setup

    name = register_dataset(w["dataset"])
    over: dict[str, Any] = dict(dataset=name, dataset_kwargs=dataset_kwargs(w), backbone=w["backbone"],
                                batch_size=w["batch_size"], epochs=w["epochs"], max_steps_per_epoch=w["steps"],
                                cpu=w["device"] == "cpu", output_dir=w["run_dir"], overwrite=True)
    if workers is not None:
        over["num_workers"] = workers
    run = build_run(resolve_config(ltreg.get_method("ce"), over))
    st = stage1_setup(run)
    rows = []
    for epoch in range(st.epochs):
        st.loader.set_epoch(epoch)
        st.loader.view_dataset.set_epoch(epoch)
        st.loader.ltreg_sampler.set_epoch(epoch)
        start, steps, check = time.time(), 0, 0.0
        for i, batch in enumerate(st.loader):
            if i >= st.steps_per_epoch:
                break
            check += float(batch.images[0, 0, 0, 0, 0])  # the batch is materialised (and on the device)
            steps += 1
        rows.append({"steps": steps, "seconds": time.time() - start})
    _emit({**_timed(rows, w["batch_size"]), "threads": torch.get_num_threads(),
           "num_workers": getattr(st.loader, "num_workers", None)})


# -- the driver -------------------------------------------------------------------------------------
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def side_command(mode: str, side: str, w: dict[str, Any]) -> list[str]:
    me = [str(Path(__file__).resolve()), "--worker", side, "--worker-config", json.dumps(w)]
    if w["procs"] == 1 or mode == "data":
        return [sys.executable, *me]
    port = str(_free_port())
    if side == "ltreg":
        return [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", str(w["procs"]),
                "--num_machines", "1", "--mixed_precision", w["precision"], "--dynamo_backend", "no",
                "--main_process_port", port, *me]
    return [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(w["procs"]),
            "--master_addr", "127.0.0.1", "--master_port", port, *me]


def run_side(mode: str, side: str, w: dict[str, Any], timeout: float, verbose: bool) -> dict[str, Any]:
    cmd = side_command(mode, side, w)
    threads = max(1, (os.cpu_count() or 1) // w["procs"])
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", str(threads)), "HF_HUB_OFFLINE": "1",
           "HF_DATASETS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false", "PYTHONUNBUFFERED": "1",
           "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep)}
    started = time.time()
    try:
        proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired as exc:
        raise RunFailed(mode, side, cmd, f"timed out after {timeout:.0f} s",
                        str(exc.stdout or "") + str(exc.stderr or "")) from None
    found = [line[len(TAG):] for line in proc.stdout.splitlines() if line.startswith(TAG)]
    if proc.returncode != 0 or not found:
        raise RunFailed(mode, side, cmd, f"exit status {proc.returncode}", proc.stdout[-3000:] + "\n" + proc.stderr[-5000:])
    out = json.loads(found[-1])
    out["wall_s"] = round(time.time() - started, 1)
    if verbose:
        print(f"    {side:>6}: {out['img_s']:9.1f} img/s  epochs {[round(x, 2) for x in out['epoch_seconds']]} s  "
              f"(process wall {out['wall_s']} s)", flush=True)
    return out


class RunFailed(RuntimeError):
    def __init__(self, mode: str, side: str, cmd: list[str], why: str, tail: str) -> None:
        super().__init__(f"[{mode}] the {side} run failed ({why})\ncommand: {shlex.join(cmd)}\n--- output tail ---\n{tail}")


SIDES = {"data": ("auto", "zero")}  # data: ltreg's default workers vs num_workers=0
LABELS = {"data": ("default workers", "num_workers=0")}


def measure(mode: str, w: dict[str, Any], rounds: int, timeout: float, verbose: bool) -> dict[str, Any]:
    a, b = SIDES.get(mode, ("ltreg", "plain"))
    per: dict[str, list[dict[str, Any]]] = {a: [], b: []}
    for r in range(rounds):
        if verbose:
            print(f"  [{mode}] round {r + 1}/{rounds}", flush=True)
        for side in (a, b):
            with tempfile.TemporaryDirectory(prefix=f"ltreg-bench-{mode}-") as tmp:
                per[side].append(run_side(mode, side, {**w, "run_dir": str(Path(tmp) / "run")}, timeout, verbose))
    med = {s: statistics.median(x["img_s"] for x in per[s]) for s in (a, b)}
    ratio = med[a] / med[b] if med[b] > 0 else float("nan")
    goal = w["goal"]
    return {"mode": mode, "sides": (a, b), "median": med, "ratio": ratio, "goal": goal,
            "passed": None if goal is None else ratio >= goal, "rounds": per, "settings": w}


def notes_for(res: dict[str, Any]) -> list[str]:
    """Facts a reader needs to judge the figures: settings ltreg did not apply, threads, BN, workers."""
    w, out = res["settings"], []
    first = res["rounds"][res["sides"][0]][0]
    if res["mode"] == "data":
        out.append(f"ltreg's default num_workers resolved to {first.get('num_workers')} "
                   f"({os.cpu_count()} CPUs visible); compare its img/s with the model modes' img/s")
        return out
    plain = res["rounds"]["plain"][0]
    if first["threads"] != plain["threads"]:
        out.append(f"torch threads differ: ltreg {first['threads']}, plain {plain['threads']}")
    if w["num_workers"] is None:
        out.append("num_workers auto: ltreg used its own choice, the plain loop 0 workers (pass --num-workers N "
                   "for a like-for-like comparison)")
    if w["procs"] > 1:
        out.append("ltreg used GlobalBatchNorm (batch statistics over processes; plain DDP keeps local BN)"
                   if first.get("global_bn") else "ltreg used local batch norm, as the plain DDP loop")
    if w["channels_last"] and not first.get("channels_last_weights"):
        out.append("channels_last was passed to ltreg but its conv weights are not channels-last after training "
                   "(flag not applied yet?)")
    if w["compile"] and not first.get("compiled"):
        out.append("compile was passed to ltreg but no torch.compile'd module was found in the trained model "
                   "(flag not applied yet, or compiled outside the module tree)")
    return out


def settings(mode: str, args: argparse.Namespace) -> dict[str, Any]:
    w = dict(MODES[mode])
    if args.quick:
        w.update(QUICK[mode])
    for key in ("dataset", "backbone", "batch_size", "epochs", "steps", "rounds", "device", "precision",
                "image_size"):
        value = getattr(args, key)
        if value is not None:
            w[key] = value
    if args.num_workers is not None:
        w["num_workers"] = None if args.num_workers == "auto" else int(args.num_workers)
    if args.channels_last is not None:
        w["channels_last"] = args.channels_last == "on"
    w.setdefault("image_size", 224)
    w["compile"] = bool(args.compile) and mode != "data"
    if w["batch_size"] % w["procs"]:
        raise SystemExit(f"--batch-size {w['batch_size']} must split over {w['procs']} processes")
    if w["epochs"] < 2:
        raise SystemExit("--epochs must be >= 2: the first epoch is warm-up and is not timed")
    return w


def environment() -> str:
    import torch

    load = " ".join(f"{x:.2f}" for x in os.getloadavg()) if hasattr(os, "getloadavg") else "n/a"
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none"
    return (f"{datetime.datetime.now().astimezone().isoformat(timespec='seconds')}  host {platform.node()}  "
            f"python {platform.python_version()}  torch {torch.__version__}  CPUs {os.cpu_count()}  GPU {gpu}  "
            f"load average {load}")


def print_table(results: list[dict[str, Any]]) -> None:
    head = f"{'mode':<6} {'ltreg img/s':>12} {'plain img/s':>12} {'ratio':>7} {'goal':>7}  result"
    print("\n" + head + "\n" + "-" * len(head))
    for r in results:
        a, b = r["sides"]
        goal = "-" if r["goal"] is None else f">={r['goal']:.2f}"
        verdict = "info" if r["passed"] is None else ("pass" if r["passed"] else "FAIL")
        print(f"{r['mode']:<6} {r['median'][a]:>12.1f} {r['median'][b]:>12.1f} {r['ratio']:>7.3f} {goal:>7}  {verdict}")
    if any(r["mode"] == "data" for r in results):
        print("(data: the 'ltreg' column is ltreg's loader with its default num_workers, 'plain' the same loader "
              "with num_workers=0)")
    print()
    for r in results:
        a, b = r["sides"]
        la, lb = LABELS.get(r["mode"], ("ltreg", "plain"))
        w = r["settings"]
        what = (f"{w['backbone']} on {w['dataset']}" if r["mode"] != "data" else f"data only, {w['dataset']}")
        print(f"ratio[{r['mode']}] = {la}/{lb} = {r['ratio']:.3f}"
              + ("" if r["goal"] is None else f" (goal >= {r['goal']:.2f}: {'pass' if r['passed'] else 'FAIL'})")
              + f"  -- {what}, {w['procs']} process(es) on {w['device']}, global batch {w['batch_size']}, "
              f"precision {w['precision']}, channels_last {w['channels_last']}, compile {w['compile']}, "
              f"num_workers {'ltreg default' if w['num_workers'] is None else w['num_workers']}, "
              f"{r['rounds'][a][0]['timed_steps']} timed steps/run (epochs 2..{w['epochs']} of {w['steps']} steps), "
              f"median of {len(r['rounds'][a])} interleaved rounds; per round {la} "
              f"{[round(x['img_s'], 1) for x in r['rounds'][a]]}, {lb} {[round(x['img_s'], 1) for x in r['rounds'][b]]}")
        for note in notes_for(r):
            print(f"  note[{r['mode']}]: {note}")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__.split("\n\n", 1)[1])
    p.add_argument("--mode", default="cpu1", help="comma-separated: cpu1, cpu2, data, cuda (default cpu1)")
    p.add_argument("--quick", action="store_true", help="few rounds, epochs and steps: checks that it runs")
    p.add_argument("--rounds", type=int, help="interleaved rounds per side")
    p.add_argument("--epochs", type=int, help="epochs per run (epoch 1 is warm-up and not timed)")
    p.add_argument("--steps", type=int, help="steps per epoch (max_steps_per_epoch)")
    p.add_argument("--batch-size", type=int, help="global batch")
    p.add_argument("--backbone", help="timm name (or resnet8/20/32)")
    p.add_argument("--dataset", help="a registered ltreg data set, or 'synthetic' (made in-process, RGB)")
    p.add_argument("--image-size", type=int, help="side of the synthetic images (default 224)")
    p.add_argument("--device", choices=("cpu", "cuda"), help="override the mode's device (e.g. the cuda path on CPU)")
    p.add_argument("--precision", choices=("no", "bf16"), help="mixed precision of both sides")
    p.add_argument("--channels-last", choices=("on", "off"), help="channels-last on both sides")
    p.add_argument("--compile", action="store_true", help="torch.compile on both sides (ltreg: compile=True)")
    p.add_argument("--num-workers", help="loader workers per process on both sides, or 'auto' (ltreg's default)")
    p.add_argument("--timeout", type=float, default=900, help="seconds one run may take")
    p.add_argument("--strict", action="store_true", help="exit status 3 when a goal is missed")
    p.add_argument("--json", help="also write every figure to this file")
    p.add_argument("-q", "--quiet", action="store_true", help="only the table")
    p.add_argument("--worker", help=argparse.SUPPRESS)
    p.add_argument("--worker-config", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker:
        w = json.loads(args.worker_config)
        if args.worker == "ltreg":
            worker_ltreg(w)
        elif args.worker == "plain":
            worker_plain(w)
        else:
            worker_data(w, None if args.worker == "auto" else 0)
        return 0
    modes = [m.strip() for m in args.mode.split(",") if m.strip()]
    unknown = [m for m in modes if m not in MODES]
    if unknown:
        p.error(f"unknown mode(s) {', '.join(unknown)}; modes: {', '.join(MODES)}")
    print(f"throughput: {environment()}")
    print(f"command: {shlex.join([sys.executable, *sys.argv])}", flush=True)
    results = []
    for mode in modes:
        w = settings(mode, args)
        if w["device"] == "cuda":
            import torch

            if not torch.cuda.is_available():
                print(f"[{mode}] needs CUDA, and torch sees no GPU (use --device cpu to run this path on CPU)",
                      file=sys.stderr)
                return 1
        try:
            results.append(measure(mode, w, w["rounds"], args.timeout, not args.quiet))
        except RunFailed as exc:
            print(f"FAILED: {exc}", file=sys.stderr)
            return 1
    print_table(results)
    if args.json:
        Path(args.json).write_text(json.dumps({"environment": environment(), "results": results}, indent=1, default=str))
    missed = [r["mode"] for r in results if r["passed"] is False]
    if missed and args.strict:
        print(f"goal missed: {', '.join(missed)} (--strict)", file=sys.stderr)
        return 3
    return 0


if __name__ == "__main__":
    sys.exit(main())
