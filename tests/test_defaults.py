"""Defaults that fit the choice: per-optimizer learning rates, the base lr in the log, a one-process
``accelerate launch`` stopped, a longer ``--resume`` refused with the command that trains on, and a help
string for every setting."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from ltreg.cli import build_parser, main
from ltreg.config import SETTING_HELP, TrainConfig, resolve_config
from ltreg.errors import ConfigError
from ltreg.method import Recipe, get_method
from ltreg.models.ltmodel import LTModel, LTModelConfig
from ltreg.optim import OptimSettings, base_lr, build_optimizer, default_lr, param_groups
from ltreg.run import check_launch


def test_adamw_gets_its_own_lr_and_says_so() -> None:
    rc = resolve_config(get_method("ce"), {"optimizer": "adamw"})
    assert rc.cfg.lr == 1e-3 and rc.cfg.lr != TrainConfig.lr
    assert len(rc.notes) == 1 and "--optimizer adamw" in rc.notes[0] and "0.05" in rc.notes[0]
    assert resolve_config(get_method("ce"), {"optimizer": "lion"}).cfg.lr == 1e-4
    assert resolve_config(get_method("ce"), {}).cfg.lr == 0.05  # SGD keeps the data set's lr
    assert resolve_config(get_method("ce"), {"optimizer": "nesterov"}).notes == ()


def test_a_user_lr_is_kept_and_an_optimizer_without_a_default_stops() -> None:
    assert resolve_config(get_method("ce"), {"optimizer": "adamw", "lr": 0.01}).cfg.lr == 0.01
    assert resolve_config(get_method("ce"), {"optimizer": "adamw"}, {"lr": 0.02}).cfg.lr == 0.02  # YAML
    with pytest.raises(ConfigError, match="adafactor has no default learning rate.*pass --lr"):
        resolve_config(get_method("ce"), {"optimizer": "adafactor"})
    assert resolve_config(get_method("ce"), {"optimizer": "adafactor", "lr": 0.01}).cfg.lr == 0.01
    assert default_lr("sgd") is None and default_lr("lars") is None


def test_a_layer_that_chooses_optimizer_and_lr_together_is_kept() -> None:
    spec = dataclasses.replace(get_method("ce"), recipes={"vit": Recipe("AdamW fine-tune",
                                                                        {"optimizer": "adamw", "lr": 5e-4})})
    rc = resolve_config(spec, {"recipe": "vit"})
    assert rc.cfg.lr == 5e-4 and rc.notes == ()
    spec = dataclasses.replace(spec, recipes={"sgd": Recipe("SGD", {"lr": 0.2})})
    rc = resolve_config(spec, {"recipe": "sgd", "optimizer": "adamw"})  # the recipe's lr is for its SGD
    assert rc.cfg.lr == 1e-3 and "the recipe sgd" in rc.notes[0]


def test_the_log_shows_the_base_lr_not_the_most_decayed_group() -> None:
    model = LTModel(LTModelConfig(backbone="resnet18", num_classes=3, in_chans=3))
    s = OptimSettings(name="adamw", lr=1e-3, layer_decay=0.5)
    opt = build_optimizer(param_groups(model, [p for p in model.parameters()], s), s)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda step: 0.5)
    assert opt.param_groups[0]["lr"] < 0.5 * 1e-3 / 4  # the stem trains far below the base lr
    assert base_lr(opt) == pytest.approx(0.5 * 1e-3)
    del sched


def test_a_one_process_accelerate_launch_of_several_is_named() -> None:
    launched = {"ACCELERATE_USE_CPU": "True", "ACCELERATE_MIXED_PRECISION": "no", "MASTER_ADDR": "127.0.0.1",
                "MASTER_PORT": "29500"}
    with pytest.raises(ConfigError, match="--multi_gpu"):
        check_launch(launched)
    check_launch({**launched, "WORLD_SIZE": "2", "RANK": "0", "LOCAL_RANK": "0"})  # torchrun / --multi_gpu
    check_launch({"ACCELERATE_USE_CPU": "True", "ACCELERATE_MIXED_PRECISION": "no"})  # one process asked
    check_launch({})  # plain python


def test_accelerate_launch_num_processes_2_without_multi_gpu_stops(subprocess_env: dict, tmp_path: Path) -> None:
    """A real `accelerate launch --cpu --num_processes 2`: one process starts; it stops with the flag to add."""
    proc = subprocess.run([sys.executable, "-m", "accelerate.commands.launch", "--cpu", "--num_processes", "2",
                           "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
                           "-m", "ltreg", "train", "--quick", "--output-dir", str(tmp_path / "run")],
                          capture_output=True, text=True, env=subprocess_env, timeout=300)
    assert proc.returncode != 0
    assert "ltreg: error: accelerate launch was asked for several processes" in proc.stderr
    assert "--multi_gpu" in proc.stderr and not (tmp_path / "run").exists()


def test_resume_with_more_epochs_names_the_command_that_trains_on(tmp_path: Path,
                                                                  capsys: pytest.CaptureFixture[str]) -> None:
    run = tmp_path / "run"
    small = ["--max-steps-per-epoch", "2", "--batch-size", "32", "--eval-batch-size", "512", "--quiet"]
    assert main(["train", "--method", "ce", "--output-dir", str(run), "--epochs", "1", *small]) == 0
    capsys.readouterr()
    assert main(["train", "--method", "ce", "--output-dir", str(run), "--resume", "--epochs", "3", *small]) == 2
    message = " ".join(capsys.readouterr().err.split())
    assert "epochs: 1 in the run, 3 now" in message and f"--init-from {run} --epochs 2" in message
    command = message.split("`")[1].split()  # the command it names, run as written
    assert command[:2] == ["ltreg", "train"]
    assert main([*command[1:], *small]) == 0
    assert f"init-from {run}: backbone loaded, classifier loaded" in capsys.readouterr().out
    recipe = json.loads((Path(f"{run}-more") / "config.json").read_text())["ltreg"]["recipe"]
    assert recipe["epochs"] == 2


def test_every_setting_has_a_help_string(capsys: pytest.CaptureFixture[str]) -> None:
    names = {f.name for f in dataclasses.fields(TrainConfig)} - {"hparams", "dataset_kwargs"}
    assert names - set(SETTING_HELP) == set()
    assert set(SETTING_HELP) - names == set()  # nothing stale
    with pytest.raises(SystemExit):
        build_parser().parse_args(["train", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "--augment AUGMENT training augmentation" in text and "AdamW 1e-3" in text
    assert "--epochs EPOCHS stage-1 epochs (the schedule is laid out over them) (ltreg default: 30)" in text


def test_offline_pretrained_error_names_the_model_and_tag(subprocess_env: dict, tmp_path: Path) -> None:
    proc = subprocess.run([sys.executable, "-m", "ltreg", "train", "--backbone", "test_resnet", "--pretrained",
                           "--epochs", "1", "--max-steps-per-epoch", "1", "--output-dir", str(tmp_path / "run")],
                          capture_output=True, text=True, env={**subprocess_env, "HF_HUB_OFFLINE": "1"}, timeout=300)
    assert proc.returncode == 2, proc.stderr
    assert ("backbone test_resnet (timm tag test_resnet.r160_in1k, weights hf-hub:timm/test_resnet.r160_in1k): "
            "cannot load the pretrained weights") in proc.stderr
    assert "HF_HUB_OFFLINE=1" in proc.stderr and "Traceback" not in proc.stderr
