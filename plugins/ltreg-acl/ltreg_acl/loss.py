"""The ACL loss: a configuration of ltreg's one contrastive core (``contrastive_loss``), not a second core.

Paper: Ma, Cui, Kazuki, Subramanian, Jayashree, Pranata, Zhang, "Aligned Contrastive Loss for Long-Tailed
Recognition", arXiv 2506.01071 (CVPR 2025 DG-EBF workshop). Only its abstract and summaries could be read,
so no equation number can be cited and the equations below are a reconstruction [R] of what the abstract
claims (only the effective positive in each term's denominator, negatives re-weighted inversely to class
frequency, class centres), on GPaCo's centres (Cui et al., arXiv 2209.12400). For anchor ``i`` (one view,
label ``y``) with sample logits ``s_ij / tau`` and centre logits ``x_ic = u_ic + log pi_c`` (the
classifier's logits of that view)::

    Neg_i = sum_{n in N(i)} omega_{y_n} exp(s_in / tau) + sum_{c != y} exp(x_ic)
    T_ip  = -log[ exp(s_ip / tau) / (exp(s_ip / tau) + Neg_i) ]           (each positive alone with the negatives)
    T_i0  = -log[ exp(x_iy) / (exp(x_iy) + Neg_i) ]                         (the own class centre)
    L_i   = (beta * T_i0 + alpha * sum_{p in P(i)} T_ip) / (beta + alpha |P(i)|)

This is exactly the core's ``per_positive_denominator=True`` mode with ``pos_weight=alpha``,
``col_weight=omega[y_j]`` (positive columns are masked out of ``Neg_i`` by the core, so only negatives are
re-weighted), ``extra_logits=u + log pi`` and ``extra_pos=beta * onehot(y)`` (the own centre is a positive,
the other centres sit in ``Neg_i``).

Defaults [D], GPaCo's ImageNet-LT values: ``alpha = 0.05``, ``beta = 1``, ``tau = 0.2``; negative weights
``omega_c = (1/n_c) / mean_k (1/n_k)`` [D] (``neg_weight="batch"``: ``1/|B_c|``). ``positives="same-image"`` is
the alternative reading [R] of "non-effective positives" (see :func:`acl`).
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor, nn

from ltreg import (
    Batch,
    ContrastiveResult,
    ContrastSet,
    LossOutput,
    Outputs,
    StepState,
    anchors_and_columns,
    centre_columns,
    global_mean,
    state_contrast,
)

NegWeight = Literal["dataset", "batch", "none"]
Positives = Literal["per-positive", "same-image"]
NEG_WEIGHTS = ("dataset", "batch", "none")
POSITIVES = ("per-positive", "same-image")


def negative_weights(mode: NegWeight, class_counts: Tensor, contrast_labels: Tensor) -> Tensor | None:
    """Per-class negative weights ``omega`` ``[C]`` [D]: inverse class frequency, so head negatives push less.

    ``"dataset"``: ``omega_c = (1/n_c) / mean_k (1/n_k)`` with training counts; ``"batch"``: ``omega_c = 1/|B_c|``,
    ``|B_c|`` the number of columns of class c in the (gathered) contrast set; ``"none"``: no re-weighting (None).
    """
    dtype = torch.promote_types(class_counts.dtype, torch.float32)
    if mode == "none":
        return None
    if mode == "dataset":
        inv = 1.0 / class_counts.to(dtype).clamp_min(1)
        return inv / inv.mean()
    if mode == "batch":
        valid = (contrast_labels >= 0).to(dtype)
        cnt = torch.zeros(class_counts.shape[0], dtype=dtype, device=contrast_labels.device)
        return 1.0 / cnt.index_add_(0, contrast_labels.clamp_min(0), valid).clamp_min(1)
    raise ValueError(f"neg_weight must be one of {NEG_WEIGHTS}, got {mode!r}")


def acl(
    z: Tensor,
    labels: Tensor,
    logits: Tensor,
    log_prior: Tensor,
    *,
    alpha: float = 0.05,
    beta: float = 1.0,
    temperature: float = 0.2,
    omega: Tensor | None = None,
    positives: Positives = "per-positive",
    contrast: ContrastSet | None = None,
    reduction: Literal["mean", "none"] = "mean",
) -> ContrastiveResult:
    """ACL of the views ``z`` ``[B, V, D]`` (every view an anchor) with centre logits ``logits`` ``[B, V, C]`` + ``log_prior``.

    ``omega`` ``[C]`` re-weights negative columns (None: 1). ``positives="per-positive"`` is the main reading (each
    positive alone with the negatives); ``"same-image"`` [R] is the alternative reading of "non-effective positives":
    one shared (GPaCo) denominator from which the anchor's other views are dropped; they stay positives in the
    numerators, same-class columns of other images keep weight 1, negatives weigh ``omega``.
    """
    if positives not in POSITIVES:
        raise ValueError(f"positives must be one of {POSITIVES}, got {positives!r}")
    if beta <= 0:
        raise ValueError(f"beta must be > 0 (the own class centre is always a positive), got {beta}")
    a, ya, cs = anchors_and_columns(z, labels, contrast)
    centres, centre_pos = centre_columns(logits, log_prior, ya, beta)
    col = None if omega is None else omega[cs.labels.clamp_min(0)]
    if positives == "same-image":
        neg = torch.ones_like(cs.labels, dtype=centres.dtype) if col is None else col.to(centres.dtype)
        col = torch.where(ya.unsqueeze(1) == cs.labels.unsqueeze(0), 1.0, neg.unsqueeze(0))
        col = col.scatter(1, cs.own_index, 0.0)
    return cs.loss(
        a,
        ya,
        temperature=temperature,
        pos_weight=alpha,
        col_weight=col,
        per_positive_denominator=positives == "per-positive",
        extra_logits=centres,
        extra_pos=centre_pos,
        reduction=reduction,
    )


class ACLLoss(nn.Module):
    """ACL over all V views of the step (V = ``outputs.z.shape[1]``, set by the ``num_views`` hyper-parameter),
    contrasted with the gathered global batch; centres are the classifier logits plus the log-prior."""

    def __init__(
        self,
        *,
        temperature: float = 0.2,
        alpha: float = 0.05,
        beta: float = 1.0,
        neg_weight: NegWeight = "dataset",
        positives: Positives = "per-positive",
    ) -> None:
        super().__init__()
        if neg_weight not in NEG_WEIGHTS:
            raise ValueError(f"neg_weight must be one of {NEG_WEIGHTS}, got {neg_weight!r}")
        if positives not in POSITIVES:
            raise ValueError(f"positives must be one of {POSITIVES}, got {positives!r}")
        self.temperature, self.alpha, self.beta = temperature, alpha, beta
        self.neg_weight, self.positives = neg_weight, positives

    def forward(self, outputs: Outputs, batch: Batch, state: StepState) -> LossOutput:
        cs = state_contrast(outputs.z, outputs, batch, state)
        omega = negative_weights(self.neg_weight, state.class_counts, cs.labels)
        res = acl(
            outputs.z,
            batch.targets,
            outputs.logits,
            state.prior.log(),
            alpha=self.alpha,
            beta=self.beta,
            temperature=self.temperature,
            omega=omega,
            positives=self.positives,
            contrast=cs,
            reduction="none",
        )
        loss = global_mean(res, state)
        return LossOutput(loss, {"acl": loss.detach()})
