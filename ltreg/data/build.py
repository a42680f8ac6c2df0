"""A run's data: the registered builder, the run defaults it carries, its arguments, what it inferred.

* ``build_data(cfg) -> LTData``: call the data set builder with the run's root, imbalance, profile,
  seed and ``dataset_kwargs``, after checking those arguments against the builder's signature;
  validate the result fully (so a bad data set stops before anything is written) and fill
  ``LTData.summary``, the one line the trainer prints.
* ``with_defaults(**values)``: attach run defaults (backbone, epochs, batch size, lr, ...) to a builder;
  ``dataset_defaults(name)`` reads them back, so a plugin's data set brings its own.
* ``parse_data_arg("NAME=VALUE")``: a ``--data-arg`` flag, its value read as one YAML scalar.
"""

from __future__ import annotations

import dataclasses
import difflib
import inspect
import re
import types
import typing
from collections.abc import Callable, Sequence
from types import MappingProxyType
from typing import Any, TypeVar

from ltreg.data.lt import LTData, class_split_sizes
from ltreg.errors import DataArgumentError, DataError
from ltreg.fields import type_ok
from ltreg.registry import registry

F = TypeVar("F", bound=Callable[..., Any])

#: The attribute ``with_defaults`` sets on a builder.
DEFAULTS_ATTR = "ltreg_defaults"
#: Builder arguments that come from their own flags rather than ``--data-arg``.
RUN_ARGUMENTS = {"root": "--data-root", "imbalance": "--imbalance", "profile": "--profile", "seed": "--seed"}
_FLOAT = re.compile(r"^[-+]?(\d+\.?\d*|\.\d+)[eE][-+]?\d+$")


def with_defaults(**values: Any) -> Callable[[F], F]:
    """Decorator: the run defaults (``TrainConfig`` keys) of the data set this builder makes.

    ``@register_dataset("my-lt")`` above ``@with_defaults(backbone="resnet20", epochs=50)`` makes
    ``ltreg train --dataset my-lt`` start from them; the method's defaults, a recipe, a YAML file and
    flags still override them.
    """

    def attach(builder: F) -> F:
        setattr(builder, DEFAULTS_ATTR, MappingProxyType(dict(values)))
        return builder

    return attach


def dataset_defaults(name: str) -> dict[str, Any]:
    """The run defaults registered data set ``name`` carries (``{}`` when it has none).

    An unknown name raises the registry's error listing the close matches; :func:`ltreg.config.resolve_config`
    checks that every key is a setting and names the data set when one is not.
    """
    return dict(getattr(registry("datasets").get(name), DEFAULTS_ATTR, None) or {})


# -- --data-arg ---------------------------------------------------------------------------------


def parse_data_arg(text: str) -> tuple[str, Any]:
    """``NAME=VALUE`` of ``--data-arg``: VALUE is read as one YAML scalar.

    ``32`` -> 32, ``0.5`` / ``1e-3`` -> float, ``true`` -> True, ``null`` or nothing -> None, anything
    else a string (dates stay the text written). Lists, mappings and tagged values (``!!python/...``)
    raise :class:`DataArgumentError`.
    """
    import yaml

    if "=" not in text:
        raise DataArgumentError(f"--data-arg expects NAME=VALUE, got {text!r}")
    name, raw = (part.strip() for part in text.split("=", 1))
    if not name.isidentifier():
        raise DataArgumentError(f"--data-arg {text!r}: {name!r} is not an argument name")
    if raw.startswith("!"):
        raise DataArgumentError(f"--data-arg {name}={raw}: YAML tags are not accepted; write the plain value")
    try:
        value = yaml.safe_load(raw) if raw else None
    except yaml.YAMLError as exc:
        raise DataArgumentError(
            f"--data-arg {name}={raw}: not a YAML scalar ({str(exc).splitlines()[0]}); quote it: {name}='\"{raw}\"'"
        ) from None
    if isinstance(value, str) and _FLOAT.match(value):  # YAML 1.1 reads 1e-3 as text
        value = float(value)
    if isinstance(value, (list, dict)):
        raise DataArgumentError(
            f"--data-arg {name}={raw}: a {type(value).__name__}, but data arguments are single values "
            f"(number, true/false, null or text); pass lists and mappings in a YAML run file (dataset_kwargs:)"
        )
    if not isinstance(value, (str, int, float, bool, type(None))):  # dates, timestamps, binary
        value = raw
    return name, value


def parse_data_args(pairs: list[str]) -> dict[str, Any]:
    """Every ``--data-arg`` of a command line; a name given twice is an error."""
    out: dict[str, Any] = {}
    for text in pairs:
        name, value = parse_data_arg(text)
        if name in out:
            raise DataArgumentError(f"--data-arg {name} given twice ({out[name]!r} and {value!r}); keep one")
        out[name] = value
    return out


# -- checking a builder's arguments ----------------------------------------------------------------


def _accepts(value: Any, tp: Any) -> bool:
    if tp is Any or tp is inspect.Parameter.empty:
        return True
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        return any(type_ok(value, option) for option in typing.get_args(tp))
    return type_ok(value, tp)


def _listing(params: dict[str, inspect.Parameter]) -> str:
    return ", ".join(
        name if p.default is inspect.Parameter.empty else f"{name}={p.default!r}"
        for name, p in params.items()
        if name not in RUN_ARGUMENTS
    )


def check_builder_args(dataset: str, builder: Callable[..., Any], kwargs: dict[str, Any],
                       complete: bool = True) -> None:
    """Raise :class:`DataArgumentError` for a name ``builder`` does not take, a wrong type, or (``complete``)
    a missing one: a configuration is checked before its data root is known, the call itself with it."""
    try:
        params = dict(inspect.signature(builder).parameters)
    except (TypeError, ValueError):  # a builtin or C callable: nothing to check against
        return
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        return
    named = {k: p for k, p in params.items() if p.kind is not inspect.Parameter.VAR_POSITIONAL}
    for key in kwargs:
        if key not in named:
            close = difflib.get_close_matches(key, list(named), n=2)
            hint = f" Did you mean {' or '.join(close)}?" if close else ""
            where = f"{RUN_ARGUMENTS[key]} does not apply to it" if key in RUN_ARGUMENTS else f"no argument {key!r}"
            raise DataArgumentError(
                f"data set {dataset!r}: {where}.{hint} Its arguments (--data-arg NAME=VALUE) are: "
                f"{_listing(named) or 'none'}"
            )
    missing = [k for k, p in named.items() if p.default is inspect.Parameter.empty and k not in kwargs]
    if missing and complete:
        flags = ", ".join(RUN_ARGUMENTS.get(k, f"--data-arg {k}=VALUE") for k in missing)
        raise DataArgumentError(f"data set {dataset!r} needs {', '.join(missing)}: pass {flags}")
    try:
        hints = typing.get_type_hints(builder)
    except Exception:  # noqa: BLE001 - unresolvable annotations: skip the type check
        return
    for key, value in kwargs.items():
        if key in hints and not _accepts(value, hints[key]):
            raise DataArgumentError(
                f"data set {dataset!r}: {key}={value!r} must be of type {getattr(hints[key], '__name__', hints[key])}"
            )


# -- the run's data ---------------------------------------------------------------------------------


def validate(data: LTData) -> None:
    """Everything about the data that can be checked without decoding every image: every training class
    present, test / val splits with the training split's classes (labels in range are checked by LTDataset)."""
    data.train.check_train()
    for split in (data.test, data.val):
        if split is None:
            continue
        if split.num_classes != data.train.num_classes or list(split.class_names) != list(data.train.class_names):
            raise DataError(
                f"{split.name}: its {split.num_classes} classes differ from the training split's "
                f"{data.train.num_classes}; both must list the same classes in the same order"
            )
        if len(split) == 0:
            raise DataError(f"{split.name} has no images")


def describe(data: LTData) -> str:
    """One line: images, classes, many / medium / few, image format, and the builder's own notes."""
    train = data.train
    counts = train.class_counts
    sizes = class_split_sizes(counts, train.many_thr, train.few_thr)
    line = (
        f"{train.name}: {len(train)} training images in {train.num_classes} classes "
        f"(counts {int(counts.max())}..{int(counts.min())}; many > {train.many_thr}: {sizes['many']}, "
        f"few < {train.few_thr}: {sizes['few']}, medium: {sizes['medium']}), {len(data.test)} test images"
        f"{f', {len(data.val)} val images' if data.val is not None else ''}, "
        f"{train.channels}-channel {train.image_size} px"
    )
    return f"{line}; {data.summary}" if data.summary else line


@dataclasses.dataclass
class DataArgs:
    """The builder's name and every argument it is called with (``None``: the builder's default).

    A run records it (``config.json``), so that ``ltreg eval`` rebuilds exactly the data the model was
    trained on.
    """

    dataset: str
    root: str | None = None
    imbalance: float | None = None
    profile: str | None = None
    seed: int = 0
    kwargs: dict[str, Any] = dataclasses.field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def call_kwargs(self) -> dict[str, Any]:
        """Keyword arguments for the builder: the seed, the extra ones, and each of the others that is set."""
        out: dict[str, Any] = {"seed": self.seed, **self.kwargs}
        for key in ("root", "imbalance", "profile"):
            value = getattr(self, key)
            if value is not None:
                out[key] = value
        return out


def build_data(args: DataArgs) -> LTData:
    """The registered data set builder called with ``args`` (checked against its signature first); the
    result is validated fully, so a bad data set stops before anything is written."""
    builder = registry("datasets").get(args.dataset)
    kwargs = args.call_kwargs()
    check_builder_args(args.dataset, builder, kwargs)
    data = builder(**kwargs)
    validate(data)
    data.summary = describe(data)
    return data


def with_input(data: LTData, image_size: int | None = None, mean: Sequence[float] | None = None,
               std: Sequence[float] | None = None) -> LTData:
    """``data`` with every split's views at ``image_size`` and normalised with ``mean`` / ``std`` (None: as is).

    The images are unchanged; the pipelines resize (a ViT pretrained at 224 on 32 px CIFAR: LIFT's set-up).
    Statistics must have one value per channel (or one for all)."""
    for name, stats in (("mean", mean), ("std", std)):
        if stats is not None and len(stats) not in (1, data.train.channels):
            raise DataError(f"{data.train.name} has {data.train.channels} channel(s) but the {name} to normalise with "
                            f"has {len(stats)} values ({list(stats)}); use --normalize data")
    changes: dict[str, Any] = {k: v for k, v in (("image_size", image_size), ("mean", tuple(mean) if mean else None),
                                                  ("std", tuple(std) if std else None)) if v is not None}
    if not changes:
        return data
    def fix(split: Any) -> Any:
        if split is None:
            return None
        info = {**split.info, "native_image_size": split.info.get("native_image_size", split.image_size)}
        return dataclasses.replace(split, info=info, **changes)

    return dataclasses.replace(data, train=fix(data.train), test=fix(data.test), val=fix(data.val))


__all__ = [
    "DataArgs",
    "with_input",
    "build_data",
    "check_builder_args",
    "dataset_defaults",
    "describe",
    "parse_data_arg",
    "parse_data_args",
    "validate",
    "with_defaults",
]
