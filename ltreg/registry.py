"""Entry-point registries: methods, the parts they are built from, and the core's open vocabularies, found by name.

Besides methods and the six kinds of part, three groups name what a spec or a part may refer to: ``views``
(view kinds: the pipelines and ``+modifiers`` of a :class:`~ltreg.data.views.ViewKind`), ``sampler_roles``
(what the extra indices of a sampler's records load into a batch) and ``stages`` (stage kinds: how a
declared stage is set up and finished).

Every group is read from the installed distributions' entry points (``ltreg.<group>``),
loaded lazily on first lookup, and may be extended in-process with ``register``. The core
registers its own baselines through its own ``pyproject.toml``: one door for everybody.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable
from dataclasses import dataclass
from importlib import metadata
from typing import Any

from ltreg.errors import DuplicateNameError, PluginLoadError, RegistryError, UnknownNameError

GROUPS = ("methods", "losses", "samplers", "prototypes", "memory", "transforms", "rebalancers", "datasets", "head_inits",
          "eval_views", "views", "sampler_roles", "stages", "tuners")
IN_PROCESS = "<in-process>"


@dataclass
class Entry:
    """One registered name: where it comes from and (once loaded) the object."""

    group: str
    name: str
    dist: str
    version: str
    value: str  # "module:attr" for entry points, repr for in-process objects
    _ep: metadata.EntryPoint | None = None
    _obj: Any = None
    _loaded: bool = False

    def load(self) -> Any:
        if not self._loaded:
            try:
                self._obj = self._ep.load()  # type: ignore[union-attr]
            except Exception as exc:  # noqa: BLE001 - reported with the plugin's name
                raise PluginLoadError(
                    f"{_singular(self.group)} {self.name!r} from "
                    f"distribution {self.dist} {self.version} failed to import ({self.value}): "
                    f"{type(exc).__name__}: {exc}. Reinstall or upgrade it (pip install -U {self.dist}), "
                    f"or uninstall it; the other entries stay usable."
                ) from exc
            self._loaded = True
        return self._obj


def _singular(group: str) -> str:
    """``"sampler_roles"`` -> ``"sampler role"``: how a message names one entry of ``group``."""
    return (group[:-1] if group.endswith("s") else group).replace("_", " ")


def _key(name: str) -> str:
    return name.strip().lower().replace("_", "-")


class Registry:
    """Names of one group, from entry points ``ltreg.<group>`` plus in-process registrations."""

    def __init__(self, group: str) -> None:
        self.group = group
        self._local: dict[str, Entry] = {}
        self._scanned: dict[str, list[Entry]] | None = None

    # -- discovery -------------------------------------------------------------------------
    def _scan(self) -> dict[str, list[Entry]]:
        if self._scanned is None:
            found: dict[str, list[Entry]] = {}
            seen: set[tuple[str, str]] = set()
            for ep in metadata.entry_points(group=f"ltreg.{self.group}"):
                dist = ep.dist.name if ep.dist is not None else "unknown"
                version = ep.dist.version if ep.dist is not None else "?"
                if (dist, _key(ep.name)) in seen:  # one dist found twice on sys.path
                    continue
                seen.add((dist, _key(ep.name)))
                entry = Entry(self.group, ep.name, dist, version, ep.value, _ep=ep)
                found.setdefault(_key(ep.name), []).append(entry)
            self._scanned = found
        return self._scanned

    def refresh(self) -> None:
        """Forget the scanned entry points (after installing a plugin in-process)."""
        self._scanned = None

    def register(self, name: str | None = None, obj: Any = None) -> Any:
        """Register ``obj`` under ``name`` in this process; usable as a decorator.

        A name that an installed distribution already provides is an error: pick another name.
        """

        def add(target: Any) -> Any:
            label = name or getattr(target, "name", None) or getattr(target, "__name__", None)
            if not label:
                raise RegistryError(f"register() in group {self.group!r} needs a name")
            key = _key(label)
            clash = self._scan().get(key)
            if clash:
                raise DuplicateNameError(
                    f"{self.group} name {label!r} is already provided by distribution "
                    f"{clash[0].dist}; register under another name"
                )
            entry = Entry(self.group, label, IN_PROCESS, "", repr(target), _obj=target, _loaded=True)
            self._local[key] = entry
            return target

        return add(obj) if obj is not None else add

    def unregister(self, name: str) -> None:
        self._local.pop(_key(name), None)

    # -- lookup ----------------------------------------------------------------------------
    def entries(self) -> list[Entry]:
        """Every entry (conflicting ones included), sorted by name."""
        out = [e for group in self._scan().values() for e in group] + list(self._local.values())
        return sorted(out, key=lambda e: (_key(e.name), e.dist))

    def names(self) -> list[str]:
        return sorted({_key(e.name) for e in self.entries()})

    def entry(self, name: str) -> Entry:
        key = _key(name)
        if key in self._local:
            return self._local[key]
        providers = self._scan().get(key, [])
        if len(providers) > 1:
            who = ", ".join(f"{e.dist} {e.version} ({e.value})" for e in providers)
            raise DuplicateNameError(
                f"{self.group} name {name!r} is provided by more than one distribution: {who}. "
                f"Uninstall one of them."
            )
        if not providers:
            raise UnknownNameError(self._unknown_message(name))
        return providers[0]

    def get(self, name: str) -> Any:
        return self.entry(name).load()

    def __contains__(self, name: str) -> bool:
        key = _key(name)
        return key in self._local or key in self._scan()

    def _unknown_message(self, name: str) -> str:
        names = self.names()
        close = difflib.get_close_matches(_key(name), names, n=3, cutoff=0.5)
        lines = [f"unknown {_singular(self.group)} {name!r}."]
        if close:
            lines.append("Did you mean: " + ", ".join(close) + "?")
        if names:
            listing = ", ".join(f"{e.name} ({e.dist})" for e in self.entries())
            lines.append(f"Installed {self.group}: {listing}.")
        else:
            lines.append(f"No {self.group} are installed.")
        if self.group == "methods":
            lines.append("A method plugin appears once installed: pip install ltreg-NAME (see `ltreg list`).")
        return " ".join(lines)


REGISTRIES: dict[str, Registry] = {g: Registry(g) for g in GROUPS}


def registry(group: str) -> Registry:
    """The registry of ``group`` (one of :data:`GROUPS`)."""
    if group not in REGISTRIES:
        raise RegistryError(f"unknown registry group {group!r}; groups are {', '.join(GROUPS)}")
    return REGISTRIES[group]


def refresh() -> None:
    """Re-read entry points in every group (after a ``pip install`` in a running process)."""
    for reg in REGISTRIES.values():
        reg.refresh()


def _decorator(group: str) -> Callable[..., Any]:
    def register(name: str | None = None, obj: Any = None) -> Any:
        return registry(group).register(name, obj)

    register.__doc__ = f"Register an object in the {group!r} registry for this process."
    return register


register_loss = _decorator("losses")
register_sampler = _decorator("samplers")
register_prototypes = _decorator("prototypes")
register_memory = _decorator("memory")
register_transform = _decorator("transforms")
register_rebalancer = _decorator("rebalancers")
register_dataset = _decorator("datasets")
register_tuner = _decorator("tuners")
register_head_init = _decorator("head_inits")
register_eval_views = _decorator("eval_views")
register_view = _decorator("views")
register_sampler_role = _decorator("sampler_roles")
register_stage = _decorator("stages")
