"""Reb-SupCon's loss: the class count taken from the run, omega_max's boundary, omega_norm's refusal and its
denominator when the summed omega is below 1. Written from the surviving mutants of ``plugins/mutate.sh`` on
``ltreg_rebsupcon/loss.py`` (issue 29)."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
from ltreg_rebsupcon.loss import RebResult, RebSupConLoss, normalise_reb


def test_from_context_takes_the_runs_class_count():
    """The grad-EMA buffers are sized by the run's class count, unless num_classes is given."""
    mod = RebSupConLoss.from_context(SimpleNamespace(num_classes=5), temperature=0.3)
    assert mod.grad_ema.shape == (5,) and mod.grad_seen.shape == (5,) and mod.temperature == 0.3
    assert RebSupConLoss.from_context(SimpleNamespace(num_classes=5), num_classes=2).grad_ema.shape == (2,)


def test_omega_max_below_one_is_a_valid_bound_and_zero_is_refused():
    assert RebSupConLoss(num_classes=2, omega_max=0.5).omega_max == 0.5
    with pytest.raises(ValueError, match=r"^omega_max must be > 0 or None \(no bound\), got 0$"):
        RebSupConLoss(num_classes=2, omega_max=0)


def _res():
    """Two anchors (classes 0 and 1), the second without a positive; printed-form omegas below 1."""
    omega = torch.tensor([0.4, 0.25], dtype=torch.float64)
    return RebResult(torch.tensor([0.3, 0.0], dtype=torch.float64), torch.tensor([2.0, 0.0]), omega,
                     torch.zeros(2, dtype=torch.float64)), torch.tensor([0, 1])


def test_omega_normalisation_divides_by_the_summed_omega_even_below_one():
    """omega_norm='omega': sum_i omega(y_i) L_i / sum over anchors with a positive of omega(y_i) = 0.3 / 0.4."""
    res, labels = _res()
    torch.testing.assert_close(normalise_reb(res, labels, "omega", lambda t: t), torch.tensor(0.75, dtype=torch.float64))
    torch.testing.assert_close(normalise_reb(res, labels, "anchors", lambda t: t), torch.tensor(0.3, dtype=torch.float64))


def test_unknown_omega_norm_is_refused():
    res, labels = _res()
    with pytest.raises(ValueError, match=r"^omega_norm must be 'anchors' or 'omega', got 'mean'$"):
        normalise_reb(res, labels, "mean", lambda t: t)
