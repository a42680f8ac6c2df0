"""LIFT+'s minimalist pipeline: square crops whose smallest area share follows the convex schedule, so the
last epoch sees whole (square) images."""

from __future__ import annotations

import math

import torch
from torchvision.transforms.v2 import functional as TF

from ltreg.data.build import DataArgs, build_data
from ltreg.data.views import ViewDataset, minimal_min_scale


def test_schedule_is_convex_from_008_to_1():
    assert minimal_min_scale(0.0) == 0.08 and minimal_min_scale(1.0) == 1.0
    assert math.isclose(minimal_min_scale(0.5), 0.08 + 0.92 * (1 - math.sqrt(0.75)))
    assert minimal_min_scale(0.5) < 0.5 * (0.08 + 1.0)  # below the straight line: convex


def test_last_epoch_is_the_whole_image_and_the_first_is_cropped():
    test = build_data(DataArgs("digits-lt")).test  # square 8 px images
    vds = ViewDataset(test, ("minimal",), num_epochs=5, seed=1)
    img = test.source.load(3)
    whole = (TF.resize(img, [8, 8], interpolation=TF.InterpolationMode.BICUBIC, antialias=True).float() / 255
             - torch.tensor(test.mean).view(-1, 1, 1)) / torch.tensor(test.std).view(-1, 1, 1)
    vds.set_epoch(4)
    torch.testing.assert_close(vds[3]["images"][0], whole)
    vds.set_epoch(0)
    firsts = [vds.load(3, vds.pipelines, slot)[0] for slot in range(8)]
    assert any(not torch.allclose(f, whole) for f in firsts)
    assert torch.equal(vds[3]["images"][0], vds[3]["images"][0])  # seeded: the same view twice
