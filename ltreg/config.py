"""Run configuration: one validated dataclass, merged from defaults, data set, method, recipe, YAML, flags.

Precedence (later wins): ``TrainConfig`` defaults < the data set's defaults < the method's
``train_defaults`` < the named recipe < a YAML file < command-line flags / keyword arguments.
"""

from __future__ import annotations

import dataclasses
import difflib
import os
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ltreg.data.build import dataset_defaults
from ltreg.method import ConfigError, MethodSpec, _check_type, _parse

DEFAULT_METHOD = "balanced-softmax"
DEFAULT_DATASET = "digits-lt"

@dataclass
class TrainConfig:
    """Everything one run needs besides the method's own hyper-parameters (``hparams`` overrides)."""

    method: str = DEFAULT_METHOD
    dataset: str = DEFAULT_DATASET
    data_root: str | None = None
    imbalance: float | None = None  # None: the builder's default
    profile: str | None = None  # "exp" | "step"; None: the builder's default (fixed benchmarks have none)
    dataset_kwargs: dict[str, Any] = field(default_factory=dict)  # more builder arguments, e.g. split_dir
    backbone: str | None = None  # None: the data set's default
    epochs: int = 30
    batch_size: int = 64  # global batch, split over processes
    lr: float = 0.05
    momentum: float = 0.9
    weight_decay: float = 5e-4
    nesterov: bool = False
    schedule: str = "cosine"  # cosine | step | constant
    warmup_epochs: int = 0
    milestones: list[int] = field(default_factory=list)  # for schedule=step
    lr_decay: float = 0.1
    stage2_epochs: int | None = None  # None: the rebalancer's default
    stage2_lr: float | None = None
    stage2_batch_size: int | None = None
    holdout_fraction: float = 0.1  # for rebalancers that tune on held-out training data
    min_free_mb: int = 200  # free disk space the run folder needs before training starts
    seed: int = 0
    output_dir: str | None = None  # None: runs/<method>-<dataset>
    recipe: str | None = None
    hparams: dict[str, Any] = field(default_factory=dict)
    num_workers: int = 0
    mixed_precision: str = "no"  # no | fp16 | bf16
    grad_accum: int = 1
    checkpoint_every: int = 1  # epochs
    resume: bool = False
    log_every: int = 20  # steps
    log_with: str | None = None  # an Accelerate tracker: tensorboard, wandb, mlflow, ... (metrics.csv always)
    max_steps_per_epoch: int | None = None
    eval_batch_size: int = 256
    push_to_hub: str | None = None
    cpu: bool = False
    quick: bool = False

    def __post_init__(self) -> None:
        hints = typing.get_type_hints(type(self))
        for f in dataclasses.fields(self):
            _check_type("TrainConfig", f.name, getattr(self, f.name), hints[f.name])
        checks = [
            ("epochs", self.epochs >= 0, ">= 0"),
            ("batch_size", self.batch_size >= 1, ">= 1"),
            ("lr", self.lr > 0, "> 0"),
            ("weight_decay", self.weight_decay >= 0, ">= 0"),
            ("schedule", self.schedule in ("cosine", "step", "constant"), "one of cosine, step, constant"),
            ("mixed_precision", self.mixed_precision in ("no", "fp16", "bf16"), "one of no, fp16, bf16"),
            ("grad_accum", self.grad_accum >= 1, ">= 1"),
            ("imbalance", self.imbalance is None or self.imbalance >= 1, ">= 1 (it is n_max / n_min)"),
            ("holdout_fraction", 0 < self.holdout_fraction < 1, "in (0, 1)"),
            ("checkpoint_every", self.checkpoint_every >= 1, ">= 1"),
        ]
        for name, ok, want in checks:
            if not ok:
                raise ConfigError(f"{name} must be {want}, got {getattr(self, name)!r}")

    @property
    def run_dir(self) -> Path:
        return Path(self.output_dir or os.path.join("runs", f"{self.method}-{self.dataset}"))

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


_FIELDS = {f.name for f in dataclasses.fields(TrainConfig)}


def _check_keys(values: dict[str, Any], where: str) -> None:
    for key in values:
        if key not in _FIELDS:
            close = difflib.get_close_matches(key, sorted(_FIELDS), n=3)
            hint = f" Did you mean {', '.join(close)}?" if close else ""
            raise ConfigError(f"unknown key {key!r} in {where}.{hint}")


def load_yaml(path: str | os.PathLike) -> dict[str, Any]:
    """A YAML run file: training keys at top level, method hyper-parameters under ``hparams``."""
    import yaml

    with open(path) as fh:
        values = yaml.safe_load(fh) or {}
    if not isinstance(values, dict):
        raise ConfigError(f"{path}: a YAML run file must be a mapping of keys to values")
    _check_keys(values, f"YAML file {path}")
    return values


def resolve_config(spec: MethodSpec, overrides: dict[str, Any], yaml_values: dict[str, Any] | None = None) -> TrainConfig:
    """Merge the layers for ``spec`` into a validated :class:`TrainConfig`."""
    overrides = {k: v for k, v in overrides.items() if v is not None}
    _check_keys(overrides, "the command line / keyword arguments")
    yaml_values = dict(yaml_values or {})
    dataset = overrides.get("dataset", yaml_values.get("dataset", spec.train_defaults.get("dataset", DEFAULT_DATASET)))
    recipe_name = overrides.get("recipe", yaml_values.get("recipe"))
    recipe = spec.recipe(recipe_name) if recipe_name else None
    if recipe is not None and "dataset" not in overrides and "dataset" not in yaml_values:
        dataset = recipe.train.get("dataset", dataset)
    merged: dict[str, Any] = {}
    hparams: dict[str, Any] = {}
    for layer in (dataset_defaults(dataset), dict(spec.train_defaults), dict(recipe.train) if recipe else {},
                  yaml_values, overrides):
        layer = dict(layer)
        hparams.update(layer.pop("hparams", {}) or {})
        merged.update(layer)
    if recipe is not None:
        hparams = {**dict(recipe.hparams), **hparams}
    merged["dataset"] = dataset
    merged["hparams"] = hparams
    merged["method"] = spec.name
    _check_keys(merged, "the merged configuration")
    hints = typing.get_type_hints(TrainConfig)
    for key, value in list(merged.items()):
        if isinstance(value, str) and hints[key] not in (str, str | None):
            merged[key] = _parse(value, hints[key], key)
    cfg = TrainConfig(**merged)
    if cfg.quick:
        cfg = quick(cfg)
    return cfg


def quick(cfg: TrainConfig) -> TrainConfig:
    """The same recipe at CPU scale: 2 epochs of at most 10 steps, a small backbone, 1 stage-2 epoch."""
    small = cfg.backbone if cfg.backbone in ("resnet8", "resnet20", "resnet32") else "resnet8"
    return dataclasses.replace(
        cfg,
        epochs=min(cfg.epochs, 2),
        warmup_epochs=0,
        milestones=[],
        max_steps_per_epoch=min(cfg.max_steps_per_epoch or 10, 10),
        stage2_epochs=1,
        backbone=small,
        batch_size=min(cfg.batch_size, 64),
        quick=False,
    )
