"""Index samplers for long-tailed training: instance, class-aware (p(c) ∝ n_c^-gamma), Kang et al.'s
q-samplers and repeat-per-class sampler, CoGloAT's k-global positives and ICCL's paired streams.

Every sampler draws a whole epoch at once with tensor ops from a per-class index table built once at
construction (stable ``argsort`` of the labels plus per-class counts and offsets); nothing loops per sample or
per class while producing an epoch. The stream of an epoch is a deterministic function of ``(seed, epoch)``
only (a ``torch.Generator`` seeded with ``seed * 1_000_003 + epoch``, plus a fixed offset per sub-stream), so
every process of a distributed run computes the same *global* stream: the trainer shards *batches* of it across
processes with Accelerate's ``split_batches=True``; never wrap these samplers in a ``DistributedSampler``.

Call ``set_epoch(epoch)`` before each epoch. ``epoch_indices()`` returns the epoch as a tensor (``[L]`` for the
plain samplers, ``[L, 1 + k]`` / ``[L, 2]`` for the record samplers) and ``__iter__`` walks it: plain samplers
(``extra_role = None``) yield ints, record samplers yield tuples of ints and name the extra indices in
``extra_role`` (``"positives"``, ``"pair"``). ``len()`` is the number of samples (records) per epoch.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any, ClassVar

import torch
from torch import Tensor
from torch.utils.data import Sampler

from ltreg.errors import DataError

_STREAM = 0x9E3779B97F4A7C15  # seed offset between independent sub-streams of one sampler


def _as_targets(targets: Any, num_classes: int | None) -> tuple[Tensor, int]:
    """Validated long labels and the number of classes (max label + 1 when not given)."""
    t = torch.as_tensor(targets)
    if t.dim() != 1:
        raise DataError(f"targets must be a 1-D tensor of class ids, got shape {tuple(t.shape)}")
    if t.is_floating_point() or t.is_complex() or t.dtype == torch.bool:
        raise DataError(f"targets must be integer class ids, got dtype {t.dtype}")
    if t.numel() == 0:
        raise DataError("targets are empty: a sampler needs at least one training image")
    t = t.long()
    lo, hi = int(t.min()), int(t.max())
    c = hi + 1 if num_classes is None else int(num_classes)
    if lo < 0 or hi >= c:
        raise DataError(
            f"labels must lie in [0, {c - 1}], found {lo}..{hi}; fix the labels or pass num_classes={hi + 1}"
        )
    return t, c


def _classes(ids: list[int]) -> str:
    return ", ".join(map(str, ids[:10])) + (" ..." if len(ids) > 10 else "")


def class_probabilities(counts: Tensor, gamma: float) -> Tensor:
    """Class-draw probabilities p(c) ∝ n_c^(-gamma) in float64 (ICCL; Kang et al.'s q-sampling is q = -gamma).

    gamma = 0 class-balanced, 1 reverse (∝ n_max / n_c), -1/2 square-root, -1 instance-balanced. An empty class
    gets p = 0 when gamma < 0; for gamma >= 0 its probability would be non-zero or infinite, so it is an error.
    """
    n = torch.as_tensor(counts, dtype=torch.float64)
    if (n < 0).any():
        raise DataError("class counts must be >= 0")
    empty = (n == 0).nonzero().flatten().tolist()
    if gamma >= 0 and empty:
        raise DataError(
            f"class-aware sampling with gamma={gamma} needs every class to have images, but class(es) "
            f"{_classes(empty)} have none; drop them from num_classes or use gamma < 0 (instance-like)"
        )
    w = torch.where(n > 0, n.clamp_min(1) ** -gamma, 0.0)
    if w.sum() <= 0:
        raise DataError("no class has images")
    return w / w.sum()


def _draw_classes(p: Tensor, n: int, g: torch.Generator) -> Tensor:
    """n i.i.d. class ids from p by inversion: a power-of-two guide table answers most draws, searchsorted the rest."""
    cdf = torch.cumsum(p, 0)
    cdf = cdf / cdf[-1]
    b = 1 << max(3, (8 * len(p) - 1).bit_length())  # >= 8 buckets per class: <= 1/8 of draws need a search
    guide = torch.bincount(torch.ceil(cdf * b).long(), minlength=b + 1).cumsum(0, dtype=torch.int32)
    u = torch.rand(n, generator=g, dtype=torch.float64)
    k = (u * b).long()  # exact: b is a power of two; guide[k] = #{cdf <= k / b}
    out = guide[k]
    amb = (out != guide[k + 1]).nonzero().flatten()
    out[amb] = torch.searchsorted(cdf, u[amb], right=True, out_int32=True)
    return out


class LabelSampler(Sampler[Any]):
    """Base: the per-class index table, the (seed, epoch) generator and iteration over ``epoch_indices()``."""

    extra_role: ClassVar[str | None] = None

    def __init__(self, targets: Any, num_classes: int | None = None, seed: int = 0) -> None:
        self.targets, self.num_classes = _as_targets(targets, num_classes)
        self.seed, self.epoch, self._stream = int(seed), 0, 0
        self.counts = torch.bincount(self.targets, minlength=self.num_classes)
        self.order = torch.argsort(self.targets, stable=True)  # image indices grouped by class
        self.offsets = torch.cumsum(self.counts, 0) - self.counts  # start of class c in `order`
        self._table = torch.stack([self.offsets, self.counts], 1)  # one gather fetches both in _pick

    @classmethod
    def from_context(cls, ctx: Any, **kwargs: Any) -> LabelSampler:
        """Build from the trainer's context (``targets``, ``num_classes``, ``seed``)."""
        return cls(ctx.targets, num_classes=ctx.num_classes, seed=ctx.seed, **kwargs)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def _generator(self, stream: int = 0) -> torch.Generator:
        """The epoch's generator: a function of (seed, epoch, sub-stream) only, identical on every process."""
        key = self.seed * 1_000_003 + self.epoch + (self._stream + stream) * _STREAM
        return torch.Generator().manual_seed(key % 2**64)

    def _pick(self, cls: Tensor, g: torch.Generator) -> Tensor:
        """One image of each class in ``cls``, uniformly with replacement: floor(rand * n_c) + offset_c."""
        off, n = self._table[cls].unbind(-1)
        pos = torch.minimum((torch.rand(cls.shape, generator=g, dtype=torch.float64) * n).long(), n - 1)
        return self.order[off + pos]

    def epoch_indices(self) -> Tensor:
        """This epoch's stream as a tensor: ``[L]`` indices, or ``[L, 1 + extra]`` records."""
        raise NotImplementedError

    def __len__(self) -> int:
        """Samples (records) per epoch."""
        raise NotImplementedError

    def __iter__(self) -> Iterator[Any]:
        idx = self.epoch_indices()
        return iter(idx.tolist()) if idx.dim() == 1 else zip(*idx.T.tolist())  # zip builds the tuples fast


def _num_samples(value: int | None, default: int) -> int:
    if value is not None and int(value) < 0:
        raise DataError(f"num_samples must be >= 0, got {value}")
    return default if value is None else int(value)


class InstanceSampler(LabelSampler):
    """Instance-balanced: a random permutation of all indices each epoch."""

    def __len__(self) -> int:
        return self.targets.numel()

    def epoch_indices(self) -> Tensor:
        return torch.randperm(self.targets.numel(), generator=self._generator())


class ClassAwareSampler(LabelSampler):
    """ICCL's class-aware sampler: class c with p(c) ∝ n_c^(-gamma), then one of its images uniformly (with replacement)."""

    def __init__(
        self,
        targets: Any,
        num_classes: int | None = None,
        seed: int = 0,
        gamma: float = 0.5,
        num_samples: int | None = None,
    ) -> None:
        super().__init__(targets, num_classes, seed)
        self.gamma = float(gamma)
        self.num_samples = _num_samples(num_samples, self.targets.numel())
        self._p = class_probabilities(self.counts, self.gamma)

    def class_probs(self) -> Tensor:
        """This epoch's class-draw probabilities."""
        return self._p

    def __len__(self) -> int:
        return self.num_samples

    def epoch_indices(self) -> Tensor:
        g = self._generator()
        return self._pick(_draw_classes(self.class_probs(), self.num_samples, g), g)


class ClassBalancedSampler(ClassAwareSampler):
    """Class-balanced (Kang et al. q = 0): every class equally likely, images uniform within it."""

    def __init__(
        self, targets: Any, num_classes: int | None = None, seed: int = 0, num_samples: int | None = None
    ) -> None:
        super().__init__(targets, num_classes, seed, gamma=0.0, num_samples=num_samples)


class ReverseSampler(ClassAwareSampler):
    """BBN's reverse sampler: p(c) ∝ n_max / n_c (gamma = 1)."""

    def __init__(
        self, targets: Any, num_classes: int | None = None, seed: int = 0, num_samples: int | None = None
    ) -> None:
        super().__init__(targets, num_classes, seed, gamma=1.0, num_samples=num_samples)


class SquareRootSampler(ClassAwareSampler):
    """Kang et al.'s square-root sampler: p(c) ∝ n_c^(1/2) (q = 1/2, i.e. gamma = -1/2)."""

    def __init__(
        self, targets: Any, num_classes: int | None = None, seed: int = 0, num_samples: int | None = None
    ) -> None:
        super().__init__(targets, num_classes, seed, gamma=-0.5, num_samples=num_samples)


class ProgressiveSampler(ClassAwareSampler):
    """Kang et al.'s progressively-balanced sampler: p(t) = (1 - t/T) p^{q=1} + (t/T) p^{q=0}, t = epoch clipped to [0, T]."""

    def __init__(
        self,
        targets: Any,
        num_classes: int | None = None,
        seed: int = 0,
        *,
        total_epochs: int,
        num_samples: int | None = None,
    ) -> None:
        super().__init__(targets, num_classes, seed, gamma=-1.0, num_samples=num_samples)
        if int(total_epochs) < 1:
            raise DataError(f"total_epochs must be >= 1, got {total_epochs}")
        self.total_epochs = int(total_epochs)
        self._balanced = class_probabilities(self.counts, 0.0)

    def class_probs(self) -> Tensor:
        a = min(max(self.epoch, 0), self.total_epochs) / self.total_epochs
        return (1 - a) * self._p + a * self._balanced


class RepeatPerClassSampler(LabelSampler):
    """Kang et al.'s classifier-balancing ``ClassAwareSampler``: a reshuffled cycle over classes, ``num_samples_cls``
    consecutive images per drawn class, each read from the class's own reshuffled cycle over its images."""

    def __init__(
        self,
        targets: Any,
        num_classes: int | None = None,
        seed: int = 0,
        num_samples_cls: int = 4,
        num_samples: int | None = None,
    ) -> None:
        super().__init__(targets, num_classes, seed)
        class_probabilities(self.counts, 0.0)  # every class must have images
        if int(num_samples_cls) < 1:
            raise DataError(f"num_samples_cls must be >= 1, got {num_samples_cls}")
        self.num_samples_cls = int(num_samples_cls)
        self.num_samples = _num_samples(num_samples, self.num_classes * int(self.counts.max()))

    def __len__(self) -> int:
        return self.num_samples

    def epoch_indices(self) -> Tensor:
        g, c, m = self._generator(), self.num_classes, self.num_samples_cls
        groups = -(-self.num_samples // m)
        cls = torch.rand(-(-groups // c), c, generator=g).argsort(dim=1).flatten()[:groups]  # class cycles
        per_cls = torch.bincount(cls, minlength=c)
        by_cls = torch.argsort(cls, stable=True)
        rank = torch.empty_like(cls)  # how many earlier groups drew the same class
        rank[by_cls] = torch.arange(groups) - (torch.cumsum(per_cls, 0) - per_cls)[cls[by_cls]]
        passes = -(-(per_cls * m) // self.counts)  # reshuffled passes over each class's images
        block_cls = torch.repeat_interleave(torch.arange(c), passes)
        sizes = self.counts[block_cls]
        block = torch.repeat_interleave(torch.arange(block_cls.numel()), sizes)
        within = torch.arange(block.numel()) - (torch.cumsum(sizes, 0) - sizes)[block]
        items = self.order[self.offsets[block_cls][block] + within]
        key = block.double() + torch.rand(block.numel(), generator=g, dtype=torch.float64)
        items = items[torch.argsort(key)]  # shuffle inside every pass
        start = torch.cumsum(passes * self.counts, 0) - passes * self.counts
        pos = start[cls][:, None] + rank[:, None] * m + torch.arange(m)
        return items[pos].flatten()[: self.num_samples]


_PLAIN: dict[str, type[LabelSampler]] = {
    "instance": InstanceSampler,
    "class-aware": ClassAwareSampler,
    "class-balanced": ClassBalancedSampler,
    "reverse": ReverseSampler,
    "square-root": SquareRootSampler,
    "progressive": ProgressiveSampler,
    "repeat-per-class": RepeatPerClassSampler,
}


def _plain(name: str) -> type[LabelSampler]:
    """The plain (int-yielding) sampler class of this module called ``name``."""
    key = str(name).strip().lower().replace("_", "-")
    if key not in _PLAIN:
        raise DataError(f"unknown core sampler {name!r}; choose one of {', '.join(_PLAIN)}")
    return _PLAIN[key]


class KGlobalSampler(LabelSampler):
    """CoGloAT's k-global positives: records ``(i, j_1..j_k)``, each j uniform over the whole training set among the
    other images of class y_i (never i), distinct when the class has >= k other images, with replacement otherwise.

    A class with a single image has no positive: an error, unless ``allow_self=True``, where such a query is its
    own positive (j = i; only augmentation differs). ``base`` names the query sampler, built with ``base_kwargs``.
    """

    extra_role = "positives"

    def __init__(
        self,
        targets: Any,
        num_classes: int | None = None,
        seed: int = 0,
        k: int = 3,
        base: str = "instance",
        allow_self: bool = False,
        **base_kwargs: Any,
    ) -> None:
        super().__init__(targets, num_classes, seed)
        if int(k) < 1:
            raise DataError(f"k-global positives need k >= 1, got k={k}")
        self.k, self.allow_self = int(k), bool(allow_self)
        single = (self.counts == 1).nonzero().flatten().tolist()
        if single and not self.allow_self:
            raise DataError(
                f"k-global positives: class(es) {_classes(single)} have a single image, so no other image can be "
                f"its positive; add images, drop the class, or pass allow_self=True to use the query itself"
            )
        self.base = _plain(base)(self.targets, self.num_classes, self.seed, **base_kwargs)
        self.rank = torch.empty_like(self.order)  # position of every image inside its class block of `order`
        self.rank[self.order] = torch.arange(self.order.numel()) - self.offsets[self.targets[self.order]]

    def set_epoch(self, epoch: int) -> None:
        super().set_epoch(epoch)
        self.base.set_epoch(epoch)

    def __len__(self) -> int:
        return len(self.base)

    def epoch_indices(self) -> Tensor:
        q = self.base.epoch_indices()
        g, k, n = self._generator(1), self.k, q.numel()
        y, rank = self.targets[q], self.rank[q][:, None]
        others = self.counts[y] - 1
        u = torch.rand(n, k, generator=g, dtype=torch.float64)
        taken, cols = [rank], []  # excluded in-class positions, ascending: the query, then earlier picks
        for s in range(k):  # k is small: loops over positive slots, vectorised over records
            m = (others[:, None] - s).clamp_min(1)
            t = torch.minimum((u[:, s : s + 1] * m).long(), m - 1)
            for x in taken:  # the t-th position not taken yet: uniform without replacement, never the query
                t = t + (t >= x)
            cols.append(t)
            if s < k - 1:  # insert t keeping `taken` sorted
                carry, merged = t, []
                for x in taken:
                    merged.append(torch.minimum(x, carry))
                    carry = torch.maximum(x, carry)
                taken = [*merged, carry]
        pos = torch.cat(cols, 1)
        few = (others < k).nonzero().flatten()  # fewer than k others: i.i.d. draws, a singleton keeps itself
        if few.numel():
            o, r = others[few, None], rank[few]
            iid = torch.minimum((u[few] * o.clamp_min(1)).long(), (o - 1).clamp_min(0))
            pos[few] = iid + ((iid >= r) & (o > 0))
        return torch.cat([q[:, None], self.order[self.offsets[y][:, None] + pos]], 1)


class PairedSampler(LabelSampler):
    """ICCL's two streams of equal length: records ``(i_a, i_b)``, i_a from ``first`` (instance-balanced), i_b from
    ``second`` (class-aware with ``gamma``; other names get ``second_kwargs``), drawn independently."""

    extra_role = "pair"

    def __init__(
        self,
        targets: Any,
        num_classes: int | None = None,
        seed: int = 0,
        first: str = "instance",
        second: str = "class-aware",
        gamma: float = 0.5,
        **second_kwargs: Any,
    ) -> None:
        super().__init__(targets, num_classes, seed)
        self.first = _plain(first)(self.targets, self.num_classes, self.seed)
        cls2 = _plain(second)
        kw = {"gamma": gamma} if cls2 is ClassAwareSampler else {}
        if cls2 is not InstanceSampler:
            kw["num_samples"] = len(self.first)
        self.second = cls2(self.targets, self.num_classes, self.seed, **kw, **second_kwargs)
        self.second._stream = 1
        if len(self.second) != len(self.first):
            raise DataError(f"paired streams differ in length: {len(self.first)} vs {len(self.second)}")

    def set_epoch(self, epoch: int) -> None:
        super().set_epoch(epoch)
        self.first.set_epoch(epoch)
        self.second.set_epoch(epoch)

    def __len__(self) -> int:
        return len(self.first)

    def epoch_indices(self) -> Tensor:
        return torch.stack([self.first.epoch_indices(), self.second.epoch_indices()], 1)
