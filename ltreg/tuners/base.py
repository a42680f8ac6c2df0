"""The tuner contract: how a (pretrained) backbone is adapted, and which of its parameters train.

A tuner is a small frozen dataclass whose fields are its arguments (``--tuner-arg r=8``), checked
on construction (type, range). The run builder calls :meth:`Tuner.apply` on the backbone right after
its initial weights are loaded and before any part, the optimizer or a wrapper sees the model:

- ``check``: the backbone fits (layers to adapt exist), else :class:`~ltreg.errors.TunerError`;
- ``add_modules``: *structural* tuners (LoRA, DoRA, IA3, AdaptFormer) add their modules; a model
  folder whose ``config.json`` names the tuner is rebuilt with the same call before its weights load;
- ``trains``: which backbone parameters keep ``requires_grad`` (the others are frozen). A BatchNorm
  whose affine parameters are frozen keeps its running statistics too (eval mode, as the rebalancers
  keep a frozen backbone), so a frozen pretrained backbone computes the same features in training.

Mergeable tuners fold their modules into the backbone's own weights (:meth:`Tuner.merge`): the result
is a plain timm model. The heads, prototypes and other parts are not the tuner's business: the method
declares what of them trains.
"""

from __future__ import annotations

import dataclasses
import math
import sys
import types
import typing
from dataclasses import dataclass
from typing import Any, ClassVar

from torch import Tensor, nn

from ltreg.errors import TunerError


def _keep_eval(module: nn.Module, args: Any) -> None:
    if module.training:
        module.eval()


@dataclass(frozen=True)
class TunedParams:
    """What a tuner left trainable in a backbone: counts for the log and the model card."""

    tuner: str
    args: dict[str, Any]
    trainable: int
    total: int
    added: int  # parameters the tuner added (adapters); 0 for full / linear / bitfit / layernorm

    def describe(self) -> str:
        share = 100.0 * self.trainable / max(self.total, 1)
        args = ", ".join(f"{k}={v!r}" for k, v in self.args.items())
        return (f"tuner {self.tuner}({args}): {self.trainable:,} of {self.total:,} backbone parameters train "
                f"({share:.2f} %)" + (f", {self.added:,} added by the tuner" if self.added else ""))


@dataclass(frozen=True)
class Tuner:
    """Base of every tuner; subclasses are frozen dataclasses whose fields are the tuner's arguments.

    Field metadata ``min`` / ``max`` / ``choices`` bound an argument; types are checked as declared.
    """

    name: ClassVar[str] = ""
    #: Adds modules to the backbone (saved with it; ``config.json`` names the tuner to rebuild them).
    structural: ClassVar[bool] = False
    #: Its modules fold into the backbone's own weights (:meth:`merge` gives a plain timm model).
    mergeable: ClassVar[bool] = False
    #: The adapted backbone computes exactly what the base does before the first step.
    identity_at_init: ClassVar[bool] = True

    def __post_init__(self) -> None:
        hints = _field_types(type(self))
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if not _type_ok(value, hints.get(f.name, Any)):
                raise TunerError(f"tuner {self.name} argument {f.name}={value!r} must be of type "
                                 f"{_tname(hints.get(f.name))} (--tuner-arg {f.name}=VALUE)")
            meta = f.metadata
            if "choices" in meta and value not in meta["choices"]:
                raise TunerError(f"tuner {self.name} argument {f.name}={value!r} must be one of "
                                 f"{', '.join(map(str, meta['choices']))}")
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                lo, hi = meta.get("min"), meta.get("max")
                bad = not math.isfinite(value) or (lo is not None and value < lo) or (hi is not None and value > hi)
                if bad or (meta.get("min_exclusive") and value == lo):
                    want = (f"{'>' if meta.get('min_exclusive') else '>='} {lo}" if lo is not None else "finite") + \
                           (f" and <= {hi}" if hi is not None else "")
                    raise TunerError(f"tuner {self.name} argument {f.name}={value!r} must be {want} "
                                     f"(--tuner-arg {f.name}=VALUE)")

    @classmethod
    def create(cls, **kwargs: Any) -> Tuner:
        """The tuner with ``kwargs``; an argument it does not take is a :class:`TunerError` listing those it does."""
        known = [f.name for f in dataclasses.fields(cls)]
        unknown = sorted(set(kwargs) - set(known))
        if unknown:
            if not known:
                raise TunerError(f"tuner {cls.name} takes no arguments, so --tuner-arg {', '.join(unknown)} does not "
                                 f"apply; drop it")
            raise TunerError(f"tuner {cls.name} takes no argument {', '.join(unknown)}; its arguments are "
                             f"{', '.join(known)} (--tuner-arg NAME=VALUE)")
        return cls(**kwargs)

    def args(self) -> dict[str, Any]:
        """The arguments as JSON values (``config.json``, the model card)."""
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "args": self.args()}

    # -- what subclasses define ----------------------------------------------------------------------
    def check(self, backbone: nn.Module) -> None:
        """Raise :class:`TunerError` when the tuner cannot adapt ``backbone`` (before any work)."""

    def add_modules(self, backbone: nn.Module) -> None:
        """Add the tuner's modules to ``backbone`` in place (structural tuners)."""

    def trains(self, name: str, param: nn.Parameter, module: nn.Module) -> bool:
        """Whether the backbone parameter ``name`` (of ``module``) trains."""
        raise NotImplementedError

    def keeps_eval(self, module: nn.Module) -> bool:
        """Whether ``module`` stays in eval mode while training (frozen statistics)."""
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            return not any(p.requires_grad for p in module.parameters(recurse=False))
        return False

    def is_added(self, key: str) -> bool:
        """Whether the state-dict key ``key`` belongs to a module the tuner added."""
        return False

    def merge(self, backbone: nn.Module) -> nn.Module:
        """A plain copy of ``backbone`` with the tuner's modules folded in (mergeable tuners only)."""
        raise TunerError(f"tuner {self.name} cannot merge into the backbone's weights: its modules stay modules")

    def adapter_state(self, backbone: nn.Module) -> dict[str, Tensor]:
        """The tensors the tuner added (the adapter-only export)."""
        return {k: v for k, v in backbone.state_dict().items() if self.is_added(k)}

    def load_adapter_state(self, backbone: nn.Module, state: dict[str, Tensor], label: str) -> None:
        """Load :meth:`adapter_state` tensors into an adapted ``backbone``; every key and shape must match."""
        want = self.adapter_state(backbone)
        _check_keys(want, state, label)
        backbone.load_state_dict(state, strict=False)

    # -- the one entry point of the run builder ------------------------------------------------------
    def apply(self, backbone: nn.Module) -> TunedParams:
        """Check, add modules, freeze what does not train; the counts of what does."""
        self.check(backbone)
        before = sum(p.numel() for p in backbone.parameters())
        self.add_modules(backbone)
        modules = dict(backbone.named_modules())
        for name, param in backbone.named_parameters():
            owner = modules[name.rsplit(".", 1)[0]] if "." in name else backbone
            param.requires_grad_(bool(self.trains(name, param, owner)))
        if self.keeps_eval(backbone):  # the whole backbone: one hook on its root
            backbone.register_forward_pre_hook(_keep_eval)
        else:
            for module in backbone.modules():
                if self.keeps_eval(module):
                    module.register_forward_pre_hook(_keep_eval)
        params = list(backbone.parameters())
        total = sum(p.numel() for p in params)
        return TunedParams(self.name, self.args(), sum(p.numel() for p in params if p.requires_grad), total,
                           total - before)


def _check_keys(want: dict[str, Tensor], got: dict[str, Tensor], label: str) -> None:
    missing, extra = sorted(want.keys() - got.keys()), sorted(got.keys() - want.keys())
    if missing or extra:
        raise TunerError(f"the adapter weights of {label} do not fit this backbone: {len(missing)} missing "
                         f"{missing[:3]}, {len(extra)} unexpected {extra[:3]} (another tuner, its arguments or "
                         f"another architecture)")
    for key, value in want.items():
        if tuple(value.shape) != tuple(got[key].shape):
            raise TunerError(f"the adapter weights of {label} do not fit this backbone: {key} is "
                             f"{tuple(got[key].shape)} there, {tuple(value.shape)} here")


def _field_types(cls: type) -> dict[str, Any]:
    """The declared type of each argument field (string annotations resolved in the class's module)."""
    try:
        return typing.get_type_hints(cls)
    except NameError:  # a class defined in a function: resolve the fields one by one
        namespace = vars(sys.modules[cls.__module__])
        out: dict[str, Any] = {}
        for f in dataclasses.fields(cls):
            try:
                out[f.name] = eval(f.type, namespace) if isinstance(f.type, str) else f.type  # noqa: S307 - an annotation
            except Exception:  # noqa: BLE001 - unresolvable: not checked
                out[f.name] = Any
        return out


def _type_ok(value: Any, tp: Any) -> bool:
    if tp is Any or tp is None:
        return True
    options = typing.get_args(tp) if typing.get_origin(tp) in (typing.Union, types.UnionType) else (tp,)
    for option in options:
        if option is type(None) and value is None:
            return True
        if typing.get_origin(option) is typing.Literal and value in typing.get_args(option):
            return True
        base = typing.get_origin(option) or option
        if base is float and isinstance(value, (int, float)) and not isinstance(value, bool):
            return True
        if base is int and isinstance(value, int) and not isinstance(value, bool):
            return True
        if base in (str, bool, list, tuple, dict) and isinstance(value, base):
            return True
    return False


def _tname(tp: Any) -> str:
    return getattr(tp, "__name__", str(tp))


def count(module: nn.Module, trainable: bool | None = None) -> int:
    """Parameters of ``module`` (only trainable ones, or only frozen ones, when asked)."""
    return sum(p.numel() for p in module.parameters() if trainable is None or p.requires_grad == trainable)


def backbone_family(backbone: nn.Module) -> str:
    """``transformer`` (blocks with an ``mlp``), ``cnn`` (convolutions) or ``other``: target modules follow it."""
    if any(hasattr(m, "mlp") and hasattr(m, "norm2") for m in backbone.modules()):
        return "transformer"
    if any(isinstance(m, nn.Conv2d) for m in backbone.modules()):
        return "cnn"
    return "other"


def arch_name(backbone: nn.Module) -> str:
    cfg = getattr(backbone, "pretrained_cfg", None) or {}
    return cfg.get("architecture") or type(backbone).__name__


__all__ = ["Tuner", "TunedParams", "TunerError", "backbone_family", "count", "arch_name"]
