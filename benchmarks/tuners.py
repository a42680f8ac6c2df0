"""What a tuner costs, measured in one run: peak memory and step time of ``lora`` / ``adaptformer`` / ``linear``
against ``full`` on the same ViT, and ltreg with ``lora`` against a plain hand-written ``peft`` + timm loop.

Every measurement is a fresh process (``ltreg.train("ce", tuner=...)`` as a user calls it, or the plain loop);
rounds are interleaved (full, linear, lora, adaptformer, plain, then again), so a busy machine shifts every side
alike; the tables give medians over the rounds and ratios against ``full`` (memory, step time) and against the
plain loop (images/s, goal >= 0.95).

Both sides train the same ViT (random weights written once as a timm model folder, so nothing is downloaded),
on the same synthetic long-tailed images through ltreg's ``ce`` view pipeline, with SGD (momentum 0.9, weight
decay 5e-4), a cosine schedule and cross-entropy. The plain loop is what a peft user writes:
``timm.create_model(..., num_classes=C)``, ``peft.get_peft_model(model, LoraConfig(target_modules=<the same
layers>, modules_to_save=["head"]))``, a DataLoader and the loop. Only epochs 2..n are timed (as in
``benchmarks/throughput.py``, whose data helpers this script reuses). Peak memory: on CUDA
``torch.cuda.max_memory_allocated`` over the run (weights, activations, gradients, optimizer state); on CPU the
growth of the process's resident set from before the run to its high-water mark (``VmHWM``).

    .venv/bin/python benchmarks/tuners.py --size small --device cpu                      # CPU, a small ViT
    .venv/bin/python benchmarks/tuners.py --size base --device cuda --precision bf16     # one GPU, ViT-B/16 at 224 px

Exit status 0 when every run finished (``--strict``: 3 when a goal is missed), 1 when a run failed.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))
import throughput as T  # noqa: E402 - the synthetic data set and the epoch timing, shared

TAG = "TUNERS_RESULT "
LORA = {"r": 8, "alpha": 16.0}
ADAPTFORMER = {"dim": 64}
#: ViT sizes: timm architecture and model_args.
SIZES = {
    "small": ("vit_tiny_patch16_224", {"img_size": 32, "patch_size": 4, "depth": 4, "embed_dim": 96, "num_heads": 3}),
    "base": ("vit_base_patch16_224", {}),
}
SIDES = ("full", "lora", "plain", "adaptformer", "linear")  # lora next to plain: the same machine state
GOAL = 0.95


def _rss_kb(field: str) -> int:
    """A field of /proc/self/status in kB (0 where there is none)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def _memory_start(device: str) -> int:
    import torch

    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
        return 0
    return _rss_kb("VmRSS") * 1024


def _memory_peak(device: str, start: int) -> int:
    import torch

    if device == "cuda":
        return int(torch.cuda.max_memory_allocated())
    return _rss_kb("VmHWM") * 1024 - start


def _data(w: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    return T.register_dataset("synthetic"), T.dataset_kwargs({**w, "dataset": "synthetic"})


def worker_ltreg(w: dict[str, Any]) -> None:
    import accelerate  # noqa: F401 - imported before the memory baseline, as the plain side's libraries are
    import peft  # noqa: F401
    import timm  # noqa: F401
    import torch

    import ltreg
    import ltreg.trainer  # noqa: F401

    name, kwargs = _data(w)
    tuner = w["side"]
    start = _memory_start(w["device"])
    result = ltreg.train("ce", dataset=name, dataset_kwargs=kwargs, backbone=w["vit_dir"], tuner=tuner,
                         tuner_args={"lora": LORA, "adaptformer": ADAPTFORMER}.get(tuner, {}),
                         batch_size=w["batch_size"], epochs=w["epochs"], max_steps_per_epoch=w["steps"],
                         lr=T.LR, momentum=T.MOMENTUM, weight_decay=T.WEIGHT_DECAY, seed=0, cpu=w["device"] == "cpu",
                         mixed_precision=w["precision"], num_workers=w["num_workers"], eval_batch_size=w["batch_size"],
                         output_dir=w["run_dir"], overwrite=True, checkpoint_every=10**6, quiet=True)
    peak = _memory_peak(w["device"], start)
    rows = [r for r in result.history if r.get("stage", 1) == 1]
    trainable = sum(p.numel() for p in result.model.parameters() if p.requires_grad)
    print(TAG + json.dumps({**T._timed(rows, w["batch_size"]), "peak_bytes": peak, "trainable": trainable,
                            "threads": torch.get_num_threads()}), flush=True)


def worker_plain(w: dict[str, Any]) -> None:
    """The loop a peft user writes: timm model, get_peft_model with LoRA on the same layers, SGD, cross-entropy."""
    import timm
    import torch
    import torch.nn.functional as F
    from peft import LoraConfig, get_peft_model
    from torch.utils.data import DataLoader, Dataset

    import ltreg
    from ltreg.data.build import DataArgs, build_data
    from ltreg.data.views import build_pipeline
    from ltreg.tuners.peft_tuners import default_targets

    device = torch.device(w["device"])
    torch.manual_seed(0)
    name, kwargs = _data(w)
    train = build_data(DataArgs(dataset=name, seed=0, kwargs=kwargs)).train
    pipeline = build_pipeline(ltreg.get_method("ce").views.pipelines[0], train)

    class TrainSet(Dataset):
        def __len__(self) -> int:
            return len(train)

        def __getitem__(self, i: int) -> tuple[Any, int]:
            return pipeline(train.source.load(i)), int(train.targets[i])

    loader = DataLoader(TrainSet(), batch_size=w["batch_size"], shuffle=True, num_workers=w["num_workers"],
                        drop_last=True, pin_memory=device.type == "cuda", persistent_workers=w["num_workers"] > 0)
    start = _memory_start(w["device"])
    model = timm.create_model(f"local-dir:{w['vit_dir']}", pretrained=True, num_classes=train.num_classes)
    targets, _ = default_targets(model, "lora", None)
    model = get_peft_model(model, LoraConfig(r=LORA["r"], lora_alpha=LORA["alpha"], target_modules=targets,
                                             modules_to_save=["head"])).to(device)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.SGD(params, lr=T.LR, momentum=T.MOMENTUM, weight_decay=T.WEIGHT_DECAY)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=w["epochs"] * w["steps"])
    bf16 = w["precision"] == "bf16"
    rows = []
    model.train()
    for _ in range(w["epochs"]):
        begin, total, steps = time.time(), torch.zeros((), device=device), 0
        for x, y in loader:
            x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
                loss = F.cross_entropy(model(x), y)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
            total += loss.detach().float()
            steps += 1
            if steps == w["steps"]:
                break
        float(total)  # host sync: the epoch's work is done
        rows.append({"steps": steps, "seconds": time.time() - begin})
    peak = _memory_peak(w["device"], start)
    print(TAG + json.dumps({**T._timed(rows, w["batch_size"]), "peak_bytes": peak,
                            "trainable": sum(p.numel() for p in params), "threads": torch.get_num_threads()}), flush=True)


def make_vit(folder: Path, size: str, in_chans: int = 3) -> None:
    """The ViT every side starts from: random weights, written once as a timm model folder."""
    import timm
    import torch
    from timm.models import save_for_hf

    arch, args = SIZES[size]
    torch.manual_seed(0)
    save_for_hf(timm.create_model(arch, num_classes=0, in_chans=in_chans, **args), folder,
                model_args={**args, "in_chans": in_chans})


def run_side(w: dict[str, Any], timeout: float) -> dict[str, Any]:
    cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", json.dumps(w)]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "PYTHONUNBUFFERED": "1",
           "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep)}
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)
    found = [line[len(TAG):] for line in proc.stdout.splitlines() if line.startswith(TAG)]
    if proc.returncode != 0 or not found:
        raise SystemExit(f"the {w['side']} run failed (exit {proc.returncode}):\n{' '.join(cmd)}\n"
                         f"{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}")
    return json.loads(found[-1])


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--worker", help=argparse.SUPPRESS)
    p.add_argument("--size", choices=sorted(SIZES), default="small")
    p.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    p.add_argument("--precision", choices=("no", "bf16"), default="no")
    p.add_argument("--batch-size", type=int, default=None, help="default: 32 (small), 128 (base)")
    p.add_argument("--epochs", type=int, default=3, help="the first is warm-up, not timed")
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--rounds", type=int, default=1)
    p.add_argument("--num-workers", type=int, default=0)
    p.add_argument("--timeout", type=float, default=600)
    p.add_argument("--json", default=None, help="write every measurement here")
    p.add_argument("--strict", action="store_true", help="exit 3 when ltreg + lora is below 0.95 of the plain loop")
    args = p.parse_args()
    if args.worker:
        w = json.loads(args.worker)
        (worker_plain if w["side"] == "plain" else worker_ltreg)(w)
        return 0
    image_size = (SIZES[args.size][1].get("img_size") or 224)
    batch = args.batch_size or (32 if args.size == "small" else 128)
    per: dict[str, list[dict[str, Any]]] = {s: [] for s in SIDES}
    with tempfile.TemporaryDirectory(prefix="ltreg-bench-tuners-") as tmp:
        vit = Path(tmp) / "vit"
        make_vit(vit, args.size)
        for r in range(args.rounds):
            for side in SIDES:
                w = {"side": side, "vit_dir": str(vit), "device": args.device, "precision": args.precision,
                     "batch_size": batch, "epochs": args.epochs, "steps": args.steps, "image_size": image_size,
                     "num_workers": args.num_workers, "run_dir": str(Path(tmp) / f"run-{side}")}
                out = run_side(w, args.timeout)
                per[side].append(out)
                print(f"  round {r + 1} {side:>11}: {out['img_s']:8.1f} img/s  peak {out['peak_bytes'] / 2**20:8.1f} MiB"
                      f"  trainable {out['trainable']:,}", flush=True)
    med = {s: {k: statistics.median(x[k] for x in per[s]) for k in ("img_s", "peak_bytes")} for s in SIDES}
    arch = SIZES[args.size][0]
    print(f"\n{arch} {SIZES[args.size][1] or '(timm defaults)'}, batch {batch}, {args.device}, precision "
          f"{args.precision}, {args.steps} steps x {args.epochs} epochs (first not timed), {args.rounds} round(s)")
    head = f"{'tuner':<12} {'img/s':>9} {'step ms':>9} {'peak MiB':>10} {'time vs full':>13} {'memory vs full':>15}"
    print(head + "\n" + "-" * len(head))
    for s in (s for s in SIDES if s != "plain"):
        step_ms = 1000 * batch / med[s]["img_s"]
        print(f"{s:<12} {med[s]['img_s']:>9.1f} {step_ms:>9.1f} {med[s]['peak_bytes'] / 2**20:>10.1f} "
              f"{med['full']['img_s'] / med[s]['img_s']:>13.3f} {med[s]['peak_bytes'] / med['full']['peak_bytes']:>15.3f}")
    ratio = med["lora"]["img_s"] / med["plain"]["img_s"]
    for s in ("lora", "adaptformer", "linear"):
        print(f"ratio[{s}/full] step time = {med['full']['img_s'] / med[s]['img_s']:.3f}, peak memory = "
              f"{med[s]['peak_bytes'] / med['full']['peak_bytes']:.3f}")
    print(f"ratio[lora/plain-peft] images/s = {ratio:.3f} (goal >= {GOAL}: {'pass' if ratio >= GOAL else 'FAIL'}); "
          f"plain peft loop {med['plain']['img_s']:.1f} img/s, peak {med['plain']['peak_bytes'] / 2**20:.1f} MiB")
    if args.json:
        Path(args.json).write_text(json.dumps({"median": med, "runs": per, "ratio_lora_plain": ratio}, indent=1))
    return 3 if args.strict and ratio < GOAL else 0


if __name__ == "__main__":
    raise SystemExit(main())
