"""Reb-SupCon loss: rebalanced MoCo SupCon + prototype-aware module + classifier.

Paper: Lv, Lei, Zhang, Chen, Li, "Rebalancing in Supervised Contrastive Learning for Long-Tailed Visual
Recognition", Big Data and Cognitive Computing 9(8):204, 2025, doi 10.3390/bdcc9080204 (no arXiv version; the
copy read here has no equation numbers, so the displays are cited by section). Tags: [P] stated in the paper,
[C] the authors' code or README (none released), [D] ours: a default where it is silent or a reading of an
ambiguous passage (said so).

Stage 1 of a two-stage method: this loss trains the encoder, projector and prototypes; a cRT stage 2
(core ``crt``, declared in the spec) trains the classifier on the frozen backbone [D].

``L = L_reb + L_proto + cls_weight * L_cls`` (the paper's total is ``L_reb + L_proto``: ``cls_weight`` is 0 by
default and the classifier is trained by a cRT stage 2) with, for query anchors ``q_i`` (view 0) against the
gathered keys and the labelled queue:

* ``L_reb = sum_i omega(y_i) L_i / D`` over the global batch (§3.3.1, ``L_i`` and ``L_reb`` [P]),
  ``L_i = -1/|P(i)| sum_{p in P(i)} log[ exp(q_i . z_p / tau) / sum_{j in R(i)} exp(q_i . z_j / tau) ]`` the SupCon
  loss of the core :func:`~ltreg.losses.contrastive_loss` (positives = same-class keys + queue). ``omega_norm`` picks ``D``:
  ``"anchors"`` (default) = the number of anchors with a positive [P: the paper's L_reb (§3.3.1) is a plain
  sum of the omega-weighted L_i, read as a mean over anchors as SupCon does]; ``"omega"`` = ``sum_i omega(y_i)``
  over those anchors [D: a weighted mean, L_reb stays on plain SupCon's scale]. The default follows the
  paper's stated effect, "enhancing gradient focus on tail classes while preventing representation degradation
  of head classes" (§1): with ``"anchors"`` a head anchor (omega ~ 1) keeps its SupCon gradient and the tail
  gains; with ``"omega"`` every head gradient shrinks by the batch's mean omega (about x11 measured on
  CIFAR-like counts at tau = 0.05).
* ``omega_max`` bounds omega from above (``None``, default: no bound [P: the paper's omega(c) has none]; a number:
  ``omega <- min(omega, omega_max)`` [D]). The default follows the paper's stated effect of omega (Fig. 2: the
  head / tail gradient disparity shrinks): for a rare class ``omega ~ alpha beta g_c / f(c)``, so the class's
  summed weight ``n_c omega(c)`` no longer grows with its frequency; a bound restores head dominance for every
  class it clips (a tail class reaches omega ~ 177 at tau = 0.05).
* ``omega(c) = 1 + alpha g_c omega_f(c)`` (``"inverse"``, default [D: a reading]) or
  ``1 / (1 + alpha g_c omega_f(c))`` (``"printed"`` [P: §3.3.1 as printed]). The paper states that omega focuses the gradient on tail / hard classes ("we allocate more
  attention to classes with higher learning difficulty"; Fig. 2; lower head accuracy as its limitation); only
  the inverse reading does that, the printed formula damps exactly those classes. ``omega_f(c) = beta / (f(c) + eps)``,
  ``f(c) = n_c / N`` [D], ``g_c`` the mean over the global batch's class-c anchors of ``||dL_i / dq_i||`` [D]:
  the gradient w.r.t. the projected query ``q_i``, a per-sample proxy for the paper's gradient w.r.t. the
  parameters theta (which would need one backward pass per sample); one ``autograd.grad`` on a detached copy,
  optional EMA across steps [D]. omega is a constant in the backward.
* ``L_proto = l1 * swapped prediction + l2 * aggregation + l3 * separation`` over the learnable
  prototypes with Sinkhorn assignments (no gradient) (§3.3.2 [P]; formulas at :func:`prototype_losses`);
  total ``L = L_proto + L_reb`` (§3.4 [P]).
* ``L_cls`` = Balanced Softmax of the linear classifier on the query view [D], weight ``cls_weight`` (0: off).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal, NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ltreg import (
    Batch,
    BuildContext,
    ContrastiveResult,
    ContrastSet,
    LossOutput,
    Outputs,
    StepState,
    balanced_softmax,
    paco,
    state_contrast,
    supcon,
)

OmegaForm = Literal["printed", "inverse"]
OmegaNorm = Literal["anchors", "omega"]
Positives = Literal["samples", "centres"]


@dataclass(frozen=True)
class Defaults:
    """Reb-SupCon's default numbers, written once: the functions' and the loss module's keyword defaults and
    the method's hyper-parameters (``RebSupConHParams``) all read :data:`DEFAULTS`."""

    temperature: float = 0.05  # [P] CIFAR-100-LT (0.2 ImageNet-LT / iNat, set by the recipes)
    alpha: float = 0.5  # [P] rebalancing intensity of omega(c)
    beta: float = 0.1  # [P] focal weight omega_f(c) = beta / (f(c) + eps)
    eps: float = 1e-5  # [P]
    omega_form: OmegaForm = "inverse"  # [D] a reading: the one with the paper's stated effect (see the module doc)
    omega_norm: OmegaNorm = "anchors"  # [P] §3.3.1's plain sum over anchors, as a mean (see the module doc)
    omega_max: float | None = None  # [P] §3.3.1: no bound on omega
    positives: Positives = "samples"  # [D] a reading: z_c as same-class keys
    grad_ema: bool = False  # [D] no smoothing of g_c across steps
    grad_ema_momentum: float = 0.9  # [D]
    lambda_swap: float = 0.5  # [P] lambda1
    lambda_agg: float = 0.3  # [P] lambda2
    lambda_sep: float = 0.2  # [P] lambda3
    delta: float = 1.0  # [P] separation margin
    cls_weight: float = 0.0  # [D] 0: the paper's total L_proto + L_reb (the classifier comes from stage 2)


DEFAULTS = Defaults()


def _identity(x: Tensor) -> Tensor:
    return x


def anchor_losses(
    q: Tensor,
    labels: Tensor,
    contrast: ContrastSet,
    *,
    temperature: float,
    positives: Positives = DEFAULTS.positives,
    logits: Tensor | None = None,
    log_prior: Tensor | None = None,
) -> ContrastiveResult:
    """Per-anchor ``L_i`` ``[B]`` of queries ``q`` ``[B, D]`` against keys + queue.

    ``"samples"`` [D: a reading, default]: SupCon, positives = same-class columns. ``"centres"`` [D: a reading]: the paper's
    ``z_c`` read as PaCo class centres: the only positive is the centre logit ``u_iy + log pi_y``, in one
    softmax with all centres and all sample columns (core ``paco`` with sample-positive weight 0).
    """
    z = q.unsqueeze(1)
    if positives == "samples":
        return supcon(z, labels, temperature, contrast=contrast, reduction="none")
    if logits is None or log_prior is None:
        raise ValueError("positives='centres' needs the classifier logits [B, C] and log_prior [C]")
    return paco(z, labels, logits.unsqueeze(1), log_prior, alpha=0.0, temperature=temperature, contrast=contrast,
                reduction="none")


def anchor_grad_norms(q: Tensor, labels: Tensor, contrast: ContrastSet, **kwargs: Any) -> Tensor:
    """``||dL_i/dq_i||`` ``[B]`` from one ``autograd.grad`` of ``sum_i L_i`` on a detached copy of ``q``.

    Exact per sample because ``L_i`` depends on ``q_i`` only (keys, queue and logits are constants here).
    """
    kwargs = {k: v.detach() if isinstance(v, Tensor) else v for k, v in kwargs.items()}
    contrast = contrast._replace(z=contrast.z.detach())
    with torch.enable_grad():
        leaf = q.detach().requires_grad_(True)
        (grad,) = torch.autograd.grad(anchor_losses(leaf, labels, contrast, **kwargs).loss.sum(), leaf)
    return grad.norm(dim=-1)


def class_mean(values: Tensor, labels: Tensor, num_classes: int, mask: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """Per-class mean of ``values`` ``[N]`` over the entries in ``mask``, and which classes had one ``[C]``."""
    w = torch.ones_like(values) if mask is None else mask.to(values.dtype)
    counts = torch.zeros(num_classes, dtype=values.dtype, device=values.device).index_add_(0, labels, w)
    sums = torch.zeros_like(counts).index_add_(0, labels, values * w)
    return sums / counts.clamp_min(1), counts > 0


def rebalance_factor(
    grad_c: Tensor, prior: Tensor, *, alpha: float = DEFAULTS.alpha, beta: float = DEFAULTS.beta,
    eps: float = DEFAULTS.eps, form: OmegaForm = DEFAULTS.omega_form, omega_max: float | None = DEFAULTS.omega_max,
) -> Tensor:
    """``omega(c)`` ``[C]``: ``1 + alpha g_c beta / (f_c + eps)`` (``"inverse"`` [D: a reading], up-weights rare
    classes with large gradients, the paper's stated effect) or ``1 / (1 + ...)`` as printed (``"printed"`` [P],
    damps them); then ``min(omega, omega_max)`` when ``omega_max`` is set [D]."""
    x = alpha * grad_c * (beta / (prior.to(grad_c.dtype) + eps))
    if form == "printed":
        omega = 1.0 / (1.0 + x)
    elif form == "inverse":
        omega = 1.0 + x
    else:
        raise ValueError(f"omega_form must be 'printed' or 'inverse', got {form!r}")
    return omega if omega_max is None else omega.clamp_max(omega_max)


class RebResult(NamedTuple):
    """``loss`` ``[B]`` = ``omega(y_i) L_i`` (0 without a positive), ``num_pos`` ``[B]``, ``omega`` and ``grad_c`` ``[C]``."""

    loss: Tensor
    num_pos: Tensor
    omega: Tensor
    grad_c: Tensor


def reb_supcon(
    q: Tensor,
    labels: Tensor,
    contrast: ContrastSet,
    prior: Tensor,
    *,
    temperature: float = DEFAULTS.temperature,
    alpha: float = DEFAULTS.alpha,
    beta: float = DEFAULTS.beta,
    eps: float = DEFAULTS.eps,
    omega_form: OmegaForm = DEFAULTS.omega_form,
    omega_max: float | None = DEFAULTS.omega_max,
    positives: Positives = DEFAULTS.positives,
    logits: Tensor | None = None,
    gather: Callable[[Tensor], Tensor] = _identity,
    smooth: Callable[[Tensor, Tensor], Tensor] | None = None,
) -> RebResult:
    """Rebalanced per-anchor losses; ``g_c`` is averaged over ``gather``-ed anchors that have a positive
    (the global batch), then optionally ``smooth``-ed (EMA); omega is detached."""
    kw: dict[str, Any] = {"temperature": temperature, "positives": positives, "logits": logits,
                          "log_prior": prior.log() if positives == "centres" else None}
    norms = anchor_grad_norms(q, labels, contrast, **kw)
    res = anchor_losses(q, labels, contrast, **kw)
    has_pos = (res.num_pos > 0).to(norms.dtype)
    grad_c, present = class_mean(gather(norms), gather(labels), prior.shape[0], gather(has_pos))
    if smooth is not None:
        grad_c = smooth(grad_c, present)
    omega = rebalance_factor(grad_c, prior, alpha=alpha, beta=beta, eps=eps, form=omega_form,
                             omega_max=omega_max).detach()
    return RebResult(omega.to(res.loss.dtype)[labels] * res.loss, res.num_pos, omega, grad_c)


def normalise_reb(res: RebResult, labels: Tensor, mode: OmegaNorm, all_reduce_mean: Callable[[Tensor], Tensor]) -> Tensor:
    """``L_reb``: the local sum of ``omega(y_i) L_i`` over the process-mean denominator ``D`` (``omega_norm``).

    ``"anchors"``: ``D`` = anchors with a positive; ``"omega"``: ``D`` = their summed ``omega(y_i)`` (a constant
    in the backward, like omega). With the gather's summed backward and DDP's averaging, the exact global value.
    """
    has_pos = (res.num_pos > 0).to(res.loss.dtype)
    if mode == "anchors":
        local = has_pos.sum()
    elif mode == "omega":
        local = (res.omega.to(res.loss.dtype)[labels] * has_pos).sum()
    else:
        raise ValueError(f"omega_norm must be 'anchors' or 'omega', got {mode!r}")
    return res.loss.sum() / all_reduce_mean(local.detach()).clamp_min(1e-6)


def prototype_losses(
    zq: Tensor, zk: Tensor, protos: Tensor, qq: Tensor, qk: Tensor, *, temperature: float,
    delta: float = DEFAULTS.delta,
) -> tuple[Tensor, Tensor, Tensor]:
    """Swapped prediction L1 and aggregation L2 (means over the ``B`` local anchors), separation L3.

    ``P = softmax(Z C^T / tau)``; ``L1 = 1/(2B) sum_i [H(Qk_i, Pq_i) + H(Qq_i, Pk_i)]``;
    ``L2 = 1/B sum_i sum_k Qq_ik ||zq_i - c_k||^2``; ``L3 = sum_{k != k'} max(0, delta - ||c_k - c_k'||^2)``.
    ``zk`` (keys) and the assignments ``qq``, ``qk`` ``[B, K]`` carry no gradient.
    """
    zk, qq, qk = zk.detach(), qq.detach(), qk.detach()
    log_pq = F.log_softmax(zq @ protos.T / temperature, dim=1)
    log_pk = F.log_softmax(zk @ protos.T / temperature, dim=1)
    l1 = -0.5 * ((qk * log_pq).sum(1) + (qq * log_pk).sum(1)).mean()
    c2 = protos.pow(2).sum(1)
    # sum_k Q_ik ||z_i - c_k||^2 = ||z_i||^2 sum_k Q_ik - 2 z_i . (Q C)_i + sum_k Q_ik ||c_k||^2
    l2 = (zq.pow(2).sum(1) * qq.sum(1) - 2 * (zq * (qq @ protos)).sum(1) + qq @ c2).mean()
    sq = (c2.unsqueeze(1) + c2.unsqueeze(0) - 2 * protos @ protos.T).clamp_min(0)
    off = ~torch.eye(protos.shape[0], dtype=torch.bool, device=protos.device)
    l3 = ((delta - sq).clamp_min(0) * off).sum()
    return l1, l2, l3


class RebSupConLoss(nn.Module):
    """Reb-SupCon total loss; needs the ``moco`` memory (``key_z``, queue) and ``learnable`` prototypes.

    Buffers ``grad_ema`` / ``grad_seen`` ``[C]`` hold the EMA of ``g_c`` when ``grad_ema`` is on.
    """

    def __init__(
        self,
        *,
        num_classes: int,
        temperature: float = DEFAULTS.temperature,
        alpha: float = DEFAULTS.alpha,
        beta: float = DEFAULTS.beta,
        eps: float = DEFAULTS.eps,
        omega_form: OmegaForm = DEFAULTS.omega_form,
        omega_norm: OmegaNorm = DEFAULTS.omega_norm,
        omega_max: float | None = DEFAULTS.omega_max,
        positives: Positives = DEFAULTS.positives,
        grad_ema: bool = DEFAULTS.grad_ema,
        grad_ema_momentum: float = DEFAULTS.grad_ema_momentum,
        lambda_swap: float = DEFAULTS.lambda_swap,
        lambda_agg: float = DEFAULTS.lambda_agg,
        lambda_sep: float = DEFAULTS.lambda_sep,
        delta: float = DEFAULTS.delta,
        cls_weight: float = DEFAULTS.cls_weight,
        query_view: int = 0,
    ) -> None:
        super().__init__()
        if omega_form not in ("printed", "inverse"):
            raise ValueError(f"omega_form must be 'printed' or 'inverse', got {omega_form!r}")
        if omega_norm not in ("anchors", "omega"):
            raise ValueError(f"omega_norm must be 'anchors' or 'omega', got {omega_norm!r}")
        if omega_max is not None and not omega_max > 0:
            raise ValueError(f"omega_max must be > 0 or None (no bound), got {omega_max!r}")
        if positives not in ("samples", "centres"):
            raise ValueError(f"positives must be 'samples' or 'centres', got {positives!r}")
        self.temperature, self.alpha, self.beta, self.eps = temperature, alpha, beta, eps
        self.omega_form, self.omega_norm, self.omega_max, self.positives = omega_form, omega_norm, omega_max, positives
        self.use_ema, self.ema_momentum = grad_ema, grad_ema_momentum
        self.lambdas, self.delta = (lambda_swap, lambda_agg, lambda_sep), delta
        self.cls_weight, self.query_view = cls_weight, query_view
        self.register_buffer("grad_ema", torch.zeros(num_classes))
        self.register_buffer("grad_seen", torch.zeros(num_classes, dtype=torch.bool))

    @classmethod
    def from_context(cls, ctx: BuildContext, **kwargs: Any) -> RebSupConLoss:
        """Take ``num_classes`` from the run."""
        kwargs.setdefault("num_classes", ctx.num_classes)
        return cls(**kwargs)

    @torch.no_grad()
    def smooth(self, grad_c: Tensor, present: Tensor) -> Tensor:
        """EMA of ``g_c`` over steps for classes in the batch (first sighting: the batch value); identity when off."""
        if not self.use_ema:
            return grad_c
        m = self.ema_momentum
        ema = self.grad_ema.to(grad_c.dtype)
        new = torch.where(self.grad_seen, m * ema + (1 - m) * grad_c, grad_c)
        new = torch.where(present, new, ema)
        self.grad_ema.copy_(new)
        self.grad_seen |= present
        return new

    def forward(self, outputs: Outputs, batch: Batch, state: StepState) -> LossOutput:
        if "key_z" not in outputs.extra or state.memory is None:
            raise ValueError("Reb-SupCon needs the 'moco' memory part (key projections outputs.extra['key_z'] and a queue)")
        if state.prototypes is None or not hasattr(state.prototypes, "assign"):
            raise ValueError("Reb-SupCon needs the 'learnable' prototypes part (prototypes() and assign())")
        zq, zk = outputs.z[:, self.query_view], outputs.extra["key_z"]
        logits = outputs.logits[:, self.query_view]
        cs = state_contrast(zq.unsqueeze(1), outputs, batch, state, include_views=False)
        reb = reb_supcon(zq, batch.targets, cs, state.prior, temperature=self.temperature, alpha=self.alpha,
                         beta=self.beta, eps=self.eps, omega_form=self.omega_form, omega_max=self.omega_max,
                         positives=self.positives, logits=logits, gather=state.gather_nograd, smooth=self.smooth)
        l_reb = normalise_reb(reb, batch.targets, self.omega_norm, state.all_reduce_mean)
        p = state.prototypes
        l1, l2, l3 = prototype_losses(zq, zk, p.prototypes(), p.assign(zq), p.assign(zk),
                                      temperature=self.temperature, delta=self.delta)
        l_proto = self.lambdas[0] * l1 + self.lambdas[1] * l2 + self.lambdas[2] * l3
        l_cls = balanced_softmax(logits, batch.targets, state.class_counts)
        total = l_reb + l_proto + self.cls_weight * l_cls if self.cls_weight else l_reb + l_proto
        parts = {"reb": l_reb, "swap": l1, "agg": l2, "sep": l3, "cls": l_cls,
                 "omega": reb.omega[batch.targets].mean()}
        return LossOutput(total, {k: v.detach() for k, v in parts.items()})
