"""``ltreg.train(...)`` and :class:`Trainer`: resolve a run's configuration, build it, run the loop.

The work is done in three rooms: :mod:`ltreg.config` (layers -> ``RunConfig``), :mod:`ltreg.run`
(``build_run`` constructs data, model, parts, optimizer inputs) and :mod:`ltreg.loop` (``fit``
trains, checkpoints, evaluates, saves). This module only connects them.
"""

from __future__ import annotations

from typing import Any

from ltreg.config import DEFAULT_METHOD, RunConfig, load_yaml, resolve_config
from ltreg.errors import NonFiniteLossError, TrainingError
from ltreg.loop import RunResult, fit
from ltreg.method import get_method
from ltreg.run import Run, build_run


class Trainer:
    """``Trainer(resolve_config(spec, overrides)).fit() -> RunResult``; ``.run`` is the built :class:`Run`."""

    def __init__(self, config: RunConfig) -> None:
        self.run: Run = build_run(config)

    def fit(self) -> RunResult:
        try:
            return fit(self.run)
        finally:
            if self.run.lock is not None:  # the run folder is free for the next training
                self.run.lock.release()


def train(method: str | None = None, yaml_path: str | None = None, **overrides: Any) -> RunResult:
    """Train ``method`` with keyword overrides of :class:`~ltreg.config.TrainConfig` (``hparams={...}`` for the method)."""
    yaml_values = load_yaml(yaml_path) if yaml_path else {}
    spec = get_method(method or overrides.pop("method", None) or yaml_values.get("method") or DEFAULT_METHOD)
    overrides.pop("method", None)
    return Trainer(resolve_config(spec, overrides, yaml_values)).fit()


__all__ = ["Trainer", "RunResult", "TrainingError", "NonFiniteLossError", "train"]
