"""Every pass over data that is not training, and the metrics computed from it.

:class:`DataPasses` owns the no-grad passes a run makes (test evaluation, the features post-hoc
rebalancers read, the embeddings prototype modules ask for): always in eval mode, so what an image
gives never depends on which other images share its batch or in which order they come.
:func:`evaluate_pretrained` evaluates a saved model folder or Hub repo on the data it was trained on.
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
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader

from ltreg.data.build import DataArgs, build_data
from ltreg.data.lt import LTData, LTDataset, data_identity
from ltreg.data.views import ViewDataset, collate


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
    def extract(self, dataset: LTDataset) -> Extracted:
        """Logits, embeddings, features and targets of ``dataset`` under the deterministic ``none`` view."""
        model = self.model
        outs: list[tuple[Tensor, ...]] = []
        with eval_mode(model):
            for batch in self._loader(ViewDataset(dataset, ("none",))):
                images, targets = batch.images.to(self.device), batch.targets.to(self.device)
                ctx = self.accelerator.autocast() if self.accelerator is not None else _null()
                with ctx:
                    o = model(images)
                got = (o.logits[:, 0].float(), o.z[:, 0].float(), o.features[:, 0].float(), targets)
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


def evaluate(passes: DataPasses, test: LTDataset, train: LTDataset) -> dict[str, Any]:
    """Test metrics: top-1, balanced, many / medium / few (by training counts), per class, embedding geometry."""
    out = passes.extract(test)
    metrics = lt_metrics(out.logits, out.targets, train.class_counts, train.many_thr, train.few_thr)
    metrics["geometry"] = geometry_metrics(out.z, out.targets, train.num_classes)
    metrics["train_counts"] = train.class_counts.tolist()
    return metrics


def evaluate_pretrained(repo_or_dir: str | os.PathLike, *, data_root: str | None = None,
                        data_kwargs: dict[str, Any] | None = None, split: str = "test", dataset: str | None = None,
                        revision: str | None = None, batch_size: int = 256) -> dict[str, Any]:
    """Evaluate a model folder or Hub repo on the data it was trained on, rebuilt from its recorded arguments.

    ``data_root`` / ``data_kwargs`` / ``dataset`` point elsewhere; ``split`` is ``test`` or ``val``
    (the data set's validation split). Split thresholds come from the rebuilt training set.
    """
    from ltreg.errors import CheckpointError
    from ltreg.models.ltmodel import LTModel
    from ltreg.models.pretrained import load_pretrained

    model, card = load_pretrained(LTModel, repo_or_dir, revision)
    recorded = recorded_data_args(card)
    if dataset is None and recorded is None:
        raise CheckpointError(f"{repo_or_dir} does not record the data set it was trained on; pass --dataset")
    if recorded is None or (dataset is not None and dataset != recorded.dataset):
        args = DataArgs(dataset=str(dataset), root=data_root, kwargs=dict(data_kwargs or {}))
    else:
        args = dataclasses.replace(recorded, kwargs={**recorded.kwargs, **(data_kwargs or {})})
        if data_root is not None:
            args.root = data_root
    data = build_data(args)
    target = _split(data, split, repo_or_dir)
    if (target.num_classes, target.channels) != (model.num_classes, model.config.in_chans):
        raise CheckpointError(
            f"{repo_or_dir} has {model.num_classes} classes and {model.config.in_chans} input channels; the data set "
            f"{args.dataset} has {target.num_classes} and {target.channels}: evaluate it on a matching data set"
        )
    _warn_other_data(card, data, args, repo_or_dir)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    passes = DataPasses(model.to(device), device, batch_size=batch_size)
    return evaluate(passes, target, data.train)


class DataMismatchWarning(UserWarning):
    """The data an evaluation reads is not the data the model was trained on (class names or training set)."""


def _warn_other_data(card: Any, data: LTData, args: DataArgs, label: Any) -> None:
    """Warn loudly when the class names or the training set's identity differ from what the model records."""
    import warnings

    ds = card.dataset
    if ds is None:
        return
    mine = list(map(str, data.train.class_names))
    if ds.class_names and list(map(str, ds.class_names)) != mine:
        diff = [f"{i}: {a!r} -> {b!r}" for i, (a, b) in enumerate(zip(ds.class_names, mine)) if str(a) != b]
        warnings.warn(DataMismatchWarning(
            f"the class names of {args.dataset} differ from those {label} was trained with ({'; '.join(diff[:4])}"
            f"{' ...' if len(diff) > 4 else ''}): its predictions are scored against other labels, so the accuracy "
            f"below is meaningless unless the classes correspond. Evaluate on the data set it was trained on"),
            stacklevel=3)
    elif ds.identity and ds.identity != data_identity(data.train):
        warnings.warn(DataMismatchWarning(
            f"the training set rebuilt for {args.dataset} ({data_identity(data.train)}) is not the one {label} was "
            f"trained on ({ds.identity}): the many / medium / few split and the class counts below come from this "
            f"one. Pass the --data-root / --data-arg of the training run for the recorded split"), stacklevel=3)


def recorded_data_args(card: Any) -> DataArgs | None:
    """The data set arguments a model records, type-checked; its recorded folder and builder arguments are
    dropped, from a Hub repo and a local folder alike (they are data, never paths to follow): pass
    ``--data-root`` / ``--data-arg``. A Hub data set id is kept, since it names no local path."""
    from ltreg.errors import CheckpointError

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
    from ltreg.errors import CheckpointError

    if split == "test":
        return data.test
    if split in ("val", "validation"):
        if data.val is None:
            raise CheckpointError(f"the data set of {label} has no validation split; use --split test")
        return data.val
    raise CheckpointError(f"--split must be test or val, got {split!r}")


def lt_metrics(logits: Tensor, targets: Tensor, train_counts: Tensor, many_thr: int, few_thr: int) -> dict[str, Any]:
    """Top-1 over the test set, per class, and averaged over the many / medium / few class groups."""
    num_classes = train_counts.numel()
    correct = (logits.argmax(1) == targets).double()
    hits = torch.zeros(num_classes, dtype=torch.float64).index_add_(0, targets, correct)
    seen = torch.bincount(targets, minlength=num_classes).double()
    per_class = torch.where(seen > 0, hits / seen.clamp(min=1), torch.nan)
    present = seen > 0
    groups = {"many": train_counts > many_thr, "few": train_counts < few_thr}
    groups["medium"] = ~groups["many"] & ~groups["few"]
    out: dict[str, Any] = {
        "top1": 100.0 * correct.mean().item(),
        "balanced_acc": 100.0 * per_class[present].mean().item(),
    }
    for name, mask in groups.items():
        m = mask & present
        out[name] = 100.0 * per_class[m].mean().item() if m.any() else float("nan")
        out[f"num_{name}"] = int(mask.sum())
    out["per_class"] = [round(100.0 * v, 4) if v == v else None for v in per_class.tolist()]
    return out


def geometry_metrics(z: Tensor, targets: Tensor, num_classes: int) -> dict[str, float]:
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
    else:
        out["inter"] = out["inter_improved"] = float("nan")
    return out


def format_table(metrics: dict[str, Any], title: str = "") -> str:
    """The All / Many / Medium / Few table printed at the end of a run."""
    head = f"| {'split':<8} | {'classes':>7} | {'top-1 %':>8} |"
    rule = "|" + "-" * 10 + "|" + "-" * 9 + "|" + "-" * 10 + "|"
    n = sum(metrics[f"num_{g}"] for g in ("many", "medium", "few"))
    rows = [f"| {'All':<8} | {n:>7} | {metrics['top1']:>8.2f} |"]
    for g in ("many", "medium", "few"):
        rows.append(f"| {g.capitalize():<8} | {metrics[f'num_{g}']:>7} | {metrics[g]:>8.2f} |")
    lines = ([title] if title else []) + [head, rule, *rows]
    lines.append(f"balanced accuracy {metrics['balanced_acc']:.2f} %")
    return "\n".join(lines)
