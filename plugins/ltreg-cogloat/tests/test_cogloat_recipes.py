"""CoGloAT's recipes hold the paper's settings (§5.1, Tables 2 and 3) as documented, every value tagged with its
source, and their descriptions state the values they hold. Written from the surviving mutants of
``plugins/mutate.sh`` on ``ltreg_cogloat/__init__.py`` (issue 29)."""

from __future__ import annotations

import pytest
from ltreg_cogloat import METHOD

COMMON = {"batch_size": 256, "lr": 0.1, "momentum": 0.9, "weight_decay": 1e-4, "schedule": "cosine",
          "warmup_epochs": 0, "stage2_lr": 0.1, "stage2_batch_size": 256}
COMMON_KINDS = {"batch_size": "P", "lr": "P", "momentum": "P", "weight_decay": "D", "schedule": "D",
                "warmup_epochs": "D", "stage2_lr": "P", "stage2_batch_size": "P"}
TABLE2 = {("cifar10-lt", 100): 81.6, ("cifar10-lt", 50): 85.5, ("cifar10-lt", 10): 89.4,
          ("cifar100-lt", 100): 46.0, ("cifar100-lt", 50): 50.4, ("cifar100-lt", 10): 60.8}
IMPL = "§5.1 Implementation details"


def _kinds(r):
    return {k: t.kind for k, t in r.tags.items()}


@pytest.mark.parametrize("ds, imb", list(TABLE2))
def test_cifar_recipes_are_the_papers_settings(ds, imb):
    r = METHOD.recipe(f"{ds}-if{imb}")
    loss = "ldam" if ds == "cifar10-lt" else "ce"  # LDAM + reweight on CIFAR-10-LT, CE + reweight on CIFAR-100-LT
    assert dict(r.train) == {**COMMON, "dataset": ds, "imbalance": float(imb), "backbone": "resnet32", "epochs": 1000}
    assert dict(r.hparams) == {"queue_size": 4096, "stage2_loss": loss, "stage2_epochs": 100}
    assert dict(r.paper) == {"All": TABLE2[ds, imb]}
    assert r.untagged() == []
    assert _kinds(r) == {**COMMON_KINDS, "dataset": "P", "imbalance": "P", "backbone": "P", "epochs": "P",
                         "queue_size": "D", "stage2_loss": "P", "stage2_epochs": "D", "All": "P"}
    assert all(r.tags[k].where == "Table 2" for k in ("dataset", "imbalance", "All"))
    assert all(r.tags[k].where.startswith(IMPL) for k in ("batch_size", "lr", "momentum", "backbone", "epochs",
                                                          "stage2_loss", "stage2_lr", "stage2_batch_size"))
    assert "ResNet-32" in r.tags["backbone"].where and "1,000 epochs" in r.tags["epochs"].where
    assert "4,096" in r.tags["queue_size"].where and "ImageNet-LT's 100" in r.tags["stage2_epochs"].where
    assert r.description == (f"{ds} IF {imb}, ResNet-32, 1000 epochs, batch 256, SGD 0.1 cosine; stage 2 "
                             f"{loss.upper()} + reweight")


def test_imagenet_recipe_is_the_papers_setting():
    r = METHOD.recipe("imagenet-lt")
    assert dict(r.train) == {**COMMON, "dataset": "imagenet-lt", "backbone": "resnet50", "epochs": 200}
    assert dict(r.hparams) == {"queue_size": 65536, "stage2_loss": "ce", "stage2_epochs": 100}
    assert dict(r.paper) == {"All": 49.8, "Many": 59.0, "Medium": 49.5, "Few": 40.9}
    assert r.untagged() == []
    assert _kinds(r) == {**COMMON_KINDS, "dataset": "P", "backbone": "P", "epochs": "P", "queue_size": "D",
                         "stage2_loss": "P", "stage2_epochs": "P", "All": "P", "Many": "P", "Medium": "P", "Few": "P"}
    assert r.tags["dataset"].where == "Table 3" and all(r.tags[k].where == "Table 3 ('Ours')" for k in r.paper)
    assert "ResNet-50" in r.tags["backbone"].where and "200 epochs" in r.tags["epochs"].where
    assert "65,536" in r.tags["queue_size"].where and "100 epochs" in r.tags["stage2_epochs"].where
    assert r.description == ("ImageNet-LT, ResNet-50, 200 epochs, batch 256, SGD 0.1 cosine, queue 65,536; stage 2 100 "
                             "epochs CE + reweight")


def test_common_tags_name_their_source():
    r = METHOD.recipe("imagenet-lt")
    assert "MoCo-v2 / TSC" in r.tags["weight_decay"].where and "cosine" in r.tags["schedule"].where
    assert r.tags["warmup_epochs"].where == "none reported"
    assert r.tags["stage2_lr"].where.endswith("classifier lr 0.1") and r.tags["stage2_batch_size"].where.endswith(
        "batch 256")
