"""ltreg's error hierarchy: one base, so callers (and the CLI) catch one class.

``LtregError`` is the base of every error ltreg raises on purpose; its message says what went wrong,
which file or flag, and how to fix it. ``UsageError`` marks bad input (flags, config files, names,
data): the CLI exits with status 2 for it and 1 for any other ``LtregError``. The concrete classes
live next to the code that raises them and stay importable from there::

    LtregError                       ltreg.errors            exit 1
    ├── UsageError                   ltreg.errors            exit 2
    │   ├── ConfigError              ltreg.method / ltreg.errors  (ValueError)
    │   │   ├── ModelConfigError     ltreg.models.ltmodel
    │   │   └── SettingError         ltreg.settings
    │   ├── RegistryError            ltreg.registry          (LookupError; Unknown/Duplicate/PluginLoad)
    │   ├── DataError                ltreg.data.lt           (ValueError)
    │   ├── PrototypeError           ltreg.prototypes        (ValueError)
    │   ├── TunerError               ltreg.errors            (ValueError)
    │   └── RebalanceError           ltreg.rebalance         (ValueError)
    ├── CheckpointError              ltreg.hub               (ValueError)
    ├── TrainingError                ltreg.trainer           (RuntimeError; NonFiniteLossError)
    └── PushError                    ltreg.hub               (RuntimeError)

The second bases keep ``except ValueError`` / ``except RuntimeError`` code written before the
hierarchy working.
"""

from __future__ import annotations


class LtregError(Exception):
    """Base of every error ltreg raises on purpose; the message names the cause and the fix."""

    #: Exit status of the command line for this error (1: a runtime failure).
    exit_code: int = 1


class UsageError(LtregError):
    """Bad input: a flag, a config file, a name or a data set that cannot be used as given."""

    exit_code = 2


class ConfigError(UsageError, ValueError):
    """A configuration value that is unknown, of the wrong type or out of range."""


class TunerError(UsageError, ValueError):
    """A tuner that does not fit the backbone (no layers to adapt), or tuner arguments it does not take."""


__all__ = ["LtregError", "UsageError", "ConfigError", "TunerError"]
