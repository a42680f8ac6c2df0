"""CoGloAT + ProCo: the loss against naive float64 loops (values and gradients), every switch, the tail edge cases,
one process vs two simulated ranks, the geometry metrics of the paper's §4 (Eqs. 9-13), and training through the registry."""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F
from ltreg_cogloat import METHOD, CoGloATLoss, adaptive_temperature, cogloat, proco

import ltreg
from ltreg.evaluate import geometry_metrics
from ltreg.step import Batch, Outputs, StepState

D = 8


# -- naive references, straight from the paper (Bach et al., TMLR 2023, Eq. 1, Eq. 8, §3.4) ---------------------------
def naive_cogloat(a, y, pos, cols, col_y, own, tau, negatives, mem_pos=None):
    """-1/(N(k+1)) sum_i sum_{j in P(i)} log[e^{s_ij/tau_i} / (e^{s_ij/tau_i} + sum_{v in V_i} e^{s_iv/tau_i})]."""
    total, anchors = 0.0, 0
    for i in range(a.shape[0]):
        p_cols = [int(own[i])] if own[i] >= 0 else []
        if mem_pos is not None:
            p_cols += [int(j) for j in mem_pos[i] if j >= 0]
        p_vecs = [cols[j] for j in p_cols] + [pos[i, j] for j in range(pos.shape[1])]
        if negatives == "supervised":
            v_cols = [m for m in range(cols.shape[0]) if col_y[m] >= 0 and col_y[m] != y[i]]
        else:
            v_cols = [m for m in range(cols.shape[0]) if col_y[m] >= 0 and m not in p_cols]
        if not p_vecs:
            continue
        li = 0.0
        for p in p_vecs:
            num = torch.exp(a[i] @ p / tau[i])
            den = num + sum((torch.exp(a[i] @ cols[v] / tau[i]) for v in v_cols), torch.zeros((), dtype=a.dtype))
            li = li - torch.log(num / den)
        total, anchors = total + li / len(p_vecs), anchors + 1
    return total / max(anchors, 1)


def naive_proco(v, y, protos, tau):
    """-1/(N Q) sum_i sum_q log[e^{v.c_y/tau} / (e^{v.c_y/tau} + sum_{c != y} e^{v.c/tau})]."""
    total = 0.0
    for i in range(v.shape[0]):
        for q in range(protos.shape[0]):
            num = torch.exp(v[i] @ protos[q, y[i]] / tau[i])
            others = sum(torch.exp(v[i] @ protos[q, c] / tau[i]) for c in range(protos.shape[1]) if c != y[i])
            total = total - torch.log(num / (num + others))
    return total / (v.shape[0] * protos.shape[0])


def unit(*shape, g):
    return F.normalize(torch.randn(*shape, generator=g, dtype=torch.float64), dim=-1)


def leaves(*ts):
    return [t.clone().requires_grad_() for t in ts]


def grads(loss, ts):
    return torch.autograd.grad(loss, ts, allow_unused=True)


# -- the functional loss -------------------------------------------------------------------------------------------
@pytest.mark.parametrize("negatives", ["unsupervised", "supervised", "k-positive"])
@pytest.mark.parametrize("per_anchor_tau", [False, True])
def test_cogloat_matches_naive_values_and_gradients(negatives, per_anchor_tau):
    g = torch.Generator().manual_seed(0)
    n, k, m = 6, 3, 14
    y = torch.tensor([0, 0, 1, 2, 3, 3])  # classes 1 and 2 are singletons in the batch; class 4 is absent
    col_y = torch.cat([y, torch.tensor([0, 1, 1, 3, -1, 4, 0, -1])])  # keys, then a queue with empty slots
    a, pos, cols = leaves(unit(n, D, g=g), unit(n, k, D, g=g), unit(m, D, g=g))
    own = torch.arange(n).unsqueeze(1)
    tau = 0.07 + 0.5 * torch.rand(n, generator=g, dtype=torch.float64) if per_anchor_tau else 0.1
    mem = torch.tensor([[6, 12, -1], [12, 0, -1], [7, 8, -1], [-1, -1, -1], [9, 5, -1], [4, -1, -1]])
    mem = mem if negatives == "k-positive" else None
    got = cogloat(a, y, pos, cols, col_y, own, temperature=tau, negatives=negatives, memory_positives=mem)
    want = naive_cogloat(a, y, pos, cols, col_y, own[:, 0], tau if per_anchor_tau else torch.full((n,), tau),
                         negatives, mem)
    torch.testing.assert_close(got.loss, want, rtol=1e-10, atol=1e-10)
    for gg, gw in zip(grads(got.loss, [a, pos, cols]), grads(want, [a, pos, cols])):
        torch.testing.assert_close(gg, gw, rtol=1e-9, atol=1e-10)
    expected_pos = 1 + k + (mem >= 0).sum(1) if mem is not None else torch.full((n,), 1 + k)
    assert torch.equal(got.num_pos.long(), expected_pos)


def test_variants_differ_where_the_negative_sets_differ():
    g = torch.Generator().manual_seed(1)
    y = torch.tensor([0, 0, 1])
    a, pos, cols = unit(3, D, g=g), unit(3, 2, D, g=g), unit(5, D, g=g)
    col_y = torch.tensor([0, 0, 1, 0, 2])
    own = torch.arange(3).unsqueeze(1)
    res = {v: cogloat(a, y, pos, cols, col_y, own, negatives=v, reduction="none").loss for v in ("unsupervised", "supervised")}
    # anchor 2 (class 1) has no other same-class column: both readings agree; classes 0 have same-class negatives
    torch.testing.assert_close(res["unsupervised"][2], res["supervised"][2])
    assert (res["unsupervised"][:2] > res["supervised"][:2]).all()


def test_no_positive_contributes_zero_without_nan():
    g = torch.Generator().manual_seed(2)
    a, cols = leaves(unit(3, D, g=g), unit(4, D, g=g))
    y, col_y = torch.tensor([0, 1, 2]), torch.tensor([0, 1, 2, 1])
    own = torch.tensor([[0], [-1], [2]])  # anchor 1 has no own key and there are no global positives (k = 0)
    none = cogloat(a, y, a.new_zeros(3, 0, D), cols, col_y, own, reduction="none")
    assert torch.isfinite(none.loss).all() and none.loss[1] == 0 and none.num_pos.tolist() == [1, 0, 1]
    mean = cogloat(a, y, a.new_zeros(3, 0, D), cols, col_y, own).loss
    torch.testing.assert_close(mean, none.loss[[0, 2]].mean())  # the mean skips the anchor without positive
    (ga,) = torch.autograd.grad(none.loss.sum(), [a])
    assert torch.isfinite(ga).all() and ga[1].abs().max() == 0
    empty = cogloat(a, y, a.new_zeros(3, 0, D), cols, col_y, torch.full((3, 1), -1)).loss
    assert empty.item() == 0.0


def test_singleton_class_with_empty_queue_and_half_precision_is_finite():
    g = torch.Generator().manual_seed(3)
    a, pos, cols = unit(2, D, g=g).half(), unit(2, 3, D, g=g).half(), unit(6, D, g=g).half()
    col_y = torch.tensor([0, 1, -1, -1, -1, -1])  # only the batch keys; every queue slot empty
    for neg in ("unsupervised", "supervised"):
        out = cogloat(a, torch.tensor([0, 1]), pos, cols, col_y, torch.arange(2)[:, None], temperature=0.07, negatives=neg)
        assert torch.isfinite(out.loss)


def test_adaptive_temperature_eq8():
    counts = torch.tensor([100.0, 50.0, 1.0])
    tau = adaptive_temperature(torch.tensor([0, 1, 2]), counts, gamma=0.07)
    torch.testing.assert_close(tau, torch.tensor([1.0, 0.07 + 0.93 * 0.5, 0.07 + 0.93 * 0.01]))


def test_proco_matches_naive():
    g = torch.Generator().manual_seed(4)
    v, protos = leaves(unit(7, D, g=g), unit(2, 4, D, g=g))
    y = torch.tensor([0, 0, 1, 1, 3, 3, 3])  # class 2 absent from the batch
    for tau in (0.1, 0.05 + torch.rand(7, generator=g, dtype=torch.float64)):
        got = proco(v, y, protos, temperature=tau).loss
        want = naive_proco(v, y, protos, tau if isinstance(tau, torch.Tensor) else torch.full((7,), tau, dtype=torch.float64))
        torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-10)
        for gg, gw in zip(grads(got, [v, protos]), grads(want, [v, protos])):
            torch.testing.assert_close(gg, gw, rtol=1e-9, atol=1e-10)


# -- the module, on a step as the trainer hands it over --------------------------------------------------------------
def step_inputs(b=4, c=4, k=3, qsize=6, seed=5):
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, c, (b,), generator=g)
    return {
        "z": unit(b, 2, D, g=g), "y": y, "keys": unit(b, D, g=g), "pos": unit(b, k, D, g=g),
        "queue": unit(qsize, D, g=g), "qy": torch.randint(-1, c, (qsize,), generator=g),
        "protos": unit(2, c, D, g=g), "counts": torch.tensor([40.0, 20.0, 5.0, 2.0], dtype=torch.float64)[:c],
    }


def run_module(loss, x, z, rank=0, world=1, step=0):
    """The loss as rank ``rank`` of ``world`` sees it: local slice of z, global keys / labels through the gathers."""
    b = x["y"].shape[0] // world
    sl = slice(rank * b, (rank + 1) * b)

    def gather_nograd(t):
        full = x["y"] if t.dtype == torch.long else x["keys"]
        assert torch.equal(t, full[sl])
        return full

    state = StepState(class_counts=x["counts"], num_classes=x["counts"].numel(), step=step, steps_per_epoch=10,
                      memory=SimpleNamespace(queue_z=x["queue"], queue_labels=x["qy"]),
                      prototypes=SimpleNamespace(prototypes=lambda q: x["protos"][q]),
                      world_size=world, rank=rank, gather_nograd=gather_nograd)
    outputs = Outputs(z=z[sl], logits=z.new_zeros(b, 2, 4), features=z[sl],
                      extra={"key_z": x["keys"][sl], "positives_z": x["pos"][sl]})
    batch = Batch(images=torch.zeros(b, 2, 1, 2, 2), targets=x["y"][sl], index=torch.arange(b))
    return loss(outputs, batch, state)


@pytest.mark.parametrize("adaptive,proco_tau,alpha", [(True, "base", 0.5), (False, "adaptive", 0.3), (True, "base", 1.0)])
def test_module_is_alpha_mix_of_naive_terms(adaptive, proco_tau, alpha):
    x = step_inputs()
    (z,) = leaves(x["z"])
    loss = CoGloATLoss(temperature=0.2, gamma=0.1, adaptive_temperature=adaptive, alpha=alpha, proco_temperature=proco_tau)
    out = run_module(loss, x, z)
    tau_i = 0.1 + 0.9 * x["counts"][x["y"]] / 40.0
    cols, col_y = torch.cat([x["keys"], x["queue"]]), torch.cat([x["y"], x["qy"]])
    con = naive_cogloat(z[:, 0], x["y"], x["pos"], cols, col_y, torch.arange(4),
                        tau_i if adaptive else torch.full((4,), 0.2, dtype=torch.float64), "unsupervised")
    pro = naive_proco(z.reshape(8, D), x["y"].repeat_interleave(2), x["protos"],
                      tau_i.repeat_interleave(2) if proco_tau == "adaptive" else torch.full((8,), 0.2, dtype=torch.float64))
    want = alpha * con + (1 - alpha) * pro
    torch.testing.assert_close(out.total, want, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(grads(out.total, [z])[0], grads(want, [z])[0], rtol=1e-9, atol=1e-10)
    assert set(out.parts) == ({"cogloat"} if alpha == 1.0 else {"cogloat", "proco"})


def test_module_k_positive_takes_same_class_memory_columns():
    x = step_inputs(b=4, k=2)
    x["y"], x["qy"] = torch.tensor([0, 1, 1, 2]), torch.tensor([0, 1, 2, 3, -1, 0])
    # at most k = 2 same-class columns other than the own key exist, so the draw takes them all
    out = run_module(CoGloATLoss(negatives="k-positive", gamma=0.1, alpha=1.0), x, x["z"])
    mem = torch.tensor([[4, 9], [2, 5], [1, 5], [6, -1]])
    tau_i = 0.1 + 0.9 * x["counts"][x["y"]] / 40.0
    want = naive_cogloat(x["z"][:, 0], x["y"], x["pos"], torch.cat([x["keys"], x["queue"]]),
                         torch.cat([x["y"], x["qy"]]), torch.arange(4), tau_i, "k-positive", mem)
    torch.testing.assert_close(out.total, want, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("negatives", ["unsupervised", "supervised", "k-positive"])
def test_one_process_equals_two_simulated_ranks(negatives):
    """Global batch 2B on one process == mean over two ranks with B each (loss and gradient), k-positive draws included."""
    x = step_inputs(b=8, c=3, qsize=10, seed=6)
    loss = CoGloATLoss(negatives=negatives, seed=3)
    (z1,) = leaves(x["z"])
    one = run_module(loss, x, z1, step=7).total
    (z2,) = leaves(x["z"])
    two = sum(run_module(loss, x, z2, rank=r, world=2, step=7).total for r in range(2)) / 2
    torch.testing.assert_close(one, two, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(grads(one, [z1])[0], grads(two, [z2])[0], rtol=1e-10, atol=1e-12)


def test_module_needs_the_memory():
    x = step_inputs()
    out = Outputs(z=x["z"], logits=x["z"], features=x["z"])
    with pytest.raises(ValueError, match="moco"):
        CoGloATLoss()(out, Batch(torch.zeros(4, 2, 1, 2, 2), x["y"], torch.arange(4)), StepState(x["counts"], 4))


# -- feature geometry (the paper's Eqs. 9-13), computed by the core for every method ------------------------------------
def test_geometry_metrics_match_naive_formulas():
    g = torch.Generator().manual_seed(7)
    y = torch.tensor([0, 0, 0, 1, 1, 2, 2, 2, 2, 3])  # class 3 has a single sample
    z = unit(10, 4, g=g)
    classes = sorted(set(y.tolist()))
    feats = {c: [z[i] for i in range(10) if y[i] == c] for c in classes}
    centre = {c: sum(f) / len(f) for c, f in feats.items()}
    intra = sum(sum(torch.linalg.norm(u - w) for u in f for w in f) / len(f) ** 2 for f in feats.values()) / len(classes)
    var = {c: sum(torch.linalg.norm(v - centre[c]) for v in f) / len(f) for c, f in feats.items()}
    pairs = [(i, j) for i in classes for j in classes if i != j]
    cc = len(classes)
    inter = sum(torch.linalg.norm(centre[i] - centre[j]) for i, j in pairs) / (cc * (cc - 1))
    improved = 2 * sum(torch.linalg.norm(centre[i] - centre[j]) / abs(var[i] + var[j]) for i, j in pairs) / (cc * (cc - 1))
    got = geometry_metrics(z.float(), y, 4)
    want = {"intra": intra, "variance": sum(var.values()) / cc, "inter": inter, "inter_improved": improved}
    for key, value in want.items():
        assert math.isclose(got[key], float(value), rel_tol=1e-5), key


# -- the spec and training through the registry -----------------------------------------------------------------
def test_spec_registered_with_paper_recipes():
    row = next(r for r in ltreg.list_methods() if r["name"] == "cogloat")
    assert (row["dist"], row["version"], row["error"]) == ("ltreg-cogloat", "0.1.0", "")
    spec = ltreg.get_method("cogloat")
    assert spec is METHOD and spec.stages == 2 and spec.memory.name == "moco" and spec.sampler.name == "k-global"
    names = {f"{d}-if{i}" for d in ("cifar10-lt", "cifar100-lt") for i in (100, 50, 10)} | {"imagenet-lt"}
    assert set(spec.recipes) == names
    assert spec.recipe("cifar100-lt-if100").paper == {"All": 46.0}
    assert spec.recipe("cifar10-lt-if100").hparams["stage2_loss"] == "ldam"
    assert spec.recipe("imagenet-lt").paper["Few"] == 40.9
    with pytest.raises(ltreg.ConfigError):
        spec.hparams.replace(negatives="bogus")


def test_trains_through_registry_and_reloads(tmp_path):
    from ltreg.data.builders import digits_lt
    from ltreg.data.views import ViewDataset, collate

    res = ltreg.train("cogloat", epochs=1, max_steps_per_epoch=3, batch_size=32, stage2_epochs=1,
                      eval_batch_size=512, output_dir=str(tmp_path / "run"))
    stage1 = [r for r in res.history if r["stage"] == 1]
    assert stage1 and all(math.isfinite(r[key]) for r in stage1 for key in ("loss", "cogloat", "proco"))
    assert all(math.isfinite(r["loss"]) for r in res.history)
    assert (res.run_dir / "model.safetensors").is_file() and (res.run_dir / "config.json").is_file()
    loaded = ltreg.LTModel.from_pretrained(res.run_dir)
    test = digits_lt().test
    x = collate([ViewDataset(test, ("none",))[i] for i in range(0, len(test), 19)]).images[:, 0]
    with torch.no_grad():
        torch.testing.assert_close(loaded.predict(x), res.model.eval().predict(x), rtol=0, atol=0)


def test_quick_recipe_runs_on_cpu(tmp_path):
    res = ltreg.train("cogloat", recipe="cifar100-lt-if100", quick=True, dataset="digits-lt", epochs=1,
                      max_steps_per_epoch=2, stage2_batch_size=32, eval_batch_size=512,
                      hparams={"coreset_selection": "random"}, output_dir=str(tmp_path / "quick"))
    assert res.config.backbone == "resnet32" and res.config.hparams["stage2_epochs"] == 1  # --quick: the method's knob
    assert all(math.isfinite(r["loss"]) for r in res.history) and "top1" in res.metrics


# -- defaults, the no-global-positive path, errors (mutation-testing survivors) -----------------------------------
def test_defaults_seed_and_reductions():
    mod = CoGloATLoss()
    h = METHOD.hparams
    assert (mod.temperature, mod.gamma, mod.seed, mod.alpha) == (0.07, 0.07, 0, 0.5) == (h.temperature, h.gamma, 0,
                                                                                            h.alpha)
    assert CoGloATLoss.from_context(SimpleNamespace(seed=7)).seed == 7
    assert CoGloATLoss.from_context(SimpleNamespace(seed=7), seed=2).seed == 2
    assert CoGloATLoss(alpha=0.0).alpha == 0.0 and CoGloATLoss(alpha=1.0).alpha == 1.0
    g = torch.Generator().manual_seed(8)
    a, pos, cols = unit(3, D, g=g), unit(3, 2, D, g=g), unit(5, D, g=g)
    y, col_y, own = torch.tensor([0, 0, 1]), torch.tensor([0, 0, 1, 0, 2]), torch.arange(3).unsqueeze(1)
    torch.testing.assert_close(cogloat(a, y, pos, cols, col_y, own).loss,
                               cogloat(a, y, pos, cols, col_y, own, temperature=0.07).loss, rtol=0, atol=0)
    protos = unit(2, 3, D, g=g)
    mean = proco(a, y, protos)
    none = proco(a, y, protos, temperature=0.07, reduction="none")
    torch.testing.assert_close(mean.loss, none.loss.mean(), rtol=1e-12, atol=0)
    assert torch.equal(mean.num_pos, none.num_pos) and mean.num_pos.tolist() == [1.0, 1.0, 1.0]
    tau = adaptive_temperature(torch.tensor([0, 1]), torch.tensor([10, 5]), 0.1)  # integer counts
    assert tau.dtype == torch.float32 and torch.allclose(tau, torch.tensor([1.0, 0.55]))


def test_module_without_global_positives_uses_the_own_key_only():
    """No k-global sampler (no ``positives_z``): P(i) = {i+}, the key of the anchor's other view."""
    x = step_inputs()
    (z,) = leaves(x["z"])
    b = 4
    state = StepState(class_counts=x["counts"], num_classes=4, memory=SimpleNamespace(queue_z=x["queue"],
                                                                                      queue_labels=x["qy"]))
    out = CoGloATLoss(gamma=0.1, alpha=1.0)(
        Outputs(z=z, logits=z.new_zeros(b, 2, 4), features=z, extra={"key_z": x["keys"]}),
        Batch(images=torch.zeros(b, 2, 1, 2, 2), targets=x["y"], index=torch.arange(b)), state)
    tau_i = 0.1 + 0.9 * x["counts"][x["y"]] / 40.0
    want = naive_cogloat(z[:, 0], x["y"], z.new_zeros(b, 0, D), torch.cat([x["keys"], x["queue"]]),
                         torch.cat([x["y"], x["qy"]]), torch.arange(4), tau_i, "unsupervised")
    torch.testing.assert_close(out.total, want, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(grads(out.total, [z])[0], grads(want, [z])[0], rtol=1e-9, atol=1e-10)


def test_errors_name_the_setting():
    for kw, msg in (({"negatives": "all"}, "negatives must be"), ({"proco_temperature": "x"}, "proco_temperature"),
                    ({"alpha": 1.5}, "alpha must be"), ({"alpha": -0.1}, "alpha must be")):
        with pytest.raises(ValueError, match=msg):
            CoGloATLoss(**kw)
    g = torch.Generator().manual_seed(9)
    a, pos, cols = unit(2, D, g=g), unit(2, 1, D, g=g), unit(3, D, g=g)
    y, col_y, own = torch.tensor([0, 1]), torch.tensor([0, 1, 1]), torch.arange(2).unsqueeze(1)
    with pytest.raises(ValueError, match="negatives must be"):
        cogloat(a, y, pos, cols, col_y, own, negatives="all")
    with pytest.raises(ValueError, match="memory_positives are given exactly"):
        cogloat(a, y, pos, cols, col_y, own, negatives="k-positive")
    with pytest.raises(ValueError, match="memory_positives are given exactly"):
        cogloat(a, y, pos, cols, col_y, own, memory_positives=own)
    x = step_inputs()
    out = Outputs(z=x["z"], logits=x["z"], features=x["z"], extra={"key_z": x["keys"]})
    with pytest.raises(ValueError, match="the cogloat loss needs the 'moco'"):
        CoGloATLoss()(out, Batch(torch.zeros(4, 2, 1, 2, 2), x["y"], torch.arange(4)), StepState(x["counts"], 4))
    state = StepState(x["counts"], 4, memory=SimpleNamespace(queue_z=x["queue"], queue_labels=x["qy"]))
    with pytest.raises(ValueError, match="coreset"):
        CoGloATLoss(alpha=0.5)(out, Batch(torch.zeros(4, 2, 1, 2, 2), x["y"], torch.arange(4)), state)


def test_proco_uses_both_views_and_both_prototype_sets():
    """Paper (ProCo with two coreset prototype sets): each of the two query-encoder views is contrasted with each of
    the two prototype sets; changing either set or either view changes the loss."""
    x = step_inputs()
    base = run_module(CoGloATLoss(alpha=0.0), x, x["z"]).total
    for q in (0, 1):
        y = dict(x, protos=x["protos"].clone())
        y["protos"][q] = F.normalize(y["protos"][q] + 0.5, dim=-1)
        assert not torch.isclose(run_module(CoGloATLoss(alpha=0.0), y, x["z"]).total, base)
    z2 = x["z"].clone()
    z2[:, 1] = F.normalize(z2[:, 1] + 0.5, dim=-1)
    assert not torch.isclose(run_module(CoGloATLoss(alpha=0.0), x, z2).total, base)
