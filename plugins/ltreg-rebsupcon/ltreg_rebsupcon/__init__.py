"""Reb-SupCon for ltreg (Lv et al., BDCC 2025, doi 10.3390/bdcc9080204): two stages, MoCo + rebalanced SupCon +
prototypes (stage 1), then a cRT classifier (stage 2).

Parts: core ``moco`` memory (query view 0 = RandAugment, key view 1 = SimAugment), core ``learnable``
prototypes (K = 3 C unless set [D], Sinkhorn 3 iterations, eps 0.05, re-normalised after each step [D]),
the plugin's ``rebsupcon`` loss, instance-balanced sampling. The paper calls its method single-stage, but its
total ``L = L_proto + L_reb`` trains no classifier and it does not say how its classifier is trained, so
stage 2 is core ``crt`` (a re-initialised linear classifier on the frozen backbone, class-balanced sampling)
[D]. See ``loss.py`` and docs/methods/rebsupcon.md for the equations and the readings. Tags: [P] the paper
(section / table / equation), [C] the authors' code or README (none released), [D] ours.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from ltreg import HParams, MethodSpec, ModelSpec, PartRef, Reading, Recipe, Stage, Tag, ViewPlan, hp
from ltreg_rebsupcon.loss import DEFAULTS

__version__ = "0.1.0"

_POS = {"min": 0, "min_exclusive": True}


@dataclass(frozen=True)
class RebSupConHParams(HParams):
    temperature: float = field(default=DEFAULTS.temperature, metadata={**_POS, "help": "[P §4.2] tau of SupCon and of the prototype softmax (0.05 CIFAR, 0.2 ImageNet-LT / iNat)"})
    alpha: float = field(default=DEFAULTS.alpha, metadata={"min": 0, "help": "[P §4.2, Table 7] alpha of omega(c)"})
    beta: float = field(default=DEFAULTS.beta, metadata={"min": 0, "help": "[P §4.2, Table 7] beta of omega_f(c) = beta / (f(c) + eps)"})
    eps: float = field(default=DEFAULTS.eps, metadata={**_POS, "help": "[P §3.3.1] eps of omega_f(c)"})
    omega_form: Literal["printed", "inverse"] = field(default=DEFAULTS.omega_form, metadata={
        "choices": ("printed", "inverse"),
        "help": "inverse 1 + a g w_f [D: a reading; up-weights rare / hard classes, the paper's stated effect] or "
                "printed 1/(1 + a g w_f) [P §3.3.1 as printed]"})
    omega_norm: Literal["anchors", "omega"] = field(default=DEFAULTS.omega_norm, metadata={
        "choices": ("anchors", "omega"),
        "help": "L_reb's denominator: anchors with a positive [P §3.3.1: a plain sum over anchors, as a mean; keeps "
                "head gradients, the paper's stated effect] or sum of omega(y_i) [D: weighted mean, SupCon's scale]"})
    omega_max: float | None = field(default=DEFAULTS.omega_max, metadata={
        **_POS, "help": "upper bound on omega: None = none [P §3.3.1: omega(c) unbounded; class weight n_c omega(c) "
                        "no longer grows with frequency, Fig. 2's effect] or a number [D: clamp]"})
    positives: Literal["samples", "centres"] = field(default=DEFAULTS.positives, metadata={
        "choices": ("samples", "centres"), "help": "z_c = same-class keys [D: a reading, SupCon] or PaCo class centres [D: a reading]"})
    grad_ema: bool = field(default=DEFAULTS.grad_ema, metadata={"help": "[D] EMA-smooth the class gradient statistic g_c over steps"})
    grad_ema_momentum: float = field(default=DEFAULTS.grad_ema_momentum, metadata={"min": 0, "max": 1, "schedule": "ema",
                                                             "help": "[D] momentum of the g_c EMA"})
    lambda_swap: float = field(default=DEFAULTS.lambda_swap, metadata={"min": 0, "help": "lambda1 x L1 swapped prediction [P §3.3.2 numbering "
                                                                        "+ §4.2 values; §4.5 names lambda1 aggregation: see docs]"})
    lambda_agg: float = field(default=DEFAULTS.lambda_agg, metadata={"min": 0, "help": "lambda2 x L2 aggregation [P §3.3.2 + §4.2]"})
    lambda_sep: float = field(default=DEFAULTS.lambda_sep, metadata={"min": 0, "help": "lambda3 x L3 separation [P §3.3.2 + §4.2]"})
    delta: float = field(default=DEFAULTS.delta, metadata={"min": 0, "help": "[P §4.2] separation margin on squared prototype distances"})
    cls_weight: float = field(default=DEFAULTS.cls_weight, metadata={
        "min": 0, "help": "weight of a joint Balanced-Softmax classifier loss; 0 = the paper's total [P §3.4] (classifier from stage 2) [D]"})
    stage2_epochs: int = field(default=10, metadata={"min": 0, "help": "[D] cRT epochs (class-balanced, frozen backbone)"})
    stage2_reinit: bool = field(default=True, metadata={
        "help": "cRT re-initialises the classifier; False keeps a jointly trained one (cls_weight > 0)"})
    num_prototypes: int | None = field(default=None, metadata={"min": 1, "help": "K (None: 3 x C [D]; 3000 ImageNet-LT)"})
    sinkhorn_eps: float = field(default=0.05, metadata={**_POS, "help": "[P §4.2] entropy weight psi of Sinkhorn-Knopp"})
    sinkhorn_iters: int = field(default=3, metadata={"min": 1, "help": "[P §4.2] Sinkhorn-Knopp iterations"})
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
P, D = Tag.paper, Tag.ours
_TRAIN_TAGS = {"epochs": P("Table 2, §4.2: 400 epochs"), "momentum": P("§4.2: SGD momentum 0.9"),
               "weight_decay": P("§4.2: 5e-4"), "schedule": P("§4.2: cosine decay to 0"),
               "warmup_epochs": D("no warm-up reported")}


def _recipes() -> dict[str, Recipe]:
    """Paper settings (Table 2, §4.2): 400 epochs, SGD 0.9, wd 5e-4, cosine to 0, no warm-up reported; cRT stage 2 [D].

    The paper evaluates CIFAR-100-LT, ImageNet-LT and iNaturalist 2018 only: the CIFAR-10-LT recipes take
    CIFAR-100-LT's Table 2 values [D] and tau 0.2, the paper's value for every set but CIFAR-100-LT (§4.2).
    """
    out = {}
    for ds in ("cifar10-lt", "cifar100-lt"):
        c100 = ds == "cifar100-lt"
        tau = 0.05 if c100 else 0.2
        src = P("Table 2 (CIFAR-100-LT)") if c100 else D("CIFAR-100-LT's Table 2 value; CIFAR-10-LT not in the paper")
        for imb in (100, 50, 10):
            paper = {"All": _C100[imb]} if c100 else {}  # CIFAR-10-LT: not reported
            tags = {**_TRAIN_TAGS, "dataset": src, "imbalance": P("Table 3: IF 100 / 50 / 10") if c100 else src,
                    "backbone": P("§4.2: ResNet-32 for CIFAR-LT"), "batch_size": src, "lr": src,
                    "temperature": src if c100 else P("§4.2: tau 0.2 for every set but CIFAR-100-LT"),
                    "queue_size": D("not reported; MoCo CIFAR practice"), **({"All": P("Table 3")} if c100 else {})}
            out[f"{ds}-if{imb}"] = Recipe(
                f"{ds} IF {imb}, ResNet-32, 400 epochs, batch 128, SGD lr 0.02 cosine, tau {tau}, queue 1024, K 3C",
                train={**_TRAIN, "dataset": ds, "imbalance": float(imb), "backbone": "resnet32", "batch_size": 128,
                       "lr": 0.02},
                hparams={"temperature": tau, "queue_size": 1024}, paper=paper, tags=tags)
    large = {"temperature": 0.2, "queue_size": 8192}
    large_tags = {**_TRAIN_TAGS, "dataset": P("§4.1"), "batch_size": P("Table 2"), "lr": P("Table 2"),
                  "temperature": P("Table 2"), "queue_size": D("not reported; MoCo ImageNet practice")}
    out["imagenet-lt"] = Recipe(
        "ImageNet-LT, ResNet-50, 400 epochs, batch 256, SGD lr 0.1 cosine, tau 0.2, queue 8192, K 3000",
        train={**_TRAIN, "dataset": "imagenet-lt", "backbone": "resnet50", "batch_size": 256, "lr": 0.1},
        hparams={**large, "num_prototypes": 3000}, paper={"All": 56.9, "Many": 64.9, "Medium": 54.2, "Few": 35.6},
        tags={**large_tags, "backbone": P("§4.2, Table 2"), "num_prototypes": P("Table 8: K = 3000 best"),
              **{k: P("Table 4") for k in ("All", "Many", "Medium", "Few")}})
    out["imagenet-lt-x50"] = Recipe(
        "ImageNet-LT, ResNeXt-50, 400 epochs, batch 256, SGD lr 0.1 cosine, tau 0.2, queue 8192, K 3000",
        train={**_TRAIN, "dataset": "imagenet-lt", "backbone": "resnext50_32x4d", "batch_size": 256, "lr": 0.1},
        hparams={**large, "num_prototypes": 3000}, paper={"All": 59.1},
        tags={**large_tags, "backbone": P("§4.2, Table 2: ResNeXt-50"), "num_prototypes": P("Table 8"),
              "All": P("§4.3 text and Fig. 4")})
    out["inat2018"] = Recipe(
        "iNaturalist 2018, ResNet-50, 400 epochs, batch 512, SGD lr 0.1 cosine, tau 0.2, queue 8192, K 3C [D]",
        train={**_TRAIN, "dataset": "inat2018", "backbone": "resnet50", "batch_size": 512, "lr": 0.1},
        hparams=large, paper={"All": 73.0, "Many": 71.9, "Medium": 73.2, "Few": 72.5},
        tags={**large_tags, "backbone": P("§4.2, Table 2"), **{k: P("Table 5") for k in ("All", "Many", "Medium", "Few")}})
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
                 omega_form=hp("omega_form"), omega_norm=hp("omega_norm"), omega_max=hp("omega_max"),
                 positives=hp("positives"), grad_ema=hp("grad_ema"),
                 grad_ema_momentum=hp("grad_ema_momentum"), lambda_swap=hp("lambda_swap"),
                 lambda_agg=hp("lambda_agg"), lambda_sep=hp("lambda_sep"), delta=hp("delta"),
                 cls_weight=hp("cls_weight")),
    hparams=RebSupConHParams(),
    sampler=PartRef("instance"),
    prototypes=PartRef("learnable", num_prototypes=hp("num_prototypes"), sinkhorn_eps=hp("sinkhorn_eps"),
                       sinkhorn_iters=hp("sinkhorn_iters"), normalize_after_step=hp("normalize_prototypes")),
    memory=PartRef("moco", momentum=hp("key_momentum"), queue_size=hp("queue_size"), key_view=1),
    stage2=Stage(PartRef("crt", reinit=hp("stage2_reinit")), epochs=hp("stage2_epochs")),
    views=ViewPlan(("rand", "sim"), query=(0,)),  # the SimAugment key view goes through the momentum encoder only
    model=ModelSpec(classifier="linear", proj_dim=128, proj_hidden=256, train_heads=hp("train_heads")),
    recipes=_recipes(),
    readings=(
        Reading("L_i: SupCon of the query (view 0) against batch keys + queue, positives = same-class keys",
                D("a reading of z_c in §3.3.1's L_i; positives=centres reads z_c as PaCo class centres")),
        Reading("omega(c) = 1 + alpha g_c omega_f(c) (omega_form=inverse)",
                D("a reading: §3.3.1 prints 1/(1 + alpha g_c omega_f(c)), which damps the rare, hard classes the paper "
                  "says omega favours (§1, §3.3.1, Fig. 2); omega_form=printed keeps the printed formula")),
        Reading("omega_f(c) = beta / (f(c) + eps)", P("§3.3.1")),
        Reading("f(c) = n_c / N of the training set", D("our reading of §3.3.1's 'class frequency'")),
        Reading("g_c = class mean over the global batch of ||dL_i/dq_i||, the gradient w.r.t. the projected query, "
                "not the parameters theta", D("a per-sample parameter gradient needs one backward per sample; "
                                               "§3.3.1 defines it w.r.t. theta")),
        Reading("omega is a constant in the backward", P("§3.3.1: 'calculated while freezing omega(c)'")),
        Reading("omega unbounded (omega_max=None)", P("§3.3.1: no bound; omega_max clamps it, D")),
        Reading("L_reb = sum_i omega(y_i) L_i / #anchors with a positive (omega_norm=anchors)",
                P("§3.3.1 prints a plain sum over anchors; omega_norm=omega divides by sum omega, D")),
        Reading("(lambda1, lambda2, lambda3) multiply (swapped prediction, aggregation, separation) = (0.5, 0.3, 0.2)",
                P("§3.3.2 numbering + §4.2 values; §4.5 names lambda1 aggregation, lambda2 separation, lambda3 "
                  "alignment: a contradiction, settled by the equations")),
        Reading("Sinkhorn: 3 iterations, psi = 0.05, no gradient; delta = 1", P("§3.3.2, §4.2")),
        Reading("K = 3 C prototypes unless set (3000 on ImageNet-LT)", D("the paper gives K for ImageNet-LT only (Table 8)")),
        Reading("prototypes re-normalised after each optimizer step", D("SwAV practice; makes delta = 1 meaningful")),
        Reading("total L = L_reb + L_proto (cls_weight = 0)", P("§3.4")),
        Reading("two stages: stage 2 = cRT on the frozen backbone, 10 epochs",
                D("the paper's total trains no classifier and it does not say how its classifier is trained")),
    ),
)

__all__ = ["METHOD", "RebSupConHParams"]
