"""ECL: the documented defaults, the exact refusals, precision (float64 to 1e-12, bf16 / autocast giving the float32
result), a contrast set without the anchors, the mean over anchors, the epoch-0 weights after a one-step epoch
and which buffers a checkpoint holds. Written from the surviving mutants of ``plugins/mutate.sh`` (issue 29)."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from ltreg_ecl.loss import ECLLoss, auto_weights, bc_ecl, cc_ge
from torch import nn

from ltreg import Batch, Outputs, StepState, contrast_set

C, D = 4, 5


def _views(b=5, v=2, seed=0, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    return F.normalize(torch.randn(b, v, D, generator=g, dtype=torch.float64), dim=-1).to(dtype)


def _protos(seed=1, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    return F.normalize(torch.randn(C, D, generator=g, dtype=torch.float64), dim=-1).to(dtype)


LABELS = torch.tensor([0, 0, 1, 2, 1])


def naive_bc_ecl(anchors, columns, protos, tau, exclude):
    """Per-anchor BC-ECL of ltreg_ecl.loss's docstring over explicit columns; ``exclude[i]`` is the column that is
    anchor i itself (None: the anchor is not a column)."""
    out = []
    for i, (zi, yi) in enumerate(anchors):
        members = {c: [j for j, (_, yj) in enumerate(columns) if yj == c and j != exclude[i]] for c in range(C)}
        den = 0.0
        for c in range(C):
            proto = torch.exp(zi @ protos[c] / tau)
            if members[c]:
                avg = sum(torch.exp(zi @ columns[j][0] / tau) for j in members[c]) / len(members[c])
                den = den + 0.5 * avg + 0.5 * proto
            else:
                den = den + proto
        proto_term = zi @ protos[yi] / tau - torch.log(den)
        pos = members[yi]
        if pos:
            sample = sum(zi @ columns[p][0] / tau - torch.log(den) for p in pos) / len(pos)
            out.append(-0.5 * sample - 0.5 * proto_term)
        else:
            out.append(-proto_term)
    return torch.stack(out)


def _flat(z, y):
    return [(z[b, v], int(y[b])) for b in range(z.shape[0]) for v in range(z.shape[1])]


def test_bc_ecl_float64_to_twelve_digits():
    """The log 1/2 the core adds to the prototype's numerator is removed exactly (no float32 constant)."""
    z, p = _views(), _protos()
    items = _flat(z, LABELS)
    want = naive_bc_ecl(items, items, p, 0.3, list(range(len(items))))
    got = bc_ecl(z, LABELS, p, temperature=0.3, reduction="none").loss
    torch.testing.assert_close(got, want, rtol=1e-13, atol=1e-13)


def test_bc_ecl_default_temperature_is_0_07():
    z, p = _views(), _protos()
    explicit = bc_ecl(z, LABELS, p, temperature=0.07, contribution="balanced", contrast=None, reduction="mean")
    torch.testing.assert_close(bc_ecl(z, LABELS, p).loss, explicit.loss, rtol=0, atol=0)
    assert not torch.isclose(bc_ecl(z, LABELS, p, temperature=0.08).loss, explicit.loss, rtol=1e-6)


def test_contrast_without_the_anchors_counts_every_column():
    """Key columns (no anchor among them, self_index None): B_c is every key of class c, the anchor's own key
    included; the 'bcl' reading contrasts the same given columns."""
    z, p = _views(), _protos()
    keys = _views(seed=5)[:, 0]
    cs = contrast_set(z, LABELS, keys=keys, include_views=False)
    assert cs.self_index is None
    items = _flat(z, LABELS)
    cols = [(keys[b], int(LABELS[b])) for b in range(5)]
    want = naive_bc_ecl(items, cols, p, 0.3, [None] * len(items))
    got = bc_ecl(z, LABELS, p, temperature=0.3, contrast=cs, reduction="none").loss
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)
    on_keys = bc_ecl(z, LABELS, p, temperature=0.3, contribution="bcl", contrast=cs).loss
    on_views = bc_ecl(z, LABELS, p, temperature=0.3, contribution="bcl").loss
    assert not torch.isclose(on_keys, on_views, rtol=1e-6)


def test_mean_is_over_every_anchor_including_those_without_sample_positives():
    """One view per image and distinct labels except two: anchors without a sample positive still count
    (their prototype term is the loss); one anchor alone is its own mean; the mean keeps the per-anchor counts."""
    z, p = _views(b=4, v=1), _protos()
    y = torch.tensor([0, 0, 1, 3])
    per = bc_ecl(z, y, p, temperature=0.3, reduction="none")
    mean = bc_ecl(z, y, p, temperature=0.3)
    torch.testing.assert_close(mean.loss, per.loss.mean(), rtol=1e-13, atol=0)
    assert torch.equal(mean.num_pos, per.num_pos) and per.num_pos.tolist() == [2, 2, 1, 1]
    one = bc_ecl(z[:1], y[:1], p, temperature=0.3)
    torch.testing.assert_close(one.loss, bc_ecl(z[:1], y[:1], p, temperature=0.3, reduction="none").loss[0])


def test_bf16_views_and_float32_prototypes_give_the_float32_result():
    """Under mixed precision the views may be bf16 and the prototypes float32 (or the reverse): the loss is
    computed in float32 on the upcast values, with autocast switched off inside (float64 references, which
    autocast never touches)."""
    z, p = _views(dtype=torch.bfloat16), _protos(dtype=torch.float32)
    want = bc_ecl(z.double(), LABELS, p.double(), temperature=0.3).loss.float()
    torch.testing.assert_close(bc_ecl(z, LABELS, p, temperature=0.3).loss, want, rtol=1e-5, atol=1e-5)
    z32, p16 = _views(dtype=torch.float32), _protos(dtype=torch.bfloat16)
    want = bc_ecl(z32.double(), LABELS, p16.double(), temperature=0.3).loss.float()
    torch.testing.assert_close(bc_ecl(z32, LABELS, p16, temperature=0.3).loss, want, rtol=1e-5, atol=1e-5)
    z32, p32 = _views(dtype=torch.float32), _protos(dtype=torch.float32)
    want = bc_ecl(z32.double(), LABELS, p32.double(), temperature=0.3).loss.float()
    torch.testing.assert_close(bc_ecl(z32, LABELS, p32, temperature=0.3).loss, want, rtol=1e-5, atol=1e-5)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        torch.testing.assert_close(bc_ecl(z32, LABELS, p32, temperature=0.3).loss, want, rtol=1e-5, atol=1e-5)


def test_cc_ge_of_bf16_inputs_is_the_float32_result():
    w, p = torch.randn(C, D, generator=torch.Generator().manual_seed(3)), _protos(dtype=torch.float32)
    want = cc_ge(w.bfloat16().double(), p.double()).float()
    torch.testing.assert_close(cc_ge(w.bfloat16(), p), want, rtol=1e-6, atol=1e-6)
    want = cc_ge(w.double(), p.bfloat16().double()).float()
    torch.testing.assert_close(cc_ge(w, p.bfloat16()), want, rtol=1e-6, atol=1e-6)


def test_auto_weights_divide_by_epoch0_means_below_one():
    """target / mean, rounded to 2 decimals, also when an epoch-0 mean is below 1 (a small CC-GE)."""
    got = auto_weights(torch.tensor([0.7, 0.3, 0.5], dtype=torch.float64), torch.tensor([2.0, 0.5, 0.04],
                                                                                         dtype=torch.float64))
    torch.testing.assert_close(got, torch.tensor([0.35, 0.6, 12.5], dtype=torch.float64))


class _Protos:
    """What ECLLoss reads from state.prototypes: the prototypes and the model whose classifier they derive from."""

    def __init__(self, dtype=torch.float64):
        self.model = nn.Module()
        self.model.classifier = nn.Linear(D, C, bias=False).to(dtype)
        self.p = _protos(dtype=dtype)

    def prototypes(self):
        return self.p


def _step(dtype=torch.float64, seed=0):
    z = _views(b=5, v=3, seed=seed, dtype=dtype)
    logits = torch.randn(5, 3, C, generator=torch.Generator().manual_seed(seed + 7), dtype=torch.float64).to(dtype)
    return Outputs(z=z, logits=logits, features=z), Batch(torch.zeros(5, 3, 1, 1, 1), LABELS, torch.arange(5))


def _state(protos, **kw):
    return StepState(class_counts=torch.tensor([40.0, 20.0, 5.0, 1.0], dtype=torch.float64), num_classes=C,
                     prototypes=protos, **kw)


def test_loss_module_defaults_are_the_documented_values():
    protos = _Protos()
    args = (*_step(), _state(protos, epoch=0))
    default = ECLLoss()
    assert default.temperature == 0.07 and default.contribution == "balanced" and default.auto_weights
    explicit = ECLLoss(temperature=0.07, contribution="balanced", auto_weights=True, weight_lc=0.7, weight_con=0.3,
                       weight_align=0.5, cls_view=0, views=(1, 2))
    torch.testing.assert_close(default(*args).total, explicit(*args).total, rtol=0, atol=0)


def test_loss_module_refusals_name_the_fix():
    with pytest.raises(ValueError, match=r"^ECL contribution must be 'balanced' or 'bcl', got 'average'$"):
        ECLLoss(contribution="average")
    msg = r"^ECLLoss needs classifier-derived prototypes in state.prototypes \(the 'ecl' prototype part\)$"
    for protos in (None, object()):  # none, or prototypes that do not derive from a classifier
        with pytest.raises(ValueError, match=msg):
            ECLLoss()(*_step(), _state(protos))


def test_checkpoint_holds_the_epoch0_statistics_not_the_target_weights():
    """The targets are settings (re-made from the hyper-parameters), not state: a checkpoint holds only the
    epoch-0 sums, the step count and the derived weights."""
    assert set(ECLLoss().state_dict()) == {"epoch0_sum", "epoch0_steps", "weights"}


def test_one_step_first_epoch_and_a_single_reduction():
    """Epoch 0 of one step: the weights are target / that step's terms; the epoch-0 sums are reduced over
    processes once, not at every later step."""
    protos = _Protos()
    loss = ECLLoss(temperature=0.3)
    first = loss(*_step(), _state(protos, epoch=0))
    terms = torch.stack([first.parts[k] for k in ("lc", "bc_ecl", "cc_ge")]).float()
    calls = []
    for step in range(3):
        out = loss(*_step(seed=step + 1), _state(protos, epoch=1, step=step,
                                                 all_reduce_mean=lambda t: calls.append(tuple(t.shape)) or t))
    want = torch.round(torch.tensor([0.7, 0.3, 0.5], dtype=torch.float64) / terms.double(), decimals=2)
    torch.testing.assert_close(loss.weights.double(), want, rtol=0, atol=1e-6)
    assert calls.count((3,)) == 1  # the three epoch-0 sums (global_mean reduces its scalar anchor count)
    torch.testing.assert_close(out.total, sum(w * out.parts[k] for w, k in zip(loss.weights, ("lc", "bc_ecl", "cc_ge"))))


def test_float32_inputs_give_a_float32_loss():
    """The float64 target weights do not promote a float32 step's loss."""
    protos = _Protos(dtype=torch.float32)
    out = ECLLoss(auto_weights=False)(*_step(dtype=torch.float32), _state(protos))
    assert out.total.dtype == torch.float32 and math.isfinite(out.total.item())
