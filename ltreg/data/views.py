"""Named view pipelines and the multi-view dataset the trainer loads batches from.

A method names one pipeline per view (``("cls", "sim", "sim")`` for BCL / ECL). Pipelines adapt to
the data set (image size, channels, whether flips keep the label). Every sample's augmentation is
seeded by (seed, epoch, index, slot), so a run's batches do not depend on how many processes or
workers load them.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor
from torchvision.transforms import v2

from ltreg.data.lt import LTDataset
from ltreg.step import Batch, Extra

PIPELINES = ("none", "cls", "crop", "cropflip", "sim", "rand", "cifar", "randaugment", "trivialaugment", "autoaugment",
             "minimal")
MODIFIERS = ("erase", "jitter")  # +erase: random erasing; +jitter: colour jitter 0.4 (Kang et al.)
#: ``--augment`` presets (torchvision v2 policies, as timm's transform factory and torchvision's reference
#: scripts offer them) -> the pipeline that replaces a method's ``cls`` views. ``crop+flip`` always flips;
#: the policies flip only where the data set declares that a mirrored image keeps its label.
AUGMENT_PRESETS = {"none": "none", "crop": "crop", "crop+flip": "cropflip", "randaugment": "randaugment",
                   "trivialaugment": "trivialaugment", "autoaugment": "autoaugment"}
#: What each pipeline does, for the log and the model card.
DESCRIPTIONS = {
    "none": "resize and centre crop (no augmentation)",
    "cls": "random crop{flip}",
    "crop": "random crop, no flip",
    "cropflip": "random crop + horizontal flip",
    "sim": "SimAugment: random-resized crop{flip}, colour jitter{grey}{blur}",
    "rand": "random-resized crop{flip} + RandAugment (2 ops, magnitude 10)",
    "cifar": "random crop{flip} + AutoAugment (CIFAR-10 policy) + Cutout",
    "randaugment": "random crop{flip} + RandAugment (2 ops, magnitude 9)",
    "trivialaugment": "random crop{flip} + TrivialAugment (wide)",
    "autoaugment": "random crop{flip} + AutoAugment ({policy} policy)",
    "minimal": "LIFT+'s minimalist square resized crop (weaker over the run), no flip",
}


def check_augment(augment: str | None) -> None:
    """Raise ValueError naming the presets when ``augment`` is not one."""
    if augment is not None and augment not in AUGMENT_PRESETS:
        raise ValueError(f"unknown --augment {augment!r}; presets: {', '.join(AUGMENT_PRESETS)}")


def apply_augment(views: Sequence[str], augment: str | None) -> tuple[str, ...]:
    """The method's view pipelines with every ``cls`` view (modifiers kept) replaced by ``augment``'s pipeline."""
    check_augment(augment)
    if augment is None:
        return tuple(views)
    out = []
    for v in views:
        base, *mods = v.split("+")
        out.append("+".join([AUGMENT_PRESETS[augment], *mods]) if base == "cls" else v)
    return tuple(out)


def describe_views(views: Sequence[str], data: LTDataset) -> str:
    """One line per distinct pipeline of ``views``, and whether images are flipped (and why)."""
    flip = " + horizontal flip" if data.allow_flip else ""
    policy = "ImageNet" if data.image_size >= 96 else "CIFAR-10"
    parts = []
    for v in dict.fromkeys(views):
        base, *mods = v.split("+")
        text = DESCRIPTIONS.get(base, base).format(flip=flip, policy=policy, grey=", grey-scale" if data.channels == 3 else "",
                                         blur=", blur" if data.image_size >= 96 else "")
        parts.append(f"{v}: {text}{''.join(f' + {m}' for m in mods)}")
    why = ("mirrored images keep their labels" if data.allow_flip else
           "no flips: the data set does not declare that a mirrored image keeps its label")
    return f"{'; '.join(parts)} ({data.name}: {why})"


class Cutout(torch.nn.Module):
    """Cutout (DeVries & Taylor 2017): zero one ``size`` x ``size`` square centred anywhere in the image."""

    def __init__(self, size: int) -> None:
        super().__init__()
        self.size = size

    def forward(self, x: Tensor) -> Tensor:
        h, w = x.shape[-2:]
        cy, cx = int(torch.randint(h, ())), int(torch.randint(w, ()))
        y0, y1 = max(0, cy - self.size // 2), min(h, cy + self.size // 2)
        x0, x1 = max(0, cx - self.size // 2), min(w, cx + self.size // 2)
        x = x.clone()
        x[..., y0:y1, x0:x1] = 0
        return x


class SquareResizedCrop(torch.nn.Module):
    """A square crop covering a uniform share in ``[lo, hi]`` of the image area (capped by the largest square),
    resized to ``size`` (bicubic): LIFT+'s minimalist crop, no aspect-ratio jitter, no flip."""

    def __init__(self, size: int, lo: float, hi: float = 1.0) -> None:
        super().__init__()
        self.size, self.lo, self.hi = size, lo, hi

    def forward(self, img: Tensor) -> Tensor:
        h, w = img.shape[-2:]
        cap = min(h, w) ** 2 / (h * w)
        area = h * w * float(torch.empty(()).uniform_(min(self.lo, cap), min(self.hi, cap)))
        side = max(1, min(h, w, int(round(math.sqrt(area)))))
        top, left = int(torch.randint(h - side + 1, ())), int(torch.randint(w - side + 1, ()))
        return v2.functional.resized_crop(img, top, left, side, side, [self.size, self.size],
                                          interpolation=v2.InterpolationMode.BICUBIC, antialias=True)


class EpochPipeline:
    """A pipeline whose augmentation follows the run's progress ``t = epoch / (epochs - 1)`` in ``[0, 1]``;
    :class:`ViewDataset` asks it for the transform of each epoch (``at(t)``)."""

    def __init__(self, make: Callable[[float], Callable[[Tensor], Tensor]]) -> None:
        self.make = make
        self._last: tuple[float, Callable[[Tensor], Tensor]] | None = None

    def at(self, t: float) -> Callable[[Tensor], Tensor]:
        t = min(1.0, max(0.0, t))
        if self._last is None or self._last[0] != t:  # built once per epoch (per worker)
            self._last = (t, self.make(t))
        return self._last[1]


def minimal_min_scale(t: float, lo: float = 0.08) -> float:
    """LIFT+'s minimalist schedule of the crop's smallest area share: ``lo + (1 - lo) (1 - sqrt(1 - t^2))``
    (convex: strong crops early, whole images at the end) [C: LIFT-plus utils/transforms.py, mda_func=convex]."""
    return lo + (1.0 - lo) * (1.0 - math.sqrt(1.0 - t * t))


def build_pipeline(name: str, data: LTDataset) -> Callable[[Tensor], Tensor] | EpochPipeline:
    """The transform ``uint8 [C, H, W] -> float [C, S, S]`` of a pipeline name like ``"rand+erase"``
    (``minimal``: an :class:`EpochPipeline`, whose crops shrink in strength over the run)."""
    base, *mods = name.split("+")
    if base not in PIPELINES or any(m not in MODIFIERS for m in mods):
        raise ValueError(
            f"unknown view pipeline {name!r}; pipelines: {', '.join(PIPELINES)} "
            f"(optionally with +{'/+'.join(MODIFIERS)})"
        )
    if base == "minimal":
        return EpochPipeline(lambda t: build_pipeline_at(name, data, t))
    return build_pipeline_at(name, data, None)


def build_pipeline_at(name: str, data: LTDataset, t: float | None) -> Callable[[Tensor], Tensor]:
    """:func:`build_pipeline`'s transform; ``t``: the run's progress, for the ``minimal`` pipeline."""
    base, *mods = name.split("+")
    s, c = data.image_size, data.channels
    large = s >= 96
    flip = [v2.RandomHorizontalFlip()] if data.allow_flip else []
    if large:
        crop: list[Any] = [v2.RandomResizedCrop(s, antialias=True)]
    else:
        crop = [v2.RandomCrop(s, padding=max(1, s // 8))]
    ops: list[Any] = [v2.ToImage()]
    if not large and data.info.get("native_image_size", s) != s:  # --image-size on small images: resize first
        ops.append(v2.Resize(s, antialias=True))
    if base == "none":
        ops += [v2.Resize(int(s * 256 / 224), antialias=True), v2.CenterCrop(s)] if large else [v2.Resize(s, antialias=True), v2.CenterCrop(s)]
    elif base == "cls":
        ops += crop + flip
    elif base == "crop":
        ops += crop
    elif base == "cropflip":
        ops += crop + [v2.RandomHorizontalFlip()]
    elif base == "randaugment":
        ops += crop + flip + [v2.RandAugment(num_ops=2, magnitude=9)]
    elif base == "trivialaugment":
        ops += crop + flip + [v2.TrivialAugmentWide()]
    elif base == "autoaugment":
        policy = v2.AutoAugmentPolicy.IMAGENET if large else v2.AutoAugmentPolicy.CIFAR10
        ops += crop + flip + [v2.AutoAugment(policy)]
    elif base == "sim":
        jitter = v2.ColorJitter(0.4, 0.4, 0.4, 0.1) if c == 3 else v2.ColorJitter(0.4, 0.4)
        ops += [v2.RandomResizedCrop(s, scale=(0.2 if large else 0.5, 1.0), antialias=True), *flip,
                v2.RandomApply([jitter], p=0.8)]
        if c == 3:
            ops.append(v2.RandomGrayscale(p=0.2))
        if large:
            ops.append(v2.RandomApply([v2.GaussianBlur(23, sigma=(0.1, 2.0))], p=0.5))
    elif base == "rand":
        ops += [v2.RandomResizedCrop(s, scale=(0.08 if large else 0.5, 1.0), antialias=True), *flip,
                v2.RandAugment(num_ops=2, magnitude=10)]
    elif base == "cifar":
        ops += crop + flip + [v2.AutoAugment(v2.AutoAugmentPolicy.CIFAR10)]
    elif base == "minimal":
        ops.append(SquareResizedCrop(s, minimal_min_scale(t or 0.0)))
    if "jitter" in mods:  # on the uint8 image, before normalisation (brightness / contrast / saturation 0.4)
        ops.append(v2.ColorJitter(0.4, 0.4, 0.4 if c == 3 else 0.0, 0.0))
    ops += [v2.ToDtype(torch.float32, scale=True), v2.Normalize(list(data.mean) * (c // len(data.mean)),
                                                                  list(data.std) * (c // len(data.std)))]
    if base == "cifar":
        ops.append(Cutout(max(1, s // 2)))
    if "erase" in mods:
        ops.append(v2.RandomErasing(p=0.5))
    return v2.Compose(ops)


def _seed(*parts: int) -> int:
    h = 0x9E3779B1
    for p in parts:
        h = (h * 1_000_003 + int(p) + 0x7F4A7C15) % (2**62)
    return h


class ViewDataset(torch.utils.data.Dataset):
    """Loads sampler records into multi-view samples.

    A record is an index, ``(i, j)`` for a paired sampler (``role="pair"``: ``j``'s views go to
    ``extra["pair_images"]``) or ``(i, j_1..j_k)`` for k-global positives (``role="positives"``:
    ``extra["positives"]`` is ``[k, V', C, H, W]`` with ``positive_views`` pipelines).
    """

    def __init__(
        self,
        data: LTDataset,
        views: Sequence[str],
        role: str | None = None,
        positive_views: Sequence[str] = ("sim",),
        seed: int = 0,
        num_epochs: int = 1,
    ) -> None:
        self.data = data
        self.num_epochs = num_epochs  # epoch pipelines (``minimal``) follow epoch / (num_epochs - 1)
        self.pipelines = [build_pipeline(v, data) for v in views]
        self.random = any(v.split("+")[0] != "none" or "+" in v for v in (*views, *positive_views))
        self.positive_pipelines = [build_pipeline(v, data) for v in positive_views]
        self.role = role
        self.seed = seed
        self._epoch = torch.zeros((), dtype=torch.long).share_memory_()  # persistent workers read it too

    @property
    def epoch(self) -> int:
        return int(self._epoch)

    def set_epoch(self, epoch: int) -> None:
        """Seed augmentation for ``epoch``; workers see it at once (the value lives in shared memory)."""
        self._epoch.fill_(epoch)

    def __len__(self) -> int:
        return len(self.data)

    def _views(self, i: int, pipelines: Sequence[Any], slot: int) -> Tensor:
        img = self.data.source.load(i)
        if any(isinstance(p, EpochPipeline) for p in pipelines):
            t = self.epoch / max(1, self.num_epochs - 1)
            pipelines = [p.at(t) if isinstance(p, EpochPipeline) else p for p in pipelines]
        if not self.random:  # evaluation: nothing to seed
            return torch.stack([p(img) for p in pipelines])
        with torch.random.fork_rng(devices=[]):  # the CPU generator only: CUDA's is neither touched nor reseeded
            torch.default_generator.manual_seed(_seed(self.seed, self.epoch, i, slot))
            return torch.stack([p(img) for p in pipelines])

    def view(self, i: int, slot: int = 0) -> Tensor:
        """Image ``i`` under the first pipeline, augmentation seeded by (seed, epoch, i, ``slot``)."""
        return self._views(i, self.pipelines[:1], slot)[0]

    def __getitem__(self, record: int | Sequence[int]) -> dict[str, Any]:
        if isinstance(record, (tuple, list)):
            i, rest = int(record[0]), [int(r) for r in record[1:]]
        else:
            i, rest = int(record), []
        item: dict[str, Any] = {"images": self._views(i, self.pipelines, 0), "target": int(self.data.targets[i]), "index": i}
        if self.role == "pair":
            (j,) = rest
            item[Extra.PAIR_IMAGES] = self._views(j, self.pipelines, 1)
            item[Extra.TARGETS_B] = int(self.data.targets[j])
            item[Extra.PAIR_INDEX] = j
        elif self.role == "positives":
            item[Extra.POSITIVES] = torch.stack([self._views(j, self.positive_pipelines, 2 + n) for n, j in enumerate(rest)])
            item[Extra.POSITIVE_INDEX] = torch.tensor(rest)
        return item


def collate(items: list[dict[str, Any]]) -> Batch:
    """Stack samples into a :class:`Batch`; every key besides images/target/index goes to ``extra``."""
    extra = {}
    for key in items[0]:
        if key in ("images", "target", "index"):
            continue
        values = [it[key] for it in items]
        extra[key] = torch.stack(values) if isinstance(values[0], Tensor) else torch.tensor(values)
    return Batch(
        images=torch.stack([it["images"] for it in items]),
        targets=torch.tensor([it["target"] for it in items]),
        index=torch.tensor([it["index"] for it in items]),
        extra=extra,
    )
