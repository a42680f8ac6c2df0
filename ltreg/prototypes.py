"""Prototype modules: EMA class centroids, coreset prototypes, learnable prototypes, classifier-derived ones.

Each is a :class:`~ltreg.step.Part` (and an ``nn.Module``: state lives in buffers so it lands in
checkpoints; learnable tensors are parameters so the trainer puts them in the optimizer). Losses
read them through ``state.prototypes``. Updates are tensor code over the whole (gathered) batch.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor, nn

from ltreg.distributed import all_reduce_sum
from ltreg.errors import PrototypeError
from ltreg.step import Batch, BuildContext, Outputs, Part, StepState


def _class_ranks(y: Tensor, counts: Tensor) -> Tensor:
    """Rank of each sample among the samples of its class, in batch order (stable sort)."""
    order = torch.sort(y, stable=True).indices
    starts = torch.cumsum(counts, 0) - counts
    rank = torch.empty_like(y)
    rank[order] = torch.arange(y.numel(), device=y.device) - starts[y[order]]
    return rank


# ------------------------------------------------------------------------------------------------
class EMACentroids(nn.Module, Part):
    """Per-class EMA centroids of projections (ICCL §4.5, TSC §3.3): no gradient, updated after each step.

    The update equals the per-sample sequential rule ``c_k <- m c_k + (1-m) z_i`` over the gathered
    batch in batch order, computed in closed form; a class seen for the first time is set to its batch
    mean. With ``normalize`` the centroids are re-normalised once per step (after the batch update).
    """

    def __init__(self, num_classes: int, dim: int, momentum: float = 0.99, view: int = 0, normalize: bool = True) -> None:
        super().__init__()
        if not 0.0 <= momentum < 1.0:
            raise PrototypeError(f"EMACentroids momentum must be in [0, 1), got {momentum}")
        self.num_classes, self.dim, self.momentum, self.view, self.normalize = num_classes, dim, momentum, view, normalize
        self.register_buffer("centers", torch.zeros(num_classes, dim))
        self.register_buffer("initialized", torch.zeros(num_classes, dtype=torch.bool))

    @classmethod
    def from_context(cls, ctx: BuildContext, **kwargs: Any) -> EMACentroids:
        """Sizes from the run: ``num_classes`` and the projection dimension."""
        kwargs.setdefault("num_classes", ctx.num_classes)
        kwargs.setdefault("dim", ctx.embed_dim)
        return cls(**kwargs)

    def centroids(self) -> Tensor:
        """The centroids ``[C, D]`` (no gradient; uninitialised classes are zero)."""
        return self.centers

    prototypes = centroids

    @torch.no_grad()
    def update(self, z: Tensor, y: Tensor) -> None:
        """Apply the sequential EMA of samples ``z [N, D]`` with labels ``y [N]`` (already gathered)."""
        if self.centers.device != z.device:
            self.to(z.device)
        z, y = z.detach().to(self.centers.dtype), y.long()
        m, c = self.momentum, self.num_classes
        counts = torch.bincount(y, minlength=c)
        rank = _class_ranks(y, counts)
        # sample j of class k with rank r_j contributes (1-m) m^(n_k-1-r_j) z_j; c_k is scaled by m^(n_k)
        w = (1.0 - m) * torch.pow(torch.full_like(z[:, 0], m), (counts[y] - 1 - rank).to(z.dtype))
        ema = torch.pow(torch.full((c,), m, dtype=z.dtype, device=z.device), counts.to(z.dtype))[:, None] * self.centers
        ema.index_add_(0, y, w[:, None] * z)
        mean = torch.zeros_like(self.centers).index_add_(0, y, z) / counts.clamp_min(1)[:, None].to(z.dtype)
        present = counts > 0
        new = torch.where((present & ~self.initialized)[:, None], mean, ema)
        if self.normalize:
            new = torch.where(present[:, None], F.normalize(new, dim=-1), new)
        self.centers.copy_(new)
        self.initialized |= present

    def on_step_end(self, outputs: Outputs, batch: Batch, state: StepState) -> None:
        """Gather the step's projections of ``view`` and labels over processes, then update."""
        z = state.gather_nograd(outputs.z[:, self.view].detach())
        y = state.gather_nograd(batch.targets)
        self.update(z, y)


# ------------------------------------------------------------------------------------------------
def coreset_budget(counts: Tensor, fraction: float, min_per_class: int) -> Tensor:
    """Coreset images per class: ``max(min(n_c, min_per_class), round(fraction * n_c))`` (at most n_c)."""
    frac = torch.round(counts.double() * fraction).long()
    return torch.maximum(counts.clamp(max=min_per_class), frac).clamp(max=counts)


@torch.no_grad()
def kcenter_select(emb: Tensor, y: Tensor, budget: Tensor) -> Tensor:
    """Class-stratified greedy k-center: ``budget[c]`` indices per class, all classes at once.

    Start at the sample closest to its class mean, then repeatedly add, in every class still short,
    the sample farthest from that class's selected set. Loops over selection steps only.
    """
    n, c = y.numel(), budget.numel()
    dev = emb.device
    counts = torch.bincount(y, minlength=c)
    mean = torch.zeros(c, emb.shape[1], device=dev, dtype=emb.dtype).index_add_(0, y, emb)
    mean = mean / counts.clamp_min(1)[:, None]
    score = -((emb - mean[y]) ** 2).sum(-1)  # step 0: closest to the class mean = highest score
    mind = torch.full((n,), math.inf, device=dev, dtype=emb.dtype)  # distance to the class's selected set
    arange = torch.arange(n, device=dev)
    chosen = torch.zeros(n, dtype=torch.bool, device=dev)
    for t in range(int(budget.max()) if c else 0):
        active = budget > t
        best = torch.full((c,), -math.inf, device=dev, dtype=emb.dtype).scatter_reduce(0, y, score, "amax")
        tie = (score == best[y]) & active[y] & ~chosen
        pick = torch.full((c,), n, device=dev, dtype=torch.long).scatter_reduce(0, y, torch.where(tie, arange, n), "amin")
        pick = pick[active]
        chosen[pick] = True
        center = torch.zeros(c, dtype=torch.long, device=dev)
        center[y[pick]] = pick
        d = ((emb - emb[center[y]]) ** 2).sum(-1)
        mind = torch.where(active[y], torch.minimum(mind, d), mind)
        score = mind.masked_fill(chosen, -math.inf)
    return arange[chosen]


def random_select(y: Tensor, budget: Tensor, generator: torch.Generator) -> Tensor:
    """Class-stratified uniform selection without replacement of ``budget[c]`` indices per class."""
    key = torch.rand(y.numel(), generator=generator, dtype=torch.float64).to(y.device)
    order = torch.argsort(y.double() * 2.0 + key)  # sort by class, random within class
    counts = torch.bincount(y, minlength=budget.numel())
    ys = y[order]
    rank = torch.arange(y.numel(), device=y.device) - (torch.cumsum(counts, 0) - counts)[ys]
    return torch.sort(order[rank < budget[ys]]).values


class CoresetPrototypes(nn.Module, Part):
    """CoGloAT's ProCo-coreset prototypes (§4.2): per-class means of a fixed coreset's embeddings.

    The coreset is chosen once at ``on_train_start`` (GLISTER is replaced by a class-stratified
    greedy k-center on the current embeddings of the deterministic ``select_view`` pipeline, or
    ``"random"``); at every ``on_epoch_start`` both view pipelines embed it (key encoder when
    ``use_key``) and the L2-normalised class means become prototype sets 0 and 1.
    """

    def __init__(
        self,
        targets: Tensor,
        num_classes: int,
        dim: int,
        embed: Callable[..., Tensor] | None = None,
        fraction: float = 0.1,
        min_per_class: int = 5,
        views: Sequence[str] = ("sim", "sim"),
        use_key: bool = True,
        selection: str = "kcenter",
        select_view: str = "none",
        seed: int = 0,
    ) -> None:
        super().__init__()
        if selection not in ("kcenter", "random"):
            raise PrototypeError(f"coreset selection must be 'kcenter' or 'random', got {selection!r}")
        if not 0.0 < fraction <= 1.0:
            raise PrototypeError(f"coreset fraction must be in (0, 1], got {fraction}")
        if len(views) != 2:
            raise PrototypeError(f"coreset prototypes need two view pipelines, got {tuple(views)}")
        self.embed, self.views, self.use_key, self.selection = embed, tuple(views), use_key, selection
        self.select_view, self.seed, self.num_classes = select_view, seed, num_classes
        self.targets = torch.as_tensor(targets).long().cpu()  # labels of the training set (not state)
        self.budget = coreset_budget(torch.bincount(targets, minlength=num_classes), fraction, min_per_class)
        self.register_buffer("indices", torch.full((int(self.budget.sum()),), -1, dtype=torch.long))
        self.register_buffer("protos", torch.zeros(2, num_classes, dim))

    @classmethod
    def from_context(cls, ctx: BuildContext, **kwargs: Any) -> CoresetPrototypes:
        """Take targets, sizes, seed and the no-grad ``embed`` function from the build context."""
        if ctx.embed is None:
            raise PrototypeError("coreset prototypes need BuildContext.embed (the trainer's no-grad embedder)")
        for key, value in (("targets", ctx.targets), ("num_classes", ctx.num_classes), ("dim", ctx.embed_dim),
                           ("embed", ctx.embed), ("seed", ctx.seed)):
            kwargs.setdefault(key, value)
        return cls(**kwargs)

    def _embed(self, idx: Tensor, pipeline: str, slot: int = 0) -> Tensor:
        if self.embed is None:
            raise PrototypeError("CoresetPrototypes has no embed function; build it with from_context")
        return self.embed(idx, pipeline, self.use_key, slot)

    @torch.no_grad()
    def select(self) -> Tensor:
        """Choose the coreset (once), store its indices and return them."""
        y = self.targets
        if self.selection == "random":
            gen = torch.Generator().manual_seed(int(self.seed))
            idx = random_select(y, self.budget, gen)
        else:
            emb = self._embed(torch.arange(y.numel()), self.select_view).float()
            idx = kcenter_select(emb, y.to(emb.device), self.budget.to(emb.device)).cpu()
        self.indices.copy_(idx.to(self.indices.device))
        return self.indices

    @torch.no_grad()
    def refresh(self) -> None:
        """Re-embed the coreset under both view pipelines and store normalised class means.

        Each set gets its own augmentation draw (``slot`` q): the paper's two prototype sets come from
        two augmented views of the coreset, so they differ even when both pipelines have one name.
        """
        idx = self.indices.cpu()
        y = self.targets[idx].to(self.protos.device)  # idx and targets both on CPU
        counts = torch.bincount(y, minlength=self.num_classes).clamp_min(1)[:, None].to(self.protos.dtype)
        for q, pipeline in enumerate(self.views):
            e = self._embed(idx, pipeline, slot=q).to(self.protos.device, self.protos.dtype)
            means = torch.zeros_like(self.protos[q]).index_add_(0, y, e) / counts
            self.protos[q] = F.normalize(means, dim=-1)

    def on_train_start(self, state: StepState) -> None:
        """Select the coreset unless a checkpoint already restored it."""
        if bool((self.indices < 0).any()):
            self.select()

    def on_epoch_start(self, state: StepState) -> None:
        self.refresh()

    def prototypes(self, q: int = 0) -> Tensor:
        """Prototype set ``q`` in {0, 1}: ``[C, D]``, L2-normalised, no gradient."""
        return self.protos[q]


# ------------------------------------------------------------------------------------------------
def _all_reduce_max(x: Tensor) -> Tensor:
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        x = x.clone()
        dist.all_reduce(x, op=dist.ReduceOp.MAX)
    return x


@torch.no_grad()
def sinkhorn(scores: Tensor, eps: float = 0.05, iters: int = 3,
             reduce_sum: Callable[[Tensor], Tensor] = all_reduce_sum) -> Tensor:
    """SwAV Sinkhorn-Knopp: soft assignments ``Q [B, K]`` of samples to prototypes, no gradient.

    Q = exp(scores / eps) is scaled alternately so that each prototype's total mass is 1/K and each
    sample's is 1/B_global (sums over samples are reduced over processes); finally each sample's row
    is rescaled to a probability vector. Computed in the scores' dtype, at least float32 (half-precision
    scores give float32 assignments; float64 scores give float64).
    """
    s = scores.detach().to(torch.promote_types(scores.dtype, torch.float32)) / eps
    q = torch.exp(s - _all_reduce_max(s.max()))  # a global constant shift leaves Q unchanged
    k = q.shape[1]
    b = reduce_sum(torch.tensor(float(q.shape[0]), device=q.device))
    q = q / reduce_sum(q.sum())
    for _ in range(iters):
        q = q / reduce_sum(q.sum(0, keepdim=True)) / k
        q = q / q.sum(1, keepdim=True) / b
    return q * b


class LearnablePrototypes(nn.Module, Part):
    """Reb-SupCon's K learnable prototypes ``weight [K, D]`` (§4.3), trained by SGD with the model.

    ``num_prototypes=None`` means 3 x C. After each optimizer step they are re-normalised
    (SwAV practice, makes the separation margin delta = 1 meaningful).
    """

    def __init__(self, dim: int, num_prototypes: int | None = None, num_classes: int | None = None,
                 sinkhorn_eps: float = 0.05, sinkhorn_iters: int = 3, normalize_after_step: bool = True) -> None:
        super().__init__()
        if num_prototypes is None:
            if num_classes is None:
                raise PrototypeError("LearnablePrototypes needs num_prototypes or num_classes (K = 3 x C)")
            num_prototypes = 3 * num_classes
        self.sinkhorn_eps, self.sinkhorn_iters, self.normalize_after_step = sinkhorn_eps, sinkhorn_iters, normalize_after_step
        self.weight = nn.Parameter(F.normalize(torch.randn(num_prototypes, dim), dim=-1))

    @classmethod
    def from_context(cls, ctx: BuildContext, **kwargs: Any) -> LearnablePrototypes:
        kwargs.setdefault("dim", ctx.embed_dim)
        kwargs.setdefault("num_classes", ctx.num_classes)
        return cls(**kwargs)

    def prototypes(self) -> Tensor:
        """The prototypes ``[K, D]`` (with gradient)."""
        return self.weight

    def forward(self, z: Tensor) -> Tensor:
        """Scores ``z @ C^T`` ``[B, K]`` (with gradient into z and the prototypes)."""
        return z @ self.weight.t()

    def assign(self, z: Tensor) -> Tensor:
        """Sinkhorn soft assignments ``[B, K]`` of projections ``z`` (no gradient)."""
        return sinkhorn(z.detach() @ self.weight.detach().t(), self.sinkhorn_eps, self.sinkhorn_iters)

    @torch.no_grad()
    def on_step_end(self, outputs: Outputs, batch: Batch, state: StepState) -> None:
        if self.normalize_after_step:
            self.weight.copy_(F.normalize(self.weight, dim=-1))


# ------------------------------------------------------------------------------------------------
class ClassifierPrototypes(nn.Module, Part):
    """BCL / ECL prototypes ``p_c = normalize(T(w_c))`` from the live classifier weights (§3.4, §4.4).

    T is a Linear (ECL ``kind="linear"``) or an MLP shaped like the projection head (BCL
    ``kind="mlp"``). The model is held in a tuple, not as a submodule, so state dicts hold it once.
    """

    def __init__(self, model: nn.Module, kind: str = "linear", dim: int | None = None,
                 hidden: int | None = None, bn: bool | None = None) -> None:
        super().__init__()
        if kind not in ("linear", "mlp"):
            raise PrototypeError(f"classifier prototypes kind must be 'linear' or 'mlp', got {kind!r}")
        model = getattr(model, "module", model)
        weight = getattr(getattr(model, "classifier", None), "weight", None)
        if weight is None:
            raise PrototypeError("classifier prototypes need a model whose .classifier has a .weight [C, F]")
        cfg = getattr(model, "config", None)
        in_dim = weight.shape[1]
        out_dim = dim or getattr(model, "embed_dim", in_dim)
        self._model = (model,)
        if kind == "linear":
            self.transform: nn.Module = nn.Linear(in_dim, out_dim)
        else:
            hidden = hidden or getattr(cfg, "proj_hidden", None) or in_dim
            bn = getattr(cfg, "proj_bn", False) if bn is None else bn
            layers: list[nn.Module] = [nn.Linear(in_dim, hidden)]
            if bn:
                layers.append(nn.BatchNorm1d(hidden))
            layers += [nn.ReLU(inplace=True), nn.Linear(hidden, out_dim)]
            self.transform = nn.Sequential(*layers)
        self.transform.to(weight.device)

    @classmethod
    def from_context(cls, ctx: BuildContext, **kwargs: Any) -> ClassifierPrototypes:
        return cls(ctx.model, **kwargs)

    @property
    def model(self) -> nn.Module:
        return self._model[0]

    def prototypes(self) -> Tensor:
        """``[C, D]`` L2-normalised prototypes, recomputed now (gradient flows into T and W)."""
        return F.normalize(self.transform(self.model.classifier.weight), dim=-1)

    def forward(self) -> Tensor:
        return self.prototypes()
