"""Evaluation view sets: the test-time views a model's logits are averaged over (test-time ensembling).

A view set is a registry name (group ``ltreg.eval_views``) whose factory takes the data set (image size,
channels, normalisation) and keyword arguments and returns an :class:`EvalViews`: one deterministic
transform ``uint8 [C, H, W] -> float [K, C, S, S]``. Evaluation runs the model on all K views of an image
in one batch and averages the K logit vectors; the embedding and features it reports are the first
view's, which is the centre crop in every set here.

- ``center`` (the default): the ``none`` pipeline, one view -- evaluation as before.
- ``fivecrop``: LIFT's test-time ensembling (Shi et al., ICML 2024): the image resized so its shorter side
  is ``S + expand`` (LIFT: 224 + 24 [C: trainer.py ``Resize(resolution + expand)`` + ``FiveCrop``]), then
  the centre and the four corner crops of side S.
- ``tencrop``: the five crops and their horizontal mirrors (LIFT's ``tte_mode=tencrop`` [C]); on data whose
  labels a flip changes (``allow_flip`` False) the mirrors are refused.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as TF

from ltreg.data.lt import LTDataset
from ltreg.data.views import build_pipeline
from ltreg.errors import ConfigError
from ltreg.registry import registry

#: LIFT's enlargement for test-time crops, 24 pixels at 224 [C: utils/config.py ``expand = 24``].
LIFT_EXPAND_RATIO = 24 / 224


@dataclass(frozen=True)
class EvalViews:
    """A built view set: its name and arguments, the number of views K and the transform to ``[K, C, S, S]``."""

    name: str
    num_views: int
    transform: Callable[[Tensor], Tensor]
    description: str

    def record(self) -> dict[str, Any]:
        """What metrics.json and the model card say about the views used."""
        return {"name": self.name, "views": self.num_views, "description": self.description}


def _normalise(data: LTDataset) -> v2.Compose:
    c = data.channels
    return v2.Compose([v2.ToDtype(torch.float32, scale=True),
                       v2.Normalize(list(data.mean) * (c // len(data.mean)), list(data.std) * (c // len(data.std)))])


def center(data: LTDataset) -> EvalViews:
    """One view: the deterministic ``none`` pipeline (resize and centre crop)."""
    pipe = build_pipeline("none", data)
    return EvalViews("center", 1, lambda img: pipe(img).unsqueeze(0), "one centre view (no test-time ensembling)")


def _crops(data: LTDataset, expand: int | None, mirror: bool, name: str) -> EvalViews:
    s = data.image_size
    if expand is None:
        expand = max(1, round(s * LIFT_EXPAND_RATIO))
    if not isinstance(expand, int) or isinstance(expand, bool) or expand < 0:
        raise ConfigError(f"eval views {name}: expand must be an integer >= 0 (pixels added to the image size "
                          f"before cropping), got {expand!r}")
    if mirror and not data.allow_flip:
        raise ConfigError(f"eval views {name} mirrors the crops, but a horizontal flip changes the labels of "
                          f"{data.name}; use fivecrop")
    resize = v2.Compose([v2.ToImage(), v2.Resize(s + expand, antialias=True)])
    norm = _normalise(data)

    def transform(img: Tensor) -> Tensor:
        big = resize(img)
        tl, tr, bl, br, c = TF.five_crop(big, [s, s])
        crops = [c, tl, tr, bl, br]  # the centre first: its embedding is the one reported
        if mirror:
            crops += [TF.horizontal_flip(x) for x in crops]
        return torch.stack([norm(x) for x in crops])

    k = 10 if mirror else 5
    what = "centre + four corner crops" + (" and their mirrors" if mirror else "")
    return EvalViews(name, k, transform, f"{k} views: {what} of side {s} from the image resized to {s + expand}, "
                                         f"logits averaged (LIFT's test-time ensembling)")


def fivecrop(data: LTDataset, expand: int | None = None) -> EvalViews:
    """LIFT's TTE: five crops of side S of the image resized to S + expand (default 24/224 of S), logits averaged."""
    return _crops(data, expand, False, "fivecrop")


def tencrop(data: LTDataset, expand: int | None = None) -> EvalViews:
    """The five crops of :func:`fivecrop` and their horizontal mirrors, logits averaged."""
    return _crops(data, expand, True, "tencrop")


def build_eval_views(name: str, data: LTDataset, **kwargs: Any) -> EvalViews:
    """The view set registered as ``name`` for ``data``; unknown names and arguments stop with their list."""
    factory = registry("eval_views").get(name)
    try:
        return factory(data, **kwargs)
    except TypeError as exc:
        raise ConfigError(f"eval views {name!r} do not accept {sorted(kwargs)}: {exc}") from exc


class EvalViewDataset(torch.utils.data.Dataset):
    """Items ``{"images": [K, C, S, S], "target", "index"}`` of ``data`` under one view set (for ``collate``)."""

    def __init__(self, data: LTDataset, views: EvalViews) -> None:
        self.data, self.views = data, views

    def __len__(self) -> int:
        return len(self.data)

    def __getitem__(self, i: int) -> dict[str, Any]:
        return {"images": self.views.transform(self.data.source.load(int(i))), "target": int(self.data.targets[i]),
                "index": int(i)}


__all__ = ["EvalViews", "EvalViewDataset", "build_eval_views", "center", "fivecrop", "tencrop", "LIFT_EXPAND_RATIO"]
