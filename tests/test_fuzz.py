"""Property tests: the contrastive core and the samplers never give NaN or an index out of range."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ltreg.losses.core import contrastive_loss
from ltreg.samplers import ClassAwareSampler, KGlobalSampler, PairedSampler, RepeatPerClassSampler

SETTINGS = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@st.composite
def problems(draw):  # noqa: ANN001, ANN201
    n = draw(st.integers(1, 12))
    extra = draw(st.integers(0, 6))
    layout = draw(st.sampled_from(["single", "distinct", "random"]))
    classes = draw(st.integers(1, 5))
    total = n + extra
    if layout == "single":
        labels = [0] * total
    elif layout == "distinct":
        labels = list(range(total))
        classes = total
    else:
        labels = draw(st.lists(st.integers(0, classes - 1), min_size=total, max_size=total))
    return {
        "n": n, "labels": torch.tensor(labels), "d": draw(st.integers(1, 8)),
        "temperature": draw(st.floats(0.01, 10.0)),
        "per_anchor_t": draw(st.booleans()),
        "per_positive": draw(st.booleans()),
        "class_average": draw(st.booleans()),
        "col_weight": draw(st.booleans()),
        "bf16": draw(st.booleans()),
        "empty_slots": draw(st.booleans()),
        "seed": draw(st.integers(0, 2**16)),
    }


@SETTINGS
@given(problems())
def test_contrastive_core_is_finite_for_finite_inputs(p):
    g = torch.Generator().manual_seed(p["seed"])
    labels = p["labels"].clone()
    m = labels.numel()
    contrast = F.normalize(torch.randn(m, p["d"], generator=g), dim=1).requires_grad_()
    anchors = contrast[: p["n"]]
    if p["empty_slots"] and m > p["n"]:
        labels[-1] = -1  # an empty queue slot
    temperature = (torch.rand(p["n"], generator=g) * 2 + 0.01) if p["per_anchor_t"] else p["temperature"]
    col_weight = torch.rand(m, generator=g) + 0.01 if p["col_weight"] else None
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=p["bf16"]):
        res = contrastive_loss(anchors, contrast, labels[: p["n"]].clamp(min=0), labels, temperature=temperature,
                               self_index=torch.arange(p["n"]), per_positive_denominator=p["per_positive"],
                               class_average=p["class_average"], col_weight=col_weight)
    assert torch.isfinite(res.loss).all()
    res.loss.backward()
    assert torch.isfinite(contrast.grad).all()
    assert (res.num_pos >= 0).all() and (res.num_pos <= m - 1).all()


@SETTINGS
@given(st.lists(st.integers(0, 6), min_size=2, max_size=80), st.integers(0, 1000), st.floats(-1.0, 2.0),
       st.integers(1, 4))
def test_samplers_stay_in_range(labels, seed, gamma, k):
    targets = torch.tensor(labels)
    num_classes = int(targets.max()) + 1
    present = torch.bincount(targets, minlength=num_classes) > 0
    if not present.all():  # class-aware draws need every class; drop to the classes present
        targets = torch.unique(targets, return_inverse=True)[1]
        num_classes = int(targets.max()) + 1
    samplers = [ClassAwareSampler(targets, num_classes, seed, gamma=gamma),
                RepeatPerClassSampler(targets, num_classes, seed),
                PairedSampler(targets, num_classes, seed, gamma=gamma)]
    if (torch.bincount(targets) > 1).all():
        samplers.append(KGlobalSampler(targets, num_classes, seed, k=k))
    for sampler in samplers:
        for epoch in (0, 3):
            sampler.set_epoch(epoch)
            idx = sampler.epoch_indices()
            assert idx.shape[0] == len(sampler)
            assert idx.numel() == 0 or (0 <= int(idx.min()) and int(idx.max()) < targets.numel())
            if isinstance(sampler, KGlobalSampler):
                q, pos = idx[:, 0], idx[:, 1:]
                assert (targets[pos] == targets[q][:, None]).all() and (pos != q[:, None]).all()
