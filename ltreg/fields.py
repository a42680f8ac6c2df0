"""Validation of every setting, at the bottom of the layers: types, ranges, NaN, choices, combinations.

One home for the checks that hyper-parameters (:class:`ltreg.method.HParams`), training settings
(:class:`ltreg.config.TrainConfig`) and data-set builder arguments share: :func:`check_type`,
:func:`check_range`, :func:`parse_value` (a command-line string read as a declared type), and the
training settings' own table (:data:`BOUNDS`, :data:`CHOICES`) with :func:`check_settings`.

Every numeric setting has a :class:`Bound`; NaN and ±inf are refused everywhere (``nan < lo`` is
false, so a plain comparison would let them through). Settings that make no sense together (a
warm-up as long as the run, milestones past the last epoch, ...) are refused too. Messages name the
flag as typed on the command line and the YAML / Python name, the allowed range and the value.
"""

from __future__ import annotations

import math
import re
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from ltreg.errors import ConfigError, SettingError


def flag(name: str) -> str:
    """``--max-steps-per-epoch (max_steps_per_epoch)``: the flag, and the YAML / Python key when it differs."""
    dashed = "--" + name.replace("_", "-")
    return dashed if "_" not in name else f"{dashed} ({name})"


@dataclass(frozen=True)
class Bound:
    """An allowed interval of a number (always finite); ``integer`` also refuses fractions."""

    lo: float | None = None
    hi: float | None = None
    lo_open: bool = False
    hi_open: bool = False
    integer: bool = False
    optional: str = ""  # what None means, when None is allowed

    def ok(self, value: Any) -> bool:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            return False
        if not math.isfinite(value) or (self.integer and not isinstance(value, int)):
            return False
        if self.lo is not None and (value < self.lo or (self.lo_open and value == self.lo)):
            return False
        return self.hi is None or (value < self.hi if self.hi_open else value <= self.hi)

    def describe(self) -> str:
        """``>= 1 (an integer)``, ``in (0, 1] (a finite number)``, ..."""
        kind = "an integer" if self.integer else "a finite number"
        if self.lo is not None and self.hi is not None:
            text = f"in {'(' if self.lo_open else '['}{_num(self.lo)}, {_num(self.hi)}{')' if self.hi_open else ']'}"
        elif self.lo is not None:
            text = f"{'>' if self.lo_open else '>='} {_num(self.lo)}"
        else:
            text = f"{'<' if self.hi_open else '<='} {_num(self.hi)}" if self.hi is not None else "set"
        return f"{text} ({kind}{'; or none: ' + self.optional if self.optional else ''})"


def _num(x: float) -> str:
    return str(int(x)) if float(x).is_integer() else repr(x)


#: The allowed range of every numeric setting.
BOUNDS: dict[str, Bound] = {
    "imbalance": Bound(lo=1, optional="the builder's default; it is n_max / n_min"),
    "epochs": Bound(lo=1, integer=True),
    "batch_size": Bound(lo=1, integer=True),
    "lr": Bound(lo=0, lo_open=True),
    "momentum": Bound(lo=0, hi=1, hi_open=True),
    "weight_decay": Bound(lo=0),
    "warmup_epochs": Bound(lo=0, integer=True),
    "lr_decay": Bound(lo=0, hi=1, lo_open=True),
    "stage2_epochs": Bound(lo=0, integer=True, optional="the rebalancer's default"),
    "stage2_lr": Bound(lo=0, lo_open=True, optional="the rebalancer's default, else --lr"),
    "stage2_batch_size": Bound(lo=1, integer=True, optional="--batch-size"),
    "holdout_fraction": Bound(lo=0, hi=1, lo_open=True, hi_open=True),
    "min_free_mb": Bound(lo=0, integer=True),
    "seed": Bound(lo=0, hi=2**32 - 1, integer=True),
    "num_workers": Bound(lo=0, hi=1024, integer=True, optional="from the CPUs available"),
    "grad_accum": Bound(lo=1, integer=True),
    "checkpoint_every": Bound(lo=1, integer=True),
    "log_every": Bound(lo=1, integer=True),
    "budget_fraction": Bound(lo=0, lo_open=True, hi=1),
    "mix_alpha": Bound(lo=0, lo_open=True, hi=100),
    "max_steps_per_epoch": Bound(lo=1, integer=True, optional="the whole epoch"),
    "eval_batch_size": Bound(lo=1, integer=True),
    "image_size": Bound(lo=1, hi=4096, integer=True, optional="the data set's image size"),
}

#: Settings with a fixed set of values.
CHOICES: dict[str, tuple[str, ...]] = {
    "schedule": ("cosine", "step", "constant", "onecycle", "poly"),
    "mixed_precision": ("no", "fp16", "bf16"),
    "normalize": ("data", "backbone"),
    "mix": ("mixup", "cutmix"),
}
UNSET_CHOICES = {"mix"}  # choices that may also be left unset (None: off)

#: Extra advice for one setting, appended to its range error.
ADVICE: dict[str, str] = {
    "epochs": "To evaluate a saved model without training, use `ltreg eval MODEL`.",
    "lr_decay": "It multiplies the learning rate at each milestone of --schedule step: a value <= 0 makes the "
                "learning rate zero or negative (gradient ascent).",
    "max_steps_per_epoch": "A value <= 0 would train nothing and save a random model.",
}

_REPO_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,95}/[A-Za-z0-9][A-Za-z0-9_.-]{0,95}$")


def check_settings(cfg: Any) -> None:
    """Raise :class:`SettingError` for the first setting out of range, then for contradicting settings."""
    for name, bound in BOUNDS.items():
        value = getattr(cfg, name)
        if value is None and bound.optional:
            continue
        if not bound.ok(value):
            advice = f" {ADVICE[name]}" if name in ADVICE else ""
            raise SettingError(f"{flag(name)} must be {bound.describe()}, got {value!r}.{advice}", [name])
    for name, options in CHOICES.items():
        if getattr(cfg, name) is None and name in UNSET_CHOICES:
            continue
        if getattr(cfg, name) not in options:
            raise SettingError(f"{flag(name)} must be one of {', '.join(options)}, got {getattr(cfg, name)!r}", [name])
    if cfg.push_to_hub is not None and not _REPO_ID.match(cfg.push_to_hub):
        raise SettingError(f"{flag('push_to_hub')} must be a Hub repo id org/name, got {cfg.push_to_hub!r} "
                           f"(checked now, so that a finished run is not lost to a typo)", ["push_to_hub"])
    _check_together(cfg)


def _check_together(cfg: Any) -> None:
    if cfg.warmup_epochs >= cfg.epochs and cfg.warmup_epochs > 0:
        raise SettingError(
            f"--warmup-epochs {cfg.warmup_epochs} must be smaller than --epochs {cfg.epochs}: the whole run "
            f"would be warm-up and the learning rate would never reach --lr. Lower --warmup-epochs (0 turns it off) "
            f"or raise --epochs", ["warmup_epochs", "epochs"])
    ms = cfg.milestones
    if any(isinstance(m, bool) or not isinstance(m, int) for m in ms):
        raise SettingError(f"--milestones must be whole epochs (integers), got {ms!r}", ["milestones"])
    if list(ms) != sorted(set(ms)):
        raise SettingError(f"--milestones must be strictly increasing epochs, got {ms!r}", ["milestones"])
    bad = [m for m in ms if not 0 < m < cfg.epochs]
    if bad:
        raise SettingError(
            f"--milestones {bad} lie outside 1..{cfg.epochs - 1} (--epochs {cfg.epochs}): a milestone at or past the "
            f"last epoch never lowers the learning rate, one at 0 lowers it from the start. Give milestones below "
            f"--epochs (the usual 80 % and 90 % of the run: --milestones {round(cfg.epochs * 0.8)},{round(cfg.epochs * 0.9)}) or raise --epochs",
            ["milestones", "epochs"])


# -- types and ranges shared by hyper-parameters, settings and builder arguments ---------------------
def check_range(name: str, value: float, meta: Mapping[str, Any]) -> None:
    """A number within the field's ``min`` / ``max``; NaN always refused, ±inf unless a bound is infinite."""
    lo, hi = meta.get("min"), meta.get("max")
    strict = meta.get("min_exclusive", False)
    where = f"hyper-parameter {name}={value!r} (--hp {name}=VALUE)"
    allowed = f"{'>' if strict else '>='} {lo}" if lo is not None else ""
    if hi is not None:
        allowed = f"{allowed} and <= {hi}" if allowed else f"<= {hi}"
    if math.isnan(value) or (math.isinf(value) and not meta.get("allow_inf") and value not in (lo, hi)):
        raise ConfigError(f"{where} must be a finite number{' ' + allowed if allowed else ''}")
    if lo is not None and (value < lo or (strict and value == lo)):
        raise ConfigError(f"{where} must be {allowed}")
    if hi is not None and value > hi:
        raise ConfigError(f"{where} must be {allowed}")


def check_type(owner: str, name: str, value: Any, tp: Any) -> None:
    origin = typing.get_origin(tp)
    if tp is Any:
        return
    if origin in (typing.Union, types.UnionType):
        options = typing.get_args(tp)
        if any(type_ok(value, o) for o in options):
            return
    elif type_ok(value, tp):
        return
    if owner == "TrainConfig":
        raise ConfigError(f"{flag(name)} must be of type {_tname(tp)}, got {value!r}")
    raise ConfigError(f"hyper-parameter {name}={value!r} of {owner} must be of type {_tname(tp)}")


def type_ok(value: Any, tp: Any) -> bool:
    if tp is type(None):
        return value is None
    if typing.get_origin(tp) is typing.Literal:
        return value in typing.get_args(tp)
    base = typing.get_origin(tp) or tp
    if base is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if base is int:
        return isinstance(value, int) and not isinstance(value, bool)
    return isinstance(value, base) if isinstance(base, type) else True


def _tname(tp: Any) -> str:
    return getattr(tp, "__name__", str(tp))


def parse_value(text: str, tp: Any, name: str) -> Any:
    """Parse a CLI string into the declared type of a field."""
    options = typing.get_args(tp) if typing.get_origin(tp) in (typing.Union, types.UnionType) else (tp,)
    if text.lower() in ("none", "null") and type(None) in options:
        return None
    for option in options:
        if option is bool:
            if text.lower() in ("true", "1", "yes", "on"):
                return True
            if text.lower() in ("false", "0", "no", "off"):
                return False
        elif option is int:
            try:
                return int(text)
            except ValueError:
                pass
        elif option is float:
            try:
                return float(text)
            except ValueError:
                pass
        elif option is str or typing.get_origin(option) is typing.Literal:
            return text
    raise ConfigError(f"{name}={text!r} cannot be read as {_tname(tp)}")
