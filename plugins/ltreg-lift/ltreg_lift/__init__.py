"""LIFT for ltreg: Long-Tail Learning with Foundation Model: Heavy Fine-Tuning Hurts (Shi et al., ICML 2024).

A frozen CLIP ViT-B/16 image tower (timm's ``vit_base_patch16_clip_224.openai``) adapted by AdaptFormer -- a
bottleneck ``LN -> down -> ReLU -> up (zero-init) -> x s`` beside each block's MLP, fed the block's MLP input
-- a cosine classifier initialised from ``"a photo of a {}."`` through CLIP's text tower, the logit-adjusted
loss, SGD and test-time ensembling over five crops. Every part is the core's, by name: tuner ``adaptformer``,
head initialiser ``clip-text``, loss ``logit-adjusted-ce``, eval views ``fivecrop``.

Where each value comes from: [P] the paper, [C] the authors' code (github.com/shijxcs/LIFT, file named),
[I] issue 26's summary of the paper (the paper's tables themselves were not available to read), [D] ours.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from ltreg import HParams, MethodSpec, ModelSpec, PartRef, Pick, Reading, Recipe, Tag, ViewPlan, hp

__version__ = "0.1.0"

#: timm's image tower of the checkpoint whose text tower initialises the classifier (CLIP ViT-B/16, OpenAI).
CLIP_B16 = "vit_base_patch16_clip_224.openai"
#: A micro open_clip config for ``--quick``: its image tower is as wide (64) as timm's ``vit_micro_patch4``.
MICRO_CLIP = str(Path(__file__).with_name("micro_clip.json"))
#: The digit names for ``--quick`` on digits-LT, whose class names are bare indices.
DIGIT_NAMES = str(Path(__file__).with_name("digit_names.txt"))
#: AdaptFormer blocks of ViT-B/16.
LAYERS = 12


def bottleneck(num_classes: int, layers: int = LAYERS) -> int:
    """LIFT's default AdaptFormer width ``2 ** max(0, floor(log2(C / 2L)))`` [C: models/peft_vit.py ``adapter_dim``]."""
    return 2 ** max(0, int(math.log2(num_classes / (layers * 2))))


@dataclass(frozen=True)
class LIFTHParams(HParams):
    """LIFT's hyper-parameters; defaults are ImageNet-LT's."""

    tau: float = field(default=1.0, metadata={"min": 0, "help": "logit adjustment tau [C: utils/losses.py LogitAdjustedLoss tau=1.0]"})
    bottleneck: int = field(default=32, metadata={"min": 1, "help": "AdaptFormer bottleneck width [C: peft_vit.py formula; 1000 classes -> 32]"})
    cosine_scale: float = field(default=25.0, metadata={"min": 0, "min_exclusive": True,
                                                       "help": "cosine classifier scale s [C: utils/config.py scale=25]"})
    clip_model: str = field(default="ViT-B-16", metadata={"help": "open_clip model whose text tower initialises the classifier [C: CLIP-ViT-B/16]"})
    clip_pretrained: str | None = field(default="openai", metadata={"help": "its weights: open_clip tag, checkpoint file, or none (random) [C]"})
    templates: str = field(default="a photo of a {}.", metadata={"help": "prompt templates, '|'-separated [C: trainer.py prompt='default']"})
    class_names: str | None = field(default=None, metadata={"help": "file with one class name per line (default: the data set's names)"})
    augment: Literal["lift", "minimalist"] = field(default="lift", metadata={
        "choices": ("lift", "minimalist"),
        "help": "lift: RandomResizedCrop + flip [C]; minimalist: LIFT+'s square crops weakening over the run, no "
                "flip [C: LIFT-plus utils/transforms.py MinimalistRandomResizedCrop, convex]"})


_TRAIN = {"optimizer": "sgd", "lr": 0.01, "momentum": 0.9, "weight_decay": 5e-4, "batch_size": 128,
          "schedule": "cosine", "warmup_epochs": 0}  # [C: configs/model/clip_vit_b16.yaml, utils/config.py]
_CLIP = {"backbone": CLIP_B16, "image_size": 224, "normalize": "backbone", "mixed_precision": "fp16"}  # [C: prec amp]


C, D = Tag.code, Tag.ours
_CODE = "the authors' code, github.com/shijxcs/LIFT"
_TAGS = {**{k: C(f"{_CODE}: configs/model/clip_vit_b16.yaml, utils/config.py") for k in _TRAIN},
         "backbone": C(f"{_CODE}: CLIP ViT-B/16"), "image_size": C(f"{_CODE}: resolution 224"),
         "normalize": C(f"{_CODE}: CLIP normalisation"), "mixed_precision": C(f"{_CODE}: prec amp"),
         "dataset": C(f"{_CODE}: configs/data"), "imbalance": C(f"{_CODE}: configs/data, CIFAR-100-LT IF 100 / 50 / 10"),
         "epochs": C(f"{_CODE}: configs/model num_epochs"),
         "bottleneck": C(f"{_CODE}: models/peft_vit.py adapter_dim formula"),
         "All": D("issue 26's summary of the paper's table ([I]); the table itself was not read")}


def _recipe(dataset: str, classes: int, epochs: int, note: str, paper: dict[str, float], **train: object) -> Recipe:
    dim = bottleneck(classes)
    values = {**_TRAIN, **_CLIP, "dataset": dataset, "epochs": epochs, **train}
    return Recipe(
        f"{dataset}: CLIP ViT-B/16 + AdaptFormer (bottleneck {dim}), cosine classifier s=25 from 'a photo of a {{}}.', "
        f"LA loss tau 1, SGD lr 0.01 momentum 0.9 wd 5e-4, batch 128, {epochs} epochs cosine, 224 px, CLIP "
        f"normalisation, fp16 autocast [C]; test: five crops of the image resized to 248, logits averaged [C]{note}",
        train=values, hparams={"bottleneck": dim}, paper=paper,
        tags={k: _TAGS[k] for k in (*values, "bottleneck", *paper)}
        | ({"epochs": C(f"{_CODE}: README and scripts/run_tab1to4_main_results.sh")} if dataset == "inat2018" else {}))


def _recipes() -> dict[str, Recipe]:
    out = {
        "imagenet-lt": _recipe("imagenet-lt", 1000, 10, "; paper: 78.3 All [I]", {"All": 78.3}),
        "places-lt": _recipe("places-lt", 365, 10, "; paper: 52.2 All [I]", {"All": 52.2}),
        "inat2018": _recipe("inat2018", 8142, 20, " (20 epochs: README and scripts/run_tab1to4_main_results.sh [C]); "
                            "paper number not recorded", {}),
    }
    for imb in (100, 50, 10):
        out[f"cifar100-lt-if{imb}"] = _recipe(
            "cifar100-lt", 100, 10, ", CIFAR images upsampled to 224 [C: resolution 224]"
            + ("; paper: up to 89.1 All [I]" if imb == 100 else ""), {}, imbalance=float(imb))
    return out


METHOD = MethodSpec(
    name="lift",
    summary="LIFT: frozen CLIP ViT + AdaptFormer, text-initialised cosine classifier, logit-adjusted loss, five-crop TTE",
    citation="Shi, Wei, Zhou, Shao, Han, Li, Long-Tail Learning with Foundation Model: Heavy Fine-Tuning Hurts, "
             "ICML 2024 (arXiv 2309.10019)",
    bibtex="""@inproceedings{shi2024longtail,
  title = {Long-Tail Learning with Foundation Model: Heavy Fine-Tuning Hurts},
  author = {Shi, Jiang-Xin and Wei, Tong and Zhou, Zhi and Shao, Jie-Jing and Han, Xin-Yan and Li, Yu-Feng},
  booktitle = {Proceedings of the 41st International Conference on Machine Learning},
  year = {2024}
}""",
    loss=PartRef("logit-adjusted-ce", tau=hp("tau")),
    hparams=LIFTHParams(),
    sampler=PartRef("instance"),
    # LN on the adapter input, Kaiming-normal down, learnable scale from 1 [C: models/peft_modules.py AdaptFormer]
    tuner=PartRef("adaptformer", dim=hp("bottleneck"), scale=1.0, learnable_scale=True, layernorm=True, init="normal"),
    head_init=PartRef("clip-text", clip_model=hp("clip_model"), clip_pretrained=hp("clip_pretrained"),
                      templates=hp("templates"), class_names=hp("class_names")),
    eval_views=PartRef("fivecrop"),  # expand 24 at 224 [C: utils/config.py expand=24, tte_mode fivecrop]
    # augment=lift: cls, RandomResizedCrop + flip at >= 96 px [C: trainer.py transform_train]; minimalist: LIFT+'s
    views=ViewPlan((Pick(hp("augment"), {"lift": "cls", "minimalist": "minimal"}),)),
    model=ModelSpec(classifier="cosine", cosine_scale=hp("cosine_scale"), proj_dim=None, train_heads=("classifier",)),
    train_defaults={**_TRAIN, "backbone": CLIP_B16, "image_size": 224, "epochs": 10},
    recipes=_recipes(),
    quick=Recipe("CPU check: vit_micro_patch4 with a random micro CLIP text tower (micro_clip.json), digit names "
                 "from digit_names.txt [D]",
                 train={"backbone": "vit_micro_patch4", "image_size": None, "normalize": "data",
                        "mixed_precision": "no"},
                 hparams={"clip_model": MICRO_CLIP, "clip_pretrained": None, "bottleneck": 2,
                          "class_names": DIGIT_NAMES},
                 tags={k: D("a CPU smoke setting, not the paper's") for k in (
                     "backbone", "image_size", "normalize", "mixed_precision", "clip_model", "clip_pretrained",
                     "bottleneck", "class_names")}),
    readings=(
        Reading("loss CE(s cos(f, w) + tau log pi, y), prediction argmax s cos(f, w)", C(f"{_CODE}: utils/losses.py")),
        Reading("features: the class token after ln_post, before CLIP's projection; text rows mapped back through it",
                C(f"{_CODE}: trainer.py init_head_text_feat")),
        Reading("AdaptFormer: LN, down, ReLU, zero-init up, learnable scale 1, added to the MLP output, input = the "
                "MLP's residual input; its arguments go to the core tuner 'adaptformer'",
                C(f"{_CODE}: models/peft_modules.py, peft_vit.py")),
        Reading("test-time ensemble: five crops of the image resized to 248, logits averaged",
                C(f"{_CODE}: utils/config.py expand=24, tte_mode fivecrop")),
        Reading("the cosine schedule steps per iteration", D("the authors step per epoch")),
        Reading("--hp augment=minimalist: LIFT+'s square crops weakening over the run (area share from 0.08 + 0.92 "
                "(1 - sqrt(1 - t^2)) to 1, t = epoch / (epochs - 1), bicubic), no flip; LIFT+'s other settings (5 "
                "epochs, lr 0.02) are not changed by it",
                C("the authors' LIFT-plus code, utils/transforms.py MinimalistRandomResizedCrop, utils/config.py")),
    ),
)

__all__ = ["METHOD", "LIFTHParams", "bottleneck", "CLIP_B16", "DIGIT_NAMES", "MICRO_CLIP"]
