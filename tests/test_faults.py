"""Faults lose nothing: a SIGKILLed run resumes to the same weights, NaN stops with the step and part,
an unwritable or full output folder fails before training, checkpoints are written atomically."""

from __future__ import annotations

import os
import signal
import subprocess

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file

import ltreg
from ltreg.config import resolve_config
from ltreg.errors import NonFiniteLossError, TrainingError
from ltreg.registry import registry
from ltreg.step import LossOutput
from ltreg.trainer import Trainer
from tests.conftest import LTREG, ROOT

ARGS = ["train", "--method", "ce", "--epochs", "6", "--max-steps-per-epoch", "10", "--batch-size", "32",
        "--log-every", "2", "--eval-batch-size", "512"]


def test_sigkill_mid_epoch_then_resume_gives_the_uninterrupted_weights(tmp_path, subprocess_env):
    full, killed = tmp_path / "full", tmp_path / "killed"
    done = subprocess.run(LTREG + ARGS + ["--output-dir", str(full)], env=subprocess_env, cwd=ROOT,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    proc = subprocess.Popen(LTREG + ARGS + ["--output-dir", str(killed)], env=subprocess_env, cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        for line in proc.stdout:  # epoch 2's checkpoint is on disk: kill at once, during epoch 3
            if line.startswith("stage 1 epoch   2") and "[checkpoint]" in line:
                os.kill(proc.pid, signal.SIGKILL)
                break
        proc.wait(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == -signal.SIGKILL
    assert not (killed / "model.safetensors").exists()
    assert (killed / "checkpoints" / "latest").read_text() == "stage1-epoch-2"
    resumed = subprocess.run(LTREG + ARGS + ["--output-dir", str(killed), "--resume"], env=subprocess_env,
                             cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert "resumed from" in resumed.stdout and "stage 1 epoch   3" in resumed.stdout
    assert "stage 1 epoch   1" not in resumed.stdout
    a, b = load_file(str(full / "model.safetensors")), load_file(str(killed / "model.safetensors"))
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=0, msg=k)
    assert (full / "metrics.csv").read_text().splitlines()[1:] != []


class NaNAtStep(torch.nn.Module):
    """Cross-entropy that turns NaN at epoch 1 (0-based), step 3: a loss blowing up mid-run."""

    def forward(self, outputs, batch, state):  # noqa: ANN001, ANN201
        ce = F.cross_entropy(outputs.logits[:, 0], batch.targets)
        bad = torch.tensor(float("nan")) if (state.epoch, state.step) == (1, 3) else torch.tensor(0.0)
        reg = outputs.logits.sum() * 0 + bad
        return LossOutput(ce + reg, {"ce": ce.detach(), "reg": reg.detach()})


def test_nan_loss_stops_names_step_and_part_and_keeps_last_good_checkpoint(tmp_path, tiny):
    registry("losses").register("nan-at-step-test", NaNAtStep)
    try:
        spec = ltreg.MethodSpec(name="nan-test", summary="s", citation="-", loss=ltreg.PartRef("nan-at-step-test"),
                                hparams=ltreg.HParams(), model=ltreg.ModelSpec(proj_dim=None))
        cfg = resolve_config(spec, {**tiny, "epochs": 3, "max_steps_per_epoch": 6, "output_dir": str(tmp_path)})
        with pytest.raises(NonFiniteLossError) as err:
            Trainer(cfg).fit()
    finally:
        registry("losses").unregister("nan-at-step-test")
    msg = str(err.value)
    assert "global step 9" in msg and "reg" in msg and "stage1-epoch-1" in msg
    assert (tmp_path / "checkpoints" / "latest").read_text() == "stage1-epoch-1"
    assert not (tmp_path / "checkpoints" / "stage1-epoch-2").exists()


def test_unwritable_or_full_output_fails_before_training(tmp_path, tiny):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    with pytest.raises(TrainingError, match="cannot write to the run folder"):
        ltreg.train("ce", output_dir=str(blocker / "run"), **tiny)
    with pytest.raises(TrainingError, match="MB free"):
        ltreg.train("ce", output_dir=str(tmp_path / "run"), min_free_mb=10**12, **tiny)
    assert not (tmp_path / "run" / "checkpoints").exists()


def test_checkpoint_folder_and_pointer_are_replaced_atomically(tmp_path, tiny):
    result = ltreg.train("ce", output_dir=str(tmp_path), **{**tiny, "epochs": 2})
    ck = tmp_path / "checkpoints"
    names = sorted(p.name for p in ck.iterdir())
    assert names == ["latest", "stage1-epoch-2"], names  # the older state and no temp folder remain
    assert (ck / "stage1-epoch-2" / "trainer_state.json").exists()
    # no temporary file is left; the run-folder lock's file stays (an flock: the file is not the lock's state)
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == [".ltreg.lock"]
    assert len(result.history) == 2
