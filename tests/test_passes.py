"""Every pass over data a part asks for is independent of the order and grouping of the images, and the
two prototype sets of CoGloAT's coreset come from two different augmented views."""

from __future__ import annotations

import torch

import ltreg
from ltreg.config import resolve_config
from ltreg.run import build_run


def _run(tmp_path, method: str = "supcon", **over):
    cfg = {"epochs": 1, "max_steps_per_epoch": 2, "batch_size": 32, "eval_batch_size": 64,
           "output_dir": str(tmp_path / method), **over}
    return build_run(resolve_config(ltreg.get_method(method), cfg))


def test_embedding_does_not_depend_on_order_or_batch(tmp_path):
    run = _run(tmp_path)
    model = run.model
    model.train()  # as during training: the pass must switch to eval mode itself
    idx = torch.arange(96)
    a = run.ctx.embed(idx, "none", False)
    perm = torch.randperm(96, generator=torch.Generator().manual_seed(0))
    b = run.ctx.embed(idx[perm], "none", False)
    torch.testing.assert_close(a[perm], b, rtol=1e-5, atol=1e-6)
    run.passes.batch_size = 7  # other groupings
    torch.testing.assert_close(run.ctx.embed(idx, "none", False), a, rtol=1e-5, atol=1e-6)
    assert model.training  # and restores the mode it found


def test_extract_is_in_eval_mode_and_order_free(tmp_path):
    run = _run(tmp_path)
    run.model.train()
    test = run.data.test
    full = run.passes.extract(test)
    part = run.passes.extract(test.subset(torch.arange(0, len(test), 3).numpy()))
    torch.testing.assert_close(full.logits[::3], part.logits, rtol=1e-5, atol=1e-5)
    assert run.model.training


def test_two_views_give_two_different_augmentations(tmp_path):
    run = _run(tmp_path)
    idx = torch.arange(40)
    v0 = run.ctx.embed(idx, "sim", False, 0)
    v1 = run.ctx.embed(idx, "sim", False, 1)
    assert (v0 - v1).abs().max() > 1e-3  # slot 1 is another augmentation draw than slot 0
    torch.testing.assert_close(run.ctx.embed(idx, "sim", False, 1), v1)  # and reproducible


def test_cogloat_prototype_sets_differ(tmp_path):
    if "cogloat" not in ltreg.registry("methods"):
        return
    run = _run(tmp_path, "cogloat")
    protos = run.parts.prototypes
    protos.on_train_start(run.state)
    protos.on_epoch_start(run.state)
    p0, p1 = protos.prototypes(0), protos.prototypes(1)
    assert p0.shape == p1.shape and (p0 - p1).abs().max() > 1e-4  # two augmented views -> two prototype sets
