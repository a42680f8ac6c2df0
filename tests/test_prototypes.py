"""Prototype modules: EMA centroids = sequential EMA, Sinkhorn = SwAV loop, gradients, coreset selection."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from ltreg.models.ltmodel import LTModel, LTModelConfig
from ltreg.prototypes import (
    ClassifierPrototypes,
    CoresetPrototypes,
    EMACentroids,
    LearnablePrototypes,
    coreset_budget,
    kcenter_select,
    sinkhorn,
)
from ltreg.step import Batch, BuildContext, Outputs, StepState


def small_model(classifier: str = "linear") -> LTModel:
    return LTModel(LTModelConfig(backbone="resnet8", num_classes=4, in_chans=1, proj_dim=8, classifier=classifier))


# -- EMA centroids ------------------------------------------------------------------------------
def naive_ema(batches, num_classes, dim, m, normalize):
    c = torch.zeros(num_classes, dim, dtype=torch.float64)
    init = [False] * num_classes
    for z, y in batches:
        z, y = z.double(), y.tolist()
        before = list(init)
        for k in set(y):
            if not before[k]:
                c[k] = z[[i for i, t in enumerate(y) if t == k]].mean(0)
                init[k] = True
        for i, k in enumerate(y):
            if before[k]:
                c[k] = m * c[k] + (1 - m) * z[i]
        if normalize:
            for k in set(y):
                c[k] = c[k] / c[k].norm()
    return c, init


@pytest.mark.parametrize("normalize", [True, False])
def test_ema_centroids_match_sequential_loop(normalize: bool) -> None:
    g = torch.Generator().manual_seed(0)
    c, d, m = 7, 5, 0.9
    labels = [
        torch.tensor([0, 0, 1, 2, 2, 2, 0]),  # repeats; 3..6 absent
        torch.tensor([2, 0, 2, 2, 2, 2, 1, 0, 2, 4]),  # class 4 a singleton, first seen here
        torch.tensor([4, 4, 1, 3, 3, 0]),
        torch.randint(0, 5, (40,), generator=g),  # class 6 never seen
    ]
    batches = [(F.normalize(torch.randn(len(y), d, generator=g), dim=-1), y) for y in labels]
    ema = EMACentroids(c, d, momentum=m, view=1, normalize=normalize)
    for z, y in batches:
        views = torch.stack([torch.randn_like(z), z], dim=1)  # view 1 is the one used
        out = Outputs(z=views, logits=torch.zeros(len(y), 2, c), features=torch.zeros(len(y), 2, 3))
        ema.on_step_end(out, Batch(torch.zeros(len(y), 2, 1, 2, 2), y, torch.arange(len(y))), StepState(torch.ones(c), c))
    ref, init = naive_ema(batches, c, d, m, normalize)
    torch.testing.assert_close(ema.centroids().double(), ref, atol=1e-6, rtol=1e-5)
    assert ema.initialized.tolist() == init and init[6] is False
    assert torch.equal(ema.prototypes(), ema.centroids())
    assert {"centers", "initialized"} <= set(ema.state_dict())


def test_ema_centroids_gathers_over_processes() -> None:
    z, y = F.normalize(torch.randn(6, 3), dim=-1), torch.tensor([0, 1, 1, 0, 2, 1])
    one = EMACentroids(3, 3, momentum=0.5)
    one.update(torch.cat([z, z.flip(0)]), torch.cat([y, y.flip(0)]))
    two = EMACentroids(3, 3, momentum=0.5)
    st = StepState(torch.ones(3), 3, gather_nograd=lambda t: torch.cat([t, t.flip(0)]))
    out = Outputs(z=z[:, None], logits=torch.zeros(6, 1, 3), features=torch.zeros(6, 1, 2))
    two.on_step_end(out, Batch(torch.zeros(6, 1, 1, 2, 2), y, torch.arange(6)), st)
    torch.testing.assert_close(one.centroids(), two.centroids())


# -- Sinkhorn -------------------------------------------------------------------------------------
def naive_sinkhorn(scores, eps, iters):
    b, k = len(scores), len(scores[0])
    q = [[torch.exp(torch.tensor(scores[i][j] / eps, dtype=torch.float64)).item() for j in range(k)] for i in range(b)]
    tot = sum(sum(r) for r in q)
    q = [[v / tot for v in r] for r in q]
    for _ in range(iters):
        for j in range(k):
            col = sum(q[i][j] for i in range(b))
            for i in range(b):
                q[i][j] /= col * k
        for i in range(b):
            row = sum(q[i])
            q[i] = [v / (row * b) for v in q[i]]
    return torch.tensor([[v * b for v in r] for r in q], dtype=torch.float64)


@pytest.mark.parametrize("iters", [1, 3, 7])
def test_sinkhorn_matches_naive_loop(iters: int) -> None:
    g = torch.Generator().manual_seed(iters)
    z, c = F.normalize(torch.randn(9, 6, generator=g), dim=-1), F.normalize(torch.randn(5, 6, generator=g), dim=-1)
    s = z @ c.t()
    q = sinkhorn(s, eps=0.05, iters=iters)
    torch.testing.assert_close(q.double(), naive_sinkhorn(s.tolist(), 0.05, iters), rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(q.sum(1), torch.ones(9))  # each sample's assignment is a distribution
    assert not q.requires_grad


def test_sinkhorn_converges_to_equipartition_and_is_shift_invariant() -> None:
    s = torch.randn(12, 4).requires_grad_()
    q = sinkhorn(s, eps=0.5, iters=300)
    torch.testing.assert_close(q.sum(0), torch.full((4,), 3.0), atol=1e-4, rtol=0)  # B/K per prototype
    torch.testing.assert_close(sinkhorn(s + 100.0, eps=0.5, iters=3), sinkhorn(s, eps=0.5, iters=3))
    assert q.grad_fn is None


def test_learnable_prototypes_renormalise_after_step() -> None:
    p = LearnablePrototypes(dim=8, num_classes=4)
    assert p.weight.shape == (12, 8) and p.weight.requires_grad
    with torch.no_grad():
        p.weight.mul_(3.0)
    p.on_step_end(None, None, None)  # type: ignore[arg-type]
    torch.testing.assert_close(p.weight.norm(dim=1), torch.ones(12))
    q = p.assign(torch.randn(5, 8))
    assert q.shape == (5, 12) and not q.requires_grad


# -- classifier-derived prototypes ---------------------------------------------------------------
@pytest.mark.parametrize("kind,classifier", [("linear", "linear"), ("mlp", "cosine")])
def test_classifier_prototypes_gradient_flows_into_transform_and_weights(kind: str, classifier: str) -> None:
    model = small_model(classifier)
    ctx = BuildContext(targets=torch.arange(4), num_classes=4, seed=0, model=model, train_set=None, hparams=None)
    protos = ClassifierPrototypes.from_context(ctx, kind=kind)
    p = protos.prototypes()
    assert p.shape == (4, 8)
    torch.testing.assert_close(p.norm(dim=1), torch.ones(4))
    (p * torch.randn(4, 8)).sum().backward()
    assert model.classifier.weight.grad is not None and model.classifier.weight.grad.abs().sum() > 0
    assert all(t.grad is not None and t.grad.abs().sum() > 0 for t in protos.transform.parameters())
    assert all(k.startswith("transform.") for k in protos.state_dict())  # the model is not duplicated
    assert not any(p is q for p in protos.parameters() for q in model.parameters())


# -- coreset prototypes -----------------------------------------------------------------------------
COUNTS = torch.tensor([60, 25, 8, 3])
TARGETS = torch.repeat_interleave(torch.arange(4), COUNTS)[torch.randperm(96, generator=torch.Generator().manual_seed(1))]


class FakeEmbed:
    """A fixed table of embeddings; each pipeline adds its own offset; counts calls."""

    def __init__(self, n: int, d: int = 8) -> None:
        g = torch.Generator().manual_seed(2)
        self.table = torch.randn(n, d, generator=g)
        self.offset = {"none": torch.zeros(d), "sim": torch.randn(d, generator=g), "rand": torch.randn(d, generator=g)}
        self.calls: list[tuple[int, str, bool]] = []

    def __call__(self, idx, pipeline, use_key, slot=0):
        self.calls.append((len(idx), pipeline, use_key))
        return F.normalize(self.table[idx] + self.offset[pipeline], dim=-1)


@pytest.mark.parametrize("selection", ["kcenter", "random"])
def test_coreset_sizes_and_prototypes_are_normalised_class_means(selection: str) -> None:
    embed = FakeEmbed(96)
    ctx = BuildContext(targets=TARGETS, num_classes=4, seed=3, model=small_model(), train_set=None, hparams=None,
                       embed=embed)
    core = CoresetPrototypes.from_context(ctx, views=("sim", "rand"), selection=selection, use_key=False)
    assert core.protos.shape == (2, 4, 8)
    core.on_train_start(StepState(COUNTS, 4))
    idx = core.indices
    assert len(set(idx.tolist())) == len(idx)
    assert torch.bincount(TARGETS[idx], minlength=4).tolist() == [6, 5, 5, 3]  # max(min(n,5), round(.1 n))
    core.on_epoch_start(StepState(COUNTS, 4))
    for q, pipe in enumerate(("sim", "rand")):
        e = embed(idx, pipe, False)
        means = torch.stack([e[TARGETS[idx] == c].mean(0) for c in range(4)])
        torch.testing.assert_close(core.prototypes(q), F.normalize(means, dim=-1))
    assert all(use_key is False for *_, use_key in embed.calls)
    # a restored coreset is not re-selected
    again = CoresetPrototypes.from_context(ctx, views=("sim", "rand"), selection=selection)
    again.load_state_dict(core.state_dict())
    n_calls = len(embed.calls)
    again.on_train_start(StepState(COUNTS, 4))
    assert len(embed.calls) == n_calls and torch.equal(again.indices, idx)


def naive_kcenter(emb, y, budget):
    chosen = []
    for c in range(len(budget)):
        members = [i for i in range(len(y)) if y[i] == c]
        mean = emb[members].mean(0)
        first = min(members, key=lambda i: (float(((emb[i] - mean) ** 2).sum()), i))
        sel = [first]
        while len(sel) < budget[c]:
            rest = [i for i in members if i not in sel]
            far = [min(float(((emb[i] - emb[j]) ** 2).sum()) for j in sel) for i in rest]
            best = max(far)
            sel.append(min(i for i, f in zip(rest, far) if f == best))
        chosen += sel
    return sorted(chosen)


def test_kcenter_matches_naive_greedy_and_covers_clusters() -> None:
    g = torch.Generator().manual_seed(4)
    emb = torch.randn(96, 5, generator=g, dtype=torch.float64)
    budget = coreset_budget(COUNTS, 0.1, 5)
    assert kcenter_select(emb, TARGETS, budget).tolist() == naive_kcenter(emb, TARGETS.tolist(), budget.tolist())
    centers = torch.tensor([[10.0, 0], [0, 10.0], [-10.0, -10.0]])
    pts = centers.repeat_interleave(10, 0) + 0.1 * torch.randn(30, 2, generator=g)
    pick = kcenter_select(pts, torch.zeros(30, dtype=torch.long), torch.tensor([3]))
    assert sorted((pick // 10).tolist()) == [0, 1, 2]
