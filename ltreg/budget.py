"""Shortened runs: schedules counted in epochs or steps, scaled to the budget a run actually has.

A method's defaults assume its paper's budget (e.g. 200 epochs of CIFAR). A run that takes only a
fraction ``f`` of that budget (``--budget-fraction f``: a CPU comparison, a smoke run) would otherwise
keep schedules that never take effect: a DRW switch at epoch 160 of 5, a key encoder at momentum
0.999 that after 200 steps is still ~82 % its random start. A hyper-parameter declares its unit in its
field metadata, ``schedule=``:

* ``"epochs"`` / ``"steps"``: a count, scaled to ``round(value * f)`` (at least 1 when it was positive);
  an epoch count that also declares ``of_epochs=N`` (LDAM's DRW switch: epoch 160 *of 200*) is a share of
  the run and always becomes ``round(value * epochs / N)``, whatever the budget;
* ``"ema"``: a per-step momentum ``m`` whose time constant ``1 / (1 - m)`` is a share of training,
  scaled to ``1 - (1 - m) / f`` (at least 0), so the average still spans the same share of the run.

The loop scales the warm-up (``--warmup-epochs``) and the length of stage 2 the same way.
"""

from __future__ import annotations

import dataclasses
from typing import TypeVar

SCHEDULE = "schedule"
H = TypeVar("H")


def scale_count(value: int, fraction: float) -> int:
    """An epoch or step count at ``fraction`` of the budget (a positive count stays at least 1)."""
    return max(1 if value > 0 else 0, round(value * fraction))


def scale_ema(momentum: float, fraction: float) -> float:
    """A per-step EMA momentum whose averaging window keeps the same share of a run ``fraction`` as long."""
    return max(0.0, 1.0 - (1.0 - momentum) / fraction)


def scale_hparams(hparams: H, fraction: float, epochs: int | None = None, given: frozenset[str] = frozenset()) -> H:
    """``hparams`` with every field declared ``schedule=epochs|steps|ema`` scaled to ``fraction`` of the budget,
    and epoch counts declared ``of_epochs`` moved to the same share of a run of ``epochs`` unless the user
    ``given`` them (a value someone typed means that epoch)."""
    changes = {}
    for f in dataclasses.fields(hparams):  # type: ignore[arg-type]
        kind, value = f.metadata.get(SCHEDULE), getattr(hparams, f.name)
        if kind == "epochs" and "of_epochs" in f.metadata and epochs is not None and f.name not in given:
            changes[f.name] = scale_count(int(value), epochs / f.metadata["of_epochs"])
        elif fraction >= 1.0:
            continue
        elif kind in ("epochs", "steps"):
            changes[f.name] = scale_count(int(value), fraction)
        elif kind == "ema":
            changes[f.name] = scale_ema(float(value), fraction)
    return dataclasses.replace(hparams, **changes) if changes else hparams  # type: ignore[type-var]
