"""Settings read off the data when not given: image size, channels, many / few thresholds, the test split."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from ltreg.errors import DataError

#: Images larger than this train at this size (random-resized crops), as ImageNet-scale sets do.
MAX_IMAGE_SIZE = 224
#: Below this size the views crop without resizing (views.py), so mixed sizes are resized at load.
SMALL_IMAGE = 96
GREY_MODES = ("1", "L", "I", "I;16", "F")
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
GREY_MEAN, GREY_STD = (0.5,), (0.5,)


def normalisation(channels: int) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """``(mean, std)``: ImageNet's for colour images, 0.5 / 0.5 for grey-level ones."""
    return (IMAGENET_MEAN, IMAGENET_STD) if channels == 3 else (GREY_MEAN, GREY_STD)


def infer_format(
    sizes: Sequence[tuple[int, int]], modes: Sequence[str], channels: int | None = None,
    image_size: int | None = None, resize: bool | None = None,
) -> tuple[int, int, bool, str]:
    """``(channels, image_size, resize, note)`` from image sizes ``(w, h)`` and PIL modes; a value given
    is kept, and the note names only what was inferred.

    channels: 1 when every image is grey-level, else 3. image_size: the median shorter side, at most
    224. resize: True when the sizes differ and the size is small (< 96 px), so batches stack.
    """
    given = {"image_size": image_size, "channels": channels, "resize": resize}
    if not sizes:
        raise DataError("no images to infer the image size from")
    wh = np.asarray(sizes, dtype=np.int64)
    channels = (1 if all(m in GREY_MODES for m in modes) else 3) if channels is None else channels
    size = int(min(MAX_IMAGE_SIZE, np.median(wh.min(axis=1)))) if image_size is None else image_size
    same = bool((wh == wh[0]).all())
    resize = (not same and size < SMALL_IMAGE) if resize is None else resize
    shape = f"all {wh[0][0]}x{wh[0][1]}" if same else f"{int(wh.min())}..{int(wh.max())} px"
    values = {"channels": channels, "image_size": size, "resize": resize}
    inferred = [f"{k} {values[k]}" for k, v in given.items() if v is None and k != "resize"]
    stated = [f"{k} {v}" for k, v in given.items() if v is not None]
    found = (f"{' and '.join(inferred)} inferred from {len(wh)} images ({shape}{', resized at load' if resize else ''})"
             if inferred else "")
    note = "; ".join(x for x in (found, f"given: {', '.join(stated)}" if stated else "") if x)
    return channels, size, resize, note


def infer_thresholds(counts: np.ndarray) -> tuple[int, int, str]:
    """``(many_thr, few_thr, note)``: the literature's 100 / 20 scaled to the largest class as
    CIFAR-100-LT's are to its 500 (n_max / 5, n_max / 25), never above 100 / 20."""
    n_max = int(np.max(counts))
    many, few = min(100, n_max // 5), min(20, n_max // 25)
    why = "the literature's" if (many, few) == (100, 20) else f"largest class {n_max} / 5 and / 25"
    return many, few, f"thresholds many > {many} / few < {few} ({why})"


def dataset_fields(class_names: list[str], channels: int, image_size: int, counts: np.ndarray,
                   many_thr: int | None, few_thr: int | None, notes: list[str], info: dict[str, Any],
                   hflip: bool = False) -> dict[str, Any]:
    """The ``LTDataset`` fields a folder or table builder shares between its splits: classes, format,
    normalisation, the many / few thresholds (inferred from the training counts when not given, noted) and
    whether a horizontal flip keeps the label (``hflip``: only when the user says so; digits, text and
    anything with a handedness change class when mirrored, so the default is no flip, noted)."""
    notes.append("horizontal flips on (hflip=true)" if hflip else
                 "no horizontal flips (pass --data-arg hflip=true if a mirrored image keeps its class)")
    if many_thr is None or few_thr is None:
        many, few, note = infer_thresholds(counts)
        many_thr, few_thr = (many if many_thr is None else many_thr), (few if few_thr is None else few_thr)
        notes.append(note)
    mean, std = normalisation(channels)
    return dict(num_classes=len(class_names), class_names=class_names, channels=channels, image_size=image_size,
                allow_flip=hflip, mean=mean, std=std, many_thr=many_thr, few_thr=few_thr,
                info={**info, "inferred": "; ".join(notes)})
