# ltreg_template/loss.py
"""SupCon + logit-adjusted cross-entropy, built from ltreg's core loss functions.

For a batch of B images with V views each (anchors ``i`` = every view, ``N = B * V``)::

    L_con = mean over anchors i with |P(i)| > 0 of
            -1/|P(i)| * sum_{p in P(i)} log( exp(z_i . z_p / tau_c) / sum_{a != i} exp(z_i . z_a / tau_c) )
    L_ce  = mean over the images of the chosen views of  -log softmax(u + t * log pi)_y
    L     = ce_weight * L_ce + con_weight * L_con

P(i) are the other views with the anchor's label, over the whole (gathered) global batch; u are the
classifier's logits, pi_c = n_c / N the training prior, t the adjustment strength (1: logit adjustment).

L_con is SupCon's L^sup_out (Khosla et al., "Supervised Contrastive Learning", arXiv 2004.11362, Eq. 2) [P];
L_ce is the logit-adjusted loss (Menon et al., "Long-tail learning via logit adjustment", arXiv 2007.07314) [P];
their weighted sum is this template's own choice [D].
"""

from __future__ import annotations

from torch import Tensor, nn

from ltreg import (
    Batch,
    ContrastSet,
    LossOutput,
    Outputs,
    StepState,
    flatten_views,
    global_mean,
    logit_adjusted_ce,
    state_contrast,
    supcon,
)


def supcon_la(
    z: Tensor,
    logits: Tensor,
    labels: Tensor,
    log_prior: Tensor,
    *,
    temperature: float = 0.1,
    tau: float = 1.0,
    con_weight: float = 1.0,
    ce_weight: float = 1.0,
    ce_views: tuple[int, ...] = (0,),
    contrast: ContrastSet | None = None,
) -> tuple[Tensor, Tensor, Tensor]:
    """``(total, la_ce, supcon)`` of one process's batch: ``z`` ``[B, V, D]``, ``logits`` ``[B, V, C]``, ``labels`` ``[B]``."""
    con = supcon(z, labels, temperature, contrast=contrast).loss
    ce = logit_adjusted_ce(*flatten_views(logits[:, list(ce_views)], labels), log_prior, tau)
    return ce_weight * ce + con_weight * con, ce, con


class SupConLALoss(nn.Module):
    """The step form: ``loss(outputs, batch, state) -> LossOutput`` (what the trainer calls every step)."""

    def __init__(
        self,
        *,
        temperature: float = 0.1,
        tau: float = 1.0,
        con_weight: float = 1.0,
        ce_weight: float = 1.0,
        ce_views: tuple[int, ...] = (0,),
    ) -> None:
        super().__init__()
        self.temperature, self.tau = temperature, tau
        self.con_weight, self.ce_weight, self.ce_views = con_weight, ce_weight, ce_views

    def forward(self, outputs: Outputs, batch: Batch, state: StepState) -> LossOutput:
        # Contrast the local anchors with the views of the GLOBAL batch (gathered with gradient).
        cs = state_contrast(outputs.z, outputs, batch, state)
        res = supcon(outputs.z, batch.targets, self.temperature, contrast=cs, reduction="none")
        con = global_mean(res, state)  # mean over the global batch's anchors that have a positive
        u, targets = flatten_views(outputs.logits[:, list(self.ce_views)], batch.targets)
        ce = logit_adjusted_ce(u, targets, state.prior.log(), self.tau)
        total = self.ce_weight * ce + self.con_weight * con
        return LossOutput(total, {"la_ce": ce.detach(), "supcon": con.detach()})
