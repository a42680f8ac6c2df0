# ltreg_template/__init__.py
"""ltreg-template: the plugin tutorial's method, SupCon + logit-adjusted CE trained together in one stage.

The spec is data: it names its loss (this package's ``template-supcon-la``) and the core parts it reuses
(the ``instance`` sampler), its views, its model heads, typed hyper-parameters and one recipe.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ltreg import HParams, MethodSpec, ModelSpec, PartRef, Reading, Recipe, Tag, hp
from ltreg_template.loss import SupConLALoss, supcon_la

__version__ = "0.1.0"


@dataclass(frozen=True)
class TemplateHParams(HParams):
    """Typed, range-checked hyper-parameters: ``--hp temperature=0.2`` on the command line."""

    temperature: float = field(default=0.1, metadata={"min": 0, "min_exclusive": True, "help": "SupCon temperature"})
    tau: float = field(default=1.0, metadata={"min": 0, "help": "logit-adjustment strength t (0: plain CE)"})
    con_weight: float = field(default=1.0, metadata={"min": 0, "help": "weight of the SupCon term"})
    ce_weight: float = field(default=1.0, metadata={"min": 0, "help": "weight of the logit-adjusted CE term"})


RECIPES = {
    "cifar100-lt-if100": Recipe(
        "CIFAR-100-LT IF 100, ResNet-32, 200 epochs, batch 128, SGD 0.1 cosine, 5 warm-up epochs (an example, not a paper)",
        train={"dataset": "cifar100-lt", "imbalance": 100.0, "backbone": "resnet32", "epochs": 200,
               "batch_size": 128, "lr": 0.1, "weight_decay": 5e-4, "schedule": "cosine", "warmup_epochs": 5},
        hparams={"temperature": 0.1},
    ),
}

METHOD = MethodSpec(
    name="template-supcon-la",
    summary="tutorial template: SupCon over two views + logit-adjusted CE on the first, one stage",
    citation="Khosla et al., Supervised Contrastive Learning, NeurIPS 2020; Menon et al., Long-tail learning "
             "via logit adjustment, ICLR 2021",
    loss=PartRef("template-supcon-la", temperature=hp("temperature"), tau=hp("tau"),
                 con_weight=hp("con_weight"), ce_weight=hp("ce_weight")),
    hparams=TemplateHParams(),
    sampler=PartRef("instance"),  # a core part, reused by name
    views=("cls", "sim"),  # view 0: crop + flip (classifier and SupCon); view 1: SimAugment (SupCon)
    model=ModelSpec(classifier="linear", proj_dim=128),
    recipes=RECIPES,
    readings=(
        Reading("SupCon 'all' mode over both views (L_out)", Tag.paper("Khosla et al. 2020, Eq. 2")),
        Reading("LA-CE(u + t log pi) on view 0; predict argmax u", Tag.paper("Menon et al. 2021, the logit-adjusted softmax cross-entropy")),
        Reading("the two terms summed with weights con_weight and ce_weight, one stage", Tag.ours("the template's")),
    ),
)

__all__ = ["METHOD", "RECIPES", "SupConLALoss", "TemplateHParams", "supcon_la"]
