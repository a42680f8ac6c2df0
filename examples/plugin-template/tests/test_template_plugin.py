# tests/test_template_plugin.py
"""The template's loss against a naive float64 loop written from the formula in ``ltreg_template/loss.py``."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from ltreg_template import METHOD, SupConLALoss, supcon_la

import ltreg
from ltreg import Batch, Outputs, StepState


def naive_supcon_la(z, logits, labels, counts, *, temperature, tau, con_weight, ce_weight):
    """Explicit loops over anchors and columns (float64); view 0 feeds the CE term."""
    b, v, _ = z.shape
    n = b * v
    zs = [z[i // v, i % v] for i in range(n)]
    ys = [int(labels[i // v]) for i in range(n)]
    con, anchors = 0.0, 0
    for i in range(n):
        positives = [p for p in range(n) if p != i and ys[p] == ys[i]]
        if not positives:  # an anchor without positive contributes nothing and is not counted
            continue
        den = sum(torch.exp(torch.dot(zs[i], zs[a]) / temperature) for a in range(n) if a != i)
        con = con + sum(-torch.log(torch.exp(torch.dot(zs[i], zs[p]) / temperature) / den) for p in positives) / len(positives)
        anchors += 1
    con = con / max(anchors, 1)
    log_prior = [math.log(float(counts[c]) / float(counts.sum())) for c in range(counts.shape[0])]
    ce = 0.0
    for k in range(b):
        adjusted = [logits[k, 0, c] + tau * log_prior[c] for c in range(counts.shape[0])]
        ce = ce - (adjusted[int(labels[k])] - torch.log(sum(torch.exp(a) for a in adjusted)))
    ce = ce / b
    return ce_weight * ce + con_weight * con


def _inputs(seed=0, views=2):
    g = torch.Generator().manual_seed(seed)
    z = F.normalize(torch.randn(6, views, 5, generator=g, dtype=torch.float64), dim=-1).requires_grad_(True)
    logits = torch.randn(6, views, 4, generator=g, dtype=torch.float64).requires_grad_(True)
    labels = torch.tensor([0, 0, 1, 1, 1, 3])  # class 2 absent; class 3 once (no positive when views=1)
    counts = torch.tensor([40.0, 20.0, 8.0, 2.0], dtype=torch.float64)
    return z, logits, labels, counts


@pytest.mark.parametrize("views", [2, 1])
def test_loss_matches_naive_float64_values_and_gradients(views):
    hps = {"temperature": 0.2, "tau": 1.0, "con_weight": 0.7, "ce_weight": 1.3}
    z, logits, labels, counts = _inputs(views=views)
    total, _, _ = supcon_la(z, logits, labels, (counts / counts.sum()).log(), **hps)
    got = torch.autograd.grad(total, (z, logits))
    ref = naive_supcon_la(z, logits, labels, counts, **hps)
    want = torch.autograd.grad(ref, (z, logits))
    torch.testing.assert_close(total, ref, rtol=1e-10, atol=1e-12)
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w, rtol=1e-9, atol=1e-12)


def test_step_form_equals_the_functional_form_on_one_process():
    z, logits, labels, counts = _inputs(seed=1)
    loss = SupConLALoss(temperature=0.1, tau=0.5)
    out = loss(Outputs(z=z, logits=logits, features=z), Batch(torch.zeros(6, 2, 1, 8, 8), labels, torch.arange(6)),
               StepState(class_counts=counts, num_classes=4))
    total, ce, con = supcon_la(z, logits, labels, (counts / counts.sum()).log(), temperature=0.1, tau=0.5)
    torch.testing.assert_close(out.total, total)
    assert set(out.parts) == {"la_ce", "supcon"}
    torch.testing.assert_close(out.parts["la_ce"], ce.detach())
    torch.testing.assert_close(out.parts["supcon"], con.detach())


def test_the_registry_finds_the_method_and_its_loss():
    spec = ltreg.get_method("template-supcon-la")
    assert spec is METHOD and spec.stages == 1
    assert ltreg.registry("losses").get("template-supcon-la") is SupConLALoss
    assert ltreg.registry("samplers").entry(spec.sampler.name).dist == "ltreg"  # a core part, reused by name


@pytest.mark.parametrize("views", [2, 1])
def test_whole_loss_module_matches_naive_total(views):
    """SupConLALoss.forward(outputs, batch, state) against the naive total, with distinct term weights."""
    z, logits, labels, counts = _inputs(views=views)
    mod = SupConLALoss(temperature=0.2, tau=1.0, con_weight=0.7, ce_weight=1.3)
    out = mod(Outputs(z, logits, z), Batch(torch.zeros(6, views, 1, 2, 2), labels, torch.arange(6)),
              StepState(counts, 4))
    ref = naive_supcon_la(z, logits, labels, counts, temperature=0.2, tau=1.0, con_weight=0.7, ce_weight=1.3)
    torch.testing.assert_close(out.total, ref, rtol=1e-10, atol=1e-12)
    for g, w in zip(torch.autograd.grad(out.total, (z, logits)), torch.autograd.grad(ref, (z, logits))):
        torch.testing.assert_close(g, w, rtol=1e-9, atol=1e-12)


def test_logit_adjustment_favours_tail_classes():
    """With equal logits, the adjusted CE pushes a tail-class sample harder than a head-class one."""
    counts = torch.tensor([90.0, 10.0], dtype=torch.float64)
    z = F.normalize(torch.ones(2, 1, 3, dtype=torch.float64), dim=-1)
    logits = torch.zeros(2, 1, 2, dtype=torch.float64, requires_grad=True)
    out = SupConLALoss(con_weight=0.0)(Outputs(z, logits, z), Batch(torch.zeros(2, 1, 1, 2, 2), torch.tensor([0, 1]),
                                                                     torch.arange(2)), StepState(counts, 2))
    (g,) = torch.autograd.grad(out.total, logits)
    assert g[1, 0, 1].abs() > g[0, 0, 0].abs()


def test_defaults_are_the_method_defaults():
    h, mod = METHOD.hparams, SupConLALoss()
    assert (mod.temperature, mod.tau, mod.con_weight, mod.ce_weight, mod.ce_views) == (0.1, 1.0, 1.0, 1.0, (0,))
    assert all(getattr(h, k) == getattr(mod, k) for k in ("temperature", "tau") if hasattr(h, k))
    z, logits, labels, counts = _inputs()
    lp = (counts / counts.sum()).log()
    torch.testing.assert_close(supcon_la(z, logits, labels, lp)[0],
                               supcon_la(z, logits, labels, lp, temperature=0.1, tau=1.0)[0], rtol=0, atol=0)


def test_two_ranks_contrast_with_the_global_batch():
    """Each rank contrasts its anchors with the gathered global batch: the mean of the two ranks' losses (what DDP
    averages) equals the one-process loss of the whole batch; tau != 1 so the adjustment strength is checked too."""
    z, logits, labels, counts = _inputs()
    mod = SupConLALoss(temperature=0.2, tau=0.6, con_weight=0.7, ce_weight=1.3)
    full = mod(Outputs(z, logits, z), Batch(torch.zeros(6, 2, 1, 2, 2), labels, torch.arange(6)), StepState(counts, 4))
    ref = naive_supcon_la(z, logits, labels, counts, temperature=0.2, tau=0.6, con_weight=0.7, ce_weight=1.3)
    torch.testing.assert_close(full.total, ref, rtol=1e-10, atol=1e-12)
    total = 0.0
    for rank in (0, 1):
        sl = slice(3 * rank, 3 * rank + 3)
        state = StepState(counts, 4, world_size=2, rank=rank, gather=lambda t, sl=sl: z if t.shape == z[sl].shape else t,
                          gather_nograd=lambda t: labels if t.dtype == torch.long else t,
                          all_reduce_mean=lambda t: torch.full_like(t, 6.0))  # 12 anchors with a positive, 2 ranks
        out = mod(Outputs(z[sl], logits[sl], z[sl]), Batch(torch.zeros(3, 2, 1, 2, 2), labels[sl], torch.arange(3)),
                  state)
        total = total + out.total / 2
    torch.testing.assert_close(total, full.total, rtol=1e-10, atol=1e-12)
