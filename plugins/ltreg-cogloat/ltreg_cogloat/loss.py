"""CoGloAT + ProCo-coreset loss, built on the core's one contrastive kernel.

Paper: Bach, Tong, Hy, Nguyen, Nguyen-Tang, "Global Contrastive Learning for Long-Tailed Classification",
Transactions on Machine Learning Research 09/2023 (OpenReview xWrtiJwJj5; no arXiv id known here). Anchors are the query projections ``v_i`` (view 0, with gradient). Per anchor ``i`` with class-adaptive temperature
``tau_i = gamma + (1 - gamma) n_{y_i} / n_max`` (Eq. 8) the CoGloAT term (Eq. 1) is

    L_i = -1/|P(i)| sum_{j in P(i)} log[ exp(v_i.v_j / tau_i) / (exp(v_i.v_j / tau_i) + sum_{v in V_i} exp(v_i.v / tau_i)) ]

with ``P(i) = {i+} U P_k^glob(i)``: the key of the anchor's other view plus the ``k`` global same-class images (key
encoder, ``outputs.extra["positives_z"]``). Each positive sits alone with the negatives ``V_i``; the columns are the
gathered batch keys plus the queue, and ``negatives`` picks ``V_i``:

* ``"unsupervised"`` (paper default, Table 6 [P]): every column except the anchor's own key, whatever its label —
  same-class keys and queue entries are negatives. Leaving out the own key ``v_i+`` is [D]: Eq. 1 says "examples in
  the current batch excluding v_i"; with MoCo columns the query ``v_i`` is no column and ``v_i+`` is the numerator's
  positive, so it is not repeated among the negatives.
* ``"supervised"``: only columns of another class; same-class columns are neither positive nor negative.
* ``"k-positive"`` [D] (the paper names this ablation without defining it; this is KCL's rule): ``k`` same-class
  columns drawn uniformly without replacement from the batch keys + queue become extra positives (each alone with
  the negatives, so ``|P(i)| = 1 + 2k`` when enough exist), the other same-class columns stay negatives. The draw is
  made for the global batch from ``(seed, global step)`` and sliced by rank.

The ProCo-coreset term: for both query-encoder views ``v`` of image ``i`` and both coreset prototype sets ``q``,
``-log softmax_c(v.c_{c,q} / tau)[y_i]``, averaged over the 4N terms (§3.4, unnumbered display [P]); ``tau`` is
the base temperature [D] or ``tau_i`` (``proco_temperature="adaptive"``). Total (§3.4, ``L_final`` [P]):
``alpha L_CoGloAT + (1 - alpha) L_ProCo``, alpha tuned in the paper, value not given ([D] 0.5). The minimum
temperature gamma is not given either ([D] 0.07, MoCo / TSC's base temperature), nor the negatives of a MoCo
run ([D] batch keys + queue). Tags: [P] stated in the paper, [R] a reading, [D] a default where it is silent.
"""

from __future__ import annotations

from typing import Any, Literal

import torch
from torch import Tensor, nn

from ltreg import (
    Batch,
    BuildContext,
    ContrastiveResult,
    LossOutput,
    Outputs,
    StepState,
    contrastive_loss,
    flatten_views,
    global_mean,
    sample_positives,
    state_contrast,
)

Negatives = Literal["unsupervised", "supervised", "k-positive"]
NEGATIVES = ("unsupervised", "supervised", "k-positive")


def adaptive_temperature(labels: Tensor, class_counts: Tensor, gamma: float) -> Tensor:
    """Per-anchor ``tau_i = gamma + (1 - gamma) n_{y_i} / n_max`` (Eq. 8): head classes near 1, tail near gamma."""
    counts = class_counts.to(torch.promote_types(class_counts.dtype, torch.float32))
    return gamma + (1.0 - gamma) * counts[labels] / counts.max()


def cogloat(
    anchors: Tensor,
    labels: Tensor,
    positives: Tensor,
    contrast: Tensor,
    contrast_labels: Tensor,
    own_index: Tensor,
    *,
    temperature: float | Tensor = 0.07,
    negatives: Negatives = "unsupervised",
    memory_positives: Tensor | None = None,
    reduction: Literal["mean", "none"] = "mean",
) -> ContrastiveResult:
    """CoGloAT Eq. 1 on raw tensors: anchors ``[N, D]`` vs columns ``contrast [M, D]`` (labels ``-1`` = empty slot).

    ``positives [N, k, D]`` are the global positives (extra columns, one per anchor), ``own_index [N, P0]`` the
    columns of ``i+`` (-1 pads), ``memory_positives [N, k']`` the extra same-class columns of ``"k-positive"``.
    """
    if negatives not in NEGATIVES:
        raise ValueError(f"negatives must be one of {NEGATIVES}, got {negatives!r}")
    if (negatives == "k-positive") != (memory_positives is not None):
        raise ValueError("memory_positives are given exactly when negatives='k-positive'")
    n, k = anchors.shape[0], positives.shape[1]
    dtype = torch.promote_types(anchors.dtype, torch.float32)
    tau = temperature if isinstance(temperature, Tensor) else torch.full((n,), float(temperature), device=anchors.device)
    pos_index = own_index if memory_positives is None else torch.cat([own_index, memory_positives], 1)
    extra = extra_pos = None
    if k:  # one logit per anchor and global positive, scaled by the anchor's own temperature
        extra = (anchors.to(dtype).unsqueeze(1) * positives.to(dtype)).sum(-1) / tau.to(dtype).unsqueeze(1)
        extra_pos = torch.ones_like(extra)
    col_weight = None
    if negatives == "supervised":  # same-class columns leave the denominator (positives keep their own term)
        col_weight = (contrast_labels.unsqueeze(0) != labels.unsqueeze(1)).to(dtype)
    return contrastive_loss(
        anchors, contrast, labels, contrast_labels, temperature=tau, pos_index=pos_index, col_weight=col_weight,
        per_positive_denominator=True, extra_logits=extra, extra_pos=extra_pos, reduction=reduction,
    )


def proco(
    z: Tensor, labels: Tensor, prototypes: Tensor, *, temperature: float | Tensor = 0.07,
    reduction: Literal["mean", "none"] = "mean",
) -> ContrastiveResult:
    """ProCo-coreset on raw tensors: ``z [N, D]`` against each prototype set of ``prototypes [Q, C, D]``.

    Per anchor the mean over the Q sets of ``-log softmax_c(z.c_{c,q} / tau)[y]``: the core's shared-denominator
    loss with the C prototypes as columns labelled ``0..C-1``.
    """
    classes = torch.arange(prototypes.shape[1], device=labels.device)
    runs = [contrastive_loss(z, p, labels, classes, temperature=temperature, reduction="none") for p in prototypes]
    per_anchor = torch.stack([r.loss for r in runs]).mean(0)
    res = ContrastiveResult(per_anchor, runs[0].num_pos)
    if reduction == "none":
        return res
    has = res.num_pos > 0
    return ContrastiveResult((per_anchor * has).sum() / has.sum().clamp_min(1), res.num_pos)


class CoGloATLoss(nn.Module):
    """``alpha * L_CoGloAT + (1 - alpha) * L_ProCo`` for a run with the ``moco`` memory, ``k-global`` sampler and
    ``coreset`` prototypes (equations in the module docstring)."""

    def __init__(
        self,
        *,
        temperature: float = 0.07,
        gamma: float = 0.07,
        adaptive_temperature: bool = True,
        negatives: Negatives = "unsupervised",
        alpha: float = 0.5,
        proco_temperature: Literal["base", "adaptive"] = "base",
        seed: int = 0,
    ) -> None:
        super().__init__()
        if negatives not in NEGATIVES:
            raise ValueError(f"negatives must be one of {NEGATIVES}, got {negatives!r}")
        if proco_temperature not in ("base", "adaptive"):
            raise ValueError(f"proco_temperature must be 'base' or 'adaptive', got {proco_temperature!r}")
        if not 0.0 <= alpha <= 1.0:
            raise ValueError(f"alpha must be in [0, 1], got {alpha}")
        self.temperature, self.gamma, self.adaptive, self.negatives = temperature, gamma, adaptive_temperature, negatives
        self.alpha, self.proco_temperature, self.seed = alpha, proco_temperature, seed

    @classmethod
    def from_context(cls, ctx: BuildContext, **kwargs: Any) -> CoGloATLoss:
        """The run's seed drives the k-positive draws."""
        kwargs.setdefault("seed", ctx.seed)
        return cls(**kwargs)

    def forward(self, outputs: Outputs, batch: Batch, state: StepState) -> LossOutput:
        if "key_z" not in outputs.extra or state.memory is None:
            raise ValueError("the cogloat loss needs the 'moco' memory part (outputs.extra['key_z'] and a queue)")
        z, y, b = outputs.z, batch.targets, len(batch)
        q = z[:, 0]
        positives = outputs.extra.get("positives_z")
        if positives is None:  # no k-global sampler: the own key is the only positive
            positives = q.new_zeros(b, 0, q.shape[1])
        tau_i = adaptive_temperature(y, state.class_counts, self.gamma).to(q.device)
        tau = tau_i if self.adaptive else torch.full_like(tau_i, self.temperature)
        cs = state_contrast(q.unsqueeze(1), outputs, batch, state, include_views=False)  # keys + queue
        memory_positives = None
        if self.negatives == "k-positive":  # drawn for the global batch, sliced by rank: same on 1 or N processes
            labels_g = state.gather_nograd(y)
            step = state.epoch * state.steps_per_epoch + state.step
            gen = torch.Generator(device=q.device).manual_seed(self.seed * 1_000_003 + step)
            own_g = torch.arange(labels_g.shape[0], device=q.device).unsqueeze(1)
            drawn = sample_positives(labels_g, cs.labels, positives.shape[1], own_g, gen)
            memory_positives = drawn[state.rank * b:(state.rank + 1) * b]
        res = cogloat(q, y, positives, cs.z, cs.labels, cs.own_index, temperature=tau, negatives=self.negatives,
                      memory_positives=memory_positives, reduction="none")
        con = global_mean(res, state)
        parts = {"cogloat": con.detach()}
        total = self.alpha * con
        if self.alpha < 1.0:
            if state.prototypes is None:
                raise ValueError("the ProCo term (alpha < 1) needs the 'coreset' prototype part")
            protos = torch.stack([state.prototypes.prototypes(0), state.prototypes.prototypes(1)])
            t = tau_i.repeat_interleave(z.shape[1]) if self.proco_temperature == "adaptive" else self.temperature
            pro = global_mean(proco(*flatten_views(z, y), protos, temperature=t, reduction="none"), state)
            total = total + (1.0 - self.alpha) * pro
            parts["proco"] = pro.detach()
        return LossOutput(total, parts)
