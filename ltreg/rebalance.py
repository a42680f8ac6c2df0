"""Stage-2 rebalancers: cRT, LWS, tau-norm, NCM, post-hoc LA, KD.

cRT, LWS, tau-norm and NCM are Kang et al., "Decoupling Representation and Classifier for Long-Tailed
Recognition" (ICLR 2020, arXiv 1910.09217); post-hoc LA is Menon et al., "Long-tail learning via logit
adjustment" (ICLR 2021, arXiv 2007.07314); KD is ICCL's stage 2 (Tiong et al., arXiv 2110.10048, Eq. 9)
with Hinton et al.'s distillation loss (arXiv 1503.02531). Each class's docstring gives its rule.

The trainer drives every rebalancer through one interface (:class:`Rebalancer`):

1. ``params = r.setup(model)`` freezes / re-initialises parts of the (unwrapped) model and returns
   what stage 2 trains: a list of parameters, or a list of param-group dicts
   ``{"params": [...], "lr_scale": float}`` (the group's lr is ``lr * lr_scale``).
   Call it before loading a mid-stage-2 checkpoint so the checkpoint's tensors land in the
   re-built modules (LWS's scaled classifier, KD's teacher).
2. for ``r.epochs`` epochs with sampler ``r.sampler(**r.sampler_kwargs)`` and views ``r.views``:
   ``r.loss(outputs, batch, state) -> LossOutput``, optimizer at ``r.lr`` (None: the trainer's).
3. ``r.finalize(model, ctx) -> dict``: the post-hoc step (tau-norm, NCM, LA, LWS folding); the dict
   says what it chose and is logged / written to the model card.

Frozen modules are put in eval mode and kept there (a forward pre-hook, removed by ``finalize``),
so BatchNorm statistics of a frozen backbone do not drift while the trainer calls ``model.train()``.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ltreg.distributed import unwrap as _unwrap
from ltreg.errors import RebalanceError
from ltreg.losses.classification import global_weight_factor, ldam_margins
from ltreg.step import Batch, BuildContext, LossOutput, Outputs, StepState


def _keep_eval(module: nn.Module, args: Any) -> None:
    if module.training:
        module.eval()


def balanced_accuracy(logits: Tensor, labels: Tensor, num_classes: int) -> Tensor:
    """Mean per-class recall over the classes present in ``labels`` (a 0-dim tensor)."""
    hit = torch.bincount(labels[logits.argmax(-1) == labels], minlength=num_classes).double()
    n = torch.bincount(labels, minlength=num_classes).double()
    present = n > 0
    return (hit[present] / n[present]).mean()


def kd_loss(student: Tensor, teacher: Tensor, temperature: float) -> Tensor:
    """``T^2 * KL(softmax(teacher/T) || softmax(student/T))``, averaged over the batch.

    Hinton, Vinyals, Dean, "Distilling the Knowledge in a Neural Network" (arXiv 1503.02531) [P]: the ``T^2``
    factor keeps the soft targets' gradient scale independent of ``T``.
    """
    t = temperature
    return F.kl_div(F.log_softmax(student / t, -1), F.log_softmax(teacher.detach() / t, -1),
                    reduction="batchmean", log_target=True) * t * t


def inverse_frequency_weights(counts: Tensor) -> Tensor:
    """Class weights proportional to 1 / n_c, normalised to mean 1."""
    w = 1.0 / counts.double().clamp_min(1)
    return (w / w.mean()).float()


def _reset_classifier(cls: nn.Module) -> None:
    if hasattr(cls, "reset_parameters"):
        cls.reset_parameters()
    elif isinstance(getattr(cls, "weight", None), nn.Parameter):  # CosineLinear: its own init
        w = cls.weight
        with torch.no_grad():
            w.uniform_(-1, 1).div_(w.shape[1] ** 0.5)
    else:
        raise RebalanceError(f"cannot re-initialise classifier {type(cls).__name__}: no reset_parameters / weight")


class Rebalancer(nn.Module):
    """Base of stage-2 rebalancers: attributes the loop reads, and the setup / loss / finalize hooks.

    The base ``setup`` freezes the whole model and trains nothing (post-hoc rebalancers);
    the base ``loss`` is CE on the first view's logits. A rebalancer that tunes on data held out of
    the training set says so with the class attribute ``needs_holdout``: the run builder carves that
    split before any part sees the training set.
    """

    needs_holdout: ClassVar[bool] = False

    def __init__(self, epochs: int = 0, sampler: str = "class-balanced", sampler_kwargs: dict[str, Any] | None = None,
                 lr: float | None = None, views: Sequence[str] = ("cls",), freeze_backbone: bool = True) -> None:
        super().__init__()
        if epochs < 0:
            raise RebalanceError(f"{type(self).__name__}: epochs must be >= 0, got {epochs}")
        self.epochs, self.sampler, self.sampler_kwargs = int(epochs), sampler, dict(sampler_kwargs or {})
        self.lr, self.views, self.freeze_backbone = lr, tuple(views), freeze_backbone
        self._hooks: list[Any] = []

    def _freeze(self, module: nn.Module) -> None:
        """requires_grad False, eval mode, and kept in eval mode until ``finalize``."""
        module.requires_grad_(False).eval()
        self._hooks.append(module.register_forward_pre_hook(_keep_eval))

    def _release(self) -> None:
        for h in self._hooks:
            h.remove()
        self._hooks.clear()

    def setup(self, model: nn.Module) -> list[Any]:
        """Freeze everything; nothing is trained."""
        _unwrap(model).requires_grad_(False)
        return []

    def loss(self, outputs: Outputs, batch: Batch, state: StepState) -> LossOutput:
        """Cross-entropy on the first view's logits."""
        ce = F.cross_entropy(outputs.logits[:, 0], batch.targets)
        return LossOutput(ce, {"ce": ce.detach()})

    def finalize(self, model: nn.Module, ctx: BuildContext) -> dict[str, Any]:
        """Post-hoc step after the stage-2 loop; returns what it chose."""
        self._release()
        return {}


# ------------------------------------------------------------------------------------------------
class CRT(Rebalancer):
    """Classifier re-training (cRT; Kang et al., arXiv 1910.09217) [P]: re-initialised classifier on a frozen
    backbone, trained with class-balanced sampling.

    ``loss="ce"`` or ``"ldam"`` (Cao et al., arXiv 1906.07413, Eqs. 12-13: ``CE(u - Delta_y e_y, y)`` with
    the margins of :func:`~ltreg.losses.classification.ldam_margins`, max ``max_margin``, in logit units; times the
    classifier's ``scale`` for a cosine classifier), ``reweight="inverse"``: class weights 1/n_c with
    mean 1 (CoGloAT's stage 2: LDAM / CE + Reweight); weighted CE is normalised by the weights' sum.
    """

    def __init__(self, epochs: int = 10, sampler: str = "class-balanced", reweight: str | None = None,
                 loss: str = "ce", lr: float | None = None, sampler_kwargs: dict[str, Any] | None = None,
                 max_margin: float = 0.5, reinit: bool = True) -> None:
        super().__init__(epochs, sampler, sampler_kwargs, lr)
        if reweight not in (None, "none", "inverse"):
            raise RebalanceError(f"cRT reweight must be None or 'inverse', got {reweight!r}")
        if loss not in ("ce", "ldam"):
            raise RebalanceError(f"cRT loss must be 'ce' or 'ldam', got {loss!r}")
        self.reweight, self.loss_type, self.max_margin, self.reinit = reweight, loss, max_margin, reinit
        self._margin_scale = 1.0

    def setup(self, model: nn.Module) -> list[Any]:
        model = _unwrap(model)
        self._freeze(model.backbone)
        self._freeze(model.projector)
        if self.reinit:
            _reset_classifier(model.classifier)
        self._margin_scale = float(getattr(model.classifier, "scale", 1.0))
        return list(model.classifier.requires_grad_(True).parameters())

    def loss(self, outputs: Outputs, batch: Batch, state: StepState) -> LossOutput:
        logits, y = outputs.logits[:, 0], batch.targets
        counts = state.class_counts.to(logits.device)
        if self.loss_type == "ldam":
            margin = ldam_margins(counts, self.max_margin).to(logits.dtype) * self._margin_scale
            logits = logits - F.one_hot(y, logits.shape[-1]).to(logits.dtype) * margin[y, None]
        weight = inverse_frequency_weights(counts).to(logits.dtype) if self.reweight == "inverse" else None
        ce = F.cross_entropy(logits, y, weight=weight)
        if weight is not None and state.world_size > 1:  # normalise by the global batch's weight sum
            ce = ce * global_weight_factor(weight, y, state)
        return LossOutput(ce, {self.loss_type: ce.detach()})


# ------------------------------------------------------------------------------------------------
class ScaledClassifier(nn.Module):
    """LWS classifier: u_c = f_c * base(h)_c, with the frozen original classifier and ``scales [C]``."""

    def __init__(self, base: nn.Module, num_classes: int | None = None) -> None:
        super().__init__()
        self.base = base
        c = num_classes or base.weight.shape[0]
        self.scales = nn.Parameter(torch.ones(c, device=base.weight.device))

    @property
    def weight(self) -> Tensor:
        """The base classifier's weight (unscaled)."""
        return self.base.weight

    def forward(self, h: Tensor) -> Tensor:
        return self.base(h) * self.scales

    @torch.no_grad()
    def fold(self) -> nn.Module:
        """An equivalent plain ``nn.Linear`` (f_c w_c, f_c b_c) when the base is linear, else ``self``."""
        if type(self.base) is not nn.Linear:
            return self
        lin = copy.deepcopy(self.base)
        lin.weight.mul_(self.scales[:, None])
        if lin.bias is not None:
            lin.bias.mul_(self.scales)
        return lin.requires_grad_(False)


class LWS(Rebalancer):
    """Learnable weight scaling (LWS; Kang et al., arXiv 1910.09217): one scale per class on the frozen classifier.

    ``finalize`` folds the scales into a plain linear classifier when ``fold`` (artifacts keep the
    standard architecture); a cosine classifier stays wrapped in :class:`ScaledClassifier`.
    """

    def __init__(self, epochs: int = 5, sampler: str = "class-balanced", lr: float | None = None,
                 sampler_kwargs: dict[str, Any] | None = None, fold: bool = True) -> None:
        super().__init__(epochs, sampler, sampler_kwargs, lr)
        self.fold = fold

    def setup(self, model: nn.Module) -> list[Any]:
        model = _unwrap(model)
        self._freeze(model.backbone)
        self._freeze(model.projector)
        if not isinstance(model.classifier, ScaledClassifier):
            model.classifier = ScaledClassifier(model.classifier)
        model.classifier.base.requires_grad_(False)
        return [model.classifier.scales.requires_grad_(True)]

    def finalize(self, model: nn.Module, ctx: BuildContext) -> dict[str, Any]:
        self._release()
        model = _unwrap(model)
        cls = model.classifier
        if not isinstance(cls, ScaledClassifier):
            return {}
        scales = cls.scales.detach()
        out = {"scale_min": float(scales.min()), "scale_max": float(scales.max()), "folded": False}
        if self.fold:
            folded = cls.fold()
            out["folded"] = folded is not cls
            model.classifier = folded
        return out


# ------------------------------------------------------------------------------------------------
class TauNorm(Rebalancer):
    """tau-normalisation: w_c <- w_c / ||w_c||^tau, tau chosen by balanced accuracy on the holdout split.

    The bias (if any) is kept, so tau = 0 is the unchanged classifier; ties go to the smaller tau.
    Never selects on test data: it reads ``ctx.features("holdout")``.
    """

    needs_holdout = True

    def __init__(self, grid: Sequence[float] | None = None, split: str = "holdout") -> None:
        super().__init__(epochs=0)
        self.grid = tuple(grid) if grid is not None else tuple(round(0.1 * i, 1) for i in range(21))
        self.split = split

    @staticmethod
    def normalized(weight: Tensor, tau: float) -> Tensor:
        return weight / weight.norm(dim=1, keepdim=True).pow(tau)

    @torch.no_grad()
    def finalize(self, model: nn.Module, ctx: BuildContext) -> dict[str, Any]:
        self._release()
        model = _unwrap(model)
        cls = model.classifier
        if type(cls) is not nn.Linear:
            raise RebalanceError(
                f"tau-norm rescales the rows of a linear classifier; this model's classifier is "
                f"{type(cls).__name__} (a cosine classifier is already norm-free). Use 'lws' or 'ncm' instead."
            )
        if ctx.features is None:
            raise RebalanceError("tau-norm needs BuildContext.features to read the holdout split")
        feats, labels = ctx.features(self.split)
        feats, labels = feats.to(cls.weight.device, cls.weight.dtype), labels.to(cls.weight.device).long()
        accs = torch.stack([balanced_accuracy(F.linear(feats, self.normalized(cls.weight, t), cls.bias), labels,
                                              cls.weight.shape[0]) for t in self.grid])
        best = int(torch.argmax(accs))  # first maximum = smallest tau
        tau = float(self.grid[best])
        cls.weight.copy_(self.normalized(cls.weight, tau))
        return {"tau": tau, "holdout_balanced_accuracy": float(accs[best])}


# ------------------------------------------------------------------------------------------------
class NCMClassifier(nn.Module):
    """Nearest-class-mean classifier with buffer ``means [C, F]``: logits are cosine or -squared distance."""

    def __init__(self, means: Tensor, metric: str = "cosine") -> None:
        super().__init__()
        if metric not in ("cosine", "euclidean"):
            raise RebalanceError(f"NCM metric must be 'cosine' or 'euclidean', got {metric!r}")
        self.metric = metric
        self.register_buffer("means", means.clone())

    @property
    def weight(self) -> Tensor:
        return self.means

    def forward(self, h: Tensor) -> Tensor:
        mu = self.means.to(h.dtype)
        if self.metric == "cosine":
            return F.normalize(h, dim=-1) @ F.normalize(mu, dim=-1).t()
        return 2 * h @ mu.t() - (mu * mu).sum(-1) - (h * h).sum(-1, keepdim=True)


class NCM(Rebalancer):
    """Replace the classifier by the nearest class mean of training features (cosine: of L2-normalised ones)."""

    def __init__(self, metric: str = "cosine", split: str = "train") -> None:
        super().__init__(epochs=0)
        if metric not in ("cosine", "euclidean"):
            raise RebalanceError(f"NCM metric must be 'cosine' or 'euclidean', got {metric!r}")
        self.metric, self.split = metric, split

    @torch.no_grad()
    def finalize(self, model: nn.Module, ctx: BuildContext) -> dict[str, Any]:
        self._release()
        model = _unwrap(model)
        if ctx.features is None:
            raise RebalanceError("NCM needs BuildContext.features to read training features")
        feats, labels = ctx.features(self.split)
        feats, labels = feats.float(), labels.long().to(feats.device)
        if self.metric == "cosine":
            feats = F.normalize(feats, dim=-1)
        c = ctx.num_classes
        counts = torch.bincount(labels, minlength=c)
        if bool((counts == 0).any()):
            missing = torch.nonzero(counts == 0).flatten()[:10].tolist()
            raise RebalanceError(f"NCM: classes {missing} have no {self.split} features; every class needs a mean")
        means = torch.zeros(c, feats.shape[1], device=feats.device).index_add_(0, labels, feats) / counts[:, None]
        device = next(model.parameters()).device
        model.classifier = NCMClassifier(means.to(device), self.metric)
        return {"metric": self.metric}


# ------------------------------------------------------------------------------------------------
class PostHocLogitAdjust(Rebalancer):
    """Post-hoc logit adjustment (Menon et al., arXiv 2007.07314): bias_c -= tau * log pi_c of a linear classifier."""

    def __init__(self, tau: float = 1.0) -> None:
        super().__init__(epochs=0)
        self.tau = tau

    @torch.no_grad()
    def finalize(self, model: nn.Module, ctx: BuildContext) -> dict[str, Any]:
        self._release()
        cls = _unwrap(model).classifier
        if not isinstance(cls, nn.Linear) or cls.bias is None:
            raise RebalanceError(
                f"post-hoc logit adjustment subtracts tau*log(prior) from the classifier's bias; this model's "
                f"classifier is {type(cls).__name__}{' without bias' if isinstance(cls, nn.Linear) else ''}. "
                f"Use a linear classifier with bias (ModelSpec(classifier='linear')) or train with the "
                f"'logit-adjusted-ce' loss instead."
            )
        counts = ctx.class_counts
        if bool((counts == 0).any()):
            raise RebalanceError("post-hoc logit adjustment: a class has no training samples (log prior = -inf)")
        prior = (counts.double() / counts.sum()).to(cls.bias.device)
        cls.bias.sub_((self.tau * prior.log()).to(cls.bias.dtype))
        return {"tau": self.tau}


# ------------------------------------------------------------------------------------------------
class KDRebalance(Rebalancer):
    """ICCL stage 2 (Tiong et al., arXiv 2110.10048, Eq. 9): class-aware sampling (gamma) + CE +
    kd_weight * T^2 * KL(teacher || student).

    The teacher is a frozen copy of the stage-1 classifier (on the shared frozen features) or, when
    the backbone is fine-tuned, of backbone + classifier; it is a submodule, so checkpoints hold it.
    The student classifier is fine-tuned from its stage-1 weights unless ``reinit``. With an unfrozen
    backbone ``setup`` returns param groups: classifier at lr, backbone at lr * ``backbone_lr_scale``.
    """

    def __init__(self, epochs: int = 10, gamma: float = 1.0, kd_weight: float = 0.5, temperature: float = 2.0,
                 freeze_backbone: bool = True, backbone_lr_scale: float = 0.1, reinit: bool = False,
                 lr: float | None = None) -> None:
        super().__init__(epochs, "class-aware", {"gamma": gamma}, lr, freeze_backbone=freeze_backbone)
        if temperature <= 0:
            raise RebalanceError(f"KD temperature must be > 0, got {temperature}")
        self.kd_weight, self.temperature, self.backbone_lr_scale, self.reinit = kd_weight, temperature, backbone_lr_scale, reinit
        self.teacher: nn.Module | None = None

    def setup(self, model: nn.Module) -> list[Any]:
        model = _unwrap(model)
        src = model.classifier if self.freeze_backbone else nn.Sequential(model.backbone, model.classifier)
        self.teacher = copy.deepcopy(src).requires_grad_(False).eval()
        self._freeze(model.projector)
        if self.reinit:
            _reset_classifier(model.classifier)
        head = list(model.classifier.requires_grad_(True).parameters())
        if self.freeze_backbone:
            self._freeze(model.backbone)
            return head
        body = list(model.backbone.requires_grad_(True).parameters())
        return [{"params": head, "lr_scale": 1.0}, {"params": body, "lr_scale": self.backbone_lr_scale}]

    @torch.no_grad()
    def teacher_logits(self, outputs: Outputs, batch: Batch) -> Tensor:
        """Teacher logits of view 0: on the features when the backbone is frozen, else on the images."""
        if self.teacher is None:
            raise RebalanceError("KDRebalance.setup(model) must run before the stage-2 loss")
        x = outputs.features[:, 0] if self.freeze_backbone else batch.images[:, 0]
        if self.teacher.training:
            self.teacher.eval()
        p = next(self.teacher.parameters(), None)
        if p is not None and p.device != x.device:
            self.teacher.to(x.device)
        return self.teacher(x)

    def loss(self, outputs: Outputs, batch: Batch, state: StepState) -> LossOutput:
        student = outputs.logits[:, 0]
        ce = F.cross_entropy(student, batch.targets)
        kd = kd_loss(student, self.teacher_logits(outputs, batch).to(student.dtype), self.temperature)
        return LossOutput(ce + self.kd_weight * kd, {"ce": ce.detach(), "kd": kd.detach()})
