"""Tuners: how a backbone is adapted (the fifth declared part of a method; entry-point group ``ltreg.tuners``).

``full`` (everything trains; the default), ``linear`` (frozen backbone), ``bitfit``, ``layernorm``,
``lora`` / ``dora`` / ``ia3`` (through ``peft``) and ``adaptformer``. A method names its default
(``MethodSpec(tuner=PartRef("lora", r=8))``); ``--tuner NAME`` and ``--tuner-arg k=v`` override it.
A third-party tuner subclasses :class:`Tuner` and registers with ``register_tuner`` or an entry point.
"""

from __future__ import annotations

from typing import Any

from ltreg.errors import TunerError
from ltreg.registry import registry
from ltreg.tuners.base import TunedParams, Tuner, backbone_family, count


def build_tuner(name: str, **kwargs: Any) -> Tuner:
    """The tuner registered as ``name`` with ``kwargs`` (checked: unknown arguments and bad values are errors)."""
    factory = registry("tuners").get(name)
    if not (isinstance(factory, type) and issubclass(factory, Tuner)):
        raise TunerError(f"tuner {name!r} is a {type(factory).__name__}, not a subclass of ltreg.Tuner")
    return factory.create(**kwargs)


def tuner_from_dict(raw: Any, label: str) -> Tuner:
    """The tuner a ``config.json`` names (``{"name": ..., "args": {...}}``), checked as data."""
    if not (isinstance(raw, dict) and isinstance(raw.get("name"), str) and isinstance(raw.get("args", {}), dict)):
        raise TunerError(f"{label}: the tuner must be a mapping {{name, args}}, got {str(raw)[:80]!r}")
    if raw["name"] not in registry("tuners"):
        raise TunerError(f"{label} was saved with the tuner {raw['name']!r}, which is not installed here; install the "
                         f"package that provides it")
    return build_tuner(raw["name"], **raw.get("args", {}))


__all__ = ["TunedParams", "Tuner", "TunerError", "backbone_family", "build_tuner", "count", "tuner_from_dict"]
