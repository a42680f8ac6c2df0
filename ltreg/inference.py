"""Using a trained model on images: load it with its own preprocessing, and classify image files.

``ltreg.predict(MODEL, ["a.jpg", "folder/"])`` (``ltreg predict`` on the command line) returns one
:class:`Prediction` per image: the top-k classes with their softmax probabilities. ``MODEL`` is a run
folder, a model folder or a Hub repo id. Images are read and transformed exactly as the model's test
images were (:class:`Preprocessing`: the deterministic ``none`` view of :mod:`ltreg.data.views` at the
recorded image size, channels, mean and std), in batches, with loader workers, on the GPU when there is one.
A test-time view set (``tta``, :mod:`ltreg.data.evalviews`) averages the logits of several views of each
image; the default is the set the model card records (the one its test metrics were measured with).
"""

from __future__ import annotations

import csv
import dataclasses
import io
import math
import os
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader

from ltreg.card import RunCard
from ltreg.data.evalviews import EvalViewDataset, EvalViews, build_eval_views
from ltreg.data.lt import LTDataset
from ltreg.data.sources import IMAGE_EXTENSIONS, FileSource
from ltreg.data.views import ViewDataset, collate
from ltreg.errors import CheckpointError, ConfigError, DataError
from ltreg.files import write_atomic
from ltreg.models.ltmodel import LTModel
from ltreg.models.pretrained import load_pretrained
from ltreg.registry import registry
from ltreg.reports import dumps

#: The input size config.json declares for a model saved without a data set record.
DEFAULT_IMAGE_SIZE = 32
#: The largest image side a recorded transform may ask for.
MAX_IMAGE_SIZE = 8192


@dataclass(frozen=True)
class Preprocessing:
    """The eval transform recorded for a model: images converted to ``channels``, resized to squares at
    load when the model's data were (``resize_at_load``), then ltreg's ``none`` view (resize the shorter
    side and centre-crop to ``image_size``; 256/224 larger first from 96 px up) and normalised."""

    channels: int
    image_size: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    resize_at_load: bool = False

    @classmethod
    def of(cls, model: LTModel, card: RunCard) -> Preprocessing:
        """From the card's data set record; a model saved without one gets what its config.json declares
        (32 px, mean and std 0.5), as :func:`ltreg.models.pretrained.folder_config` writes."""
        ds, c = card.dataset, model.config.in_chans
        if ds is None:
            return cls(c, DEFAULT_IMAGE_SIZE, (0.5,) * c, (0.5,) * c)
        out = cls(c, ds.image_size, tuple(ds.mean or (0.5,) * c), tuple(ds.std or (0.5,) * c),
                  (ds.info or {}).get("resize", False) if isinstance(ds.info, dict) else False)
        out.check()
        return out

    def check(self) -> None:
        """Refuse a recorded transform that cannot be right (a config.json is data, perhaps from the Hub)."""
        def number(v: Any, positive: bool = False) -> bool:
            return (isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
                    and (v > 0 if positive else True))

        ok = (isinstance(self.image_size, int) and not isinstance(self.image_size, bool)
              and 1 <= self.image_size <= MAX_IMAGE_SIZE and isinstance(self.resize_at_load, bool)
              and len(self.mean) in (1, self.channels) and len(self.std) in (1, self.channels)
              and all(number(m) for m in self.mean) and all(number(s, positive=True) for s in self.std))
        if not ok:
            raise CheckpointError(
                f"the recorded preprocessing of this model is malformed (image_size={self.image_size!r}, "
                f"mean={list(self.mean)!r:.80}, std={list(self.std)!r:.80}, resize={self.resize_at_load!r}): "
                f"an image size in [1, {MAX_IMAGE_SIZE}], one finite mean and a positive std per channel are "
                f"needed; save the model again"
            )

    @property
    def load_size(self) -> int | None:
        """The square side images are resized to when read, or None."""
        return self.image_size if self.resize_at_load else None

    def dataset(self, source: Any, targets: Any, class_names: Sequence[str], many_thr: int = 100, few_thr: int = 20,
                name: str = "images") -> LTDataset:
        """``source``'s images as an :class:`LTDataset` whose ``none`` view is this transform."""
        return LTDataset(name, source, torch.as_tensor(np.asarray(targets), dtype=torch.long), len(class_names),
                         list(class_names), self.channels, self.image_size, allow_flip=False, mean=self.mean,
                         std=self.std, many_thr=many_thr, few_thr=few_thr)


@dataclass
class LoadedModel:
    """A model in eval mode with what using it needs: its card, class names and preprocessing."""

    model: LTModel
    card: RunCard
    label: str  # as the user named it
    class_names: list[str]
    preprocessing: Preprocessing
    local: bool  # a local folder (its recorded data paths may be followed), not a Hub repo


def load_model(model: str | os.PathLike | LoadedModel, revision: str | None = None) -> LoadedModel:
    """A run folder, model folder or Hub repo id, loaded (weights checked) with its preprocessing."""
    if isinstance(model, LoadedModel):
        return model
    net, card = load_pretrained(LTModel, model, revision)
    names = card.dataset.class_names if card.dataset is not None else []
    if len(names) != net.num_classes or not all(isinstance(n, str) for n in names):
        names = [str(i) for i in range(net.num_classes)]
    return LoadedModel(net, card, str(model), list(names), Preprocessing.of(net, card), Path(model).is_dir())


def pick_device(device: str | torch.device | None) -> torch.device:
    """``device``, or CUDA when available, else the CPU."""
    if device is None or device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        out = torch.device(device)
    except RuntimeError as exc:
        raise ConfigError(f"--device {device!r} is not a device name (cpu, cuda, cuda:1, auto)") from exc
    if out.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"--device {device}: no CUDA device is available here; pass --device cpu (or leave it out)")
    return out


def default_workers(device: torch.device) -> int:
    """Loader workers: on CUDA all CPUs but one (at most 8) decode while the GPU runs; on the CPU none."""
    if device.type != "cuda":
        return 0
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(1, min(8, cpus - 1))


def loader(dataset: LTDataset, batch_size: int, num_workers: int, device: torch.device,
           views: EvalViews | None = None) -> DataLoader:
    """Batches of ``dataset`` in order, under its deterministic ``none`` view or the view set ``views``."""
    if batch_size < 1 or num_workers < 0:
        raise ConfigError(f"--batch-size must be >= 1 and --num-workers >= 0, got {batch_size} and {num_workers}")
    source = ViewDataset(dataset, ("none",)) if views is None else EvalViewDataset(dataset, views)
    return DataLoader(source, batch_size=batch_size, collate_fn=collate,
                      num_workers=num_workers, pin_memory=device.type == "cuda")


def image_paths(inputs: Iterable[str | os.PathLike]) -> list[str]:
    """Image files named or found (recursively, by extension, sorted) in folders named, in the order given."""
    out: list[str] = []
    for item in inputs:
        path = Path(item)
        if path.is_dir():
            found = sorted(str(p) for p in path.rglob("*") if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file()
                           and not any(part.startswith(".") for part in p.relative_to(path).parts))
            if not found:
                raise DataError(f"{path} holds no image files ({', '.join(IMAGE_EXTENSIONS)}); name image files or a "
                                f"folder that holds some")
            out += found
        elif path.is_file():
            out.append(str(path))
        else:
            raise DataError(f"{path} does not exist: name image files or folders of images")
    if not out:
        raise DataError("no images given: name image files or folders of images")
    return out


@dataclass(frozen=True)
class ClassProbability:
    """One of an image's top-k classes: index, name and softmax probability (0..1)."""

    index: int
    label: str
    probability: float


@dataclass(frozen=True)
class Prediction:
    """An image's top-k classes, most probable first, and the test-time view set they were averaged over."""

    path: str
    top: tuple[ClassProbability, ...]
    views: str = "center"

    @property
    def label(self) -> str:
        """The predicted class (top-1)."""
        return self.top[0].label

    @property
    def probability(self) -> float:
        """The predicted class's probability."""
        return self.top[0].probability


def recorded_views_name(card: Any) -> str | None:
    """The name of the test-time view set the card records (its test metrics were measured with), or None."""
    recorded = (card.metrics or {}).get("eval_views") if card is not None else None
    name = recorded.get("name") if isinstance(recorded, dict) else None
    return name if isinstance(name, str) else None


def recorded_eval_views(card: Any, tta: str | None, data: LTDataset) -> EvalViews:
    """The view set ``tta`` names, else the one the card records (its default arguments), else ``center``."""
    return build_eval_views(tta or recorded_views_name(card) or "center", data)


@torch.no_grad()
def predict(model: str | os.PathLike | LoadedModel, images: str | os.PathLike | Iterable[str | os.PathLike], *,
            top_k: int = 5, batch_size: int = 64, num_workers: int | None = None,
            device: str | torch.device | None = None, revision: str | None = None,
            tta: str | None = None) -> list[Prediction]:
    """Classify image files (or every image in the folders named) with a run folder, model folder or Hub repo.

    Returns one :class:`Prediction` per image, in input order: the ``top_k`` most probable classes (at
    most the model's class count) with softmax probabilities. Images go through the model's own test
    transform (:class:`Preprocessing`); ``tta`` names a test-time view set (``center``, ``fivecrop``,
    ``tencrop``, ...: the logits of its views are averaged before the softmax), default the one the model
    card records, else ``center``. ``num_workers`` loader processes decode the images (default: none on
    the CPU, all CPUs but one on CUDA); ``device`` defaults to CUDA when present.
    """
    if isinstance(images, (str, os.PathLike)):
        images = [images]
    if not isinstance(top_k, int) or isinstance(top_k, bool) or top_k < 1:
        raise ConfigError(f"--top-k must be an integer >= 1, got {top_k!r}")
    if tta is not None:
        registry("eval_views").get(tta)  # an unknown name stops here, with the known ones, before any loading
    loaded = load_model(model, revision)
    paths = image_paths(images)
    dev = pick_device(device)
    pre = loaded.preprocessing
    # mirrored views only where the model's own test metrics used them (its data let flips keep labels)
    data = dataclasses.replace(pre.dataset(FileSource(paths, pre.channels, pre.load_size),
                                           np.zeros(len(paths), dtype=np.int64), loaded.class_names),
                               allow_flip=recorded_views_name(loaded.card) == "tencrop")
    views = recorded_eval_views(loaded.card, tta, data)
    k = min(top_k, loaded.model.num_classes)
    net = loaded.model.to(dev).eval()
    out: list[Prediction] = []
    for batch in loader(data, batch_size, default_workers(dev) if num_workers is None else num_workers, dev, views):
        x = batch.images.to(dev, non_blocking=True)  # [B, K, C, S, S]
        logits = net.predict(x.flatten(0, 1)).float().view(x.shape[0], x.shape[1], -1).mean(1)
        values, indices = logits.softmax(1).topk(k, dim=1)
        for i, vals, idx in zip(batch.index.tolist(), values.cpu().tolist(), indices.cpu().tolist()):
            out.append(Prediction(paths[i], tuple(ClassProbability(c, loaded.class_names[c], round(p, 6))
                                                  for p, c in zip(vals, idx)), views.name))
    return out


def predictions_json(predictions: Sequence[Prediction], model: str = "") -> str:
    """Predictions as strict JSON: ``{"model", "top_k", "views", "predictions": [{"path", "top": [{index, label,
    probability}]}]}`` (``views``: the test-time view set the logits were averaged over)."""
    k = len(predictions[0].top) if predictions else 0
    views = predictions[0].views if predictions else None
    return dumps({"model": model, "top_k": k, "views": views,
                  "predictions": [{"path": p.path, "top": [asdict(c) for c in p.top]} for p in predictions]})


def predictions_csv(predictions: Sequence[Prediction]) -> str:
    """Predictions as CSV: ``path``, ``views`` (the test-time view set), then ``top1_label, top1_index,
    top1_probability``, ``top2_...`` per rank."""
    k = len(predictions[0].top) if predictions else 0
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["path", "views", *(f"top{r}_{f}" for r in range(1, k + 1) for f in ("label", "index", "probability"))])
    for p in predictions:
        w.writerow([p.path, p.views, *(v for c in p.top for v in (c.label, c.index, c.probability))])
    return buf.getvalue()


def write_predictions(predictions: Sequence[Prediction], path: str | os.PathLike, model: str = "") -> Path:
    """Write ``predictions`` to ``path``: CSV for ``.csv``, JSON for ``.json`` (atomically)."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in (".csv", ".json"):
        raise ConfigError(f"--output {path}: name a .csv or a .json file (the suffix chooses the format)")
    if not path.parent.is_dir():
        raise ConfigError(f"--output {path}: the folder {path.parent} does not exist; create it first")
    write_atomic(path, predictions_csv(predictions) if suffix == ".csv" else predictions_json(predictions, model))
    return path


__all__ = ["ClassProbability", "LoadedModel", "Prediction", "Preprocessing", "image_paths", "load_model", "predict",
           "predictions_csv", "predictions_json", "recorded_eval_views", "write_predictions"]
