"""Pair mixup: lambda range, output layout, determinism, and independence from the process split."""

from __future__ import annotations

import pytest
import torch

from ltreg.mixing import CutMix, Mixup, PairMixup
from ltreg.step import Batch, Extra, StepState


def paired_batch(b: int, v: int = 2, seed: int = 0) -> Batch:
    g = torch.Generator().manual_seed(seed)
    return Batch(torch.randn(b, v, 1, 4, 4, generator=g), torch.randint(0, 4, (b,), generator=g), torch.arange(b),
                 {"pair_images": torch.randn(b, v, 1, 4, 4, generator=g), "targets_b": torch.randint(0, 4, (b,), generator=g)})


def state(step: int = 3, epoch: int = 1, rank: int = 0, world: int = 1, seed: int = 7) -> StepState:
    return StepState(torch.ones(4), 4, epoch=epoch, step=step, rank=rank, world_size=world, seed=seed)


@pytest.mark.parametrize("alpha", [1.0, 2.0, 0.3])
def test_layout_and_lambda_range(alpha: float) -> None:
    batch = paired_batch(16)
    out = PairMixup(alpha).transform_batch(batch, state())
    lam = out.extra["lam"]
    assert out.images.shape == (16, 4, 1, 4, 4) and lam.shape == (16,)
    assert bool(((lam >= 0) & (lam <= 1)).all()) and lam.unique().numel() == 16  # one lambda per sample
    assert torch.equal(out.images[:, :2], batch.images)
    w = lam.view(-1, 1, 1, 1, 1)
    torch.testing.assert_close(out.images[:, 2:], w * batch.images + (1 - w) * batch.extra["pair_images"])
    assert torch.equal(out.targets, batch.targets) and torch.equal(out.extra["targets_b"], batch.extra["targets_b"])
    assert "pair_images" not in out.extra


def test_lambdas_are_deterministic_per_seed_epoch_step() -> None:
    mix, batch = PairMixup(), paired_batch(8)
    lam = mix.transform_batch(batch, state()).extra["lam"]
    assert torch.equal(lam, mix.transform_batch(batch, state()).extra["lam"])
    for other in (state(step=4), state(epoch=2), state(seed=8)):
        assert not torch.equal(lam, mix.transform_batch(batch, other).extra["lam"])


@pytest.mark.parametrize("alpha", [1.0, 2.0])
def test_one_process_2b_equals_two_processes_b(alpha: float) -> None:
    mix, full = PairMixup(alpha), paired_batch(12)
    one = mix.transform_batch(full, state(world=1))
    halves = []
    for r in range(2):
        part = Batch(full.images[6 * r : 6 * r + 6], full.targets[6 * r : 6 * r + 6], full.index[6 * r : 6 * r + 6],
                     {k: v[6 * r : 6 * r + 6] for k, v in full.extra.items()})
        halves.append(mix.transform_batch(part, state(rank=r, world=2)))
    assert torch.equal(one.extra["lam"], torch.cat([h.extra["lam"] for h in halves]))
    assert torch.equal(one.images, torch.cat([h.images for h in halves]))


def test_missing_pair_is_a_clear_error() -> None:
    with pytest.raises(KeyError, match="paired"):
        PairMixup().transform_batch(Batch(torch.zeros(2, 1, 1, 4, 4), torch.zeros(2, dtype=torch.long), torch.arange(2)),
                                    state())
    with pytest.raises(ValueError, match="alpha"):
        PairMixup(0.0)


def mix_batch(b: int = 8, v: int = 2, hw: int = 8) -> Batch:
    g = torch.Generator().manual_seed(1)
    return Batch(torch.rand(b, v, 3, hw, hw, generator=g), torch.arange(b) % 4, torch.arange(b))


def test_mixup_blends_each_image_with_its_partner_in_the_reversed_batch() -> None:
    batch = mix_batch()
    out = Mixup(0.5).transform_batch(batch, state())
    lam = float(out.extra[Extra.MIX_LAM])
    assert 0 < lam < 1 and out.extra[Extra.MIX_LAM].dim() == 0
    x = batch.images.double()
    torch.testing.assert_close(out.images.double(), lam * x + (1 - lam) * x.flip(0), rtol=0, atol=1e-6)
    assert torch.equal(out.targets, batch.targets) and torch.equal(out.extra[Extra.MIX_TARGETS], batch.targets.flip(0))


def test_cutmix_pastes_one_box_into_every_view_and_lam_is_the_share_left() -> None:
    batch = mix_batch(hw=16)
    lams = set()
    for step in range(12):
        out = CutMix(1.0).transform_batch(batch, state(step=step))
        own = (out.images == batch.images).all(dim=(0, 1, 2))  # [H, W]: pixels that kept the image's own value
        pasted = (out.images == batch.images.flip(0)).all(dim=(0, 1, 2))
        assert bool((own | pasted).all()), "every pixel is the image's or its partner's"
        ys, xs = torch.nonzero(pasted & ~own, as_tuple=True)
        if ys.numel():  # one rectangle, the same in every image and view
            assert (ys.max() - ys.min() + 1) * (xs.max() - xs.min() + 1) == ys.numel()
        lam = float(out.extra[Extra.MIX_LAM])
        assert lam == pytest.approx(1 - ys.numel() / 16**2, abs=1e-6)
        lams.add(round(lam, 4))
    assert len(lams) > 6  # a fresh draw each step


@pytest.mark.parametrize("mix", [Mixup, CutMix])
def test_batch_mixing_is_a_pure_function_of_seed_epoch_and_step_on_every_process(mix) -> None:
    batch = mix_batch()
    first = mix(1.0).transform_batch(batch, state(rank=0, world=2))
    again = mix(1.0).transform_batch(batch, state(rank=1, world=2))  # another process, same step: same lam
    assert torch.equal(first.images, again.images) and torch.equal(first.extra[Extra.MIX_LAM], again.extra[Extra.MIX_LAM])
    later = mix(1.0).transform_batch(batch, state(step=4))
    assert not torch.equal(first.extra[Extra.MIX_LAM], later.extra[Extra.MIX_LAM])
    with pytest.raises(ValueError, match=f"{mix.kind} alpha must be > 0"):
        mix(0.0)
