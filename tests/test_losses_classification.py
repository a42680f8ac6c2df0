"""Logit-level losses (methods.md section 3.7) against naive float64 per-sample loops."""

from __future__ import annotations

import math

import pytest
import torch

from ltreg.losses import (
    BalancedSoftmax,
    CrossEntropy,
    FocalLoss,
    LDAMLoss,
    LogitAdjustedCE,
    MixupCE,
    class_balanced_weights,
    drw_weights,
)
from ltreg.step import Batch, Extra, Outputs, StepState

TOL = {"rtol": 1e-9, "atol": 1e-10}  # float64 losses vs float64 loops
B, V, C = 6, 2, 4
COUNTS = [50.0, 20.0, 5.0, 1.0]
TARGETS = torch.tensor([0, 1, 1, 3, 0, 2])
TARGETS_B = torch.tensor([2, 2, 0, 1, 3, 0])
LAM = torch.tensor([0.1, 0.5, 0.9, 1.0, 0.0, 0.3], dtype=torch.float64)


def log_softmax_at(u, k):
    """log softmax(u)_k with an explicit sum over classes."""
    return u[k] - torch.log(sum(torch.exp(u[c]) for c in range(len(u))))


def naive_cb(beta):
    """(1 - beta) / (1 - beta^n_c) (1 / n_c for beta = 1), normalised to sum to C."""
    w = [1.0 / n if beta == 1.0 else (1 - beta) / (1 - beta**n) for n in COUNTS]
    return [x * len(COUNTS) / sum(w) for x in w]


def weighted_mean(per, targets, weight):
    if weight is None:
        return sum(per) / len(per)
    ws = [weight[int(t)] for t in targets]
    return sum(w * p for w, p in zip(ws, per)) / sum(ws)


def naive(name, u, targets, *, weight=None, tau=1.0, gamma=2.0, s=30.0, max_margin=0.5):
    """Per-sample losses written from the formulas, then the (class-weighted) mean."""
    prior = [n / sum(COUNTS) for n in COUNTS]
    margins = [n**-0.25 for n in COUNTS]
    margins = [m * max_margin / max(margins) for m in margins]
    per = []
    for i, y in enumerate(targets.tolist()):
        if name == "ce":
            per.append(-log_softmax_at(u[i], y))
        elif name == "la":
            per.append(
                -log_softmax_at(torch.stack([u[i, c] + tau * math.log(prior[c]) for c in range(C)]), y)
            )
        elif name == "bs":
            per.append(-log_softmax_at(torch.stack([u[i, c] + math.log(COUNTS[c]) for c in range(C)]), y))
        elif name == "ldam":
            per.append(
                -log_softmax_at(
                    torch.stack([s * (u[i, c] - (margins[c] if c == y else 0.0)) for c in range(C)]), y
                )
            )
        elif name == "focal":
            logp = log_softmax_at(u[i], y)
            per.append(-((1 - torch.exp(logp)) ** gamma) * logp)
    return weighted_mean(per, targets, weight)


def naive_mixup(u, ya, yb, lam, weight=None):
    num = den = 0.0
    for i in range(len(ya)):
        wa = 1.0 if weight is None else weight[int(ya[i])]
        wb = 1.0 if weight is None else weight[int(yb[i])]
        num = (
            num
            - lam[i] * wa * log_softmax_at(u[i], int(ya[i]))
            - (1 - lam[i]) * wb * log_softmax_at(u[i], int(yb[i]))
        )
        den = den + lam[i] * wa + (1 - lam[i]) * wb
    return num / den


def setup(epoch=0, extra=None, views=V, seed=0):
    g = torch.Generator().manual_seed(seed)
    logits = (torch.randn(B, views, C, generator=g, dtype=torch.float64) * 0.7).requires_grad_()
    outputs = Outputs(z=torch.zeros(B, views, 2), logits=logits, features=torch.zeros(B, views, 2))
    batch = Batch(
        images=torch.zeros(B, views, 1, 1, 1), targets=TARGETS, index=torch.arange(B), extra=extra or {}
    )
    state = StepState(class_counts=torch.tensor(COUNTS, dtype=torch.float64), num_classes=C, epoch=epoch)
    return logits, outputs, batch, state


CASES = [
    ("ce", CrossEntropy, {}, {}),
    ("la", LogitAdjustedCE, {"tau": 1.5}, {"tau": 1.5}),
    ("bs", BalancedSoftmax, {}, {}),
    ("ldam", LDAMLoss, {"max_margin": 0.4, "s": 10.0}, {"max_margin": 0.4, "s": 10.0}),
    ("focal", FocalLoss, {"gamma": 1.5}, {"gamma": 1.5}),
    ("focal", FocalLoss, {"gamma": 0.0}, {"gamma": 0.0}),
]


@pytest.mark.parametrize("reweight", [False, True], ids=["plain", "class_balanced"])
@pytest.mark.parametrize(
    ("name", "cls", "kw", "naive_kw"), CASES, ids=[f"{c[0]}{i}" for i, c in enumerate(CASES)]
)
def test_loss_matches_naive(name, cls, kw, naive_kw, reweight):
    logits, outputs, batch, state = setup()
    extra = {"drw_start_epoch": 0, "reweight_beta": 0.99} if reweight else {}
    out = cls(views=(0, 1), **kw, **extra)(outputs, batch, state)
    weight = naive_cb(0.99) if reweight else None
    u = logits.reshape(B * V, C)  # both views, sample-major
    want = naive(name, u, TARGETS.repeat_interleave(V), weight=weight, **naive_kw)
    torch.testing.assert_close(out.total, want, **TOL)
    torch.testing.assert_close(
        torch.autograd.grad(out.total, logits)[0], torch.autograd.grad(want, logits)[0], **TOL
    )
    assert list(out.parts.values())[0].requires_grad is False


def test_default_view_is_the_first():
    logits, outputs, batch, state = setup()
    torch.testing.assert_close(
        CrossEntropy()(outputs, batch, state).total, naive("ce", logits[:, 0], TARGETS), **TOL
    )


def test_balanced_softmax_equals_logit_adjustment_with_tau_one():
    _, outputs, batch, state = setup()
    torch.testing.assert_close(
        BalancedSoftmax()(outputs, batch, state).total,
        LogitAdjustedCE(tau=1.0)(outputs, batch, state).total,
        **TOL,
    )


@pytest.mark.parametrize("epoch", [159, 160])
def test_ldam_drw_switches_weights_at_the_start_epoch(epoch):
    logits, outputs, batch, state = setup(epoch=epoch)
    out = LDAMLoss(drw_start_epoch=160)(outputs, batch, state)
    weight = None if epoch < 160 else naive_cb(0.9999)
    torch.testing.assert_close(out.total, naive("ldam", logits[:, 0], TARGETS, weight=weight), **TOL)


@pytest.mark.parametrize("reweight", [False, True])
def test_mixup_ce_matches_naive(reweight):
    logits, outputs, batch, state = setup(extra={"targets_b": TARGETS_B, "lam": LAM})
    extra = {"drw_start_epoch": 0, "reweight_beta": 0.9} if reweight else {}
    out = MixupCE(**extra)(outputs, batch, state)
    want = naive_mixup(logits[:, 0], TARGETS, TARGETS_B, LAM, naive_cb(0.9) if reweight else None)
    torch.testing.assert_close(out.total, want, **TOL)
    torch.testing.assert_close(
        torch.autograd.grad(out.total, logits)[0], torch.autograd.grad(want, logits)[0], **TOL
    )
    with pytest.raises(ValueError, match="targets_b"):
        MixupCE()(outputs, Batch(batch.images, TARGETS, batch.index), state)


@pytest.mark.parametrize("beta", [0.0, 0.5, 0.999, 1.0])
def test_class_balanced_weights_formula(beta):
    w = class_balanced_weights(torch.tensor(COUNTS), beta)
    torch.testing.assert_close(
        w.double(), torch.tensor(naive_cb(beta), dtype=torch.float64), rtol=1e-6, atol=1e-7
    )
    assert math.isclose(w.sum().item(), C, rel_tol=1e-6)
    if beta == 0.0:
        assert torch.equal(w, torch.ones(C))


def test_drw_weights_and_bad_beta():
    counts = torch.tensor(COUNTS)
    assert torch.equal(drw_weights(counts, 3, 5), torch.ones(C))
    torch.testing.assert_close(drw_weights(counts, 5, 5), class_balanced_weights(counts, 0.9999))
    with pytest.raises(ValueError, match="beta"):
        class_balanced_weights(counts, 1.5)


def test_bf16_logits_are_computed_in_float32():
    logits, outputs, batch, state = setup()
    half = Outputs(z=outputs.z, logits=logits.detach().to(torch.bfloat16), features=outputs.features)
    for cls in (CrossEntropy, LogitAdjustedCE, BalancedSoftmax, LDAMLoss, FocalLoss):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = cls()(half, batch, state).total
        assert out.dtype == torch.float32 and torch.isfinite(out)
        ref = cls()(
            Outputs(z=outputs.z, logits=half.logits.double(), features=outputs.features), batch, state
        ).total
        torch.testing.assert_close(out.double(), ref, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("reweight", [False, True], ids=["plain", "class_balanced"])
@pytest.mark.parametrize(
    ("name", "cls", "kw", "naive_kw"), CASES, ids=[f"{c[0]}{i}" for i, c in enumerate(CASES)]
)
def test_mixed_batches_weigh_both_labels_by_their_share(name, cls, kw, naive_kw, reweight):
    """--mix: lam L(y) + (1 - lam) L(y_partner), each term the loss's own (its class-weighted mean included)."""
    lam = 0.375  # exact in float32, the dtype the transforms attach
    extra = {Extra.MIX_TARGETS: TARGETS_B, Extra.MIX_LAM: torch.tensor(lam)}
    logits, outputs, batch, state = setup(extra=extra)
    drw = {"drw_start_epoch": 0, "reweight_beta": 0.99} if reweight else {}
    out = cls(views=(0, 1), **kw, **drw)(outputs, batch, state)
    weight = naive_cb(0.99) if reweight else None
    u = logits.reshape(B * V, C)
    want = lam * naive(name, u, TARGETS.repeat_interleave(V), weight=weight, **naive_kw) + (1 - lam) * naive(
        name, u, TARGETS_B.repeat_interleave(V), weight=weight, **naive_kw)
    torch.testing.assert_close(out.total, want, **TOL)
    torch.testing.assert_close(
        torch.autograd.grad(out.total, logits)[0], torch.autograd.grad(want, logits)[0], **TOL
    )
    assert cls.mixable and not MixupCE.mixable  # mixup-ce mixes its own pairs: --mix is refused for it
