"""The method spec: the parts a long-tailed method declares (loss, sampler, prototypes, rebalancer, tuner), its hyper-parameters and recipes.

A method is data, not code: ``MethodSpec(loss=PartRef("supcon", temperature=hp("temperature")), ...)``.
Parts are looked up by registry name when a run is built, so a plugin reuses core parts by naming them.
What the method needs from the core is data too: its views (:class:`ViewPlan`: pipelines, their number,
modifiers switched by hyper-parameters) and its second stage (:class:`Stage`: kind, rebalancer, epochs),
checked when a spec is made and when a run's hyper-parameters are known, shown by ``ltreg info``.
"""

from __future__ import annotations

import dataclasses
import inspect
import types
import typing
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from ltreg.errors import ConfigError, SpecError
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
                if not known:
                    raise ConfigError(f"unknown hyper-parameter {key!r}: this method ({type(self).__name__}) has no "
                                      f"hyper-parameters, so --hp does not apply; drop it (training settings are "
                                      f"flags: ltreg train --help)")
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


def _ref(value: Any) -> str:
    return f"hp.{value.name}" if isinstance(value, hp) else repr(value) if not isinstance(value, str) else value


def _hp_value(method: str, where: str, value: Any, hparams: Any) -> Any:
    """``value``, or the run's value of the hyper-parameter an :class:`hp` names."""
    if not isinstance(value, hp):
        return value
    if not hasattr(hparams, value.name):
        raise SpecError(f"method {method!r}: {where} = hp({value.name!r}), but {type(hparams).__name__} has no "
                        f"hyper-parameter {value.name!r}; add the field or fix the name")
    return getattr(hparams, value.name)


@dataclass(frozen=True)
class Pick:
    """A pipeline chosen by a hyper-parameter's value: ``Pick(hp("augment"), {"lift": "cls", "minimalist": "minimal"})``."""

    ref: hp
    choices: Mapping[str, str]

    def __post_init__(self) -> None:
        object.__setattr__(self, "choices", types.MappingProxyType(dict(self.choices)))

    def describe(self) -> str:
        return f"hp.{self.ref.name} -> {{{', '.join(f'{k}: {v}' for k, v in self.choices.items())}}}"


@dataclass(frozen=True)
class ViewPlan:
    """The views a method's stage-1 step gets, as data (``ltreg info`` shows them).

    ``pipelines``: one pipeline name per view (a view kind plus ``+modifiers``: ``"rand"``, ``"sim+erase"``), an
    :class:`hp` naming a ``str`` hyper-parameter whose value is one (ACL's ``augment`` picks its first view), or a
    :class:`Pick` mapping a hyper-parameter's values to pipelines (LIFT's ``augment``: lift -> cls, minimalist -> minimal).
    ``count``: the number of views V; ``None`` is one per pipeline, an int or an ``hp`` (``hp("num_views")``, a
    multi-view ablation as one flag) repeats the last pipeline or drops the tail. ``modifiers``: a modifier
    appended as ``+name`` to every pipeline when its value (a bool or an ``hp``) is true (ECL's ``erase``).
    ``positives``: the pipelines of the images a ``positives`` sampler role attaches. ``query``: the views the
    query model runs on (None: all); MoCo key views go to the memory only.
    """

    pipelines: tuple[str | hp | Pick, ...] = ("cls",)
    count: int | hp | None = None
    modifiers: Mapping[str, bool | hp] = field(default_factory=dict)
    positives: tuple[str, ...] = ("sim",)
    query: tuple[int, ...] | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "modifiers", types.MappingProxyType(dict(self.modifiers)))

    def check(self, method: str) -> None:
        """What can be checked without a run's hyper-parameters: the types and the fixed counts."""
        def bad(name: str, got: Any, want: str) -> SpecError:
            return SpecError(f"method {method!r}: views.{name} = {got!r} must be {want}")

        if not isinstance(self.pipelines, tuple) or not self.pipelines:
            raise bad("pipelines", self.pipelines, "a non-empty tuple of pipeline names (or hp references)")
        for p in self.pipelines:
            if not (isinstance(p, hp) or (isinstance(p, str) and p) or (
                    isinstance(p, Pick) and isinstance(p.ref, hp) and p.choices
                    and all(isinstance(k, str) and isinstance(v, str) and v for k, v in p.choices.items()))):
                raise bad("pipelines", self.pipelines, "a tuple of pipeline names like 'cls', hp references or "
                                                       "Pick(hp(NAME), {value: pipeline})")
        if not (self.count is None or isinstance(self.count, hp) or (type(self.count) is int and self.count >= 1)):
            raise bad("count", self.count, "None, an int >= 1 or an hp reference")
        for k, v in self.modifiers.items():
            if not isinstance(k, str) or not (isinstance(v, hp) or type(v) is bool):
                raise bad("modifiers", dict(self.modifiers), "a mapping of modifier name -> bool or hp reference")
        if not isinstance(self.positives, tuple) or not all(isinstance(p, str) and p for p in self.positives):
            raise bad("positives", self.positives, "a tuple of pipeline names")
        if self.query is not None and (not isinstance(self.query, tuple) or not self.query
                                       or not all(type(q) is int and q >= 0 for q in self.query)):
            raise bad("query", self.query, "None or a non-empty tuple of view indices >= 0")

    def resolve(self, method: str, hparams: Any) -> tuple[str, ...]:
        """The run's pipelines, one per view; every name is checked against the ``views`` registry."""
        names = []
        for p in self.pipelines:
            if isinstance(p, Pick):
                value = _hp_value(method, "a views pipeline", p.ref, hparams)
                if value not in p.choices:
                    raise SpecError(f"method {method!r}: views pipeline {p.describe()} has no pipeline for "
                                    f"{p.ref.name}={value!r}; add it to the Pick's choices")
                names.append(p.choices[value])
                continue
            name = _hp_value(method, "a views pipeline", p, hparams)
            if not isinstance(name, str) or not name:
                raise SpecError(f"method {method!r}: views pipeline {_ref(p)} is {name!r}, not a pipeline name")
            names.append(name)
        n = _hp_value(method, "views.count", self.count, hparams)
        if n is not None:
            if type(n) is not int or n < 1:
                raise SpecError(f"method {method!r}: views.count {_ref(self.count)} is {n!r}; the number of views "
                                f"must be an int >= 1")
            names = names[:n] + [names[-1]] * max(0, n - len(names))
        suffix = ""
        for mod, on in self.modifiers.items():
            flag = _hp_value(method, f"views.modifiers[{mod!r}]", on, hparams)
            if type(flag) is not bool:
                raise SpecError(f"method {method!r}: views.modifiers[{mod!r}] {_ref(on)} is {flag!r}, not a bool")
            suffix += f"+{mod}" if flag else ""
        views = tuple(f"{v}{suffix}" for v in names)
        for v in (*views, *self.positives):
            for part in v.split("+"):
                if part not in registry("views"):
                    raise SpecError(f"method {method!r}: view pipeline {v!r} names view kind {part!r}, which is not "
                                    f"registered. Known view kinds: {', '.join(registry('views').names())}; a plugin "
                                    f"adds one with an ltreg.views entry point or ltreg.register_view")
        if self.query is not None and max(self.query) >= len(views):
            raise SpecError(f"method {method!r}: views.query {self.query} names a view past the {len(views)} views")
        return views

    def describe(self) -> str:
        parts = [f"pipelines {', '.join(p.describe() if isinstance(p, Pick) else _ref(p) for p in self.pipelines)}"]
        if self.count is not None:
            parts.append(f"count {_ref(self.count)}")
        if self.modifiers:
            parts.append("modifiers " + ", ".join(f"+{k} if {_ref(v)}" for k, v in self.modifiers.items()))
        parts.append(f"positives {', '.join(self.positives)}")
        parts.append(f"query {'all' if self.query is None else ', '.join(map(str, self.query))}")
        return "; ".join(parts)


@dataclass(frozen=True)
class StageKind:
    """A kind of stage after stage 1, as data, found by name in the ``stages`` registry.

    ``setup(run)`` returns the stage's loop inputs (``ltreg.stages.StageSetup``), or None when it trains nothing
    (a post-hoc rebalancer); ``finish(run)`` runs after its epochs and returns what it chose (for the log and
    the model card). The core's kind ``rebalance`` trains the declared rebalancer (``ltreg.stages``).
    """

    setup: Callable[[Any], Any]
    finish: Callable[[Any], Mapping[str, Any]]
    help: str = ""


@dataclass(frozen=True)
class Stage:
    """A second stage, as data: its kind (registry ``stages``), the rebalancer it trains and its length.

    ``epochs``: an int, an :class:`hp` reference (``hp("stage2_epochs")``: ``--stage2-epochs`` then sets that
    hyper-parameter, so the card records one value) or None (the rebalancer's own default).
    """

    rebalancer: PartRef
    epochs: int | hp | None = None
    kind: str = "rebalance"

    def check(self, method: str, hparams: Any) -> None:
        if not isinstance(self.rebalancer, PartRef):
            raise SpecError(f"method {method!r}: stage2.rebalancer = {self.rebalancer!r} must be a PartRef")
        if "epochs" in self.rebalancer.kwargs:
            raise SpecError(f"method {method!r}: stage 2's length goes in Stage(epochs=...), not in the "
                            f"rebalancer's arguments ({self.rebalancer.describe()})")
        if not (self.epochs is None or (type(self.epochs) is int and self.epochs >= 0)
                or (isinstance(self.epochs, hp) and self.epochs.name in {f.name for f in dataclasses.fields(hparams)})):
            raise SpecError(f"method {method!r}: stage2.epochs = {self.epochs!r} must be None, an int >= 0 or "
                            f"hp(NAME) of an int field of {type(hparams).__name__}")
        if not isinstance(self.kind, str) or not self.kind:
            raise SpecError(f"method {method!r}: stage2.kind = {self.kind!r} must be a stage kind's name")

    def epochs_for(self, method: str, hparams: Any) -> int | None:
        """Stage 2's epochs under ``hparams`` (None: the rebalancer's default)."""
        n = _hp_value(method, "stage2.epochs", self.epochs, hparams)
        if n is not None and (type(n) is not int or n < 0):
            raise SpecError(f"method {method!r}: stage2.epochs {_ref(self.epochs)} is {n!r}; it must be an int >= 0")
        return n

    def describe(self, hparams: Any) -> str:
        epochs = "the rebalancer's default" if self.epochs is None else _ref(self.epochs)
        if isinstance(self.epochs, hp):
            epochs += f" = {getattr(hparams, self.epochs.name)!r}"
        return f"{self.kind}: {self.rebalancer.describe()}, epochs {epochs}"


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
    stage2: Stage | None = None  # a second stage (e.g. cRT): its kind, rebalancer and epochs
    #: How the backbone is adapted (``ltreg.tuners``): ``full`` trains it end to end; ``--tuner`` overrides it.
    tuner: PartRef = field(default_factory=lambda: PartRef("full"))
    views: ViewPlan = field(default_factory=ViewPlan)  # a tuple of pipeline names is short for ViewPlan(pipelines=...)
    model: ModelSpec = field(default_factory=ModelSpec)
    recipes: Mapping[str, Recipe] = field(default_factory=dict)
    train_defaults: Mapping[str, Any] = field(default_factory=dict)
    #: Sets the classifier's initial weights once the model is built (``ltreg.head_inits``, e.g. ``clip-text``).
    head_init: PartRef | None = None
    #: The test-time views the final evaluation averages logits over (``ltreg.eval_views``); ``--tta`` overrides.
    eval_views: PartRef = field(default_factory=lambda: PartRef("center"))
    #: What ``--quick`` sets for this method before capping the budget (e.g. a tiny ViT and its text tower).
    quick: Recipe | None = None
    bibtex: str = ""  # BibTeX of the paper(s), for the model card
    model_template: ModelSpec | None = field(default=None, repr=False, compare=False)  # set from ``model``
    readings: tuple[Reading, ...] = ()  # each reading of the paper the loss / parts make, with its source tag

    def __post_init__(self) -> None:
        if isinstance(self.views, tuple) and all(isinstance(v, str) for v in self.views):
            object.__setattr__(self, "views", ViewPlan(pipelines=self.views))
        if not isinstance(self.views, ViewPlan):
            raise SpecError(f"method {self.name!r}: views = {self.views!r} must be a ViewPlan (or a tuple of "
                            f"pipeline names)")
        self.views.check(self.name)
        if self.stage2 is not None:
            if not isinstance(self.stage2, Stage):
                raise SpecError(f"method {self.name!r}: stage2 = {self.stage2!r} must be a Stage")
            self.stage2.check(self.name, self.hparams)
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

    def views_for(self, hparams: HParams) -> tuple[str, ...]:
        """The view pipelines of a run with ``hparams``: ``views`` resolved (count, hp pipelines, modifiers)."""
        return self.views.resolve(self.name, hparams)

    def stage2_epochs(self, hparams: HParams) -> int | None:
        """Stage 2's declared epochs under ``hparams`` (None: no stage 2, or the rebalancer's default)."""
        return self.stage2.epochs_for(self.name, hparams) if self.stage2 is not None else None

    def check(self, hparams: HParams) -> None:
        """Everything the spec declares, resolved with a run's ``hparams``: views, stage 2's kind and epochs.

        Called when a run's configuration is resolved, before anything is built; a problem is a :class:`SpecError`.
        """
        self.views_for(hparams)
        if self.stage2 is not None:
            self.stage2_epochs(hparams)
            if self.stage2.kind not in registry("stages"):
                raise SpecError(f"method {self.name!r}: stage kind {self.stage2.kind!r} is not registered. Known: "
                                f"{', '.join(registry('stages').names())}; a plugin adds one with an ltreg.stages "
                                f"entry point or ltreg.register_stage")

    @property
    def rebalance(self) -> PartRef | None:
        """The rebalancer stage 2 trains, if the method has a second stage."""
        return self.stage2.rebalancer if self.stage2 is not None else None

    @property
    def stages(self) -> int:
        return 2 if self.stage2 is not None else 1

    def sampler_role(self) -> str | None:
        """The role of the stage-1 sampler's records (its class's ``extra_role``): what they add to a batch."""
        return getattr(registry("samplers").get(self.sampler.name), "extra_role", None)

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
            if role != "rebalance":  # shown with its stage below
                lines.append(f"  {role:<10} {ref.describe() if ref else '-'}")
        lines.append(f"  views      {', '.join(self.views_for(self.hparams))}  ({self.views.describe()})")
        lines.append(f"  sampler role {self.sampler_role() or '-'}")
        lines.append(f"  stage 2    {self.stage2.describe(self.hparams) if self.stage2 is not None else '-'}")
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
