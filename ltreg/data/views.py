"""View kinds, named view pipelines and the multi-view dataset the trainer loads batches from.

A method names one pipeline per view (``("cls", "sim", "sim")`` for BCL / ECL); a pipeline is a base
view kind plus optional ``+modifiers`` (``"rand+erase"``), each a :class:`ViewKind` found in the ``views``
registry. Pipelines adapt to the data set (image size, channels, whether flips keep the label). Every sample's augmentation is
seeded by (seed, epoch, index, slot), so a run's batches do not depend on how many processes or
workers load them.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor
from torchvision.transforms import v2

from ltreg.data.lt import LTDataset
from ltreg.errors import ConfigError
from ltreg.registry import registry
from ltreg.step import Batch, Extra


def _no_ops(data: LTDataset) -> list[Any]:
    return []


@dataclass(frozen=True)
class ViewKind:
    """A view kind, as data: a base pipeline (``"sim"``) or a modifier (``"erase"`` in ``"rand+erase"``).

    ``before(data)`` gives the ops on the uint8 image, ``after(data)`` those on the normalised float image,
    each adapted to the data set (image size, channels, whether flips keep the label). A pipeline
    ``base+m1+m2`` is ``ToImage``, base.before, m1.before, m2.before, ``ToDtype`` + ``Normalize``,
    base.after, m1.after, m2.after. ``schedule(data, t)``, when set, replaces ``before`` by ops that follow the
    run's progress ``t = epoch / (epochs - 1)`` (``minimal``: crops weaken over the run); the pipeline is then an
    :class:`EpochPipeline`. ``random=False`` marks a deterministic kind (``none``: evaluation), whose images
    need no seeding. Kinds are found by name in the ``views`` registry (entry points
    ``ltreg.views``, or :func:`ltreg.register_view` in-process), so a plugin adds one without editing the core.
    """

    before: Callable[[LTDataset], list[Any]]
    after: Callable[[LTDataset], list[Any]] = _no_ops
    modifier: bool = False
    random: bool = True
    help: str = ""
    schedule: Callable[[LTDataset, float], list[Any]] | None = None


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


def _large(data: LTDataset) -> bool:
    return data.image_size >= 96


def _flip(data: LTDataset) -> list[Any]:
    return [v2.RandomHorizontalFlip()] if data.allow_flip else []


def _crop_flip(data: LTDataset) -> list[Any]:
    s = data.image_size
    crop = v2.RandomResizedCrop(s, antialias=True) if _large(data) else v2.RandomCrop(s, padding=max(1, s // 8))
    return [crop, *_flip(data)]


def _none(data: LTDataset) -> list[Any]:
    s = data.image_size
    if _large(data):
        return [v2.Resize(int(s * 256 / 224), antialias=True), v2.CenterCrop(s)]
    return [v2.Resize(s, antialias=True), v2.CenterCrop(s)]


def _sim(data: LTDataset) -> list[Any]:
    s, c, large = data.image_size, data.channels, _large(data)
    jitter = v2.ColorJitter(0.4, 0.4, 0.4, 0.1) if c == 3 else v2.ColorJitter(0.4, 0.4)
    ops: list[Any] = [v2.RandomResizedCrop(s, scale=(0.2 if large else 0.5, 1.0), antialias=True), *_flip(data),
                      v2.RandomApply([jitter], p=0.8)]
    if c == 3:
        ops.append(v2.RandomGrayscale(p=0.2))
    if large:
        ops.append(v2.RandomApply([v2.GaussianBlur(23, sigma=(0.1, 2.0))], p=0.5))
    return ops


def _rand(data: LTDataset) -> list[Any]:
    return [v2.RandomResizedCrop(data.image_size, scale=(0.08 if _large(data) else 0.5, 1.0), antialias=True),
            *_flip(data), v2.RandAugment(num_ops=2, magnitude=10)]


def _cifar(data: LTDataset) -> list[Any]:
    return [*_crop_flip(data), v2.AutoAugment(v2.AutoAugmentPolicy.CIFAR10)]


def _crop(data: LTDataset) -> list[Any]:
    return _crop_flip(data)[:1]


def _policy(name: str) -> Callable[[LTDataset], list[Any]]:
    """Random crop (+ flip where the data set allows it) + one of torchvision v2's augmentation policies."""

    def ops(data: LTDataset) -> list[Any]:
        if name == "randaugment":
            policy: Any = v2.RandAugment(num_ops=2, magnitude=9)  # timm's rand-m9
        elif name == "trivialaugment":
            policy = v2.TrivialAugmentWide()
        else:
            policy = v2.AutoAugment(v2.AutoAugmentPolicy.IMAGENET if _large(data) else v2.AutoAugmentPolicy.CIFAR10)
        return [*_crop_flip(data), policy]

    return ops


def _jitter(data: LTDataset) -> list[Any]:
    return [v2.ColorJitter(0.4, 0.4, 0.4 if data.channels == 3 else 0.0, 0.0)]


# The core's view kinds, registered by the ``ltreg.views`` entry points of its pyproject.toml.
NONE = ViewKind(_none, random=False, help="resize + centre crop (evaluation)")
CLS = ViewKind(_crop_flip, help="random crop (padded; resized crop at >= 96 px) + flip where the data set allows it")
CROP = ViewKind(_crop_flip, help="the same as cls")
SIM = ViewKind(_sim, help="SimAugment: resized crop, flip, colour jitter, grayscale, blur at >= 96 px")
RAND = ViewKind(_rand, help="resized crop, flip, RandAugment(2, 10)")
CIFAR = ViewKind(_cifar, lambda data: [Cutout(max(1, data.image_size // 2))],
                 help="crop + flip + AutoAugment(CIFAR10) + Cutout (GPaCo's CIFAR view)")
ERASE = ViewKind(_no_ops, lambda data: [v2.RandomErasing(p=0.5)], modifier=True, help="+erase: random erasing")
JITTER = ViewKind(_jitter, modifier=True, help="+jitter: colour jitter 0.4 (Kang et al.)")
MINIMAL = ViewKind(_no_ops, schedule=lambda data, t: [SquareResizedCrop(data.image_size, minimal_min_scale(t))],
                   help="LIFT+'s square crops, weakening over the run (no flip)")


# The ``--augment`` presets' kinds: they replace a method's ``cls`` views (apply_augment).
CROP_NO_FLIP = ViewKind(_crop, help="random crop (padded; resized crop at >= 96 px), never flipped")
CROP_FLIP = ViewKind(lambda data: [*_crop(data), v2.RandomHorizontalFlip()],
                     help="random crop + horizontal flip, whatever the data set declares")
RANDAUGMENT = ViewKind(_policy("randaugment"), help="random crop (+ flip where allowed) + RandAugment(2, 9)")
TRIVIALAUGMENT = ViewKind(_policy("trivialaugment"), help="random crop (+ flip where allowed) + TrivialAugment (wide)")
AUTOAUGMENT = ViewKind(_policy("autoaugment"), help="random crop (+ flip where allowed) + AutoAugment (ImageNet "
                                                    "policy; CIFAR-10 policy below 96 px)")
#: ``--augment`` presets (torchvision v2 policies, as timm's transform factory and torchvision's reference
#: scripts offer them) -> the view kind that replaces a method's ``cls`` views. ``crop+flip`` always flips;
#: the policies flip only where the data set declares that a mirrored image keeps its label.
AUGMENT_PRESETS = {"none": "none", "crop": "cropnoflip", "crop+flip": "cropflip", "randaugment": "randaugment",
                   "trivialaugment": "trivialaugment", "autoaugment": "autoaugment"}


def check_augment(augment: str | None) -> None:
    """Raise ValueError naming the presets when ``augment`` is not one."""
    if augment is not None and augment not in AUGMENT_PRESETS:
        raise ValueError(f"unknown --augment {augment!r}; presets: {', '.join(AUGMENT_PRESETS)}")


def apply_augment(views: Sequence[str], augment: str | None) -> tuple[str, ...]:
    """The method's view pipelines with every ``cls`` view (modifiers kept) replaced by ``augment``'s kind."""
    check_augment(augment)
    if augment is None:
        return tuple(views)
    out = []
    for v in views:
        base, *mods = v.split("+")
        out.append("+".join([AUGMENT_PRESETS[augment], *mods]) if base == "cls" else v)
    return tuple(out)


def describe_views(views: Sequence[str], data: LTDataset) -> str:
    """Each distinct pipeline of ``views`` with its kinds' help, and whether images are flipped (and why)."""
    parts = []
    for v in dict.fromkeys(views):
        parts.append(f"{v}: " + " + ".join(k.help or name for k, name in zip(pipeline_kinds(v), v.split("+"))))
    why = ("mirrored images keep their labels" if data.allow_flip else
           "no flips: the data set does not declare that a mirrored image keeps its label")
    return f"{'; '.join(parts)} ({data.name}: {why})"


def view_kind(name: str, modifier: bool) -> ViewKind:
    """The registered view kind ``name``; a base where a modifier belongs (or the reverse) is a named error."""
    kind = registry("views").get(name)
    if not isinstance(kind, ViewKind):
        raise ConfigError(f"view kind {name!r} is a {type(kind).__name__}, not a ViewKind; register a ViewKind")
    if kind.modifier != modifier:
        where = "after a '+'" if kind.modifier else "first, before any '+modifier'"
        raise ConfigError(f"view kind {name!r} is a {'modifier' if kind.modifier else 'base pipeline'}: it goes {where}")
    return kind


def pipeline_kinds(name: str) -> list[ViewKind]:
    """The kinds of a pipeline name like ``"rand+erase"``: the base first, then its modifiers."""
    base, *mods = name.split("+")
    return [view_kind(base, False), *(view_kind(m, True) for m in mods)]


def build_pipeline(name: str, data: LTDataset) -> Callable[[Tensor], Tensor] | EpochPipeline:
    """The transform ``uint8 [C, H, W] -> float [C, S, S]`` of a pipeline name like ``"rand+erase"``
    (an :class:`EpochPipeline` when a kind follows the run's progress, e.g. ``minimal``)."""
    kinds = pipeline_kinds(name)
    if any(k.schedule is not None for k in kinds):
        return EpochPipeline(lambda t: build_pipeline_at(kinds, data, t))
    return build_pipeline_at(kinds, data, None)


def build_pipeline_at(kinds: Sequence[ViewKind], data: LTDataset, t: float | None) -> Callable[[Tensor], Tensor]:
    """The transform of a pipeline's ``kinds``; ``t``: the run's progress, for kinds with a ``schedule``."""
    s, c = data.image_size, data.channels
    ops: list[Any] = [v2.ToImage()]
    if s < 96 and data.info.get("native_image_size", s) != s:  # --image-size on small images: resize first
        ops.append(v2.Resize(s, antialias=True))
    for kind in kinds:
        ops += kind.schedule(data, t or 0.0) if kind.schedule is not None else kind.before(data)
    ops += [v2.ToDtype(torch.float32, scale=True), v2.Normalize(list(data.mean) * (c // len(data.mean)),
                                                                  list(data.std) * (c // len(data.std)))]
    for kind in kinds:
        ops += kind.after(data)
    return v2.Compose(ops)


def _seed(*parts: int) -> int:
    h = 0x9E3779B1
    for p in parts:
        h = (h * 1_000_003 + int(p) + 0x7F4A7C15) % (2**62)
    return h


class ViewDataset(torch.utils.data.Dataset):
    """Loads sampler records into multi-view samples.

    A record is an index, or ``(i, j_1..j_k)`` from a record sampler whose ``extra_role`` names a sampler
    role: the role's loader (registry ``sampler_roles``) turns the extra indices into batch extras. The
    core's roles: ``pair`` (``(i, j)``: ``j``'s views go to ``extra["pair_images"]``) and ``positives``
    (``(i, j_1..j_k)``: ``extra["positives"]`` is ``[k, V', C, H, W]`` with the ``positive_views`` pipelines).
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
        self.random = any(k.random for v in (*views, *positive_views) for k in pipeline_kinds(v))
        self.positive_pipelines = [build_pipeline(v, data) for v in positive_views]
        self.role = role
        self._role: SamplerRole | None = registry("sampler_roles").get(role) if role is not None else None
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

    def load(self, i: int, pipelines: Sequence[Any], slot: int) -> Tensor:
        """Image ``i`` under each of ``pipelines`` (``[V, C, H, W]``), augmentation seeded by (seed, epoch, i, ``slot``).

        Sampler roles load their extra images with it, each in a slot of its own (the main views use 0).
        """
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
        return self.load(i, self.pipelines[:1], slot)[0]

    def __getitem__(self, record: int | Sequence[int]) -> dict[str, Any]:
        if isinstance(record, (tuple, list)):
            i, rest = int(record[0]), [int(r) for r in record[1:]]
        else:
            i, rest = int(record), []
        item: dict[str, Any] = {"images": self.load(i, self.pipelines, 0), "target": int(self.data.targets[i]), "index": i}
        if self._role is not None:
            item.update(self._role(self, rest))
        return item


#: A sampler role: ``(view_dataset, extra_indices) -> batch extras`` (keys of ``Batch.extra``, one sample's values).
SamplerRole = Callable[[ViewDataset, Sequence[int]], dict[str, Any]]


def pair_role(views: ViewDataset, extra: Sequence[int]) -> dict[str, Any]:
    """``(i, j)`` records (ICCL's paired streams): j's views in slot 1, its label and index."""
    (j,) = extra
    return {Extra.PAIR_IMAGES: views.load(j, views.pipelines, 1), Extra.TARGETS_B: int(views.data.targets[j]),
            Extra.PAIR_INDEX: j}


def positives_role(views: ViewDataset, extra: Sequence[int]) -> dict[str, Any]:
    """``(i, j_1..j_k)`` records (CoGloAT's k-global positives): ``[k, V', C, H, W]`` under the positive pipelines."""
    return {Extra.POSITIVES: torch.stack([views.load(j, views.positive_pipelines, 2 + n) for n, j in enumerate(extra)]),
            Extra.POSITIVE_INDEX: torch.tensor(list(extra))}


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
