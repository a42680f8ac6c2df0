"""The one per-class splitter: the test split of a dataset without one and the stage-2 tuning split."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from ltreg.data.lt import DataError, LTDataset, TensorSource
from ltreg.data.split import carve_holdout, holdout, split_per_class

TARGETS = np.array([0] * 10 + [1] * 5 + [2] * 2 + [3] * 1)


def test_split_per_class_takes_exactly_the_asked_counts_and_partitions():
    held, rest = split_per_class(TARGETS, np.array([3, 0, 2, 1]), seed=4)
    assert np.bincount(TARGETS[held], minlength=4).tolist() == [3, 0, 2, 1]
    assert sorted(np.concatenate([held, rest]).tolist()) == list(range(len(TARGETS)))
    again, _ = split_per_class(TARGETS, np.array([3, 0, 2, 1]), seed=4)
    other, _ = split_per_class(TARGETS, np.array([3, 0, 2, 1]), seed=5)
    assert np.array_equal(held, again) and not np.array_equal(held, other)


def test_holdout_sizes_balanced_and_proportional():
    t = TARGETS[TARGETS < 3]
    test, pool = holdout(t, 3, 0.5, balanced=False, seed=0)
    assert np.bincount(t[test], minlength=3).tolist() == [5, 2, 1]  # round(0.5 n_c), at least 1
    test, pool = holdout(t, 3, 0.5, balanced=True, seed=0)
    assert np.bincount(t[test], minlength=3).tolist() == [1, 1, 1]  # 0.5 * smallest class (2)
    assert len(np.intersect1d(test, pool)) == 0
    with pytest.raises(DataError, match=r"class\(es\) \[3\]"):
        holdout(TARGETS, 4, 0.5, balanced=False, seed=0)


def test_carve_holdout_keeps_single_image_classes_for_training():
    ds = LTDataset(name="toy", source=TensorSource(torch.arange(len(TARGETS)).float().view(-1, 1, 1, 1)),
                   targets=torch.as_tensor(TARGETS), num_classes=4, class_names=list("abcd"), channels=1, image_size=1)
    train, held = carve_holdout(ds, 0.3, seed=1)
    assert held.name == "toy-holdout"
    assert held.class_counts.tolist() == [3, 1, 1, 0]  # floor(0.3 n_c), at least 1; class 3 has one image
    assert train.class_counts.tolist() == [7, 4, 1, 1]
    ids = torch.cat([train.source.images, held.source.images]).view(-1).long().sort().values
    assert ids.tolist() == list(range(len(TARGETS)))
