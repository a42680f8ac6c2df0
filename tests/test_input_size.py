"""``--image-size`` / ``--normalize``: the views a backbone pretrained elsewhere expects, recorded by the run and
re-applied by ``ltreg eval``; statistics that do not fit the channels stop before any work."""

from __future__ import annotations

import json

import pytest

import ltreg
from ltreg.config import resolve_config
from ltreg.errors import DataError, SettingError
from ltreg.run import build_run


def test_image_size_is_trained_recorded_and_reapplied(tmp_path, tiny):
    out = tmp_path / "run"
    result = ltreg.train("ce", output_dir=str(out), image_size=16, **tiny)
    config = json.loads((out / "config.json").read_text())
    assert config["pretrained_cfg"]["input_size"][-1] == 16
    again = ltreg.evaluate_pretrained(out)
    assert again["top1"] == pytest.approx(result.metrics["top1"])
    assert again["per_class"] == result.metrics["per_class"]


def test_backbone_statistics_must_fit_the_channels(tmp_path):
    rc = resolve_config(ltreg.get_method("ce"), {"backbone": "vit_micro_patch4", "normalize": "backbone",
                                                  "output_dir": str(tmp_path / "r")})
    with pytest.raises(DataError, match="1 channel.*has 3 values.*--normalize data"):
        build_run(rc)  # digits are grey; the micro ViT's statistics are CLIP's three
    with pytest.raises(SettingError, match="--normalize must be one of data, backbone"):
        resolve_config(ltreg.get_method("ce"), {"normalize": "clip"})
    with pytest.raises(SettingError, match="--image-size"):
        resolve_config(ltreg.get_method("ce"), {"image_size": 0})
