"""Every error class ltreg raises on purpose, in one module at the bottom of the layers.

``LtregError`` is the base; its message says what went wrong, which file or flag, and how to fix it.
``UsageError`` marks bad input (flags, config files, names, data): the command line exits with status 2
for it and 1 for any other ``LtregError``. Every layer imports its errors from here, so no module has
to import a higher one to raise or catch an error::

    LtregError                       exit 1
    ├── UsageError                   exit 2
    │   ├── ConfigError              (ValueError) a setting or name that cannot be used
    │   │   ├── ModelConfigError     an unknown backbone, an inconsistent head
    │   │   ├── SpecError            a method spec's declared views / stages that cannot be used
    │   │   ├── SettingError         a training setting out of range or contradicting another
    │   │   └── ClassNamesError      class names that cannot make text prompts (missing, bare indices)
    │   ├── MissingExtraError        (ImportError) an optional extra a setting needs: pip install ltreg[EXTRA]
    │   ├── RegistryError            (LookupError) Unknown / Duplicate name, PluginLoad failure
    │   ├── DataError                (ValueError) DataLayout / DataArgument / ImageDecode errors
    │   ├── RunFolderError           a run folder that is not ltreg's, is locked by another run, or has a link
    │   ├── PrototypeError           (ValueError)
    │   ├── TunerError               (ValueError) a tuner that does not fit the backbone, or its arguments
    │   └── RebalanceError           (ValueError)
    ├── CheckpointError              (ValueError) a checkpoint or model folder missing, corrupt or unsafe
    │   └── ResumeStateError         a checkpoint's state record (stage, epoch) missing or corrupt
    ├── TrainingError                (RuntimeError) a run that cannot go on; NonFiniteLossError
    ├── PeerError                    the main process of a distributed run refused (its exit status)
    └── PushError                    (RuntimeError) a Hub push that failed

The second bases keep ``except ValueError`` / ``except RuntimeError`` code working.
"""

from __future__ import annotations

from collections.abc import Sequence


class LtregError(Exception):
    """Base of every error ltreg raises on purpose; the message names the cause and the fix."""

    #: Exit status of the command line for this error (1: a runtime failure).
    exit_code: int = 1


class UsageError(LtregError):
    """Bad input: a flag, a config file, a name or a data set that cannot be used as given."""

    exit_code = 2


class ConfigError(UsageError, ValueError):
    """A configuration value that is unknown, of the wrong type or out of range."""


class SettingError(ConfigError):
    """A training setting out of range, or settings that contradict each other; ``names`` are the fields."""

    def __init__(self, message: str, names: Sequence[str]) -> None:
        super().__init__(message)
        self.names = tuple(names)


class ModelConfigError(ConfigError):
    """An unknown backbone or an inconsistent head configuration; ``key`` is the offending field."""

    def __init__(self, message: str, key: str = "") -> None:
        super().__init__(message)
        self.key = key


class SpecError(ConfigError):
    """A method spec whose declared contract (views, stages) cannot be used; names the method, the field and the fix."""


class RegistryError(UsageError, LookupError):
    """A name that cannot be resolved, or a conflict between providers."""


class UnknownNameError(RegistryError):
    pass


class DuplicateNameError(RegistryError):
    pass


class PluginLoadError(RegistryError):
    """A plugin's entry point failed to import; other names keep working."""


class DataError(UsageError, ValueError):
    """Bad data: labels out of range, an empty class, an impossible profile."""


class DataLayoutError(DataError):
    """A folder or table whose layout cannot be read unambiguously (split names mixed with classes ...)."""


class DataArgumentError(DataError):
    """A data set builder argument that the builder does not take, or a value that cannot be parsed."""


class ImageDecodeError(DataError):
    """An image that cannot be decoded (truncated, not an image); names the file or row and the fix."""


class RunFolderError(UsageError):
    """A run folder ltreg may not use as asked: not a run ltreg wrote, in use by another training, or reached
    through a symbolic link (writes never leave the run folder)."""


class PrototypeError(UsageError, ValueError):
    """A prototype module that cannot be built or updated as configured."""


class TunerError(UsageError, ValueError):
    """A tuner that does not fit the backbone (no layers to adapt), or tuner arguments it does not take."""


class RebalanceError(UsageError, ValueError):
    """A rebalancer that cannot apply to this model or data."""


class CheckpointError(LtregError, ValueError):
    """A checkpoint or model folder that cannot be used as asked: missing, corrupt, mismatched or unsafe."""


class ResumeStateError(CheckpointError):
    """The state record of a checkpoint (``trainer_state.json``: stage, epoch, step) is missing or corrupt."""


class TrainingError(LtregError, RuntimeError):
    """A run that cannot go on; the message says what was kept and what to do."""


class NonFiniteLossError(TrainingError):
    """The loss (or one of its parts) became NaN or infinite; the run stopped at the last good checkpoint."""


class PeerError(LtregError):
    """The main process of a distributed run stopped at a step only it takes (locking and checking the run
    folder); every other process raises this with its message and exit status instead of waiting for it."""

    def __init__(self, message: str, exit_code: int) -> None:
        super().__init__(message)
        self.exit_code = exit_code


class PushError(LtregError, RuntimeError):
    """A Hub push that failed; the message names the intact local folder and the command to retry."""


__all__ = ["LtregError", "UsageError", "ConfigError", "SettingError", "ModelConfigError", "SpecError", "RegistryError", "UnknownNameError", "DuplicateNameError", "PluginLoadError", "DataError", "DataLayoutError", "DataArgumentError", "ImageDecodeError", "PrototypeError", "TunerError", "RunFolderError", "RebalanceError", "CheckpointError", "ResumeStateError", "TrainingError", "NonFiniteLossError", "PeerError", "PushError", "MissingExtraError",
           "ClassNamesError"]


class MissingExtraError(UsageError, ImportError):
    """An optional dependency a setting needs is not installed; the message names ``pip install ltreg[EXTRA]``."""


class ClassNamesError(ConfigError):
    """Class names that cannot make text prompts: missing, bare indices, or a names file that does not fit."""
