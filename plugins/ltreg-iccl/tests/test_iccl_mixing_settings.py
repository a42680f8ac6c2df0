"""ICCL's warm-up-aware pair-mixup: its documented defaults and the bounds of ``warmup_fraction`` (both ends
accepted, the message of a refusal). Written from the surviving mutants of ``plugins/mutate.sh`` (issue 29)."""

from __future__ import annotations

import pytest
import torch
from ltreg_iccl import WarmupPairMixup

from ltreg import Batch, StepState


def _paired(b: int = 4) -> Batch:
    g = torch.Generator().manual_seed(5)
    return Batch(torch.randn(b, 1, 1, 2, 2, generator=g), torch.tensor([0, 1, 2, 0])[:b], torch.arange(b),
                 {"pair_images": torch.randn(b, 1, 1, 2, 2, generator=g), "targets_b": torch.tensor([1, 1, 0, 2])[:b]})


def _state(epoch: int, num_epochs: int = 4) -> StepState:
    return StepState(torch.ones(3), 3, epoch=epoch, num_epochs=num_epochs, seed=1)


def test_defaults_are_beta_1_1_and_half_the_epochs_unmixed():
    """alpha 1 (lam ~ Beta(1, 1), uniform) and T_w = half the epochs, mixing not forced during the warm-up."""
    mix = WarmupPairMixup()
    assert (mix.alpha, mix.warmup_fraction, mix.mix_during_warmup) == (1.0, 0.5, False)
    assert "lam" not in mix.transform_batch(_paired(), _state(1)).extra  # epoch 1 of 4: warm-up
    assert "lam" in mix.transform_batch(_paired(), _state(2)).extra  # epoch 2 of 4: T_w = 2 reached


@pytest.mark.parametrize("fraction, first_mixed_epoch", [(0.0, 0), (1.0, None)])
def test_warmup_fraction_bounds_are_accepted(fraction, first_mixed_epoch):
    """0: no warm-up, every epoch mixed; 1: the whole stage is warm-up, no epoch mixed."""
    mix = WarmupPairMixup(warmup_fraction=fraction)
    mixed = [e for e in range(4) if "lam" in mix.transform_batch(_paired(), _state(e)).extra]
    assert mixed == ([] if first_mixed_epoch is None else list(range(first_mixed_epoch, 4)))


@pytest.mark.parametrize("fraction", [-0.1, 1.5])
def test_warmup_fraction_outside_0_1_is_refused(fraction):
    with pytest.raises(ValueError, match=rf"^ICCL warmup_fraction must be in \[0, 1\], got {fraction}$"):
        WarmupPairMixup(warmup_fraction=fraction)
