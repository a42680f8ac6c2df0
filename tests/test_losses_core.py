"""The masked log-softmax core against a naive float64 loop written from the formulas (values and gradients)."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from ltreg.losses.core import NEG, contrastive_loss, group_ids

F64 = {"rtol": 1e-9, "atol": 1e-10}  # float64 kernel vs float64 loop: only rounding differs
F32 = {"rtol": 1e-5, "atol": 1e-5}  # float32 kernel vs float64 loop


def naive(
    a,
    c,
    ya,
    yc,
    *,
    tau,
    self_index=None,
    pos_sets=None,
    pos_weight=1.0,
    col_weight=None,
    class_average=False,
    per_positive=False,
    extra=None,
    extra_w=None,
):
    """Per-anchor loss and mean over anchors with positives; plain loops over anchors and columns."""
    n, m = a.shape[0], c.shape[0]
    losses, used = [], []
    for i in range(n):
        t = tau[i] if isinstance(tau, torch.Tensor) else tau
        cols = [j for j in range(m) if yc[j] >= 0 and (self_index is None or j != int(self_index[i]))]
        if pos_sets is None:
            pos = [j for j in cols if int(yc[j]) == int(ya[i])]
        else:
            pos = [j for j in pos_sets[i] if j in cols]
        logit = {j: torch.dot(a[i], c[j]) / t for j in cols}

        def weight(j, i=i, cols=cols):
            w = 1.0
            if isinstance(col_weight, float):
                w = col_weight
            elif col_weight is not None:
                w = col_weight[j] if col_weight.dim() == 1 else col_weight[i, j]
            if class_average:
                w = w / sum(1 for k in cols if int(yc[k]) == int(yc[j]))
            return w

        ks = range(extra.shape[1]) if extra is not None else []
        ew = [float(extra_w[i, k]) for k in ks]
        total_w = pos_weight * len(pos) + sum(ew)
        if total_w == 0:
            losses.append(torch.zeros((), dtype=torch.float64))
            used.append(False)
            continue
        if not per_positive:
            den = sum(weight(j) * torch.exp(logit[j]) for j in cols) + sum(torch.exp(extra[i, k]) for k in ks)
            li = -pos_weight * sum(logit[p] - torch.log(den) for p in pos)
            li = li - sum(ew[k] * (extra[i, k] - torch.log(den)) for k in ks)
        else:
            neg = sum(weight(j) * torch.exp(logit[j]) for j in cols if j not in pos)
            neg = neg + sum(torch.exp(extra[i, k]) for k in ks if ew[k] == 0)
            li = pos_weight * sum(torch.log(1 + neg / torch.exp(logit[p])) for p in pos)
            li = li + sum(ew[k] * torch.log(1 + neg / torch.exp(extra[i, k])) for k in ks if ew[k] > 0)
        losses.append(li / total_w)
        used.append(True)
    per = torch.stack([torch.as_tensor(x, dtype=torch.float64) for x in losses])
    count = max(1, sum(used))
    return per, per.sum() / count


def make(n=12, q=5, d=5, seed=0, dtype=torch.float64):
    """Anchors [n, d] and extra columns [q, d] (normalised leaves), labels with a singleton class,
    a class only in the extra columns, and one empty slot (-1)."""
    g = torch.Generator().manual_seed(seed)
    a = F.normalize(torch.randn(n, d, generator=g, dtype=dtype), dim=1).requires_grad_()
    extra_cols = F.normalize(torch.randn(q, d, generator=g, dtype=dtype), dim=1).requires_grad_()
    ya = torch.tensor([0, 0, 0, 1, 1, 2, 0, 1, 1, 3, 0, 1])[:n]  # label 2 and 3: one anchor each
    yq = torch.tensor([1, 4, 0, -1, 4])[:q]  # label 4 only here, -1 an empty slot
    return a, extra_cols, ya, yq


CASES = {
    "supcon": {},
    "per_anchor_tau": {"tau": "tensor"},
    "col_weight_m": {"col_weight": "m"},
    "col_weight_nm": {"col_weight": "nm"},
    "col_weight_float": {"col_weight": 0.7},
    "class_average": {"class_average": True},
    "class_average_weighted": {"class_average": True, "col_weight": "m"},
    "extra_centres": {"extra": True, "pos_weight": 0.3},
    "pos_index": {"pos_index": True},
    "pos_mask": {"pos_mask": True},
    "per_positive": {"per_positive": True},
    "per_positive_weighted_extra": {
        "per_positive": True,
        "col_weight": "m",
        "extra": True,
        "pos_weight": 0.5,
    },
    "per_positive_index_tau": {"per_positive": True, "pos_index": True, "tau": "tensor"},
    "per_positive_mask_class_average": {"per_positive": True, "pos_mask": True, "class_average": True},
}


def build(case, a, q, ya, yq, in_contrast=True):
    """Keyword arguments for the kernel and for the loop, from a case description."""
    n = a.shape[0]
    c = torch.cat([a, q]) if in_contrast else q
    yc = torch.cat([ya, yq]) if in_contrast else yq
    m = c.shape[0]
    g = torch.Generator().manual_seed(1)
    kw = {"self_index": torch.arange(n) if in_contrast else None}
    tau = torch.rand(n, generator=g, dtype=a.dtype) * 0.5 + 0.3 if case.get("tau") == "tensor" else 0.5
    cw = case.get("col_weight")
    if cw == "m":
        cw = torch.rand(m, generator=g, dtype=a.dtype) + 0.2
        cw[2] = 0.0  # a zero weight removes the column from the denominator
    elif cw == "nm":
        cw = torch.rand(n, m, generator=g, dtype=a.dtype) + 0.2
    kw.update(
        col_weight=cw, class_average=case.get("class_average", False), pos_weight=case.get("pos_weight", 1.0)
    )
    pos_sets = None
    if case.get("pos_index"):
        idx = torch.randint(0, m, (n, 3), generator=g)
        idx[:, 0] = kw["self_index"] if in_contrast else 0  # the self column is dropped from positives
        idx[1, 1] = -1  # padding
        idx[2, 1] = m - 2 if in_contrast else 3  # an empty slot, dropped
        idx[3] = -1  # an anchor without positives
        for row in idx:  # no duplicates
            seen = set()
            for k, v in enumerate(row.tolist()):
                row[k] = -1 if v in seen else v
                seen.add(v)
        kw["pos_index"] = idx
        pos_sets = [[v for v in row.tolist() if v >= 0] for row in idx]
    if case.get("pos_mask"):
        mask = torch.rand(n, m, generator=g) < 0.4
        mask[4] = False
        kw["pos_mask"] = mask
        pos_sets = [torch.nonzero(row).flatten().tolist() for row in mask]
    extra = extra_w = None
    if case.get("extra"):
        extra = (torch.randn(n, 4, generator=g, dtype=a.dtype) * 2).requires_grad_()
        extra_w = torch.zeros(n, 4, dtype=a.dtype)
        extra_w[torch.arange(n), ya.clamp_max(3)] = 1.5
        extra_w[5] = 0.0  # no centre positive for anchor 5
    return c, yc, tau, kw, pos_sets, extra, extra_w


@pytest.mark.parametrize("in_contrast", [True, False], ids=["self_in_contrast", "anchors_outside"])
@pytest.mark.parametrize("name", list(CASES))
def test_core_matches_naive_float64(name, in_contrast):
    case = CASES[name]
    a, q, ya, yq = make()
    c, yc, tau, kw, pos_sets, extra, extra_w = build(case, a, q, ya, yq, in_contrast)
    per_positive = case.get("per_positive", False)
    res = contrastive_loss(
        a,
        c,
        ya,
        yc,
        temperature=tau,
        per_positive_denominator=per_positive,
        extra_logits=extra,
        extra_pos=extra_w,
        **kw,
    )
    per, ref = naive(
        a,
        c,
        ya,
        yc,
        tau=tau,
        self_index=kw["self_index"],
        pos_sets=pos_sets,
        pos_weight=kw["pos_weight"],
        col_weight=kw["col_weight"],
        class_average=kw["class_average"],
        per_positive=per_positive,
        extra=extra,
        extra_w=extra_w,
    )
    torch.testing.assert_close(res.loss, ref, **F64)
    none = contrastive_loss(
        a,
        c,
        ya,
        yc,
        temperature=tau,
        per_positive_denominator=per_positive,
        extra_logits=extra,
        extra_pos=extra_w,
        reduction="none",
        **kw,
    )
    torch.testing.assert_close(none.loss, per, **F64)
    leaves = [t for t in (a, q, extra) if t is not None]
    got = torch.autograd.grad(res.loss, leaves, allow_unused=True)
    want = torch.autograd.grad(ref, leaves, allow_unused=True)
    for g_got, g_want in zip(got, want):
        torch.testing.assert_close(g_got, torch.zeros_like(g_got) if g_want is None else g_want, **F64)


def test_float32_against_float64_loop():
    a, q, ya, yq = make()
    a32, q32 = a.detach().float().requires_grad_(), q.detach().float().requires_grad_()
    c = torch.cat([a32, q32])
    res = contrastive_loss(a32, c, ya, torch.cat([ya, yq]), temperature=0.1, self_index=torch.arange(12))
    _, ref = naive(a, torch.cat([a, q]), ya, torch.cat([ya, yq]), tau=0.1, self_index=torch.arange(12))
    assert res.loss.dtype == torch.float32
    torch.testing.assert_close(res.loss.double(), ref, **F32)
    got = torch.autograd.grad(res.loss, [a32, q32])
    want = torch.autograd.grad(ref, [a, q])
    for g_got, g_want in zip(got, want):
        torch.testing.assert_close(g_got.double(), g_want, **F32)


@pytest.mark.parametrize("name", ["supcon", "pos_index", "extra_centres"])
def test_detached_contrast_still_gives_anchor_gradients(name):
    """MoCo keys / queues carry no gradient: only the anchors' (and centres') gradients are computed."""
    a, q, ya, yq = make()
    c, yc, tau, kw, _, extra, extra_w = build(CASES[name], a, q.detach(), ya, yq, in_contrast=False)
    res = contrastive_loss(a, c, ya, yc, temperature=tau, extra_logits=extra, extra_pos=extra_w, **kw)
    _, ref = naive(
        a,
        c,
        ya,
        yc,
        tau=tau,
        pos_sets=[[v for v in row.tolist() if v >= 0] for row in kw["pos_index"]]
        if "pos_index" in kw
        else None,
        pos_weight=kw["pos_weight"],
        extra=extra,
        extra_w=extra_w,
    )
    leaves = [t for t in (a, extra) if t is not None]
    for g, w in zip(torch.autograd.grad(res.loss, leaves), torch.autograd.grad(ref, leaves)):
        torch.testing.assert_close(g, w, **F64)


def test_temperature_gradient():
    a, q, ya, yq = make()
    tau = (torch.rand(12, dtype=torch.float64) * 0.5 + 0.3).requires_grad_()
    c = torch.cat([a, q])
    yc = torch.cat([ya, yq])
    res = contrastive_loss(a, c, ya, yc, temperature=tau, self_index=torch.arange(12))
    _, ref = naive(a, c, ya, yc, tau=tau, self_index=torch.arange(12))
    torch.testing.assert_close(torch.autograd.grad(res.loss, tau)[0], torch.autograd.grad(ref, tau)[0], **F64)


def test_anchors_without_positives_contribute_zero_and_leave_the_mean():
    a, q, ya, yq = make()
    c, yc = torch.cat([a, q]), torch.cat([ya, yq])
    res = contrastive_loss(a, c, ya, yc, temperature=0.5, self_index=torch.arange(12), reduction="none")
    lonely = res.num_pos == 0
    assert lonely.tolist() == [False] * 5 + [True] + [False] * 3 + [True] + [False] * 2  # labels 2 and 3
    assert (res.loss[lonely] == 0).all() and (res.loss[~lonely] > 0).all()
    mean = contrastive_loss(a, c, ya, yc, temperature=0.5, self_index=torch.arange(12)).loss
    torch.testing.assert_close(mean, res.loss[~lonely].mean(), **F64)
    g = torch.autograd.grad(res.loss[lonely].sum(), a, allow_unused=True)[0]
    assert g is None or (g == 0).all()


def test_no_positive_anywhere_is_zero_not_nan():
    a = F.normalize(torch.randn(4, 3), dim=1).requires_grad_()
    y = torch.arange(4)
    for per_positive in (False, True):
        res = contrastive_loss(a, a, y, y, self_index=torch.arange(4), per_positive_denominator=per_positive)
        assert res.loss.item() == 0.0
        (g,) = torch.autograd.grad(res.loss, a)
        assert torch.isfinite(g).all() and (g == 0).all()


def test_every_column_masked_is_finite():
    a = F.normalize(torch.randn(3, 4), dim=1).requires_grad_()
    q = F.normalize(torch.randn(5, 4), dim=1)
    extra = torch.randn(3, 2, requires_grad=True)
    res = contrastive_loss(
        a,
        q,
        torch.zeros(3, dtype=torch.long),
        torch.full((5,), -1),
        extra_logits=extra,
        extra_pos=torch.tensor([[1.0, 0.0]] * 3),
        reduction="none",
    )
    assert torch.isfinite(res.loss).all() and (res.num_pos == 1).all()
    # only the extra columns are left: the loss is their cross-entropy
    torch.testing.assert_close(res.loss, -torch.log_softmax(extra, 1)[:, 0])
    (g,) = torch.autograd.grad(res.loss.sum(), a)
    assert (g == 0).all()


@pytest.mark.parametrize("per_positive", [False, True])
def test_a_batch_of_one_label(per_positive):
    a, _, _, _ = make()
    y = torch.zeros(12, dtype=torch.long)
    res = contrastive_loss(
        a, a, y, y, temperature=0.5, self_index=torch.arange(12), per_positive_denominator=per_positive
    )
    _, ref = naive(a, a, y, y, tau=0.5, self_index=torch.arange(12), per_positive=per_positive)
    torch.testing.assert_close(res.loss, ref, **F64)
    if per_positive:  # no negatives: every positive is certain, loss 0
        assert res.loss.item() == 0.0


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_precision_under_autocast_is_float32_inside(dtype):
    a, q, ya, yq = make(dtype=torch.float32)
    layer = torch.nn.Linear(5, 5, dtype=torch.float32)
    with torch.autocast("cpu", dtype=dtype):
        za = F.normalize(layer(a), dim=1).to(dtype)
        zc = torch.cat([za, F.normalize(layer(q), dim=1).to(dtype)])
        res = contrastive_loss(za, zc, ya, torch.cat([ya, yq]), temperature=0.05, self_index=torch.arange(12))
    assert res.loss.dtype == torch.float32 and torch.isfinite(res.loss)
    grads = torch.autograd.grad(res.loss, [layer.weight, a])
    assert all(torch.isfinite(g).all() for g in grads)
    # identical to float32 on the rounded inputs, and within 2e-2 of float32 on the unrounded ones
    exact = contrastive_loss(
        za.float(), zc.float(), ya, torch.cat([ya, yq]), temperature=0.05, self_index=torch.arange(12)
    )
    torch.testing.assert_close(res.loss, exact.loss, rtol=1e-6, atol=1e-6)
    za32 = F.normalize(layer(a), dim=1)
    ref = contrastive_loss(
        za32,
        torch.cat([za32, F.normalize(layer(q), dim=1)]),
        ya,
        torch.cat([ya, yq]),
        temperature=0.05,
        self_index=torch.arange(12),
    )
    torch.testing.assert_close(res.loss, ref.loss, rtol=2e-2, atol=2e-2)


def test_large_logits_do_not_overflow():
    a, q, ya, yq = make(dtype=torch.float32)
    res = contrastive_loss(
        a * 30,
        torch.cat([a, q]) * 30,
        ya,
        torch.cat([ya, yq]),
        temperature=0.01,
        self_index=torch.arange(12),
        extra_logits=torch.full((12, 2), 5e4),
        extra_pos=torch.zeros(12, 2),
    )
    assert torch.isfinite(res.loss)
    torch.autograd.grad(res.loss, a)


def test_second_backward_is_refused():
    a, q, ya, yq = make()
    res = contrastive_loss(a, torch.cat([a, q]), ya, torch.cat([ya, yq]), self_index=torch.arange(12))
    res.loss.backward(retain_graph=True)
    with pytest.raises(RuntimeError, match="inplace|in-place"):
        res.loss.backward()


def test_bad_arguments_are_named():
    a = torch.randn(3, 4)
    y = torch.zeros(3, dtype=torch.long)
    with pytest.raises(ValueError, match="share D"):
        contrastive_loss(a, torch.randn(3, 5), y, y)
    with pytest.raises(ValueError, match="labels"):
        contrastive_loss(a, a, y, y[:2])
    with pytest.raises(ValueError, match="at most one"):
        contrastive_loss(
            a,
            a,
            y,
            y,
            pos_index=torch.zeros(3, 1, dtype=torch.long),
            pos_mask=torch.ones(3, 3, dtype=torch.bool),
        )
    with pytest.raises(ValueError, match="temperature"):
        contrastive_loss(a, a, y, y, temperature=0.0)
    with pytest.raises(ValueError, match="extra_pos"):
        contrastive_loss(a, a, y, y, extra_logits=torch.zeros(3, 2))


@settings(max_examples=40, deadline=None)
@given(
    yc=st.lists(st.integers(-1, 4), min_size=1, max_size=9),
    ya=st.lists(st.integers(-1, 5), min_size=1, max_size=6),
)
def test_group_ids_match_label_equality(yc, ya):
    yc_t, ya_t = torch.tensor(yc), torch.tensor(ya)
    gc, ga = group_ids(yc_t, ya_t)
    assert ((gc.unsqueeze(0) == gc.unsqueeze(1)) == (yc_t.unsqueeze(0) == yc_t.unsqueeze(1))).all()
    same = ga.unsqueeze(1) == gc.unsqueeze(0)
    assert (same == ((ya_t.unsqueeze(1) == yc_t.unsqueeze(0)) & (ya_t >= 0).unsqueeze(1))).all()


@settings(max_examples=25, deadline=None)
@given(
    labels=st.lists(st.integers(0, 3), min_size=2, max_size=8),
    queue=st.lists(st.integers(-1, 3), min_size=0, max_size=4),
    seed=st.integers(0, 2**16),
)
def test_random_label_layouts_match_naive(labels, queue, seed):
    g = torch.Generator().manual_seed(seed)
    n, q = len(labels), len(queue)
    a = F.normalize(torch.randn(n, 3, generator=g, dtype=torch.float64), dim=1).requires_grad_()
    qz = F.normalize(torch.randn(q, 3, generator=g, dtype=torch.float64), dim=1)
    ya, yc = torch.tensor(labels), torch.tensor(labels + queue)
    c = torch.cat([a, qz])
    res = contrastive_loss(a, c, ya, yc, temperature=0.3, self_index=torch.arange(n), class_average=True)
    _, ref = naive(a, c, ya, yc, tau=0.3, self_index=torch.arange(n), class_average=True)
    torch.testing.assert_close(res.loss, ref, **F64)
    if ref.requires_grad:
        torch.testing.assert_close(torch.autograd.grad(res.loss, a)[0], torch.autograd.grad(ref, a)[0], **F64)


def test_neg_is_finite_and_kills_columns():
    assert math.isfinite(NEG) and math.exp(NEG) == 0.0
