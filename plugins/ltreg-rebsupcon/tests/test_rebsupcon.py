"""Reb-SupCon plugin: the loss against naive float64 loops written from the paper (Lv et al., BDCC 2025, §3.3), its switches and
edge cases, an emulated two-process split, and training through the registry (digits-LT, CPU)."""

from __future__ import annotations

import math
import os

import pytest
import torch
import torch.nn.functional as F
from ltreg_rebsupcon.loss import (
    RebSupConLoss,
    anchor_losses,
    class_mean,
    prototype_losses,
    reb_supcon,
    rebalance_factor,
)

import ltreg
from ltreg.losses import ContrastSet, state_contrast

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

TAU, ALPHA, BETA, EPS = 0.3, 0.5, 0.1, 1e-5
C = 6  # classes 4 and 5 never appear in the batch


def _inputs(seed: int = 0):
    """Queries of classes 0,0,1,1,1,2,3; columns (keys + queue, -1 = empty slot): class 3 has no column
    (no positive), class 2 exactly one (singleton)."""
    g = torch.Generator().manual_seed(seed)
    y = torch.tensor([0, 0, 1, 1, 1, 2, 3])
    q = F.normalize(torch.randn(len(y), 5, generator=g, dtype=torch.float64), dim=1)
    col_y = torch.tensor([0, 1, 0, 1, 2, -1, 1, 0, -1, 4])
    cols = F.normalize(torch.randn(len(col_y), 5, generator=g, dtype=torch.float64), dim=1)
    logits = torch.randn(len(y), C, generator=g, dtype=torch.float64)
    prior = torch.tensor([0.4, 0.25, 0.15, 0.1, 0.06, 0.04], dtype=torch.float64)
    empty = torch.empty(len(y), 0, dtype=torch.long)
    return q, y, ContrastSet(cols, col_y, None, empty), logits, prior


def naive_reb(q, y, cols, col_y, logits, prior, form, positives):
    """Mean over anchors with a positive of omega(y_i) L_i, straight from the formulas, with Python loops.

    The per-sample gradient dL_i/dq_i is SupCon's closed form (1/tau)[sum_p z_p (P_ip - 1/|P|) + sum_n z_n P_in]
    (not autograd)."""
    n, m = len(y), len(col_y)
    losses, gnorm, has = [], [], []
    for i in range(n):
        valid = [j for j in range(m) if col_y[j] >= 0]
        s = {j: sum(q[i, d] * cols[j, d] for d in range(q.shape[1])) / TAU for j in valid}
        if positives == "samples":
            pos = [j for j in valid if col_y[j] == y[i]]
            if not pos:
                losses.append(q[i, 0] * 0.0)
                gnorm.append(0.0)
                has.append(False)
                continue
            log_den = torch.log(sum(torch.exp(s[j]) for j in valid))
            losses.append(-sum(s[p] - log_den for p in pos) / len(pos))
            soft = {j: math.exp(float((s[j] - log_den).detach())) for j in valid}
            grad = [(sum(soft[j] * float(cols[j, d]) for j in valid)
                     - sum(float(cols[p, d]) for p in pos) / len(pos)) / TAU for d in range(q.shape[1])]
        else:
            centre = [logits[i, c] + math.log(prior[c]) for c in range(C)]
            log_den = torch.log(sum(torch.exp(x) for x in centre) + sum(torch.exp(s[j]) for j in valid))
            losses.append(-(centre[int(y[i])] - log_den))
            soft = {j: math.exp(float((s[j] - log_den).detach())) for j in valid}
            grad = [sum(soft[j] * float(cols[j, d]) for j in valid) / TAU for d in range(q.shape[1])]
        gnorm.append(math.sqrt(sum(v * v for v in grad)))
        has.append(True)
    omega = []
    for c in range(C):
        members = [gnorm[i] for i in range(n) if int(y[i]) == c and has[i]]
        g_c = sum(members) / len(members) if members else 0.0
        x = ALPHA * g_c * BETA / (float(prior[c]) + EPS)
        omega.append(1.0 / (1.0 + x) if form == "printed" else 1.0 + x)
    total = sum(omega[int(y[i])] * losses[i] for i in range(n))
    return total / sum(has), torch.tensor(omega, dtype=torch.float64)


@pytest.mark.parametrize("positives", ["samples", "centres"])
@pytest.mark.parametrize("form", ["printed", "inverse"])
def test_reb_supcon_matches_naive_values_and_gradients(form, positives):
    q, y, cs, logits, prior = _inputs()
    q1, l1 = q.clone().requires_grad_(), logits.clone().requires_grad_()
    res = reb_supcon(q1, y, cs, prior, temperature=TAU, alpha=ALPHA, beta=BETA, eps=EPS, omega_form=form,
                     positives=positives, logits=l1)
    loss = res.loss.sum() / (res.num_pos > 0).sum()
    loss.backward()
    q2, l2 = q.clone().requires_grad_(), logits.clone().requires_grad_()
    ref, ref_omega = naive_reb(q2, y, cs.z, cs.labels, l2, prior, form, positives)
    ref.backward()
    torch.testing.assert_close(loss, ref, rtol=1e-9, atol=1e-12)
    torch.testing.assert_close(res.omega, ref_omega, rtol=1e-9, atol=1e-12)
    torch.testing.assert_close(q1.grad, q2.grad, rtol=1e-8, atol=1e-10)
    if positives == "centres":
        torch.testing.assert_close(l1.grad, l2.grad, rtol=1e-8, atol=1e-10)
    # classes 4, 5 are absent: g_c = 0, omega = 1 under both forms
    assert torch.equal(res.grad_c[4:], torch.zeros(2, dtype=res.grad_c.dtype))
    torch.testing.assert_close(res.omega[4:], torch.ones(2, dtype=torch.float64))


def test_anchor_without_positive_contributes_zero():
    q, y, cs, logits, prior = _inputs()
    q = q.requires_grad_()
    res = reb_supcon(q, y, cs, prior, temperature=TAU, alpha=ALPHA, beta=BETA, eps=EPS)
    (res.loss.sum() / (res.num_pos > 0).sum()).backward()
    assert torch.isfinite(res.loss).all() and torch.isfinite(q.grad).all()
    assert res.num_pos[-1] == 0 and res.loss[-1] == 0 and torch.equal(q.grad[-1], torch.zeros(5, dtype=q.dtype))
    assert res.grad_c[3] == 0 and res.omega[3] == 1  # class 3 has no positive: no gradient statistic
    assert res.num_pos[5] == 1 and res.loss[5] > 0  # the singleton class still counts


def test_weights_printed_damp_and_inverse_amplify():
    q, y, cs, logits, prior = _inputs()
    kw = dict(temperature=TAU, alpha=ALPHA, beta=BETA, eps=EPS)
    printed = reb_supcon(q, y, cs, prior, omega_form="printed", **kw).omega[:3]
    inverse = reb_supcon(q, y, cs, prior, omega_form="inverse", **kw).omega[:3]
    assert (printed < 1).all() and (inverse > 1).all()
    torch.testing.assert_close(printed * inverse, torch.ones(3, dtype=torch.float64))  # 1/(1+x) and 1+x


def test_two_rank_split_equals_one_batch():
    """Anchors 0-2 on rank 0 and 3-5 on rank 1 (class 1 on both), an emulated all-gather: the summed local
    losses over the global anchor count, omega and the gradients equal the one-process global batch's."""
    q, y, cs, logits, prior = _inputs()
    q, y = q[:6], y[:6]
    full = q.clone().requires_grad_()
    one = reb_supcon(full, y, cs, prior, temperature=TAU)
    (one.loss.sum() / (one.num_pos > 0).sum()).backward()
    ranks = [slice(0, 3), slice(3, 6)]
    sent: list[list[torch.Tensor]] = [[], []]
    for r, sl in enumerate(ranks):  # what each rank hands to all_gather, call by call
        reb_supcon(q[sl], y[sl], cs, prior, temperature=TAU, gather=lambda t, r=r: sent[r].append(t) or t)
    total, leaves = 0.0, []
    for r, sl in enumerate(ranks):
        calls = iter(range(len(sent[r])))
        leaves.append(q[sl].clone().requires_grad_())
        res = reb_supcon(leaves[-1], y[sl], cs, prior, temperature=TAU,
                         gather=lambda t, calls=calls: (lambda k: torch.cat([sent[0][k], sent[1][k]]))(next(calls)))
        torch.testing.assert_close(res.omega, one.omega)
        total = total + res.loss.sum()
    local = reb_supcon(q[:3], y[:3], cs, prior, temperature=TAU).omega
    assert not torch.isclose(local[1], one.omega[1])  # without the gather, rank 0 would weigh class 1 differently
    (total / (one.num_pos > 0).sum()).backward()
    torch.testing.assert_close(total / (one.num_pos > 0).sum(), one.loss.sum() / (one.num_pos > 0).sum())
    torch.testing.assert_close(torch.cat([x.grad for x in leaves]), full.grad)


def naive_proto(zq, zk, c, qq, qk, tau, delta):
    b, k = qq.shape
    l1 = l2 = 0.0
    for i in range(b):
        sq_ = [sum(zq[i, d] * c[j, d] for d in range(c.shape[1])) / tau for j in range(k)]
        sk_ = [sum(zk[i, d] * c[j, d] for d in range(c.shape[1])) / tau for j in range(k)]
        lse_q, lse_k = torch.logsumexp(torch.stack(sq_), 0), torch.logsumexp(torch.stack(sk_), 0)
        for j in range(k):
            l1 = l1 - (qk[i, j] * (sq_[j] - lse_q) + qq[i, j] * (sk_[j] - lse_k)) / (2 * b)
            l2 = l2 + qq[i, j] * sum((zq[i, d] - c[j, d]) ** 2 for d in range(c.shape[1])) / b
    l3 = 0.0
    for j in range(k):
        for j2 in range(k):
            if j != j2:
                l3 = l3 + torch.clamp(delta - sum((c[j, d] - c[j2, d]) ** 2 for d in range(c.shape[1])), min=0)
    return l1, l2, l3


def test_prototype_losses_match_naive_values_and_gradients():
    g = torch.Generator().manual_seed(1)
    zq = F.normalize(torch.randn(4, 3, generator=g, dtype=torch.float64), dim=1)
    zk = F.normalize(torch.randn(4, 3, generator=g, dtype=torch.float64), dim=1)
    c = F.normalize(torch.randn(5, 3, generator=g, dtype=torch.float64), dim=1)
    c[4] = F.normalize(c[0] + 0.3, dim=0)  # a close pair: the separation hinge is active
    c = c * torch.tensor([1.0, 0.8, 1.1, 0.9, 1.05], dtype=torch.float64)[:, None]  # not all of one norm
    qq = torch.rand(4, 5, generator=g, dtype=torch.float64).softmax(1) * 1.7  # rows need not sum to 1
    qk = torch.rand(4, 5, generator=g, dtype=torch.float64).softmax(1)
    a = [zq.clone().requires_grad_(), c.clone().requires_grad_()]
    got = prototype_losses(a[0], zk, a[1], qq, qk, temperature=0.2, delta=1.0)
    sum(w * x for w, x in zip((0.5, 0.3, 0.2), got)).backward()
    b = [zq.clone().requires_grad_(), c.clone().requires_grad_()]
    ref = naive_proto(b[0], zk, b[1], qq, qk, 0.2, 1.0)
    sum(w * x for w, x in zip((0.5, 0.3, 0.2), ref)).backward()
    assert ref[2].detach() > 0
    for x, r in zip(got, ref):
        torch.testing.assert_close(x, r, rtol=1e-9, atol=1e-12)
    for x, r in zip(a, b):
        torch.testing.assert_close(x.grad, r.grad, rtol=1e-8, atol=1e-10)


def test_grad_ema_switch():
    mod = RebSupConLoss(num_classes=3, grad_ema=True, grad_ema_momentum=0.9)
    first = mod.smooth(torch.tensor([1.0, 2.0, 0.0]), torch.tensor([True, True, False]))
    torch.testing.assert_close(first, torch.tensor([1.0, 2.0, 0.0]))  # first sighting: the batch value
    second = mod.smooth(torch.tensor([3.0, 0.0, 5.0]), torch.tensor([True, False, True]))
    torch.testing.assert_close(second, torch.tensor([0.9 + 0.3, 2.0, 5.0]))  # absent class 1 kept
    off = RebSupConLoss(num_classes=3)
    g = torch.tensor([3.0, 0.0, 5.0])
    assert off.smooth(g, torch.ones(3, dtype=torch.bool)) is g


def test_spec_parts_recipes_and_errors():
    spec = ltreg.get_method("rebsupcon")
    assert (spec.memory.name, spec.prototypes.name, spec.loss.name, spec.rebalance.name) == ("moco", "learnable", "rebsupcon", "crt")
    assert spec.hparams.cls_weight == 0 and spec.hparams.omega_form == "inverse" and spec.stages == 2
    assert spec.views_for(spec.hparams) == ("rand", "sim") and spec.views.query == (0,)
    assert spec.memory.kwargs["key_view"] == 1 and spec.stage2.epochs == ltreg.hp("stage2_epochs")
    for ds in ("cifar10-lt", "cifar100-lt"):
        for imb in (100, 50, 10):
            assert spec.recipe(f"{ds}-if{imb}").train["epochs"] == 400
    assert spec.recipe("cifar100-lt-if100").paper == {"All": 52.7}
    assert spec.recipe("imagenet-lt").paper == {"All": 56.9, "Many": 64.9, "Medium": 54.2, "Few": 35.6}
    with pytest.raises(ltreg.ConfigError, match="omega_form"):
        spec.hparams.replace(omega_form="flipped")
    with pytest.raises(ValueError, match="moco"):
        RebSupConLoss(num_classes=3)(ltreg.Outputs(torch.zeros(2, 2, 4), torch.zeros(2, 2, 3), torch.zeros(2, 2, 4)),
                                     ltreg.Batch(torch.zeros(2, 2, 1, 8, 8), torch.zeros(2, dtype=torch.long),
                                                 torch.arange(2)), ltreg.StepState(torch.ones(3), 3))


def _test_images(n: int = 16) -> torch.Tensor:
    from ltreg.config import TrainConfig
    from ltreg.data.build import build_data
    from ltreg.data.views import ViewDataset, collate

    test = build_data(TrainConfig(dataset="digits-lt").data_args()).test
    vds = ViewDataset(test, ("none",))
    return collate([vds[i] for i in range(n)]).images[:, 0]


def test_trains_through_registry_and_reloads(tmp_path):
    result = ltreg.train("rebsupcon", epochs=1, max_steps_per_epoch=3, batch_size=32, stage2_epochs=1,
                         eval_batch_size=512, output_dir=str(tmp_path / "run"))
    row = [r for r in result.history if "reb" in r][-1]  # the last stage-1 row (stage 2 is cRT)
    assert any("ce" in r for r in result.history)
    for key in ("loss", "reb", "swap", "agg", "sep", "cls"):
        assert math.isfinite(row[key]), key
    assert (tmp_path / "run" / "model.safetensors").is_file() and (tmp_path / "run" / "config.json").is_file()
    images = _test_images()
    model = result.model.eval()
    reloaded = ltreg.LTModel.from_pretrained(tmp_path / "run").eval()
    with torch.no_grad():
        torch.testing.assert_close(reloaded.predict(images), model.predict(images), rtol=0, atol=0)


def test_quick_recipe_runs(tmp_path):
    result = ltreg.train("rebsupcon", recipe="cifar100-lt-if100", quick=True, dataset="digits-lt",
                         batch_size=32, max_steps_per_epoch=1, eval_batch_size=512, output_dir=str(tmp_path / "quick"))
    assert result.config.backbone == "resnet32" and result.config.lr == 0.02
    assert all(math.isfinite(r["loss"]) for r in result.history) and len(result.history) == 3  # 2 stage-1 + 1 cRT


# -- the whole loss module against the paper's total, written from the paper (Lv et al. 2025, §3.3-3.4) --------
class _Memory:
    def __init__(self, z, labels):
        self.queue_z, self.queue_labels = z, labels


class _Protos:
    """Learnable prototypes stand-in: ``assign`` is a fixed soft assignment (no gradient), distinct per input."""

    def __init__(self, c):
        self.c = c

    def prototypes(self):
        return self.c

    def assign(self, z):
        return torch.softmax(z.detach() @ self.c.detach().T / 0.3 + torch.arange(self.c.shape[0]) * 0.1, dim=1)


def _module_inputs(seed=3):
    g = torch.Generator().manual_seed(seed)
    y = torch.tensor([0, 0, 0, 1, 1, 2, 3])
    b, d, k = len(y), 4, 5
    zq = F.normalize(torch.randn(b, d, generator=g, dtype=torch.float64), dim=1)
    zk = F.normalize(zq + 0.5 * torch.randn(b, d, generator=g, dtype=torch.float64), dim=1)
    z = torch.stack([zq, F.normalize(torch.randn(b, d, generator=g, dtype=torch.float64), dim=1)], 1)
    logits = torch.randn(b, 2, C, generator=g, dtype=torch.float64)
    queue = F.normalize(torch.randn(6, d, generator=g, dtype=torch.float64), dim=1)
    queue_y = torch.tensor([0, 2, -1, 1, 0, 5])
    protos = F.normalize(torch.randn(k, d, generator=g, dtype=torch.float64), dim=1)
    protos[4] = F.normalize(protos[0] + 0.2, dim=0)  # separation hinge active
    counts = torch.tensor([600.0, 200.0, 60.0, 20.0, 10.0, 6.0], dtype=torch.float64)
    return z, zk, logits, queue, queue_y, protos, y, counts


def naive_total(z, zk, logits, queue, queue_y, protos, y, counts, qq, qk, *, tau, alpha, beta, eps, lambdas, delta,
                cls_weight, form, positives="samples", omega_norm="anchors", omega_max=None):
    """L = L_reb + l1 L1 + l2 L2 + l3 L3 (+ cls_weight Balanced Softmax), loops over samples and classes."""
    zq = z[:, 0]
    cols = torch.cat([zk, queue])
    col_y = [int(v) for v in torch.cat([y, queue_y])]
    b = len(y)
    f = counts / counts.sum()

    def l_i(qi, yi, i, detach=False):
        den = sum(torch.exp(qi @ cols[j] / tau) for j in range(len(col_y)) if col_y[j] >= 0)
        if positives == "centres":  # z_c read as class centres u_ic + log pi_c, one softmax with all columns
            u = logits[i, 0].detach() if detach else logits[i, 0]
            centre = [u[c] + torch.log(f[c]) for c in range(C)]
            return -torch.log(torch.exp(centre[yi]) / (den + sum(torch.exp(x) for x in centre))), 1
        pos = [j for j in range(len(col_y)) if col_y[j] == yi]
        return -sum(torch.log(torch.exp(qi @ cols[p] / tau) / den) for p in pos) / len(pos), len(pos)

    norms, losses, has = [], [], []
    for i in range(b):
        leaf = zq[i].detach().clone().requires_grad_(True)
        li, npos = l_i(leaf, int(y[i]), i, detach=True)
        norms.append(torch.autograd.grad(li, leaf)[0].norm().item())
        losses.append(l_i(zq[i], int(y[i]), i)[0])
        has.append(npos > 0)
    omega = []
    for c in range(C):
        m = [norms[i] for i in range(b) if int(y[i]) == c and has[i]]
        g_c = sum(m) / len(m) if m else 0.0
        x = alpha * g_c * beta / (float(f[c]) + eps)
        w = 1 + x if form == "inverse" else 1 / (1 + x)
        omega.append(w if omega_max is None else min(w, omega_max))
    den = sum(has) if omega_norm == "anchors" else sum(omega[int(y[i])] for i in range(b) if has[i])
    l_reb = sum(omega[int(y[i])] * losses[i] for i in range(b)) / den
    kk = protos.shape[0]
    l1 = l2 = 0.0
    for i in range(b):
        pq = torch.softmax(torch.stack([zq[i] @ protos[j] / tau for j in range(kk)]), 0)
        pk = torch.softmax(torch.stack([zk[i].detach() @ protos[j] / tau for j in range(kk)]), 0)
        for j in range(kk):
            l1 = l1 - (qk[i, j] * torch.log(pq[j]) + qq[i, j] * torch.log(pk[j])) / (2 * b)
            l2 = l2 + qq[i, j] * ((zq[i] - protos[j]) ** 2).sum() / b
    l3 = sum(torch.clamp(delta - ((protos[j] - protos[j2]) ** 2).sum(), min=0)
             for j in range(kk) for j2 in range(kk) if j != j2)
    total = l_reb + lambdas[0] * l1 + lambdas[1] * l2 + lambdas[2] * l3
    if cls_weight:
        bal = [-torch.log_softmax(logits[i, 0] + torch.log(counts), 0)[int(y[i])] for i in range(b)]
        total = total + cls_weight * sum(bal) / b
    return total, torch.tensor(omega, dtype=torch.float64)


@pytest.mark.parametrize("positives", ["samples", "centres"])
@pytest.mark.parametrize("form", ["inverse", "printed"])
@pytest.mark.parametrize("cls_weight", [0.0, 0.37])
def test_whole_loss_module_matches_paper_total(form, cls_weight, positives):
    """forward(outputs, batch, state) == the paper's L = L_reb + L_proto (+ optional classifier term), values
    and gradients w.r.t. z, logits and prototypes, with distinct term weights so that a swap shows."""
    z, zk, logits, queue, queue_y, protos, y, counts = _module_inputs()
    kw = dict(tau=0.2, alpha=0.7, beta=0.13, eps=0.02, lambdas=(0.61, 0.29, 0.17), delta=0.9)
    mod = RebSupConLoss(num_classes=C, temperature=kw["tau"], alpha=kw["alpha"], beta=kw["beta"], eps=kw["eps"],
                        omega_form=form, lambda_swap=0.61, lambda_agg=0.29, lambda_sep=0.17, delta=0.9,
                        cls_weight=cls_weight, positives=positives)
    leaves = [t.clone().requires_grad_() for t in (z, logits, protos)]
    p = _Protos(leaves[2])
    state = ltreg.StepState(counts, C, memory=_Memory(queue, queue_y), prototypes=p)
    out = mod(ltreg.Outputs(leaves[0], leaves[1], torch.zeros(len(y), 2, 3, dtype=torch.float64), {"key_z": zk}),
              ltreg.Batch(torch.zeros(len(y), 2, 1, 2, 2), y, torch.arange(len(y))), state)
    out.total.backward()
    ref_leaves = [t.clone().requires_grad_() for t in (z, logits, protos)]
    rp = _Protos(ref_leaves[2])
    ref, ref_omega = naive_total(ref_leaves[0], zk, ref_leaves[1], queue, queue_y, ref_leaves[2], y, counts,
                                 rp.assign(ref_leaves[0][:, 0]), rp.assign(zk), cls_weight=cls_weight, form=form,
                                 positives=positives, **kw)
    ref.backward()
    torch.testing.assert_close(out.total, ref, rtol=1e-9, atol=1e-12)
    torch.testing.assert_close(out.parts["omega"], ref_omega[y].mean(), rtol=1e-9, atol=1e-12)
    for a, r in zip(leaves, ref_leaves):
        if r.grad is None:  # the paper's total trains no classifier
            assert a.grad is None or not a.grad.any()
        else:
            torch.testing.assert_close(a.grad, r.grad, rtol=1e-8, atol=1e-10)
    assert (leaves[1].grad is not None) == bool(cls_weight or positives == "centres")
    assert set(out.parts) == {"reb", "swap", "agg", "sep", "cls", "omega"}
    lam = (0.61, 0.29, 0.17)
    torch.testing.assert_close(out.total.detach(), out.parts["reb"] + sum(w * out.parts[k] for w, k in zip(
        lam, ("swap", "agg", "sep"))) + cls_weight * out.parts["cls"], rtol=1e-12, atol=1e-12)


def test_default_omega_up_weights_tail_classes():
    """Paper: omega focuses the gradient on tail / hard classes (Fig. 2, limitations). On a long-tailed batch
    (6,000 vs 60 images) the default reading gives the tail class the larger weight; 'printed' does the opposite."""
    g = torch.Generator().manual_seed(0)
    counts = torch.tensor([6000.0, 600.0, 60.0], dtype=torch.float64)
    y = torch.tensor([0] * 12 + [1] * 4 + [2] * 2)
    q = F.normalize(torch.randn(len(y), 8, generator=g, dtype=torch.float64), dim=1)
    keys = F.normalize(q + 0.3 * torch.randn(len(y), 8, generator=g, dtype=torch.float64), dim=1)
    cs = ContrastSet(keys, y, None, torch.empty(len(y), 0, dtype=torch.long))
    prior = counts / counts.sum()
    from ltreg_rebsupcon import METHOD

    form = METHOD.hparams.omega_form
    assert RebSupConLoss(num_classes=3).omega_form == form
    omega = reb_supcon(q, y, cs, prior, temperature=0.2, omega_form=form).omega
    assert omega[2] > omega[1] > omega[0]
    printed = reb_supcon(q, y, cs, prior, temperature=0.2, omega_form="printed").omega
    assert printed[2] < printed[0]


# -- defaults, switches and errors of the loss module (each one a mutant of loss.py without them) ----------------
def test_module_defaults_are_the_method_defaults():
    from ltreg_rebsupcon import METHOD

    h, mod = METHOD.hparams, RebSupConLoss(num_classes=3)
    assert (mod.temperature, mod.alpha, mod.beta, mod.eps) == (h.temperature, h.alpha, h.beta, h.eps)
    assert (mod.omega_form, mod.positives, mod.use_ema, mod.ema_momentum) == (h.omega_form, h.positives, h.grad_ema,
                                                                              h.grad_ema_momentum)
    assert mod.lambdas == (h.lambda_swap, h.lambda_agg, h.lambda_sep) == (0.5, 0.3, 0.2)
    assert (mod.delta, mod.cls_weight, mod.query_view) == (h.delta, h.cls_weight, 0)
    q, y, cs, logits, prior = _inputs()
    explicit = reb_supcon(q, y, cs, prior, temperature=0.05, alpha=0.5, beta=0.1, eps=1e-5, omega_form="inverse",
                          positives="samples")
    default = reb_supcon(q, y, cs, prior)
    torch.testing.assert_close(default.loss, explicit.loss, rtol=0, atol=0)
    torch.testing.assert_close(anchor_losses(q, y, cs, temperature=0.3).loss,
                               anchor_losses(q, y, cs, temperature=0.3, positives="samples").loss, rtol=0, atol=0)
    g = torch.tensor([0.5, 2.0, 1.0], dtype=torch.float64)
    pr = torch.tensor([0.7, 0.2, 0.1], dtype=torch.float64)
    torch.testing.assert_close(rebalance_factor(g, pr), 1 + 0.5 * g * 0.1 / (pr + 1e-5), rtol=1e-12, atol=0)
    zq, c = F.normalize(torch.randn(3, 4, dtype=torch.float64), dim=1), torch.randn(5, 4, dtype=torch.float64)
    qq = torch.rand(3, 5, dtype=torch.float64)
    assert prototype_losses(zq, zq, c, qq, qq, temperature=0.2)[2] == prototype_losses(zq, zq, c, qq, qq,
                                                                                       temperature=0.2, delta=1.0)[2]


def test_dtypes_follow_the_queries():
    """float32 queries with a float64 prior: omega is applied in the loss's dtype (no silent upcast)."""
    q, y, cs, logits, prior = _inputs()
    res = reb_supcon(q.float(), y, cs._replace(z=cs.z.float()), prior)
    assert res.loss.dtype == torch.float32
    assert rebalance_factor(torch.ones(6), prior).dtype == torch.float32


def test_class_mean_without_mask_and_presence():
    v, lab = torch.tensor([1.0, 3.0, 5.0]), torch.tensor([0, 0, 2])
    means, present = class_mean(v, lab, 4)
    torch.testing.assert_close(means, torch.tensor([2.0, 0.0, 5.0, 0.0]))
    assert present.tolist() == [True, False, True, False]
    means, present = class_mean(v, lab, 4, torch.tensor([1.0, 0.0, 0.0]))
    torch.testing.assert_close(means, torch.tensor([1.0, 0.0, 0.0, 0.0]))
    assert present.tolist() == [True, False, False, False]


def test_grad_ema_through_the_module_keeps_absent_classes():
    """Two steps with grad_ema on: classes of step 2 are EMA-updated, a class absent from step 2 keeps its value."""
    z, zk, logits, queue, queue_y, protos, y, counts = _module_inputs()
    mod = RebSupConLoss(num_classes=C, temperature=0.2, grad_ema=True, grad_ema_momentum=0.6)
    kw = dict(temperature=0.2)

    def step(idx):
        state = ltreg.StepState(counts, C, memory=_Memory(queue, queue_y), prototypes=_Protos(protos))
        mod(ltreg.Outputs(z[idx], logits[idx], z[idx], {"key_z": zk[idx]}),
            ltreg.Batch(torch.zeros(len(idx), 2, 1, 2, 2), y[idx], torch.arange(len(idx))), state)
        cs = state_contrast(z[idx][:, :1], ltreg.Outputs(z[idx], logits[idx], z[idx], {"key_z": zk[idx]}),
                            ltreg.Batch(torch.zeros(len(idx), 2, 1, 2, 2), y[idx], torch.arange(len(idx))), state,
                            include_views=False)
        return reb_supcon(z[idx][:, 0], y[idx], cs, counts / counts.sum(), **kw).grad_c

    g1 = step(torch.tensor([0, 1, 2, 3, 4, 5]))  # classes 0, 1, 2
    torch.testing.assert_close(mod.grad_ema, g1.float())
    g2 = step(torch.tensor([0, 1, 2, 6]))  # classes 0 and 3; class 1 and 2 absent
    want = g1.clone()
    want[0] = 0.6 * g1[0] + 0.4 * g2[0]
    want[3] = g2[3]
    torch.testing.assert_close(mod.grad_ema, want.float())
    assert mod.grad_seen.tolist() == [True, True, True, True, False, False]


def test_errors_name_the_missing_part():
    with pytest.raises(ValueError, match="omega_form"):
        RebSupConLoss(num_classes=3, omega_form="flipped")
    with pytest.raises(ValueError, match="positives must be"):
        RebSupConLoss(num_classes=3, positives="keys")
    assert RebSupConLoss(num_classes=3, positives="centres").positives == "centres"
    with pytest.raises(ValueError, match="omega_form"):
        rebalance_factor(torch.ones(2), torch.ones(2), form="flipped")
    q, y, cs, logits, prior = _inputs()
    for kw in ({}, {"logits": logits}, {"log_prior": prior.log()}):
        with pytest.raises(ValueError, match=r"^positives='centres' needs the classifier logits \[B, C\] and log_prior "
                                             r"\[C\]$"):
            anchor_losses(q, y, cs, temperature=0.3, positives="centres", **kw)
    z, zk, logits, queue, queue_y, protos, y, counts = _module_inputs()
    batch = ltreg.Batch(torch.zeros(len(y), 2, 1, 2, 2), y, torch.arange(len(y)))
    mod = RebSupConLoss(num_classes=C)
    mem, pro = _Memory(queue, queue_y), _Protos(protos)
    cases = [({}, mem, pro, "moco"), ({"key_z": zk}, None, pro, "moco"), ({"key_z": zk}, mem, None, "learnable"),
             ({"key_z": zk}, mem, object(), "learnable")]
    full = {"moco": r"^Reb-SupCon needs the 'moco' memory part \(key projections outputs.extra\['key_z'\] and a "
                    r"queue\)$",
            "learnable": r"^Reb-SupCon needs the 'learnable' prototypes part \(prototypes\(\) and assign\(\)\)$"}
    for extra, m, p, msg in cases:
        with pytest.raises(ValueError, match=full[msg]):
            mod(ltreg.Outputs(z, logits, z, extra), batch, ltreg.StepState(counts, C, memory=m, prototypes=p))


# -- omega's normalisation and bound (declared switches), float64 end to end ------------------------------------
@pytest.mark.parametrize("omega_norm", ["anchors", "omega"])
@pytest.mark.parametrize("omega_max", [None, 1.5])
def test_omega_switches_match_the_naive_total(omega_norm, omega_max):
    """Each value of omega_norm / omega_max against the naive total computed with that reading, and the
    switches change the loss (the clamp is active on these inputs: some unclamped omega exceeds 1.5)."""
    z, zk, logits, queue, queue_y, protos, y, counts = _module_inputs()
    kw = dict(tau=0.2, alpha=0.7, beta=0.13, eps=0.02, lambdas=(0.61, 0.29, 0.17), delta=0.9)

    def module_total(norm, bound, leaves):
        mod = RebSupConLoss(num_classes=C, temperature=0.2, alpha=0.7, beta=0.13, eps=0.02, lambda_swap=0.61,
                            lambda_agg=0.29, lambda_sep=0.17, delta=0.9, omega_norm=norm, omega_max=bound)
        state = ltreg.StepState(counts, C, memory=_Memory(queue, queue_y), prototypes=_Protos(leaves[2]))
        return mod(ltreg.Outputs(leaves[0], leaves[1], torch.zeros(len(y), 2, 3, dtype=torch.float64),
                                 {"key_z": zk}), ltreg.Batch(torch.zeros(len(y), 2, 1, 2, 2), y, torch.arange(len(y))),
                   state)

    leaves = [t.clone().requires_grad_() for t in (z, logits, protos)]
    out = module_total(omega_norm, omega_max, leaves)
    out.total.backward()
    ref_leaves = [t.clone().requires_grad_() for t in (z, logits, protos)]
    rp = _Protos(ref_leaves[2])
    ref, ref_omega = naive_total(ref_leaves[0], zk, ref_leaves[1], queue, queue_y, ref_leaves[2], y, counts,
                                 rp.assign(ref_leaves[0][:, 0]), rp.assign(zk), cls_weight=0.0, form="inverse",
                                 omega_norm=omega_norm, omega_max=omega_max, **kw)
    ref.backward()
    torch.testing.assert_close(out.total, ref, rtol=1e-9, atol=1e-12)
    torch.testing.assert_close(out.parts["omega"], ref_omega[y].mean(), rtol=1e-9, atol=1e-12)
    for a, r in zip(leaves, ref_leaves):
        if r.grad is not None:
            torch.testing.assert_close(a.grad, r.grad, rtol=1e-8, atol=1e-10)
    _, unclamped = naive_total(z, zk, logits, queue, queue_y, protos, y, counts, rp.assign(z[:, 0]), rp.assign(zk),
                               cls_weight=0.0, form="inverse", **kw)
    assert unclamped[y].max() > 1.5  # the bound bites on these inputs
    other = module_total("omega" if omega_norm == "anchors" else "anchors", omega_max,
                         [t.clone() for t in (z, logits, protos)])
    assert not torch.isclose(other.parts["reb"], out.parts["reb"])
    if omega_max is not None:
        assert out.parts["omega"] < module_total(omega_norm, None, [t.clone() for t in (z, logits, protos)]).parts["omega"]


def test_omega_switch_defaults_and_errors():
    """Defaults = the readings the paper's stated effect picks (head anchors keep their SupCon gradient; no
    bound); the module defaults equal the method's; bad values stop before any work."""
    from ltreg_rebsupcon import METHOD

    h, mod = METHOD.hparams, RebSupConLoss(num_classes=3)
    assert (h.omega_norm, h.omega_max) == ("anchors", None) == (mod.omega_norm, mod.omega_max)
    assert METHOD.loss.kwargs["omega_norm"].name == "omega_norm" and METHOD.loss.kwargs["omega_max"].name == "omega_max"
    with pytest.raises(ValueError, match="omega_norm must be"):
        RebSupConLoss(num_classes=3, omega_norm="sum")
    with pytest.raises(ValueError, match="omega_max must be"):
        RebSupConLoss(num_classes=3, omega_max=0.0)
    with pytest.raises(ltreg.ConfigError, match="omega_norm"):
        h.replace(omega_norm="sum")
    with pytest.raises(ltreg.ConfigError, match="omega_max"):
        h.replace(omega_max=-1.0)
    assert h.replace(omega_max=3.0).omega_max == 3.0
    g = torch.tensor([0.5, 2.0, 1.0], dtype=torch.float64)
    pr = torch.tensor([0.7, 0.2, 0.1], dtype=torch.float64)
    torch.testing.assert_close(rebalance_factor(g, pr, omega_max=1.2),
                               torch.tensor([min(1 + 0.5 * gi * 0.1 / (p + 1e-5), 1.2) for gi, p in zip(g.tolist(), pr.tolist())],
                                            dtype=torch.float64), rtol=1e-12, atol=0)


def test_anchor_normalisation_keeps_head_gradient_and_omega_normalisation_shrinks_it():
    """The stated effect behind the default: under 'anchors' a head anchor with omega = 1 gets exactly plain
    SupCon's gradient (mean over anchors); under 'omega' it gets that gradient over the batch's mean omega."""
    q, y, cs, logits, prior = _inputs()
    prior = torch.tensor([0.9, 0.05, 0.02, 0.02, 0.005, 0.005], dtype=torch.float64)
    from ltreg_rebsupcon.loss import normalise_reb

    grads = {}
    for mode in ("anchors", "omega"):
        leaf = q.clone().requires_grad_()
        res = reb_supcon(leaf, y, cs, prior, temperature=TAU, omega_max=None)
        res = res._replace(omega=res.omega.clone())
        normalise_reb(res, y, mode, lambda t: t).backward()
        grads[mode] = leaf.grad
        omega = res.omega
    plain = q.clone().requires_grad_()
    base = anchor_losses(plain, y, cs, temperature=TAU)
    (base.loss.sum() / (base.num_pos > 0).sum()).backward()
    has = base.num_pos > 0
    head = 0  # class 0: the largest class, omega closest to 1
    torch.testing.assert_close(grads["anchors"][head] / omega[0], plain.grad[head], rtol=1e-10, atol=1e-12)
    mean_omega = (omega[y] * has).sum() / has.sum()
    assert mean_omega > 1.5
    torch.testing.assert_close(grads["omega"][head], grads["anchors"][head] / mean_omega, rtol=1e-10, atol=1e-12)


def naive_sinkhorn(scores, eps, iters):
    """SwAV Sinkhorn-Knopp with Python loops over prototypes and samples (float64 values)."""
    b, k = scores.shape
    q = [[math.exp(float(scores[i, j]) / eps) for j in range(k)] for i in range(b)]
    tot = sum(map(sum, q))
    q = [[v / tot for v in row] for row in q]
    for _ in range(iters):
        for j in range(k):
            col = sum(q[i][j] for i in range(b))
            for i in range(b):
                q[i][j] = q[i][j] / col / k
        for i in range(b):
            row = sum(q[i])
            q[i] = [v / row / b for v in q[i]]
    return torch.tensor([[v * b for v in row] for row in q], dtype=torch.float64)


def test_float64_end_to_end_with_the_real_parts_matches_naive():
    """Two optimizer steps in float64 with the real parts (LTModel, ``moco`` memory, ``learnable`` prototypes with
    Sinkhorn): every tensor stays float64 and each step's loss and prototype gradient equal the naive float64
    total (naive Sinkhorn, naive L_reb + L_proto) on that step's outputs and queue."""
    from ltreg.memory import MomentumQueue
    from ltreg.models.ltmodel import LTModel, LTModelConfig
    from ltreg.prototypes import LearnablePrototypes

    torch.manual_seed(0)
    classes = C
    model = LTModel(LTModelConfig(backbone="resnet8", num_classes=classes, in_chans=1, proj_dim=8)).double()
    memory = MomentumQueue(model, momentum=0.9, queue_size=12, key_view=1).double()
    protos = LearnablePrototypes(dim=8, num_prototypes=5).double()
    loss = RebSupConLoss(num_classes=classes, temperature=0.2, alpha=0.7, beta=0.13, eps=0.02)
    opt = torch.optim.SGD(list(model.parameters()) + list(protos.parameters()), lr=0.05)
    counts = torch.tensor([600.0, 200.0, 60.0, 20.0, 10.0, 6.0], dtype=torch.float64)
    g = torch.Generator().manual_seed(5)
    for _ in range(2):
        y = torch.tensor([0, 0, 0, 1, 1, 2, 3, 5])
        images = torch.randn(len(y), 2, 1, 16, 16, generator=g, dtype=torch.float64)
        batch = ltreg.Batch(images, y, torch.arange(len(y)))
        state = ltreg.StepState(counts, classes, model=model, memory=memory, prototypes=protos)
        queue_z, queue_y = memory.queue_z.clone(), memory.queue_labels.clone()
        outputs = model(images[:, :1])
        memory.on_forward(outputs, batch, state)
        out = loss(outputs, batch, state)
        assert out.total.dtype == torch.float64 and outputs.extra["key_z"].dtype == torch.float64
        assert protos.assign(outputs.z[:, 0]).dtype == torch.float64
        opt.zero_grad()
        out.total.backward()
        got_grad = protos.weight.grad.clone()
        # naive, from the same outputs (detached copies)
        zq = outputs.z[:, :1].detach().clone().requires_grad_()
        c = protos.weight.detach().clone().requires_grad_()
        zk = outputs.extra["key_z"].detach()
        qq = naive_sinkhorn(zq[:, 0].detach() @ c.detach().T, 0.05, 3)
        qk = naive_sinkhorn(zk @ c.detach().T, 0.05, 3)
        torch.testing.assert_close(protos.assign(zq[:, 0]), qq, rtol=1e-10, atol=1e-12)
        z2 = torch.cat([zq, zq], 1)  # naive_total reads view 0 only
        ref, _ = naive_total(z2, zk, torch.zeros(len(y), 2, classes, dtype=torch.float64), queue_z, queue_y, c, y,
                             counts, qq, qk, tau=0.2, alpha=0.7, beta=0.13, eps=0.02, lambdas=(0.5, 0.3, 0.2),
                             delta=1.0, cls_weight=0.0, form="inverse")
        ref.backward()
        torch.testing.assert_close(out.total, ref, rtol=1e-9, atol=1e-12)
        torch.testing.assert_close(got_grad, c.grad, rtol=1e-8, atol=1e-10)
        opt.step()
        memory.on_step_end(outputs, batch, state)
        protos.on_step_end(outputs, batch, state)
        assert memory.queue_z.dtype == torch.float64
    assert (memory.queue_labels >= 0).sum() == 12  # the second step's loss saw a queue filled by the first
