"""What a run reports while it trains: the per-epoch history, ``metrics.csv``, trackers and the console."""

from __future__ import annotations

import csv
import io
from pathlib import Path
from typing import Any

from ltreg.checkpoint import write_atomic

#: Keys of an epoch row that are bookkeeping, not losses.
_META = ("stage", "epoch", "steps", "seconds", "lr", "checkpoint", "global_step")


class RunLog:
    """Epoch rows (``history``), written to ``metrics.csv`` and the trackers, printed on the main process."""

    def __init__(self, run_dir: Path, accelerator: Any, history: list[dict[str, Any]] | None = None) -> None:
        self.run_dir, self.accelerator = run_dir, accelerator
        self.history: list[dict[str, Any]] = list(history or [])

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
            write_atomic(self.run_dir / "metrics.csv", buf.getvalue())
        scalars = {f"stage{row['stage']}/{k}": v for k, v in row.items() if isinstance(v, (int, float)) and k != "stage"}
        self.accelerator.log(scalars, step=row.get("global_step"))
        parts = "  ".join(f"{k} {v:.4f}" for k, v in row.items() if k not in _META)
        saved = "  [checkpoint]" if "checkpoint" in row else ""
        self.say(f"stage {row['stage']} epoch {row['epoch']:>3}  {parts}  lr {row['lr']:.4g}  {row['seconds']:.1f}s{saved}")

    def final(self, metrics: dict[str, Any], step: int) -> None:
        """The test metrics (All / Many / Medium / Few, balanced) to the trackers."""
        keys = ("top1", "balanced_acc", "many", "medium", "few")
        self.accelerator.log({f"test/{k}": metrics[k] for k in keys if k in metrics}, step=step)
