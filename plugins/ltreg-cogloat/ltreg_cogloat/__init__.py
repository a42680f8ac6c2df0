"""CoGloAT + ProCo-coreset (Bach et al., TMLR 2023) as an ltreg method plugin: ``ltreg train --method cogloat``.

Everything but the loss is a core part: the ``moco`` memory (query / momentum key encoder + labelled queue), the
``k-global`` sampler (k same-class images per query from the whole training set, encoded in one batched forward
by the key encoder), the ``coreset`` prototypes (refreshed at every epoch start) and the ``crt`` stage 2.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ltreg import HParams, MethodSpec, ModelSpec, PartRef, Reading, Recipe, Stage, Tag, ViewPlan, hp
from ltreg_cogloat.loss import NEGATIVES, CoGloATLoss, adaptive_temperature, cogloat, proco

__version__ = "0.1.0"


@dataclass(frozen=True)
class CoGloATHParams(HParams):
    """Hyper-parameters; [P] stated in the paper, [D] ours (a default where the paper gives none, or a reconstruction)."""

    k: int = field(default=3, metadata={"min": 1, "help": "[P] global same-class positives per query"})
    negatives: str = field(default="unsupervised", metadata={
        "choices": NEGATIVES, "help": "[P] V_i: unsupervised (all others) | supervised (other classes) | k-positive [D: KCL's rule, undefined in the paper]"})
    temperature: float = field(default=0.07, metadata={
        "min": 0, "min_exclusive": True, "help": "[D] base tau: CoGloAT without adaptive tau, and L_ProCo"})
    gamma: float = field(default=0.07, metadata={
        "min": 0, "min_exclusive": True, "max": 1, "help": "[D] minimum temperature of tau_i = gamma + (1-gamma) n_y/n_max"})
    adaptive_temperature: bool = field(default=True, metadata={"help": "[P] class-adaptive tau_i in L_CoGloAT"})
    proco_temperature: str = field(default="base", metadata={
        "choices": ("base", "adaptive"), "help": "[D] tau of L_ProCo: the base tau or tau_i"})
    alpha: float = field(default=0.5, metadata={"min": 0, "max": 1, "help": "[D] alpha L_CoGloAT + (1-alpha) L_ProCo"})
    key_momentum: float = field(default=0.999, metadata={"min": 0, "max": 1, "schedule": "ema",
                                                          "help": "[D] momentum of the key encoder"})
    queue_size: int = field(default=4096, metadata={"min": 1, "help": "[D] queue length (4,096 CIFAR, 65,536 ImageNet)"})
    allow_self: bool = field(default=True, metadata={
        "help": "[D] a class with ONE image uses the query itself (another augmentation) as its global positives"})
    coreset_fraction: float = field(default=0.1, metadata={
        "min": 0, "min_exclusive": True, "max": 1, "help": "[D] coreset size as a fraction of each class"})
    coreset_min_per_class: int = field(default=5, metadata={"min": 1, "help": "[D] at least min(n_c, this) per class"})
    coreset_selection: str = field(default="kcenter", metadata={
        "choices": ("kcenter", "random"), "help": "[D] GLISTER stand-in: greedy k-center or uniform"})
    stage2_epochs: int = field(default=100, metadata={"min": 0, "help": "[D] classifier epochs (frozen backbone)"})
    stage2_loss: str = field(default="ce", metadata={
        "choices": ("ce", "ldam"), "help": "[P] stage-2 loss, with 1/n_c re-weighting: ldam CIFAR-10-LT, ce otherwise"})


PAPER = {
    "cifar10-lt-if100": {"All": 81.6}, "cifar10-lt-if50": {"All": 85.5}, "cifar10-lt-if10": {"All": 89.4},
    "cifar100-lt-if100": {"All": 46.0}, "cifar100-lt-if50": {"All": 50.4}, "cifar100-lt-if10": {"All": 60.8},
    "imagenet-lt": {"All": 49.8, "Many": 59.0, "Medium": 49.5, "Few": 40.9},
}

# [P] batch 256, SGD 0.1 momentum 0.9, 1000 (CIFAR) / 200 (ImageNet) epochs; classifier lr 0.1, batch 256.
# [D] cosine schedule without warm-up and weight decay 1e-4 (MoCo-v2 / TSC practice).
_COMMON = {"batch_size": 256, "lr": 0.1, "momentum": 0.9, "weight_decay": 1e-4, "schedule": "cosine",
           "warmup_epochs": 0, "stage2_lr": 0.1, "stage2_batch_size": 256}
P, D = Tag.paper, Tag.ours
_IMPL = "§5.1 Implementation details"
_COMMON_TAGS = {"batch_size": P(_IMPL), "lr": P(_IMPL), "momentum": P(_IMPL),
                "weight_decay": D("not reported; MoCo-v2 / TSC practice"),
                "schedule": D("not reported; MoCo-v2 / TSC practice (cosine)"), "warmup_epochs": D("none reported"),
                "stage2_lr": P(_IMPL + ": classifier lr 0.1"), "stage2_batch_size": P(_IMPL + ": batch 256")}


def _recipes() -> dict[str, Recipe]:
    """The paper's CIFAR-LT settings at IF 100 / 50 / 10 and its ImageNet-LT setting."""
    out = {}
    for ds, loss in (("cifar10-lt", "ldam"), ("cifar100-lt", "ce")):
        for imb in (100, 50, 10):
            name = f"{ds}-if{imb}"
            tags = {**_COMMON_TAGS, "dataset": P("Table 2"), "imbalance": P("Table 2"),
                    "backbone": P(_IMPL + ": ResNet-32"), "epochs": P(_IMPL + ": 1,000 epochs"),
                    "queue_size": D("not reported ('same configurations as TSC'); 4,096"),
                    "stage2_loss": P(_IMPL + ": LDAM + reweight CIFAR-10-LT, CE + reweight CIFAR-100-LT"),
                    "stage2_epochs": D("not reported for CIFAR; ImageNet-LT's 100"), "All": P("Table 2")}
            out[name] = Recipe(
                f"{ds} IF {imb}, ResNet-32, 1000 epochs, batch 256, SGD 0.1 cosine; stage 2 {loss.upper()} + reweight",
                train={**_COMMON, "dataset": ds, "imbalance": float(imb), "backbone": "resnet32", "epochs": 1000},
                hparams={"queue_size": 4096, "stage2_loss": loss, "stage2_epochs": 100}, paper=PAPER[name], tags=tags)
    out["imagenet-lt"] = Recipe(
        "ImageNet-LT, ResNet-50, 200 epochs, batch 256, SGD 0.1 cosine, queue 65,536; stage 2 100 epochs CE + reweight",
        train={**_COMMON, "dataset": "imagenet-lt", "backbone": "resnet50", "epochs": 200},
        hparams={"queue_size": 65536, "stage2_loss": "ce", "stage2_epochs": 100}, paper=PAPER["imagenet-lt"],
        tags={**_COMMON_TAGS, "dataset": P("Table 3"), "backbone": P(_IMPL + ": ResNet-50"),
              "epochs": P(_IMPL + ": 200 epochs"), "queue_size": D("not reported; MoCo-v2's 65,536"),
              "stage2_loss": P(_IMPL + ": 'similar to CIFAR' (CE + reweight, as CIFAR-100-LT)"),
              "stage2_epochs": P(_IMPL + ": 'an additional 100 epochs'"),
              **{k: P("Table 3 ('Ours')") for k in ("All", "Many", "Medium", "Few")}})
    return out


METHOD = MethodSpec(
    name="cogloat",
    summary="CoGloAT + ProCo: k-global positives, class-adaptive temperature, coreset prototypes (MoCo-v2), then cRT",
    citation="Bach, Tong, Hy, Nguyen, Nguyen-Tang, Global Contrastive Learning for Long-Tailed Classification, TMLR 2023",
    bibtex="""@article{bach2023cogloat,
  title = {Global Contrastive Learning for Long-Tailed Classification},
  author = {Bach and Tong and Hy and Nguyen and Nguyen-Tang},
  journal = {Transactions on Machine Learning Research (TMLR)},
  year = {2023}
}""",
    loss=PartRef("cogloat", temperature=hp("temperature"), gamma=hp("gamma"),
                 adaptive_temperature=hp("adaptive_temperature"), negatives=hp("negatives"), alpha=hp("alpha"),
                 proco_temperature=hp("proco_temperature")),
    hparams=CoGloATHParams(),
    sampler=PartRef("k-global", k=hp("k"), allow_self=hp("allow_self")),
    prototypes=PartRef("coreset", fraction=hp("coreset_fraction"), min_per_class=hp("coreset_min_per_class"),
                       views=("sim", "sim"), use_key=True, selection=hp("coreset_selection")),
    memory=PartRef("moco", momentum=hp("key_momentum"), queue_size=hp("queue_size"), key_view=1, positive_view=0),
    stage2=Stage(PartRef("crt", loss=hp("stage2_loss"), reweight="inverse", sampler="instance"), epochs=hp("stage2_epochs")),
    views=ViewPlan(("sim", "sim"), positives=("sim",)),
    model=ModelSpec(classifier="cosine", cosine_scale=30.0, proj_dim=128, train_heads=("projector",)),  # classifier: stage 2
    recipes=_recipes(),
    readings=(
        Reading("MoCo-v2 / TSC set-up: anchors = query view 0, i+ = the key of view 1", P(_IMPL + ": 'Similar to TSC ... MoCov2'")),
        Reading("k = 3 global same-class positives per query, encoded by the key encoder",
                D("k = 3 is the paper's (Table 4 caption); the key encoder for them is ours")),
        Reading("V_i = the gathered batch keys + the queue, without the anchor's own key v_i+",
                D("Eq. 1 says 'examples in the current batch excluding v_i'; with MoCo the query v_i is no column and "
                  "its own key v_i+ is the numerator's positive, so it is not repeated among the negatives")),
        Reading("negatives='unsupervised' (same-class columns are negatives too)", P("Table 6: unsupervised best")),
        Reading("each positive sits alone with V_i in its denominator", P("Eq. 1")),
        Reading("tau_i = gamma + (1 - gamma) n_y / n_max", P("Eq. 8")),
        Reading("gamma = 0.07, base tau = 0.07", D("not reported; MoCo-v2's 0.07")),
        Reading("ProCo on both query-encoder views x both coreset prototype sets, tau = base tau", D("§3.4 leaves the views and tau open")),
        Reading("alpha L_CoGloAT + (1 - alpha) L_ProCo with alpha = 0.5", D("the paper gives no weight")),
        Reading("coreset = class-stratified greedy k-center, 10 % (at least min(n_c, 5)) per class, key encoder, "
                "refreshed at each epoch start", D("a stand-in for GLISTER; the refresh per epoch is §3.4's [P]")),
        Reading("stage 2 = cRT on the frozen backbone: instance sampling + 1/n_c class weights, LDAM (CIFAR-10-LT) or CE",
                P(_IMPL + ": LDAM / CE with Reweight")),
        Reading("cosine classifier, scale 30, in stage 2", D("the classifier type is not reported")),
    ),
)

__all__ = ["METHOD", "CoGloATHParams", "CoGloATLoss", "adaptive_temperature", "cogloat", "proco"]
