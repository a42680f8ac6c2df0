"""ICCL's loss: uniform-branch CE, interpolative centroid contrastive loss, mixup CE.

Paper: Tiong, Li, Lin, Li, Xiong, Hoi, "Improving Tail-Class Representation with Centroid Contrastive
Learning", arXiv 2110.10048. The copy read here lost its inline symbols and numbers, so the structure is
[P] and the symbols are re-introduced [R]. With p(k | z) = softmax_k(z . c_k / tau) over the EMA class
centroids c (Eq. 4; ``state.prototypes``, no gradient):

* warm-up (``state.epoch < T_w``, T_w about half of training [P]):  L = L_ce + L_cc,  L_ce = CE(u(x^a), y^a)
  (Eq. 6),  L_cc = -log p(y^a | z^a) (the non-interpolative centroid loss [P])
* afterwards (Eq. 8):  L = w_u L_ce + w_I (L_icc + L_ce^I) with
  L_icc = -[lam log p(y^a | z^I) + (1 - lam) log p(y^b | z^I)] (Eq. 5) and L_ce^I the mixup CE of u(x^I) (Eq. 7).

The weights w_u, w_I are stripped in the copy read ([D] 1; w_u = 0 after the warm-up on CIFAR [R]), and so is
tau ([D] 0.1, MoPro's).

The batch is the pair-mixup layout: views ``[:V]`` are x^a, views ``[V:]`` are x^I (``extra["lam"]``,
``extra["targets_b"]``); during the warm-up an unmixed batch (views = x^a only) is accepted too.

Classes whose centroid has not been initialised yet (the EMA module sets a class to its first batch
mean after the step that first sees it; at step 0 none is) are left out of the softmax, and a centroid
term whose target class is uninitialised counts 0. Every term is averaged over all samples, so the
loss is finite, and exactly L_ce, before any centroid exists.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ltreg import Batch, LossOutput, Outputs, StepState, mixup_ce
from ltreg_iccl.schedule import in_warmup


def _f32(x: Tensor) -> Tensor:
    return x.to(torch.promote_types(x.dtype, torch.float32))


def centroid_log_probs(z: Tensor, centroids: Tensor, temperature: float, valid: Tensor | None = None) -> Tensor:
    """``log p(k | z)`` ``[N, C]`` = log_softmax_k(z . c_k / tau) over the classes with ``valid`` centroids.

    Invalid classes get the most negative finite logit (probability 0, no NaN even when no class is valid).
    """
    sim = _f32(z) @ centroids.detach().to(torch.promote_types(z.dtype, torch.float32)).t() / temperature
    if valid is not None:
        sim = sim.masked_fill(~valid.to(sim.device, torch.bool)[None, :], torch.finfo(sim.dtype).min)
    return F.log_softmax(sim, dim=-1)


def _nll(logp: Tensor, y: Tensor, valid: Tensor | None) -> Tensor:
    """Per-sample ``-log p(y | z)``; 0 where class y has no centroid yet (with zero gradient, never NaN)."""
    nll = -logp.gather(1, y[:, None]).squeeze(1)
    if valid is None:
        return nll
    return torch.where(valid.to(y.device, torch.bool)[y], nll, torch.zeros_like(nll))


class ICCLLoss(nn.Module):
    """ICCL's stage-1 loss with its warm-up curriculum (registered as loss ``iccl``).

    ``uniform_weight_after_warmup`` is w_u (the paper sets it to 0 on CIFAR), ``interp_weight`` is w_I;
    during the warm-up both terms have weight 1.
    """

    def __init__(self, temperature: float = 0.1, warmup_fraction: float = 0.5,
                 uniform_weight_after_warmup: float = 1.0, interp_weight: float = 1.0) -> None:
        super().__init__()
        if not temperature > 0:
            raise ValueError(f"ICCL temperature must be > 0, got {temperature}")
        if not 0.0 <= warmup_fraction <= 1.0:
            raise ValueError(f"ICCL warmup_fraction must be in [0, 1], got {warmup_fraction}")
        if uniform_weight_after_warmup < 0 or interp_weight < 0:
            raise ValueError("ICCL loss weights must be >= 0")
        self.temperature, self.warmup_fraction = float(temperature), float(warmup_fraction)
        self.uniform_weight, self.interp_weight = float(uniform_weight_after_warmup), float(interp_weight)

    @staticmethod
    def _centroids(state: StepState) -> tuple[Tensor, Tensor | None]:
        protos = state.prototypes
        if protos is None or not hasattr(protos, "centroids"):
            raise ValueError("the ICCL loss reads class centroids from state.prototypes: declare "
                             "prototypes=PartRef('ema-centroids') in the method spec")
        return protos.centroids(), getattr(protos, "initialized", None)

    def forward(self, outputs: Outputs, batch: Batch, state: StepState) -> LossOutput:
        centroids, valid = self._centroids(state)
        z, logits, ya = outputs.z, outputs.logits, batch.targets
        mixed = "lam" in batch.extra
        views = z.shape[1]
        if mixed and views % 2:
            raise ValueError(f"ICCL: a mixed batch has views (x^a, x^I) in equal numbers, got {views} views")
        v = views // 2 if mixed else views
        za, ua, ya_v = z[:, :v].flatten(0, 1), logits[:, :v].flatten(0, 1), ya.repeat_interleave(v)
        ce = F.cross_entropy(_f32(ua), ya_v)
        if in_warmup(state, self.warmup_fraction):
            cc = _nll(centroid_log_probs(za, centroids, self.temperature, valid), ya_v, valid).mean()
            return LossOutput(ce + cc, {"ce": ce.detach(), "cc": cc.detach()})
        if not mixed:
            raise ValueError("ICCL after the warm-up needs the interpolative branch: use the 'paired' sampler with "
                             "the 'iccl-pair-mixup' (or 'pair-mixup') batch transform")
        zi, ui = z[:, v:].flatten(0, 1), logits[:, v:].flatten(0, 1)
        yb_v = batch.extra["targets_b"].repeat_interleave(v)
        lam = _f32(batch.extra["lam"]).repeat_interleave(v)
        logp = centroid_log_probs(zi, centroids, self.temperature, valid)
        icc = (lam * _nll(logp, ya_v, valid) + (1 - lam) * _nll(logp, yb_v, valid)).mean()
        ce_mix = mixup_ce(ui, ya_v, yb_v, lam)
        total = self.uniform_weight * ce + self.interp_weight * (icc + ce_mix)
        return LossOutput(total, {"ce": ce.detach(), "icc": icc.detach(), "ce_mix": ce_mix.detach()})
