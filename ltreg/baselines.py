"""The core's own methods: the baselines every long-tailed paper compares against.

They register through ltreg's ``pyproject.toml`` entry points, the same door as any plugin.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ltreg.method import HParams, MethodSpec, ModelSpec, PartRef, Recipe, Stage, hp
from ltreg.tags import Reading, Tag

_CIFAR = {"warmup_epochs": 5, "schedule": "step", "milestones": [160, 180], "lr_decay": 0.01, "epochs": 200,
          "batch_size": 128, "lr": 0.1, "weight_decay": 2e-4, "backbone": "resnet32"}


def _cifar_recipes(paper: dict[str, dict[str, float]]) -> dict[str, Recipe]:
    """LDAM-DRW's CIFAR-LT schedule at IF 100 / 50 / 10 for both CIFAR-10-LT and CIFAR-100-LT."""
    out = {}
    for ds in ("cifar10-lt", "cifar100-lt"):
        for imb in (100, 50, 10):
            name = f"{ds}-if{imb}"
            out[name] = Recipe(f"{ds} IF {imb}, ResNet-32, 200 epochs, SGD 0.1, step x0.01 at 160/180",
                               train={**_CIFAR, "dataset": ds, "imbalance": float(imb)}, paper=paper.get(name, {}))
    return out


@dataclass(frozen=True)
class NoHParams(HParams):
    """Methods without hyper-parameters of their own."""


@dataclass(frozen=True)
class LAHParams(HParams):
    tau: float = field(default=1.0, metadata={"min": 0, "help": "logit-adjustment strength t"})


@dataclass(frozen=True)
class LDAMHParams(HParams):
    max_margin: float = field(default=0.5, metadata={"min": 0, "help": "largest class margin (rarest class)"})
    scale: float = field(default=30.0, metadata={"min": 0, "min_exclusive": True, "help": "cosine logit scale s"})
    drw_start_epoch: int = field(default=160, metadata={"min": 0, "schedule": "epochs", "of_epochs": 200,
                                                        "help": "epoch from which DRW re-weights: 160 of 200, "
                                                                "moved to the same share of the run's epochs"})
    drw_beta: float = field(default=0.9999, metadata={"min": 0, "max": 1, "help": "effective-number beta of DRW"})


@dataclass(frozen=True)
class SupConHParams(HParams):
    temperature: float = field(default=0.1, metadata={"min": 0, "min_exclusive": True, "help": "tau"})
    stage2_epochs: int = field(default=10, metadata={"min": 0, "help": "cRT epochs"})


CE = MethodSpec(
    name="ce",
    summary="cross-entropy with instance-balanced sampling (the plain baseline)",
    citation="He et al., Deep Residual Learning for Image Recognition, CVPR 2016",
    bibtex="""@inproceedings{he2016resnet,
  title = {Deep Residual Learning for Image Recognition},
  author = {He, Kaiming and Zhang, Xiangyu and Ren, Shaoqing and Sun, Jian},
  booktitle = {CVPR},
  year = {2016}
}""",
    loss=PartRef("ce"),
    hparams=NoHParams(),
    model=ModelSpec(proj_dim=None),
    recipes=_cifar_recipes({"cifar10-lt-if100": {"All": 70.4}, "cifar10-lt-if50": {"All": 74.8},
                            "cifar10-lt-if10": {"All": 86.4}, "cifar100-lt-if100": {"All": 38.3},
                            "cifar100-lt-if50": {"All": 43.9}, "cifar100-lt-if10": {"All": 55.7}}),
)

LOGIT_ADJUST = MethodSpec(
    name="logit-adjust",
    summary="logit-adjusted cross-entropy: CE(u + t log pi, y), predict argmax u",
    citation="Menon et al., Long-tail learning via logit adjustment, ICLR 2021",
    bibtex="""@inproceedings{menon2021logit,
  title = {Long-tail learning via logit adjustment},
  author = {Menon, Aditya Krishna and Jayasumana, Sadeep and Rawat, Ankit Singh and Jain, Himanshu and Veit, Andreas and Kumar, Sanjiv},
  booktitle = {ICLR},
  year = {2021}
}""",
    loss=PartRef("logit-adjusted-ce", tau=hp("tau")),
    hparams=LAHParams(),
    model=ModelSpec(proj_dim=None),
    recipes=_cifar_recipes({}),
)

BALANCED_SOFTMAX = MethodSpec(
    name="balanced-softmax",
    summary="balanced softmax: CE(u + log n_c, y), predict argmax u",
    citation="Ren et al., Balanced Meta-Softmax for Long-Tailed Visual Recognition, NeurIPS 2020",
    bibtex="""@inproceedings{ren2020balanced,
  title = {Balanced Meta-Softmax for Long-Tailed Visual Recognition},
  author = {Ren, Jiawei and Yu, Cunjun and Sheng, Shunan and Ma, Xiao and Zhao, Haiyu and Yi, Shuai and Li, Hongsheng},
  booktitle = {NeurIPS},
  year = {2020}
}""",
    loss=PartRef("balanced-softmax"),
    hparams=NoHParams(),
    model=ModelSpec(proj_dim=None),
    recipes=_cifar_recipes({}),
)

LDAM_DRW = MethodSpec(
    name="ldam-drw",
    summary="LDAM margins (n_c^-1/4, cosine logits s=30) with deferred re-weighting",
    citation="Cao et al., Learning Imbalanced Datasets with Label-Distribution-Aware Margin Loss, NeurIPS 2019",
    bibtex="""@inproceedings{cao2019ldam,
  title = {Learning Imbalanced Datasets with Label-Distribution-Aware Margin Loss},
  author = {Cao, Kaidi and Wei, Colin and Gaidon, Adrien and Arechiga, Nikos and Ma, Tengyu},
  booktitle = {NeurIPS},
  year = {2019}
}""",
    loss=PartRef("ldam", max_margin=hp("max_margin"), s=hp("scale"), drw_start_epoch=hp("drw_start_epoch"),
                 reweight_beta=hp("drw_beta")),
    hparams=LDAMHParams(),
    model=ModelSpec(proj_dim=None, classifier="cosine", cosine_scale=1.0),
    recipes=_cifar_recipes({"cifar10-lt-if100": {"All": 77.0}, "cifar10-lt-if50": {"All": 80.9},
                            "cifar10-lt-if10": {"All": 88.2}, "cifar100-lt-if100": {"All": 42.0},
                            "cifar100-lt-if50": {"All": 46.2}, "cifar100-lt-if10": {"All": 58.7}}),
)

SUPCON = MethodSpec(
    name="supcon",
    summary="supervised contrastive pre-training (two SimAugment views), then cRT on the frozen backbone",
    citation="Khosla et al., Supervised Contrastive Learning, NeurIPS 2020; Kang et al., Decoupling, ICLR 2020",
    bibtex="""@inproceedings{khosla2020supcon,
  title = {Supervised Contrastive Learning},
  author = {Khosla, Prannay and Teterwak, Piotr and Wang, Chen and Sarna, Aaron and Tian, Yonglong and Isola, Phillip and Maschinot, Aaron and Liu, Ce and Krishnan, Dilip},
  booktitle = {NeurIPS},
  year = {2020}
}
@inproceedings{kang2020decoupling,
  title = {Decoupling Representation and Classifier for Long-Tailed Recognition},
  author = {Kang, Bingyi and Xie, Saining and Rohrbach, Marcus and Yan, Zhicheng and Gordo, Albert and Feng, Jiashi and Kalantidis, Yannis},
  booktitle = {ICLR},
  year = {2020}
}""",
    loss=PartRef("supcon", temperature=hp("temperature")),
    hparams=SupConHParams(),
    views=("sim", "sim"),
    stage2=Stage(PartRef("crt"), epochs=hp("stage2_epochs")),
    model=ModelSpec(proj_dim=128, train_heads=("projector",)),  # the classifier is cRT's, in stage 2
    recipes=_cifar_recipes({"cifar100-lt-if100": {"All": 45.8}, "cifar100-lt-if50": {"All": 52.0},
                            "cifar100-lt-if10": {"All": 64.4}}),
    readings=(
        Reading("SupCon over all views, the log outside the sum over positives (L_out)",
                Tag.paper("Khosla et al. 2020, Eq. 2 (L^sup_out, the better of the two)")),
        Reading("an anchor with no positive in the batch contributes 0 and is left out of the mean",
                Tag.ours("the paper's 1/|P(i)| is undefined at |P(i)| = 0")),
        Reading("stage 2: cRT, a new linear classifier on the frozen backbone, class-balanced sampling, CE",
                Tag.paper("Kang et al. 2020, Sec. 4 (cRT)")),
    ),
)
