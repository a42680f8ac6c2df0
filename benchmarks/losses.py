"""Forward + backward of every contrastive loss against a floor measured in the same run. Prints only.

Inputs: L2-normalised features (d = 128, two views, 100 long-tailed classes with imbalance 100) for
B = 256 / 512 / 1024 / 2048 (``--quick``: 256 and 1024). The floor is one ``Z @ Z.T`` matmul, a row-wise
logsumexp and the two backward matmuls in preallocated buffers (N = 2B). Times are medians over
interleaved rounds (floor and losses alternate, so background load hits all alike). Memory is measured:
each loss runs once in a fresh subprocess (glibc mmap threshold pinned, so big buffers are returned on
free) and the peak RSS growth over the call (``VmHWM`` after resetting it) is printed in units of one
``N x N`` float32 buffer. pytorch-metric-learning's SupConLoss is measured too when it is installed.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F

from ltreg.losses import bcl, kcl, paco, supcon

D, C, IMBALANCE = 128, 100, 100


def inputs(b: int, seed: int = 0) -> dict[str, torch.Tensor]:
    """Two-view normalised features, long-tailed labels, prototypes, classifier logits and the log prior."""
    g = torch.Generator().manual_seed(seed)
    prior = IMBALANCE ** (-torch.arange(C) / (C - 1))
    prior = prior / prior.sum()
    return {
        "z": F.normalize(torch.randn(b, 2, D, generator=g), dim=-1).requires_grad_(),
        "y": torch.multinomial(prior, b, replacement=True, generator=g),
        "protos": F.normalize(torch.randn(C, D, generator=g), dim=-1).requires_grad_(),
        "logits": torch.randn(b, 2, C, generator=g).requires_grad_(),
        "log_prior": prior.log(),
    }


def losses(x: dict[str, torch.Tensor]) -> dict[str, Callable[[], torch.Tensor]]:
    """Each loss as a closure returning the scalar to back-propagate."""
    gen = torch.Generator().manual_seed(1)
    fns = {
        "supcon": lambda: supcon(x["z"], x["y"], 0.1).loss,
        "kcl (k=6)": lambda: kcl(x["z"], x["y"], k=6, temperature=0.1, generator=gen).loss,
        "bcl": lambda: bcl(x["z"], x["y"], x["protos"], temperature=0.1).loss,
        "paco": lambda: paco(x["z"], x["y"], x["logits"], x["log_prior"], temperature=0.1).loss,
    }
    try:
        from pytorch_metric_learning.losses import SupConLoss
    except ImportError:
        return fns
    pml = SupConLoss(temperature=0.1)
    fns["pml SupConLoss"] = lambda: pml(x["z"].reshape(-1, D), x["y"].repeat_interleave(2))
    return fns


def step(fn: Callable[[], torch.Tensor], x: dict[str, torch.Tensor]) -> None:
    """One forward + backward, then drop the gradients."""
    fn().backward()
    for t in x.values():
        t.grad = None


def floor_fn(n: int) -> Callable[[], None]:
    """The floor: ``Z @ Z.T``, row logsumexp, and the two backward matmuls, in preallocated buffers."""
    z = F.normalize(torch.randn(n, D), dim=-1)
    s, lse, ga, gb = torch.empty(n, n), torch.empty(n), torch.empty(n, D), torch.empty(n, D)

    def run() -> None:
        torch.mm(z, z.T, out=s)
        torch.logsumexp(s, 1, out=lse)
        torch.mm(s, z, out=ga)
        torch.mm(s.T, z, out=gb)

    return run


def timed(fn: Callable[[], object]) -> float:
    """Wall-clock seconds of one call."""
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def bench(b: int, rounds: int) -> dict[str, list[float]]:
    """Seconds of the floor and of each loss over interleaved rounds (after one warm-up each)."""
    x = inputs(b)
    runs: dict[str, Callable[[], object]] = {"floor": floor_fn(2 * b)}
    runs.update({name: (lambda f=f: step(f, x)) for name, f in losses(x).items()})
    for fn in runs.values():
        fn()
    times: dict[str, list[float]] = {name: [] for name in runs}
    for _ in range(rounds):
        for name, fn in runs.items():
            times[name].append(timed(fn))
    return times


def peak_memory(name: str, b: int) -> int:
    """Peak RSS growth (bytes) of one forward + backward of ``name`` at batch ``b`` (run in this process)."""
    small = inputs(8)
    step(losses(small)[name], small)  # load kernels and libraries first
    x = inputs(b)
    fn = losses(x)[name]
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # reset VmHWM to the current RSS

    def status(key: str) -> int:
        with open("/proc/self/status") as f:
            return next(int(line.split()[1]) * 1024 for line in f if line.startswith(key))

    before = status("VmRSS:")
    step(fn, x)
    return status("VmHWM:") - before


def measured_peak(name: str, b: int) -> float | None:
    """``peak_memory`` in a fresh subprocess, in units of one N x N float32 buffer (None if unavailable)."""
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "65536", "MALLOC_TRIM_THRESHOLD_": "0"}
    cmd = [sys.executable, __file__, "--memory-of", name, str(b)]
    out = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if out.returncode != 0:
        return None
    return int(out.stdout.strip().splitlines()[-1]) / (4 * (2 * b) ** 2)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="B = 256 and 1024 only")
    parser.add_argument("--rounds", type=int, default=None, help="timing rounds per case")
    parser.add_argument("--no-memory", action="store_true", help="skip the memory measurement")
    parser.add_argument("--memory-of", nargs=2, metavar=("LOSS", "B"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    torch.set_num_threads(min(2, os.cpu_count() or 1))
    if args.memory_of:
        print(peak_memory(args.memory_of[0], int(args.memory_of[1])))
        return
    sizes = (256, 1024) if args.quick else (256, 512, 1024, 2048)
    print(f"threads={torch.get_num_threads()} d={D} views=2 classes={C} (IF {IMBALANCE}); N = 2B columns")
    print(
        f"load average before: {' '.join(f'{x:.2f}' for x in os.getloadavg())} (other processes inflate medians)"
    )
    print(
        "memory: measured, peak RSS growth of one forward + backward in a fresh process, in N x N float32 buffers"
    )
    names = list(losses(inputs(8)))
    if "pml SupConLoss" not in names:
        print("pytorch-metric-learning not installed: its SupConLoss is skipped")
    print(
        f"{'B':>5} {'loss':<16} {'median ms':>10} {'x floor':>8} {'min x floor':>12} {'peak mem (x NxN fp32)':>22}"
    )
    for b in sizes:
        times = bench(b, args.rounds or {256: 31, 512: 31, 1024: 21}.get(b, 9))
        med = {name: statistics.median(t) for name, t in times.items()}
        low = {name: min(t) for name, t in times.items()}
        print(f"{b:>5} {'floor':<16} {med['floor'] * 1e3:>10.1f} {1.0:>8.2f} {1.0:>12.2f} {'':>22}")
        for name in names:
            mem = None if args.no_memory else measured_peak(name, b)
            shown = "-" if mem is None else f"{mem:.2f}"
            ratio, low_ratio = med[name] / med["floor"], low[name] / low["floor"]
            print(f"{b:>5} {name:<16} {med[name] * 1e3:>10.1f} {ratio:>8.2f} {low_ratio:>12.2f} {shown:>22}")
        sys.stdout.flush()
    print(f"load average after: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")


if __name__ == "__main__":
    main()
