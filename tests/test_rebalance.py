"""Stage-2 rebalancers: cRT, LWS, tau-norm, NCM, post-hoc logit adjustment, KD."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from ltreg.errors import RebalanceError
from ltreg.models.ltmodel import LTModel, LTModelConfig
from ltreg.rebalance import (
    CRT,
    LWS,
    NCM,
    KDRebalance,
    NCMClassifier,
    PostHocLogitAdjust,
    Rebalancer,
    ScaledClassifier,
    TauNorm,
    inverse_frequency_weights,
)
from ltreg.step import Batch, BuildContext, StepState

COUNTS = torch.tensor([40, 12, 5, 2])


def small_model(classifier: str = "linear", seed: int = 0) -> LTModel:
    torch.manual_seed(seed)
    return LTModel(LTModelConfig(backbone="resnet8", num_classes=4, in_chans=1, proj_dim=8, classifier=classifier))


def context(model, features=None) -> BuildContext:
    targets = torch.repeat_interleave(torch.arange(4), COUNTS)
    return BuildContext(targets=targets, num_classes=4, seed=0, model=model, train_set=None, hparams=None, features=features)


def batch(b: int = 6, seed: int = 1) -> Batch:
    g = torch.Generator().manual_seed(seed)
    return Batch(torch.randn(b, 1, 1, 8, 8, generator=g), torch.randint(0, 4, (b,), generator=g), torch.arange(b))


STATE = StepState(COUNTS.float(), 4)


def test_interface_attributes() -> None:
    for r in (CRT(), LWS(), TauNorm(), NCM(), PostHocLogitAdjust(), KDRebalance()):
        assert isinstance(r, Rebalancer)
        assert isinstance(r.sampler, str) and isinstance(r.sampler_kwargs, dict) and isinstance(r.epochs, int)
        assert r.views == ("cls",) and r.lr is None
    assert (CRT().epochs, LWS().epochs, TauNorm().epochs, NCM().epochs) == (10, 5, 0, 0)
    assert TauNorm().needs_holdout and not CRT().needs_holdout
    assert (KDRebalance(gamma=0.5).sampler, KDRebalance(gamma=0.5).sampler_kwargs) == ("class-aware", {"gamma": 0.5})


def test_crt_reinitialises_classifier_and_freezes_backbone() -> None:
    model = small_model()
    old_w = model.classifier.weight.detach().clone()
    crt = CRT()
    params = crt.setup(model)
    assert {id(p) for p in params} == {id(p) for p in model.classifier.parameters()}
    assert not torch.equal(model.classifier.weight, old_w)
    assert all(not p.requires_grad for p in model.backbone.parameters())
    assert all(not p.requires_grad for p in model.projector.parameters())
    stats = [b.clone() for b in model.backbone.buffers()]
    model.train()  # the trainer's call must not unfreeze BatchNorm statistics
    out = model(batch().images)
    assert all(torch.equal(a, b) for a, b in zip(stats, model.backbone.buffers()))
    crt.loss(out, batch(), STATE).total.backward()
    assert model.classifier.weight.grad is not None and all(p.grad is None for p in model.backbone.parameters())
    crt.finalize(model, context(model))
    assert not crt._hooks


@pytest.mark.parametrize("loss,classifier", [("ce", "linear"), ("ldam", "linear"), ("ldam", "cosine")])
def test_crt_reweighted_losses_match_formula(loss: str, classifier: str) -> None:
    model = small_model(classifier)
    crt = CRT(loss=loss, reweight="inverse")
    crt.setup(model)
    b = batch(8)
    out = model(b.images)
    got = crt.loss(out, b, STATE).total
    u = out.logits[:, 0].double()
    w = 1.0 / COUNTS.double()
    w = w / w.mean()
    if loss == "ldam":
        delta = COUNTS.double() ** -0.25
        delta = 0.5 * delta / delta.max() * (30.0 if classifier == "cosine" else 1.0)
        u = u - F.one_hot(b.targets, 4) * delta[b.targets, None]
    nll = -u.log_softmax(-1).gather(1, b.targets[:, None]).squeeze(1)
    ref = (w[b.targets] * nll).sum() / w[b.targets].sum()
    torch.testing.assert_close(got.double(), ref, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(inverse_frequency_weights(COUNTS).double(), w)  # 1/n_c with mean 1


def test_lws_trains_scales_only_and_folds() -> None:
    model = small_model().eval()
    b = batch()
    base = model.predict(b.images[:, 0]).detach()
    lws = LWS()
    params = lws.setup(model)
    assert isinstance(model.classifier, ScaledClassifier) and len(params) == 1 and params[0].shape == (4,)
    assert [n for n, p in model.named_parameters() if p.requires_grad] == ["classifier.scales"]
    frozen = {n: p.detach().clone() for n, p in model.named_parameters() if n != "classifier.scales"}
    opt = torch.optim.SGD(params, lr=0.5)
    lws.loss(model(b.images), b, STATE).total.backward()
    opt.step()
    assert all(torch.equal(frozen[n], p) for n, p in model.named_parameters() if n != "classifier.scales")
    scales = model.classifier.scales.detach().clone()
    assert not torch.equal(scales, torch.ones(4))
    torch.testing.assert_close(model.predict(b.images[:, 0]), base * scales)
    assert "classifier.scales" in model.state_dict() and "classifier.base.weight" in model.state_dict()
    info = lws.finalize(model, context(model))
    assert info["folded"] and type(model.classifier) is nn.Linear
    torch.testing.assert_close(model.predict(b.images[:, 0]), base * scales)


def test_tau_norm_picks_known_tau_on_holdout_only() -> None:
    # w_0 = 4 e_0, w_1 = e_1: the class-1 sample (1, .7) needs tau >= 1.3, the class-0 sample (1, .62) tau <= 1.3
    model = small_model()
    model.classifier = nn.Linear(2, 2)
    with torch.no_grad():
        model.classifier.weight.copy_(torch.tensor([[4.0, 0.0], [0.0, 1.0]]))
        model.classifier.bias.zero_()
    data = {"holdout": (torch.tensor([[1.0, 0.62], [1.0, 0.7], [1.0, 0.1]]), torch.tensor([0, 1, 0])),
            "train": (torch.tensor([[1.0, 0.0]]), torch.tensor([1]))}
    asked = []

    def features(split):
        asked.append(split)
        return data[split]

    ctx = BuildContext(targets=torch.tensor([0, 0, 1]), num_classes=2, seed=0, model=model, train_set=None,
                       hparams=None, features=features)
    info = TauNorm().finalize(model, ctx)
    assert info["tau"] == pytest.approx(1.3) and info["holdout_balanced_accuracy"] == pytest.approx(1.0)
    assert asked == ["holdout"]
    w = torch.tensor([[4.0, 0.0], [0.0, 1.0]])
    torch.testing.assert_close(model.classifier.weight, w / w.norm(dim=1, keepdim=True) ** 1.3)
    data["holdout"] = (torch.tensor([[1.0, 0.1], [0.1, 5.0]]), torch.tensor([0, 1]))  # every tau ties: keep tau 0
    model.classifier.weight.data.copy_(w)
    assert TauNorm().finalize(model, ctx)["tau"] == 0.0
    torch.testing.assert_close(model.classifier.weight, w)
    with pytest.raises(RebalanceError, match="cosine|CosineLinear"):
        TauNorm().finalize(small_model("cosine"), ctx)


@pytest.mark.parametrize("metric", ["cosine", "euclidean"])
def test_ncm_predicts_nearest_mean(metric: str) -> None:
    model = small_model()
    g = torch.Generator().manual_seed(3)
    feats, labels = torch.randn(40, 64, generator=g) + 2.0, torch.arange(40) % 4
    info = NCM(metric).finalize(model, context(model, features=lambda split: (feats, labels)))
    assert info == {"metric": metric} and isinstance(model.classifier, NCMClassifier)
    x = feats if metric == "euclidean" else F.normalize(feats, dim=-1)
    means = torch.stack([x[labels == c].mean(0) for c in range(4)])
    torch.testing.assert_close(model.classifier.means, means)
    q = torch.randn(25, 64, generator=g) + 2.0
    if metric == "euclidean":
        ref = torch.stack([torch.stack([(v - m).norm() for m in means]).argmin() for v in q])
    else:
        ref = torch.stack([torch.stack([F.cosine_similarity(v, m, dim=0) for m in means]).argmax() for v in q])
    assert torch.equal(model.classifier(q).argmax(-1), ref)
    assert "classifier.means" in model.state_dict()


def test_posthoc_logit_adjustment_subtracts_log_prior() -> None:
    model = small_model().eval()
    x = batch().images[:, 0]
    before = model.predict(x).detach()
    info = PostHocLogitAdjust(tau=0.7).finalize(model, context(model))
    prior = COUNTS.double() / COUNTS.sum()
    torch.testing.assert_close(model.predict(x).double(), before.double() - 0.7 * prior.log(), rtol=1e-5, atol=1e-5)
    assert info == {"tau": 0.7}
    with pytest.raises(RebalanceError, match="bias"):
        PostHocLogitAdjust().finalize(small_model("cosine"), context(model))


def naive_kd(student, teacher, y, weight, t):
    s, tt = student.double(), teacher.double()
    ce = -(s.log_softmax(-1).gather(1, y[:, None])).mean()
    pt = torch.exp(tt / t) / torch.exp(tt / t).sum(-1, keepdim=True)
    ps = torch.exp(s / t) / torch.exp(s / t).sum(-1, keepdim=True)
    kl = (pt * (pt.log() - ps.log())).sum(-1).mean()
    return ce + weight * t * t * kl


def test_kd_loss_values_and_gradients_match_naive() -> None:
    model = small_model()
    kd = KDRebalance(kd_weight=0.5, temperature=2.0)
    params = kd.setup(model)
    assert {id(p) for p in params} == {id(p) for p in model.classifier.parameters()}
    assert all(not p.requires_grad for p in model.backbone.parameters())
    b = batch(8)
    out = model(b.images)
    assert float(kd.loss(out, b, STATE).parts["kd"]) == pytest.approx(0.0, abs=1e-6)  # student == teacher at start
    with torch.no_grad():
        model.classifier.weight.add_(torch.randn_like(model.classifier.weight))
    teacher = kd.teacher(out.features[:, 0]).detach()
    out = model(b.images)
    got = kd.loss(out, b, STATE).total
    w, bias, h = (model.classifier.weight.detach().double().requires_grad_(),
                  model.classifier.bias.detach().double().requires_grad_(), out.features[:, 0].detach().double())
    ref = naive_kd(h @ w.t() + bias, teacher, b.targets, 0.5, 2.0)
    torch.testing.assert_close(got.double(), ref.detach(), rtol=1e-5, atol=1e-6)
    got.backward()
    ref.backward()
    torch.testing.assert_close(model.classifier.weight.grad.double(), w.grad, rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(model.classifier.bias.grad.double(), bias.grad, rtol=1e-4, atol=1e-6)
    assert any(k.startswith("teacher.") for k in kd.state_dict())


def test_kd_unfrozen_backbone_returns_param_groups() -> None:
    model = small_model()
    kd = KDRebalance(freeze_backbone=False, backbone_lr_scale=0.1)
    groups = kd.setup(model)
    assert [g["lr_scale"] for g in groups] == [1.0, 0.1]
    assert {id(p) for p in groups[1]["params"]} == {id(p) for p in model.backbone.parameters()}
    assert all(p.requires_grad for p in model.backbone.parameters())
    b = batch()
    out = model.eval()(b.images)
    torch.testing.assert_close(kd.teacher_logits(out, b), out.logits[:, 0])
    loss = kd.loss(model.train()(b.images), b, STATE).total
    loss.backward()
    assert all(p.grad is not None for p in model.backbone.parameters())
    assert all(p.grad is None for p in kd.teacher.parameters())
