"""CoGloAT's recipes hold the paper's settings (§5.1, Tables 2 and 3) as documented, every value tagged with its
source, and their descriptions state the values they hold. Written from the surviving mutants of
``plugins/mutate.sh`` on ``ltreg_cogloat/__init__.py`` (issue 29)."""

from __future__ import annotations

import pytest
from ltreg_cogloat import METHOD

COMMON = {"batch_size": 256, "lr": 0.1, "momentum": 0.9, "weight_decay": 1e-4, "schedule": "cosine",
          "warmup_epochs": 0, "stage2_lr": 0.1, "stage2_batch_size": 256}
TABLE2 = {("cifar10-lt", 100): 81.6, ("cifar10-lt", 50): 85.5, ("cifar10-lt", 10): 89.4,
          ("cifar100-lt", 100): 46.0, ("cifar100-lt", 50): 50.4, ("cifar100-lt", 10): 60.8}
IMPL = "§5.1 Implementation details"


def _tags(r):
    return {k: (t.kind, t.where) for k, t in r.tags.items()}


COMMON_TAGS = {"batch_size": ("P", IMPL), "lr": ("P", IMPL), "momentum": ("P", IMPL),
               "weight_decay": ("D", "not reported; MoCo-v2 / TSC practice"),
               "schedule": ("D", "not reported; MoCo-v2 / TSC practice (cosine)"), "warmup_epochs": ("D", "none reported"),
               "stage2_lr": ("P", IMPL + ": classifier lr 0.1"), "stage2_batch_size": ("P", IMPL + ": batch 256")}


@pytest.mark.parametrize("ds, imb", list(TABLE2))
def test_cifar_recipes_are_the_papers_settings(ds, imb):
    r = METHOD.recipe(f"{ds}-if{imb}")
    loss = "ldam" if ds == "cifar10-lt" else "ce"  # LDAM + reweight on CIFAR-10-LT, CE + reweight on CIFAR-100-LT
    assert dict(r.train) == {**COMMON, "dataset": ds, "imbalance": float(imb), "backbone": "resnet32", "epochs": 1000}
    assert dict(r.hparams) == {"queue_size": 4096, "stage2_loss": loss, "stage2_epochs": 100}
    assert dict(r.paper) == {"All": TABLE2[ds, imb]}
    assert r.untagged() == []
    assert _tags(r) == {**COMMON_TAGS, "dataset": ("P", "Table 2"), "imbalance": ("P", "Table 2"),
                        "backbone": ("P", IMPL + ": ResNet-32"), "epochs": ("P", IMPL + ": 1,000 epochs"),
                        "queue_size": ("D", "not reported ('same configurations as TSC'); 4,096"),
                        "stage2_loss": ("P", IMPL + ": LDAM + reweight CIFAR-10-LT, CE + reweight CIFAR-100-LT"),
                        "stage2_epochs": ("D", "not reported for CIFAR; ImageNet-LT's 100"), "All": ("P", "Table 2")}
    assert r.description == (f"{ds} IF {imb}, ResNet-32, 1000 epochs, batch 256, SGD 0.1 cosine; stage 2 "
                             f"{loss.upper()} + reweight")


def test_imagenet_recipe_is_the_papers_setting():
    r = METHOD.recipe("imagenet-lt")
    assert dict(r.train) == {**COMMON, "dataset": "imagenet-lt", "backbone": "resnet50", "epochs": 200}
    assert dict(r.hparams) == {"queue_size": 65536, "stage2_loss": "ce", "stage2_epochs": 100}
    assert dict(r.paper) == {"All": 49.8, "Many": 59.0, "Medium": 49.5, "Few": 40.9}
    assert r.untagged() == []
    assert _tags(r) == {**COMMON_TAGS, "dataset": ("P", "Table 3"), "backbone": ("P", IMPL + ": ResNet-50"),
                        "epochs": ("P", IMPL + ": 200 epochs"), "queue_size": ("D", "not reported; MoCo-v2's 65,536"),
                        "stage2_loss": ("P", IMPL + ": 'similar to CIFAR' (CE + reweight, as CIFAR-100-LT)"),
                        "stage2_epochs": ("P", IMPL + ": 'an additional 100 epochs'"),
                        **{k: ("P", "Table 3 ('Ours')") for k in ("All", "Many", "Medium", "Few")}}
    assert r.description == ("ImageNet-LT, ResNet-50, 200 epochs, batch 256, SGD 0.1 cosine, queue 65,536; stage 2 100 "
                             "epochs CE + reweight")
