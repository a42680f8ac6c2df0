"""Optimizers and learning-rate schedules: timm's optimizer factory, ltreg's step -> multiplier schedules.

``build_optimizer(params, settings)`` makes each stage's optimizer. The default (``sgd`` without
norm/bias filtering or layer decay) is exactly ``torch.optim.SGD(params, lr, momentum, weight_decay,
nesterov)`` as ltreg always built it, so existing results and checkpoints stay bit-identical; every
other name goes through :func:`timm.optim.create_optimizer_v2` (AdamW, LAMB, LARS, Lion, ...).
``param_groups`` builds timm-style groups: no weight decay on norms / biases / the backbone's
``no_weight_decay()`` names, and layer-wise lr decay from the backbone's ``group_matcher``.

``lr_schedule(...)`` returns the multiplier of the base lr at each optimizer step. The loop wraps it
in ``LambdaLR``, which Accelerate checkpoints, so a resumed run continues bit-identically.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from ltreg.errors import ConfigError

#: ltreg's schedule names (``--schedule``).
SCHEDULES = ("cosine", "step", "constant", "onecycle", "poly")
#: ``sgd`` is momentum SGD (Nesterov with ``--nesterov``), as ltreg always had it; note that timm's
#: own ``sgd`` means Nesterov SGD, so ltreg maps its names onto timm's ``momentum`` / ``nesterov``.
SGD_NAMES = ("sgd", "nesterov")
#: What a onecycle schedule starts from when ``warmup_lr`` is 0: lr / 25 (torch's OneCycleLR default).
ONECYCLE_DIV = 25.0


def optimizer_names() -> list[str]:
    """Every name ``--optimizer`` accepts: ltreg's ``sgd`` / ``nesterov`` and timm's optimizer registry."""
    import timm.optim

    return sorted(set(SGD_NAMES) | set(timm.optim.list_optimizers()))


def _timm_name(name: str, nesterov: bool) -> str:
    if name == "sgd":
        return "nesterov" if nesterov else "momentum"
    return name


#: Optimizers whose learning rate is on SGD's scale (timm's classes): a data set's or ltreg's default lr,
#: written for momentum SGD, carries over to them; any other optimizer needs its own.
SGD_SCALE = ("SGD", "SGDP", "SGDW", "Lars")


def default_lr(name: str) -> float | None:
    """The learning rate a run with ``--optimizer name`` starts from when no layer that chose ``name`` gave one:
    None for SGD-scale optimizers (the SGD lr of the data set / ltreg applies), else the optimizer class's
    own default (AdamW 1e-3, Lion 1e-4, ...). Raises :class:`ConfigError` when the class has none."""
    import inspect

    import timm.optim

    cls = timm.optim.get_optimizer_info(_timm_name(name, False)).opt_class
    if isinstance(cls, str) or getattr(cls, "__name__", "") in SGD_SCALE:
        return None
    default = inspect.signature(cls).parameters.get("lr")
    value = default.default if default is not None else None
    if not isinstance(value, (int, float)) or isinstance(value, bool) or not value > 0:
        raise ConfigError(f"--optimizer {name} has no default learning rate, and the lr of the layers below "
                          f"(an SGD lr) does not fit it: pass --lr (e.g. --lr 1e-3)")
    return float(value)


def base_lr(optimizer: torch.optim.Optimizer) -> float:
    """The run's learning rate now, as ``--lr`` is scaled by the schedule: a layer-decayed group's lr divided by
    its ``lr_scale`` (with layer decay, group 0 is the most-decayed stem, not the base)."""
    group = optimizer.param_groups[0]
    return float(group["lr"]) / float(group.get("lr_scale", 1.0) or 1.0)


def optimizer_traits(name: str) -> tuple[bool, bool, bool]:
    """(takes momentum, takes betas, takes eps) of optimizer ``name``, from timm's registry."""
    import timm.optim

    info = timm.optim.get_optimizer_info(_timm_name(name, False))
    return bool(info.has_momentum), bool(info.has_betas), bool(info.has_eps)


@dataclass(frozen=True)
class OptimSettings:
    """One stage's optimizer: its name and settings, as resolved from the run's configuration."""

    name: str = "sgd"
    lr: float = 0.05
    momentum: float = 0.9
    weight_decay: float = 5e-4
    nesterov: bool = False
    eps: float | None = None
    betas: tuple[float, float] | None = None
    layer_decay: float | None = None
    skip_norm_bias: bool = False

    @classmethod
    def stage1(cls, cfg: Any) -> OptimSettings:
        """Stage 1 from a :class:`~ltreg.config.TrainConfig`."""
        return cls(cfg.optimizer, cfg.lr, cfg.momentum, cfg.weight_decay, cfg.nesterov, cfg.opt_eps,
                   tuple(cfg.opt_betas) if cfg.opt_betas else None, cfg.layer_decay, cfg.wd_skip_norm_bias)

    @classmethod
    def stage2(cls, cfg: Any, lr: float) -> OptimSettings:
        """Stage 2 (the rebalancer's groups) at ``lr``: ``stage2_optimizer``; Nesterov and layer decay are
        stage-1 settings (stage 2 trains heads or a few layers), so stage 2's ``sgd`` is plain momentum SGD."""
        name = cfg.stage2_optimizer
        takes_momentum, takes_betas, takes_eps = optimizer_traits(name)
        return cls(name, lr, cfg.momentum, cfg.weight_decay, False, cfg.opt_eps if takes_eps else None,
                   tuple(cfg.opt_betas) if cfg.opt_betas and takes_betas else None, None, cfg.wd_skip_norm_bias)


def _layer_ids(backbone: nn.Module, rate: float) -> tuple[dict[str, int], int]:
    """Each backbone parameter's layer (0 = stem) from timm's ``group_matcher``, and the heads' layer (top)."""
    from timm.models._manipulate import group_parameters

    if not hasattr(backbone, "group_matcher"):
        raise ConfigError(f"layer_decay={rate} needs layers: the backbone {type(backbone).__name__} has no timm "
                          f"group_matcher(); pick a timm architecture that has one (resnet*, vit_*, convnext_*, "
                          f"...) or drop --layer-decay")
    layer_map = group_parameters(backbone, backbone.group_matcher(coarse=False), reverse=True)
    top = max(layer_map.values(), default=0) + 1  # heads and parts sit above the last backbone layer
    return layer_map, top


def param_groups(model: nn.Module, params: Sequence[nn.Parameter], s: OptimSettings) -> list[Any]:
    """``params`` as they are (the default), or in timm-style groups.

    With ``skip_norm_bias``, 1-d tensors (norm scales, biases) and the backbone's ``no_weight_decay()``
    names get weight decay 0. With ``layer_decay`` d, backbone layer i of L gets lr x d^(L - i); the
    projection head, classifier and method parts (prototypes, learnable loss terms) keep the full lr.
    Each group carries ``lr`` (its absolute start lr), ``weight_decay`` and ``lr_scale``.
    """
    if not s.skip_norm_bias and s.layer_decay is None:
        return list(params)
    model = getattr(model, "module", model)  # a DDP / Accelerate wrapper: the LTModel inside
    backbone = getattr(model, "backbone", None)
    backbone = getattr(backbone, "_orig_mod", backbone)  # torch.compile wraps the backbone
    if s.layer_decay is not None and backbone is None:
        raise ConfigError(f"layer_decay={s.layer_decay} needs a model with a timm backbone; drop --layer-decay")
    names = {id(p): n.replace("._orig_mod.", ".") for n, p in model.named_parameters()}
    skip = set()
    if s.skip_norm_bias and backbone is not None and hasattr(backbone, "no_weight_decay"):
        skip = {f"backbone.{n}" for n in backbone.no_weight_decay()}
    layer_map, top = _layer_ids(backbone, s.layer_decay) if s.layer_decay is not None else ({}, 0)
    groups: dict[tuple[float, float], dict[str, Any]] = {}
    for p in params:
        name = names.get(id(p), "")
        layer = layer_map.get(name.removeprefix("backbone."), top) if name.startswith("backbone.") else top
        scale = s.layer_decay ** (top - layer) if s.layer_decay is not None else 1.0
        no_decay = s.skip_norm_bias and (p.ndim <= 1 or name.endswith(".bias") or name in skip)
        wd = 0.0 if no_decay else s.weight_decay
        group = groups.setdefault((scale, wd), {"params": [], "lr": s.lr * scale, "weight_decay": wd, "lr_scale": scale})
        group["params"].append(p)
    return list(groups.values())


def build_optimizer(params: Sequence[Any], s: OptimSettings) -> torch.optim.Optimizer:
    """The optimizer ``s.name`` over ``params`` (parameters, or groups with ``lr`` / ``weight_decay``)."""
    if s.name == "sgd" and not s.skip_norm_bias and s.layer_decay is None:
        # ltreg's SGD, exactly as before: existing results and checkpoints stay bit-identical
        return torch.optim.SGD(params, lr=s.lr, momentum=s.momentum, weight_decay=s.weight_decay, nesterov=s.nesterov)
    import timm.optim

    kwargs: dict[str, Any] = {}
    if s.eps is not None:
        kwargs["eps"] = s.eps
    if s.betas is not None:
        kwargs["betas"] = tuple(s.betas)
    return timm.optim.create_optimizer_v2(list(params), opt=_timm_name(s.name, s.nesterov), lr=s.lr,
                                          weight_decay=s.weight_decay, momentum=s.momentum,
                                          filter_bias_and_bn=False, **kwargs)


def split_decay(groups: Sequence[Any], s: OptimSettings) -> list[Any]:
    """Stage 2's groups with 1-d tensors (norms, biases) moved to weight decay 0 when ``skip_norm_bias``."""
    if not s.skip_norm_bias:
        return list(groups)
    out: list[dict[str, Any]] = []
    for g in groups if groups and isinstance(groups[0], dict) else [{"params": list(groups)}]:
        params = list(g["params"])
        rest = {k: v for k, v in g.items() if k != "params"}
        for wd, ps in ((s.weight_decay, [p for p in params if p.ndim > 1]), (0.0, [p for p in params if p.ndim <= 1])):
            if ps:
                out.append({**rest, "params": ps, "weight_decay": wd, "lr_scale": rest.get("lr_scale", 1.0),
                            "lr": rest.get("lr", s.lr)})
    return out


def lr_schedule(total: int, steps_per_epoch: int, *, schedule: str = "cosine", warmup_epochs: int = 0,
                milestones: Sequence[int] = (), decay: float = 0.1, base_lr: float = 1.0, warmup_lr: float = 0.0,
                min_lr: float = 0.0, onecycle_pct: float = 0.3, poly_power: float = 1.0) -> Callable[[int], float]:
    """The multiplier of the base lr at optimizer step ``step`` (0-based) of ``total`` steps.

    Linear warm-up over ``warmup_epochs`` from ``warmup_lr`` (absolute; 0: from lr / warm-up steps, as
    ltreg always did), then ``cosine`` (to ``min_lr`` at the last step), ``step`` (x ``decay`` at each
    epoch in ``milestones``), ``constant``, ``poly`` ((1 - t)^poly_power down to ``min_lr``) or
    ``onecycle`` (a cosine rise from ``warmup_lr`` (or lr / 25) to lr over the first ``onecycle_pct`` of
    the steps, then a cosine fall to ``min_lr``; it has no separate warm-up).
    """
    if schedule not in SCHEDULES:
        raise ConfigError(f"schedule must be one of {', '.join(SCHEDULES)}, got {schedule!r}")
    warm = warmup_epochs * steps_per_epoch
    start = warmup_lr / base_lr
    floor = min_lr / base_lr
    peak = max(1, round(onecycle_pct * total))
    first = start if warmup_lr > 0 else 1.0 / ONECYCLE_DIV

    def factor(step: int) -> float:
        if schedule == "onecycle":
            if step < peak:
                return first + (1.0 - first) * 0.5 * (1 - math.cos(math.pi * step / peak))
            t = min(1.0, (step - peak) / max(1, total - 1 - peak))
            return floor + (1.0 - floor) * 0.5 * (1 + math.cos(math.pi * t))
        if step < warm:
            return start + (1.0 - start) * ((step + 1) / warm)
        if schedule == "cosine":
            return floor + (1.0 - floor) * (0.5 * (1 + math.cos(math.pi * min(1.0, (step - warm) / max(1, total - warm)))))
        if schedule == "poly":
            return floor + (1.0 - floor) * (1.0 - min(1.0, (step - warm) / max(1, total - warm))) ** poly_power
        if schedule == "step":
            return decay ** sum(step // max(1, steps_per_epoch) >= m for m in milestones)
        return 1.0

    return factor


def stage1_schedule(cfg: Any, total: int, steps_per_epoch: int) -> Callable[[int], float]:
    """Stage 1's schedule from a :class:`~ltreg.config.TrainConfig`."""
    return lr_schedule(total, steps_per_epoch, schedule=cfg.schedule, warmup_epochs=cfg.warmup_epochs,
                       milestones=cfg.milestones, decay=cfg.lr_decay, base_lr=cfg.lr, warmup_lr=cfg.warmup_lr,
                       min_lr=cfg.min_lr, onecycle_pct=cfg.onecycle_pct, poly_power=cfg.poly_power)


def stage2_schedule(total: int, steps_per_epoch: int) -> Callable[[int], float]:
    """Stage 2's schedule: cosine to 0 without warm-up (the rebalancers' protocol)."""
    return lr_schedule(total, steps_per_epoch, schedule="cosine")
