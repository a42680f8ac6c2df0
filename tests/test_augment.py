"""Augmentation as a declared, recorded setting: ``--augment`` presets, flips only where the data set says a
mirrored image keeps its label (digits never; image folders only with ``hflip=true``), and the run's
config and card say what was used."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision.transforms import v2

import ltreg
from ltreg.config import resolve_config
from ltreg.data.builders import digits_lt, imagefolder_lt
from ltreg.data.lt import TensorSource
from ltreg.data.views import AUGMENT_PRESETS, apply_augment, build_pipeline
from ltreg.errors import ConfigError, SettingError
from ltreg.method import PartRef, get_method


def half_bright(data: ltreg.LTDataset) -> ltreg.LTDataset:
    """``data`` (its declarations kept) holding one 8x8 image: the left half white, the right half black."""
    img = torch.zeros(1, 1, 8, 8, dtype=torch.uint8)
    img[..., :4] = 255
    return dataclasses.replace(data, source=TensorSource(img), targets=torch.zeros(1, dtype=torch.long))


def mirrored_share(pipeline: str, data: ltreg.LTDataset, draws: int = 200) -> float:
    """Share of ``draws`` augmented views whose right half is brighter than the left: mirrored ones (a crop
    shifted by at most one pixel cannot move the white half across)."""
    transform = build_pipeline(pipeline, data)
    torch.manual_seed(0)
    flipped = 0
    for _ in range(draws):
        x = transform(data.source.load(0))
        flipped += int(x[..., 4:].mean() > x[..., :4].mean())
    return flipped / draws


def test_digits_declare_no_flip_and_no_default_view_flips() -> None:
    digits = digits_lt().train
    assert digits.allow_flip is False
    data = half_bright(digits)
    for pipeline in ("cls", "crop", "cropnoflip"):
        assert mirrored_share(pipeline, data) == 0, pipeline
    for pipeline in ("randaugment", "trivialaugment", "autoaugment"):  # their inversions and rotations would
        ops = build_pipeline(pipeline, data).transforms                # fool the picture test: read the ops
        assert not any(isinstance(op, v2.RandomHorizontalFlip) for op in ops), pipeline
        flipping = build_pipeline(pipeline, dataclasses.replace(data, allow_flip=True)).transforms
        assert any(isinstance(op, v2.RandomHorizontalFlip) for op in flipping), pipeline
    assert 0.3 < mirrored_share("cropflip", data) < 0.7  # crop+flip flips: the test can see a flip
    assert 0.3 < mirrored_share("cls", dataclasses.replace(data, allow_flip=True)) < 0.7


def write_folder(root: Path) -> Path:
    rng = np.random.RandomState(0)
    for c, n in (("cat", 6), ("dog", 4)):
        (root / c).mkdir(parents=True)
        for i in range(n):
            Image.fromarray(rng.randint(0, 255, (12, 12, 3), dtype=np.uint8)).save(root / c / f"{i}.png")
    return root


def test_an_image_folder_flips_only_when_told(tmp_path: Path) -> None:
    root = write_folder(tmp_path / "imgs")
    data = imagefolder_lt(str(root))
    assert data.train.allow_flip is False and "no horizontal flips (pass --data-arg hflip=true" in data.summary
    told = imagefolder_lt(str(root), hflip=True)
    assert told.train.allow_flip is True and told.test.allow_flip is True and "flips on (hflip=true)" in told.summary


def test_presets_replace_the_cls_views_only() -> None:
    assert apply_augment(("cls", "sim"), "randaugment") == ("randaugment", "sim")
    assert apply_augment(("cls+jitter",), "crop+flip") == ("cropflip+jitter",)
    assert apply_augment(("cls",), "crop") == ("cropnoflip",)
    assert apply_augment(("rand", "sim"), None) == ("rand", "sim")
    assert set(AUGMENT_PRESETS) == {"none", "crop", "crop+flip", "randaugment", "trivialaugment", "autoaugment"}
    with pytest.raises(SettingError, match="--augment must be one of .*did you mean randaugment"):
        resolve_config(get_method("ce"), {"augment": "randaugmnet"})


def test_augment_is_recorded_in_config_and_card(tmp_path: Path) -> None:
    out = tmp_path / "run"
    ltreg.train("ce", augment="trivialaugment", epochs=1, max_steps_per_epoch=2, batch_size=32,
                eval_batch_size=512, output_dir=str(out), quiet=True)
    block = json.loads((out / "config.json").read_text())["ltreg"]
    assert block["recipe"]["augment"] == "trivialaugment"
    assert block["augmentation"].startswith("trivialaugment: random crop (+ flip where allowed) + TrivialAugment")
    assert "digits-lt: no flips" in block["augmentation"]
    card = (out / "README.md").read_text()
    assert "| augment | trivialaugment |" in card and "| augmentation | trivialaugment: random crop (+ flip" in card


def test_a_method_without_a_cls_view_refuses_augment(tmp_path: Path) -> None:
    """SupCon's cRT stage trains on cls views (augment applies there); without stage 2 it has none."""
    ltreg.register_method(dataclasses.replace(get_method("supcon"), name="supcon-stage1-only", stage2=None))
    try:
        with pytest.raises(ConfigError, match="--augment randaugment .* supcon-stage1-only has none: its views are sim"):
            ltreg.train("supcon-stage1-only", augment="randaugment", epochs=1, max_steps_per_epoch=1, batch_size=32,
                        output_dir=str(tmp_path / "run"), quiet=True)
    finally:
        ltreg.registry("methods").unregister("supcon-stage1-only")
    assert not (tmp_path / "run").exists()


def test_mixing_is_a_recorded_setting_of_methods_that_can_use_it(tmp_path: Path) -> None:
    out = tmp_path / "run"
    ltreg.train("logit-adjust", mix="cutmix", mix_alpha=0.4, epochs=1, max_steps_per_epoch=2, batch_size=32,
                eval_batch_size=512, output_dir=str(out), quiet=True)
    block = json.loads((out / "config.json").read_text())["ltreg"]
    assert block["recipe"]["mix"] == "cutmix" and block["recipe"]["mix_alpha"] == 0.4
    assert block["augmentation"].endswith("; then cutmix of image pairs in stage 1, lam ~ Beta(0.4, 0.4) per step")
    assert "| mix | cutmix |" in (out / "README.md").read_text()
    plain = tmp_path / "plain"
    ltreg.train("ce", epochs=1, max_steps_per_epoch=1, batch_size=32, eval_batch_size=512, output_dir=str(plain),
                quiet=True)
    recipe = json.loads((plain / "config.json").read_text())["ltreg"]["recipe"]
    assert "mix" not in recipe and "mix_alpha" not in recipe  # the card records only what took effect


@pytest.mark.parametrize(("method", "why"), [
    ("supcon", "the method supcon's loss \\(supcon\\) does not weigh an image's two labels"),
    ("ce-paired", "the method ce-paired mixes its own batches \\(batch transform pair-mixup\\)"),
])
def test_mixing_is_refused_where_the_method_cannot_use_it(tmp_path: Path, method: str, why: str) -> None:
    ltreg.register_method(dataclasses.replace(get_method("ce"), name="ce-paired", batch_transform=PartRef("pair-mixup")))
    try:
        with pytest.raises(ConfigError, match=f"--mix 'mixup' would have no effect: {why}"):
            ltreg.train(method, mix="mixup", epochs=1, max_steps_per_epoch=1, batch_size=32,
                        output_dir=str(tmp_path / "run"), quiet=True)
    finally:
        ltreg.registry("methods").unregister("ce-paired")
    with pytest.raises(ConfigError, match="--mix-alpha .* no --mix is given"):
        ltreg.train("ce", mix_alpha=0.3, epochs=1, output_dir=str(tmp_path / "run"), quiet=True)
    with pytest.raises(SettingError, match="--mix must be one of mixup, cutmix, got 'mixp'"):
        ltreg.train("ce", mix="mixp", epochs=1, output_dir=str(tmp_path / "run"), quiet=True)
    assert not (tmp_path / "run").exists()
