"""Every pass over data that is not training, and the metrics computed from it.

:class:`DataPasses` owns the no-grad passes a run makes (test evaluation, the features post-hoc
rebalancers read, the embeddings prototype modules ask for): always in eval mode, so what an image
gives never depends on which other images share its batch or in which order they come.
:func:`evaluate_model` evaluates a saved model folder or Hub repo on the data it was trained on or on any
labelled folder or table, classes matched by name (:class:`EvalReport`; the metrics are :mod:`ltreg.reports`).
The geometry metrics are those of Bach et al., "Global Contrastive Learning for Long-Tailed
Classification" (TMLR 2023), §4: intra alignment (Eq. 9), variance (Eqs. 10-11), inter uniformity
(Eq. 12) and its improved form (Eq. 13), on the normalised contrastive embedding of the test split.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader

from ltreg.data.build import DataArgs, build_data
from ltreg.data.evalviews import EvalViewDataset, EvalViews, center
from ltreg.data.labelled import LabelledSet, read_labelled
from ltreg.data.lt import LTData, LTDataset, data_identity, subset_source
from ltreg.data.views import ViewDataset, collate
from ltreg.errors import CheckpointError, DataError
from ltreg.inference import LoadedModel, default_workers, load_model, pick_device, recorded_eval_views
from ltreg.reports import LTReport, format_groups, format_per_class, lt_report


@contextmanager
def eval_mode(*modules: nn.Module | None) -> Iterator[None]:
    """Put modules in eval mode for the block and restore each submodule's own mode afterwards."""
    saved = [(m, m.training) for mod in modules if mod is not None for m in mod.modules()]
    for mod in modules:
        if mod is not None:
            mod.eval()
    try:
        yield
    finally:
        for m, was in saved:
            m.training = was


@dataclass
class Extracted:
    """One centre view per image: classifier logits, normalised embedding, backbone features, labels (CPU)."""

    logits: Tensor
    z: Tensor
    features: Tensor
    targets: Tensor


class DataPasses:
    """The no-grad passes over data of one run (or one loaded model), batched, eval mode, on ``device``.

    ``accelerator`` (optional) splits ``extract`` over processes and gathers with ``gather_for_metrics``;
    ``memory`` (optional) is a momentum key encoder that ``embed(use_key=True)`` uses.
    """

    def __init__(self, model: nn.Module, device: torch.device, batch_size: int = 256, seed: int = 0,
                 accelerator: Any = None, num_workers: int = 0) -> None:
        self.model, self.device, self.batch_size, self.seed = model, device, batch_size, seed
        self.accelerator, self.num_workers = accelerator, num_workers
        self.memory: Any = None
        self.epoch = 0  # seeds the augmentation of embedding passes (the loop sets it)

    def _loader(self, ds: torch.utils.data.Dataset) -> DataLoader:
        loader = DataLoader(ds, batch_size=self.batch_size, collate_fn=collate, num_workers=self.num_workers,
                            persistent_workers=False, pin_memory=self.device.type == "cuda")
        if self.accelerator is not None:
            loader = self.accelerator.prepare_data_loader(loader, device_placement=True)
        return loader

    @torch.no_grad()
    def extract(self, dataset: LTDataset, views: EvalViews | None = None) -> Extracted:
        """Logits, embeddings, features and targets of ``dataset`` under the deterministic ``none`` view, or
        under a view set (``views``): logits averaged over its K views, embedding and features of the first."""
        model = self.model
        outs: list[tuple[Tensor, ...]] = []
        source = ViewDataset(dataset, ("none",)) if views is None else EvalViewDataset(dataset, views)
        with eval_mode(model):
            for batch in self._loader(source):
                images, targets = batch.images.to(self.device), batch.targets.to(self.device)
                ctx = self.accelerator.autocast() if self.accelerator is not None else _null()
                with ctx:
                    o = model(images)
                logits = o.logits[:, 0].float() if views is None else o.logits.float().mean(1)
                got = (logits, o.z[:, 0].float(), o.features[:, 0].float(), targets)
                if self.accelerator is not None:
                    got = self.accelerator.gather_for_metrics(got)
                outs.append(tuple(t.cpu() for t in got))
        cols = list(zip(*outs)) if outs else [[torch.empty(0)]] * 4
        return Extracted(*(torch.cat(c) for c in cols))

    @torch.no_grad()
    def embed(self, dataset: LTDataset, indices: Tensor, pipeline: str = "none", use_key: bool = True,
              slot: int = 0) -> Tensor:
        """Normalised projections ``[n, D]`` of ``dataset[indices]`` under one view pipeline (eval mode).

        Augmentation is seeded by (seed, epoch, image, ``slot``), so two calls with different slots see
        different views of each image and the result is identical on every process.
        """
        vds = ViewDataset(dataset, (pipeline,), seed=self.seed + 1)
        vds.set_epoch(self.epoch)
        use_key = use_key and self.memory is not None
        encoder = self.memory if use_key else self.model
        out = []
        with eval_mode(encoder):
            for chunk in torch.split(torch.as_tensor(indices), self.batch_size):
                images = torch.stack([vds.view(int(i), slot) for i in chunk]).to(self.device)
                if use_key:
                    out.append(self.memory.key_encode(images))
                else:
                    out.append(self.model.project(self.model.forward_features(images)))
        return torch.cat(out) if out else torch.empty(0, self.model.embed_dim, device=self.device)


@contextmanager
def _null() -> Iterator[None]:
    yield


def evaluate(passes: DataPasses, test: LTDataset, train: LTDataset, views: EvalViews | None = None) -> dict[str, Any]:
    """Test metrics: top-1, balanced, many / medium / few (by training counts), per class, embedding geometry;
    under the test-time view set ``views`` (None: the one centre view), which ``eval_views`` records."""
    out = passes.extract(test, None if views is None or views.name == "center" else views)
    metrics = lt_metrics(out.logits, out.targets, train.class_counts, train.many_thr, train.few_thr)
    metrics["eval_views"] = (views or center(test)).record()
    metrics["geometry"] = geometry_metrics(out.z, out.targets, train.num_classes)
    metrics["train_counts"] = train.class_counts.tolist()
    return metrics


@dataclass
class EvalData:
    """What an evaluation scored: the data set, the split, in words what was scored, and the counts."""

    dataset: str
    root: str | None
    split: str
    scored: str
    images: int
    classes: int  # of the model's classes, those with at least one scored image
    model_classes: int
    missing_classes: list[str]  # model classes without an image here
    extra_classes: dict[str, int]  # class name -> images: not a class of the model, not scored
    skipped: int = 0  # unreadable images left out
    summary: str = ""  # the data set builder's own line, when a builder read the data

    @property
    def unknown_images(self) -> int:
        return sum(self.extra_classes.values())

    def header(self) -> list[str]:
        """The lines above the table: data set, split, what is scored, classes matched by name."""
        lines = [f"data: {self.summary}"] if self.summary else []
        lines.append(f"scored: {self.scored}")
        lines.append(f"{self.images} images in {self.classes} of the model's {self.model_classes} classes"
                     + (f"; {self.skipped} unreadable image(s) skipped" if self.skipped else ""))
        if self.missing_classes:
            lines.append(f"classes of the model without images here ({len(self.missing_classes)}): "
                         f"{_names(self.missing_classes)}")
        if self.extra_classes:
            lines.append(f"not scored: {self.unknown_images} image(s) of {len(self.extra_classes)} class(es) the model "
                         f"does not know: {_names([f'{k} ({v})' for k, v in self.extra_classes.items()])}")
        return lines


def _names(items: list[str], limit: int = 12) -> str:
    return ", ".join(items[:limit]) + (f", ... ({len(items) - limit} more)" if len(items) > limit else "")


@dataclass
class EvalReport:
    """An evaluation of a model: what was scored (:class:`EvalData`), the :class:`~ltreg.reports.LTReport`,
    and the flat metrics (``metrics.json``'s keys, geometry included)."""

    model: str
    data: EvalData
    report: LTReport
    metrics: dict[str, Any]

    def to_json(self) -> dict[str, Any]:
        """Model, data, flat metrics (without the per-class list), groups and per class (head -> tail)."""
        data = {**dataclasses.asdict(self.data), "unknown_images": self.data.unknown_images}
        metrics = {k: v for k, v in self.metrics.items() if k != "per_class"}
        return {"model": self.model, "data": data, "metrics": metrics, **self.report.to_json()}

    def format(self, per_class: bool = False) -> str:
        """Header, the All / Many / Medium / Few table, and with ``per_class`` one row per class."""
        lines = [f"model: {self.model}", *self.data.header(), "", *format_groups(self.metrics)]
        if per_class:
            lines += ["", format_per_class(self.report)]
        return "\n".join(lines)


def match_classes(found: LabelledSet, model_classes: list[str]) -> tuple[np.ndarray, list[str], dict[str, int]]:
    """Labels of ``found`` as model class indices (-1: a class the model does not know), by class *name*;
    the model's classes without images; the unknown class names with their image counts."""
    index = {name: i for i, name in enumerate(model_classes)}
    mapping = np.asarray([index.get(name, -1) for name in found.class_names], dtype=np.int64)
    labels = mapping[found.labels] if len(found.labels) else np.zeros(0, dtype=np.int64)
    counts = np.bincount(found.labels, minlength=len(found.class_names))
    present = set(labels[labels >= 0].tolist())
    missing = [name for i, name in enumerate(model_classes) if i not in present]
    extra = {name: int(counts[j]) for j, name in enumerate(found.class_names) if mapping[j] < 0 and counts[j]}
    if not present:
        lower = {n.lower() for n in model_classes}
        hint = ("; some differ only in upper / lower case: rename the folders to the model's spelling"
                if any(n.lower() in lower for n in found.class_names) else "")
        raise DataError(
            f"none of the {len(found.labels)} images of {found.root} belongs to a class of the model: its classes are "
            f"{_names(found.class_names, 8)}; the model's are {_names(model_classes, 8)} (classes are matched by name"
            f"{hint})"
        )
    return labels, missing, extra


def _same_path(a: str | None, b: str) -> bool:
    return a is not None and Path(a).expanduser().resolve() == Path(b).expanduser().resolve()


def _rebuild(loaded: LoadedModel, *, data_root: str | None, dataset: str | None, data_kwargs: dict[str, Any],
             split: str) -> tuple[LabelledSet, EvalData, Tensor | None, int, int]:
    """The recorded (or named) data set rebuilt by its builder, and its test or val split."""
    recorded = recorded_data_args(loaded.card)
    if dataset is None and recorded is None:
        raise CheckpointError(f"{loaded.label} does not record the data set it was trained on; pass --dataset, "
                              f"or --data-root a labelled folder or table")
    if recorded is None or (dataset is not None and dataset != recorded.dataset):
        args = DataArgs(dataset=str(dataset), root=data_root, kwargs=dict(data_kwargs))
    else:
        args = dataclasses.replace(recorded, kwargs={**recorded.kwargs, **data_kwargs})
        if data_root is not None:
            args.root = data_root
    data = build_data(args)
    target = _split(data, split, loaded.label)
    if target.channels != loaded.model.config.in_chans:
        raise CheckpointError(
            f"{loaded.label} takes {loaded.model.config.in_chans}-channel images; the data set {args.dataset} has "
            f"{target.channels}-channel ones: evaluate it on a matching data set"
        )
    _warn_other_data(loaded, data, args)
    found = LabelledSet(str(args.root), args.dataset, "", target.source, target.targets.numpy(), list(target.class_names))
    same = list(target.class_names) == loaded.class_names
    counts = data.train.class_counts if same else None
    where = f" at {args.root}" if args.root else ""
    scored = f"the {split} split ({target.name}) that the {args.dataset} builder makes of its data{where}"
    info = EvalData(args.dataset, args.root, split, scored, 0, 0, 0, [], {}, summary=data.summary)
    return found, info, counts, data.train.many_thr, data.train.few_thr


def evaluate_model(model: str | os.PathLike | LoadedModel, *, data_root: str | None = None,
                   dataset: str | None = None, data_kwargs: dict[str, Any] | None = None, split: str = "test",
                   revision: str | None = None, batch_size: int = 256, num_workers: int | None = None,
                   device: str | torch.device | None = None, tta: str | None = None) -> EvalReport:
    """Evaluate a run folder, model folder or Hub repo on labelled images.

    * No ``data_root`` (or the one the run recorded), or a ``dataset`` named: the data set builder rebuilds
      the data (from the recorded name, imbalance, profile and seed; the recorded folder and builder
      arguments are never read: ``data_root`` / ``data_kwargs`` give them) and its ``split`` (test or val)
      is scored -- for a flat folder that is the hold-out the run was tested on, and the header says so. A
      rebuilt training set other than the model's warns (:class:`DataMismatchWarning`).
    * A new ``data_root``: a folder of class sub-folders (flat: every image; split layout: ``test/``,
      else ``val/``) or a ``datasets`` table (its test split, or all rows of its only split) is scored,
      nothing held out (:func:`ltreg.data.labelled.read_labelled`; ``data_kwargs``: layout,
      image_column, label_column).

    Either way classes are matched to the model's *by name*: the model's classes without images and the
    images of classes the model does not know (not scored) are named in :class:`EvalData`. Many / Medium /
    Few follow the model's recorded training counts. Images go through the model's own test transform, under
    the test-time view set ``tta`` names (``ltreg.eval_views``; None: the one the model card records, else
    ``center``).
    """
    loaded = load_model(model, revision)
    data_kwargs = dict(data_kwargs or {})
    card_ds = loaded.card.dataset
    pre = loaded.preprocessing
    raw_root = (card_ds.builder_args or {}).get("root") if card_ds is not None else None
    recorded_root = raw_root if isinstance(raw_root, str) else None  # compared with --data-root, never read
    if data_root is not None and dataset is None and not _same_path(recorded_root, data_root):
        found = read_labelled(data_root, split, pre.channels, pre.load_size, data_kwargs)
        info = EvalData(found.kind, data_root, split, found.scored, 0, 0, 0, [], {}, skipped=found.skipped)
        counts, many_thr, few_thr = None, 100, 20
    else:
        found, info, counts, many_thr, few_thr = _rebuild(loaded, data_root=data_root, dataset=dataset,
                                                          data_kwargs=data_kwargs, split=split)
    if card_ds is not None and len(card_ds.class_counts) == loaded.model.num_classes:
        counts = torch.tensor(card_ds.class_counts)
        many_thr, few_thr = card_ds.many_thr, card_ds.few_thr
    labels, missing, extra = match_classes(found, loaded.class_names)
    keep = np.flatnonzero(labels >= 0)
    target = pre.dataset(subset_source(found.source, keep), labels[keep], loaded.class_names, many_thr, few_thr,
                         name=info.dataset)
    dev = pick_device(device)
    passes = DataPasses(loaded.model.to(dev), dev, batch_size=batch_size,
                        num_workers=default_workers(dev) if num_workers is None else num_workers)
    views = recorded_eval_views(loaded.card, tta, target)
    out = passes.extract(target, None if views.name == "center" else views)
    report = lt_report(out.logits, out.targets, counts, many_thr, few_thr, loaded.class_names)
    metrics = report.metrics_dict()
    metrics["geometry"] = geometry_metrics(out.z, out.targets, loaded.model.num_classes)
    metrics["train_counts"] = None if counts is None else counts.tolist()
    metrics["eval_views"] = views.record()
    info = dataclasses.replace(info, images=len(keep), classes=report.groups["all"].scored_classes,
                               model_classes=loaded.model.num_classes, missing_classes=missing, extra_classes=extra)
    return EvalReport(loaded.label, info, report, metrics)


def evaluate_pretrained(repo_or_dir: str | os.PathLike, *, data_root: str | None = None,
                        data_kwargs: dict[str, Any] | None = None, split: str = "test", dataset: str | None = None,
                        revision: str | None = None, batch_size: int = 256, tta: str | None = None) -> dict[str, Any]:
    """The flat metrics of :func:`evaluate_model` (``metrics.json``'s keys)."""
    return evaluate_model(repo_or_dir, data_root=data_root, data_kwargs=data_kwargs, split=split, dataset=dataset,
                          revision=revision, batch_size=batch_size, tta=tta).metrics


class DataMismatchWarning(UserWarning):
    """The training set rebuilt for an evaluation is not the one the model was trained on."""


def _warn_other_data(loaded: LoadedModel, data: LTData, args: DataArgs) -> None:
    """Warn loudly when the rebuilt training set's identity differs from the one the model records (its
    counts set the many / medium / few split of the scores)."""
    import warnings

    ds = loaded.card.dataset
    if ds is None or not ds.identity:
        return
    now = data_identity(data.train)
    if now != ds.identity:
        warnings.warn(DataMismatchWarning(
            f"the training set rebuilt for {args.dataset}{' at ' + str(args.root) if args.root else ''} ({now}) is "
            f"not the one {loaded.label} was trained on ({ds.identity}): the test split scored below may hold images "
            f"the model trained on, or other images. Pass the --data-root / --data-arg of the training run"),
            stacklevel=3)


def recorded_data_args(card: Any) -> DataArgs | None:
    """The data set arguments a model records, type-checked; its recorded folder and builder arguments are
    dropped, from a Hub repo and a local folder alike (they are data, never paths to follow): pass
    ``--data-root`` / ``--data-arg``. A Hub data set id is kept, since it names no local path."""
    raw = card.dataset.builder_args if card.dataset is not None else {}
    if not raw:
        return None
    try:
        args = DataArgs(**raw)
        ok = (isinstance(args.dataset, str) and isinstance(args.seed, int) and isinstance(args.kwargs, dict)
              and (args.root is None or isinstance(args.root, str)) and (args.profile is None or isinstance(args.profile, str))
              and (args.imbalance is None or (isinstance(args.imbalance, (int, float)) and args.imbalance >= 1)))
    except TypeError:
        ok = False
    if not ok:
        raise CheckpointError(f"the recorded data set arguments of this model are malformed: {str(raw)[:200]}")
    keep_root = card.dataset.hub_id is not None and args.root == card.dataset.hub_id
    return dataclasses.replace(args, root=args.root if keep_root else None, kwargs={})


def _split(data: LTData, split: str, label: Any) -> LTDataset:
    if split == "test":
        return data.test
    if split in ("val", "validation"):
        if data.val is None:
            raise CheckpointError(f"the data set of {label} has no validation split; use --split test")
        return data.val
    raise CheckpointError(f"--split must be test or val, got {split!r}")


def lt_metrics(logits: Tensor, targets: Tensor, train_counts: Tensor, many_thr: int, few_thr: int) -> dict[str, Any]:
    """Top-1 and top-5 over the test set, per class, by many / medium / few (by training counts) and the ECE:
    the flat keys of ``metrics.json`` (:meth:`ltreg.reports.LTReport.metrics_dict`; None with a reason, never NaN)."""
    return lt_report(logits, targets, train_counts, many_thr, few_thr).metrics_dict()


def geometry_metrics(z: Tensor, targets: Tensor, num_classes: int) -> dict[str, Any]:
    """Intra alignment, variance, inter uniformity and improved inter uniformity (CoGloAT §4).

    Plain Euclidean distances (not squared); class centres are not re-normalised; the improved
    inter uniformity keeps the paper's factor 2 over ordered pairs.
    """
    z = z.double()
    counts = torch.bincount(targets, minlength=num_classes).double()
    present = counts > 0
    centres = torch.zeros(num_classes, z.shape[1], dtype=z.dtype).index_add_(0, targets, z)
    centres = centres / counts.clamp(min=1).unsqueeze(1)
    dist_to_centre = (z - centres[targets]).norm(dim=1)
    var = torch.zeros(num_classes, dtype=z.dtype).index_add_(0, targets, dist_to_centre) / counts.clamp(min=1)
    order = torch.argsort(targets, stable=True)
    zs = z[order]
    intra = torch.zeros(num_classes, dtype=z.dtype)
    start = 0
    for c, n in enumerate(counts.long().tolist()):  # evaluation only: one cdist per class
        if n:
            block = zs[start : start + n]
            intra[c] = torch.cdist(block, block).sum() / (n * n)
            start += n
    c_present = centres[present]
    k = c_present.shape[0]
    out = {"intra": intra[present].mean().item(), "variance": var[present].mean().item()}
    if k > 1:
        d = torch.cdist(c_present, c_present)
        off = ~torch.eye(k, dtype=torch.bool)
        out["inter"] = (d[off].sum() / (k * (k - 1))).item()
        v = var[present]
        ratio = d / (v.unsqueeze(0) + v.unsqueeze(1)).abs().clamp(min=1e-12)
        out["inter_improved"] = (2.0 * ratio[off].sum() / (k * (k - 1))).item()
    else:  # None, never NaN: metrics.json and config.json stay valid JSON
        out["inter"] = out["inter_improved"] = None
        out["inter_reason"] = f"needs test images of 2 or more classes, found {k}"
    return out


def format_table(metrics: dict[str, Any], title: str = "") -> str:
    """The All / Many / Medium / Few table (top-1 and top-5 %) printed at the end of a run."""
    return "\n".join(([title] if title else []) + format_groups(metrics))
