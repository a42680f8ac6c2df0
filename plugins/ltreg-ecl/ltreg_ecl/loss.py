"""ECL's loss: L = a * L_LC + b * L_BC-ECL + c * L_CC-GE.

Paper: Roh, Kim, Lee, Chun, "Equilibrium contrastive learning for imbalanced image classification",
arXiv 2602.09506 (IEEE TETCI). Only its abstract, summary, README and architecture figure could be read, so no
equation number can be cited: the terms below are read from those and from the code of its predecessor
ProConDual (``suminRoh/ProConDual-main``). Tags: [C] the official README / figure, [C-pred] ProConDual's code,
[R] a reconstruction of what the abstract says, [D] a default where every source is silent.

* L_LC: logit-compensated cross-entropy ``CE(u + log pi, y)`` on the classification view [C-pred].
* L_BC-ECL [R]: for anchor view ``i`` (label ``y``) against the 2B contrastive views and the C prototypes,
  ``S_ic = 1/2 * mean_{j in B_c \\ {i}} exp(s_ij / tau) + 1/2 * exp(z_i . p_c / tau)`` when class ``c`` has
  other views in the batch, else ``exp(z_i . p_c / tau)``; ``Den_i = sum_c S_ic`` and
  ``L(i) = -1/2 * mean_{p in P_s(i)} log(exp(s_ip / tau) / Den_i) - 1/2 * log(exp(z_i . p_y / tau) / Den_i)``
  (only the prototype term, weight 1, when ``P_s(i)`` is empty). The equal split is a reconstruction;
  ``contribution="bcl"`` is the BCL / ProConDual reading (the prototype is one more class member).
* L_CC-GE [C-pred, assumed unchanged in ECL: R]: ``|| W / ||W||_F - P / ||P||_F ||_F`` (not squared).
* Weights [C-pred, assumed for ECL: D]: 1 in epoch 0, then ``round(target / epoch-0 mean, 2)`` with targets
  0.7 / 0.3 / 0.5 (``auto_weights``), or the targets themselves.
"""

from __future__ import annotations

import math
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ltreg import (
    Batch,
    ContrastiveResult,
    ContrastSet,
    LossOutput,
    Outputs,
    StepState,
    anchors_and_columns,
    bcl,
    global_mean,
    logit_adjusted_ce,
    state_contrast,
)

Contribution = Literal["balanced", "bcl"]
_LOG_HALF = math.log(0.5)


def bc_ecl(
    z: Tensor,
    labels: Tensor,
    prototypes: Tensor,
    *,
    temperature: float = 0.07,
    contribution: Contribution = "balanced",
    contrast: ContrastSet | None = None,
    reduction: Literal["mean", "none"] = "mean",
) -> ContrastiveResult:
    """BC-ECL of the anchors ``z`` ``[B, V, d]`` against ``contrast`` (default: the views) plus ``[C, d]`` prototypes.

    ``"balanced"`` runs on the core with the views as class-averaged columns of weight 1/2 and the prototypes
    as extra columns (log-weight ``log 1/2`` for classes with other views, 0 otherwise); the prototype of the
    label is a positive worth as much as all sample positives together (``max(|P_s(i)|, 1)``). The core's
    numerator of that extra column carries its log-weight (``log 1/2`` where ``P_s(i)`` is non-empty), which adds
    ``1/2 * log 2`` to the loss; it is subtracted again (a constant: no effect on gradients).
    """
    if contribution == "bcl":
        return bcl(z, labels, prototypes, temperature=temperature, contrast=contrast, reduction=reduction)
    if contribution != "balanced":
        raise ValueError(f"BC-ECL contribution must be 'balanced' or 'bcl', got {contribution!r}")
    anchors, anchor_labels, cs = anchors_and_columns(z, labels, contrast)
    num_classes = prototypes.shape[0]
    dtype = torch.promote_types(anchors.dtype, torch.float32)
    with torch.autocast(anchors.device.type, enabled=False):
        valid = (cs.labels >= 0).to(dtype)
        counts = torch.zeros(num_classes, dtype=dtype, device=z.device).index_add_(0, cs.labels.clamp_min(0), valid)
        own = F.one_hot(anchor_labels, num_classes).to(dtype)
        others = counts - own if cs.self_index is not None else counts.expand_as(own)  # |B_c \ {i}|  [N, C]
        n_pos = (others * own).sum(1)  # |P_s(i)|
        proto_logits = anchors.to(dtype) @ prototypes.to(dtype).T / temperature
        extra = proto_logits + _LOG_HALF * (others > 0).to(dtype)
        res = cs.loss(
            anchors, anchor_labels, temperature=temperature, col_weight=0.5, class_average=True, extra_logits=extra,
            extra_pos=own * n_pos.clamp_min(1).unsqueeze(1), reduction="none",
        )
        per_anchor = res.loss + 0.5 * _LOG_HALF * (n_pos > 0).to(dtype)
    if reduction == "none":
        return ContrastiveResult(per_anchor, res.num_pos)
    return ContrastiveResult(per_anchor.sum() / (res.num_pos > 0).sum().clamp_min(1), res.num_pos)


def cc_ge(weight: Tensor, prototypes: Tensor) -> Tensor:
    """CC-GE ``|| W / ||W||_F - P / ||P||_F ||_F``: pulls the raw classifier weights ``[C, D]`` onto the prototypes."""
    if weight.shape != prototypes.shape:
        raise ValueError(
            f"CC-GE compares classifier weights {tuple(weight.shape)} with prototypes {tuple(prototypes.shape)}: "
            f"the projection width d must equal the classifier width D (use the 'ecl' prototype part)"
        )
    dtype = torch.promote_types(weight.dtype, torch.float32)
    w, p = weight.to(dtype), prototypes.to(dtype)
    return torch.linalg.matrix_norm(w / torch.linalg.matrix_norm(w) - p / torch.linalg.matrix_norm(p))


def auto_weights(targets: Tensor, epoch0_mean: Tensor) -> Tensor:
    """ProConDual's weight normalisation: ``target / (epoch-0 mean of the loss)``, rounded to 2 decimals."""
    return torch.round(targets / epoch0_mean.clamp_min(1e-12), decimals=2)


class ECLLoss(nn.Module):
    """ECL total loss; prototypes and the classifier they derive from come from ``state.prototypes``.

    The epoch-0 sums of the three losses are buffers (checkpointed with the run); they are reduced over
    processes once, at the first step after epoch 0, and never read back to the host.
    """

    def __init__(
        self,
        *,
        temperature: float = 0.07,
        contribution: Contribution = "balanced",
        auto_weights: bool = True,
        weight_lc: float = 0.7,
        weight_con: float = 0.3,
        weight_align: float = 0.5,
        cls_view: int = 0,
        views: tuple[int, ...] = (1, 2),
    ) -> None:
        super().__init__()
        if contribution not in ("balanced", "bcl"):
            raise ValueError(f"ECL contribution must be 'balanced' or 'bcl', got {contribution!r}")
        self.temperature, self.contribution, self.auto_weights = temperature, contribution, auto_weights
        self.cls_view, self.views = cls_view, tuple(views)
        # float64: the target weights enter a float64 loss exactly (0.7 is not a float32 number)
        self.register_buffer("targets", torch.tensor([weight_lc, weight_con, weight_align], dtype=torch.float64),
                             persistent=False)
        self.register_buffer("epoch0_sum", torch.zeros(3))
        self.register_buffer("epoch0_steps", torch.zeros(()))
        self.register_buffer("weights", torch.ones(3))
        self._ready = False

    def loss_weights(self, terms: Tensor, state: StepState) -> Tensor:
        """The weights of (LC, BC-ECL, CC-GE) for this step; in epoch 0 also accumulates the detached ``terms``."""
        if not self.auto_weights:
            return self.targets
        if state.epoch == 0:
            self.epoch0_sum += terms
            self.epoch0_steps += 1
            return torch.ones_like(self.targets)
        if not self._ready:
            mean = state.all_reduce_mean(self.epoch0_sum) / self.epoch0_steps.clamp_min(1)
            self.weights.copy_(auto_weights(self.targets, mean))
            self._ready = True
        return self.weights

    def forward(self, outputs: Outputs, batch: Batch, state: StepState) -> LossOutput:
        protos = state.prototypes
        if protos is None or not hasattr(protos, "model"):
            raise ValueError("ECLLoss needs classifier-derived prototypes in state.prototypes (the 'ecl' prototype part)")
        p = protos.prototypes()
        z = outputs.z[:, list(self.views)]
        cs = state_contrast(z, outputs, batch, state)
        res = bc_ecl(z, batch.targets, p, temperature=self.temperature, contribution=self.contribution,
                     contrast=cs, reduction="none")
        con = global_mean(res, state)
        lc = logit_adjusted_ce(outputs.logits[:, self.cls_view], batch.targets, state.prior.log())
        align = cc_ge(protos.model.classifier.weight, p)
        w = self.loss_weights(torch.stack([t.detach().float() for t in (lc, con, align)]), state)
        w = w.to(torch.promote_types(lc.dtype, torch.float32))
        total = w[0] * lc + w[1] * con + w[2] * align
        return LossOutput(total, {"lc": lc.detach(), "bc_ecl": con.detach(), "cc_ge": align.detach()})
