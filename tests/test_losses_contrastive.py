"""SupCon, KCL, BCL and PaCo against naive float64 loops written from methods.md (sections 3.1, 3.2, 3.4, 3.5)."""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F

from ltreg.losses import (
    BCLLoss,
    KCLLoss,
    PaCoLoss,
    SupConLoss,
    anchors_and_columns,
    bcl,
    contrast_set,
    contrastive_loss,
    kcl,
    paco,
    sample_positives,
    state_contrast,
    supcon,
)
from ltreg.step import Batch, Outputs, StepState

TOL = {"rtol": 1e-9, "atol": 1e-10}  # float64 kernel vs float64 loop
B, V, D, C = 6, 2, 5, 4
LABELS = torch.tensor([0, 0, 1, 0, 2, 1])  # class 2 is a singleton, class 3 is absent


def feats(b=B, v=V, d=D, seed=0):
    g = torch.Generator().manual_seed(seed)
    return F.normalize(torch.randn(b, v, d, generator=g, dtype=torch.float64), dim=-1).requires_grad_()


def flat(z, y):
    """Views as a list of (vector, label, image), sample-major like the losses."""
    return [(z[b, v], int(y[b]), b) for b in range(z.shape[0]) for v in range(z.shape[1])]


def naive_supcon(z, y, tau):
    """Sec. 3.1: mean over anchors with |P(i)| > 0 of -1/|P(i)| sum_p log(exp(s_ip/tau) / sum_{a != i} exp(s_ia/tau))."""
    items = flat(z, y)
    out = []
    for i, (zi, yi, _) in enumerate(items):
        others = [j for j in range(len(items)) if j != i]
        pos = [j for j in others if items[j][1] == yi]
        if not pos:
            continue
        den = sum(torch.exp(torch.dot(zi, items[a][0]) / tau) for a in others)
        out.append(-sum(torch.log(torch.exp(torch.dot(zi, items[p][0]) / tau) / den) for p in pos) / len(pos))
    return sum(out) / len(out)


def naive_kcl(anchors, cols, positives, tau):
    """Sec. 3.2: -1/|P| sum_{p in P} log(exp(s_ip/tau) / sum_{a in cols(i)} exp(s_ia/tau)); cols(i) = columns but i."""
    out = []
    for zi, col_ids, pos in zip(anchors, cols, positives):
        if not pos:
            continue
        den = sum(torch.exp(torch.dot(zi, cz) / tau) for _, cz in col_ids)
        lookup = dict(col_ids)
        out.append(-sum(torch.log(torch.exp(torch.dot(zi, lookup[p]) / tau) / den) for p in pos) / len(pos))
    return sum(out) / len(out)


def naive_bcl(z, y, protos, tau):
    """Sec. 3.4: contrast = views + prototypes; Den_i = sum_c 1/w_ic sum_{j in B~_c, j != i} exp(s_ij/tau),
    w_ic = |B~_c| (c != y), |B~_y| - 1 (c = y); positives = other views of y + prototype y."""
    items = flat(z, y)
    cols = [(zi, yi) for zi, yi, _ in items] + [(protos[c], c) for c in range(protos.shape[0])]
    size = {c: sum(1 for _, yc in cols if yc == c) for c in range(protos.shape[0])}  # |B~_c|
    out = []
    for i, (zi, yi, _) in enumerate(items):
        others = [j for j in range(len(cols)) if j != i]
        den = sum(
            torch.exp(torch.dot(zi, cols[j][0]) / tau) / (size[cols[j][1]] - (1 if cols[j][1] == yi else 0))
            for j in others
        )
        pos = [j for j in others if cols[j][1] == yi]
        out.append(-sum(torch.log(torch.exp(torch.dot(zi, cols[p][0]) / tau) / den) for p in pos) / len(pos))
    return sum(out) / len(out)


def naive_paco(z, y, logits, log_prior, tau, alpha, beta, gamma, queue=None, queue_y=None):
    """Sec. 3.5: LP_i(x) = x - log(sum_c exp(u_ic + log pi_c) + gamma sum_{a in A(i)} exp(s_ia/tau));
    L_i = -[beta LP_i(u_iy + log pi_y) + alpha sum_p LP_i(s_ip/tau)] / (beta + alpha |P(i)|)."""
    items = flat(z, y)
    cols = [(zi, yi) for zi, yi, _ in items]
    if queue is not None:
        cols += [(q, int(lab)) for q, lab in zip(queue, queue_y) if lab >= 0]
    out = []
    for i, (zi, yi, _) in enumerate(items):
        u = logits[i // z.shape[1], i % z.shape[1]] + log_prior
        others = [j for j in range(len(cols)) if j != i]
        log_den = torch.log(
            sum(torch.exp(u[c]) for c in range(u.shape[0]))
            + gamma * sum(torch.exp(torch.dot(zi, cols[a][0]) / tau) for a in others)
        )
        pos = [j for j in others if cols[j][1] == yi]
        term = beta * (u[yi] - log_den) + alpha * sum(torch.dot(zi, cols[p][0]) / tau - log_den for p in pos)
        out.append(-term / (beta + alpha * len(pos)))
    return sum(out) / len(out)


def check_grads(got, want, leaves):
    """Gradients of both losses w.r.t. every leaf (a leaf one of them does not use must get none from both)."""
    for g, w in zip(
        torch.autograd.grad(got, leaves, allow_unused=True),
        torch.autograd.grad(want, leaves, allow_unused=True),
    ):
        assert (g is None) == (w is None)
        if g is not None:
            torch.testing.assert_close(g, w, **TOL)


def test_supcon_matches_naive():
    z = feats()
    got = supcon(z, LABELS, 0.5).loss
    want = naive_supcon(z, LABELS, 0.5)
    torch.testing.assert_close(got, want, **TOL)
    check_grads(got, want, [z])


def test_supcon_single_view_singletons_and_one_label():
    z = feats(v=1)
    res = supcon(z, LABELS, 0.5, reduction="none")
    assert res.loss[4] == 0 and res.num_pos[4] == 0  # the singleton class has no positive with one view
    torch.testing.assert_close(supcon(z, LABELS, 0.5).loss, naive_supcon(z, LABELS, 0.5), **TOL)
    one = torch.zeros(B, dtype=torch.long)
    torch.testing.assert_close(supcon(feats(), one, 0.3).loss, naive_supcon(feats(), one, 0.3), **TOL)
    assert supcon(z, torch.arange(B), 0.5).loss.item() == 0.0  # no positives anywhere: 0, not NaN


def test_kcl_matches_naive_with_the_same_draws():
    z = feats()
    got = kcl(z, LABELS, k=2, temperature=0.4, generator=torch.Generator().manual_seed(3)).loss
    cs = contrast_set(z, LABELS)
    ya = LABELS.repeat_interleave(V)
    exclude = torch.cat([cs.self_index.unsqueeze(1), cs.own_index], 1)
    drawn = sample_positives(ya, cs.labels, 2, exclude, torch.Generator().manual_seed(3))
    zf = z.reshape(-1, D)
    anchors = list(zf)
    cols = [[(j, zf[j]) for j in range(B * V) if j != i] for i in range(B * V)]
    positives = [cs.own_index[i].tolist() + [p for p in drawn[i].tolist() if p >= 0] for i in range(B * V)]
    want = naive_kcl(anchors, cols, positives, 0.4)
    torch.testing.assert_close(got, want, **TOL)
    check_grads(got, want, [z])


def test_kcl_moco_queries_against_keys_and_queue():
    z, keys = feats(v=1), feats(v=1, seed=1)[:, 0]
    queue = F.normalize(torch.randn(5, D, dtype=torch.float64), dim=-1)
    qy = torch.tensor([0, -1, 1, 0, 3])
    cs = contrast_set(z, LABELS, keys=keys, queue=queue, queue_labels=qy, include_views=False)
    assert cs.self_index is None and cs.own_index[:, 0].tolist() == list(range(B))
    got = kcl(z, LABELS, k=6, temperature=0.3, generator=torch.Generator().manual_seed(0), contrast=cs).loss
    drawn = sample_positives(LABELS, cs.labels, 6, cs.own_index, torch.Generator().manual_seed(0))
    cols_all = [(j, cs.z[j]) for j in range(B + 5) if cs.labels[j] >= 0]
    positives = [[i] + [p for p in drawn[i].tolist() if p >= 0] for i in range(B)]
    assert all(cs.labels[p] == LABELS[i] for i in range(B) for p in positives[i])
    assert positives[4] == [4]  # class 2: nothing to draw beyond its own key
    want = naive_kcl(list(z[:, 0]), [cols_all] * B, positives, 0.3)
    torch.testing.assert_close(got, want, **TOL)
    check_grads(got, want, [z])


def test_sample_positives_draws_uniformly_without_replacement():
    labels = torch.tensor([0, 0, 0, 0, 0, 0, 1, 1, -1, 0])
    reps = 4000  # every anchor repeated: independent draws in one vectorised call
    anchors = torch.tensor([0, 1, 2, 3]).repeat(reps)
    exclude = torch.tensor([[0, 5], [-1, -1], [9, 9], [-1, -1]]).repeat(
        reps, 1
    )  # anchor 2 lists a column twice
    drawn = sample_positives(anchors, labels, 3, exclude, torch.Generator().manual_seed(0))
    ok = drawn >= 0
    col = drawn.clamp_min(0)
    assert (labels[col][ok] == anchors.unsqueeze(1).expand_as(drawn)[ok]).all()  # same label only
    assert not (
        (col.unsqueeze(2) == exclude.unsqueeze(1)) & ok.unsqueeze(2)
    ).any()  # never an excluded column
    dup = (col.unsqueeze(2) == col.unsqueeze(1)) & ok.unsqueeze(2) & ok.unsqueeze(1)
    assert (dup.sum((1, 2)) == ok.sum(1)).all()  # without replacement
    counts = torch.zeros(4, 10).index_put_(
        (anchors.unsqueeze(1).expand_as(drawn)[ok], col[ok]), torch.ones(()), accumulate=True
    )
    assert ok.view(reps, 4, 3).sum((0, 2)).tolist() == [
        3 * reps,
        2 * reps,
        0,
        0,
    ]  # class 1 has only 2 < k; 2, 3 none
    freq = (
        counts[0, [1, 2, 3, 4, 9]] / reps
    )  # class 0 minus the excluded columns 0 and 5: each picked w.p. k/n
    torch.testing.assert_close(freq, torch.full((5,), 3 / 5), atol=0.03, rtol=0)
    same = sample_positives(anchors[:8], labels, 3, exclude[:8], torch.Generator().manual_seed(5))
    assert torch.equal(
        same, sample_positives(anchors[:8], labels, 3, exclude[:8], torch.Generator().manual_seed(5))
    )


def test_bcl_matches_naive():
    z = feats()
    protos = F.normalize(torch.randn(C, D, dtype=torch.float64), dim=-1).requires_grad_()
    got = bcl(z, LABELS, protos, temperature=0.5).loss
    want = naive_bcl(z, LABELS, protos, 0.5)
    torch.testing.assert_close(got, want, **TOL)
    check_grads(got, want, [z, protos])


@pytest.mark.parametrize("gamma", [1.0, 0.5])
def test_paco_matches_naive(gamma):
    z = feats()
    logits = torch.randn(B, V, C, dtype=torch.float64, requires_grad=True)
    prior = torch.tensor([0.5, 0.3, 0.15, 0.05], dtype=torch.float64)
    queue = F.normalize(torch.randn(3, D, dtype=torch.float64), dim=-1)
    qy = torch.tensor([2, -1, 0])
    cs = contrast_set(z, LABELS, queue=queue, queue_labels=qy)
    got = paco(
        z, LABELS, logits, prior.log(), alpha=0.3, beta=1.2, gamma=gamma, temperature=0.5, contrast=cs
    ).loss
    want = naive_paco(z, LABELS, logits, prior.log(), 0.5, 0.3, 1.2, gamma, queue, qy)
    torch.testing.assert_close(got, want, **TOL)
    check_grads(got, want, [z, logits])


def state_for(counts=(10, 6, 3, 1), **kw):
    return StepState(class_counts=torch.tensor(counts, dtype=torch.float64), num_classes=len(counts), **kw)


def test_modules_equal_their_functional_forms():
    z = feats(v=3)
    logits = torch.randn(B, 3, C, dtype=torch.float64, requires_grad=True)
    outputs = Outputs(z=z, logits=logits, features=z)
    batch = Batch(images=torch.zeros(B, 3, 1, 1, 1), targets=LABELS, index=torch.arange(B))
    protos = F.normalize(torch.randn(C, D, dtype=torch.float64), dim=-1)
    state = state_for(prototypes=SimpleNamespace(prototypes=lambda: protos))
    out = SupConLoss(temperature=0.3, views=(1, 2))(outputs, batch, state)
    torch.testing.assert_close(out.total, naive_supcon(z[:, 1:], LABELS, 0.3), **TOL)
    assert set(out.parts) == {"supcon"} and not out.parts["supcon"].requires_grad
    out = BCLLoss(temperature=0.3, alpha=2.0, beta=0.6, views=(1, 2))(outputs, batch, state)
    ce = F.cross_entropy(logits[:, 0] + state.prior.log(), LABELS)
    torch.testing.assert_close(out.total, 2.0 * ce + 0.6 * naive_bcl(z[:, 1:], LABELS, protos, 0.3), **TOL)
    out = PaCoLoss(temperature=0.3, alpha=0.1, views=(0, 1))(outputs, batch, state)
    want = naive_paco(z[:, :2], LABELS, logits[:, :2], state.prior.log(), 0.3, 0.1, 1.0, 1.0)
    torch.testing.assert_close(out.total, want, **TOL)
    state = state_for(step=3)
    a = KCLLoss(temperature=0.3, k=2)(outputs, batch, state).total
    assert torch.equal(a, KCLLoss(temperature=0.3, k=2)(outputs, batch, state).total)  # seeded by the step
    with pytest.raises(ValueError, match="prototype part"):
        BCLLoss()(outputs, batch, state_for())


def test_kcl_module_uses_keys_and_queue_of_the_memory():
    z, keys = feats(v=1), feats(v=1, seed=2)[:, 0]
    outputs = Outputs(z=z, logits=torch.zeros(B, 1, C), features=z, extra={"key_z": keys})
    batch = Batch(images=torch.zeros(B, 1, 1, 1, 1), targets=LABELS, index=torch.arange(B))
    memory = SimpleNamespace(
        queue_z=F.normalize(torch.randn(4, D, dtype=torch.float64), dim=-1),
        queue_labels=torch.tensor([1, -1, -1, 0]),
    )
    state = state_for(memory=memory)
    got = KCLLoss(temperature=0.2, k=0)(outputs, batch, state).total  # k = 0: own key only
    cols = [(j, c) for j, c in enumerate(torch.cat([keys, memory.queue_z])) if j < B or j in (B, B + 3)]
    want = naive_kcl(list(z[:, 0]), [cols] * B, [[i] for i in range(B)], 0.2)
    torch.testing.assert_close(got, want, **TOL)


def test_state_contrast_gathers_the_views_only_when_they_are_columns():
    """Keys + queue only (``include_views=False``): no gather of the views; without keys the views stay columns."""
    z, keys = feats(v=2), feats(v=1, seed=2)[:, 0]
    batch = Batch(images=torch.zeros(B, 2, 1, 1, 1), targets=LABELS, index=torch.arange(B))
    memory = SimpleNamespace(queue_z=feats(b=3, v=1, seed=3)[:, 0], queue_labels=torch.tensor([1, -1, 0]))
    gathered = []
    state = state_for(memory=memory, gather=lambda t: gathered.append(t) or t)
    with_keys = Outputs(z=z, logits=torch.zeros(B, 2, C), features=z, extra={"key_z": keys})
    cs = state_contrast(z, with_keys, batch, state, include_views=False)
    assert gathered == [] and cs.self_index is None
    assert torch.equal(cs.z, torch.cat([keys, memory.queue_z])) and cs.own_index[:, 0].tolist() == [
        b for b in range(B) for _ in range(2)]
    cs = state_contrast(z, Outputs(z=z, logits=torch.zeros(B, 2, C), features=z), batch, state, include_views=False)
    assert len(gathered) == 1 and cs.z.shape[0] == 2 * B + 3  # no keys: the views are columns after all
    a, ya, own = anchors_and_columns(z, LABELS, cs)
    assert own is cs and a.shape == (2 * B, D) and ya.tolist() == LABELS.repeat_interleave(2).tolist()
    torch.testing.assert_close(cs.loss(a, ya, temperature=0.3).loss,
                               contrastive_loss(a, cs.z, ya, cs.labels, temperature=0.3, self_index=cs.self_index).loss,
                               rtol=0, atol=0)


@pytest.mark.parametrize("loss", ["supcon", "supcon_one_view", "bcl", "paco"])
def test_two_process_simulation_is_exact(loss):
    """Two ranks with gather (summed backward) and DDP averaging reproduce the one-process loss and gradient,
    also when the ranks hold different numbers of anchors with positives."""
    z_all = feats(b=2 * B, seed=4)
    rank1 = (
        [3, 3, 1, 2, 0, 0] if loss != "supcon_one_view" else [3, 3, 1, 5, 6, 7]
    )  # 3 anchors alone on rank 1
    y_all = torch.cat([LABELS, torch.tensor(rank1)])
    logits_all = torch.randn(2 * B, V, C, dtype=torch.float64, requires_grad=True)
    protos = F.normalize(torch.randn(C, D, dtype=torch.float64), dim=-1).requires_grad_()
    module = {
        "supcon": SupConLoss(temperature=0.4),
        "supcon_one_view": SupConLoss(temperature=0.4, views=(0,)),
        "bcl": BCLLoss(temperature=0.4),
        "paco": PaCoLoss(temperature=0.4),
    }[loss]

    def run(rank, world, z, y, logits, reduce_mean):
        b = z.shape[0] // world
        sl = slice(rank * b, (rank + 1) * b)

        def gather(x):  # the other shards by shape: the leading views [b, V', D], or labels [b]
            full = z[:, : x.shape[1]] if x.dim() == 3 else y
            return torch.cat([x if r == rank else full[r * b : (r + 1) * b] for r in range(world)])

        state = state_for(
            world_size=world,
            rank=rank,
            gather=gather,
            gather_nograd=gather,
            all_reduce_mean=reduce_mean,
            prototypes=SimpleNamespace(prototypes=lambda: protos),
        )
        outputs = Outputs(z=z[sl], logits=logits[sl], features=z[sl])
        return module(outputs, Batch(torch.zeros(b, V, 1, 1, 1), y[sl], torch.arange(b)), state)

    single = run(0, 1, z_all, y_all, logits_all, lambda t: t).total
    local = []  # first pass records each rank's count of anchors with positives, as the all-reduce would see it
    for r in (0, 1):
        run(r, 2, z_all, y_all, logits_all, lambda t: local.append(t) or t)
    mean = (local[0] + local[1]) / 2
    ranks = [run(r, 2, z_all, y_all, logits_all, lambda t: mean) for r in (0, 1)]
    total = (ranks[0].total + ranks[1].total) / 2  # DDP averages what each rank back-propagates
    torch.testing.assert_close(total, single, **TOL)
    check_grads(total, single, [z_all, logits_all, protos])


def test_no_nan_under_bf16_autocast_and_close_to_float32():
    z32 = feats().detach().float()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        z16 = z32.to(torch.bfloat16).requires_grad_()
        out = supcon(z16, LABELS, 0.07).loss
        out_b = bcl(z16, LABELS, F.normalize(torch.randn(C, D), dim=-1), temperature=0.07).loss
    assert out.dtype == torch.float32 and torch.isfinite(out) and torch.isfinite(out_b)
    (g,) = torch.autograd.grad(out, z16)
    assert torch.isfinite(g.float()).all()
    torch.testing.assert_close(out, supcon(z32, LABELS, 0.07).loss, rtol=3e-2, atol=3e-2)


def test_losses_are_finite_for_large_batches_of_one_class():
    z = F.normalize(torch.randn(64, 2, 8), dim=-1)
    y = torch.zeros(64, dtype=torch.long)
    for fn in (
        lambda: supcon(z, y, 0.05),
        lambda: bcl(z, y, F.normalize(torch.randn(3, 8), dim=-1), temperature=0.05),
        lambda: kcl(z, y, k=6, temperature=0.05),
    ):
        assert math.isfinite(fn().loss.item())
