"""Momentum memory: FIFO queue with labels, momentum update of parameters and buffers, batched positives."""

from __future__ import annotations

from types import SimpleNamespace

import torch

from ltreg.memory import MomentumQueue
from ltreg.models.ltmodel import LTModel, LTModelConfig
from ltreg.step import Batch, BuildContext, Outputs, StepState


def small_model() -> LTModel:
    torch.manual_seed(0)
    return LTModel(LTModelConfig(backbone="resnet8", num_classes=4, in_chans=1, proj_dim=8))


def outputs(b: int, key_z: torch.Tensor | None = None) -> Outputs:
    out = Outputs(z=torch.zeros(b, 2, 8), logits=torch.zeros(b, 2, 4), features=torch.zeros(b, 2, 64))
    if key_z is not None:
        out.extra["key_z"] = key_z
    return out


def test_queue_fifo_wraps_around_with_labels() -> None:
    model = small_model()
    mem = MomentumQueue(model, queue_size=5)
    assert mem.queue_labels.tolist() == [-1] * 5 and int(mem.ptr) == 0
    ref_z, ref_y, ptr = torch.zeros(5, 8), [-1] * 5, 0
    g = torch.Generator().manual_seed(1)
    for n in (3, 4, 2, 7, 5, 1):
        z, y = torch.randn(n, 8, generator=g), torch.randint(0, 4, (n,), generator=g)
        st = StepState(torch.ones(4), 4, model=model)
        mem.on_step_end(outputs(n, z), Batch(torch.zeros(n, 2, 1, 8, 8), y, torch.arange(n)), st)
        for i in range(n):  # naive: one key at a time
            ref_z[ptr], ref_y[ptr], ptr = z[i], int(y[i]), (ptr + 1) % 5
        assert torch.equal(mem.queue_z, ref_z) and mem.queue_labels.tolist() == ref_y and int(mem.ptr) == ptr
        if n == 3:
            assert mem.queue_labels[3:].tolist() == [-1, -1] and mem.valid.tolist() == [True] * 3 + [False] * 2
    assert {"queue_z", "queue_labels", "ptr"} <= set(mem.state_dict())


def test_enqueue_uses_gathered_keys() -> None:
    model = small_model()
    mem = MomentumQueue(model, queue_size=8)
    z, y = torch.randn(2, 8), torch.tensor([1, 3])
    st = StepState(torch.ones(4), 4, model=model, gather_nograd=lambda t: torch.cat([t, t + 10]))
    mem.on_step_end(outputs(2, z), Batch(torch.zeros(2, 2, 1, 8, 8), y, torch.arange(2)), st)
    assert mem.queue_labels.tolist() == [1, 3, 11, 13, -1, -1, -1, -1]
    torch.testing.assert_close(mem.queue_z[:4], torch.cat([z, z + 10]))


def test_momentum_update_matches_naive_and_copies_buffers() -> None:
    model = small_model()
    ctx = BuildContext(targets=torch.arange(4), num_classes=4, seed=0, model=model, train_set=None, hparams=None)
    mem = MomentumQueue.from_context(ctx, momentum=0.9)
    key_params = [p for p in list(mem.key_backbone.parameters()) + list(mem.key_projector.parameters())]
    assert key_params and all(not p.requires_grad for p in key_params)
    before = [p.detach().clone() for p in key_params]
    with torch.no_grad():  # a "training step" on the query model, and new BN statistics
        for p in model.parameters():
            p.add_(torch.randn_like(p))
        for b in model.backbone.buffers():
            if b.is_floating_point():
                b.copy_(torch.rand_like(b) + 0.5)
    wrapped = SimpleNamespace(module=model)  # as DDP hands it over
    mem.on_step_end(outputs(1), Batch(torch.zeros(1, 2, 1, 8, 8), torch.tensor([0]), torch.arange(1)),
                    StepState(torch.ones(4), 4, model=wrapped))
    query = list(model.backbone.parameters()) + list(model.projector.parameters())
    for k, k0, q in zip(key_params, before, query):
        torch.testing.assert_close(k, 0.9 * k0 + 0.1 * q.detach())
    for kb, qb in zip(mem.key_backbone.buffers(), model.backbone.buffers()):
        assert torch.equal(kb, qb)
    assert int(mem.ptr) == 0  # no key_z: nothing enqueued


def test_keys_and_positives_in_one_batched_forward_equal_per_sample_encoding() -> None:
    model = small_model()
    mem = MomentumQueue(model, key_view=1).eval()
    model.eval()
    g = torch.Generator().manual_seed(2)
    images, pos = torch.randn(3, 2, 1, 8, 8, generator=g), torch.randn(3, 4, 1, 1, 8, 8, generator=g)
    batch = Batch(images, torch.tensor([0, 1, 2]), torch.arange(3), {"positives": pos})
    out = outputs(3)
    mem.on_forward(out, batch, StepState(torch.ones(4), 4, model=model))
    assert out.extra["key_z"].shape == (3, 8) and out.extra["positives_z"].shape == (3, 4, 8)
    # the fresh key encoder is the query encoder
    torch.testing.assert_close(out.extra["key_z"], model.project(model.forward_features(images[:, 1])), atol=1e-5, rtol=1e-4)
    for b in range(3):
        torch.testing.assert_close(out.extra["key_z"][b], mem.key_encode(images[b : b + 1, 1])[0], atol=1e-5, rtol=1e-4)
        for j in range(4):
            torch.testing.assert_close(out.extra["positives_z"][b, j], mem.key_encode(pos[b, j, 0][None])[0],
                                       atol=1e-5, rtol=1e-4)
    assert not out.extra["positives_z"].requires_grad
    torch.testing.assert_close(out.extra["positives_z"].norm(dim=-1), torch.ones(3, 4))
    plain = outputs(3)
    mem.on_forward(plain, Batch(images, torch.tensor([0, 1, 2]), torch.arange(3)), StepState(torch.ones(4), 4))
    assert "positives_z" not in plain.extra and plain.extra["key_z"].shape == (3, 8)
