"""Logit-level losses for long-tailed classification and class re-weighting helpers.

Notation: logits ``u`` ``[N, C]``, label ``y``, training counts ``n_c``, prior ``pi_c = n_c / sum_k n_k``.
Each function's docstring states its equation and paper. Every loss module reads ``outputs.logits``
``[B, V, C]`` on the chosen ``views`` (default the first), computes in at least float32, and may re-weight
classes with the class-balanced weights (:func:`class_balanced_weights`) from ``drw_start_epoch`` on
(0: from the start, i.e. "Reweight" / CB; 160 of 200 epochs: LDAM-DRW). Weighted losses are normalised by
the summed weights of the targets, as ``F.cross_entropy(weight=...)`` does.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ltreg.step import Batch, Extra, LossOutput, Outputs, StepState, flatten_views


def _f32(x: Tensor) -> Tensor:
    """``x`` in at least float32 (half precision logits are up-cast)."""
    return x.to(torch.promote_types(x.dtype, torch.float32))


def _float_dtype(counts: Tensor) -> torch.dtype:
    """The dtype of per-class weights: that of ``counts`` when floating (at least float32), else the default."""
    return (
        torch.promote_types(counts.dtype, torch.float32)
        if counts.is_floating_point()
        else torch.get_default_dtype()
    )


def class_balanced_weights(counts: Tensor, beta: float) -> Tensor:
    """Class-balanced weights ``w_c = (1 - beta) / (1 - beta^n_c)``, the inverse effective number of samples,
    normalised to sum to C; beta 0 is uniform, beta 1 is ``1/n_c`` (the limit).

    Cui, Jia, Lin, Song, Belongie, "Class-Balanced Loss Based on Effective Number of Samples" (CVPR 2019,
    arXiv 1901.05555) [P], normalised to sum C as there [P]; equation number not checked here.
    """
    if not 0.0 <= beta <= 1.0:
        raise ValueError(f"class-balanced beta must be in [0, 1], got {beta}")
    n = counts.to(torch.float64)
    w = 1.0 / n if beta == 1.0 else (1.0 - beta) / (1.0 - beta**n)
    return (w * (n.shape[0] / w.sum())).to(_float_dtype(counts))


def drw_weights(counts: Tensor, epoch: int, start_epoch: int, beta: float = 0.9999) -> Tensor:
    """Deferred re-weighting (DRW): uniform weights before ``start_epoch``, class-balanced weights from it on.

    Cao et al., "Learning Imbalanced Datasets with Label-Distribution-Aware Margin Loss" (NeurIPS 2019,
    arXiv 1906.07413), Algorithm 1 (deferred re-balancing) [P]; ``beta = 0.9999`` and the start at epoch 160
    of 200 are the official code's [C].
    """
    if epoch < start_epoch:
        return torch.ones(counts.shape[0], dtype=_float_dtype(counts), device=counts.device)
    return class_balanced_weights(counts, beta)


def _ce(u: Tensor, targets: Tensor, weight: Tensor | None) -> Tensor:
    """Cross-entropy of float logits ``u``, weighted by class (normalised by the targets' summed weights)."""
    return F.cross_entropy(u, targets, weight=None if weight is None else weight.to(u.dtype))


def _mean(per: Tensor, targets: Tensor, weight: Tensor | None) -> Tensor:
    """Plain mean, or the mean weighted by each sample's class weight."""
    if weight is None:
        return per.mean()
    w = weight.to(per.dtype)[targets]
    return (w * per).sum() / w.sum()


def logit_adjusted_ce(
    logits: Tensor, targets: Tensor, log_prior: Tensor, tau: float = 1.0, weight: Tensor | None = None
) -> Tensor:
    """Logit-adjusted cross-entropy ``L = -log[ exp(u_y + tau log pi_y) / sum_c exp(u_c + tau log pi_c) ]``.

    Menon, Jayasumana, Rawat, Jain, Veit, Kumar, "Long-tail learning via logit adjustment" (ICLR 2021,
    arXiv 2007.07314), its logit-adjusted softmax cross-entropy [P], ``tau = 1`` its default [P];
    equation number not checked here.
    """
    u = _f32(logits)
    return _ce(u + tau * log_prior.to(u.dtype), targets, weight)


def balanced_softmax(logits: Tensor, targets: Tensor, counts: Tensor, weight: Tensor | None = None) -> Tensor:
    """Balanced Softmax ``L = -log[ n_y exp(u_y) / sum_c n_c exp(u_c) ]``: cross-entropy of ``u + log n_c``.

    Ren, Yu, Sheng, Ma, Zhao, Yi, Li, "Balanced Meta-Softmax for Long-Tailed Visual Recognition" (NeurIPS 2020,
    arXiv 2007.10740), its Balanced Softmax [P]; equal to the logit-adjusted loss with ``tau = 1`` (``log n_c``
    and ``log pi_c`` differ by a constant). Equation number not checked here.
    """
    u = _f32(logits)
    return _ce(u + counts.to(u.dtype).log(), targets, weight)


def ldam_margins(counts: Tensor, max_margin: float = 0.5) -> Tensor:
    """LDAM margins ``Delta_c = C / n_c^(1/4)`` ``[C]``, with ``C`` set so the largest margin is ``max_margin``.

    Cao et al., "Learning Imbalanced Datasets with Label-Distribution-Aware Margin Loss" (NeurIPS 2019,
    arXiv 1906.07413), Eq. 13 [P]; ``max_margin = 0.5`` is the official code's ``max_m`` [C]. The paper defines
    ``Delta_c`` for classes with ``n_c >= 1`` training images (``n_c = 0`` divides by zero, and the official code
    has no guard), so a count below 1 is read as 1 [D]: an empty class gets the margin of a one-image class.
    For counts >= 1 this is exactly ``n_c^(-1/4)`` (where the loss gave finite numbers before, they are
    unchanged; an empty class used to make every LDAM loss NaN). Computed in float64, returned in the counts'
    floating dtype (at least float32). The one margin function of ltreg: the LDAM loss and cRT's LDAM stage use it.
    """
    m = counts.to(torch.float64).clamp_min(1).pow(-0.25)
    return (m * (max_margin / m.max())).to(_float_dtype(counts))


def ldam(
    logits: Tensor, targets: Tensor, margins: Tensor, s: float = 30.0, weight: Tensor | None = None
) -> Tensor:
    """LDAM ``L = -log[ exp(s (u_y - Delta_y)) / (exp(s (u_y - Delta_y)) + sum_{c != y} exp(s u_c)) ]``.

    The cross-entropy of ``s * (u - Delta_y e_y)`` on cosine logits ``u`` with the margins of
    :func:`ldam_margins`: Cao et al. (NeurIPS 2019, arXiv 1906.07413), Eq. 12 [P]; the scale ``s = 30`` on
    normalised features and weights is the official code's [C].
    """
    u = _f32(logits)
    shifted = u - F.one_hot(targets, u.shape[1]).to(u.dtype) * margins.to(u.dtype).unsqueeze(0)
    return _ce(s * shifted, targets, weight)


def focal(logits: Tensor, targets: Tensor, gamma: float = 2.0, weight: Tensor | None = None) -> Tensor:
    """Focal loss ``L = -(1 - p_y)^gamma log p_y``, ``p = softmax(u)`` (no alpha-balancing term).

    Lin, Goyal, Girshick, He, Dollár, "Focal Loss for Dense Object Detection" (ICCV 2017, arXiv 1708.02002),
    Eq. 4 [P], applied to the softmax over C classes; ``gamma = 2`` the paper's default [P].
    """
    ce = F.cross_entropy(_f32(logits), targets, reduction="none")
    return _mean((-torch.expm1(-ce)).clamp_min(0).pow(gamma) * ce, targets, weight)


def mixup_ce(
    logits: Tensor, targets_a: Tensor, targets_b: Tensor, lam: Tensor, weight: Tensor | None = None
) -> Tensor:
    """Mixup cross-entropy ``L = lam CE(u, y_a) + (1 - lam) CE(u, y_b)`` with a per-sample ``lam``.

    Zhang, Cisse, Dauphin, Lopez-Paz, "mixup: Beyond Empirical Risk Minimization" (ICLR 2018,
    arXiv 1710.09412) [P]: the loss of the mixed input ``lam x_a + (1 - lam) x_b`` (the paper writes it as a
    mixed one-hot target, which gives the same cross-entropy).
    """
    u = _f32(logits)
    lam = lam.to(u.dtype)
    ce_a = F.cross_entropy(u, targets_a, reduction="none")
    ce_b = F.cross_entropy(u, targets_b, reduction="none")
    if weight is None:
        return (lam * ce_a + (1 - lam) * ce_b).mean()
    w = weight.to(u.dtype)
    wa, wb = lam * w[targets_a], (1 - lam) * w[targets_b]
    return (wa * ce_a + wb * ce_b).sum() / (wa + wb).sum()


def global_weight_factor(weight: Tensor, targets: Tensor, state: StepState) -> Tensor:
    """``S_local / mean_p S_p`` with ``S = sum_i w[y_i]``: turns a class-weighted mean normalised by this
    process's weight sum into one normalised by the global batch's (exact across processes; 1 on one)."""
    local = weight.to(torch.float32)[targets].sum()
    return local / state.all_reduce_mean(local).clamp_min(1e-12)


class _LogitLoss(nn.Module):
    """Shared plumbing: the chosen views of ``outputs.logits``, the optional deferred class re-weighting, and
    ``--mix`` (a batch carrying ``Extra.MIX_LAM``: the loss of each label, weighted by its share)."""

    part = "ce"
    mixable = True  # the --mix setting may be used with this loss

    def __init__(
        self,
        *,
        views: tuple[int, ...] = (0,),
        drw_start_epoch: int | None = None,
        reweight_beta: float = 0.9999,
    ) -> None:
        super().__init__()
        self.views, self.drw_start_epoch, self.reweight_beta = views, drw_start_epoch, reweight_beta

    def forward(self, outputs: Outputs, batch: Batch, state: StepState) -> LossOutput:
        reps = len(self.views)
        weight = None
        if self.drw_start_epoch is not None:
            weight = drw_weights(state.class_counts, state.epoch, self.drw_start_epoch, self.reweight_beta)
        logits, targets = flatten_views(outputs.logits[:, list(self.views)], batch.targets)
        loss = self._term(logits, targets, weight, batch, state, reps)
        if Extra.MIX_LAM in batch.extra:  # --mix: lam L(y) + (1 - lam) L(y_partner), each term as without mixing
            partner = batch.extra[Extra.MIX_TARGETS].repeat_interleave(reps)
            other = self._term(logits, partner, weight, batch, state, reps)
            loss = torch.lerp(other, loss, batch.extra[Extra.MIX_LAM].to(loss.dtype))
        return LossOutput(loss, {self.part: loss.detach()})

    def _term(self, logits: Tensor, targets: Tensor, weight: Tensor | None, batch: Batch, state: StepState,
              reps: int) -> Tensor:
        loss = self.loss(logits, targets, weight, batch, state, reps)
        if weight is not None and state.world_size > 1:
            loss = loss * global_weight_factor(weight, targets, state)
        return loss

    def loss(self, logits: Tensor, targets: Tensor, weight: Tensor | None, batch: Batch, state: StepState,
             reps: int) -> Tensor:
        """The loss on flattened logits ``[B * V, C]``."""
        return _ce(_f32(logits), targets, weight)


class CrossEntropy(_LogitLoss):
    """Cross-entropy ``L = -log softmax(u)_y`` (with optional CB / DRW re-weighting, :func:`drw_weights`)."""


class LogitAdjustedCE(_LogitLoss):
    """Logit-adjusted cross-entropy of :func:`logit_adjusted_ce` (Menon et al., arXiv 2007.07314) with
    ``tau * log prior``."""

    part = "la_ce"

    def __init__(self, *, tau: float = 1.0, **kw) -> None:
        super().__init__(**kw)
        self.tau = tau

    def loss(self, logits: Tensor, targets: Tensor, weight: Tensor | None, batch: Batch, state: StepState,
             reps: int) -> Tensor:
        return logit_adjusted_ce(logits, targets, state.prior.log(), self.tau, weight)


class BalancedSoftmax(_LogitLoss):
    """Balanced Softmax of :func:`balanced_softmax` (Ren et al., arXiv 2007.10740): cross-entropy of ``u + log n_c``."""

    part = "balanced_softmax"

    def loss(self, logits: Tensor, targets: Tensor, weight: Tensor | None, batch: Batch, state: StepState,
             reps: int) -> Tensor:
        return balanced_softmax(logits, targets, state.class_counts, weight)


class LDAMLoss(_LogitLoss):
    """LDAM of :func:`ldam` (Cao et al., arXiv 1906.07413, Eq. 12) on cosine logits (set ``s=1`` if the
    classifier already scales); LDAM-DRW with ``drw_start_epoch``."""

    part = "ldam"

    def __init__(self, *, max_margin: float = 0.5, s: float = 30.0, **kw) -> None:
        super().__init__(**kw)
        self.max_margin, self.s = max_margin, s

    def loss(self, logits: Tensor, targets: Tensor, weight: Tensor | None, batch: Batch, state: StepState,
             reps: int) -> Tensor:
        return ldam(logits, targets, ldam_margins(state.class_counts, self.max_margin), self.s, weight)


class FocalLoss(_LogitLoss):
    """Focal loss of :func:`focal` (Lin et al., arXiv 1708.02002, Eq. 4) with focusing parameter ``gamma``."""

    part = "focal"

    def __init__(self, *, gamma: float = 2.0, **kw) -> None:
        super().__init__(**kw)
        self.gamma = gamma

    def loss(self, logits: Tensor, targets: Tensor, weight: Tensor | None, batch: Batch, state: StepState,
             reps: int) -> Tensor:
        return focal(logits, targets, self.gamma, weight)


class MixupCE(_LogitLoss):
    """Mixup CE of :func:`mixup_ce` (Zhang et al., arXiv 1710.09412) for paired batches: reads
    ``batch.extra[Extra.TARGETS_B]`` and ``batch.extra[Extra.LAM]`` ``[B]``."""

    part = "mixup_ce"
    mixable = False  # it mixes its own pairs

    def loss(self, logits: Tensor, targets: Tensor, weight: Tensor | None, batch: Batch, state: StepState,
             reps: int) -> Tensor:
        if Extra.TARGETS_B not in batch.extra or Extra.LAM not in batch.extra:
            raise ValueError(
                "MixupCE needs batch.extra['targets_b'] and batch.extra['lam'] (a paired mixup transform)"
            )
        tb, lam = batch.extra[Extra.TARGETS_B].repeat_interleave(reps), batch.extra[Extra.LAM].repeat_interleave(reps)
        return mixup_ce(logits, targets, tb, lam, weight)
