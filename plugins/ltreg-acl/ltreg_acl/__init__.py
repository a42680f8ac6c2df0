"""ACL for ltreg: Aligned Contrastive Loss for Long-Tailed Recognition (Ma et al., arXiv 2506.01071).

Only the paper's abstract and summaries could be read: the loss is a reconstruction [R] of what they claim
(equations in ``ltreg_acl.loss``), and every default they do not give is tagged [D] (GPaCo's values, Cui et al.,
arXiv 2209.12400).
Parts: loss ``acl`` (this package), sampler ``instance`` (core), no prototype part (the class centres are the
model's linear classifier, trained through the loss), no rebalancing stage (logit compensation ``log pi`` is in
the loss), inference ``argmax u``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from ltreg import HParams, MethodSpec, ModelSpec, PartRef, Reading, Recipe, Tag, ViewPlan, hp
from ltreg_acl.loss import NEG_WEIGHTS, POSITIVES, ACLLoss, acl, negative_weights

__version__ = "0.1.0"
P, D = Tag.paper, Tag.ours


@dataclass(frozen=True)
class ACLHParams(HParams):
    """ACL's hyper-parameters; defaults [D] are GPaCo's ImageNet-LT values (CIFAR recipes override)."""

    temperature: float = field(default=0.2, metadata={"min": 0, "min_exclusive": True,
                                                      "help": "tau of the sample logits [D: GPaCo 0.2 ImageNet-LT, 0.05 CIFAR]"})
    alpha: float = field(default=0.05, metadata={"min": 0, "help": "weight of each sample positive [D: GPaCo 0.05, CIFAR 0.01]"})
    beta: float = field(default=1.0, metadata={"min": 0, "min_exclusive": True, "help": "weight of the own class centre [D: 1]"})
    num_views: int = field(default=2, metadata={"min": 2, "max": 8,
                                                "help": "views per image V (the paper's ablation knob) [D: 2]; extra views repeat the last pipeline"})
    neg_weight: str = field(default="dataset", metadata={"choices": NEG_WEIGHTS,
                                                         "help": "negative weights omega: dataset 1/n_c (normalised), batch 1/|B_c|, none [D]"})
    positives: str = field(default="per-positive", metadata={"choices": POSITIVES,
                                                             "help": "per-positive denominators, or same-image views dropped from a shared denominator [R]"})
    augment: Literal["rand", "cifar"] = field(default="rand", metadata={
        "choices": ("rand", "cifar"),
        "help": "first view: RandAugment (GPaCo ImageNet-LT) or crop+flip+AutoAugment+Cutout (GPaCo CIFAR) [D]"})
    proj_dim: int = field(default=128, metadata={"min": 1, "help": "projection size d [D: GPaCo 128, CIFAR 32]"})


def _recipes() -> dict[str, Recipe]:
    """GPaCo's settings [D] (Cui et al., arXiv 2209.12400, and its official code); ACL's own recipes and absolute
    numbers were not recovered."""
    cifar = {"backbone": "resnet32", "epochs": 400, "batch_size": 128, "lr": 0.1, "weight_decay": 5e-4,
             "schedule": "cosine", "warmup_epochs": 10}
    gpaco = D("GPaCo's CIFAR-LT setting (Cui et al., arXiv 2209.12400, and its code); ACL's body unreadable")
    deltas = {100: "+0.3", 50: "+0.5", 10: "+1.0"}
    out = {}
    for ds in ("cifar10-lt", "cifar100-lt"):
        for imb in (100, 50, 10):
            note = f"; paper: previous best {deltas[imb]} (no absolute number)" if ds == "cifar100-lt" else ""
            hparams = {"temperature": 0.05, "alpha": 0.01, "beta": 1.0, "num_views": 2, "augment": "cifar",
                       "proj_dim": 32}
            train = {**cifar, "dataset": ds, "imbalance": float(imb)}
            tags = {k: gpaco for k in (*train, *hparams)}
            tags["dataset"] = tags["imbalance"] = P("abstract: CIFAR-10/100-LT") if ds == "cifar100-lt" else D(
                "GPaCo's benchmark; the abstract names CIFAR-100-LT results only")
            tags["beta"] = D("own centre weight 1 (GPaCo)")
            tags["num_views"] = D("two views (GPaCo); the abstract ablates V")
            out[f"{ds}-if{imb}"] = Recipe(
                f"{ds} IF {imb}, ResNet-32, 400 epochs, batch 128, SGD 0.1 cosine (10 warm-up), wd 5e-4, "
                f"tau 0.05, alpha 0.01, V 2, views crop+flip+AutoAugment+Cutout / SimAugment, projection 32 "
                f"[D: GPaCo CIFAR]; NO MoCo queue (GPaCo CIFAR has a 1,024 queue; ACL here contrasts the "
                f"batch only, one encoder){note}",
                train=train, hparams=hparams, tags=tags)
    train = {"dataset": "imagenet-lt", "backbone": "resnet50", "epochs": 400, "batch_size": 128, "lr": 0.04,
             "weight_decay": 5e-4, "schedule": "cosine", "warmup_epochs": 10}
    hparams = {"temperature": 0.2, "alpha": 0.045, "beta": 1.0, "num_views": 2}
    tags = {k: D("GPaCo's ImageNet-LT ResNet-50 setting (ACL's body unreadable)") for k in (*train, *hparams)}
    tags["dataset"] = P("abstract: ImageNet-LT")
    out["imagenet-lt"] = Recipe(
        "ImageNet-LT, ResNet-50, 400 epochs, batch 128, SGD 0.04 cosine (10 warm-up), wd 5e-4, tau 0.2, "
        "alpha 0.045, V 2 [D: GPaCo R50]; paper: new SOTA claimed, no number recovered",
        train=train, hparams=hparams, tags=tags)
    return out


METHOD = MethodSpec(
    name="acl",
    summary="aligned contrastive loss: per-positive denominators, 1/n_c-weighted negatives, class centres + log prior",
    citation="Ma, Cui, Kazuki, Subramanian, Jayashree, Pranata, Zhang, Aligned Contrastive Loss for Long-Tailed "
             "Recognition, arXiv 2506.01071 (CVPR 2025 DG-EBF workshop)",
    bibtex="""@misc{ma2025acl,
  title = {Aligned Contrastive Loss for Long-Tailed Recognition},
  author = {Ma and Cui and Kazuki and Subramanian and Jayashree and Pranata and Zhang},
  howpublished = {arXiv:2506.01071 (CVPR 2025 DG-EBF workshop)},
  year = {2025}
}""",
    loss=PartRef("acl", temperature=hp("temperature"), alpha=hp("alpha"), beta=hp("beta"),
                 neg_weight=hp("neg_weight"), positives=hp("positives")),
    hparams=ACLHParams(),
    sampler=PartRef("instance"),
    # view 0: hp augment (rand = RandAugment, cifar = GPaCo's CIFAR pipeline); V = hp num_views, extra views "sim"
    views=ViewPlan((hp("augment"), "sim"), count=hp("num_views")),
    model=ModelSpec(classifier="linear", proj_dim=hp("proj_dim")),  # resolved per run: METHOD.model_for(hparams)
    recipes=_recipes(),
    readings=(
        Reading("every view of every image is an anchor; one encoder, no MoCo queue (the batch only)",
                D("GPaCo's multi-view setting without its queue; ACL's body unreadable")),
        Reading("each positive alone with the negatives in its denominator (per-positive denominators)",
                D("reconstruction of the summary's 'only effective positives in the denominator'; "
                  "positives=same-image "
                  "drops same-image views from a shared denominator")),
        Reading("negative pairs weighted inversely to class frequency",
                P("abstract summary, Key Results: 're-weighting negative pairs inversely proportional to class "
                  "frequency'")),
        Reading("those weights are omega_c = (1/n_c) / mean_k(1/n_k), n_c of the training set (neg_weight=dataset)",
                D("the normalisation and the counts' source are ours; neg_weight=batch uses 1/|B_c|, none drops them")),
        Reading("PaCo-style class centres: logits u + log pi, own centre weight beta, sample positives alpha",
                D("reconstruction after GPaCo (Cui et al., arXiv 2209.12400)")),
        Reading("one stage; prediction argmax u", D("the abstract names no rebalancing stage")),
        Reading("CIFAR recipes: GPaCo's CIFAR views (cifar + sim) and projection 32", D("GPaCo's CIFAR code settings")),
    ),
)

__all__ = ["METHOD", "ACLHParams", "ACLLoss", "acl", "negative_weights"]
