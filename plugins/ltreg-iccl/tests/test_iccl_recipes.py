"""ICCL's recipes hold the settings documented in ``ltreg_iccl.method`` (Tables 1-3 [P]; settings stripped from the
paper's text are [D] with their source), every value tagged, and their descriptions state the values they hold.
Written from the surviving mutants of ``plugins/mutate.sh`` on ``ltreg_iccl/method.py`` (issue 29)."""

from __future__ import annotations

import pytest
from ltreg_iccl import ICCL

CIFAR_TRAIN = {"epochs": 200, "batch_size": 128, "lr": 0.1, "weight_decay": 2e-4, "warmup_epochs": 5,
               "schedule": "step", "milestones": [160, 180], "lr_decay": 0.01, "backbone": "resnet32"}
CIFAR_HP = {"uniform_weight_after_warmup": 0.0, "stage2_finetune_backbone": True, "proj_dim": 32}
TABLE1 = {("cifar100-lt", 100): 46.6, ("cifar100-lt", 50): 51.6, ("cifar100-lt", 10): 62.1,
          ("cifar10-lt", 100): 82.1, ("cifar10-lt", 50): 84.7, ("cifar10-lt", 10): 89.7}


def _kinds(r):
    return {k: t.kind for k, t in r.tags.items()}


def _tags(r):
    return {k: (t.kind, t.where) for k, t in r.tags.items()}


@pytest.mark.parametrize("ds, imb", list(TABLE1))
def test_cifar_recipes(ds, imb):
    r = ICCL.recipe(f"{ds}-if{imb}")
    assert dict(r.train) == {**CIFAR_TRAIN, "dataset": ds, "imbalance": float(imb)}
    assert dict(r.hparams) == CIFAR_HP and dict(r.paper) == {"All": TABLE1[ds, imb]}
    assert r.untagged() == []
    bbn = {"epochs", "batch_size", "lr", "weight_decay", "warmup_epochs", "milestones", "lr_decay"}
    assert all(r.tags[k].kind == "D" and r.tags[k].where.startswith("BBN's CIFAR-LT setting") for k in bbn)
    assert (r.tags["schedule"].kind, r.tags["backbone"].kind) == ("P", "P")
    assert r.tags["schedule"].where.startswith("§4.3: warm-up") and r.tags["backbone"].where == "§4.3: ResNet-32"
    assert all((r.tags[k].kind, r.tags[k].where) == ("P", "Table 1") for k in ("dataset", "imbalance", "All"))
    assert _kinds(r)["uniform_weight_after_warmup"] == "D" and _kinds(r)["proj_dim"] == "D"
    assert r.tags["stage2_finetune_backbone"].kind == "P" and r.tags["stage2_finetune_backbone"].where.startswith("§3.6")
    assert r.description == (f"{ds} IF {imb}, ResNet-32, 200 epochs (T_w 100), SGD 0.1 step x0.01 at 160/180, w_u = 0 "
                             f"after the warm-up, stage 2 fine-tunes the backbone at lr x0.1")


def test_imagenet_recipe():
    r = ICCL.recipe("imagenet-lt-x50")
    assert dict(r.train) == {"dataset": "imagenet-lt", "backbone": "resnext50_32x4d", "epochs": 90, "batch_size": 128,
                             "lr": 0.05, "weight_decay": 5e-4, "schedule": "cosine"}
    assert dict(r.hparams) == {"colour_jitter": True}
    assert dict(r.paper) == {"All": 54.0, "Many": 60.7, "Medium": 52.9, "Few": 39.0}
    assert r.untagged() == []
    assert _tags(r) == {"dataset": ("P", "Table 2"), "backbone": ("P", "§4.3: ResNeXt-50"),
                        "schedule": ("P", "§4.3: cosine"), "epochs": ("D", "stripped from §4.3; Decouple's [22] 90"),
                        "batch_size": ("D", "§4.4: 'a smaller batch size' than Decouple's, number stripped"),
                        "lr": ("D", "§4.4: an improved learning rate, number stripped"),
                        "weight_decay": ("D", "stripped from §4.3; Decouple's [22] 5e-4"),
                        "colour_jitter": ("P", "§4.3: flip, cropping and colour jittering"),
                        **{k: ("P", "Table 2") for k in ("All", "Many", "Medium", "Few")}}
    assert r.description.startswith("ImageNet-LT, ResNeXt-50 32x4d, 90 epochs (T_w 45), batch 128, SGD 0.05 cosine, "
                                    "wd 5e-4, flip + crop + colour jitter")


@pytest.mark.parametrize("name, epochs, paper", [
    ("inat2018-r50", 90, {"All": 70.5, "Many": 67.6, "Medium": 70.2, "Few": 71.6}),
    ("inat2018-r50-200ep", 200, {"All": 72.5, "Many": 72.1, "Medium": 72.3, "Few": 72.9})])
def test_inaturalist_recipes(name, epochs, paper):
    r = ICCL.recipe(name)
    assert dict(r.train) == {"dataset": "inat2018", "backbone": "resnet50", "epochs": epochs, "batch_size": 256,
                             "lr": 0.1, "weight_decay": 1e-4, "schedule": "cosine"}
    assert dict(r.hparams) == {} and dict(r.paper) == paper
    assert r.untagged() == []
    assert _tags(r) == {"dataset": ("P", "Table 3"), "backbone": ("P", "§4.3: ResNet-50"),
                        "epochs": ("P", "Table 3: 90 and 200 epochs"), "schedule": ("P", "§4.3: cosine decay"),
                        "batch_size": ("D", "stripped from §4.3; Decouple's [22] 256"),
                        "lr": ("D", "stripped from §4.3; Decouple's [22] 0.1"),
                        "weight_decay": ("D", "stripped from §4.3; Decouple's [22] 1e-4"),
                        **{k: ("P", f"Table 3, {epochs} epochs") for k in paper}}
    assert r.description == (f"iNaturalist 2018, ResNet-50, {epochs} epochs (T_w {epochs // 2}), batch 256, SGD 0.1 "
                             f"cosine, wd 1e-4; stage 2 on the frozen backbone")


def test_recipe_names():
    assert set(ICCL.recipes) == {f"{ds}-if{imb}" for ds, imb in TABLE1} | {"imagenet-lt-x50", "inat2018-r50",
                                                                          "inat2018-r50-200ep"}
