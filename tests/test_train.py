"""End-to-end: the CLI on digits-LT, the run folder, resume, and configuration errors."""

from __future__ import annotations

import csv
import json
import subprocess

import pytest
import torch
from safetensors.torch import load_file

import ltreg
from ltreg.config import TrainConfig, resolve_config
from ltreg.errors import ConfigError
from tests.conftest import LTREG, ROOT


def run_cli(args: list[str], env: dict, timeout: int = 300) -> subprocess.CompletedProcess:
    return subprocess.run(LTREG + args, env=env, cwd=ROOT, capture_output=True, text=True, timeout=timeout)


def test_cli_demo_trains_prints_table_and_fills_run_folder(tmp_path, subprocess_env):
    out = tmp_path / "run"
    proc = run_cli(["train", "--epochs", "4", "--output-dir", str(out), "--log-every", "5"], subprocess_env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    text = proc.stdout
    for row in ("| All", "| Many", "| Medium", "| Few"):
        assert row in text
    assert "balanced-softmax on digits-test" in text
    for name in ("model.safetensors", "ltreg_heads.safetensors", "config.json", "metrics.json", "metrics.csv"):
        assert (out / name).is_file(), name
    rows = list(csv.DictReader(open(out / "metrics.csv")))
    losses = [float(r["loss"]) for r in rows]
    assert len(losses) == 4 and losses[-1] < losses[0]
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["num_many"] + metrics["num_medium"] + metrics["num_few"] == 10
    assert 0 <= metrics["few"] <= 100 and metrics["top1"] > 30  # chance is 10 %
    config = json.loads((out / "config.json").read_text())
    assert config["architecture"] == "resnet8" and config["ltreg"]["method"] == "balanced-softmax"
    weights = load_file(str(out / "model.safetensors"))
    assert "fc.weight" in weights and weights["fc.weight"].shape == (10, 64)


def test_resume_continues_like_an_uninterrupted_run(tmp_path, tiny):
    """Train 3 epochs straight; train 2 then resume to 3: same weights, same history."""
    base = {**tiny, "epochs": 3}
    full = ltreg.train("ce", output_dir=str(tmp_path / "full"), **base)
    part = resolve_config(ltreg.get_method("ce"), {**base, "output_dir": str(tmp_path / "part")})
    from ltreg import loop as loop_module
    from ltreg.trainer import Trainer

    trainer = Trainer(part)
    original = loop_module.run_epoch
    calls = {"n": 0}

    def interrupted(*args, **kwargs):
        if calls["n"] == 2:
            raise KeyboardInterrupt  # the run dies after its 2nd epoch's checkpoint
        calls["n"] += 1
        return original(*args, **kwargs)

    loop_module.run_epoch = interrupted
    try:
        with pytest.raises(KeyboardInterrupt):
            trainer.fit()
    finally:
        loop_module.run_epoch = original
    assert (tmp_path / "part" / "checkpoints" / "latest").read_text() == "stage1-epoch-2"
    resumed = ltreg.train("ce", output_dir=str(tmp_path / "part"), resume=True, **base)
    a, b = full.model.state_dict(), resumed.model.state_dict()
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=0, atol=0, msg=key)
    assert [r["loss"] for r in full.history] == [r["loss"] for r in resumed.history]


def test_config_layers_and_errors():
    spec = ltreg.get_method("ce")
    cfg = resolve_config(spec, {"recipe": "cifar100-lt-if50", "epochs": "300"}).cfg
    assert (cfg.dataset, cfg.imbalance, cfg.backbone, cfg.epochs) == ("cifar100-lt", 50.0, "resnet32", 300)
    assert cfg.milestones == [160, 180]
    with pytest.raises(ConfigError, match="unknown key 'epoch'.*epochs"):
        resolve_config(spec, {"epoch": 3})
    with pytest.raises(ConfigError, match="imbalance must be >= 1"):
        TrainConfig(imbalance=0.5)
    with pytest.raises(ConfigError, match="lr must be > 0"):
        resolve_config(spec, {"lr": "-0.1"})


def test_cli_errors_name_the_thing(tmp_path, subprocess_env):
    proc = run_cli(["train", "--method", "balanced-softmx", "--output-dir", str(tmp_path)], subprocess_env)
    assert proc.returncode == 2 and "Did you mean: balanced-softmax" in proc.stderr
    proc = run_cli(["train", "--dataset", "digts-lt", "--output-dir", str(tmp_path)], subprocess_env)
    assert proc.returncode == 2 and "digits-lt" in proc.stderr
    proc = run_cli(["train", "--backbone", "resnet33", "--output-dir", str(tmp_path)], subprocess_env)
    assert proc.returncode == 2 and "resnet32" in proc.stderr
    proc = run_cli(["info", "ldam-drw"], subprocess_env)
    assert proc.returncode == 0 and "drw_start_epoch" in proc.stdout and "cifar100-lt-if100" in proc.stdout
    proc = run_cli(["list"], subprocess_env)
    assert proc.returncode == 0 and "balanced-softmax" in proc.stdout and f"ltreg {ltreg.__version__}" in proc.stdout
