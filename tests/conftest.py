"""Shared fixtures: offline Hugging Face settings and small, fast training configurations."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")

ROOT = Path(__file__).resolve().parents[1]
LTREG = [sys.executable, "-m", "ltreg"]

#: A few steps of training on digits-LT: enough to see the loss move, fast on 2 cores.
TINY = {"epochs": 2, "max_steps_per_epoch": 4, "batch_size": 32, "log_every": 2, "eval_batch_size": 512}


@pytest.fixture
def tiny() -> dict:
    return dict(TINY)


@pytest.fixture
def subprocess_env(tmp_path: Path) -> dict:
    """Environment for a CLI subprocess: offline, private HF cache, unbuffered output."""
    env = dict(os.environ)
    env.update({"HF_HOME": str(tmp_path / "hf"), "PYTHONUNBUFFERED": "1", "HF_HUB_OFFLINE": "1",
                "HF_DATASETS_OFFLINE": "1"})
    return env
