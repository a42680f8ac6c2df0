"""ECL: Equilibrium Contrastive Learning for imbalanced image classification, as an ltreg method plugin.

One stage, three views: view 0 (RandAugment) -> cosine classifier (s = 30) with logit compensation; views 1, 2
(SimAugment) -> projection MLP -> BC-ECL against the batch and the classifier-derived prototypes; CC-GE aligns
the classifier with the prototypes. Formulas and readings: ``ltreg_ecl.loss`` and the README.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ltreg import HParams, MethodSpec, ModelSpec, PartRef, Reading, Recipe, Tag, ViewPlan, hp

__version__ = "0.1.0"


@dataclass(frozen=True)
class ECLHParams(HParams):
    temperature: float = field(default=0.07, metadata={"min": 0, "min_exclusive": True, "help": "BC-ECL temperature tau"})
    contribution: str = field(default="balanced", metadata={
        "choices": ("balanced", "bcl"),
        "help": "balanced: class average and prototype weigh 1/2 each [D: a reading]; bcl: prototype = one more class member"})
    auto_weights: bool = field(default=True, metadata={
        "help": "weights 1 in epoch 0, then target / epoch-0 mean of each loss, rounded to 2 decimals [C: ProConDual code]; "
                "off when epoch 0 is short (tens of steps): its L_LC spike then cuts L_LC's weight ~10x (docs: ecl)"})
    weight_lc: float = field(default=0.7, metadata={"min": 0, "help": "target weight of L_LC"})
    weight_con: float = field(default=0.3, metadata={"min": 0, "help": "target weight of L_BC-ECL"})
    weight_align: float = field(default=0.5, metadata={"min": 0, "help": "target weight of L_CC-GE"})
    erase: bool = field(default=False, metadata={"help": "RandomErasing on all three views (CIFAR / ISIC recipes)"})


# Official ECL README [C]. Only ImageNet-LT is a setting these recipes run: the CIFAR rows (92.1 / 92.5 / 94.4 and
# 66.3 / 67.5 / 71.0) come from ResNet-34 on CIFAR upsampled to 224 px, which ltreg's views cannot produce, so the
# CIFAR recipes (ResNet-32 at 32 px) carry no paper number.
_PAPER = {"imagenet-lt": {"All": 58.8, "Many": 68.6, "Medium": 56.3, "Few": 40.1}}
_CIFAR = {"backbone": "resnet32", "epochs": 200, "batch_size": 128, "lr": 0.15, "schedule": "cosine",
          "warmup_epochs": 0, "momentum": 0.9, "weight_decay": 5e-4}
C, D = Tag.code, Tag.ours
_README = "the authors' ECL README (github.com/suminRoh/ECL-main), not the paper"
_PRED = "the authors' predecessor code, ProConDual's scripts (github.com/suminRoh/ProConDual-main)"


def _recipes() -> dict[str, Recipe]:
    """ProConDual's settings [C: the authors' predecessor code] for CIFAR-10/100-LT at IF 100 / 50 / 10 and
    ImageNet-LT; ImageNet-LT's numbers come from the authors' README [C], not from the paper."""
    out = {}
    for ds in ("cifar10-lt", "cifar100-lt"):
        for imb in (100, 50, 10):
            name = f"{ds}-if{imb}"
            train = {**_CIFAR, "dataset": ds, "imbalance": float(imb)}
            hparams = {"temperature": 0.07, "erase": True}
            tags = {k: C(_PRED) for k in (*train, *hparams)}
            tags["dataset"] = tags["imbalance"] = C(_README + ": CIFAR-10/100-LT rows")
            tags["backbone"] = D("CIFAR ResNet-32 at 32 px: the authors' ResNet-34 on CIFAR upsampled to 224 px is "
                                 "not a setting ltreg's views produce")
            out[name] = Recipe(
                f"{ds} IF {imb}: CIFAR ResNet-32 at 32 px, NOT the paper's setting (ResNet-34 on CIFAR upsampled to "
                f"224 px; no paper number shown), 200 epochs, batch 128, SGD 0.15 cosine, wd 5e-4, tau 0.07, "
                f"RandomErasing",
                train=train, hparams=hparams, tags=tags)
    train = {"dataset": "imagenet-lt", "backbone": "resnext50_32x4d", "epochs": 180, "batch_size": 128, "lr": 0.2,
             "schedule": "cosine", "warmup_epochs": 0, "momentum": 0.9, "weight_decay": 1e-4}
    hparams = {"temperature": 0.07, "erase": False}
    tags = {k: C(_PRED) for k in (*train, *hparams)}
    tags.update({"dataset": C(_README), "backbone": C(_README + ": ResNeXt-50"),
                 **{k: C(_README + ": ImageNet-LT row") for k in _PAPER["imagenet-lt"]}})
    out["imagenet-lt"] = Recipe(
        "ImageNet-LT: ResNeXt-50 32x4d from scratch, 224 px, 180 epochs, batch 128, SGD 0.2 cosine, wd 1e-4, tau 0.07; "
        "numbers from the authors' README [C], not the paper",
        train=train, hparams=hparams, paper=_PAPER["imagenet-lt"], tags=tags)
    return out


METHOD = MethodSpec(
    name="ecl",
    summary="equilibrium contrastive learning: logit-compensated CE + balanced-contribution contrast with "
            "classifier-derived prototypes + classifier/prototype alignment, one stage",
    citation="Roh, Kim, Lee, Chun, Equilibrium contrastive learning for imbalanced image classification, "
             "arXiv 2602.09506 (IEEE TETCI)",
    bibtex="""@misc{roh2026ecl,
  title = {Equilibrium contrastive learning for imbalanced image classification},
  author = {Roh and Kim and Lee and Chun},
  howpublished = {arXiv:2602.09506 (IEEE TETCI)},
  year = {2026}
}""",
    loss=PartRef("ecl", temperature=hp("temperature"), contribution=hp("contribution"), auto_weights=hp("auto_weights"),
                 weight_lc=hp("weight_lc"), weight_con=hp("weight_con"), weight_align=hp("weight_align")),
    hparams=ECLHParams(),
    sampler=PartRef("instance"),
    prototypes=PartRef("classifier-derived", kind="linear"),
    views=ViewPlan(("rand", "sim", "sim"), modifiers={"erase": hp("erase")}),  # erase=True: "+erase" on every view
    model=ModelSpec(classifier="cosine", cosine_scale=30.0, proj_dim="width", proj_bn=True),
    recipes=_recipes(),
    readings=(
        Reading("three views: view 0 (RandAugment) -> cosine classifier s = 30; views 1, 2 (SimAugment) -> projection",
                C("the authors' ECL README architecture figure (github.com/suminRoh/ECL-main)")),
        Reading("L_LC = CE(u + log pi, y) on view 0 (logit compensation)", C(_PRED + ": loss code")),
        Reading("BC-ECL: per class, 1/2 x class average of the other views + 1/2 x prototype in the denominator "
                "(prototype alone for a class with no other view); loss = 1/2 mean over same-class views + 1/2 "
                "prototype term", D("reconstruction of the summary's 'balances the contributions of class-averaged "
                                    "features and prototypes'; contribution=bcl: BCL's prototype as one more sample")),
        Reading("prototypes p_c = normalize(U w_c), U one Linear(D, D) on the raw classifier row w_c", C(_PRED)),
        Reading("CC-GE = || W/||W||_F - P/||P||_F ||_F (not squared)",
                C(_PRED + "; that ECL kept it is our reading of the summary's 'align classifier weights with class "
                          "prototypes', D")),
        Reading("weights 0.7 / 0.3 / 0.5, each divided by its loss's epoch-0 mean (rounded to 2 decimals)",
                C(_PRED + "; that ECL uses them is ours, D")),
        Reading("projection width d = backbone width D (proj_dim='width'), with BatchNorm", C(_PRED)),
        Reading("one stage, prediction argmax u", C(_README)),
    ),
)

__all__ = ["METHOD", "ECLHParams"]
