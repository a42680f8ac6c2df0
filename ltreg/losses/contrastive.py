"""Supervised-contrastive losses: SupCon, KCL, BCL and PaCo / GPaCo, each a configuration of the one core.

Each loss has a functional form on raw tensors (``supcon``, ``kcl``, ``bcl``, ``paco``) and a module with
the step signature ``forward(outputs, batch, state) -> LossOutput``. Anchors are the local views
``outputs.z[:, views]`` (``[B, V, D]``, L2-normalised by the model, flattened sample-major to ``N = B * V``);
the columns are the global set built by :func:`contrast_set`: the gathered views (each anchor's own column
at ``(rank * B + b) * V + v``), the gathered key projections ``outputs.extra["key_z"]`` of a momentum
memory, then its queue (``state.memory.queue_z`` / ``queue_labels``, -1 = empty slot, ignored).

The preamble every contrastive loss shares (here and in the plugins) is written once:
:func:`state_contrast` gathers the step's columns across processes, :func:`anchors_and_columns` flattens
the anchors and picks the columns, :meth:`ContrastSet.loss` calls the core with each anchor's own column
excluded, and :func:`global_mean` averages over the global batch's anchors that have a positive. The
positive masks and denominators are built inside the core (:func:`~ltreg.losses.core.contrastive_loss`).

Notation: ``s_ij = z_i . z_j``, temperature ``tau``, ``A(i)`` every column but the anchor's own,
``P(i)`` the columns of ``A(i)`` with the anchor's label.
"""

from __future__ import annotations

from typing import Any, Literal, NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ltreg.losses.classification import logit_adjusted_ce
from ltreg.losses.core import ContrastiveResult, contrastive_loss
from ltreg.step import Batch, Extra, LossOutput, Outputs, StepState, flatten_views

Reduction = Literal["mean", "none"]


class ContrastSet(NamedTuple):
    """Columns the anchors are contrasted with, and where each anchor's own image sits among them."""

    z: Tensor
    labels: Tensor
    self_index: Tensor | None
    own_index: Tensor

    def append(self, z: Tensor, labels: Tensor) -> ContrastSet:
        """Add columns at the end (e.g. prototypes); anchor positions are unchanged."""
        return self._replace(z=torch.cat([self.z, z]), labels=torch.cat([self.labels, labels]))

    def loss(self, anchors: Tensor, anchor_labels: Tensor, **kwargs: Any) -> ContrastiveResult:
        """:func:`~ltreg.losses.core.contrastive_loss` of ``anchors`` ``[N, D]`` against these columns, each
        anchor's own column excluded; ``kwargs`` are the core's (temperature, positives, weights, ...)."""
        return contrastive_loss(anchors, self.z, anchor_labels, self.labels, self_index=self.self_index, **kwargs)


def contrast_set(
    z: Tensor,
    labels: Tensor,
    *,
    global_z: Tensor | None = None,
    global_labels: Tensor | None = None,
    offset: int = 0,
    keys: Tensor | None = None,
    queue: Tensor | None = None,
    queue_labels: Tensor | None = None,
    include_views: bool = True,
) -> ContrastSet:
    """Columns ``[views of global_z][keys][queue]`` for the anchors ``z`` ``[B, V, D]`` found at ``offset``.

    ``global_z`` ``[B', V, D]`` / ``global_labels`` ``[B']`` default to the local ones (one process);
    ``keys`` ``[B', D]`` are the global key projections (labels ``global_labels``). ``own_index`` lists,
    per anchor, its other views and its own key: the same-image positives of every method.
    """
    b, v, _ = z.shape
    gz = z if global_z is None else global_z
    gl = labels if global_labels is None else global_labels
    sample = torch.arange(b, device=z.device) + offset
    cols, labs, own = [], [], []
    self_index, start = None, 0
    if include_views:
        cols.append(gz.reshape(-1, gz.shape[-1]))
        labs.append(gl.repeat_interleave(v))
        view = torch.arange(v, device=z.device)
        self_index = (sample.unsqueeze(1) * v + view).reshape(-1)
        others = (view.unsqueeze(1) + torch.arange(1, v, device=z.device)) % v  # [V, V-1]
        own.append((sample.view(b, 1, 1) * v + others).reshape(b * v, v - 1))
        start = gz.shape[0] * v
    if keys is not None:
        cols.append(keys)
        labs.append(gl)
        own.append((start + sample).repeat_interleave(v).unsqueeze(1))
    if queue is not None:
        if queue_labels is None:
            raise ValueError("queue needs queue_labels (use -1 for empty slots)")
        cols.append(queue)
        labs.append(queue_labels)
    if not cols:
        raise ValueError("the contrast set is empty: include the views or give keys / a queue")
    own_index = torch.cat(own, 1) if own else torch.empty(b * v, 0, dtype=torch.long, device=z.device)
    columns = cols[0] if len(cols) == 1 else torch.cat(cols)  # no copy of the common single-part set
    return ContrastSet(columns, torch.cat(labs), self_index, own_index)


def anchors_and_columns(
    z: Tensor, labels: Tensor, contrast: ContrastSet | None = None
) -> tuple[Tensor, Tensor, ContrastSet]:
    """The preamble of every contrastive loss: the anchors ``z`` ``[B, V, D]`` flattened sample-major to
    ``[N, D]``, their labels ``[N]``, and the columns: ``contrast`` (the step's global set, built by
    :func:`state_contrast`) or, on raw tensors, the local views (:func:`contrast_set`)."""
    cs = contrast if contrast is not None else contrast_set(z, labels)
    return (*flatten_views(z, labels), cs)


def sample_positives(
    anchor_labels: Tensor,
    contrast_labels: Tensor,
    k: int,
    exclude: Tensor,
    generator: torch.Generator | None = None,
) -> Tensor:
    """``[N, k]`` columns drawn uniformly without replacement among same-label columns not in ``exclude``.

    ``exclude`` is ``[N, E]`` (-1 pads). Fewer than ``k`` available gives all of them, padded with -1.
    Vectorised over anchors (Floyd's algorithm, ``k`` rounds) inside each label's block of the sorted
    labels: no ``[N, M]`` tensor, no host sync.
    """
    n, m = anchor_labels.shape[0], contrast_labels.shape[0]
    dev = anchor_labels.device
    sorted_y, order = contrast_labels.sort()
    start = torch.searchsorted(sorted_y, anchor_labels)
    size = (torch.searchsorted(sorted_y, anchor_labels, right=True) - start) * (anchor_labels >= 0)
    rank = torch.empty_like(order).scatter_(0, order, torch.arange(m, device=dev))
    ex = exclude.clamp_min(0)
    in_block = (exclude >= 0) & (contrast_labels[ex] == anchor_labels.unsqueeze(1))
    ex_pos = torch.where(in_block, rank[ex] - start.unsqueeze(1), m).sort(1).values
    dup = torch.zeros_like(in_block)
    dup[:, 1:] = ex_pos[:, 1:] == ex_pos[:, :-1]
    ex_pos = ex_pos.masked_fill(dup, m).sort(1).values
    avail = size - (ex_pos < m).sum(1)
    kk = avail.clamp(0, k)
    chosen = torch.full((n, k), -1, dtype=torch.long, device=dev)
    for step in range(k):  # Floyd: the step-th pick is uniform in [0, j], or j itself if already taken
        j = avail - kk + step
        t = (torch.rand(n, generator=generator, device=dev) * (j + 1)).long().minimum(j)
        pick = torch.where((chosen == t.unsqueeze(1)).any(1), j, t)
        chosen[:, step] = torch.where(step < kk, pick, -1)
    for e in ex_pos.unbind(1):  # rank among the allowed -> position in the block, skipping excluded ones
        chosen = chosen + ((chosen >= e.unsqueeze(1)) & (chosen >= 0))
    cols = order[(start.unsqueeze(1) + chosen.clamp_min(0)).clamp_max(m - 1)]
    return torch.where(chosen >= 0, cols, -1)


def centre_columns(logits: Tensor, log_prior: Tensor, anchor_labels: Tensor, beta: float) -> tuple[Tensor, Tensor]:
    """PaCo's extra columns: centre logits ``u + log pi`` ``[N, C]`` and the positive weight ``beta`` on the own class."""
    centres = logits.reshape(anchor_labels.shape[0], -1) + log_prior
    return centres, beta * F.one_hot(anchor_labels, centres.shape[1]).to(centres.dtype)


def supcon(
    z: Tensor,
    labels: Tensor,
    temperature: float = 0.1,
    *,
    contrast: ContrastSet | None = None,
    reduction: Reduction = "mean",
) -> ContrastiveResult:
    """SupCon ``L_i = -1/|P(i)| sum_{p in P(i)} log[ exp(s_ip/tau) / sum_{a in A(i)} exp(s_ia/tau) ]``, mean
    over the anchors with a positive.

    Khosla et al., "Supervised Contrastive Learning" (NeurIPS 2020, arXiv 2004.11362), ``L^sup_out``, Eq. 2
    [P], "all" mode: every view is an anchor. ``tau = 0.1`` [P: the paper's setting].
    """
    a, ya, cs = anchors_and_columns(z, labels, contrast)
    return cs.loss(a, ya, temperature=temperature, reduction=reduction)


def kcl(
    z: Tensor,
    labels: Tensor,
    *,
    k: int = 6,
    temperature: float = 0.07,
    generator: torch.Generator | None = None,
    contrast: ContrastSet | None = None,
    reduction: Reduction = "mean",
) -> ContrastiveResult:
    """KCL ``L_i = -1/(k+1) sum_{p in {i+} U P_k(i)} log[ exp(s_ip/tau) / sum_{a in A(i)} exp(s_ia/tau) ]``.

    Kang, Li, Xie, Yan, Feng, "Exploring Balanced Feature Spaces for Representation Learning" (ICLR 2021;
    no arXiv version), the k-positive contrastive loss [P] (equation number not checked here). Positives:
    the anchor's own image ``i+`` (other views / own key) plus ``k`` same-label columns drawn uniformly
    without replacement (fewer if not available); the denominator is every column. ``k = 6``,
    ``tau = 0.07`` [P].
    """
    a, ya, cs = anchors_and_columns(z, labels, contrast)
    exclude = (
        cs.own_index if cs.self_index is None else torch.cat([cs.self_index.unsqueeze(1), cs.own_index], 1)
    )
    pos = torch.cat([cs.own_index, sample_positives(ya, cs.labels, k, exclude, generator)], 1)
    return cs.loss(a, ya, temperature=temperature, pos_index=pos, reduction=reduction)


def bcl(
    z: Tensor,
    labels: Tensor,
    prototypes: Tensor,
    *,
    temperature: float = 0.07,
    contrast: ContrastSet | None = None,
    reduction: Reduction = "mean",
) -> ContrastiveResult:
    """BCL ``L_i = -1/|P(i)| sum_{p in P(i)} log[ exp(s_ip/tau) / sum_c 1/|B_c(i)| sum_{j in B_c(i)} exp(s_ij/tau) ]``.

    Zhu, Wang, Chen, Chen, Jiang, "Balanced Contrastive Learning for Long-Tailed Visual Recognition"
    (CVPR 2022, arXiv 2207.09052), class-averaging + class-complement [P] (equation number not checked
    here): the columns are the views plus the ``[C, D]`` class prototypes (labels ``0..C-1``), ``B_c(i)``
    the columns of class ``c`` other than the anchor, ``P(i) = B_y(i)``.
    """
    a, ya, cs = anchors_and_columns(z, labels, contrast)
    cs = cs.append(prototypes, torch.arange(prototypes.shape[0], device=labels.device))
    return cs.loss(a, ya, temperature=temperature, class_average=True, reduction=reduction)


def paco(
    z: Tensor,
    labels: Tensor,
    logits: Tensor,
    log_prior: Tensor,
    *,
    alpha: float = 0.05,
    beta: float = 1.0,
    gamma: float = 1.0,
    temperature: float = 0.2,
    contrast: ContrastSet | None = None,
    reduction: Reduction = "mean",
) -> ContrastiveResult:
    """PaCo / GPaCo ``L_i = -[ beta LP_i(x_iy) + alpha sum_{p in P(i)} LP_i(s_ip/tau) ] / (beta + alpha |P(i)|)``
    with ``LP_i(t) = t - log( sum_c exp(x_ic) + gamma sum_{a in A(i)} exp(s_ia/tau) )`` and centre logits
    ``x_ic = u_ic + log pi_c`` (``logits`` ``[B, V, C]``).

    Cui, Zhong, Liu, Yu, Jia, "Parametric Contrastive Learning" (ICCV 2021, arXiv 2107.12028) and
    "Generalized Parametric Contrastive Learning" (TPAMI 2023, arXiv 2209.12400), as their official code
    writes it [C] (equation numbers not checked here); ``alpha = 0.05``, ``beta = gamma = 1``, ``tau = 0.2``
    the ImageNet-LT settings [C].
    """
    a, ya, cs = anchors_and_columns(z, labels, contrast)
    centres, centre_pos = centre_columns(logits, log_prior, ya, beta)
    return cs.loss(
        a,
        ya,
        temperature=temperature,
        pos_weight=alpha,
        col_weight=None if gamma == 1.0 else gamma,
        extra_logits=centres,
        extra_pos=centre_pos,
        reduction=reduction,
    )


def _select(x: Tensor, views: tuple[int, ...] | None) -> Tensor:
    """The chosen views of a ``[B, V, ...]`` tensor (all when None)."""
    return x if views is None else x[:, list(views)]


def state_contrast(
    z: Tensor, outputs: Outputs, batch: Batch, state: StepState, *, include_views: bool = True
) -> ContrastSet:
    """The step's global contrast set, the one place a contrastive loss meets other processes: the views of
    the global batch (gathered with gradient; only when they are columns), the gathered key projections
    ``outputs.extra["key_z"]`` of a momentum memory and its queue, when present. Without keys the views
    are always columns (``include_views=False`` asks for keys + queue only)."""
    keys = outputs.extra.get(Extra.KEY_Z)
    memory = state.memory
    views = include_views or keys is None
    return contrast_set(
        z,
        batch.targets,
        global_z=state.gather(z) if views else None,
        global_labels=state.gather_nograd(batch.targets),
        offset=state.rank * len(batch),
        keys=state.gather_nograd(keys) if keys is not None else None,
        queue=memory.queue_z if memory is not None else None,
        queue_labels=memory.queue_labels if memory is not None else None,
        include_views=views,
    )


def global_mean(res: ContrastiveResult, state: StepState) -> Tensor:
    """Local sum over the process-mean count of anchors with positives: with the gather's summed backward
    and DDP's averaging, the exact mean over all anchors of the global batch that have a positive."""
    count = state.all_reduce_mean((res.num_pos > 0).sum().to(res.loss.dtype))
    return res.loss.sum() / count.clamp_min(1e-6)


class SupConLoss(nn.Module):
    """SupCon over the chosen views (plus keys / queue when a memory provides them)."""

    def __init__(self, *, temperature: float = 0.1, views: tuple[int, ...] | None = None) -> None:
        super().__init__()
        self.temperature, self.views = temperature, views

    def forward(self, outputs: Outputs, batch: Batch, state: StepState) -> LossOutput:
        z = _select(outputs.z, self.views)
        cs = state_contrast(z, outputs, batch, state)
        loss = global_mean(supcon(z, batch.targets, self.temperature, contrast=cs, reduction="none"), state)
        return LossOutput(loss, {"supcon": loss.detach()})


class KCLLoss(nn.Module):
    """KCL: MoCo-style (queries vs keys + queue) when ``key_z`` is present, else over the views; k-positive sampling
    seeded from ``(seed, epoch, step, rank)``."""

    def __init__(
        self, *, temperature: float = 0.07, k: int = 6, views: tuple[int, ...] | None = None
    ) -> None:
        super().__init__()
        if k < 0:
            raise ValueError(f"KCL k must be >= 0, got {k}")
        self.temperature, self.k, self.views = temperature, k, views

    def forward(self, outputs: Outputs, batch: Batch, state: StepState) -> LossOutput:
        z = _select(outputs.z, self.views)
        cs = state_contrast(z, outputs, batch, state, include_views=False)
        seed = (state.seed * 1_000_003 + state.global_step) * 4099 + state.rank  # the run's --seed
        gen = torch.Generator(device=z.device).manual_seed(seed)
        res = kcl(
            z,
            batch.targets,
            k=self.k,
            temperature=self.temperature,
            generator=gen,
            contrast=cs,
            reduction="none",
        )
        loss = global_mean(res, state)
        return LossOutput(loss, {"kcl": loss.detach()})


class BCLLoss(nn.Module):
    """BCL total ``alpha * LA-CE(cls views) + beta * L_BCL(views)``; prototypes from ``state.prototypes``."""

    def __init__(
        self,
        *,
        temperature: float = 0.07,
        alpha: float = 1.0,
        beta: float = 0.35,
        views: tuple[int, ...] | None = None,
        cls_views: tuple[int, ...] = (0,),
    ) -> None:
        super().__init__()
        self.temperature, self.alpha, self.beta, self.views, self.cls_views = (
            temperature,
            alpha,
            beta,
            views,
            cls_views,
        )

    def forward(self, outputs: Outputs, batch: Batch, state: StepState) -> LossOutput:
        if state.prototypes is None:
            raise ValueError(
                "BCLLoss needs a prototype part (e.g. 'classifier-derived') exposing .prototypes() -> [C, D]"
            )
        z = _select(outputs.z, self.views)
        cs = state_contrast(z, outputs, batch, state)
        res = bcl(
            z,
            batch.targets,
            state.prototypes.prototypes(),
            temperature=self.temperature,
            contrast=cs,
            reduction="none",
        )
        con = global_mean(res, state)
        ce = logit_adjusted_ce(*flatten_views(_select(outputs.logits, self.cls_views), batch.targets), state.prior.log())
        total = self.alpha * ce + self.beta * con
        return LossOutput(total, {"ce": ce.detach(), "bcl": con.detach()})


class PaCoLoss(nn.Module):
    """PaCo (``views=(0,)`` with a momentum memory) / GPaCo (all views, shared encoder); centres = logits + log prior."""

    def __init__(
        self,
        *,
        temperature: float = 0.2,
        alpha: float = 0.05,
        beta: float = 1.0,
        gamma: float = 1.0,
        views: tuple[int, ...] | None = None,
    ) -> None:
        super().__init__()
        self.temperature, self.alpha, self.beta, self.gamma, self.views = (
            temperature,
            alpha,
            beta,
            gamma,
            views,
        )

    def forward(self, outputs: Outputs, batch: Batch, state: StepState) -> LossOutput:
        z = _select(outputs.z, self.views)
        cs = state_contrast(z, outputs, batch, state)
        res = paco(
            z,
            batch.targets,
            _select(outputs.logits, self.views),
            state.prior.log(),
            alpha=self.alpha,
            beta=self.beta,
            gamma=self.gamma,
            temperature=self.temperature,
            contrast=cs,
            reduction="none",
        )
        loss = global_mean(res, state)
        return LossOutput(loss, {"paco": loss.detach()})
