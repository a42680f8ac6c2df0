"""ICCL's loss: exact refusals, bf16 inputs giving the float32 result, a 0/1 centroid mask, a centroid provider
without an ``initialized`` mask, and several views per stream. Written from the surviving mutants of
``plugins/mutate.sh`` on ``ltreg_iccl/loss.py`` (issue 29)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from ltreg_iccl import ICCLLoss, centroid_log_probs

from ltreg import Batch, Outputs, StepState

C, D = 4, 6


class _Centroids:
    """What the loss reads from state.prototypes: ``centroids()`` and, optionally, the ``initialized`` mask."""

    def __init__(self, dtype=torch.float32, initialized=None, seed=0):
        g = torch.Generator().manual_seed(seed)
        self.c = F.normalize(torch.randn(C, D, generator=g, dtype=torch.float64), dim=-1).to(dtype)
        if initialized is not None:
            self.initialized = initialized

    def centroids(self):
        return self.c


class _NoMask:
    def __init__(self, c):
        self.c = c

    def centroids(self):
        return self.c


def _step(b=5, views=2, dtype=torch.float32, seed=1):
    g = torch.Generator().manual_seed(seed)
    z = F.normalize(torch.randn(b, views, D, generator=g, dtype=torch.float64), dim=-1).to(dtype)
    logits = torch.randn(b, views, C, generator=g, dtype=torch.float64).to(dtype)
    extra = {"lam": torch.rand(b, generator=g, dtype=torch.float64).to(dtype),
             "targets_b": torch.randint(0, C, (b,), generator=g)}
    return Outputs(z, logits, z), Batch(torch.zeros(b, views, 1, 2, 2), torch.randint(0, C, (b,), generator=g),
                                        torch.arange(b), extra)


def _state(protos, epoch):
    return StepState(torch.ones(C), C, epoch=epoch, num_epochs=4, prototypes=protos)


def test_refusals_name_the_fix():
    with pytest.raises(ValueError, match=r"^ICCL loss weights must be >= 0$"):
        ICCLLoss(interp_weight=-1.0)
    out, b = _step()
    with pytest.raises(ValueError, match=r"^the ICCL loss reads class centroids from state.prototypes: declare "
                                         r"prototypes=PartRef\('ema-centroids'\) in the method spec$"):
        ICCLLoss()(out, b, _state(object(), 0))
    unmixed = Batch(b.images[:, :1], b.targets, b.index)
    msg = (r"^ICCL after the warm-up needs the interpolative branch: use the 'paired' sampler with the "
           r"'iccl-pair-mixup' \(or 'pair-mixup'\) batch transform$")
    with pytest.raises(ValueError, match=msg):
        ICCLLoss()(Outputs(out.z[:, :1], out.logits[:, :1], out.z[:, :1]), unmixed, _state(_Centroids(), 3))


@pytest.mark.parametrize("epoch", [0, 3])  # warm-up, then the interpolative phase
def test_bf16_inputs_give_the_float32_result(epoch):
    """bf16 views, logits, mixing weights and centroids are upcast: the loss is the float32 loss of the upcast
    values (float64 reference, which no cast can touch)."""
    out, b = _step(dtype=torch.bfloat16)
    protos = _Centroids(dtype=torch.bfloat16)
    got = ICCLLoss()(out, b, _state(protos, epoch))
    out64 = Outputs(out.z.double(), out.logits.double(), out.z.double())
    b64 = Batch(b.images, b.targets, b.index, {**b.extra, "lam": b.extra["lam"].double()})
    want = ICCLLoss()(out64, b64, _state(_NoMask(protos.c.double()), epoch))
    assert got.total.dtype == torch.float32
    torch.testing.assert_close(got.total, want.total.float(), rtol=1e-5, atol=1e-5)


def test_a_provider_without_a_mask_uses_every_centroid():
    out, b = _step()
    protos = _Centroids()
    every = _Centroids(initialized=torch.ones(C, dtype=torch.bool))
    for epoch in (0, 3):
        torch.testing.assert_close(ICCLLoss()(out, b, _state(_NoMask(protos.c), epoch)).total,
                                   ICCLLoss()(out, b, _state(every, epoch)).total)


def test_a_zero_one_centroid_mask_acts_like_a_boolean_one():
    """``initialized`` may be a 0/1 tensor (an integer or float buffer): classes 1 and 3 have no centroid yet."""
    out, b = _step()
    mask = torch.tensor([True, False, True, False])
    for epoch in (0, 3):
        want = ICCLLoss()(out, b, _state(_Centroids(initialized=mask), epoch)).total
        for as_type in (torch.long, torch.uint8, torch.float32):
            got = ICCLLoss()(out, b, _state(_Centroids(initialized=mask.to(as_type)), epoch)).total
            torch.testing.assert_close(got, want, rtol=0, atol=0)
    logp = centroid_log_probs(out.z[:, 0], _Centroids().c, 0.1, mask.long())
    assert torch.equal(logp.exp()[:, [1, 3]], torch.zeros(5, 2))


@pytest.mark.parametrize("epoch", [0, 3])
def test_two_views_per_stream_equal_one_view_repeated(epoch):
    """Views [:V] are x^a and [V:] x^I for any V: each stream's views are flattened sample-major, so repeating
    every view twice (V = 2) leaves every mean unchanged."""
    out, b = _step()
    protos = _Centroids()
    one = ICCLLoss()(out, b, _state(protos, epoch))
    rep = out.z.repeat_interleave(2, dim=1), out.logits.repeat_interleave(2, dim=1)
    two = ICCLLoss()(Outputs(rep[0], rep[1], rep[0]), Batch(b.images.repeat_interleave(2, dim=1), b.targets,
                                                                b.index, b.extra), _state(protos, epoch))
    torch.testing.assert_close(two.total, one.total, rtol=1e-6, atol=1e-6)
    assert set(two.parts) == set(one.parts)
