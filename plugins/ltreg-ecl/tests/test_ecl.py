"""ECL plugin: BC-ECL, CC-GE and L_LC against naive float64 loops written from the equations of ltreg_ecl.loss's docstring,
the switches, the tail edge cases, a two-process simulation and training through the registry."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from ltreg_ecl import METHOD
from ltreg_ecl.loss import ECLLoss, bc_ecl, cc_ge
from torch import nn

import ltreg
from ltreg.data.build import build_data
from ltreg.data.views import ViewDataset
from ltreg.method import build_part
from ltreg.prototypes import ClassifierPrototypes
from ltreg.step import Batch, BuildContext, Outputs, StepState

TOL = {"rtol": 1e-9, "atol": 1e-10}
B, V, D, C = 6, 2, 5, 4
LABELS = torch.tensor([0, 0, 1, 0, 2, 1])  # class 2: one image (its two views are each other's only positive); 3: absent
TAU = 0.3


def feats(b=B, v=V, d=D, seed=0):
    g = torch.Generator().manual_seed(seed)
    return F.normalize(torch.randn(b, v, d, generator=g, dtype=torch.float64), dim=-1).requires_grad_()


def unit(rows, d=D, seed=1):
    g = torch.Generator().manual_seed(seed)
    return F.normalize(torch.randn(rows, d, generator=g, dtype=torch.float64), dim=-1).requires_grad_()


def flat(z, y):
    return [(z[b, v], int(y[b])) for b in range(z.shape[0]) for v in range(z.shape[1])]


def naive_bc_ecl(z, y, protos, tau):
    """Per-anchor BC-ECL: S_ic = 1/2 mean_{j in B_c, j != i} e^{s_ij/tau} + 1/2 e^{z_i.p_c/tau} (prototype alone if
    B_c \\ {i} is empty), Den_i = sum_c S_ic, L = -1/2 mean_{p in P_s} log(e^{s_ip/tau}/Den) - 1/2 log(e^{z.p_y/tau}/Den)."""
    items = flat(z, y)
    out = []
    for i, (zi, yi) in enumerate(items):
        den = 0.0
        for c in range(protos.shape[0]):
            proto = torch.exp(torch.dot(zi, protos[c]) / tau)
            members = [j for j in range(len(items)) if j != i and items[j][1] == c]
            if members:
                avg = sum(torch.exp(torch.dot(zi, items[j][0]) / tau) for j in members) / len(members)
                den = den + 0.5 * avg + 0.5 * proto
            else:
                den = den + proto
        proto_term = torch.log(torch.exp(torch.dot(zi, protos[yi]) / tau) / den)
        pos = [j for j in range(len(items)) if j != i and items[j][1] == yi]
        if pos:
            sample_term = sum(torch.log(torch.exp(torch.dot(zi, items[p][0]) / tau) / den) for p in pos) / len(pos)
            out.append(-0.5 * sample_term - 0.5 * proto_term)
        else:
            out.append(-proto_term)
    return torch.stack(out)


def naive_bcl(z, y, protos, tau):
    """BCL (§3.4): B~_c = views of c + prototype c; Den_i = sum_c 1/w_ic sum_{j in B~_c, j != i} e^{s_ij/tau},
    w_ic = |B~_c| (c != y), |B~_y| - 1 (c = y); L = -1/|P| sum_{p in P} log(e^{s_ip/tau}/Den), P = B~_y \\ {i}."""
    items = flat(z, y)
    cols = items + [(protos[c], c) for c in range(protos.shape[0])]
    out = []
    for i, (zi, yi) in enumerate(items):
        others = [j for j in range(len(cols)) if j != i]
        den = 0.0
        for c in range(protos.shape[0]):
            members = [j for j in others if cols[j][1] == c]
            den = den + sum(torch.exp(torch.dot(zi, cols[j][0]) / tau) for j in members) / len(members)
        pos = [j for j in others if cols[j][1] == yi]
        out.append(-sum(torch.log(torch.exp(torch.dot(zi, cols[p][0]) / tau) / den) for p in pos) / len(pos))
    return torch.stack(out)


def naive_cc_ge(w, p):
    """||W/||W||_F - P/||P||_F||_F with explicit sums over entries."""
    nw = torch.sqrt(sum(w[c, k] ** 2 for c in range(w.shape[0]) for k in range(w.shape[1])))
    npr = torch.sqrt(sum(p[c, k] ** 2 for c in range(p.shape[0]) for k in range(p.shape[1])))
    total = 0.0
    for c in range(w.shape[0]):
        for k in range(w.shape[1]):
            total = total + (w[c, k] / nw - p[c, k] / npr) ** 2
    return torch.sqrt(total)


def naive_lc(logits, y, prior):
    """CE(u + log pi, y), averaged over samples."""
    out = []
    for u, yi in zip(logits, y.tolist()):
        adj = [u[c] + math.log(prior[c]) for c in range(len(prior))]
        out.append(-(adj[yi] - torch.log(sum(torch.exp(a) for a in adj))))
    return sum(out) / len(out)


def check_grads(got, want, tensors):
    for g, w in zip(torch.autograd.grad(got, tensors, retain_graph=True), torch.autograd.grad(want, tensors)):
        torch.testing.assert_close(g, w, **TOL)


class TinyModel(nn.Module):
    """Just the classifier the prototypes derive from (float64)."""

    def __init__(self, seed=2):
        super().__init__()
        torch.manual_seed(seed)
        self.classifier = nn.Linear(D, C, bias=False).double()


def make_prototypes():
    return ClassifierPrototypes(TinyModel(), kind="linear").double()


COUNTS = torch.tensor([40.0, 20.0, 5.0, 1.0], dtype=torch.float64)


def state_for(protos, **kw):
    return StepState(class_counts=COUNTS, num_classes=C, prototypes=protos, **kw)


def step_inputs(b=B, seed=0):
    z = feats(b, 3, seed=seed)
    logits = torch.randn(b, 3, C, dtype=torch.float64, generator=torch.Generator().manual_seed(seed + 7)).requires_grad_()
    return z, logits


# ---------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("contribution", ["balanced", "bcl"])
def test_bc_ecl_matches_naive_values_and_gradients(contribution):
    z, protos = feats(), unit(C)
    naive = naive_bc_ecl if contribution == "balanced" else naive_bcl
    per = bc_ecl(z, LABELS, protos, temperature=TAU, contribution=contribution, reduction="none")
    want = naive(z, LABELS, protos, TAU)
    torch.testing.assert_close(per.loss, want, **TOL)
    got = bc_ecl(z, LABELS, protos, temperature=TAU, contribution=contribution).loss
    torch.testing.assert_close(got, want.mean(), **TOL)
    check_grads(got, want.mean(), [z, protos])


def test_anchor_without_positive_contributes_only_its_prototype_term():
    """One view per image, all labels distinct: no sample positive; L(i) = -log(e^{z.p_y/tau} / Den_i), weight 1."""
    z, protos = feats(b=3, v=1), unit(C)
    y = torch.tensor([0, 1, 3])
    res = bc_ecl(z, y, protos, temperature=TAU, reduction="none")
    assert torch.isfinite(res.loss).all() and res.num_pos.tolist() == [1, 1, 1]
    a, p = z[:, 0], protos
    for i in range(3):
        den = sum(0.5 * torch.exp(a[i] @ a[j] / TAU) + 0.5 * torch.exp(a[i] @ p[y[j]] / TAU) for j in range(3) if j != i)
        den = den + sum(torch.exp(a[i] @ p[c] / TAU) for c in (int(y[i]), 2))  # own class and absent class 2
        torch.testing.assert_close(res.loss[i], -(a[i] @ p[y[i]] / TAU - torch.log(den)), **TOL)
    (g,) = torch.autograd.grad(res.loss.sum(), z)
    assert torch.isfinite(g).all()


def test_absent_class_enters_the_denominator_through_its_prototype_alone():
    z, protos = feats(), unit(C)
    base = bc_ecl(z, LABELS, protos, temperature=TAU, reduction="none").loss
    (g,) = torch.autograd.grad(base.sum(), protos)
    assert g[3].abs().sum() > 0  # class 3 has no view, yet its prototype is a negative of every anchor


def test_balanced_contribution_does_not_depend_on_class_counts_in_the_batch():
    """Copying every class-1 image leaves class 1's average, hence anchor 0's loss, unchanged in the balanced
    reading; with BCL's prototype-as-one-sample the prototype's share, hence the loss, moves."""
    z, protos = feats().detach(), unit(C).detach()
    z_more = torch.cat([z, z[LABELS == 1]])
    y_more = torch.cat([LABELS, torch.tensor([1, 1])])
    for contribution, same in (("balanced", True), ("bcl", False)):
        a = bc_ecl(z, LABELS, protos, temperature=TAU, contribution=contribution, reduction="none").loss[0]
        b = bc_ecl(z_more, y_more, protos, temperature=TAU, contribution=contribution, reduction="none").loss[0]
        assert torch.isclose(a, b, rtol=1e-12, atol=1e-12).item() is same, contribution


def test_bc_ecl_rejects_unknown_contribution():
    with pytest.raises(ValueError, match="balanced.*bcl"):
        bc_ecl(feats(), LABELS, unit(C), contribution="average")


def test_cc_ge_matches_naive_and_needs_equal_widths():
    w = torch.randn(C, D, dtype=torch.float64, requires_grad=True)
    p = unit(C)
    got, want = cc_ge(w, p), naive_cc_ge(w, p)
    torch.testing.assert_close(got, want, **TOL)
    check_grads(got, want, [w, p])
    with pytest.raises(ValueError, match="classifier width"):
        cc_ge(w, unit(C, d=D + 1))


# ---------------------------------------------------------------------------------------------------------------
def naive_total(z, logits, y, protos_mod, tau, weights=(1.0, 1.0, 1.0), contribution="balanced"):
    w_cls = protos_mod.model.classifier.weight
    p = F.normalize(w_cls @ protos_mod.transform.weight.T + protos_mod.transform.bias, dim=-1)  # p_c = normalize(U w_c)
    naive = naive_bc_ecl if contribution == "balanced" else naive_bcl
    prior = (COUNTS / COUNTS.sum()).tolist()
    return (weights[0] * naive_lc(logits[:, 0], y, prior) + weights[1] * naive(z[:, 1:], y, p, tau).mean()
            + weights[2] * naive_cc_ge(w_cls, p))


@pytest.mark.parametrize("contribution", ["balanced", "bcl"])
def test_loss_module_matches_naive_total_and_gradients(contribution):
    protos = make_prototypes()
    z, logits = step_inputs()
    out = ECLLoss(temperature=TAU, contribution=contribution)(
        Outputs(z=z, logits=logits, features=z), Batch(torch.zeros(B, 3, 1, 1, 1), LABELS, torch.arange(B)),
        state_for(protos))
    want = naive_total(z, logits, LABELS, protos, TAU, contribution=contribution)
    torch.testing.assert_close(out.total, want, **TOL)
    assert set(out.parts) == {"lc", "bc_ecl", "cc_ge"}
    params = [z, logits, protos.model.classifier.weight, protos.transform.weight, protos.transform.bias]
    check_grads(out.total, want, params)


def test_auto_weights_from_epoch0_means_survive_resume_and_can_be_switched_off():
    protos = make_prototypes()
    loss = ECLLoss(temperature=TAU)
    reduced = []
    parts = []
    for seed in range(3):
        z, logits = step_inputs(seed=seed)
        o = loss(Outputs(z=z, logits=logits, features=z), Batch(torch.zeros(B, 3), LABELS, torch.arange(B)),
                 state_for(protos, epoch=0))
        torch.testing.assert_close(o.total, sum(o.parts.values()), **TOL)  # epoch 0: all weights 1
        parts.append(torch.stack(list(o.parts.values())))
    mean = torch.stack(parts).mean(0)
    want_w = torch.round(torch.tensor([0.7, 0.3, 0.5], dtype=torch.float64) / mean, decimals=2)
    z, logits = step_inputs(seed=9)
    args = (Outputs(z=z, logits=logits, features=z), Batch(torch.zeros(B, 3), LABELS, torch.arange(B)))
    resumed = ECLLoss(temperature=TAU)
    resumed.load_state_dict(loss.state_dict())  # what a checkpoint restores
    for module in (loss, resumed):
        o = module(*args, state_for(protos, epoch=1, all_reduce_mean=lambda t: reduced.append(tuple(t.shape)) or t))
        torch.testing.assert_close(module.weights.double(), want_w, rtol=0, atol=1e-6)
        torch.testing.assert_close(o.total, sum(w * p for w, p in zip(module.weights, o.parts.values())), **TOL)
    assert reduced.count((3,)) == 2  # the epoch-0 sums are reduced over processes, once per module
    fixed_loss = ECLLoss(temperature=TAU, auto_weights=False)
    fixed = fixed_loss(*args, state_for(protos, epoch=0))
    torch.testing.assert_close(fixed_loss.targets, torch.tensor([0.7, 0.3, 0.5], dtype=torch.float64))
    torch.testing.assert_close(fixed.total, sum(w * p for w, p in zip(fixed_loss.targets, fixed.parts.values())), **TOL)


def test_two_process_simulation_is_exact():
    """Two ranks (gather with summed backward, DDP averaging) reproduce the one-process loss and gradients."""
    protos = make_prototypes()
    z_all, logits_all = step_inputs(b=2 * B, seed=4)
    y_all = torch.cat([LABELS, torch.tensor([3, 3, 1, 2, 0, 0])])
    module = ECLLoss(temperature=TAU, auto_weights=False)

    def run(rank, world):
        b = 2 * B // world
        sl = slice(rank * b, (rank + 1) * b)

        def gather(x):  # views [b, 2, D] or labels [b]: the other ranks' shards come from the full tensors
            full = {3: z_all[:, 1:], 1: y_all}[x.dim()]
            return torch.cat([x if r == rank else full[r * b:(r + 1) * b] for r in range(world)])

        state = state_for(protos, world_size=world, rank=rank, gather=gather, gather_nograd=gather)
        outputs = Outputs(z=z_all[sl], logits=logits_all[sl], features=z_all[sl])
        return module(outputs, Batch(torch.zeros(b, 3, 1, 1, 1), y_all[sl], torch.arange(b)), state).total

    single = run(0, 1)
    total = (run(0, 2) + run(1, 2)) / 2
    torch.testing.assert_close(total, single, **TOL)
    check_grads(total, single, [z_all, logits_all, protos.model.classifier.weight, protos.transform.weight])


def test_projection_is_as_wide_as_the_backbone():
    model = ltreg.LTModel(ltreg.LTModelConfig(backbone="resnet8", num_classes=C, in_chans=1, classifier="cosine",
                                              proj_dim=METHOD.model.proj_dim, proj_bn=True))
    ctx = BuildContext(targets=torch.tensor([0, 1, 2, 3]), num_classes=C, seed=0, model=model, train_set=None,
                       hparams=METHOD.hparams)
    protos = build_part("prototypes", METHOD.prototypes, METHOD.hparams, ctx)
    assert model.embed_dim == model.config.proj_dim == model.num_features == 64
    assert model(torch.randn(2, 3, 1, 8, 8)).z.shape == (2, 3, 64)
    assert protos.prototypes().shape == model.classifier.weight.shape == (C, 64)


def test_spec_views_erase_switch_and_recipes():
    assert METHOD.views_for(METHOD.hparams) == ("rand", "sim", "sim")
    assert METHOD.views_for(METHOD.hparams.replace(erase="true")) == ("rand+erase", "sim+erase", "sim+erase")
    assert METHOD.rebalance is None and METHOD.model.classifier == "cosine" and METHOD.model.proj_bn
    names = {f"cifar{k}-lt-if{i}" for k in (10, 100) for i in (100, 50, 10)} | {"imagenet-lt"}
    assert set(METHOD.recipes) == names
    assert METHOD.recipe("cifar10-lt-if100").hparams["erase"] and not METHOD.recipe("imagenet-lt").hparams["erase"]
    assert METHOD.recipe("imagenet-lt").paper == {"All": 58.8, "Many": 68.6, "Medium": 56.3, "Few": 40.1}


# ---------------------------------------------------------------------------------------------------------------
def test_trains_through_the_registry_and_reloads(tmp_path):
    result = ltreg.train("ecl", epochs=1, max_steps_per_epoch=3, batch_size=32, eval_batch_size=512,
                         output_dir=str(tmp_path / "run"))
    row = result.history[0]
    assert all(math.isfinite(row[k]) for k in ("loss", "lc", "bc_ecl", "cc_ge"))
    assert (result.run_dir / "model.safetensors").is_file() and (result.run_dir / "config.json").is_file()
    loaded = ltreg.LTModel.from_pretrained(result.run_dir)
    assert loaded.config.proj_dim == loaded.num_features
    test = build_data(result.config.data_args()).test
    views = ViewDataset(test, ("none",))
    x = torch.stack([views[i]["images"][0] for i in range(16)])
    result.model.eval()
    loaded.eval()
    with torch.no_grad():
        torch.testing.assert_close(loaded.predict(x), result.model.predict(x), rtol=0, atol=1e-6)
        torch.testing.assert_close(loaded(x).z, result.model(x).z, rtol=0, atol=1e-6)


def test_quick_recipe_runs_and_applies_epoch0_weights(tmp_path):
    result = ltreg.train("ecl", recipe="cifar100-lt-if100", quick=True, dataset="digits-lt", max_steps_per_epoch=2,
                         batch_size=32, output_dir=str(tmp_path / "quick"))
    first, second = result.history
    assert result.config.hparams["erase"] and all(math.isfinite(v) for v in (first["loss"], second["loss"]))
    weights = [round(t / first[k], 2) for t, k in zip((0.7, 0.3, 0.5), ("lc", "bc_ecl", "cc_ge"))]
    want = sum(w * second[k] for w, k in zip(weights, ("lc", "bc_ecl", "cc_ge")))
    assert second["loss"] == pytest.approx(want, rel=1e-4, abs=1e-5)


def test_cifar_recipes_use_a_cifar_stem_and_print_no_paper_number():
    """timm's ResNet-34 ends on a 1x1 map at 32 px; the CIFAR recipes use a CIFAR-stem ResNet (8x8 at 32 px) and,
    not being the paper's 224-px setting, carry no paper number (``describe()`` prints none beside them)."""
    import timm

    import ltreg.models  # noqa: F401 - registers the CIFAR ResNets into timm

    text = METHOD.describe()
    for ds in ("cifar10-lt", "cifar100-lt"):
        for imb in (100, 50, 10):
            r = METHOD.recipe(f"{ds}-if{imb}")
            assert r.paper == {} and r.train["backbone"] == "resnet32"
            line = next(x for x in text.splitlines() if x.strip().startswith(f"{ds}-if{imb}:"))
            assert "[paper:" not in line
    net = timm.create_model("resnet32", num_classes=0)
    assert net.forward_features(torch.zeros(1, 3, 32, 32)).shape[-2:] == (8, 8)
    assert "[paper:" in next(x for x in text.splitlines() if x.strip().startswith("imagenet-lt:"))


@pytest.mark.parametrize("contribution", ["balanced", "bcl"])
def test_loss_module_weights_each_term_by_its_own_target(contribution):
    """auto_weights off: L = 0.7 L_LC + 0.3 L_BC-ECL + 0.5 L_CC-GE with distinct weights, so that a swap of two
    terms' weights (or views) shows in the value and the gradients."""
    protos = make_prototypes()
    z, logits = step_inputs()
    mod = ECLLoss(temperature=TAU, contribution=contribution, auto_weights=False, weight_lc=0.7, weight_con=0.3,
                  weight_align=0.5)
    out = mod(Outputs(z=z, logits=logits, features=z), Batch(torch.zeros(B, 3, 1, 1, 1), LABELS, torch.arange(B)),
              state_for(protos))
    want = naive_total(z, logits, LABELS, protos, TAU, weights=(0.7, 0.3, 0.5), contribution=contribution)
    torch.testing.assert_close(out.total, want, **TOL)
    params = [z, logits, protos.model.classifier.weight, protos.transform.weight, protos.transform.bias]
    got = torch.autograd.grad(out.total, params)
    for g, w in zip(got, torch.autograd.grad(want, params)):
        torch.testing.assert_close(g, w, **TOL)
    g_z, g_logits = got[0], got[1]
    assert g_logits[:, 1:].abs().sum() == 0 and g_logits[:, 0].abs().sum() > 0  # only view 0 is classified
    assert g_z[:, 0].abs().sum() == 0 and g_z[:, 1:].abs().sum() > 0  # only views 1, 2 are contrasted
