"""ACL plugin: the loss against a naive float64 loop written from the reconstructed equations of ltreg_acl.loss, edge cases, switches,
one-vs-two-process equality, the gradient claim, and training through the registry."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from ltreg_acl import METHOD, ACLLoss, acl, negative_weights
from ltreg_acl.gradients import positive_pair_gradients

import ltreg
from ltreg.errors import ConfigError
from ltreg.losses.contrastive import contrast_set, supcon
from ltreg.step import Batch, Outputs, StepState


def naive_acl(z, labels, logits, counts, *, alpha, beta, tau, neg_weight, positives):
    """The reconstruction of ltreg_acl.loss's docstring as written, with explicit loops over anchors and columns (float64)."""
    b, v, _ = z.shape
    zs = [z[i // v, i % v] for i in range(b * v)]
    ys = [int(labels[i // v]) for i in range(b * v)]
    img = [i // v for i in range(b * v)]
    num_classes = counts.shape[0]
    if neg_weight == "dataset":
        inv = [1.0 / float(counts[c]) for c in range(num_classes)]
        omega = [x / (sum(inv) / num_classes) for x in inv]
    elif neg_weight == "batch":
        omega = [1.0 / max(1, ys.count(c)) for c in range(num_classes)]
    else:
        omega = [1.0] * num_classes
    total = 0.0
    for i in range(b * v):
        y = ys[i]
        x = [logits[i // v, i % v, c] + math.log(float(counts[c]) / float(counts.sum())) for c in range(num_classes)]
        pos = [j for j in range(b * v) if j != i and ys[j] == y]
        s = {j: torch.dot(zs[i], zs[j]) / tau for j in range(b * v) if j != i}
        if positives == "per-positive":
            neg = sum(omega[ys[j]] * torch.exp(s[j]) for j in s if ys[j] != y)
            neg = neg + sum(torch.exp(x[c]) for c in range(num_classes) if c != y)
            t0 = -torch.log(torch.exp(x[y]) / (torch.exp(x[y]) + neg))
            tp = [-torch.log(torch.exp(s[p]) / (torch.exp(s[p]) + neg)) for p in pos]
        else:  # shared denominator without the anchor's other views; same-class columns weigh 1, negatives omega
            den = sum((1.0 if ys[j] == y else omega[ys[j]]) * torch.exp(s[j]) for j in s if img[j] != img[i])
            den = den + sum(torch.exp(x[c]) for c in range(num_classes))
            t0 = -torch.log(torch.exp(x[y]) / den)
            tp = [-torch.log(torch.exp(s[p]) / den) for p in pos]
        total = total + (beta * t0 + alpha * sum(tp)) / (beta + alpha * len(pos))
    return total / (b * v)


def _inputs(b=6, v=3, d=5, c=5, seed=0, labels=None):
    g = torch.Generator().manual_seed(seed)
    z = F.normalize(torch.randn(b, v, d, generator=g, dtype=torch.float64), dim=-1).requires_grad_(True)
    logits = torch.randn(b, v, c, generator=g, dtype=torch.float64).requires_grad_(True)
    labels = torch.tensor([0, 0, 0, 1, 1, 3]) if labels is None else labels  # class 2 and 4 absent, 3 singleton
    counts = torch.tensor([50.0, 20.0, 9.0, 4.0, 2.0], dtype=torch.float64)[:c]
    return z, labels, logits, counts


@pytest.mark.parametrize("positives", ["per-positive", "same-image"])
@pytest.mark.parametrize("neg_weight", ["dataset", "batch", "none"])
def test_matches_naive_float64_values_and_gradients(neg_weight, positives):
    z, y, u, counts = _inputs()
    kw = dict(alpha=0.3, beta=0.7)
    omega = negative_weights(neg_weight, counts, y.repeat_interleave(z.shape[1]))
    got = acl(z, y, u, (counts / counts.sum()).log(), temperature=0.5, omega=omega, positives=positives, **kw).loss
    ref = naive_acl(z, y, u, counts, tau=0.5, neg_weight=neg_weight, positives=positives, **kw)
    torch.testing.assert_close(got, ref, rtol=1e-10, atol=1e-12)
    g1 = torch.autograd.grad(got, (z, u))
    g2 = torch.autograd.grad(ref, (z, u))
    for a, b in zip(g1, g2):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-12)


def test_switches_change_the_loss():
    z, y, u, counts = _inputs()
    lp = (counts / counts.sum()).log()
    vals = {(w, p): acl(z, y, u, lp, omega=negative_weights(w, counts, y.repeat_interleave(3)), positives=p).loss.item()
            for w in ("dataset", "batch", "none") for p in ("per-positive", "same-image")}
    assert len({round(x, 9) for x in vals.values()}) == len(vals)


def test_no_positive_in_the_batch_is_the_centre_term_only():
    """V = 1 and distinct labels: no sample positive; each anchor contributes T_i0 (finite, with gradients)."""
    z, y, u, counts = _inputs(b=4, v=1, labels=torch.tensor([0, 1, 2, 4]))
    lp = (counts / counts.sum()).log()
    res = acl(z, y, u, lp, temperature=0.2, omega=None, reduction="none")
    assert torch.equal(res.num_pos, torch.ones(4))  # only the own centre
    x = u[:, 0] + lp
    s = (z[:, 0] @ z[:, 0].T) / 0.2
    neg = (s.exp() * (1 - torch.eye(4, dtype=s.dtype))).sum(1) + x.exp().sum(1) - x.gather(1, y[:, None]).squeeze(1).exp()
    xy = x.gather(1, y[:, None]).squeeze(1)
    torch.testing.assert_close(res.loss, -(xy - torch.logaddexp(xy, neg.log())))
    grads = torch.autograd.grad(res.loss.mean(), (z, u))
    assert all(torch.isfinite(g).all() for g in grads)


def test_singleton_and_absent_classes():
    """A singleton class still has its other views as positives; absent classes' centres are negatives."""
    z, y, u, counts = _inputs()
    lp = (counts / counts.sum()).log()
    res = acl(z, y, u, lp, omega=negative_weights("batch", counts, y.repeat_interleave(3)), reduction="none")
    assert torch.equal(res.num_pos.view(6, 3)[5], torch.full((3,), 3.0))  # 2 other views + own centre
    assert negative_weights("batch", counts, y.repeat_interleave(3))[3] == pytest.approx(1 / 3)
    bumped = u.detach().clone()
    bumped[..., 2] += 3.0  # class 2 is absent from the batch
    before = acl(z, y, u, lp).loss
    after = acl(z, y, bumped, lp).loss
    assert after > before and torch.isfinite(after)


def _state(counts, rank=0, world=1, full_z=None, full_y=None, b=None):
    if world == 1:
        return StepState(class_counts=counts, num_classes=counts.shape[0])

    def gather(x):
        return torch.cat([x if r == rank else full_z[r * b:(r + 1) * b] for r in range(world)])

    # all_reduce_mean stays the identity: every anchor has its centre as a positive, so counts match over ranks
    return StepState(class_counts=counts, num_classes=counts.shape[0], world_size=world, rank=rank,
                     gather=gather, gather_nograd=lambda x: full_y)


@pytest.mark.parametrize("positives", ["per-positive", "same-image"])
@pytest.mark.parametrize("neg_weight", ["dataset", "batch"])
def test_two_processes_equal_one(neg_weight, positives):
    """Global batch 2B on one process == two ranks of B (class-asymmetric halves): value and summed gradient."""
    labels = torch.tensor([0, 0, 0, 1, 1, 1, 2, 3, 4, 4, 4, 3])
    z, y, u, counts = _inputs(b=12, v=2, labels=labels, seed=3)
    loss = ACLLoss(temperature=0.3, alpha=0.2, neg_weight=neg_weight, positives=positives)
    one = loss(Outputs(z=z, logits=u, features=z), Batch(z, y, torch.arange(12)), _state(counts)).total
    g_one = torch.autograd.grad(one, (z, u))
    vals, grads = [], [torch.zeros_like(z), torch.zeros_like(u)]
    for r in range(2):
        sl = slice(r * 6, (r + 1) * 6)
        st = _state(counts, r, 2, z, y, 6)
        out = loss(Outputs(z=z[sl], logits=u[sl], features=z[sl]), Batch(z[sl], y[sl], torch.arange(6)), st).total
        vals.append(out)
        for acc, g in zip(grads, torch.autograd.grad(out, (z, u))):
            acc += g / 2  # gather sums over ranks, DDP averages
    torch.testing.assert_close(sum(vals) / 2, one)
    for a, b in zip(grads, g_one):
        torch.testing.assert_close(a, b)


def _views(b, v, d, c, seed, noise=0.6):
    """Long-tailed labels; the views of one image are noisy copies of one random direction."""
    g = torch.Generator().manual_seed(seed)
    probs = torch.tensor([0.5 ** k for k in range(c)])
    y = torch.multinomial(probs, b, replacement=True, generator=g)
    base = torch.randn(b, 1, d, generator=g, dtype=torch.float64)
    z = F.normalize(base + noise * torch.randn(b, v, d, generator=g, dtype=torch.float64), dim=-1)
    u = torch.randn(b, v, c, generator=g, dtype=torch.float64)
    counts = torch.bincount(y, minlength=c).double().clamp_min(1)
    return z, y, u, (counts / counts.sum()).log(), counts


def test_acl_attracts_every_positive_supcon_repels_some_at_v8():
    z, y, u, lp, counts = _views(b=24, v=8, d=16, c=5, seed=0)
    g_sup = positive_pair_gradients(z, y, u, lp, loss="supcon", temperature=0.1)
    g_acl = positive_pair_gradients(z, y, u, lp, loss="acl", temperature=0.1, alpha=0.05, beta=1.0,
                                    omega=negative_weights("dataset", counts, y))
    assert (g_acl <= 0).all()
    assert (g_sup > 0).any()
    # the same-image reading still repels other-image positives that share its denominator
    g_same = positive_pair_gradients(z, y, u, lp, loss="acl", temperature=0.1, positives="same-image")
    assert (g_same > 0).any()


def test_similarity_trick_matches_feature_loss():
    """Contrasting S's rows against the identity reproduces the loss on the features themselves."""
    z, y, u, lp, _ = _views(b=8, v=2, d=6, c=3, seed=1)
    cs = contrast_set(z, y)
    flat = z.reshape(-1, 6)
    cs_eye = cs._replace(z=torch.eye(16, dtype=z.dtype))
    sim = (flat @ flat.T).view(8, 2, 16)
    assert torch.allclose(supcon(sim, y, 0.1, contrast=cs_eye).loss, supcon(z, y, 0.1).loss)
    assert torch.allclose(acl(sim, y, u, lp, contrast=cs_eye).loss, acl(z, y, u, lp).loss)


def test_hparams_and_views():
    hp4 = METHOD.hparams.replace(num_views="4")
    assert METHOD.views_for(hp4) == ("rand", "sim", "sim", "sim")
    assert METHOD.views_for(METHOD.hparams) == ("rand", "sim")
    for bad in ({"num_views": 9}, {"num_views": 1}, {"neg_weight": "foo"}, {"positives": "all"}, {"beta": 0}):
        with pytest.raises(ConfigError):
            METHOD.hparams.replace(**bad)
    assert METHOD.loss.name == "acl" and METHOD.rebalance is None and METHOD.prototypes is None
    assert {"cifar100-lt-if100", "cifar10-lt-if10", "imagenet-lt"} <= set(METHOD.recipes)


def test_trains_through_the_registry_and_reloads(tmp_path):
    from ltreg.data.build import build_data
    from ltreg.data.views import ViewDataset, collate

    result = ltreg.train("acl", epochs=1, max_steps_per_epoch=3, batch_size=32, eval_batch_size=512,
                         output_dir=str(tmp_path / "run"), hparams={"num_views": 3, "neg_weight": "batch"})
    assert result.history and all(math.isfinite(r["loss"]) and math.isfinite(r["acl"]) for r in result.history)
    assert (result.run_dir / "model.safetensors").exists() and (result.run_dir / "config.json").exists()
    loaded = ltreg.LTModel.from_pretrained(result.run_dir).eval()
    test = build_data(result.config.data_args()).test
    images = collate([ViewDataset(test, ("none",))[i] for i in range(16)]).images[:, 0]
    result.model.eval()
    with torch.no_grad():
        torch.testing.assert_close(loaded.predict(images), result.model.predict(images), rtol=0, atol=0)


def test_quick_recipe_runs(tmp_path):
    """The CIFAR-100-LT recipe at --quick scale (resnet8 and 1 step per epoch keep it inside the test budget)."""
    result = ltreg.train("acl", recipe="cifar100-lt-if100", quick=True, dataset="digits-lt", backbone="resnet8",
                         max_steps_per_epoch=1, output_dir=str(tmp_path / "quick"))
    assert all(math.isfinite(r["loss"]) for r in result.history)
    assert result.config.hparams["temperature"] == 0.05


def test_cifar_recipe_follows_gpaco_views_and_projection():
    """GPaCo's CIFAR setting: crop+flip+AutoAugment+Cutout ('cifar') + SimAugment, projection 32; ImageNet-LT keeps
    RandAugment + SimAugment and 128. The missing MoCo queue is said plainly in the recipe."""
    for name in ("cifar100-lt-if100", "cifar10-lt-if10"):
        r = METHOD.recipe(name)
        hp_ = METHOD.hparams.replace(**r.hparams)
        assert METHOD.views_for(hp_) == ("cifar", "sim")
        assert METHOD.model_for(hp_).proj_dim == 32
        assert "NO MoCo queue" in r.description
    hp_ = METHOD.hparams.replace(**METHOD.recipe("imagenet-lt").hparams)
    assert METHOD.views_for(hp_) == ("rand", "sim") and METHOD.model_for(hp_).proj_dim == 128
    assert METHOD.model.proj_dim == 128  # spec.model stays concrete (the defaults) for code that reads it


# -- the whole loss module (what the trainer calls) against the naive total, and the paper's stated behaviour --------
@pytest.mark.parametrize("positives", ["per-positive", "same-image"])
@pytest.mark.parametrize("neg_weight", ["dataset", "batch", "none"])
def test_whole_loss_module_matches_naive_total(neg_weight, positives):
    """ACLLoss.forward(outputs, batch, state): negative weights from the state's class counts, centre logits from the
    classifier + log prior, alpha != beta so that swapping the sample / centre weights shows; values and gradients."""
    z, y, u, counts = _inputs()
    mod = ACLLoss(temperature=0.4, alpha=0.23, beta=0.81, neg_weight=neg_weight, positives=positives)
    out = mod(Outputs(z, u, torch.zeros(6, 3, 1, dtype=torch.float64)), Batch(torch.zeros(6, 3, 1, 2, 2), y,
                                                                                 torch.arange(6)),
              StepState(counts, 5))
    ref = naive_acl(z, y, u, counts, alpha=0.23, beta=0.81, tau=0.4, neg_weight=neg_weight, positives=positives)
    torch.testing.assert_close(out.total, ref, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(out.parts["acl"], ref.detach(), rtol=1e-10, atol=1e-12)
    for a, b in zip(torch.autograd.grad(out.total, (z, u)), torch.autograd.grad(ref, (z, u))):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-12)


def test_tail_negatives_repel_harder_than_head_negatives():
    """Paper: negative pairs are re-weighted inversely to class frequency, balancing repulsion. A head-class and a
    tail-class negative at the same position: the tail one gets the larger gradient (dataset weights), equal ones
    without re-weighting."""
    from ltreg.losses.contrastive import ContrastSet

    g = torch.Generator().manual_seed(3)
    counts = torch.tensor([500.0, 50.0, 5.0], dtype=torch.float64)
    anchor = F.normalize(torch.randn(1, 1, 4, generator=g, dtype=torch.float64), dim=-1)
    neg = F.normalize(torch.randn(4, generator=g, dtype=torch.float64), dim=0)
    pos = F.normalize(torch.randn(4, generator=g, dtype=torch.float64), dim=0)
    cols = torch.stack([pos, neg, neg]).requires_grad_()
    cs = ContrastSet(cols, torch.tensor([1, 0, 2]), None, torch.empty(1, 0, dtype=torch.long))
    u = torch.zeros(1, 1, 3, dtype=torch.float64)
    lp = (counts / counts.sum()).log()
    for mode, ratio in (("dataset", 100.0), ("none", 1.0)):
        omega = negative_weights(mode, counts, cs.labels)
        (grad,) = torch.autograd.grad(acl(anchor, torch.tensor([1]), u, lp, omega=omega, contrast=cs).loss, cols)
        head, tail = grad[1].norm(), grad[2].norm()
        assert tail / head == pytest.approx(ratio, rel=1e-9)
