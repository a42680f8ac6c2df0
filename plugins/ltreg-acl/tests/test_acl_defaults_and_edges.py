"""ACL: the documented defaults, the exact refusals, and the edges of the negative weights (a class with one
image, an absent class). Written from the surviving mutants of ``plugins/mutate.sh`` (issue 29)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from ltreg_acl import ACLLoss, acl, negative_weights
from ltreg_acl.gradients import positive_pair_gradients

from ltreg import Batch, Outputs, StepState


def _inputs(b=5, v=2, d=4, c=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    z = F.normalize(torch.randn(b, v, d, generator=g, dtype=torch.float64), dim=-1)
    logits = torch.randn(b, v, c, generator=g, dtype=torch.float64)
    labels = torch.tensor([0, 0, 1, 2, 1])[:b]
    counts = torch.tensor([30.0, 6.0, 1.0, 3.0], dtype=torch.float64)[:c]
    return z, labels, logits, counts


def test_acl_defaults_are_the_documented_gpaco_values():
    """alpha 0.05, beta 1, tau 0.2, no re-weighting, per-positive denominators, mean reduction."""
    z, y, u, counts = _inputs()
    lp = (counts / counts.sum()).log()
    explicit = acl(z, y, u, lp, alpha=0.05, beta=1.0, temperature=0.2, omega=None, positives="per-positive",
                   reduction="mean")
    torch.testing.assert_close(acl(z, y, u, lp).loss, explicit.loss, rtol=0, atol=0)
    for other in ({"alpha": 0.06}, {"beta": 1.1}, {"temperature": 0.25}):  # each default matters to the value
        assert not torch.isclose(acl(z, y, u, lp, **other).loss, explicit.loss, rtol=1e-6)


def test_loss_module_defaults_are_the_documented_values():
    z, y, u, counts = _inputs()
    args = (Outputs(z, u, z), Batch(torch.zeros(5, 2, 1, 2, 2), y, torch.arange(5)), StepState(counts, 4))
    default = ACLLoss()
    assert (default.temperature, default.alpha, default.beta) == (0.2, 0.05, 1.0)
    assert (default.neg_weight, default.positives) == ("dataset", "per-positive")
    explicit = ACLLoss(temperature=0.2, alpha=0.05, beta=1.0, neg_weight="dataset", positives="per-positive")
    torch.testing.assert_close(default(*args).total, explicit(*args).total, rtol=0, atol=0)


def test_bad_arguments_are_refused_with_the_allowed_values():
    z, y, u, counts = _inputs()
    lp = (counts / counts.sum()).log()
    with pytest.raises(ValueError, match=r"positives must be one of \('per-positive', 'same-image'\), got 'all'"):
        acl(z, y, u, lp, positives="all")
    with pytest.raises(ValueError, match=r"positives must be one of \('per-positive', 'same-image'\), got 'all'"):
        ACLLoss(positives="all")
    with pytest.raises(ValueError, match=r"neg_weight must be one of \('dataset', 'batch', 'none'\), got 'foo'"):
        ACLLoss(neg_weight="foo")
    with pytest.raises(ValueError, match=r"neg_weight must be one of \('dataset', 'batch', 'none'\), got 'foo'"):
        negative_weights("foo", counts, y)


@pytest.mark.parametrize("beta", [0.0, -0.5])
def test_beta_zero_or_negative_is_refused(beta):
    """beta = 0 would drop the own centre, the one positive every anchor has: refused at the boundary itself."""
    z, y, u, counts = _inputs()
    with pytest.raises(ValueError, match=rf"beta must be > 0 \(the own class centre is always a positive\), got {beta}"):
        acl(z, y, u, (counts / counts.sum()).log(), beta=beta)


def test_dataset_weights_of_a_one_image_class():
    """omega_c = (1/n_c) / mean_k (1/n_k): a class with one training image has 1/n = 1; a class never seen counts
    as one image (no division by zero)."""
    counts = torch.tensor([4.0, 1.0, 0.0], dtype=torch.float64)
    inv = torch.tensor([0.25, 1.0, 1.0], dtype=torch.float64)
    torch.testing.assert_close(negative_weights("dataset", counts, torch.tensor([0])), inv / inv.mean())


def test_batch_weights_of_a_one_column_class_and_an_absent_class():
    """omega_c = 1/|B_c|: a class with one column weighs 1, an absent class 1 (never used), a class with two 1/2;
    padded columns (label -1) are not counted."""
    cols = torch.tensor([0, 0, 1, -1])
    got = negative_weights("batch", torch.ones(3, dtype=torch.float64), cols)
    torch.testing.assert_close(got, torch.tensor([0.5, 1.0, 1.0], dtype=torch.float64))
    assert negative_weights("none", torch.ones(3), cols) is None


# -- the gradient probe (ltreg_acl.gradients) against the losses written as functions of S = Z Z^T ---------------------
def _naive_pair_gradients(z, y, u, lp, *, loss, tau, alpha=0.05, beta=1.0):
    """dL/dS_ip of SupCon (Khosla et al.) and of ACL's per-positive reading, written on S directly (float64)."""
    b, v, d = z.shape
    flat = z.reshape(-1, d)
    s = (flat @ flat.T).detach().requires_grad_(True)
    yy = y.repeat_interleave(v)
    n = yy.shape[0]
    terms = []
    for i in range(n):
        others = [j for j in range(n) if j != i]
        pos = [j for j in others if yy[j] == yy[i]]
        if loss == "supcon":
            log_den = torch.logsumexp(torch.stack([s[i, j] / tau for j in others]), 0)
            terms.append(-sum(s[i, p] / tau - log_den for p in pos) / len(pos))
        else:
            x = u[i // v, i % v] + lp
            yi = int(yy[i])
            neg = sum(torch.exp(s[i, j] / tau) for j in others if yy[j] != yy[i])
            neg = neg + sum(torch.exp(x[c]) for c in range(x.shape[0]) if c != yi)
            t0 = -torch.log(torch.exp(x[yi]) / (torch.exp(x[yi]) + neg))
            tp = [-torch.log(torch.exp(s[i, p] / tau) / (torch.exp(s[i, p] / tau) + neg)) for p in pos]
            terms.append((beta * t0 + alpha * sum(tp)) / (beta + alpha * len(pos)))
    (grad,) = torch.autograd.grad(torch.stack(terms).mean(), s)
    mask = (yy[:, None] == yy[None, :]) & ~torch.eye(n, dtype=torch.bool)
    return grad[mask]


@pytest.mark.parametrize("loss", ["supcon", "acl"])
def test_positive_pair_gradients_match_the_losses_written_on_similarities(loss):
    """The probe's dL/ds_ip equal those of the loss written directly on S, at a non-default temperature."""
    z, y, u, counts = _inputs(b=4)
    y = torch.tensor([0, 0, 1, 1])
    lp = (counts / counts.sum()).log()
    kw = {"alpha": 0.3, "beta": 0.7} if loss == "acl" else {}
    got = positive_pair_gradients(z, y, u, lp, loss=loss, temperature=0.35, **kw)
    want = _naive_pair_gradients(z, y, u, lp, loss=loss, tau=0.35, **kw)
    torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-12)


def test_positive_pair_gradients_refuse_an_unknown_loss():
    z, y, u, counts = _inputs()
    with pytest.raises(ValueError, match=r"^loss must be 'supcon' or 'acl', got 'paco'$"):
        positive_pair_gradients(z, y, u, counts.log(), loss="paco", temperature=0.1)
