"""Reb-SupCon for ltreg (Lv et al., BDCC 2025, doi 10.3390/bdcc9080204): one stage, MoCo + rebalanced SupCon + prototypes.

Parts: core ``moco`` memory (query view 0 = RandAugment, key view 1 = SimAugment), core ``learnable``
prototypes (K = 3 C unless set [D], Sinkhorn 3 iterations, eps 0.05, re-normalised after each step [D]),
the plugin's ``rebsupcon`` loss, instance-balanced sampling. The paper's total ``L = L_proto + L_reb`` trains
no classifier, so stage 2 is core ``crt`` (a re-initialised linear classifier on the frozen backbone,
class-balanced sampling) [D]. See ``loss.py`` and the README for the equations and the readings ([R] / [D]
tags: [P] paper, [R] reading, [D] default).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from ltreg import HParams, MethodSpec, ModelSpec, PartRef, Recipe, hp
from ltreg_rebsupcon.loss import DEFAULTS

__version__ = "0.1.0"

_POS = {"min": 0, "min_exclusive": True}


@dataclass(frozen=True)
class RebSupConHParams(HParams):
    temperature: float = field(default=DEFAULTS.temperature, metadata={**_POS, "help": "tau of SupCon and of the prototype softmax (0.05 CIFAR, 0.2 ImageNet-LT / iNat)"})
    alpha: float = field(default=DEFAULTS.alpha, metadata={"min": 0, "help": "alpha of omega(c)"})
    beta: float = field(default=DEFAULTS.beta, metadata={"min": 0, "help": "beta of omega_f(c) = beta / (f(c) + eps)"})
    eps: float = field(default=DEFAULTS.eps, metadata={**_POS, "help": "eps of omega_f(c)"})
    omega_form: Literal["printed", "inverse"] = field(default=DEFAULTS.omega_form, metadata={
        "choices": ("printed", "inverse"),
        "help": "[R] inverse 1 + a g w_f (up-weights rare / hard classes, the paper's stated effect) or printed 1/(1 + a g w_f)"})
    positives: Literal["samples", "centres"] = field(default=DEFAULTS.positives, metadata={
        "choices": ("samples", "centres"), "help": "[R] z_c = same-class keys (SupCon) or PaCo class centres"})
    grad_ema: bool = field(default=DEFAULTS.grad_ema, metadata={"help": "[D] EMA-smooth the class gradient statistic g_c over steps"})
    grad_ema_momentum: float = field(default=DEFAULTS.grad_ema_momentum, metadata={"min": 0, "max": 1, "schedule": "ema",
                                                             "help": "[D] momentum of the g_c EMA"})
    lambda_swap: float = field(default=DEFAULTS.lambda_swap, metadata={"min": 0, "help": "lambda1: swapped prediction"})
    lambda_agg: float = field(default=DEFAULTS.lambda_agg, metadata={"min": 0, "help": "lambda2: aggregation"})
    lambda_sep: float = field(default=DEFAULTS.lambda_sep, metadata={"min": 0, "help": "lambda3: separation"})
    delta: float = field(default=DEFAULTS.delta, metadata={"min": 0, "help": "separation margin on squared prototype distances"})
    cls_weight: float = field(default=DEFAULTS.cls_weight, metadata={
        "min": 0, "help": "weight of a joint Balanced-Softmax classifier loss; 0 = the paper's total (classifier from stage 2)"})
    stage2_epochs: int = field(default=10, metadata={"min": 0, "help": "[D] cRT epochs (class-balanced, frozen backbone)"})
    stage2_reinit: bool = field(default=True, metadata={
        "help": "cRT re-initialises the classifier; False keeps a jointly trained one (cls_weight > 0)"})
    num_prototypes: int | None = field(default=None, metadata={"min": 1, "help": "K (None: 3 x C [D]; 3000 ImageNet-LT)"})
    sinkhorn_eps: float = field(default=0.05, metadata={**_POS, "help": "entropy weight psi of Sinkhorn-Knopp"})
    sinkhorn_iters: int = field(default=3, metadata={"min": 1, "help": "Sinkhorn-Knopp iterations"})
    normalize_prototypes: bool = field(default=True, metadata={"help": "[D] L2-normalise prototypes after each step"})
    queue_size: int = field(default=1024, metadata={"min": 1, "help": "[D] 1,024 CIFAR / 8,192 ImageNet-LT, iNat"})
    key_momentum: float = field(default=0.999, metadata={"min": 0, "max": 1, "schedule": "ema",
                                                          "help": "[D] momentum of the key encoder"})

    @property
    def train_heads(self) -> tuple[str, ...]:
        """Stage 1 trains the classifier only when the joint classifier term is on (``cls_weight > 0``)."""
        return ("projector", "classifier") if self.cls_weight > 0 else ("projector",)


_TRAIN = {"epochs": 400, "momentum": 0.9, "weight_decay": 5e-4, "schedule": "cosine", "warmup_epochs": 0}
_C100 = {100: 52.7, 50: 56.5, 10: 64.8}


def _recipes() -> dict[str, Recipe]:
    """Paper settings (Table 2): 400 epochs, SGD 0.9, wd 5e-4, cosine to 0, no warm-up reported; cRT stage 2 [D]."""
    out = {}
    for ds in ("cifar10-lt", "cifar100-lt"):
        for imb in (100, 50, 10):
            paper = {"All": _C100[imb]} if ds == "cifar100-lt" else {}  # CIFAR-10-LT: not reported
            out[f"{ds}-if{imb}"] = Recipe(
                f"{ds} IF {imb}, ResNet-32, 400 epochs, batch 128, SGD lr 0.02 cosine, tau 0.05, queue 1024, K 3C",
                train={**_TRAIN, "dataset": ds, "imbalance": float(imb), "backbone": "resnet32", "batch_size": 128,
                       "lr": 0.02},
                hparams={"temperature": 0.05, "queue_size": 1024}, paper=paper)
    large = {"temperature": 0.2, "queue_size": 8192}
    out["imagenet-lt"] = Recipe(
        "ImageNet-LT, ResNet-50, 400 epochs, batch 256, SGD lr 0.1 cosine, tau 0.2, queue 8192, K 3000",
        train={**_TRAIN, "dataset": "imagenet-lt", "backbone": "resnet50", "batch_size": 256, "lr": 0.1},
        hparams={**large, "num_prototypes": 3000}, paper={"All": 56.9, "Many": 64.9, "Medium": 54.2, "Few": 35.6})
    out["imagenet-lt-x50"] = Recipe(
        "ImageNet-LT, ResNeXt-50, 400 epochs, batch 256, SGD lr 0.1 cosine, tau 0.2, queue 8192, K 3000",
        train={**_TRAIN, "dataset": "imagenet-lt", "backbone": "resnext50_32x4d", "batch_size": 256, "lr": 0.1},
        hparams={**large, "num_prototypes": 3000}, paper={"All": 59.1})
    out["inat2018"] = Recipe(
        "iNaturalist 2018, ResNet-50, 400 epochs, batch 512, SGD lr 0.1 cosine, tau 0.2, queue 8192, K 3C [D]",
        train={**_TRAIN, "dataset": "inat2018", "backbone": "resnet50", "batch_size": 512, "lr": 0.1},
        hparams=large, paper={"All": 73.0, "Many": 71.9, "Medium": 73.2, "Few": 72.5})
    return out


METHOD = MethodSpec(
    name="rebsupcon",
    summary="Reb-SupCon: MoCo SupCon rebalanced by per-class gradient/frequency factors + learnable prototypes",
    citation="Lv, Lei, Zhang, Chen, Li, Rebalancing in Supervised Contrastive Learning for Long-Tailed Visual "
             "Recognition, Big Data Cogn. Comput. 9(8):204, 2025, doi 10.3390/bdcc9080204",
    bibtex="""@article{lv2025rebsupcon,
  title = {Rebalancing in Supervised Contrastive Learning for Long-Tailed Visual Recognition},
  author = {Lv and Lei and Zhang and Chen and Li},
  journal = {Big Data and Cognitive Computing},
  volume = {9}, number = {8}, pages = {204},
  year = {2025}
}""",
    loss=PartRef("rebsupcon", temperature=hp("temperature"), alpha=hp("alpha"), beta=hp("beta"), eps=hp("eps"),
                 omega_form=hp("omega_form"), positives=hp("positives"), grad_ema=hp("grad_ema"),
                 grad_ema_momentum=hp("grad_ema_momentum"), lambda_swap=hp("lambda_swap"),
                 lambda_agg=hp("lambda_agg"), lambda_sep=hp("lambda_sep"), delta=hp("delta"),
                 cls_weight=hp("cls_weight")),
    hparams=RebSupConHParams(),
    sampler=PartRef("instance"),
    prototypes=PartRef("learnable", num_prototypes=hp("num_prototypes"), sinkhorn_eps=hp("sinkhorn_eps"),
                       sinkhorn_iters=hp("sinkhorn_iters"), normalize_after_step=hp("normalize_prototypes")),
    memory=PartRef("moco", momentum=hp("key_momentum"), queue_size=hp("queue_size"), key_view=1),
    rebalance=PartRef("crt", epochs=hp("stage2_epochs"), reinit=hp("stage2_reinit")),
    views=("rand", "sim"),
    query_views=(0,),  # the SimAugment key view goes through the momentum encoder only
    model=ModelSpec(classifier="linear", proj_dim=128, proj_hidden=256, train_heads=hp("train_heads")),
    recipes=_recipes(),
    reading="SupCon over keys + queue (positives = same-class keys) [R] weighted per anchor by "
            "omega(y_i) = 1 + alpha g_c beta/(n_c/N + eps) [R: the reading that up-weights rare, hard classes as the "
            "paper says omega does; the printed 1/(1 + ...) down-weights them: switch omega_form=printed], g_c = "
            "global-batch class mean of ||dL_i/dq_i|| w.r.t. the projected query q_i, not the parameters theta [D], "
            "omega detached, L_reb normalised by the anchor count; K = 3C unless set [D], prototypes re-normalised "
            "each step [D]; total L = L_reb + L_proto as in the paper (cls_weight = 0; > 0 adds a joint "
            "Balanced-Softmax classifier [D]); stage 2 = cRT on the frozen backbone, 10 epochs [D].",
)

__all__ = ["METHOD", "RebSupConHParams"]
