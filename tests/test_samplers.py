"""Samplers: class frequencies match their formulas, determinism per (seed, epoch), k-global positives, pairs."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch.utils.data import BatchSampler

from ltreg.errors import DataError
from ltreg.samplers import (
    ClassAwareSampler,
    ClassBalancedSampler,
    InstanceSampler,
    KGlobalSampler,
    PairedSampler,
    ProgressiveSampler,
    RepeatPerClassSampler,
    ReverseSampler,
    SquareRootSampler,
    class_probabilities,
)

COUNTS = torch.tensor([400, 150, 60, 20, 8, 3])  # long-tailed, IF ~133
TARGETS = torch.repeat_interleave(torch.arange(6), COUNTS)
N = int(COUNTS.sum())
TOL = 0.01  # max abs deviation of class frequencies over >= 150k draws (std <= 0.0013)


def class_freq(sampler, epochs: int = 40) -> torch.Tensor:
    """Empirical class frequencies of a sampler's stream over several epochs."""
    hist = torch.zeros(6, dtype=torch.float64)
    for e in range(epochs):
        sampler.set_epoch(e)
        idx = sampler.epoch_indices()
        hist += torch.bincount(TARGETS[idx], minlength=6)
    return hist / hist.sum()


def by_formula(q: float) -> torch.Tensor:
    """Kang et al.'s p_j ∝ n_j^q written out independently of the module."""
    w = COUNTS.double() ** q
    return w / w.sum()


def test_class_probabilities_formula():
    n = torch.tensor([100.0, 10.0, 1.0])
    torch.testing.assert_close(class_probabilities(n, 0.0), torch.full((3,), 1 / 3, dtype=torch.float64))
    torch.testing.assert_close(class_probabilities(n, 1.0), torch.tensor([1.0, 10.0, 100.0]).double() / 111)
    torch.testing.assert_close(class_probabilities(n, -1.0), n.double() / 111)
    assert class_probabilities(torch.tensor([5, 0, 5]), -0.5)[1] == 0  # empty class, instance-like: p = 0
    with pytest.raises(DataError, match="class.*1"):
        class_probabilities(torch.tensor([5, 0, 5]), 0.5)


@pytest.mark.parametrize("gamma", [0.0, 0.5, 1.0])
def test_class_aware_frequencies(gamma):
    s = ClassAwareSampler(TARGETS, num_classes=6, seed=3, gamma=gamma, num_samples=4000)
    assert (class_freq(s) - by_formula(-gamma)).abs().max() < TOL


@pytest.mark.parametrize(
    ("cls", "q"), [(ClassBalancedSampler, 0.0), (ReverseSampler, -1.0), (SquareRootSampler, 0.5)]
)
def test_named_samplers_frequencies(cls, q):
    s = cls(TARGETS, seed=1, num_samples=4000)
    assert (class_freq(s) - by_formula(q)).abs().max() < TOL


def test_reverse_is_n_max_over_n():
    w = COUNTS.max() / COUNTS.double()
    torch.testing.assert_close(ReverseSampler(TARGETS).class_probs(), w / w.sum())


@pytest.mark.parametrize(("epoch", "q"), [(0, 1.0), (10, 0.0), (25, 0.0)])
def test_progressive_endpoints(epoch, q):
    s = ProgressiveSampler(TARGETS, seed=2, total_epochs=10, num_samples=4000)
    hist = torch.zeros(6, dtype=torch.float64)
    for rep in range(40):  # same epoch, different seeds: the epoch fixes the mixture
        s.seed = rep
        s.set_epoch(epoch)
        hist += torch.bincount(TARGETS[s.epoch_indices()], minlength=6)
    assert (hist / hist.sum() - by_formula(q)).abs().max() < TOL


def test_progressive_midpoint_mixture():
    s = ProgressiveSampler(TARGETS, total_epochs=4)
    s.set_epoch(1)
    torch.testing.assert_close(s.class_probs(), 0.75 * by_formula(1.0) + 0.25 * by_formula(0.0))


def test_within_class_uniform():
    s = ClassBalancedSampler(TARGETS, seed=0, num_samples=60_000)
    idx = s.epoch_indices()
    tail = idx[TARGETS[idx] == 4] - int(COUNTS[:4].sum())  # the 8 images of class 4
    freq = torch.bincount(tail, minlength=8).double() / tail.numel()
    assert (freq - 1 / 8).abs().max() < 0.02


def test_instance_permutation_and_determinism():
    s = InstanceSampler(TARGETS, seed=7)
    s.set_epoch(3)
    a = s.epoch_indices()
    assert torch.equal(a.sort().values, torch.arange(N))
    assert list(s) == a.tolist() and len(s) == N
    other = InstanceSampler(TARGETS, seed=7)
    other.set_epoch(3)
    assert torch.equal(other.epoch_indices(), a)  # same (seed, epoch) on another "process"
    s.set_epoch(4)
    assert not torch.equal(s.epoch_indices(), a)
    assert not torch.equal(
        InstanceSampler(TARGETS, seed=8).epoch_indices(), InstanceSampler(TARGETS).epoch_indices()
    )


def test_class_aware_deterministic_per_epoch():
    a, b = ClassAwareSampler(TARGETS, seed=5), ClassAwareSampler(TARGETS, seed=5)
    a.set_epoch(2), b.set_epoch(2)
    assert torch.equal(a.epoch_indices(), b.epoch_indices())
    b.set_epoch(1)
    assert not torch.equal(a.epoch_indices(), b.epoch_indices())


def test_from_context():
    ctx = SimpleNamespace(targets=TARGETS, num_classes=8, seed=11)
    s = ClassAwareSampler.from_context(ctx, gamma=-1.0)
    assert (s.num_classes, s.seed, s.gamma) == (8, 11, -1.0)
    assert torch.equal(s.epoch_indices(), ClassAwareSampler(TARGETS, 8, 11, gamma=-1.0).epoch_indices())


def test_kglobal_never_self_same_label_distinct():
    t = torch.tensor([0] * 7 + [1] * 2 + [2] * 3)  # class 1 has 2 images, class 2 has 3 (< k + 1 = 4)
    s = KGlobalSampler(t, seed=0, k=3)
    assert (s.extra_role, s.k, len(s)) == ("positives", 3, 12)
    recs = []
    for e in range(300):
        s.set_epoch(e)
        recs.append(s.epoch_indices())
    r = torch.cat(recs)
    q, pos = r[:, 0], r[:, 1:]
    assert torch.equal(q.view(300, 12).sort(1).values[0], torch.arange(12))  # base stream: permutation
    assert not (pos == q[:, None]).any()
    assert (t[pos] == t[q][:, None]).all()
    big = t[q] == 0  # 6 other images >= k: positives are distinct
    p0 = pos[big].sort(1).values
    assert ((p0[:, 1:] != p0[:, :-1]).all(1)).all()
    pair = t[q] == 1  # one other image: it fills all k slots (with replacement)
    assert (pos[pair] == 15 - q[pair][:, None]).all()  # images 7 <-> 8
    three = t[q] == 2  # two other images for three slots: every record repeats one, both get used
    p2 = pos[three].sort(1).values
    assert ((p2[:, 1:] == p2[:, :-1]).any(1)).all() and (p2[:, 0] != p2[:, -1]).any()
    slot_freq = (
        torch.bincount(pos[big][:, 0], minlength=7).double()[:7] / big.sum()
    )  # each slot uniform over others
    assert (slot_freq - 6 / 7 / 6).abs().max() < 0.03


def test_kglobal_singleton_class():
    t = torch.tensor([0, 0, 0, 1, 2, 2])
    with pytest.raises(DataError, match=r"class\(es\) 1 .*allow_self=True"):
        KGlobalSampler(t, k=3)
    s = KGlobalSampler(t, k=2, allow_self=True)
    r = s.epoch_indices()
    assert (r[r[:, 0] == 3, 1:] == 3).all()  # the singleton is its own positive
    assert not (r[r[:, 0] != 3, 1:] == r[r[:, 0] != 3, :1]).any()  # others still never return themselves
    with pytest.raises(DataError, match="k >= 1"):
        KGlobalSampler(t, k=0, allow_self=True)


def test_kglobal_class_aware_base_and_batching():
    s = KGlobalSampler(TARGETS, seed=1, k=2, base="class-aware", gamma=1.0, num_samples=64)
    batches = list(BatchSampler(s, batch_size=16, drop_last=False))
    assert len(batches) == 4 and all(isinstance(r, tuple) and len(r) == 3 for b in batches for r in b)


def test_paired_streams():
    s = PairedSampler(TARGETS, seed=4, gamma=0.5)
    assert s.extra_role == "pair" and len(s) == N
    hist = torch.zeros(6, dtype=torch.float64)
    for e in range(250):
        s.set_epoch(e)
        r = s.epoch_indices()
        assert r.shape == (N, 2)
        assert torch.equal(r[:, 0].sort().values, torch.arange(N))
        hist += torch.bincount(TARGETS[r[:, 1]], minlength=6)
    assert (hist / hist.sum() - by_formula(-0.5)).abs().max() < TOL
    inst = InstanceSampler(TARGETS, seed=4)
    inst.set_epoch(249)
    assert torch.equal(r[:, 0], inst.epoch_indices())
    ca = ClassAwareSampler(TARGETS, seed=4)
    ca.set_epoch(249)
    assert not torch.equal(r[:, 1], ca.epoch_indices())  # its own sub-stream, independent of the first


def test_repeat_per_class_runs_and_length():
    s = RepeatPerClassSampler(TARGETS, seed=0)
    assert len(s) == 6 * 400
    idx = s.epoch_indices()
    assert idx.numel() == 2400
    runs = TARGETS[idx].view(-1, 4)
    assert (runs == runs[:, :1]).all()
    cycles = runs[:, 0].view(-1, 6).sort(1).values  # each block of C runs is a class cycle
    assert (cycles == torch.arange(6)).all()
    for c in range(6):  # each class is read pass by pass: every pass covers all its images once
        n = int(COUNTS[c])
        seq = idx[TARGETS[idx] == c]
        full = seq[: seq.numel() // n * n].view(-1, n)
        assert (full.sort(1).values == full.sort(1).values[:1]).all()
        assert full.shape[0] == 1 or (full != full[:1]).any()  # each pass reshuffled
    assert len(RepeatPerClassSampler(TARGETS, num_samples_cls=3, num_samples=10).epoch_indices()) == 10


def test_validation():
    with pytest.raises(DataError, match="1-D"):
        InstanceSampler(TARGETS[:640].view(2, -1))
    with pytest.raises(DataError, match="integer"):
        InstanceSampler(TARGETS.float())
    with pytest.raises(DataError, match="num_classes=6"):
        InstanceSampler(TARGETS, num_classes=4)
    with pytest.raises(DataError, match="class.*6"):
        ClassAwareSampler(TARGETS, num_classes=7, gamma=0.5)
    assert len(ClassAwareSampler(TARGETS, num_classes=7, gamma=-1.0)) == N  # empty class fine when p(c) = 0
    with pytest.raises(DataError, match="unknown core sampler"):
        PairedSampler(TARGETS, second="nope")


@st.composite
def labels(draw):
    kind = draw(st.sampled_from(["single", "distinct", "long-tailed"]))
    if kind == "single":
        return torch.zeros(draw(st.integers(1, 30)), dtype=torch.long)
    if kind == "distinct":
        return torch.randperm(draw(st.integers(1, 30)))
    c = draw(st.integers(2, 8))
    head, ratio = draw(st.integers(2, 40)), draw(st.floats(0.3, 0.9))
    counts = torch.tensor([max(1, round(head * ratio**i)) for i in range(c)])
    return torch.repeat_interleave(torch.arange(c), counts)[torch.randperm(int(counts.sum()))]


SPECS = [
    (InstanceSampler, {}),
    (ClassAwareSampler, {"gamma": 0.5}),
    (ClassBalancedSampler, {}),
    (ReverseSampler, {"num_samples": 17}),
    (SquareRootSampler, {}),
    (ProgressiveSampler, {"total_epochs": 3}),
    (RepeatPerClassSampler, {"num_samples_cls": 3}),
    (KGlobalSampler, {"k": 3, "allow_self": True}),
    (PairedSampler, {"gamma": 1.0}),
]


@settings(max_examples=60, deadline=None)
@given(t=labels(), spec=st.sampled_from(SPECS), seed=st.integers(0, 2**40), epoch=st.integers(0, 5))
def test_any_labels_any_sampler(t, spec, seed, epoch):
    cls, kw = spec
    s = cls(t, seed=seed, **kw)
    s.set_epoch(epoch)
    idx = s.epoch_indices()
    out = list(s)
    assert len(out) == len(s) == idx.shape[0]
    assert idx.numel() == 0 or (0 <= int(idx.min()) and int(idx.max()) < t.numel())
    if s.extra_role is not None:
        assert all(isinstance(r, tuple) and len(r) == idx.shape[1] for r in out)
    if cls is KGlobalSampler:
        assert (t[idx[:, 1:]] == t[idx[:, :1]]).all()
