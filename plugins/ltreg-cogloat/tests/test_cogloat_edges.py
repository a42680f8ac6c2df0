"""CoGloAT's loss: exact refusals, bf16 inputs giving the float32 result, ProCo's mean over one anchor, the parts
the module reports, k-positive without global positives, and draws that depend on the global step only. Written
from the surviving mutants of ``plugins/mutate.sh`` on ``ltreg_cogloat/loss.py`` (issue 29)."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F
from ltreg_cogloat import CoGloATLoss, cogloat, proco

from ltreg import Batch, Outputs, StepState

D = 6


def _unit(*shape, seed=0, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    return F.normalize(torch.randn(*shape, D, generator=g, dtype=torch.float64), dim=-1).to(dtype)


def _raw(dtype=torch.float64):
    a, pos, cols = _unit(3, seed=1, dtype=dtype), _unit(3, 2, seed=2, dtype=dtype), _unit(5, seed=3, dtype=dtype)
    return a, torch.tensor([0, 0, 1]), pos, cols, torch.tensor([0, 0, 1, 0, 2]), torch.arange(3).unsqueeze(1)


def _step(b=4, k=2, alpha=0.5, positives=True):
    z, keys = _unit(b, 2, seed=6), _unit(b, seed=7)
    y = torch.tensor([0, 1, 1, 0])[:b]
    queue, qy = _unit(6, seed=8), torch.tensor([0, 1, 1, 0, 2, -1])
    protos = _unit(2, 3, seed=9)
    extra = {"key_z": keys, **({"positives_z": _unit(b, k, seed=10)} if positives else {})}
    out = Outputs(z=z, logits=z.new_zeros(b, 2, 3), features=z, extra=extra)
    batch = Batch(torch.zeros(b, 2, 1, 2, 2), y, torch.arange(b))

    def state(**kw):
        return StepState(class_counts=torch.tensor([30.0, 10.0, 2.0], dtype=torch.float64), num_classes=3,
                         memory=SimpleNamespace(queue_z=queue, queue_labels=qy),
                         prototypes=SimpleNamespace(prototypes=lambda q: protos[q]), **kw)
    return out, batch, state


def test_refusals_name_the_fix():
    a, y, pos, cols, col_y, own = _raw()
    with pytest.raises(ValueError, match=r"^memory_positives are given exactly when negatives='k-positive'$"):
        cogloat(a, y, pos, cols, col_y, own, negatives="k-positive")
    out, batch, state = _step()
    bare = Outputs(z=out.z, logits=out.logits, features=out.z)
    with pytest.raises(ValueError, match=r"^the cogloat loss needs the 'moco' memory part \(outputs.extra\['key_z'\] "
                                         r"and a queue\)$"):
        CoGloATLoss()(bare, batch, state())
    with pytest.raises(ValueError, match=r"^the ProCo term \(alpha < 1\) needs the 'coreset' prototype part$"):
        CoGloATLoss(alpha=0.5)(out, batch, StepState(torch.ones(3), 3, memory=state().memory))


def test_bf16_anchors_and_positives_give_the_float32_result():
    """bf16 anchors and global positives: their logits are computed in float32 on the upcast values."""
    a, y, pos, cols, col_y, own = _raw(dtype=torch.bfloat16)
    got = cogloat(a, y, pos, cols.float(), col_y, own, temperature=0.1).loss
    want = cogloat(a.double(), y, pos.double(), cols.double(), col_y, own, temperature=0.1).loss
    torch.testing.assert_close(got, want.float(), rtol=1e-5, atol=1e-5)


def test_proco_mean_of_one_anchor_is_its_loss():
    a, y, *_ = _raw()
    protos = _unit(2, 3, seed=4)
    one = proco(a[:1], y[:1], protos, temperature=0.2)
    torch.testing.assert_close(one.loss, proco(a[:1], y[:1], protos, temperature=0.2, reduction="none").loss[0])


def test_module_reports_both_terms_of_its_total():
    out, batch, state = _step()
    res = CoGloATLoss(alpha=0.3, gamma=0.1)(out, batch, state())
    assert set(res.parts) == {"cogloat", "proco"}
    torch.testing.assert_close(res.total, 0.3 * res.parts["cogloat"] + 0.7 * res.parts["proco"], rtol=1e-12, atol=0)


def test_k_positive_without_global_positives_draws_none():
    """Without a k-global sampler k = 0: k-positive adds no memory positive and equals the unsupervised loss."""
    out, batch, state = _step(positives=False)
    kpos = CoGloATLoss(negatives="k-positive", alpha=1.0)(out, batch, state()).total
    unsup = CoGloATLoss(negatives="unsupervised", alpha=1.0)(out, batch, state()).total
    torch.testing.assert_close(kpos, unsup, rtol=0, atol=0)


def test_k_positive_draws_depend_on_the_global_step_only():
    """The draws are seeded by the global step (epoch x steps per epoch + step): the same step reached two ways
    draws the same memory positives; another step draws others."""
    out, batch, state = _step()
    loss = CoGloATLoss(negatives="k-positive", alpha=1.0, seed=4)
    a = loss(out, batch, state(epoch=1, step=1, steps_per_epoch=3)).total
    b = loss(out, batch, state(epoch=0, step=4, steps_per_epoch=3)).total
    torch.testing.assert_close(a, b, rtol=0, atol=0)
    others = {round(loss(out, batch, state(epoch=0, step=s, steps_per_epoch=10)).total.item(), 12) for s in range(6)}
    assert len(others) > 1
