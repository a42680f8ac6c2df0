"""ACL's recipes hold GPaCo's settings (Cui et al., arXiv 2209.12400) as documented, every value tagged with its
source, and their descriptions state the values they hold. Written from the surviving mutants of
``plugins/mutate.sh`` on ``ltreg_acl/__init__.py`` (issue 29)."""

from __future__ import annotations

import pytest
from ltreg_acl import METHOD

GPACO_CIFAR = {"backbone": "resnet32", "epochs": 400, "batch_size": 128, "lr": 0.1, "weight_decay": 5e-4,
               "schedule": "cosine", "warmup_epochs": 10}
CIFAR_HP = {"temperature": 0.05, "alpha": 0.01, "beta": 1.0, "num_views": 2, "augment": "cifar", "proj_dim": 32}
DELTAS = {100: "+0.3", 50: "+0.5", 10: "+1.0"}  # the abstract: gain over the previous best on CIFAR-100-LT
CIFAR = [(ds, imb) for ds in ("cifar10-lt", "cifar100-lt") for imb in (100, 50, 10)]


def _tags(r):
    return {k: (t.kind, t.where) for k, t in r.tags.items()}


def test_recipe_names():
    assert set(METHOD.recipes) == {f"{ds}-if{imb}" for ds, imb in CIFAR} | {"imagenet-lt"}


@pytest.mark.parametrize("ds, imb", CIFAR)
def test_cifar_recipes_are_gpaco_cifar_settings(ds, imb):
    r = METHOD.recipe(f"{ds}-if{imb}")
    assert dict(r.train) == {**GPACO_CIFAR, "dataset": ds, "imbalance": float(imb)}
    assert dict(r.hparams) == CIFAR_HP and dict(r.paper) == {}
    assert r.untagged() == []
    gpaco = ("D", "GPaCo's CIFAR-LT setting (Cui et al., arXiv 2209.12400, and its code); ACL's body unreadable")
    source = ("P", "abstract: CIFAR-10/100-LT") if ds == "cifar100-lt" else (
        "D", "GPaCo's benchmark; the abstract names CIFAR-100-LT results only")  # the abstract names CIFAR-100-LT only
    assert _tags(r) == {**{k: gpaco for k in (*r.train, *r.hparams)}, "dataset": source, "imbalance": source,
                        "beta": ("D", "own centre weight 1 (GPaCo)"),
                        "num_views": ("D", "two views (GPaCo); the abstract ablates V")}
    note = f"; paper: previous best {DELTAS[imb]} (no absolute number)" if ds == "cifar100-lt" else ""
    assert r.description == (
        f"{ds} IF {imb}, ResNet-32, 400 epochs, batch 128, SGD 0.1 cosine (10 warm-up), wd 5e-4, tau 0.05, alpha 0.01, "
        f"V 2, views crop+flip+AutoAugment+Cutout / SimAugment, projection 32 [D: GPaCo CIFAR]; NO MoCo queue (GPaCo "
        f"CIFAR has a 1,024 queue; ACL here contrasts the batch only, one encoder){note}")


def test_imagenet_recipe_is_gpaco_resnet50_setting():
    r = METHOD.recipe("imagenet-lt")
    assert dict(r.train) == {"dataset": "imagenet-lt", "backbone": "resnet50", "epochs": 400, "batch_size": 128,
                             "lr": 0.04, "weight_decay": 5e-4, "schedule": "cosine", "warmup_epochs": 10}
    assert dict(r.hparams) == {"temperature": 0.2, "alpha": 0.045, "beta": 1.0, "num_views": 2}
    assert r.untagged() == []
    gpaco = ("D", "GPaCo's ImageNet-LT ResNet-50 setting (ACL's body unreadable)")
    assert _tags(r) == {**{k: gpaco for k in (*r.train, *r.hparams)}, "dataset": ("P", "abstract: ImageNet-LT")}
    assert r.description == ("ImageNet-LT, ResNet-50, 400 epochs, batch 128, SGD 0.04 cosine (10 warm-up), wd 5e-4, "
                             "tau 0.2, alpha 0.045, V 2 [D: GPaCo R50]; paper: new SOTA claimed, no number recovered")
