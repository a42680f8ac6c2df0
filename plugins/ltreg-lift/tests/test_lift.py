"""LIFT: the recipes carry the authors' values, --quick trains offline on a micro ViT with a random micro CLIP
text tower, and the run evaluates with five-crop test-time ensembling (recorded, reproduced by ltreg eval)."""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("open_clip")

from ltreg_lift import METHOD, bottleneck  # noqa: E402

import ltreg  # noqa: E402
from ltreg.config import resolve_config  # noqa: E402


def test_spec_declares_lifts_parts():
    assert METHOD.tuner is not None and METHOD.tuner.name == "adaptformer"
    assert METHOD.head_init is not None and METHOD.head_init.name == "clip-text"
    assert METHOD.eval_views.name == "fivecrop" and METHOD.loss.name == "logit-adjusted-ce"
    assert METHOD.model.classifier == "cosine" and METHOD.model.cosine_scale == 25.0
    assert METHOD.views_for(METHOD.hparams) == ("cls",)
    assert METHOD.views_for(METHOD.hparams.replace(augment="minimalist")) == ("minimal",)  # LIFT+'s option


@pytest.mark.parametrize(("recipe", "dim", "epochs"), [("imagenet-lt", 32, 10), ("places-lt", 8, 10),
                                                       ("inat2018", 256, 20), ("cifar100-lt-if100", 4, 10)])
def test_recipes_carry_the_authors_values(recipe, dim, epochs):
    rc = resolve_config(ltreg.get_method("lift"), {"recipe": recipe})
    classes = {"imagenet-lt": 1000, "places-lt": 365, "inat2018": 8142, "cifar100-lt-if100": 100}[recipe]
    assert rc.hparams.bottleneck == dim == bottleneck(classes)
    cfg = rc.cfg
    assert (cfg.epochs, cfg.batch_size, cfg.lr, cfg.momentum, cfg.weight_decay) == (epochs, 128, 0.01, 0.9, 5e-4)
    assert (cfg.backbone, cfg.image_size, cfg.normalize) == ("vit_base_patch16_clip_224.openai", 224, "backbone")


def test_quick_trains_offline_with_text_init_and_tta(tmp_path):
    out = tmp_path / "run"
    result = ltreg.train("lift", quick=True, output_dir=str(out), max_steps_per_epoch=3, log_every=1)
    assert result.metrics["eval_views"]["name"] == "fivecrop" and result.metrics["eval_views"]["views"] == 5
    assert (out / "head_init-clip-text.safetensors").is_file()
    assert "Test-time views: `fivecrop`" in (out / "README.md").read_text()
    assert result.model.config.backbone == "vit_micro_patch4" and result.model.config.classifier == "cosine"
    from safetensors.torch import load_file

    init = load_file(str(out / "head_init-clip-text.safetensors"))["weight"]
    assert not torch.allclose(result.model.classifier.weight.detach().cpu(), init)  # trained from the text rows
    again = ltreg.evaluate_pretrained(out)  # the card's view set, rebuilt
    assert again["eval_views"]["name"] == "fivecrop" and again["top1"] == pytest.approx(result.metrics["top1"])
    centre = ltreg.evaluate_pretrained(out, tta="center")
    assert centre["eval_views"]["name"] == "center"


def test_tuner_arguments_fit_the_core_adaptformer():
    """Once the tuner part is installed (registry group ``tuners``), LIFT's AdaptFormer arguments bind to it."""
    import inspect

    from ltreg.registry import GROUPS, registry

    if "tuners" not in GROUPS:
        pytest.skip("the tuner part is not in this build yet")
    factory = registry("tuners").get(METHOD.tuner.name)
    inspect.signature(factory).bind(**METHOD.tuner.resolve_kwargs(METHOD.hparams))
