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


def test_recipe_names():
    assert set(METHOD.recipes) == {f"{ds}-if{imb}" for ds, imb in CIFAR} | {"imagenet-lt"}


@pytest.mark.parametrize("ds, imb", CIFAR)
def test_cifar_recipes_are_gpaco_cifar_settings(ds, imb):
    r = METHOD.recipe(f"{ds}-if{imb}")
    assert dict(r.train) == {**GPACO_CIFAR, "dataset": ds, "imbalance": float(imb)}
    assert dict(r.hparams) == CIFAR_HP and dict(r.paper) == {}
    assert r.untagged() == []
    paper = {"dataset", "imbalance"} if ds == "cifar100-lt" else set()  # the abstract names CIFAR-100-LT only
    assert {k for k, t in r.tags.items() if t.kind == "P"} == paper
    assert all(t.kind == "D" and "GPaCo" in t.where for k, t in r.tags.items() if k not in paper)
    assert all("abstract" in r.tags[k].where for k in paper)
    text = r.description
    for part in (f"{ds} IF {imb}", "ResNet-32", "400 epochs", "batch 128", "SGD 0.1 cosine (10 warm-up)", "wd 5e-4",
                 "tau 0.05", "alpha 0.01", "V 2", "projection 32", "NO MoCo queue"):
        assert part in text, part
    note = f"; paper: previous best {DELTAS[imb]} (no absolute number)"
    assert text.endswith(note) if ds == "cifar100-lt" else "paper:" not in text


def test_imagenet_recipe_is_gpaco_resnet50_setting():
    r = METHOD.recipe("imagenet-lt")
    assert dict(r.train) == {"dataset": "imagenet-lt", "backbone": "resnet50", "epochs": 400, "batch_size": 128,
                             "lr": 0.04, "weight_decay": 5e-4, "schedule": "cosine", "warmup_epochs": 10}
    assert dict(r.hparams) == {"temperature": 0.2, "alpha": 0.045, "beta": 1.0, "num_views": 2}
    assert r.untagged() == []
    assert r.tags["dataset"].kind == "P" and "abstract" in r.tags["dataset"].where
    assert all(t.kind == "D" and "GPaCo" in t.where for k, t in r.tags.items() if k != "dataset")
    for part in ("ImageNet-LT", "ResNet-50", "400 epochs", "batch 128", "SGD 0.04 cosine (10 warm-up)", "wd 5e-4",
                 "tau 0.2", "alpha 0.045", "V 2", "new SOTA claimed, no number recovered"):
        assert part in r.description, part
