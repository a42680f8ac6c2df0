"""Long-tailed data sets: image sources, LT profiles and the many / medium / few class split."""

from __future__ import annotations

import hashlib
import json
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np
import torch
from torch import Tensor

from ltreg.errors import DataError


class ImageSource(Protocol):
    """Random access to images as uint8 tensors ``[C, H, W]``."""

    def __len__(self) -> int: ...

    def load(self, i: int) -> Tensor: ...


@dataclass
class TensorSource:
    """Images held in memory as one uint8 tensor ``[N, C, H, W]``."""

    images: Tensor

    def __len__(self) -> int:
        return self.images.shape[0]

    def load(self, i: int) -> Tensor:
        return self.images[i]

    def subset(self, idx: np.ndarray) -> TensorSource:
        return TensorSource(self.images[torch.as_tensor(idx, dtype=torch.long)])


@dataclass
class SubsetSource:
    """A view of another source through an index array."""

    base: Any
    idx: np.ndarray

    def __len__(self) -> int:
        return len(self.idx)

    def load(self, i: int) -> Tensor:
        return self.base.load(int(self.idx[i]))


def subset_source(source: Any, idx: np.ndarray) -> Any:
    return source.subset(idx) if hasattr(source, "subset") else SubsetSource(source, np.asarray(idx))


@dataclass
class LTDataset:
    """Images plus integer targets, with the class statistics long-tailed evaluation needs.

    ``many_thr`` / ``few_thr``: a class is many-shot when its *training* count is > many_thr,
    few-shot when < few_thr, medium otherwise (the literature's 100 / 20 by default).
    """

    name: str
    source: Any
    targets: Tensor
    num_classes: int
    class_names: list[str]
    channels: int
    image_size: int
    allow_flip: bool = True
    mean: tuple[float, ...] = (0.5,)
    std: tuple[float, ...] = (0.5,)
    many_thr: int = 100
    few_thr: int = 20
    info: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.targets = torch.as_tensor(self.targets)
        if self.targets.dtype.is_floating_point:
            if not torch.equal(self.targets, self.targets.round()):
                raise DataError(f"{self.name}: labels must be integers, got non-integer values")
            self.targets = self.targets.long()
        self.targets = self.targets.long()
        if len(self.source) != self.targets.numel():
            raise DataError(f"{self.name}: {len(self.source)} images but {self.targets.numel()} labels")
        if self.targets.numel():
            lo, hi = int(self.targets.min()), int(self.targets.max())
            if lo < 0 or hi >= self.num_classes:
                raise DataError(
                    f"{self.name}: labels must lie in [0, {self.num_classes - 1}], found {lo}..{hi}; "
                    f"fix the labels or pass num_classes={hi + 1}"
                )

    def __len__(self) -> int:
        return self.targets.numel()

    @property
    def class_counts(self) -> Tensor:
        return torch.bincount(self.targets, minlength=self.num_classes)

    def check_train(self) -> None:
        """A training set must have every class: an empty class has no prior and no positives."""
        if self.num_classes < 2:  # one class: every prediction is right, accuracy is a meaningless 100 %
            raise DataError(f"{self.name}: a training set needs at least 2 classes, this one has {self.num_classes}")
        counts = self.class_counts
        empty = (counts == 0).nonzero().flatten().tolist()
        if empty:
            names = ", ".join(f"{c} ({self.class_names[c]})" for c in empty[:10])
            raise DataError(
                f"{self.name}: {len(empty)} class(es) have no training images: {names}"
                f"{' ...' if len(empty) > 10 else ''}. Lower the imbalance factor, raise the per-class "
                f"maximum, or drop those classes from num_classes."
            )

    def split_masks(self, train_counts: Tensor | None = None) -> dict[str, Tensor]:
        """Boolean class masks of the many / medium / few split, by training counts."""
        counts = self.class_counts if train_counts is None else train_counts
        many = counts > self.many_thr
        few = counts < self.few_thr
        return {"many": many, "medium": ~many & ~few, "few": few}

    def subset(self, idx: np.ndarray, name: str | None = None) -> LTDataset:
        idx = np.asarray(idx, dtype=np.int64)
        return LTDataset(
            name=name or self.name,
            source=subset_source(self.source, idx),
            targets=self.targets[torch.as_tensor(idx)],
            num_classes=self.num_classes,
            class_names=self.class_names,
            channels=self.channels,
            image_size=self.image_size,
            allow_flip=self.allow_flip,
            mean=self.mean,
            std=self.std,
            many_thr=self.many_thr,
            few_thr=self.few_thr,
            info=dict(self.info),
        )


@dataclass
class LTData:
    """A benchmark: long-tailed ``train``, balanced ``test``, optional ``val``.

    ``summary`` is one line for the user saying what was read and what was inferred (layout, columns,
    image size, channels, split thresholds); ``build_data`` fills it when the builder leaves it empty.
    """

    train: LTDataset
    test: LTDataset
    val: LTDataset | None = None
    summary: str = ""


def lt_counts(n_max: int, num_classes: int, imbalance: float, profile: str = "exp") -> list[int]:
    """Per-class counts of a long-tailed profile (class 0 is the head).

    ``exp``: n_i = floor(n_max * (1/IF)^(i/(C-1))) as in LDAM-DRW's CIFAR-LT;
    ``step``: the first half keeps n_max, the second half n_max / IF.
    """
    if imbalance < 1:
        raise DataError(f"imbalance factor must be >= 1 (n_max / n_min), got {imbalance}")
    if profile == "exp":
        if num_classes == 1:
            return [int(n_max)]
        return [int(n_max * (1.0 / imbalance) ** (i / (num_classes - 1))) for i in range(num_classes)]
    if profile == "step":
        half = num_classes // 2
        return [int(n_max)] * (num_classes - half) + [int(n_max / imbalance)] * half
    raise DataError(f"unknown LT profile {profile!r}; use 'exp' or 'step'")


def make_lt_indices(
    targets: Sequence[int] | np.ndarray | Tensor,
    num_classes: int,
    imbalance: float,
    profile: str = "exp",
    n_max: int | None = None,
    seed: int = 0,
) -> np.ndarray:
    """Indices of a long-tailed subset: for class i, a random subset of ``lt_counts(...)[i]`` images.

    Follows LDAM-DRW: class order is the label order, numpy seed ``seed``, classes in label order
    each drawn with ``np.random.shuffle`` of that class's indices.
    """
    targets = np.asarray(targets)
    per_class = np.bincount(targets, minlength=num_classes)
    n_max = int(per_class.max() if n_max is None else n_max)
    counts = lt_counts(n_max, num_classes, imbalance, profile)
    short = [c for c in range(num_classes) if counts[c] > per_class[c]]
    if short:
        raise DataError(
            f"the LT profile asks for more images than exist in classes {short[:10]} "
            f"(e.g. class {short[0]}: {counts[short[0]]} asked, {per_class[short[0]]} available); lower n_max"
        )
    zero = [c for c in range(num_classes) if counts[c] == 0]
    if zero:
        raise DataError(
            f"imbalance {imbalance} with n_max {n_max} leaves classes {zero[:10]} with no image; "
            f"lower the imbalance factor (at most {n_max})"
        )
    rng = np.random.RandomState(seed)
    out = []
    for c in range(num_classes):
        idx = np.where(targets == c)[0]
        rng.shuffle(idx)
        out.append(idx[: counts[c]])
    return np.concatenate(out)


def class_split_sizes(counts: Tensor, many_thr: int, few_thr: int) -> dict[str, int]:
    many = int((counts > many_thr).sum())
    few = int((counts < few_thr).sum())
    return {"many": many, "medium": counts.numel() - many - few, "few": few}


def effective_imbalance(counts: Tensor) -> float:
    counts = counts[counts > 0]
    return float(counts.max()) / max(1.0, float(counts.min())) if counts.numel() else math.nan


def data_identity(ds: LTDataset) -> str:
    """What identifies a training set beyond its class count: ``"N images, C classes, sha256 <16 hex>"`` over
    the class names, the per-class counts and each sample's (file path relative to the data's common folder,
    or index; label), in order. A resume compares it with the run's (and stops on a difference); an
    evaluation with the model's (and warns)."""
    h = hashlib.sha256(json.dumps([list(map(str, ds.class_names)), ds.class_counts.tolist()]).encode())
    source, idx = ds.source, None
    if isinstance(source, SubsetSource):
        source, idx = source.base, source.idx
    paths = getattr(source, "paths", None)
    if paths:
        if idx is not None:
            paths = [paths[int(i)] for i in idx]
        common = os.path.commonpath([os.path.dirname(p) for p in paths])
        for p, y in zip(paths, ds.targets.tolist()):
            h.update(f"{os.path.relpath(p, common)}\0{y}\n".encode())
    else:
        if idx is not None:
            h.update(np.asarray(idx).astype("<i8").tobytes())
        h.update(ds.targets.numpy().astype("<i8").tobytes())
    return f"{len(ds)} images, {ds.num_classes} classes, sha256 {h.hexdigest()[:16]}"
