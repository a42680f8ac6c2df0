"""Nonsense settings are refused when the config is built, naming the flag and the allowed range.

Each case here used to train (or fail only after training): a negative --max-steps-per-epoch saved
a random model, --lr-decay -1 made the learning rate negative, NaN passed every range check.
"""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

import ltreg
from ltreg.cli import main
from ltreg.config import resolve_config
from ltreg.data.lt import LTDataset, TensorSource
from ltreg.errors import ConfigError, DataError, LtregError, UsageError


def resolve(method: str = "ce", **overrides):
    return resolve_config(ltreg.get_method(method), overrides).cfg


@pytest.mark.parametrize("overrides, match", [
    ({"max_steps_per_epoch": -1}, r"--max-steps-per-epoch \(max_steps_per_epoch\) must be >= 1 \(an integer; or none: the whole epoch\)"),
    ({"max_steps_per_epoch": "0"}, r"--max-steps-per-epoch .*got 0"),
    ({"lr_decay": "-1"}, r"--lr-decay \(lr_decay\) must be in \(0, 1\] \(a finite number\).*negative"),
    ({"lr_decay": 0.0}, r"--lr-decay"),
    ({"epochs": 0}, r"--epochs must be >= 1 \(an integer\), got 0.*ltreg eval"),
    ({"momentum": "nan"}, r"--momentum must be in \[0, 1\) \(a finite number\), got nan"),
    ({"lr": "inf"}, r"--lr must be > 0 \(a finite number\), got inf"),
    ({"lr": "nan"}, r"--lr must be > 0"),
    ({"weight_decay": "inf"}, r"--weight-decay"),
    ({"imbalance": "nan"}, r"--imbalance must be >= 1 \(a finite number; or none"),
    ({"holdout_fraction": "nan"}, r"--holdout-fraction"),
    ({"eval_batch_size": "0"}, r"--eval-batch-size \(eval_batch_size\) must be >= 1 \(an integer\), got 0"),
    ({"log_every": "0"}, r"--log-every \(log_every\) must be >= 1 \(an integer\), got 0"),
    ({"seed": "-1"}, r"--seed must be in \[0, 4294967295\] \(an integer\)"),
    ({"num_workers": "-2"}, r"--num-workers"),
    ({"stage2_lr": "0"}, r"--stage2-lr"),
    ({"stage2_batch_size": "0"}, r"--stage2-batch-size"),
    ({"stage2_epochs": "-1"}, r"--stage2-epochs"),
    ({"min_free_mb": "-5"}, r"--min-free-mb"),
    ({"warmup_epochs": 5, "epochs": 5}, r"--warmup-epochs 5 must be smaller than --epochs 5"),
    ({"schedule": "step", "milestones": [8, 12], "epochs": 10}, r"--milestones \[12\] lie outside 1..9"),
    ({"schedule": "step", "milestones": [6, 3], "epochs": 10}, r"--milestones must be strictly increasing"),
    ({"schedule": "linear"}, r"--schedule must be one of cosine, step, constant"),
    ({"push_to_hub": "not-a-repo-id"}, r"--push-to-hub .* org/name"),
])
def test_nonsense_setting_is_refused_with_flag_and_range(overrides, match):
    with pytest.raises(ConfigError, match=match):
        resolve(**overrides)


def test_contradiction_from_a_default_names_where_it_came_from():
    # cifar10-lt's defaults warm up for 5 epochs: 3 epochs cannot hold that
    with pytest.raises(ConfigError, match=r"warmup_epochs=5 comes from the defaults of the data set cifar10-lt"):
        resolve(dataset="cifar10-lt", epochs=3)
    with pytest.raises(ConfigError, match=r"milestones=\[160, 180\] comes from the recipe cifar100-lt-if100"):
        resolve(recipe="cifar100-lt-if100", epochs=100)
    # --quick rescales the recipe first: its warm-up and milestones do not count against 2 epochs
    cfg = resolve(recipe="cifar100-lt-if100", quick=True, epochs=1)
    assert (cfg.epochs, cfg.warmup_epochs, cfg.milestones) == (1, 0, [])


def test_hyper_parameters_are_checked_when_the_config_is_built():
    for value in ("nan", "inf", "-inf"):
        with pytest.raises(ConfigError, match=rf"hyper-parameter tau={value.lstrip('-')}|tau=-inf"):
            resolve("logit-adjust", hparams={"tau": value})
    spec = ltreg.get_method("logit-adjust")
    with pytest.raises(ConfigError, match=r"--hp tau=VALUE\) must be a finite number >= 0"):
        spec.hparams.replace(tau=math.nan)


def test_valid_settings_still_resolve():
    cfg = resolve("supcon", max_steps_per_epoch=None, lr_decay="1", schedule="step", milestones=[5], epochs=10,
                  warmup_epochs=2, stage2_epochs="0", push_to_hub="org/name")  # supcon: two stages (cRT)
    assert cfg.lr_decay == 1.0 and cfg.hparams["stage2_epochs"] == 0  # the method's own knob for it
    assert resolve(epochs=200, warmup_epochs=5, quick=True).epochs == 2


def test_unknown_data_arg_is_a_named_error():
    with pytest.raises(UsageError, match=r"data set 'digits-lt': no argument 'n_mx'. Did you mean n_max"):
        resolve(dataset_kwargs={"n_mx": "5"})
    with pytest.raises(ConfigError, match=r"--data-arg seed=.*--seed"):
        resolve(dataset_kwargs={"seed": "5"})


def test_single_class_training_set_is_refused():
    ds = LTDataset("one", TensorSource(torch.zeros(4, 1, 4, 4, dtype=torch.uint8)), torch.zeros(4, dtype=torch.long),
                   num_classes=1, class_names=["a"], channels=1, image_size=4)
    with pytest.raises(DataError, match="at least 2 classes"):
        ds.check_train()


def test_error_hierarchy_has_one_base():
    from ltreg.errors import (
        CheckpointError,
        DataError,
        ModelConfigError,
        NonFiniteLossError,
        PushError,
        RegistryError,
        TrainingError,
        UnknownNameError,
    )
    from ltreg.errors import ConfigError as FromMethod

    assert FromMethod is ConfigError
    for cls in (ConfigError, ModelConfigError, RegistryError, UnknownNameError, DataError):
        assert issubclass(cls, UsageError) and cls.exit_code == 2
    for cls in (CheckpointError, TrainingError, NonFiniteLossError, PushError):
        assert issubclass(cls, LtregError) and not issubclass(cls, UsageError) and cls.exit_code == 1
    # the old bases still catch them
    assert issubclass(ConfigError, ValueError) and issubclass(TrainingError, RuntimeError)
    assert issubclass(RegistryError, LookupError) and issubclass(PushError, RuntimeError)


def test_cli_refuses_before_writing(tmp_path: Path, capsys: pytest.CaptureFixture[str]):
    out = tmp_path / "run"
    assert main(["train", "--max-steps-per-epoch", "-1", "--output-dir", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("ltreg: error: --max-steps-per-epoch") and "Traceback" not in err
    assert not out.exists()


def test_every_installed_recipe_resolves_as_shipped_and_quick():
    """The checks refuse contradictions; no shipped method default or recipe may contain one."""
    for row in ltreg.list_methods():
        spec = ltreg.get_method(row["name"])
        for recipe in [None, *spec.recipes]:
            for q in (False, True):
                resolve_config(spec, {"recipe": recipe, "quick": q})


def test_unknown_weight_tag_is_named_before_any_work():
    with pytest.raises(ConfigError, match=r"no weights tagged 'nope' for resnet18\. Its tags: resnet18\.a1_in1k"):
        resolve(backbone="resnet18.nope")


def test_one_knob_for_the_length_of_stage_2():
    rc = resolve_config(ltreg.get_method("supcon"), {"stage2_epochs": 3})  # supcon's cRT reads hp("stage2_epochs")
    assert rc.hparams.stage2_epochs == 3 and rc.cfg.stage2_epochs is None  # one value, where the method reads it
    assert "stage2_epochs" not in rc.cfg.recipe_items() or rc.cfg.recipe_items()["stage2_epochs"] is None
    with pytest.raises(ConfigError, match=r"method ce has one stage .* drop it"):
        resolve(stage2_epochs=3)  # ce has no stage 2: the flag would do nothing
