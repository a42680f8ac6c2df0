"""LIFT's recipes hold the authors' settings (github.com/shijxcs/LIFT) as documented in ``ltreg_lift``, every value
tagged with its source, the AdaptFormer width follows the authors' formula, and the descriptions state the values
they hold. Written from the surviving mutants of ``plugins/mutate.sh`` on ``ltreg_lift/__init__.py`` (issue 29)."""

from __future__ import annotations

import pytest
from ltreg_lift import CLIP_B16, METHOD, bottleneck

COMMON = {"optimizer": "sgd", "lr": 0.01, "momentum": 0.9, "weight_decay": 5e-4, "batch_size": 128,
          "schedule": "cosine", "warmup_epochs": 0, "backbone": CLIP_B16, "image_size": 224, "normalize": "backbone",
          "mixed_precision": "fp16"}
CODE = "the authors' code, github.com/shijxcs/LIFT"
RECIPES = {  # name: (dataset, classes, epochs, paper, extra train values)
    "imagenet-lt": ("imagenet-lt", 1000, 10, {"All": 78.3}, {}),
    "places-lt": ("places-lt", 365, 10, {"All": 52.2}, {}),
    "inat2018": ("inat2018", 8142, 20, {}, {}),
    **{f"cifar100-lt-if{imb}": ("cifar100-lt", 100, 10, {}, {"imbalance": float(imb)}) for imb in (100, 50, 10)},
}


@pytest.mark.parametrize(("classes", "layers", "dim"), [(1000, 12, 32), (365, 12, 8), (8142, 12, 256), (100, 12, 4),
                                                        (10, 12, 1), (24, 12, 1), (48, 12, 2), (100, 1, 32)])
def test_bottleneck_is_the_authors_formula(classes, layers, dim):
    """2 ** max(0, floor(log2(C / 2L))) [C: models/peft_vit.py adapter_dim]; at least 1 for few classes."""
    assert bottleneck(classes, layers) == dim
    if layers == 12:
        assert bottleneck(classes) == dim  # ViT-B/16's 12 blocks by default


@pytest.mark.parametrize("name", list(RECIPES))
def test_recipes_hold_the_authors_values_with_their_sources(name):
    ds, classes, epochs, paper, extra = RECIPES[name]
    r = METHOD.recipe(name)
    dim = bottleneck(classes)
    assert dict(r.train) == {**COMMON, "dataset": ds, "epochs": epochs, **extra}
    assert dict(r.hparams) == {"bottleneck": dim} and dict(r.paper) == paper
    assert r.untagged() == []
    assert all(t.kind == "C" and t.where.startswith(CODE) for k, t in r.tags.items() if k != "All")
    assert r.tags["bottleneck"].where.endswith("models/peft_vit.py adapter_dim formula")
    assert r.tags["lr"].where.endswith("configs/model/clip_vit_b16.yaml, utils/config.py")
    assert r.tags["mixed_precision"].where.endswith("prec amp") and r.tags["image_size"].where.endswith("resolution 224")
    want_epochs = "README and scripts/run_tab1to4_main_results.sh" if ds == "inat2018" else "configs/model num_epochs"
    assert r.tags["epochs"].where.endswith(want_epochs)
    if paper:
        assert r.tags["All"].kind == "D" and "issue 26" in r.tags["All"].where
    text = r.description
    assert text.startswith(f"{ds}: CLIP ViT-B/16 + AdaptFormer (bottleneck {dim}), cosine classifier s=25 from "
                           f"'a photo of a {{}}.', LA loss tau 1, SGD lr 0.01 momentum 0.9 wd 5e-4, batch 128, "
                           f"{epochs} epochs cosine, 224 px, CLIP normalisation, fp16 autocast [C]; test: five crops")
    tte = "test: five crops of the image resized to 248, logits averaged [C]"
    note = {"imagenet-lt": "; paper: 78.3 All [I]", "places-lt": "; paper: 52.2 All [I]",
            "inat2018": " (20 epochs: README and scripts/run_tab1to4_main_results.sh [C]); paper number not recorded",
            "cifar100-lt-if100": ", CIFAR images upsampled to 224 [C: resolution 224]; paper: up to 89.1 All [I]"}
    assert text.endswith(tte + note.get(name, ", CIFAR images upsampled to 224 [C: resolution 224]"))


def test_recipe_names():
    assert set(METHOD.recipes) == set(RECIPES)
