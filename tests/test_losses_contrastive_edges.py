"""Edges of the contrastive losses: documented defaults, the index bookkeeping of ``contrast_set``, the corner
cases of ``sample_positives``, the modules' branches, ``state_contrast`` / ``global_mean`` on one process and
the exact error texts. Values are checked against naive float64 loops (the style of test_losses_contrastive.py)."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F

from ltreg.losses import (
    BCLLoss,
    ContrastiveResult,
    KCLLoss,
    PaCoLoss,
    SupConLoss,
    bcl,
    contrast_set,
    global_mean,
    kcl,
    paco,
    sample_positives,
    state_contrast,
    supcon,
)
from ltreg.step import Batch, Outputs, StepState

TOL = {"rtol": 1e-9, "atol": 1e-10}
B, V, D, C = 6, 2, 5, 4
LABELS = torch.tensor([0, 0, 1, 0, 2, 1])


def feats(b=B, v=V, d=D, seed=0):
    g = torch.Generator().manual_seed(seed)
    return F.normalize(torch.randn(b, v, d, generator=g, dtype=torch.float64), dim=-1)


def gen(seed=0):
    return torch.Generator().manual_seed(seed)


def naive_mean_loss(anchors, cols, positives, tau):
    """Mean over anchors with positives of -1/|P| sum_p log(exp(s_ip/tau) / sum_{a in cols(i)} exp(s_ia/tau))."""
    out = []
    for i, zi in enumerate(anchors):
        if not positives[i]:
            continue
        den = sum(torch.exp(torch.dot(zi, cols[a]) / tau) for a in range(len(cols)) if a != i)
        out.append(
            -sum(torch.log(torch.exp(torch.dot(zi, cols[p]) / tau) / den) for p in positives[i])
            / len(positives[i])
        )
    return sum(out) / len(out)


def naive_supcon(z, y, tau):
    zf, yf = z.reshape(-1, z.shape[-1]), y.repeat_interleave(z.shape[1])
    pos = [[j for j in range(len(yf)) if j != i and yf[j] == yf[i]] for i in range(len(yf))]
    return naive_mean_loss(list(zf), list(zf), pos, tau)


def state_for(counts=(10, 6, 3, 1), **kw):
    return StepState(class_counts=torch.tensor(counts, dtype=torch.float64), num_classes=len(counts), **kw)


def batch_for(y, v=V):
    return Batch(images=torch.zeros(len(y), v, 1, 1, 1), targets=y, index=torch.arange(len(y)))


def message(excinfo) -> str:
    return str(excinfo.value)


# --- contrast_set ------------------------------------------------------------------------------------------


def test_contrast_set_views_then_keys_index_every_anchor_own_columns():
    """Three views and keys: each anchor's other views in cyclic order after its own view, then its own key,
    which sits after all B' * V view columns of the global batch."""
    b, v = 2, 3
    z, keys = feats(b=b, v=v), feats(b=2 * b, v=1, seed=1)[:, 0]
    gz = torch.cat([feats(b=b, v=v, seed=2), z])  # this process holds the second half (offset b)
    gy = torch.tensor([1, 0, 1, 2])
    cs = contrast_set(z, gy[b:], global_z=gz, global_labels=gy, offset=b, keys=keys)
    assert torch.equal(cs.z, torch.cat([gz.reshape(-1, D), keys]))
    assert cs.labels.tolist() == [1, 1, 1, 0, 0, 0, 1, 1, 1, 2, 2, 2, 1, 0, 1, 2]
    assert cs.self_index.tolist() == [6, 7, 8, 9, 10, 11]
    want = []
    for i in range(b):
        for view in range(v):
            base = (b + i) * v
            want.append([base + (view + 1) % v, base + (view + 2) % v, 2 * b * v + b + i])
    assert cs.own_index.tolist() == want
    assert cs.own_index.dtype == torch.long


def test_contrast_set_two_views_with_keys_has_one_view_and_one_key_per_anchor():
    z, keys = feats(), feats(v=1, seed=1)[:, 0]
    cs = contrast_set(z, LABELS, keys=keys)
    assert cs.own_index.shape == (B * V, 2)
    assert cs.own_index.tolist() == [[b * V + 1 - v, B * V + b] for b in range(B) for v in range(V)]


def test_contrast_set_queue_only_has_no_own_columns_and_no_copy():
    z = feats()
    queue, qy = feats(b=4, v=1, seed=3)[:, 0], torch.tensor([0, -1, 2, 1])
    cs = contrast_set(z, LABELS, queue=queue, queue_labels=qy, include_views=False)
    assert cs.self_index is None
    assert cs.own_index.shape == (B * V, 0) and cs.own_index.dtype == torch.long
    assert cs.z.data_ptr() == queue.data_ptr() and torch.equal(cs.labels, qy)  # a single part is not copied
    views = contrast_set(z, LABELS)
    assert views.z.data_ptr() == z.data_ptr() and views.own_index.shape == (B * V, V - 1)


def test_contrast_set_error_texts():
    z = feats()
    with pytest.raises(ValueError) as e:
        contrast_set(z, LABELS, queue=z[:, 0])
    assert message(e) == "queue needs queue_labels (use -1 for empty slots)"
    with pytest.raises(ValueError) as e:
        contrast_set(z, LABELS, include_views=False)
    assert message(e) == "the contrast set is empty: include the views or give keys / a queue"


# --- sample_positives --------------------------------------------------------------------------------------


def test_sample_positives_pads_with_minus_one_when_k_exceeds_the_available():
    labels = torch.zeros(5, dtype=torch.long)
    out = sample_positives(
        torch.tensor([0]), labels, 5, torch.tensor([[1, 3, 3]]), gen()
    )  # 3 listed twice, apart
    assert sorted(out[0, :3].tolist()) == [0, 2, 4]
    assert out[0, 3:].tolist() == [-1, -1]


def test_sample_positives_ignores_pads_and_other_label_exclusions():
    """A -1 pad never excludes column 0, and an excluded column of another label takes nothing from the block."""
    labels = torch.tensor([0, 0, 0, 1])
    out = sample_positives(torch.tensor([0]), labels, 3, torch.tensor([[-1, 3]]), gen())
    assert sorted(out[0].tolist()) == [0, 1, 2]


def test_sample_positives_anchor_without_label_or_positive_gets_nothing():
    labels = torch.tensor([-1, -1, 0, 1, -1])
    out = sample_positives(torch.tensor([-1, 2, 1]), labels, 2, torch.tensor([[0], [-1], [3]]), gen())
    assert out.tolist() == [
        [-1, -1],
        [-1, -1],
        [-1, -1],
    ]  # -1 = empty slot; class 2 absent; class 1 only itself


def test_sample_positives_never_returns_the_anchor_and_is_seeded():
    labels = torch.tensor([0, 1, 0, 0, 1, 0, 0])
    anchors = torch.tensor([0, 0, 0]).repeat(200)
    own = torch.tensor([[0], [2], [6]]).repeat(200, 1)  # the anchor's own column
    out = sample_positives(anchors, labels, 2, own, gen(7))
    assert (out != own).all() and (out >= 0).all() and (labels[out] == 0).all()
    assert (out[:, 0] != out[:, 1]).all()
    assert torch.equal(out, sample_positives(anchors, labels, 2, own, gen(7)))
    assert not torch.equal(out, sample_positives(anchors, labels, 2, own, gen(8)))
    assert sample_positives(anchors, labels, 0, own, gen()).shape == (600, 0)


# --- functional defaults -----------------------------------------------------------------------------------


def test_supcon_default_temperature_is_0_1():
    z = feats()
    got = supcon(z, LABELS).loss
    torch.testing.assert_close(got, naive_supcon(z, LABELS, 0.1), **TOL)
    assert torch.equal(got, supcon(z, LABELS, 0.1).loss)
    assert not torch.allclose(got, supcon(z, LABELS, 0.2).loss)


def test_kcl_defaults_k_6_and_temperature_0_07():
    z, y = feats(b=8, seed=1), torch.zeros(8, dtype=torch.long)  # 14 candidates per anchor: k matters
    got = kcl(z, y, generator=gen(1)).loss
    assert torch.equal(got, kcl(z, y, k=6, temperature=0.07, generator=gen(1)).loss)
    assert not torch.allclose(got, kcl(z, y, k=7, temperature=0.07, generator=gen(1)).loss)
    assert not torch.allclose(got, kcl(z, y, k=6, temperature=0.1, generator=gen(1)).loss)
    cs = contrast_set(z, y)
    drawn = sample_positives(
        y.repeat_interleave(V), cs.labels, 6, torch.cat([cs.self_index.unsqueeze(1), cs.own_index], 1), gen(1)
    )
    assert (drawn >= 0).all()
    pos = [cs.own_index[i].tolist() + drawn[i].tolist() for i in range(16)]
    zf = z.reshape(-1, D)
    torch.testing.assert_close(got, naive_mean_loss(list(zf), list(zf), pos, 0.07), **TOL)


def test_kcl_anchor_without_positive_counts_zero():
    z = feats(v=1)
    res = kcl(z, LABELS, k=3, temperature=0.5, generator=gen(), reduction="none")
    assert res.num_pos.tolist() == [2, 2, 1, 2, 0, 1] and res.loss[4] == 0


def test_bcl_default_temperature_is_0_07():
    z, protos = feats(), F.normalize(torch.randn(C, D, dtype=torch.float64, generator=gen(5)), dim=-1)
    got = bcl(z, LABELS, protos).loss
    assert torch.equal(got, bcl(z, LABELS, protos, temperature=0.07).loss)
    assert not torch.allclose(got, bcl(z, LABELS, protos, temperature=0.1).loss)


@pytest.mark.parametrize(
    ("name", "value", "other"),
    [("alpha", 0.05, 0.5), ("beta", 1.0, 2.0), ("gamma", 1.0, 2.0), ("temperature", 0.2, 0.5)],
)
def test_paco_defaults(name, value, other):
    z = feats()
    logits = torch.randn(B, V, C, dtype=torch.float64, generator=gen(2))
    log_prior = torch.tensor([0.5, 0.3, 0.15, 0.05], dtype=torch.float64).log()
    got = paco(z, LABELS, logits, log_prior).loss
    torch.testing.assert_close(got, paco(z, LABELS, logits, log_prior, **{name: value}).loss, rtol=0, atol=0)
    assert not torch.allclose(got, paco(z, LABELS, logits, log_prior, **{name: other}).loss)


# --- modules -----------------------------------------------------------------------------------------------


def test_supcon_module_default_temperature():
    z = feats()
    outputs, batch = Outputs(z=z, logits=torch.zeros(B, V, C), features=z), batch_for(LABELS)
    got = SupConLoss()(outputs, batch, state_for()).total
    torch.testing.assert_close(got, naive_supcon(z, LABELS, 0.1), **TOL)
    assert torch.equal(got, SupConLoss(temperature=0.1)(outputs, batch, state_for()).total)
    assert not torch.allclose(got, SupConLoss(temperature=0.3)(outputs, batch, state_for()).total)


def test_kcl_module_defaults_views_and_parts():
    z, y = feats(b=8, v=3, seed=1), torch.zeros(8, dtype=torch.long)
    outputs, batch, state = (
        Outputs(z=z, logits=torch.zeros(8, 3, C), features=z),
        batch_for(y, 3),
        state_for(),
    )
    got = KCLLoss()(outputs, batch, state)
    assert set(got.parts) == {"kcl"} and torch.equal(got.parts["kcl"], got.total)
    assert torch.equal(got.total, KCLLoss(temperature=0.07, k=6)(outputs, batch, state).total)
    assert not torch.allclose(got.total, KCLLoss(temperature=0.07, k=7)(outputs, batch, state).total)
    assert not torch.allclose(got.total, KCLLoss(temperature=0.1, k=6)(outputs, batch, state).total)
    two = KCLLoss(temperature=0.2, k=2, views=(0, 2))(outputs, batch, state).total
    want = kcl(z[:, [0, 2]], y, k=2, temperature=0.2, generator=gen(0)).loss  # seed 0, step 0, rank 0
    torch.testing.assert_close(two, want, **TOL)


def test_kcl_module_seed_derives_from_run_seed_step_and_rank():
    """Rank 1 of two (keys gathered, views not): the draws use seed (seed * 1_000_003 + global_step) * 4099 + rank."""
    z, keys = feats(b=8, v=1, seed=1), feats(b=8, v=1, seed=2)[:, 0]
    y = torch.tensor([0, 0, 0, 0, 0, 1, 1, 0])
    outputs = Outputs(z=z, logits=torch.zeros(8, 1, C), features=z, extra={"key_z": keys})
    other_keys, other_y = feats(b=8, v=1, seed=3)[:, 0], torch.tensor([0, 1, 0, 0, 1, 0, 0, 0])

    def gather_nograd(t):
        return torch.cat([other_keys if t.dim() == 2 else other_y, t])

    state = state_for(
        seed=5, epoch=2, step=3, steps_per_epoch=10, rank=1, world_size=2, gather_nograd=gather_nograd
    )
    got = KCLLoss(temperature=0.3, k=3)(outputs, batch_for(y, 1), state).total
    cs = contrast_set(
        z,
        y,
        global_labels=torch.cat([other_y, y]),
        offset=8,
        keys=torch.cat([other_keys, keys]),
        include_views=False,
    )
    seed = (5 * 1_000_003 + 23) * 4099 + 1
    want = kcl(z, y, k=3, temperature=0.3, generator=gen(seed), contrast=cs).loss
    torch.testing.assert_close(got, want, **TOL)
    for wrong in (
        seed - 2,
        (5 * 1_000_003 - 23) * 4099 + 1,
        (5 * 1_000_004 + 23) * 4099 + 1,
        (5 * 1_000_003 + 23) * 4100 + 1,
    ):
        assert not torch.allclose(
            got, kcl(z, y, k=3, temperature=0.3, generator=gen(wrong), contrast=cs).loss
        )


def test_kcl_module_rejects_negative_k_with_its_text():
    assert KCLLoss(k=0).k == 0
    with pytest.raises(ValueError) as e:
        KCLLoss(k=-1)
    assert message(e) == "KCL k must be >= 0, got -1"


def bcl_setup():
    z = feats(v=3)
    logits = torch.randn(B, 3, C, dtype=torch.float64, generator=gen(4))
    protos = F.normalize(torch.randn(C, D, dtype=torch.float64, generator=gen(5)), dim=-1)
    outputs = Outputs(z=z, logits=logits, features=z)
    return z, logits, protos, outputs, state_for(prototypes=SimpleNamespace(prototypes=lambda: protos))


def test_bcl_module_defaults_and_parts():
    z, logits, protos, outputs, state = bcl_setup()
    batch = batch_for(LABELS, 3)
    got = BCLLoss()(outputs, batch, state)
    ce = F.cross_entropy(logits[:, 0] + state.prior.log(), LABELS)
    con = bcl(z, LABELS, protos, temperature=0.07).loss
    torch.testing.assert_close(got.total, 1.0 * ce + 0.35 * con, **TOL)
    assert set(got.parts) == {"ce", "bcl"}
    torch.testing.assert_close(got.parts["ce"], ce, **TOL)
    torch.testing.assert_close(got.parts["bcl"], con, **TOL)
    explicit = BCLLoss(temperature=0.07, alpha=1.0, beta=0.35)(outputs, batch, state).total
    torch.testing.assert_close(got.total, explicit, rtol=0, atol=0)
    for other in ({"temperature": 0.1}, {"alpha": 2.0}, {"beta": 1.0}):
        assert not torch.allclose(got.total, BCLLoss(**other)(outputs, batch, state).total)


def test_bcl_module_without_prototypes_error_text():
    _, _, _, outputs, _ = bcl_setup()
    with pytest.raises(ValueError) as e:
        BCLLoss()(outputs, batch_for(LABELS, 3), state_for())
    assert message(e) == (
        "BCLLoss needs a prototype part (e.g. 'classifier-derived') exposing .prototypes() -> [C, D]"
    )


def test_paco_module_defaults_passes_every_setting_and_parts():
    z, logits, _, outputs, state = bcl_setup()
    batch = batch_for(LABELS, 3)
    got = PaCoLoss()(outputs, batch, state)
    assert set(got.parts) == {"paco"} and torch.equal(got.parts["paco"], got.total)
    want = paco(z, LABELS, logits, state.prior.log(), alpha=0.05, beta=1.0, gamma=1.0, temperature=0.2).loss
    torch.testing.assert_close(got.total, want, **TOL)
    explicit = PaCoLoss(temperature=0.2, alpha=0.05, beta=1.0, gamma=1.0)(outputs, batch, state).total
    torch.testing.assert_close(got.total, explicit, rtol=0, atol=0)
    kw = {"temperature": 0.4, "alpha": 0.3, "beta": 2.0, "gamma": 0.5}
    got = PaCoLoss(views=(1, 2), **kw)(outputs, batch, state).total
    want = paco(z[:, 1:], LABELS, logits[:, 1:], state.prior.log(), **kw).loss
    torch.testing.assert_close(got, want, **TOL)
    for name in ("beta", "gamma"):
        assert not torch.allclose(
            got, paco(z[:, 1:], LABELS, logits[:, 1:], state.prior.log(), **{**kw, name: 1.0}).loss
        )


# --- state_contrast and global_mean ------------------------------------------------------------------------


def test_state_contrast_includes_the_views_by_default_even_with_keys():
    z, keys = feats(), feats(v=1, seed=2)[:, 0]
    outputs = Outputs(z=z, logits=torch.zeros(B, V, C), features=z, extra={"key_z": keys})
    cs = state_contrast(z, outputs, batch_for(LABELS), state_for())
    assert torch.equal(cs.z, torch.cat([z.reshape(-1, D), keys]))
    assert cs.self_index.tolist() == list(range(B * V))
    assert cs.own_index.tolist() == [[b * V + 1 - v, B * V + b] for b in range(B) for v in range(V)]


def test_global_mean_one_process():
    loss = torch.tensor([0.5, 0.0, 1.5, 0.25], dtype=torch.float64)
    seen = []
    res = ContrastiveResult(loss, torch.tensor([2, 0, 1, 3]))
    got = global_mean(res, state_for(all_reduce_mean=lambda t: seen.append(t) or t))
    assert seen[0].dtype == torch.float64 and seen[0].item() == 3  # the count is averaged as a float
    assert torch.equal(got, loss.sum() / 3)
    one = ContrastiveResult(torch.tensor([0.0, 0.7], dtype=torch.float64), torch.tensor([0, 1]))
    assert torch.equal(
        global_mean(one, state_for()), torch.tensor(0.7, dtype=torch.float64)
    )  # count 1: no clamp
    half = global_mean(one, state_for(all_reduce_mean=lambda t: t / 2))  # the other process has none
    assert torch.equal(half, torch.tensor(1.4, dtype=torch.float64))
    none = ContrastiveResult(torch.zeros(3, dtype=torch.float64), torch.zeros(3, dtype=torch.long))
    assert global_mean(none, state_for()).item() == 0.0  # no anchor with a positive: 0, not NaN


def test_index_tensors_are_built_on_the_inputs_device():
    """Every index tensor is made on the anchors' device ("meta" stands in for an accelerator: mixing it with a
    CPU tensor fails), so the losses run unchanged on a GPU."""
    z, y = torch.empty(4, 3, D, device="meta"), torch.empty(4, dtype=torch.long, device="meta")
    cs = contrast_set(z, y, keys=torch.empty(4, D, device="meta"))
    assert cs.self_index.device.type == cs.own_index.device.type == "meta" and cs.own_index.shape == (12, 3)
    queue, qy = torch.empty(5, D, device="meta"), torch.empty(5, dtype=torch.long, device="meta")
    cs = contrast_set(z, y, queue=queue, queue_labels=qy, include_views=False)
    assert cs.own_index.device.type == "meta" and cs.own_index.shape == (12, 0)
    out = sample_positives(y, qy, 3, torch.empty(4, 2, dtype=torch.long, device="meta"))
    assert out.device.type == "meta" and out.shape == (4, 3) and out.dtype == torch.long
