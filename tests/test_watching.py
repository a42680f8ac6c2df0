"""Watching a run: a progress bar in a terminal, trackers that get the global step and the test metrics,
and a tracker whose package is missing named before any work."""

from __future__ import annotations

import sys

import pytest
from accelerate import Accelerator

import ltreg
from ltreg.errors import ConfigError

TINY = {"epochs": 2, "max_steps_per_epoch": 3, "batch_size": 32, "eval_batch_size": 512, "log_every": 1}


def test_trackers_get_global_steps_and_test_metrics(tmp_path, monkeypatch):
    logged: list[tuple[dict, int | None]] = []
    monkeypatch.setattr(Accelerator, "log", lambda self, values, step=None, log_kwargs=None: logged.append((values, step)))
    ltreg.train("supcon", output_dir=str(tmp_path / "run"), stage2_epochs=2, **TINY)
    steps = [step for values, step in logged]
    assert steps == [3, 6, 9, 12, 12]  # stage 1: 2 epochs of 3 steps, stage 2: 2 more, then the test metrics
    assert "stage1/loss" in logged[0][0] and "stage2/loss" in logged[2][0]
    final = logged[-1][0]
    assert set(final) == {"test/top1", "test/balanced_acc", "test/many", "test/medium", "test/few"}


def test_missing_tracker_is_named_before_any_work(tmp_path):
    with pytest.raises(ConfigError, match="needs the package 'wandb'.*pip install wandb"):
        ltreg.train("ce", output_dir=str(tmp_path / "run"), log_with="wandb", **TINY)
    with pytest.raises(ConfigError, match="not an Accelerate tracker"):
        ltreg.train("ce", output_dir=str(tmp_path / "run"), log_with="tensorbored", **TINY)
    assert not (tmp_path / "run").exists()


def test_progress_bar_in_a_terminal_only(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(sys.stderr, "isatty", lambda: True)
    ltreg.train("ce", output_dir=str(tmp_path / "tty"), **TINY)
    err = capsys.readouterr().err
    assert "stage 1 epoch 1/2" in err and "step" in err and "loss=" in err
    ltreg.train("ce", output_dir=str(tmp_path / "quiet"), quiet=True, **TINY)
    assert "stage 1 epoch" not in capsys.readouterr().err
    monkeypatch.setattr(sys.stderr, "isatty", lambda: False)
    ltreg.train("ce", output_dir=str(tmp_path / "pipe"), **TINY)
    assert "stage 1 epoch" not in capsys.readouterr().err
