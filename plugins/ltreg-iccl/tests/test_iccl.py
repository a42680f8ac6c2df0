"""ICCL plugin: registration, the loss against a per-sample reference, the warm-up, centroids at step 0,
the warm-up-aware mixing, the recipes' stage-2 switch, and a short end-to-end run on digits-LT."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from ltreg_iccl import ICCL, ICCLLoss, WarmupPairMixup, centroid_log_probs, in_warmup, warmup_epochs

import ltreg
from ltreg.config import resolve_config
from ltreg.errors import ConfigError
from ltreg.method import build_part
from ltreg.mixing import PairMixup
from ltreg.prototypes import EMACentroids
from ltreg.rebalance import KDRebalance
from ltreg.step import Batch, Outputs, StepState

C, D = 5, 8
TINY = {"epochs": 2, "max_steps_per_epoch": 4, "batch_size": 32, "log_every": 2, "eval_batch_size": 512}


def state(epoch: int, num_epochs: int = 4, protos=None, step: int = 0) -> StepState:
    return StepState(torch.arange(1.0, C + 1), C, epoch=epoch, step=step, num_epochs=num_epochs, prototypes=protos,
                     seed=3)


def centroids(init: list[int] | None = None, seed: int = 0) -> EMACentroids:
    """EMA centroids with classes ``init`` set (all when None) to random unit vectors."""
    ema = EMACentroids(C, D)
    g = torch.Generator().manual_seed(seed)
    ema.centers.copy_(F.normalize(torch.randn(C, D, generator=g), dim=-1))
    ema.initialized[:] = False
    ema.initialized[list(range(C)) if init is None else init] = True
    ema.centers[~ema.initialized] = 0
    return ema


def outputs(b: int, views: int, seed: int = 1) -> Outputs:
    g = torch.Generator().manual_seed(seed)
    z = F.normalize(torch.randn(b, views, D, generator=g), dim=-1).requires_grad_(True)
    logits = torch.randn(b, views, C, generator=g).requires_grad_(True)
    return Outputs(z, logits, torch.zeros(b, views, 1))


def batch(b: int, mixed: bool, seed: int = 2) -> Batch:
    g = torch.Generator().manual_seed(seed)
    extra = {"targets_b": torch.randint(0, C, (b,), generator=g)}
    if mixed:
        extra["lam"] = torch.rand(b, generator=g)
    return Batch(torch.zeros(b, 2 if mixed else 1, 1, 2, 2), torch.randint(0, C, (b,), generator=g), torch.arange(b),
                 extra)


def naive(out: Outputs, b: Batch, ema: EMACentroids, tau: float, warm: bool, w_u: float = 1.0, w_i: float = 1.0):
    """Per-sample loops over the formulas of the paper (Tiong et al., arXiv 2110.10048, Eqs. 4-8) (uninitialised centroids excluded)."""
    valid = [k for k in range(C) if bool(ema.initialized[k])]
    c = ema.centers

    def logp(z, k):
        if k not in valid:
            return None
        num = math.exp(float(z @ c[k]) / tau)
        return math.log(num / sum(math.exp(float(z @ c[j]) / tau) for j in valid))

    n = len(b)
    ce = sum(-float(F.log_softmax(out.logits[i, 0].detach(), -1)[b.targets[i]]) for i in range(n)) / n
    if warm:
        cc = sum(-(logp(out.z[i, 0].detach(), int(b.targets[i])) or 0.0) for i in range(n)) / n
        return ce + cc, {"ce": ce, "cc": cc}
    icc = ce_mix = 0.0
    for i in range(n):
        lam, ya, yb = float(b.extra["lam"][i]), int(b.targets[i]), int(b.extra["targets_b"][i])
        zi = out.z[i, 1].detach()
        la, lb = logp(zi, ya), logp(zi, yb)
        icc -= lam * (la or 0.0) + (1 - lam) * (lb or 0.0)
        lsm = F.log_softmax(out.logits[i, 1].detach(), -1)
        ce_mix -= lam * float(lsm[ya]) + (1 - lam) * float(lsm[yb])
    icc, ce_mix = icc / n, ce_mix / n
    return w_u * ce + w_i * (icc + ce_mix), {"ce": ce, "icc": icc, "ce_mix": ce_mix}


# -- registration ---------------------------------------------------------------------------------
def test_registered_with_core_parts_by_name() -> None:
    spec = ltreg.get_method("ICCL")
    assert spec is ICCL and spec.stages == 2 and spec.views.pipelines == ("cls",)
    assert spec.stage2.epochs == ltreg.hp("stage2_epochs") and spec.stage2.kind == "rebalance"
    assert (spec.sampler.name, spec.prototypes.name, spec.rebalance.name) == ("paired", "ema-centroids", "kd-rebalance")
    row = next(r for r in ltreg.list_methods() if r["name"] == "iccl")
    assert row["dist"] == "ltreg-iccl" and not row["error"]
    from ltreg.registry import registry

    assert registry("losses").get("iccl") is ICCLLoss
    assert registry("transforms").get("iccl-pair-mixup") is WarmupPairMixup


@pytest.mark.parametrize("finetune", [False, True])
def test_stage2_switch_reaches_kd_rebalance(finetune: bool) -> None:
    hp = ICCL.hparams.replace(stage2_finetune_backbone=str(finetune).lower(), kd_weight="0.25")
    kd = build_part("rebalance", ICCL.rebalance, hp, None)
    assert isinstance(kd, KDRebalance)
    assert kd.freeze_backbone is (not finetune) and kd.kd_weight == 0.25 and kd.temperature == 2.0
    assert (kd.sampler, kd.sampler_kwargs) == ("class-aware", {"gamma": 1.0}) and ICCL.stage2_epochs(hp) == 10


def test_recipes_carry_paper_numbers_and_cifar_switches() -> None:
    cfg = resolve_config(ICCL, {"recipe": "cifar100-lt-if100"}).cfg
    assert (cfg.dataset, cfg.imbalance, cfg.backbone, cfg.epochs) == ("cifar100-lt", 100.0, "resnet32", 200)
    assert cfg.hparams == {"uniform_weight_after_warmup": 0.0, "stage2_finetune_backbone": True, "proj_dim": 32}
    assert ICCL.recipe("cifar100-lt-if100").paper == {"All": 46.6}
    assert [ICCL.recipe(f"cifar10-lt-if{i}").paper["All"] for i in (100, 50, 10)] == [82.1, 84.7, 89.7]
    assert [ICCL.recipe(f"cifar100-lt-if{i}").paper["All"] for i in (100, 50, 10)] == [46.6, 51.6, 62.1]
    assert ICCL.recipe("imagenet-lt-x50").paper == {"All": 54.0, "Many": 60.7, "Medium": 52.9, "Few": 39.0}
    assert ICCL.recipe("inat2018-r50").paper["All"] == 70.5
    big = resolve_config(ICCL, {"recipe": "imagenet-lt-x50"}).cfg
    assert big.backbone == "resnext50_32x4d" and big.hparams == {"colour_jitter": True}
    with pytest.raises(ConfigError, match="warmup_fraction"):
        ICCL.hparams.replace(warmup_fraction="1.5")


def test_warmup_epochs() -> None:
    assert [warmup_epochs(0.5, n) for n in (200, 90, 2, 1, 3)] == [100, 45, 1, 1, 2]
    assert warmup_epochs(0.0, 10) == 0 and warmup_epochs(1.0, 10) == 10
    assert in_warmup(state(0, 2), 0.5) and not in_warmup(state(1, 2), 0.5) and not in_warmup(state(0, 2), 0.0)
    for bad in (-0.1, 1.5):  # just outside [0, 1] on either side (mutation testing: the bound 1 and the message)
        with pytest.raises(ValueError, match=rf"ICCL warmup_fraction must be in \[0, 1\], got {bad}"):
            warmup_epochs(bad, 10)


# -- the loss ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("init", [None, [0, 2, 3]])
def test_warmup_loss_matches_reference(init) -> None:
    ema, out, b = centroids(init), outputs(12, 1), batch(12, mixed=False)
    loss = ICCLLoss(temperature=0.2, warmup_fraction=0.5)(out, b, state(1, 4, ema))
    ref, parts = naive(out, b, ema, 0.2, warm=True)
    assert set(loss.parts) == {"ce", "cc"}
    assert loss.total.item() == pytest.approx(ref, rel=1e-5)
    for k, v in parts.items():
        assert float(loss.parts[k]) == pytest.approx(v, rel=1e-5, abs=1e-7)


@pytest.mark.parametrize("init", [None, [1, 4]])
@pytest.mark.parametrize("w_u", [1.0, 0.0])
def test_interpolative_loss_matches_reference(init, w_u: float) -> None:
    ema, out, b = centroids(init), outputs(10, 2), batch(10, mixed=True)
    loss = ICCLLoss(0.1, 0.5, uniform_weight_after_warmup=w_u, interp_weight=0.7)(out, b, state(2, 4, ema))
    ref, parts = naive(out, b, ema, 0.1, warm=False, w_u=w_u, w_i=0.7)
    assert set(loss.parts) == {"ce", "icc", "ce_mix"}
    assert loss.total.item() == pytest.approx(ref, rel=1e-5)
    for k, v in parts.items():
        assert float(loss.parts[k]) == pytest.approx(v, rel=1e-5, abs=1e-7)
    loss.total.backward()
    assert torch.isfinite(out.z.grad).all() and torch.isfinite(out.logits.grad).all()
    assert bool(out.z.grad[:, 0].eq(0).all())  # z^a only feeds the EMA, after the step
    assert (out.logits.grad[:, 0].abs().sum() > 0) == (w_u > 0)


def test_warmup_ignores_the_mixed_half_of_a_core_pair_mixup_batch() -> None:
    ema, out, b = centroids(), outputs(8, 2), batch(8, mixed=True)
    full = ICCLLoss()(out, b, state(0, 4, ema))
    first = Outputs(out.z[:, :1], out.logits[:, :1], out.features[:, :1])
    plain = Batch(b.images[:, :1], b.targets, b.index, {"targets_b": b.extra["targets_b"]})
    assert full.total.item() == pytest.approx(ICCLLoss()(first, plain, state(0, 4, ema)).total.item())
    full.total.backward()
    assert bool(out.z.grad[:, 1].eq(0).all()) and bool(out.logits.grad[:, 1].eq(0).all())


def test_step_zero_centroids_are_finite_and_loss_is_plain_ce() -> None:
    """Fresh EMA centroids (nothing initialised): no NaN in values or gradients, L = L_ce exactly."""
    ema = EMACentroids(C, D)
    assert not bool(ema.initialized.any()) and bool(ema.centroids().eq(0).all())
    lp = centroid_log_probs(torch.randn(4, D), ema.centroids(), 0.1, ema.initialized)
    assert torch.isfinite(lp).all()
    for epoch, mixed in ((0, False), (3, True)):
        out, b = outputs(6, 2 if mixed else 1), batch(6, mixed)
        loss = ICCLLoss()(out, b, state(epoch, 4, ema))
        ce = F.cross_entropy(out.logits[:, 0].detach(), b.targets)
        expect = float(ce) if not mixed else float(ce) + float(loss.parts["ce_mix"])
        assert loss.total.item() == pytest.approx(expect, rel=1e-6)
        assert float(loss.parts["cc" if not mixed else "icc"]) == 0.0
        loss.total.backward()
        assert torch.isfinite(out.z.grad).all() and bool(out.z.grad.eq(0).all())
    # after one EMA update the classes seen are set to their (normalised) batch mean, the rest stay out
    z, y = F.normalize(torch.randn(6, D), dim=-1), torch.tensor([0, 0, 2, 2, 2, 4])
    ema.update(z, y)
    assert ema.initialized.tolist() == [True, False, True, False, True]
    torch.testing.assert_close(ema.centers[0], F.normalize(z[:2].mean(0), dim=0))
    out, b = outputs(6, 1), batch(6, False)
    loss = ICCLLoss()(out, b, state(0, 4, ema))
    ref, _ = naive(out, b, ema, 0.1, warm=True)
    assert loss.total.item() == pytest.approx(ref, rel=1e-5)


def test_loss_mean_over_a_split_batch_equals_the_global_loss() -> None:
    """No cross-sample term: two processes' halves (DDP averages gradients) give the one-process loss."""
    ema, out, b = centroids([0, 1, 2]), outputs(8, 2), batch(8, mixed=True)
    fn, st = ICCLLoss(), state(3, 4, ema)
    whole = fn(out, b, st).total.item()
    halves = []
    for r in range(2):
        s = slice(4 * r, 4 * r + 4)
        o = Outputs(out.z[s], out.logits[s], out.features[s])
        halves.append(float(fn(o, Batch(b.images[s], b.targets[s], b.index[s], {k: v[s] for k, v in b.extra.items()}),
                               st).total.item()))
    assert whole == pytest.approx(sum(halves) / 2, rel=1e-6)


def test_clear_errors() -> None:
    out, b = outputs(4, 1), batch(4, mixed=False)
    with pytest.raises(ValueError, match="ema-centroids"):
        ICCLLoss()(out, b, state(0, 4, None))
    with pytest.raises(ValueError, match="interpolative branch"):
        ICCLLoss()(out, b, state(3, 4, centroids()))
    with pytest.raises(ValueError, match="temperature"):
        ICCLLoss(temperature=0.0)


# -- mixing --------------------------------------------------------------------------------------------
def paired(b: int = 6) -> Batch:
    g = torch.Generator().manual_seed(5)
    return Batch(torch.randn(b, 1, 1, 4, 4, generator=g), torch.randint(0, C, (b,), generator=g), torch.arange(b),
                 {"pair_images": torch.randn(b, 1, 1, 4, 4, generator=g), "targets_b": torch.randint(0, C, (b,), generator=g)})


def test_warmup_pair_mixup_passes_through_then_equals_core() -> None:
    b, mix = paired(), WarmupPairMixup(alpha=1.0, warmup_fraction=0.5)
    warm = mix.transform_batch(b, state(1, 4))
    assert torch.equal(warm.images, b.images) and "pair_images" not in warm.extra and "lam" not in warm.extra
    after, core = mix.transform_batch(b, state(2, 4, step=3)), PairMixup(1.0).transform_batch(b, state(2, 4, step=3))
    assert after.images.shape == (6, 2, 1, 4, 4)
    assert torch.equal(after.images, core.images) and torch.equal(after.extra["lam"], core.extra["lam"])
    always = WarmupPairMixup(warmup_fraction=0.5, mix_during_warmup=True).transform_batch(b, state(0, 4))
    assert always.images.shape == (6, 2, 1, 4, 4) and "lam" in always.extra


# -- end to end ------------------------------------------------------------------------------------------
def test_trains_both_phases_and_kd_stage_on_digits(tmp_path) -> None:
    from ltreg.trainer import Trainer

    cfg = resolve_config(ICCL, {**TINY, "output_dir": str(tmp_path / "run"), "stage2_epochs": 1,
                                "hparams": {"stage2_finetune_backbone": True}})
    trainer = Trainer(cfg)
    result = trainer.fit()
    s1 = [r for r in result.history if r["stage"] == 1]
    assert "cc" in s1[0] and "icc" not in s1[0]  # epoch 1 of 2 is the warm-up
    assert {"icc", "ce_mix"} <= set(s1[1]) and "cc" not in s1[1]
    s2 = [r for r in result.history if r["stage"] == 2]
    assert len(s2) == 1 and "kd" in s2[0]
    for row in result.history:
        assert all(math.isfinite(v) for k, v in row.items() if isinstance(v, float))
    ema = trainer.run.parts.prototypes
    assert bool(ema.initialized.all())
    torch.testing.assert_close(ema.centers.norm(dim=1), torch.ones(ema.centers.shape[0]))
    assert 0 <= result.metrics["top1"] <= 100 and (tmp_path / "run" / "model.safetensors").is_file()


# -- per-recipe projection size (ModelSpec hp references) and the ImageNet-LT colour jitter ------------------
def test_projection_size_is_set_per_recipe() -> None:
    """``ModelSpec(proj_dim=hp("proj_dim"))``: ``model_for`` resolves it per run; ``spec.model`` keeps the default."""
    cifar = ICCL.hparams.replace(**ICCL.recipe("cifar100-lt-if100").hparams)
    big = ICCL.hparams.replace(**ICCL.recipe("imagenet-lt-x50").hparams)
    assert ICCL.model_for(cifar).proj_dim == 32 and ICCL.model_for(big).proj_dim == 128
    assert ICCL.model_for(ICCL.hparams.replace(proj_dim="64")).proj_dim == 64  # --hp proj_dim=64
    assert ICCL.model.proj_dim == 128 and ICCL.model_template.proj_dim == ltreg.hp("proj_dim")
    assert "proj_dim=128" in ICCL.describe()
    import dataclasses

    assert dataclasses.replace(ICCL, summary="x").model_for(cifar).proj_dim == 32  # the template survives replace
    plain = dataclasses.replace(ICCL, model=ltreg.ModelSpec(proj_dim=16))
    assert plain.model_for(cifar).proj_dim == 16  # a concrete model replaces the template


def test_imagenet_recipe_asks_for_colour_jitter() -> None:
    big = ICCL.hparams.replace(**ICCL.recipe("imagenet-lt-x50").hparams)
    assert big.colour_jitter and not ICCL.hparams.colour_jitter
    assert ICCL.views_for(big) == ("cls+jitter",)
    assert ICCL.views_for(ICCL.hparams) == ("cls",)


# -- the whole loss module in float64: values and gradients against a differentiable per-sample total ---------
def naive64(z, logits, ya, yb, lam, c, valid, tau, warm, w_u, w_i):
    """Paper §3.3-3.4: p(k|z) = exp(z.c_k/tau) / sum_j exp(z.c_j/tau) over initialised centroids;
    warm-up L = L_ce + L_cc; then L = w_u L_ce + w_I (L_icc + L_ce^I), L_icc = -[lam log p(y^a|z^I) +
    (1-lam) log p(y^b|z^I)], L_ce^I = -[lam log s(u^I)_{y^a} + (1-lam) log s(u^I)_{y^b}]; means over samples."""
    n = len(ya)

    def logp(zi, k):
        if k not in valid:
            return zi.sum() * 0
        den = sum(torch.exp(zi @ c[j] / tau) for j in valid)
        return torch.log(torch.exp(zi @ c[k] / tau) / den)

    def log_soft(u, k):
        return u[k] - torch.log(sum(torch.exp(u[j]) for j in range(len(u))))

    ce = -sum(log_soft(logits[i, 0], int(ya[i])) for i in range(n)) / n
    if warm:
        return ce - sum(logp(z[i, 0], int(ya[i])) for i in range(n)) / n
    icc = -sum(lam[i] * logp(z[i, 1], int(ya[i])) + (1 - lam[i]) * logp(z[i, 1], int(yb[i])) for i in range(n)) / n
    mix = -sum(lam[i] * log_soft(logits[i, 1], int(ya[i])) + (1 - lam[i]) * log_soft(logits[i, 1], int(yb[i]))
               for i in range(n)) / n
    return w_u * ce + w_i * (icc + mix)


@pytest.mark.parametrize("warm", [True, False])
@pytest.mark.parametrize("init", [None, [0, 2, 3]])
def test_whole_loss_float64_values_and_gradients(warm: bool, init) -> None:
    ema = centroids(init)
    c64 = ema.centers.double()
    ema64 = EMACentroids(C, D).double()
    ema64.centers.copy_(c64)
    ema64.initialized.copy_(ema.initialized)
    g = torch.Generator().manual_seed(5)
    b = batch(9, mixed=not warm)
    z = F.normalize(torch.randn(9, 1 if warm else 2, D, generator=g, dtype=torch.float64), dim=-1)
    u = torch.randn(9, 1 if warm else 2, C, generator=g, dtype=torch.float64)
    leaves = [z.clone().requires_grad_(), u.clone().requires_grad_()]
    w_u, w_i = 0.3, 0.7
    loss = ICCLLoss(0.15, 0.5, uniform_weight_after_warmup=w_u, interp_weight=w_i)(
        Outputs(leaves[0], leaves[1], torch.zeros(9, z.shape[1], 1, dtype=torch.float64)), b,
        state(0 if warm else 3, 4, ema64))
    assert loss.total.dtype == torch.float64
    loss.total.backward()
    ref_leaves = [z.clone().requires_grad_(), u.clone().requires_grad_()]
    valid = [k for k in range(C) if bool(ema.initialized[k])]
    lam = b.extra.get("lam", torch.zeros(9)).double()
    ref = naive64(ref_leaves[0], ref_leaves[1], b.targets, b.extra["targets_b"], lam, c64, valid, 0.15, warm, w_u, w_i)
    ref.backward()
    torch.testing.assert_close(loss.total, ref, rtol=1e-10, atol=1e-12)
    for a, r in zip(leaves, ref_leaves):
        torch.testing.assert_close(a.grad, r.grad, rtol=1e-9, atol=1e-12)


def test_loss_argument_bounds_and_errors() -> None:
    for frac in (0.0, 1.0):
        assert ICCLLoss(warmup_fraction=frac).warmup_fraction == frac
    assert ICCLLoss(uniform_weight_after_warmup=0.0, interp_weight=0.0).interp_weight == 0.0
    for kw, msg in (({"warmup_fraction": 1.01}, "warmup_fraction must be in"),
                    ({"warmup_fraction": -0.1}, "warmup_fraction must be in"),
                    ({"uniform_weight_after_warmup": -1.0}, "ICCL loss weights must be >= 0"),
                    ({"interp_weight": -1.0}, "ICCL loss weights must be >= 0"),
                    ({"temperature": 0.0}, "temperature must be > 0")):
        with pytest.raises(ValueError, match=msg):
            ICCLLoss(**kw)
    out, b = outputs(4, 1), batch(4, mixed=False)
    for protos in (None, object()):
        with pytest.raises(ValueError, match=r"reads class centroids from state.prototypes: declare prototypes=PartRef"):
            ICCLLoss()(out, b, state(0, 4, protos))
    with pytest.raises(ValueError, match="equal numbers"):
        ICCLLoss()(outputs(4, 3), batch(4, mixed=True), state(3, 4, centroids()))


def test_interrupted_in_the_kd_stage_resumes_to_the_uninterrupted_weights(tmp_path, monkeypatch) -> None:
    """The KD teacher is built by ``setup`` from the stage-1 classifier; a resumed stage 2 runs ``setup`` before
    the checkpoint is loaded, so the checkpoint holds the rebalancer (its teacher) and restores it."""
    from ltreg import loop as loop_module
    from ltreg.trainer import Trainer

    base = {**TINY, "max_steps_per_epoch": 2, "stage2_epochs": 2, "quiet": True}
    full = ltreg.train("iccl", output_dir=str(tmp_path / "full"), **base)
    trainer = Trainer(resolve_config(ICCL, {**base, "output_dir": str(tmp_path / "part")}))
    original, calls = loop_module.run_epoch, {"n": 0}

    def interrupted(*args, **kwargs):
        if calls["n"] == 3:  # stage 1's two epochs and stage 2's first are done and checkpointed
            raise KeyboardInterrupt
        calls["n"] += 1
        return original(*args, **kwargs)

    monkeypatch.setattr(loop_module, "run_epoch", interrupted)
    with pytest.raises(KeyboardInterrupt):
        trainer.fit()
    monkeypatch.undo()
    resumed = ltreg.train("iccl", output_dir=str(tmp_path / "part"), resume=True, **base)
    assert [r["loss"] for r in full.history] == [r["loss"] for r in resumed.history]
    for key, value in full.model.state_dict().items():
        torch.testing.assert_close(resumed.model.state_dict()[key], value, rtol=0, atol=0, msg=key)
