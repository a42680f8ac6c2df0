"""Shortened runs: schedules declared in epochs, steps or EMA momentum scale with --budget-fraction."""

from __future__ import annotations

import dataclasses

import pytest

import ltreg
from ltreg.budget import scale_count, scale_ema, scale_hparams
from ltreg.config import resolve_config
from ltreg.method import HParams


@dataclasses.dataclass(frozen=True)
class Sched(HParams):
    start: int = dataclasses.field(default=160, metadata={"schedule": "epochs"})
    warm: int = dataclasses.field(default=3, metadata={"schedule": "steps"})
    momentum: float = dataclasses.field(default=0.999, metadata={"schedule": "ema"})
    tau: float = 0.1  # no schedule: untouched


def test_counts_and_momenta_keep_their_share_of_the_run():
    h = scale_hparams(Sched(), 0.025)  # 5 of 200 epochs
    assert (h.start, h.warm, h.tau) == (4, 1, 0.1)  # 160/200 of the run; a positive count stays >= 1
    # the EMA window 1/(1-m) was 1000 steps of a run; it becomes 25 steps of a run 40x shorter
    assert 1 / (1 - h.momentum) == pytest.approx(25.0)
    assert scale_hparams(Sched(), 1.0) == Sched()
    assert scale_count(0, 0.1) == 0 and scale_ema(0.5, 0.1) == 0.0


def test_budget_fraction_reaches_the_method_warmup_and_stage2(tmp_path):
    rc = resolve_config(ltreg.get_method("ldam-drw"), {"recipe": "cifar100-lt-if100", "epochs": 5,
                                                       "budget_fraction": 0.025})
    assert rc.hparams.drw_start_epoch == 4 and rc.cfg.warmup_epochs == 1  # 160 of 200 -> 4 of 5; 5 -> 1
    assert rc.cfg.milestones == [4]  # 160, 180 of 200 -> 4, 4.5 of 5
    full = resolve_config(ltreg.get_method("ldam-drw"), {"recipe": "cifar100-lt-if100"})
    assert full.hparams.drw_start_epoch == 160 and full.cfg.warmup_epochs == 5
    # DRW's epoch is declared "160 of 200": a 30-epoch run re-weights from epoch 24, unless the user names one
    assert resolve_config(ltreg.get_method("ldam-drw"), {"epochs": 30}).hparams.drw_start_epoch == 24
    given = resolve_config(ltreg.get_method("ldam-drw"), {"epochs": 30, "hparams": {"drw_start_epoch": 10}})
    assert given.hparams.drw_start_epoch == 10
    result = ltreg.train("supcon", epochs=1, max_steps_per_epoch=2, batch_size=32, eval_batch_size=512,
                         stage2_epochs=4, budget_fraction=0.5, output_dir=str(tmp_path / "run"))
    assert [r["stage"] for r in result.history] == [1, 2, 2]  # 4 stage-2 epochs at half the budget: 2
    with pytest.raises(ltreg.ConfigError, match="budget-fraction"):
        resolve_config(ltreg.get_method("ce"), {"budget_fraction": 1.5})
