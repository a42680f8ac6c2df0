"""Per-class hold-out splits: one splitter for every split carved out of a set of labelled images.

Two callers: a folder or Hugging Face dataset without a test split holds its test images out of the
training images (:func:`holdout`), and a stage-2 rebalancer that tunes on held-out training data gets
its split from the run builder (:func:`carve_holdout`). Both draw with :func:`split_per_class`; they
differ only in how many images of each class they take.
"""

from __future__ import annotations

import numpy as np

from ltreg.data.lt import DataError, LTDataset


def split_per_class(targets: np.ndarray, take: np.ndarray, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """``(held, rest)`` sorted indices: ``take[c]`` images of each class ``c``, drawn uniformly.

    ``np.random.RandomState(seed)`` shuffles each class's indices in class order and the first ``take[c]``
    are held out; the same ``targets``, ``take`` and ``seed`` give the same split on every machine.
    """
    rng = np.random.RandomState(seed)
    held, rest = [], []
    for c, k in enumerate(take):
        idx = np.where(targets == c)[0]
        rng.shuffle(idx)
        held.append(idx[:k])
        rest.append(idx[k:])
    return np.sort(np.concatenate(held)), np.sort(np.concatenate(rest))


def holdout(
    targets: np.ndarray, num_classes: int, fraction: float, balanced: bool, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """``(test, pool)`` indices: per class ``fraction`` of the smallest class (``balanced``) or of the
    class itself, at least one image; every class needs 2 images (one to train on, one to test)."""
    if not 0 < fraction < 1:
        raise DataError(f"test_fraction must lie in (0, 1), got {fraction}")
    counts = np.bincount(targets, minlength=num_classes)
    small = [c for c in range(num_classes) if counts[c] < 2]
    if small:
        raise DataError(
            f"class(es) {small[:10]} have fewer than 2 images: one cannot be both trained on and tested; "
            f"add images or give a test split"
        )
    if balanced:
        take = np.full(num_classes, max(1, int(fraction * counts.min())))
    else:
        take = np.array([max(1, round(fraction * int(n))) for n in counts])
    return split_per_class(targets, take, seed)


def carve_holdout(train: LTDataset, fraction: float, seed: int) -> tuple[LTDataset, LTDataset]:
    """``(train, holdout)``: ``floor(fraction * n_c)`` images (at least one) of every class with >= 2 images
    split off the training set for stage-2 tuning; a class with one image keeps it for training."""
    targets = train.targets.numpy()
    counts = np.bincount(targets, minlength=train.num_classes)
    take = np.where(counts >= 2, np.maximum(1, np.floor(counts * fraction)), 0).astype(np.int64)
    held, rest = split_per_class(targets, take, seed + 7)
    return train.subset(rest), train.subset(held, name=f"{train.name}-holdout")
