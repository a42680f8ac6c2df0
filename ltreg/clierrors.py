"""How the command line reports a failure: one paragraph on stderr and an exit status, no traceback.

An :class:`~ltreg.errors.LtregError` is printed as it is (its message already names the cause, the
file or flag and the fix) with its ``exit_code``. A few failures from below ltreg (a full disk, a file
that cannot be opened, a truncated or corrupt saved file, running out of memory) are explained in
the same form with exit status 1. Anything else is an internal error: a bug to report, with the
traceback one ``--debug`` away.
"""

from __future__ import annotations

import errno
import pickle
import sys
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO

from ltreg.errors import LtregError
from ltreg.layout import CHECKPOINTS_DIR, POINTER


@dataclass(frozen=True)
class Failure:
    """What the user reads, and the exit status."""

    message: str
    exit_code: int


def _corrupt_file(exc: BaseException) -> bool:
    """A saved file that is truncated or not what its name says (safetensors header, zip of optimizer.bin)."""
    try:
        from safetensors import SafetensorError
    except ImportError:  # pragma: no cover - safetensors is a dependency
        SafetensorError = ()  # type: ignore[assignment,misc]  # noqa: N806
    if isinstance(exc, (SafetensorError, pickle.UnpicklingError, EOFError)):
        return True
    text = str(exc)
    return isinstance(exc, RuntimeError) and any(
        s in text for s in ("PytorchStreamReader", "failed finding central directory", "invalid header",
                            "unexpected EOF", "HeaderTooLarge", "InvalidHeader", "MetadataIncompleteBuffer"))


def latest_checkpoint(output_dir: str | None) -> Path | None:
    """The folder the ``latest`` pointer of a run folder names, when it can be read (for messages only)."""
    if not output_dir:
        return None
    try:
        name = (Path(output_dir) / CHECKPOINTS_DIR / POINTER).read_text().strip()
    except (OSError, UnicodeDecodeError):
        return None
    return Path(output_dir) / CHECKPOINTS_DIR / name


def explain(exc: BaseException, *, resuming: bool = False, checkpoint: Path | None = None) -> Failure:
    """The paragraph and exit status for ``exc`` (see the module docstring)."""
    if isinstance(exc, LtregError):
        return Failure(str(exc), exc.exit_code)
    text = f"{type(exc).__name__}: {str(exc).strip()}"
    if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return Failure(f"the disk is full ({exc.strerror}{': ' + str(exc.filename) if exc.filename else ''}). "
                       f"Free space (or pass --output-dir on another disk), then rerun the same command with "
                       f"--resume: it continues from the last complete checkpoint", 1)
    if "No space left on device" in str(exc) or "StorageFull" in str(exc):
        return Failure(f"the disk filled up while a file was written ({text}). Free space (or pass --output-dir "
                       f"on another disk), then rerun the same command with --resume: it continues from the last "
                       f"complete checkpoint", 1)
    if _corrupt_file(exc):
        which = f" ({checkpoint})" if checkpoint else " (under the run folder's checkpoints/)"
        where = (f" It happened while resuming: the latest checkpoint{which} is damaged. Rerun without --resume "
                 f"to train from the start (new checkpoints replace it)" if resuming else
                 " Save or download the file again (for a Hub repo, delete its cached copy)")
        return Failure(f"a saved file is truncated or corrupt ({text}).{where}", 1)
    if isinstance(exc, OSError):
        name = f" {exc.filename}" if exc.filename else ""
        return Failure(f"cannot access{name}: {exc.strerror or exc}. Check the path and its permissions", 1)
    if isinstance(exc, MemoryError) or type(exc).__name__ == "OutOfMemoryError":
        return Failure(f"out of memory ({text}). Lower --batch-size (or --eval-batch-size), use "
                       f"--mixed-precision bf16, or a smaller --backbone", 1)
    return Failure(f"internal error: {text}. This is a bug in ltreg or in a plugin, not in your input. Rerun "
                   f"the same command with --debug for the traceback and please report it (with the traceback) "
                   f"on the ltreg issue tracker", 1)


def report(exc: BaseException, *, debug: bool = False, resuming: bool = False, checkpoint: Path | None = None,
           stream: TextIO | None = None) -> int:
    """Print ``exc`` as one paragraph (and its traceback first with ``debug``); return the exit status."""
    stream = stream or sys.stderr
    if debug:
        traceback.print_exception(exc, file=stream)
    failure = explain(exc, resuming=resuming, checkpoint=checkpoint)
    print(f"ltreg: error: {failure.message}", file=stream)
    return failure.exit_code
