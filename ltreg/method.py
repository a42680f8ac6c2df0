"""The method spec: the four parts a long-tailed method declares, its hyper-parameters and recipes.

A method is data, not code: ``MethodSpec(loss=PartRef("supcon", temperature=hp("temperature")), ...)``.
Parts are looked up by registry name when a run is built, so a plugin reuses core parts by naming them.
"""

from __future__ import annotations

import dataclasses
import inspect
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from ltreg.errors import ConfigError
from ltreg.fields import check_range, check_type, parse_value
from ltreg.registry import registry
from ltreg.tags import Reading, Tag


@dataclass(frozen=True)
class hp:  # noqa: N801 - reads as a marker inside a spec
    """A reference to a hyper-parameter, resolved when the part is built."""

    name: str


@dataclass(frozen=True)
class PartRef:
    """A registry name in a group plus keyword arguments (values may be :class:`hp` references)."""

    name: str
    kwargs: Mapping[str, Any] = field(default_factory=dict)

    def __init__(self, name: str, **kwargs: Any) -> None:
        object.__setattr__(self, "name", name)
        object.__setattr__(self, "kwargs", types.MappingProxyType(dict(kwargs)))

    def resolve_kwargs(self, hparams: Any) -> dict[str, Any]:
        return {k: getattr(hparams, v.name) if isinstance(v, hp) else v for k, v in self.kwargs.items()}

    def describe(self) -> str:
        args = ", ".join(f"{k}=hp.{v.name}" if isinstance(v, hp) else f"{k}={v!r}" for k, v in self.kwargs.items())
        return f"{self.name}({args})"


@dataclass(frozen=True)
class HParams:
    """Base for a method's typed hyper-parameters: subclass as a frozen dataclass.

    Ranges go in field metadata: ``field(default=0.1, metadata={"min": 0, "max": 1, "help": "..."})``
    (``min_exclusive`` makes the lower bound strict). Values are checked on construction.
    """

    def __post_init__(self) -> None:
        hints = typing.get_type_hints(type(self))
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            check_type(type(self).__name__, f.name, value, hints.get(f.name, Any))
            meta = f.metadata
            if "choices" in meta and value not in meta["choices"]:
                raise ConfigError(
                    f"hyper-parameter {f.name}={value!r} is not one of {list(meta['choices'])}"
                )
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                check_range(f.name, value, meta)

    def replace(self, **overrides: Any) -> HParams:
        """A copy with ``overrides`` (strings from the CLI are parsed to the field's type)."""
        known = {f.name: f for f in dataclasses.fields(self)}
        hints = typing.get_type_hints(type(self))
        parsed = {}
        for key, value in overrides.items():
            name = key.replace("-", "_")
            if name not in known:
                import difflib

                close = difflib.get_close_matches(name, list(known), n=3)
                hint = f" Did you mean {', '.join(close)}?" if close else ""
                raise ConfigError(
                    f"unknown hyper-parameter {key!r} for {type(self).__name__}.{hint} "
                    f"Known: {', '.join(sorted(known))}."
                )
            parsed[name] = parse_value(value, hints.get(name, Any), f"hyper-parameter {name}") if isinstance(value, str) else value
        return dataclasses.replace(self, **parsed)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass(frozen=True)
class Recipe:
    """A paper setting for one benchmark: training-config values plus hyper-parameter overrides.

    ``tags`` names the source of each value (:class:`~ltreg.tags.Tag`), keyed by the value's name in ``train``,
    ``hparams`` or ``paper`` (one name space: a name may not be in two of them). A tag for a name the recipe does
    not hold is an error; :meth:`untagged` lists the values still without one.
    """

    description: str
    train: Mapping[str, Any] = field(default_factory=dict)
    hparams: Mapping[str, Any] = field(default_factory=dict)
    paper: Mapping[str, float] = field(default_factory=dict)  # reported top-1 (All/Many/Medium/Few)
    tags: Mapping[str, Tag] = field(default_factory=dict)

    def __post_init__(self) -> None:
        groups = (set(self.train), set(self.hparams), set(self.paper))
        shared = (groups[0] & groups[1]) | (groups[0] & groups[2]) | (groups[1] & groups[2])
        if shared:
            raise ConfigError(f"recipe {self.description!r}: {', '.join(sorted(shared))} in more than one of train / "
                              f"hparams / paper; a name is one value, rename one of them")
        stray = set(self.tags) - set().union(*groups)
        if stray:
            raise ConfigError(f"recipe {self.description!r} tags {', '.join(sorted(stray))}, which it does not set; "
                              f"remove the tag or add the value")
        bad = [k for k, t in self.tags.items() if not isinstance(t, Tag)]
        if bad:
            raise ConfigError(f"recipe {self.description!r}: the tags of {', '.join(sorted(bad))} must be ltreg.Tag "
                              f"records (Tag.paper / Tag.code / Tag.ours)")

    def values(self) -> dict[str, Any]:
        """Every value of the recipe by name: train, then hparams, then paper numbers."""
        return {**self.train, **self.hparams, **self.paper}

    def untagged(self) -> list[str]:
        """Names of values without a source tag."""
        return [k for k in self.values() if k not in self.tags]


@dataclass(frozen=True)
class ModelSpec:
    """What the method needs from the model: classifier type and projection head shape.

    Any field may be an :class:`hp` reference (``ModelSpec(proj_dim=hp("proj_dim"))``) so that a recipe or
    ``--hp`` sets it (ICCL's smaller CIFAR embedding); :meth:`resolve` substitutes the run's values.
    """

    classifier: str = "linear"  # "linear" | "cosine"
    cosine_scale: float = 30.0
    proj_dim: int | str | None = 128  # None: no projection head; "width": the backbone's feature width
    proj_hidden: int | None = None  # None: the backbone's feature width
    proj_bn: bool = False
    #: The heads stage 1 trains; the others are frozen there (their loss ignores them, e.g. SupCon's
    #: classifier, trained by the rebalancer in stage 2). Distributed training relies on it: DDP is
    #: told that every trainable parameter receives a gradient each step.
    train_heads: tuple[str, ...] = ("projector", "classifier")

    def resolve(self, hparams: Any) -> ModelSpec:
        """A copy with every :class:`hp` field replaced by that hyper-parameter's value in ``hparams``."""
        refs = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        values = {k: getattr(hparams, v.name) for k, v in refs.items() if isinstance(v, hp)}
        return dataclasses.replace(self, **values) if values else self


@dataclass(frozen=True)
class MethodSpec:
    """A long-tailed method as data: its parts by registry name and its typed defaults."""

    name: str
    summary: str
    citation: str
    loss: PartRef
    hparams: HParams
    sampler: PartRef = field(default_factory=lambda: PartRef("instance"))
    prototypes: PartRef | None = None
    memory: PartRef | None = None
    batch_transform: PartRef | None = None
    rebalance: PartRef | None = None
    views: tuple[str, ...] = ("cls",)
    positive_views: tuple[str, ...] = ("sim",)  # views of k-global positives, when the sampler attaches them
    query_views: tuple[int, ...] | None = None  # views the query model runs on (None: all); MoCo key views go to the memory only
    model: ModelSpec = field(default_factory=ModelSpec)
    recipes: Mapping[str, Recipe] = field(default_factory=dict)
    train_defaults: Mapping[str, Any] = field(default_factory=dict)
    #: How the backbone is adapted (a registry name in ``ltreg.tuners``); None: the whole backbone trains.
    tuner: PartRef | None = None
    #: Sets the classifier's initial weights once the model is built (``ltreg.head_inits``, e.g. ``clip-text``).
    head_init: PartRef | None = None
    #: The test-time views the final evaluation averages logits over (``ltreg.eval_views``); ``--tta`` overrides.
    eval_views: PartRef = field(default_factory=lambda: PartRef("center"))
    #: What ``--quick`` sets for this method before capping the budget (e.g. a tiny ViT and its text tower).
    quick: Recipe | None = None
    reading: str = ""  # which reading of the paper is implemented, where it is ambiguous
    bibtex: str = ""  # BibTeX of the paper(s), for the model card
    model_template: ModelSpec | None = field(default=None, repr=False, compare=False)  # set from ``model``
    readings: tuple[Reading, ...] = ()  # each reading of the paper the loss / parts make, with its source tag

    def __post_init__(self) -> None:
        if not self.views:
            raise ConfigError(f"method {self.name!r} declares no views")
        # ``model`` may hold hp references: keep them in ``model_template`` and expose ``model`` resolved with
        # the default hyper-parameters, so code that reads ``spec.model`` still gets concrete values.
        template = self.model_template
        if template is None or template.resolve(self.hparams) != self.model:  # a new model (dataclasses.replace)
            template = self.model
        object.__setattr__(self, "model_template", template)
        object.__setattr__(self, "model", template.resolve(self.hparams))

    def model_for(self, hparams: HParams) -> ModelSpec:
        """The model a run with ``hparams`` (recipe and ``--hp`` overrides applied) builds: ``hp`` fields resolved."""
        return self.model_template.resolve(hparams)

    @property
    def num_views(self) -> int:
        return len(self.views)

    def views_for(self, hparams: HParams) -> tuple[str, ...]:
        """The view pipelines of a run: a ``num_views`` hyper-parameter, when the method has one,
        sets V by repeating the last declared pipeline (multi-view ablations are one flag)."""
        n = getattr(hparams, "num_views", None)
        if n is None:
            return self.views
        if n < 1:
            raise ConfigError(f"num_views must be >= 1, got {n}")
        return tuple(self.views[:n]) + (self.views[-1],) * max(0, n - len(self.views))

    @property
    def stages(self) -> int:
        return 2 if self.rebalance is not None else 1

    def recipe(self, name: str) -> Recipe:
        if name not in self.recipes:
            import difflib

            close = difflib.get_close_matches(name, list(self.recipes), n=3, cutoff=0.4)
            hint = f" Did you mean {', '.join(close)}?" if close else ""
            raise ConfigError(
                f"method {self.name!r} has no recipe {name!r}.{hint} "
                f"Recipes: {', '.join(sorted(self.recipes)) or 'none'}."
            )
        return self.recipes[name]

    def parts(self) -> dict[str, PartRef | None]:
        return {
            "loss": self.loss,
            "sampler": self.sampler,
            "prototypes": self.prototypes,
            "memory": self.memory,
            "batch_transform": self.batch_transform,
            "rebalance": self.rebalance,
            "tuner": self.tuner,
            "head_init": self.head_init,
            "eval_views": self.eval_views,
        }

    def describe(self) -> str:
        """A human-readable summary, as ``ltreg info`` prints it."""
        lines = [f"{self.name}: {self.summary}", f"  paper: {self.citation}"]
        for role, ref in self.parts().items():
            lines.append(f"  {role:<10} {ref.describe() if ref else '-'}")
        lines.append(f"  views      {', '.join(self.views_for(self.hparams))}")
        m = self.model_for(self.hparams)
        lines.append(f"  model      classifier={m.classifier} proj_dim={m.proj_dim}")
        lines.append("  hyper-parameters:")
        for f in dataclasses.fields(self.hparams):
            help_ = f.metadata.get("help", "")
            lines.append(f"    {f.name} = {getattr(self.hparams, f.name)!r}" + (f"  # {help_}" if help_ else ""))
        if self.recipes:
            lines.append("  recipes (source of each value: [P] paper, [C] authors' code / README, [D] ours):")
            for name, r in sorted(self.recipes.items()):
                paper = " ".join(f"{k}={v}" for k, v in r.paper.items())
                lines.append(f"    {name}: {r.description}" + (f"  [paper: {paper}]" if paper else ""))
                for group, values in (("train", r.train), ("hparams", r.hparams), ("paper", r.paper)):
                    for k, v in values.items():
                        lines.append(f"      {group}.{k} = {v!r}  {r.tags.get(k, '[untagged]')}")
        if self.readings:
            lines.append("  readings:")
            lines.extend(f"    - {r}" for r in self.readings)
        if self.reading:
            lines.append(f"  reading: {self.reading}")
        return "\n".join(lines)


_GROUP_OF_ROLE = {
    "loss": "losses",
    "sampler": "samplers",
    "prototypes": "prototypes",
    "memory": "memory",
    "batch_transform": "transforms",
    "rebalance": "rebalancers",
    "tuner": "tuners",
    "head_init": "head_inits",
    "eval_views": "eval_views",
}


def build_part(role: str, ref: PartRef, hparams: HParams, ctx: Any) -> Any:
    """Instantiate a part: ``cls.from_context(ctx, **kwargs)`` when it defines one, else ``cls(**kwargs)``."""
    factory = registry(_GROUP_OF_ROLE[role]).get(ref.name)
    kwargs = ref.resolve_kwargs(hparams)
    if hasattr(factory, "from_context"):
        return factory.from_context(ctx, **kwargs)
    try:
        inspect.signature(factory).bind(**kwargs)
    except TypeError as exc:
        raise ConfigError(f"{role} {ref.name!r} does not accept {sorted(kwargs)}: {exc}") from exc
    return factory(**kwargs)


# -- the methods registry, with the spec-aware helpers of the public API ------------------------
def get_method(name: str) -> MethodSpec:
    """The method registered as ``name`` (case-insensitive)."""
    spec = registry("methods").get(name)
    if callable(spec) and not isinstance(spec, MethodSpec):
        spec = spec()
    if not isinstance(spec, MethodSpec):
        entry = registry("methods").entry(name)
        raise ConfigError(
            f"entry point {entry.value} of {entry.dist} for method {name!r} is a {type(spec).__name__}, "
            f"not a MethodSpec"
        )
    return spec


def list_methods() -> list[dict[str, str]]:
    """Installed methods as rows: name, distribution, version, and a load error if it failed."""
    rows = []
    for e in registry("methods").entries():
        row = {"name": e.name, "dist": e.dist, "version": e.version, "error": ""}
        try:
            spec = get_method(e.name) if e.dist != "<in-process>" else e.load()
            row["summary"] = spec.summary
            row["stages"] = str(spec.stages)
        except Exception as exc:  # noqa: BLE001 - reported in the row, others stay usable
            row["error"] = str(exc)
        rows.append(row)
    return rows


def register_method(spec: MethodSpec) -> MethodSpec:
    """Register a method in this process (notebooks, tests)."""
    registry("methods").register(spec.name, spec)
    return spec
