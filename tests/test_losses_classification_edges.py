"""Logit-level losses: the cases mutation testing of ltreg/losses/classification.py found untested (issue 29) —
default arguments, LDAM's margin scale without a one-image class, a batch without the last class, MixupCE with
one of its two inputs, and the class-weighted mean across two processes."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from ltreg.losses import (
    CrossEntropy,
    FocalLoss,
    LogitAdjustedCE,
    MixupCE,
    drw_weights,
    focal,
    ldam,
    ldam_margins,
)
from ltreg.step import Batch, Extra, Outputs, StepState

COUNTS = torch.tensor([100.0, 10.0, 4.0], dtype=torch.float64)


def _inputs(n: int = 6, c: int = 3, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, c, generator=g, dtype=torch.float64), torch.randint(0, c, (n,), generator=g)


def test_default_arguments_are_the_papers_values() -> None:
    """LDAM max margin 0.5 and s = 30 (Cao et al. 2019), focal gamma 2 (Lin et al. 2017), logit adjustment
    tau 1 (Menon et al. 2021): each default gives the same value as the explicit one."""
    logits, y = _inputs()
    m = ldam_margins(COUNTS)
    torch.testing.assert_close(m, ldam_margins(COUNTS, 0.5), rtol=0, atol=0)
    torch.testing.assert_close(ldam(logits, y, m), ldam(logits, y, m, s=30.0), rtol=0, atol=0)
    torch.testing.assert_close(focal(logits, y), focal(logits, y, gamma=2.0), rtol=0, atol=0)
    out = Outputs(logits.unsqueeze(1), logits.unsqueeze(1), logits.unsqueeze(1))
    batch, state = Batch(torch.zeros(len(y), 1), y, torch.arange(len(y))), StepState(COUNTS, 3)
    for default, explicit in ((LogitAdjustedCE(), LogitAdjustedCE(tau=1.0)), (FocalLoss(), FocalLoss(gamma=2.0))):
        torch.testing.assert_close(default(out, batch, state).total, explicit(out, batch, state).total, rtol=0, atol=0)
    assert LogitAdjustedCE(tau=2.0)(out, batch, state).total != LogitAdjustedCE()(out, batch, state).total


def test_ldam_margins_scale_to_max_margin_without_a_one_image_class() -> None:
    """m_c = C n_c^(-1/4) with the largest margin equal to max_margin, also when no class has one image."""
    m = ldam_margins(COUNTS, 0.5)
    want = [0.5 * (n ** -0.25) / (4.0 ** -0.25) for n in COUNTS.tolist()]
    torch.testing.assert_close(m, torch.tensor(want, dtype=m.dtype), rtol=1e-12, atol=0)


def test_ldam_on_a_batch_without_the_last_class() -> None:
    """The margin one-hot spans all C classes even when the batch's largest label is smaller."""
    logits, _ = _inputs(4, 3)
    y = torch.tensor([0, 1, 0, 1])  # class 2 absent
    m = ldam_margins(COUNTS)
    shifted = logits - F.one_hot(y, 3).to(logits.dtype) * m.to(logits.dtype)
    torch.testing.assert_close(ldam(logits, y, m, s=30.0), F.cross_entropy(30.0 * shifted, y), rtol=1e-12, atol=0)


@pytest.mark.parametrize("extra", [{}, {Extra.TARGETS_B: torch.zeros(2, dtype=torch.long)}, {Extra.LAM: torch.ones(2)}])
def test_mixup_ce_needs_both_inputs(extra: dict) -> None:
    logits, y = _inputs(2)
    out = Outputs(logits.unsqueeze(1), logits.unsqueeze(1), logits.unsqueeze(1))
    with pytest.raises(ValueError, match=r"^MixupCE needs batch.extra\['targets_b'\] and batch.extra\['lam'\] "
                                         r"\(a paired mixup transform\)$"):
        MixupCE()(out, Batch(torch.zeros(2, 1), y, torch.arange(2), extra), StepState(COUNTS, 3))


def test_class_weighted_mean_over_two_processes_equals_one_process() -> None:
    """DRW-weighted CE on two ranks (halves of a batch with different weight sums), averaged as DDP does, equals
    the one-process weighted mean of the whole batch; a rank alone (world size 1) normalises locally."""
    logits, y = _inputs(8, 3, seed=3)
    y = torch.tensor([0, 0, 0, 1, 2, 2, 1, 0])
    loss = CrossEntropy(drw_start_epoch=0)
    w = drw_weights(COUNTS, 1, 0)
    halves = [slice(0, 4), slice(4, 8)]
    sums = [float(w[y[h]].sum()) for h in halves]
    assert not math.isclose(sums[0], sums[1])

    def run(h: slice, world: int) -> torch.Tensor:
        out = Outputs(logits[h].unsqueeze(1), logits[h].unsqueeze(1), logits[h].unsqueeze(1))
        state = StepState(COUNTS, 3, epoch=1, world_size=world,
                          all_reduce_mean=lambda t: torch.full_like(t, sum(sums) / 2))
        return loss(out, Batch(torch.zeros(4, 1), y[h], torch.arange(4)), state).total

    whole = F.cross_entropy(logits, y, weight=w.to(logits.dtype))
    torch.testing.assert_close((run(halves[0], 2) + run(halves[1], 2)) / 2, whole, rtol=1e-6, atol=1e-7)
    local = F.cross_entropy(logits[halves[0]], y[halves[0]], weight=w.to(logits.dtype))
    torch.testing.assert_close(run(halves[0], 1), local, rtol=1e-6, atol=1e-7)
