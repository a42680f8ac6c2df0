"""What a run reports while it trains: a progress bar, the per-epoch history, ``metrics.csv``, trackers
and the console."""

from __future__ import annotations

import csv
import importlib.util
import io
import sys
from pathlib import Path
from typing import Any

from ltreg.checkpoint import write_atomic
from ltreg.errors import ConfigError
from ltreg.layout import METRICS_CSV

#: The package each Accelerate tracker needs (``--log-with NAME``).
TRACKER_PACKAGES = {"tensorboard": "tensorboard", "wandb": "wandb", "mlflow": "mlflow", "comet_ml": "comet_ml",
                    "aim": "aim", "clearml": "clearml", "dvclive": "dvclive", "swanlab": "swanlab", "trackio": "trackio"}


def check_tracker(name: str | None) -> None:
    """Stop before any work when ``--log-with`` names an unknown tracker or one whose package is missing
    (Accelerate would only warn, and the run would log nothing)."""
    if name is None:
        return
    if name not in TRACKER_PACKAGES:
        raise ConfigError(f"--log-with {name!r} is not an Accelerate tracker; use one of {', '.join(TRACKER_PACKAGES)}")
    package = TRACKER_PACKAGES[name]
    if importlib.util.find_spec(package) is None:
        raise ConfigError(f"--log-with {name} needs the package {package!r}, which is not installed: "
                          f"pip install {package.replace('_', '-')} (metrics.csv is always written)")


class Progress:
    """A progress bar for one epoch on the main process of an interactive terminal (loss, lr, it/s, ETA);
    nothing otherwise. Its loss is refreshed when the loop checks its loss anyway (every ``log_every`` steps)."""

    def __init__(self, total: int, desc: str, enabled: bool) -> None:
        self.bar = None
        if enabled:
            from tqdm.auto import tqdm

            self.bar = tqdm(total=total, desc=desc, leave=False, dynamic_ncols=True, unit="step")

    def step(self) -> None:
        if self.bar is not None:
            self.bar.update(1)

    def show(self, **values: float) -> None:
        if self.bar is not None:
            self.bar.set_postfix({k: f"{v:.4g}" for k, v in values.items()})

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()

#: Keys of an epoch row that are bookkeeping, not losses.
_META = ("stage", "epoch", "steps", "seconds", "lr", "checkpoint", "global_step")


class RunLog:
    """Epoch rows (``history``), written to ``metrics.csv`` and the trackers, printed on the main process."""

    def __init__(self, run_dir: Path, accelerator: Any, quiet: bool = False) -> None:
        self.run_dir, self.accelerator, self.quiet = run_dir, accelerator, quiet
        self.history: list[dict[str, Any]] = []

    def progress(self, total: int, desc: str) -> Progress:
        """The bar of one epoch: on the main process, in a terminal, unless ``--quiet``."""
        return Progress(total, desc, enabled=self.main and not self.quiet and sys.stderr.isatty())

    @property
    def main(self) -> bool:
        return bool(self.accelerator.is_main_process)

    def say(self, text: str) -> None:
        """A line on the console of the main process."""
        if self.main:
            print(text, flush=True)

    def epoch(self, row: dict[str, Any]) -> None:
        """Record a finished epoch (after its checkpoint is on disk): CSV, trackers, one console line."""
        self.history.append(row)
        if self.main:
            keys: list[str] = []
            for r in self.history:
                keys += [k for k in r if k not in keys]
            buf = io.StringIO()
            writer = csv.DictWriter(buf, fieldnames=keys)
            writer.writeheader()
            writer.writerows(self.history)
            write_atomic(self.run_dir / METRICS_CSV, buf.getvalue())
        scalars = {f"stage{row['stage']}/{k}": v for k, v in row.items() if isinstance(v, (int, float)) and k != "stage"}
        self.accelerator.log(scalars, step=self.steps)
        parts = "  ".join(f"{k} {v:.4f}" for k, v in row.items() if k not in _META)
        saved = "  [checkpoint]" if "checkpoint" in row else ""
        self.say(f"stage {row['stage']} epoch {row['epoch']:>3}  {parts}  lr {row['lr']:.4g}  {row['seconds']:.1f}s{saved}")

    @property
    def steps(self) -> int:
        """Optimizer steps done so far, over both stages: the trackers' global step."""
        return sum(int(r.get("steps", 0)) for r in self.history)

    def final(self, metrics: dict[str, Any]) -> None:
        """The test metrics (All / Many / Medium / Few, balanced) to the trackers, at the last step."""
        keys = ("top1", "balanced_acc", "many", "medium", "few")
        self.accelerator.log({f"test/{k}": metrics[k] for k in keys if metrics.get(k) is not None}, step=self.steps)
