"""Training checkpoints, and the run folder's guard against overwriting what is not ltreg's.

A checkpoint is a folder ``RUN/checkpoints/<name>/`` holding Accelerate's state (optimizer,
scheduler, RNG), the model and part tensors as ``ltreg_state.safetensors``, ``trainer_state.json``
and ``manifest.json`` (SHA-256 of every other file). It is written under a temporary name, verified,
renamed, and only then does the pointer ``checkpoints/latest`` move to it (atomically); every file goes
through :mod:`ltreg.files` (no link followed, nothing written outside the run folder). Every path
this module reads from a file is confined to the checkpoints folder: a pointer is a plain folder
name, never a path to follow.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import Tensor, nn

from ltreg.errors import CheckpointError, ResumeStateError, RunFolderError
from ltreg.files import (
    TMP_PREFIX,
    Manifest,
    clean_leftovers,
    follow_umask,
    fsync_dir,
    make_dir,
    make_dir_exclusive,
    owned_by_ltreg,
    remove,
    write_atomic,
    write_manifest,
    write_with,
)
from ltreg.layout import (
    ADAPTER_DIR,
    CHECKPOINTS_DIR,
    MANIFEST,
    POINTER,
    RUN_FILES,
    STATE_WEIGHTS,
    TRAINER_STATE,
)

#: A checkpoint's folder name: what ``latest`` may hold (no separators, no dots in front).
NAME = re.compile(r"^stage[12]-epoch-[0-9]{1,6}$")


@dataclass
class TrainerState:
    """A checkpoint's state record: where the run stood (stage, epochs and steps done in it) and the settings
    it ran with. ``--resume`` reads where to continue from this record, never from the folder's name."""

    stage: int
    epoch: int
    step: int = 0  # loop steps (batches) done in this stage: epoch * steps per epoch
    history: list[dict[str, Any]] = field(default_factory=list)
    fingerprint: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def read(cls, path: Path) -> TrainerState:
        """The record in ``path``; missing, unreadable or ill-typed is a :class:`ResumeStateError`."""
        try:
            raw = json.loads(path.read_text())
            stage, epoch, step = raw["stage"], raw["epoch"], raw.get("step", 0)
            if not all(type(v) is int for v in (stage, epoch, step)) or stage < 1 or epoch < 0 or step < 0:
                raise ValueError(f"stage {stage!r}, epoch {epoch!r}, step {step!r} are not counts (stage >= 1)")
            return cls(stage=stage, epoch=epoch, step=step, history=list(raw.get("history", [])),
                       fingerprint=dict(raw.get("fingerprint", {})))
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
            raise ResumeStateError(
                f"the state record {path} of this checkpoint is missing or corrupt ({type(exc).__name__}: {exc}); "
                f"--resume cannot tell where the run stood. Delete the checkpoint folder and resume from an earlier "
                f"one, or start over with --overwrite") from exc


def module_tensors(modules: dict[str, nn.Module]) -> dict[str, Tensor]:
    """Every module's state dict under ``"<prefix>.<key>"``, on CPU and contiguous (safetensors needs both)."""
    return {f"{prefix}.{k}": v.detach().cpu().contiguous()
            for prefix, mod in modules.items() for k, v in mod.state_dict().items()}


def load_module_tensors(path: Path, modules: dict[str, nn.Module]) -> None:
    """Load ``module_tensors`` output back; a shape or key mismatch names the module and the tensor."""
    try:
        tensors = load_file(str(path))
    except (SafetensorError, OSError) as exc:
        raise CheckpointError(f"{path} is corrupt or truncated ({exc})") from exc
    for prefix, mod in modules.items():
        mine = {k[len(prefix) + 1:]: v for k, v in tensors.items() if k.startswith(prefix + ".")}
        want = mod.state_dict()
        diff = [f"{k}: missing" for k in want if k not in mine] + [f"{k}: not in this run" for k in mine if k not in want]
        diff += [f"{k}: {tuple(mine[k].shape)} in the checkpoint, {tuple(v.shape)} now" for k, v in want.items()
                 if k in mine and mine[k].shape != v.shape]
        if diff:  # named here: torch's own message is many lines long
            raise CheckpointError(f"{path} does not fit this run's {prefix} ({'; '.join(diff[:4])}"
                                  f"{' ...' if len(diff) > 4 else ''}): it was written by a run with another data set "
                                  f"or model. Resume with the run's own settings, or train into a new --output-dir")
        try:
            mod.load_state_dict(mine)
        except RuntimeError as exc:
            raise CheckpointError(f"{path} does not fit this run's {prefix} ({str(exc).splitlines()[0]}...): it was "
                                  f"written by a run with other settings") from exc


def guard_run_folder(run_dir: Path, resume: bool, overwrite: bool) -> None:
    """Never overwrite an existing run unasked, nor anything that is not ltreg's.

    A folder holding run files needs ``--resume`` or ``--overwrite``; ``--overwrite`` needs the folder's
    ``manifest.json`` to say ltreg wrote it (a user's own ``README.md`` or ``config.json`` is never
    deleted), and then removes only the files a run writes (a link is removed, never followed). The
    caller holds the run-folder lock.
    """
    ckpt = run_dir / CHECKPOINTS_DIR
    present = [n for n in RUN_FILES if n != MANIFEST and os.path.lexists(run_dir / n)]  # a run's mark alone: no run yet
    present += [f"{CHECKPOINTS_DIR}/"] if os.path.lexists(ckpt) else []
    if not present or resume:
        return
    listed = f"{', '.join(present[:4])}{' ...' if len(present) > 4 else ''}"
    if not owned_by_ltreg(run_dir):
        raise RunFolderError(
            f"{run_dir} holds {listed} but is not an ltreg run folder (no {MANIFEST} written by ltreg), so ltreg "
            f"neither writes over nor deletes these files{' (--overwrite included)' if overwrite else ''}. Pass "
            f"--output-dir with a new or empty folder, or move those files away"
        )
    if not overwrite:
        raise RunFolderError(
            f"{run_dir} already holds a run ({listed}). Pass --resume to continue it, --overwrite to start over (its "
            f"checkpoints and model files are deleted), or --output-dir for a new folder"
        )
    # the adapter-only export of a run is one of its model files; MANIFEST last: a killed --overwrite leaves the
    # folder ltreg's
    for name in (CHECKPOINTS_DIR, ADAPTER_DIR, *RUN_FILES):
        remove(run_dir / name)
    fsync_dir(run_dir)


def claim_run_folder(run_dir: Path) -> list[str]:
    """Mark ``run_dir`` as an ltreg run (a ``manifest.json`` of kind ``run``, when it has none) and remove a
    killed run's temporary files; the caller holds the run-folder lock. Returns what was removed."""
    make_dir(run_dir)
    gone = clean_leftovers(run_dir, run_dir / CHECKPOINTS_DIR)
    if not owned_by_ltreg(run_dir):
        write_manifest(run_dir, "run", [], root=run_dir)
    return gone


class Checkpoints:
    """Save / find / load the checkpoints of one run folder (``run_dir/checkpoints``)."""

    def __init__(self, run_dir: Path, accelerator: Any) -> None:
        self.root = Path(run_dir) / CHECKPOINTS_DIR
        self.accelerator = accelerator

    def _confined(self, name: str) -> Path | None:
        """``root/name`` if ``name`` is a checkpoint folder name and the folder is a real one inside root."""
        if not NAME.match(name):
            return None
        path = self.root / name
        if path.is_symlink() or not path.is_dir() or path.resolve().parent != self.root.resolve():
            return None
        return path

    def _check_root(self) -> None:
        """``checkpoints/`` must be a real folder of the run: through a link, saving and deleting would act elsewhere."""
        if self.root.is_symlink():
            raise CheckpointError(f"{self.root} is a symbolic link ({self.root.resolve()}): ltreg writes and deletes "
                                  f"checkpoints only inside the run folder. Remove the link, or pass --output-dir")

    def existing(self) -> list[Path]:
        """Checkpoint folders present, pointer or not (by name, oldest first)."""
        self._check_root()
        if not self.root.is_dir():
            return []
        found = [p for p in self.root.iterdir() if self._confined(p.name) is not None]
        return sorted(found, key=lambda p: (p.name[:6], int(p.name.rsplit("-", 1)[1])))

    def latest(self) -> Path | None:
        """The folder ``latest`` names, if it is a checkpoint folder inside root; else None."""
        self._check_root()
        pointer = self.root / POINTER
        if not pointer.is_file() or pointer.is_symlink():
            return None
        try:
            name = pointer.read_text(errors="strict").strip()
        except (OSError, UnicodeDecodeError):
            return None
        return self._confined(name)

    def save(self, name: str, modules: dict[str, nn.Module], state: TrainerState) -> Path:
        """Write checkpoint ``name`` (collective: every process calls it), then move the pointer."""
        if not NAME.match(name):
            raise CheckpointError(f"invalid checkpoint name {name!r}")
        self._check_root()
        acc = self.accelerator
        run_dir = self.root.parent
        tmp = self.root / f"{TMP_PREFIX}{name}"
        if acc.is_main_process:
            make_dir(self.root, root=run_dir)
            make_dir_exclusive(tmp)  # a link or folder planted at that name is removed, never written through
        acc.wait_for_everyone()
        acc.save_state(str(tmp), safe_serialization=True)  # optimizer, scheduler, RNG states of every process
        acc.wait_for_everyone()  # every process has written its RNG state before the rename
        final = self.root / name
        if acc.is_main_process:
            try:
                tensors = module_tensors(modules)
                write_with(tmp / STATE_WEIGHTS, lambda f: save_file(tensors, f), root=run_dir)
                write_atomic(tmp / TRAINER_STATE, json.dumps(asdict(state), indent=1, default=str), root=run_dir)
                follow_umask(tmp)  # Accelerate's and torch's files too
                write_manifest(tmp, "checkpoint", root=run_dir)
            except BaseException:  # e.g. a full disk: drop the partial folder, keep the previous checkpoint
                remove(tmp)
                raise
            previous = self.latest()
            remove(final)  # a link there is removed, never followed
            os.replace(tmp, final)
            fsync_dir(self.root)
            write_atomic(self.root / POINTER, name, root=run_dir)
            if previous is not None and previous != final:  # confined by latest(): inside root
                remove(previous)
        acc.wait_for_everyone()
        return final

    def resume_point(self) -> Path | None:
        """The checkpoint ``--resume`` continues from; None when the run has none yet.

        Checkpoint folders without a valid ``latest`` pointer are an error, not a fresh start: starting
        over would later delete them.
        """
        path = self.latest()
        if path is None and (found := self.existing()):
            raise CheckpointError(
                f"{self.root} holds checkpoints ({', '.join(p.name for p in found)}) but its '{POINTER}' pointer is "
                f"missing or invalid. Write the name of the one to continue from into {self.root / POINTER} "
                f"(e.g. `echo {found[-1].name} > {self.root / POINTER}`), or start over with --overwrite"
            )
        pointer = self.root / POINTER
        if path is None and (pointer.exists() or pointer.is_symlink()):  # it names something that is not ours
            raise CheckpointError(
                f"the '{POINTER}' pointer {pointer} does not name a checkpoint folder inside {self.root} (it must "
                f"hold a plain name like stage1-epoch-3; links and paths are never followed), and there is no "
                f"checkpoint to continue from. Delete {pointer} to train from the start, or start over with --overwrite"
            )
        return path

    def state(self, path: Path) -> TrainerState:
        """The state record of checkpoint ``path`` (stage, epoch, step): where ``--resume`` continues."""
        return TrainerState.read(path / TRAINER_STATE)

    def load(self, path: Path, modules: dict[str, nn.Module], fingerprint: dict[str, Any] | None = None) -> TrainerState:
        """Verify and load checkpoint ``path`` into the prepared objects and ``modules``.

        ``fingerprint`` (the settings that change the result) must equal the one the checkpoint was
        written with; a difference is named before anything is loaded.
        """
        Manifest.read(path, f"checkpoint {path}").verify(path, f"checkpoint {path}")
        state = TrainerState.read(path / TRAINER_STATE)
        if fingerprint is not None and "data" not in state.fingerprint:  # a checkpoint from before data identity
            fingerprint = {k: v for k, v in fingerprint.items() if k != "data"}
        if fingerprint is not None and state.fingerprint and state.fingerprint != fingerprint:
            diff = [f"{k}: {state.fingerprint.get(k)!r} in the run, {fingerprint.get(k)!r} now"
                    for k in sorted(set(state.fingerprint) | set(fingerprint)) if state.fingerprint.get(k) != fingerprint.get(k)]
            raise CheckpointError(
                f"--resume would continue {path.parent.parent} with other settings than it was trained with ("
                + "; ".join(diff[:6]) + "). Resume with the same settings, or train into a new --output-dir"
            )
        load_module_tensors(path / STATE_WEIGHTS, modules)  # first: a shape mismatch is named tensor by tensor
        try:
            self.accelerator.load_state(str(path))
        except Exception as exc:  # noqa: BLE001 - accelerate/torch raise many kinds for a bad state file
            first = (str(exc).strip().splitlines() or [""])[0]
            raise CheckpointError(f"cannot load the optimizer / scheduler / RNG state of {path} "
                                  f"({type(exc).__name__}: {first})") from exc
        return state
