"""Sampler epoch cost at iNaturalist-2018 size (437,513 labels, 8,142 classes): target <= 50 ms per class-aware epoch.

Reports the epoch's index-tensor generation (``epoch_indices``) and the full Python iteration (``list(sampler)``)
separately, against a naive per-sample ``random`` loop timed on a subset and extrapolated linearly. Prints only.
"""

from __future__ import annotations

import os
import random
import statistics
import time
from collections.abc import Callable

import numpy as np
import torch

from ltreg.samplers import ClassAwareSampler, KGlobalSampler, PairedSampler, class_probabilities

N, C, N_MAX, IMBALANCE = 437_513, 8_142, 1_000, 500
NAIVE_SUBSET = 20_000


def inat_like_counts() -> np.ndarray:
    """Pareto profile n_c = n_max (1 + c/s)^-a with n_min = n_max / IF, s fitted so the counts sum to N."""
    c = np.arange(C)

    def counts(s: float) -> np.ndarray:
        a = np.log(IMBALANCE) / np.log1p((C - 1) / s)
        return np.maximum(np.round(N_MAX * (1 + c / s) ** -a), N_MAX // IMBALANCE).astype(np.int64)

    lo, hi = 1e-3, 1e6  # the total grows with s: bisect
    for _ in range(100):
        mid = (lo * hi) ** 0.5
        lo, hi = (mid, hi) if counts(mid).sum() < N else (lo, mid)
    n = counts(hi)
    n[: n.sum() - N] -= 1  # hit N exactly by trimming a few head classes
    return n


def timed(fn: Callable[[], object], reps: int) -> tuple[float, float]:
    """(fastest, median) of ``reps`` runs in seconds, after one warm-up run: the machine may be shared."""
    fn()
    times = []
    for _ in range(reps):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return min(times), statistics.median(times)


def naive_epoch(per_class: list[list[int]], cum: list[float], n: int) -> list[int]:
    """The per-sample loop: a class by ``random.choices`` (precomputed cum_weights), then an image by ``random.choice``."""
    classes = range(len(per_class))
    return [random.choice(per_class[random.choices(classes, cum_weights=cum)[0]]) for _ in range(n)]


def main() -> None:
    counts = inat_like_counts()
    targets = torch.repeat_interleave(torch.arange(C), torch.from_numpy(counts))
    targets = targets[torch.randperm(N, generator=torch.Generator().manual_seed(0))]
    print(
        f"labels: N={N:,} C={C:,} n_max={counts.max()} n_min={counts.min()} IF={counts.max() / counts.min():.0f} "
        f"(pareto profile); torch {torch.__version__}, {torch.get_num_threads()} threads, "
        f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs"
    )

    sampler = ClassAwareSampler(targets, C, seed=0, gamma=0.5)
    order = sampler.order.tolist()
    offs = sampler.offsets.tolist()
    per_class = [order[o : o + int(n)] for o, n in zip(offs, counts)]
    cum = np.cumsum(class_probabilities(sampler.counts, 0.5).numpy()).tolist()
    t0 = time.perf_counter()
    naive_epoch(per_class, cum, NAIVE_SUBSET)
    naive = (time.perf_counter() - t0) * N / NAIVE_SUBSET
    print(
        f"naive per-sample loop: {naive * 1e3:8.1f} ms/epoch (timed on {NAIVE_SUBSET:,} samples, extrapolated x{N / NAIVE_SUBSET:.1f})"
    )

    cases = [
        ("class-aware gamma=0.5", sampler),
        ("k-global k=3 (instance base)", KGlobalSampler(targets, C, seed=0, k=3)),
        ("paired instance + class-aware", PairedSampler(targets, C, seed=0, gamma=0.5)),
    ]
    for name, s in cases:
        epochs = iter(range(1, 10_000))  # a fresh epoch each run
        gen, gen_med = timed(lambda s=s, e=epochs: (s.set_epoch(next(e)), s.epoch_indices()), reps=15)
        full, full_med = timed(lambda s=s: list(s), reps=5)
        verdict = f"  [target <= 50 ms: {'met' if gen <= 0.05 else 'MISSED'}]" if s is sampler else ""
        print(
            f"{name:30s} epoch_indices {gen * 1e3:6.1f} ms (median {gen_med * 1e3:6.1f}; {naive / gen:4.0f}x naive) | "
            f"list(iter) {full * 1e3:6.1f} ms (median {full_med * 1e3:6.1f}; {naive / full:4.1f}x naive){verdict}"
        )


if __name__ == "__main__":
    main()
