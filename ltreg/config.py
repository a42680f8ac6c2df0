"""Run configuration: one validated dataclass, merged from defaults, data set, method, recipe, YAML, flags.

Precedence (later wins): ``TrainConfig`` defaults < the data set's defaults < the method's
``train_defaults`` < the named recipe < a YAML file < command-line flags / keyword arguments <
``--quick`` (which caps the budget of whatever the layers below chose). The data set is picked
first, from the highest layer that names one, because its defaults are the lowest layer.
:func:`resolve_config` returns the config with the method's validated hyper-parameters.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import os
import re
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ltreg.budget import scale_count, scale_hparams
from ltreg.data.build import RUN_ARGUMENTS, DataArgs, check_builder_args, dataset_defaults
from ltreg.errors import ConfigError, SettingError
from ltreg.fields import check_settings, check_type, flag, parse_value
from ltreg.method import HParams, MethodSpec, hp
from ltreg.tuners import Tuner, build_tuner

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
    backbone: str | None = None  # a timm name (resnet50), a tagged one (resnet50.a1_in1k: pretrained), hf-hub:org/name or a folder
    pretrained: bool = field(default=False, metadata={"recipe": True})  # timm's weights for the backbone (a tag, hf-hub: or folder implies it)
    init_from: str | None = field(default=None, metadata={"recipe": True})  # an ltreg run / model folder or Hub repo to start stage 1 from
    tuner: str | None = field(default=None, metadata={"recipe": True})  # how the backbone adapts (ltreg.tuners); None: the method's
    tuner_args: dict[str, Any] = field(default_factory=dict, metadata={"recipe": True})  # the tuner's arguments (--tuner-arg r=8)
    image_size: int | None = field(default=None, metadata={"recipe": True})  # views' side in pixels; None: the data set's (a ViT pretrained at 224 wants 224)
    normalize: str = field(default="data", metadata={"recipe": True})  # data: the data set's mean / std; backbone: the pretrained backbone's (timm's pretrained_cfg, e.g. CLIP's)
    epochs: int = field(default=30, metadata={"recipe": True})
    batch_size: int = field(default=64, metadata={"recipe": True})  # global batch, split over processes
    lr: float = field(default=0.05, metadata={"recipe": True})
    momentum: float = field(default=0.9, metadata={"recipe": True})
    weight_decay: float = field(default=5e-4, metadata={"recipe": True})
    nesterov: bool = field(default=False, metadata={"recipe": True})
    optimizer: str = field(default="sgd", metadata={"recipe": True})  # sgd | nesterov | adamw | lamb | lars | ... (timm's names)
    opt_eps: float | None = field(default=None, metadata={"recipe": True})  # None: the optimizer's default
    opt_betas: list[float] | None = field(default=None, metadata={"recipe": True})  # Adam-family betas; None: default
    layer_decay: float | None = field(default=None, metadata={"recipe": True})  # layer-wise lr decay (timm's), e.g. 0.75
    wd_skip_norm_bias: bool = field(default=False, metadata={"recipe": True})  # no weight decay on norms / biases (timm's)
    schedule: str = field(default="cosine", metadata={"recipe": True})  # cosine | step | constant | onecycle | poly
    warmup_epochs: int = field(default=0, metadata={"recipe": True})
    warmup_lr: float = field(default=0.0, metadata={"recipe": True})  # lr the warm-up (or onecycle) starts from
    min_lr: float = field(default=0.0, metadata={"recipe": True})  # lr at the end of cosine / poly / onecycle
    onecycle_pct: float = field(default=0.3, metadata={"recipe": True})  # share of the steps onecycle rises over
    poly_power: float = field(default=1.0, metadata={"recipe": True})  # exponent of schedule=poly
    milestones: list[int] = field(default_factory=list, metadata={"recipe": True})  # for schedule=step
    lr_decay: float = field(default=0.1, metadata={"recipe": True})
    stage2_epochs: int | None = field(default=None, metadata={"recipe": True})  # None: the rebalancer's default
    stage2_lr: float | None = field(default=None, metadata={"recipe": True})
    stage2_batch_size: int | None = field(default=None, metadata={"recipe": True})
    stage2_optimizer: str = field(default="sgd", metadata={"recipe": True})  # the rebalancer's stage (momentum SGD)
    holdout_fraction: float = field(default=0.1, metadata={"recipe": True})  # for rebalancers that tune on held-out training data
    min_free_mb: int = 200  # free disk space the run folder needs before training starts
    seed: int = field(default=0, metadata={"recipe": True})
    augment: str | None = field(default=None, metadata={"recipe": True})  # preset for the method's cls views; None: its own
    mix: str | None = field(default=None, metadata={"recipe": True})  # mixup | cutmix of stage 1's batches; None: none
    mix_alpha: float = field(default=1.0, metadata={"recipe": True})  # Beta(alpha, alpha) of --mix
    output_dir: str | None = None  # None: runs/<method>-<dataset>
    recipe: str | None = None
    hparams: dict[str, Any] = field(default_factory=dict)
    num_workers: int | None = None  # data loader workers per process; None: from the CPUs available
    sync_bn: bool = False  # synchronised batch statistics over processes (SyncBatchNorm on CUDA, GlobalBatchNorm on CPU)
    compile: bool = False  # torch.compile the backbone
    channels_last: bool = False  # channels-last memory format for the backbone (faster convolutions on GPUs)
    mixed_precision: str = field(default="no", metadata={"recipe": True})  # no | fp16 | bf16
    grad_accum: int = field(default=1, metadata={"recipe": True})
    checkpoint_every: int = 1  # epochs
    resume: bool = False
    overwrite: bool = False  # start over in a folder that holds a run (deletes its checkpoints and model files)
    log_every: int = 20  # steps
    log_with: str | None = None  # an Accelerate tracker: tensorboard, wandb, mlflow, ... (metrics.csv always)
    quiet: bool = False  # no progress bar (it shows only in a terminal anyway)
    max_steps_per_epoch: int | None = field(default=None, metadata={"recipe": True})
    budget_fraction: float = field(default=1.0, metadata={"recipe": True})  # share of the recipe's budget (ltreg.budget)
    eval_batch_size: int = 256
    tta: str | None = None  # test-time view set of the final evaluation (ltreg.eval_views); None: the method's
    push_to_hub: str | None = None
    cpu: bool = False
    license: str | None = None  # the model card's license; none unless given
    quick: bool = False

    def __post_init__(self) -> None:
        hints = typing.get_type_hints(type(self))
        for f in dataclasses.fields(self):
            check_type("TrainConfig", f.name, getattr(self, f.name), hints[f.name])
        check_settings(self)
        self._check_augment()
        self._check_optim()
        self._check_init()

    def _check_optim(self) -> None:
        """Every optimizer / schedule setting given must be used: a setting the choice ignores is an error."""
        from ltreg.optim import optimizer_names, optimizer_traits

        checks = [
            ("warmup_lr", 0 <= self.warmup_lr < self.lr, f"in [0, lr={self.lr})"),
            ("min_lr", 0 <= self.min_lr < self.lr, f"in [0, lr={self.lr})"),
            ("onecycle_pct", 0 < self.onecycle_pct < 1, "in (0, 1)"),
            ("poly_power", 0 < self.poly_power < math.inf, "> 0 and finite"),
            ("layer_decay", self.layer_decay is None or 0 < self.layer_decay <= 1, "in (0, 1] (or none: no layer decay)"),
            ("opt_eps", self.opt_eps is None or 0 < self.opt_eps < 1, "in (0, 1)"),
            ("opt_betas", self.opt_betas is None or (len(self.opt_betas) == 2 and all(
                isinstance(b, (int, float)) and 0 <= b < 1 for b in self.opt_betas)), "two numbers in [0, 1), e.g. 0.9,0.999"),
        ]
        for name, ok, want in checks:
            if not ok:  # NaN fails every comparison, so it is refused too
                raise SettingError(f"{flag(name)} must be {want}, got {getattr(self, name)!r}", [name])
        names = optimizer_names()
        for key in ("optimizer", "stage2_optimizer"):
            if getattr(self, key) not in names:
                close = difflib.get_close_matches(getattr(self, key), names, n=3)
                raise ConfigError(f"{key} {getattr(self, key)!r} is not an optimizer ltreg or timm knows"
                                  + (f"; did you mean {', '.join(close)}?" if close else "")
                                  + " (sgd, nesterov, adamw, lamb, lars, ... : timm.optim.list_optimizers())")
        momentum, betas, eps = optimizer_traits(self.optimizer)
        momentum = momentum or optimizer_traits(self.stage2_optimizer)[0]  # stage 2 uses --momentum too
        opt_flag = f"--optimizer {self.optimizer}"
        if self.nesterov and self.optimizer != "sgd":
            raise ConfigError(f"nesterov applies to --optimizer sgd, not {self.optimizer!r}; drop --nesterov "
                              f"(or use --optimizer nesterov)")
        if not momentum and self.momentum != 0.9:
            raise ConfigError(f"momentum={self.momentum} is not used by {opt_flag} nor --stage2-optimizer "
                              f"{self.stage2_optimizer}; drop --momentum")
        if self.opt_betas is not None and not betas:
            raise ConfigError(f"opt_betas is not used by {opt_flag} (no betas); drop --opt-betas")
        if self.opt_eps is not None and not eps:
            raise ConfigError(f"opt_eps is not used by {opt_flag} (no eps); drop --opt-eps")
        if self.schedule == "onecycle" and self.warmup_epochs:
            raise ConfigError(f"schedule onecycle has its own warm-up (onecycle_pct={self.onecycle_pct}); "
                              f"pass --warmup-epochs 0 (got {self.warmup_epochs})")
        if self.warmup_lr and not self.warmup_epochs and self.schedule != "onecycle":
            raise ConfigError(f"warmup_lr={self.warmup_lr} needs a warm-up: pass --warmup-epochs N "
                              f"(or --schedule onecycle), or drop --warmup-lr")
        if self.min_lr and self.schedule not in ("cosine", "poly", "onecycle"):
            raise ConfigError(f"min_lr applies to schedule cosine, poly or onecycle, not {self.schedule!r}; drop --min-lr")

    def _check_augment(self) -> None:
        if self.augment is None:
            return
        from ltreg.data.views import AUGMENT_PRESETS

        if self.augment not in AUGMENT_PRESETS:
            close = difflib.get_close_matches(self.augment, list(AUGMENT_PRESETS), n=2)
            raise SettingError(f"--augment must be one of {', '.join(AUGMENT_PRESETS)}, got {self.augment!r}"
                               + (f"; did you mean {' or '.join(close)}?" if close else ""), ["augment"])

    def _check_init(self) -> None:
        """Where the initial weights come from must be one source, named once."""
        from ltreg.models.backbones import implies_pretrained

        if self.backbone is not None and implies_pretrained(self.backbone):
            self.pretrained = True  # a tag, hf-hub: repo or folder names weights: they are loaded (and said so)
        if self.init_from is not None and self.pretrained:
            raise ConfigError(f"--init-from {self.init_from} gives the initial weights, and so does --pretrained / "
                              f"the backbone {self.backbone!r}: pass one of them (a plain --backbone ARCH with "
                              f"--init-from)")

    @property
    def run_dir(self) -> Path:
        return Path(self.output_dir or os.path.join("runs", f"{self.method}-{self.dataset}"))

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def data_args(self) -> DataArgs:
        """The data set builder's name and arguments for this run."""
        return DataArgs(dataset=self.dataset, root=self.data_root, imbalance=self.imbalance, profile=self.profile,
                        seed=self.seed, kwargs=dict(self.dataset_kwargs))

    def recipe_items(self) -> dict[str, Any]:
        """The settings that change the result, as run (the model card's recipe table); one value each."""
        from ltreg.optim import optimizer_traits

        out = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.metadata.get("recipe")}
        drop = set()
        if self.schedule != "step":
            drop |= {"milestones", "lr_decay"}
        if self.schedule != "onecycle":
            drop.add("onecycle_pct")
        if self.schedule != "poly":
            drop.add("poly_power")
        if not optimizer_traits(self.optimizer)[0] and not optimizer_traits(self.stage2_optimizer)[0]:
            drop.add("momentum")  # stage 2 (a rebalancer) uses it with its SGD
        if self.optimizer != "sgd":
            drop.add("nesterov")
        if self.augment is None:
            drop.add("augment")  # the method's own views (the card's augmentation row says which)
        if self.mix is None:
            drop |= {"mix", "mix_alpha"}
        if not self.tuner_args:
            drop.add("tuner_args")
        out = {k: v for k, v in out.items() if k not in drop}
        if self.pretrained and self.backbone:  # where the weights came from (the card's backbone row is the arch)
            out["backbone_weights"] = self.backbone if "." in self.backbone or ":" in self.backbone or "/" in self.backbone \
                else f"{self.backbone} (timm's default pretrained tag)"
        return out

    def fingerprint(self) -> dict[str, Any]:
        """Everything that changes what a run computes: a resume must match it exactly."""
        keys = ("method", "dataset", "imbalance", "profile", "dataset_kwargs", "backbone", "hparams")
        return {**{k: getattr(self, k) for k in keys}, **self.recipe_items()}


#: ``ltreg train --help``: what each setting does, its unit and what its default means (the flag's default
#: value is appended). Every TrainConfig field has one (tests/test_defaults.py).
SETTING_HELP: dict[str, str] = {
    "method": "registered method name (`ltreg list`)",
    "dataset": "registered data set: digits-lt, fashion-mnist-lt, cifar10-lt, cifar100-lt, imagenet-lt, places-lt, "
               "inat2018, imagefolder-lt (your image folders), hf-lt (a datasets table), or a plugin's",
    "data_root": "the data set's folder (image folders, a save_to_disk folder, parquet files) or a Hub data set id",
    "imbalance": "imbalance factor n_max / n_min of the long-tailed training set the builder draws; unset: the "
                 "builder's default (image folders and tables: kept as found)",
    "profile": "long-tail profile the builder draws: exp (LDAM-DRW) or step; unset: the builder's default",
    "backbone": "timm architecture (resnet50), a tagged one with weights (resnet50.a1_in1k), hf-hub:org/name or a "
                "model folder; unset: resnet8",
    "pretrained": "start from timm's default pretrained weights of --backbone (a tag, hf-hub: or folder implies it)",
    "init_from": "an ltreg run / model folder or Hub repo whose backbone (and heads) stage 1 starts from; also how "
                 "to train on from a finished run",
    "epochs": "stage-1 epochs (the schedule is laid out over them)",
    "batch_size": "global batch size, split evenly over the processes",
    "lr": "stage-1 base learning rate (scheduled by --schedule); unset with a non-SGD --optimizer: that "
          "optimizer's own default (AdamW 1e-3)",
    "momentum": "momentum of SGD-family optimizers (and stage 2's SGD)",
    "weight_decay": "L2 weight decay (decoupled for AdamW)",
    "nesterov": "Nesterov momentum for --optimizer sgd",
    "optimizer": "sgd | nesterov | adamw | lamb | lars | lion | ... (timm.optim.list_optimizers())",
    "opt_eps": "eps of Adam-family optimizers; unset: the optimizer's default",
    "opt_betas": "comma-separated betas of Adam-family optimizers, e.g. 0.9,0.999; unset: the optimizer's default",
    "layer_decay": "layer-wise lr decay (timm's, e.g. 0.75): backbone layer i of L trains at lr x decay^(L-i); "
                   "the log shows the base lr",
    "wd_skip_norm_bias": "no weight decay on norm scales, biases and the backbone's no_weight_decay() names",
    "schedule": "lr schedule: cosine | step | constant | onecycle | poly",
    "warmup_epochs": "linear warm-up epochs before the schedule (0: none)",
    "warmup_lr": "lr the warm-up (or onecycle) starts from; 0: lr / warm-up steps",
    "min_lr": "lr at the end of cosine / poly / onecycle",
    "onecycle_pct": "share of the steps --schedule onecycle rises over",
    "poly_power": "exponent of --schedule poly",
    "milestones": "comma-separated epochs where --schedule step multiplies the lr by --lr-decay",
    "lr_decay": "factor of --schedule step at each milestone",
    "stage2_epochs": "epochs of a two-stage method's second stage; unset: the rebalancer's default",
    "stage2_lr": "stage-2 learning rate; unset: the rebalancer's default, else --lr",
    "stage2_batch_size": "stage-2 global batch size; unset: --batch-size",
    "stage2_optimizer": "stage-2 optimizer (momentum SGD by default, as the rebalancers' papers)",
    "holdout_fraction": "share of each class held out of training for rebalancers that tune on held-out data",
    "min_free_mb": "free disk space (MB) the run folder needs before training starts",
    "seed": "the run's one seed: data draw, initialisation, augmentation, sampling",
    "tuner": "how the backbone adapts (ltreg.tuners: full, linear, bitfit, layernorm, lora, dora, ia3, adaptformer); "
             "unset: the method's",
    "tuner_args": "the tuner's arguments (--tuner-arg NAME=VALUE, e.g. r=8)",
    "image_size": "side of the training and test views in pixels; unset: the data set's (a ViT pretrained at "
                  "224 wants 224)",
    "normalize": "input normalisation: data (the data set's mean / std) or backbone (the pretrained backbone's, "
                 "e.g. CLIP's)",
    "tta": "test-time view set of the final evaluation (`ltreg.eval_views` entry points); unset: the method's",
    "augment": "training augmentation of the method's classifier view (cls): none | crop | crop+flip | randaugment | "
               "trivialaugment | autoaugment (torchvision v2 policies); unset: the method's own views. Flips follow "
               "the data set (digits: never; image folders: only with --data-arg hflip=true), except crop+flip",
    "mix": "mix stage 1's batches: mixup | cutmix (one Beta(alpha, alpha) draw per step, each image with its partner "
           "in the reversed batch); only methods whose loss is a cross-entropy on labels (ce, logit-adjusted-ce, "
           "balanced-softmax, ldam, focal, ...); unset: no mixing",
    "mix_alpha": "alpha of --mix's Beta(alpha, alpha) (1: lam uniform, the papers' CIFAR setting)",
    "output_dir": "run folder; unset: runs/<method>-<dataset>",
    "recipe": "a method's named paper setting (`ltreg info METHOD` lists them)",
    "num_workers": "data loader workers per process; unset: from the CPUs (none on CPU-only machines)",
    "sync_bn": "batch-norm statistics over the global batch when several processes train",
    "compile": "torch.compile the backbone",
    "channels_last": "channels-last memory format for the backbone (faster convolutions on GPUs)",
    "mixed_precision": "no | fp16 | bf16",
    "grad_accum": "optimizer step every N batches (gradient accumulation)",
    "checkpoint_every": "write a checkpoint every N epochs (and after the last)",
    "resume": "continue the run in --output-dir from its last checkpoint, with the same settings",
    "overwrite": "start over in a folder that holds a run (deletes its checkpoints and model files)",
    "log_every": "steps between progress updates and non-finite-loss checks",
    "log_with": "an Accelerate tracker: tensorboard, wandb, mlflow, ... (metrics.csv is always written)",
    "quiet": "no progress bar",
    "max_steps_per_epoch": "cap on optimizer steps per epoch (short runs and smoke tests); unset: the whole epoch",
    "budget_fraction": "share of the recipe's budget to train (epochs and epoch-counted settings scaled, ltreg.budget)",
    "eval_batch_size": "batch size of evaluation and feature passes",
    "push_to_hub": "push the finished run to this Hub repo (org/name)",
    "cpu": "train on the CPU even when a GPU is present",
    "license": "the model card's license (none unless given)",
    "quick": "a smoke run: 2 epochs of at most 10 steps, a small backbone, 1 stage-2 epoch",
}

_FIELDS = {f.name for f in dataclasses.fields(TrainConfig)}


def _check_keys(values: dict[str, Any], where: str) -> None:
    for key in values:
        if key not in _FIELDS:
            close = difflib.get_close_matches(key, sorted(_FIELDS), n=3)
            hint = f" Did you mean {', '.join(close)}?" if close else ""
            raise ConfigError(f"unknown key {key!r} in {where}.{hint}")


#: A YAML run file larger than this is refused before it is parsed (a real one is a few kB).
MAX_YAML_BYTES = 1 << 20
#: Nodes a YAML run file may expand to (aliases included): a few nested aliases could otherwise expand a
#: small file to gigabytes ("billion laughs").
MAX_YAML_NODES = 100_000


def expanded_size(value: Any, memo: dict[int, int] | None = None) -> int:
    """How many values ``value`` holds once shared parts (YAML aliases) are counted each time they are used;
    linear in the distinct objects (memoised), so a nested-alias bomb is measured without expanding it."""
    memo = {} if memo is None else memo
    if id(value) in memo:
        return memo[id(value)]
    memo[id(value)] = 1  # a self-referencing alias counts once
    if isinstance(value, dict):
        n = 1 + sum(expanded_size(k, memo) + expanded_size(v, memo) for k, v in value.items())
    elif isinstance(value, list):
        n = 1 + sum(expanded_size(v, memo) for v in value)
    else:
        n = 1
    memo[id(value)] = min(n, 1 << 62)
    return memo[id(value)]


def load_yaml(path: str | os.PathLike) -> dict[str, Any]:
    """A YAML run file: training keys at top level, method hyper-parameters under ``hparams``."""
    import yaml

    try:
        size = os.stat(path).st_size
        if size > MAX_YAML_BYTES:
            raise ConfigError(f"the YAML run file {path} (--config) is {size} bytes, more than a run file can be "
                              f"({MAX_YAML_BYTES}): it is not corrupt, just too large; pass a file of settings only")
        with open(path) as fh:
            text = fh.read(MAX_YAML_BYTES + 1)
        values = yaml.safe_load(text) or {}
    except OSError as exc:
        raise ConfigError(f"cannot read the YAML run file {path} (--config): {exc.strerror or exc}; check the path") from exc
    except UnicodeDecodeError as exc:
        raise ConfigError(f"the YAML run file {path} (--config) is not UTF-8 text: {exc}") from exc
    except yaml.constructor.ConstructorError as exc:
        raise ConfigError(
            f"the YAML run file {path} (--config) uses a tag ltreg does not run ({_one_line(exc)}): a run file holds "
            f"plain values only (numbers, strings, lists, mappings); remove the !tag"
        ) from exc
    except yaml.YAMLError as exc:
        raise ConfigError(f"the YAML run file {path} (--config) is not valid YAML: {_one_line(exc)}; fix the "
                          f"syntax at that line") from exc
    if expanded_size(values) > MAX_YAML_NODES:
        raise ConfigError(f"the YAML run file {path} (--config) expands to more than {MAX_YAML_NODES} values (nested "
                          f"aliases &a / *a): a run file holds a few settings; write them out without aliases")
    if not isinstance(values, dict):
        raise ConfigError(f"{path}: a YAML run file must be a mapping of keys to values")
    _check_keys(values, f"YAML file {path}")
    return values


@dataclass(frozen=True)
class RunConfig:
    """A resolved run: the method, its validated hyper-parameters and the training configuration."""

    spec: MethodSpec
    cfg: TrainConfig
    hparams: HParams
    notes: tuple[str, ...] = ()  # defaults chosen for this run's other settings, printed when it starts


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split())


def resolve_config(spec: MethodSpec, overrides: dict[str, Any], yaml_values: dict[str, Any] | None = None) -> RunConfig:
    """Merge the layers for ``spec`` into a validated :class:`TrainConfig` and hyper-parameters.

    Settings and the method's hyper-parameters are checked here, before any data or model is built;
    a contradiction that involves a default names the layer it came from.
    """
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
    source: dict[str, str] = {}
    layers = ((f"the defaults of the data set {dataset}", dataset_defaults(dataset)),
              (f"the defaults of the method {spec.name}", dict(spec.train_defaults)),
              (f"the recipe {recipe_name}", dict(recipe.train) if recipe else {}),
              ("the YAML file", yaml_values), ("the command line / keyword arguments", overrides))
    for where, layer in layers:
        _check_keys(layer, where)
        layer = dict(layer)
        hparams.update(layer.pop("hparams", {}) or {})
        merged.update(layer)
        source.update(dict.fromkeys(layer, where))
    if recipe is not None:
        hparams = {**dict(recipe.hparams), **hparams}
    merged["dataset"] = dataset
    merged["hparams"] = hparams
    merged["method"] = spec.name
    _check_keys(merged, "the merged configuration")
    hints = typing.get_type_hints(TrainConfig)
    for key, value in list(merged.items()):
        if isinstance(value, str) and hints[key] not in (str, str | None):
            merged[key] = parse_value(value, hints[key], flag(key))
    notes = _optimizer_lr(merged, source, [where for where, _ in layers])
    if merged.get("quick") is True:
        if spec.quick is not None:  # the method's own CPU set-up (e.g. a tiny ViT), then the common caps
            merged.update({k: v for k, v in spec.quick.train.items() if k not in overrides})
            hparams.update({**dict(spec.quick.hparams), **(overrides.get("hparams") or {})})  # --hp still wins
        merged.update(_quick_values(merged, spec.quick.train.get("backbone") if spec.quick else None))
    fraction = merged.get("budget_fraction", 1.0)
    if isinstance(fraction, (int, float)) and 0 < fraction < 1 and isinstance(merged.get("warmup_epochs"), int):
        merged["warmup_epochs"] = scale_count(merged["warmup_epochs"], fraction)  # the warm-up's share of the run
        if isinstance(merged.get("milestones"), list) and all(isinstance(m, int) for m in merged["milestones"]):
            merged["milestones"] = sorted({scale_count(m, fraction) for m in merged["milestones"]})
    try:
        cfg = TrainConfig(**merged)
    except SettingError as exc:
        chosen = {where for where, _ in layers[:3]}
        defaulted = [name for name in exc.names if source.get(name) in chosen]
        if not defaulted:
            raise
        origin = "; ".join(f"{name}={merged[name]!r} comes from {source[name]}" for name in defaulted)
        raise SettingError(f"{exc} ({origin}: override it with {' or '.join(map(flag, defaulted))})",
                           exc.names) from None
    epochs_ref = spec.stage2.epochs if spec.stage2 is not None else None
    if cfg.stage2_epochs is not None and isinstance(epochs_ref, hp):
        # one knob per value: where the spec declares stage 2's length as a hyper-parameter, the flag sets it
        cfg = dataclasses.replace(cfg, hparams={**cfg.hparams, epochs_ref.name: cfg.stage2_epochs}, stage2_epochs=None)
    given = {k for k in (*yaml_values, *overrides) if k in _FIELDS} - {"hparams", "method", "dataset", "quick"}
    refuse_ineffective(cfg, spec, given)
    hparams = scale_hparams(spec.hparams.replace(**cfg.hparams), cfg.budget_fraction, cfg.epochs,
                            frozenset(cfg.hparams))  # checked now, not when the run is built
    spec.check(hparams)  # the declared views and stages under these hyper-parameters
    check_dataset_kwargs(cfg)
    resolve_tuner(spec, cfg, hparams)  # an unknown tuner or a bad argument stops here, before any work
    if cfg.tta is not None:  # an unknown view set stops here, before any data is read
        from ltreg.registry import registry

        registry("eval_views").entry(cfg.tta)
    return RunConfig(spec, cfg, hparams, tuple(notes))


def _optimizer_lr(merged: dict[str, Any], source: dict[str, str], order: list[str]) -> list[str]:
    """Give a non-SGD optimizer its own default lr when the lr in ``merged`` is a default chosen below the layer
    that chose the optimizer (an SGD lr: ltreg's 0.05, a data set's or a recipe's); the note says so. An lr
    the user gave (YAML file, flag) is kept. An optimizer with no default of its own stops the run
    (:func:`ltreg.optim.default_lr`)."""
    from ltreg.optim import default_lr, optimizer_names

    name = merged.get("optimizer", TrainConfig.optimizer)
    if not isinstance(name, str) or name not in optimizer_names():
        return []  # TrainConfig names the bad value
    rank = {where: i for i, where in enumerate(order)}
    if source.get("lr") in order[-2:]:
        return []  # the user's own lr (YAML file or flag) is never replaced
    if rank.get(source.get("lr", ""), -1) >= rank.get(source.get("optimizer", ""), -1):
        return []  # the layer that chose the optimizer (or one above it) chose the lr too
    lr = default_lr(name)
    if lr is None:
        return []
    old, origin = merged.get("lr", TrainConfig.lr), source.get("lr", "ltreg's defaults")
    merged["lr"] = lr
    source["lr"] = f"the default lr of --optimizer {name}"
    return [f"lr {lr:g}: the default of --optimizer {name}; the lr {old!r} of {origin} is meant for SGD "
            f"(pass --lr to choose another)"]


def tuner_ref(spec: MethodSpec, cfg: TrainConfig, hparams: HParams) -> tuple[str, dict[str, Any]]:
    """The run's tuner and its arguments: the method's, with ``--tuner`` / ``--tuner-arg`` on top.

    ``--tuner`` naming another tuner than the method's drops the method's tuner arguments (they are
    another tuner's); ``--tuner-arg`` alone changes the method's tuner's arguments.
    """
    if cfg.tuner is not None and cfg.tuner.strip().lower() != spec.tuner.name.strip().lower():
        return cfg.tuner, dict(cfg.tuner_args)
    return spec.tuner.name, {**spec.tuner.resolve_kwargs(hparams), **cfg.tuner_args}


def resolve_tuner(spec: MethodSpec, cfg: TrainConfig, hparams: HParams) -> Tuner:
    """The run's :class:`~ltreg.tuners.Tuner`, its arguments checked (:class:`~ltreg.errors.TunerError`)."""
    name, kwargs = tuner_ref(spec, cfg, hparams)
    return build_tuner(name, **kwargs)


def parse_tuner_args(pairs: list[str]) -> dict[str, Any]:
    """``--tuner-arg NAME=VALUE`` flags: each VALUE one YAML scalar (``8``, ``0.1``, ``true``, ``null``, text)."""
    import yaml

    out: dict[str, Any] = {}
    for text in pairs:
        name, sep, raw = (part.strip() for part in text.partition("="))
        if not sep or not name.isidentifier():
            raise ConfigError(f"--tuner-arg expects NAME=VALUE, got {text!r}")
        if name in out:
            raise ConfigError(f"--tuner-arg {name} given twice; keep one")
        try:
            value = yaml.safe_load(raw) if raw and not raw.startswith("!") else (None if not raw else raw)
        except yaml.YAMLError:
            value = raw
        if isinstance(value, str) and _FLOAT.match(value):  # YAML 1.1 reads 1e-3 as text
            value = float(value)
        out[name] = value if isinstance(value, (str, int, float, bool, type(None))) else raw
    return out


_FLOAT = re.compile(r"^[-+]?(\d+\.?\d*|\.\d+)[eE][-+]?\d+$")


def ineffective(cfg: TrainConfig, spec: MethodSpec) -> dict[str, str]:
    """Settings that would do nothing with this method, optimizer, schedule and hardware: name -> why and what
    to use instead. Given ones are refused (:func:`refuse_ineffective`); the card leaves them all out."""
    from ltreg.optim import optimizer_traits
    from ltreg.registry import registry

    out: dict[str, str] = {}
    if cfg.schedule != "step":
        for name in ("milestones", "lr_decay"):
            out[name] = (f"it sets the lr drops of --schedule step, and this run uses --schedule {cfg.schedule}; "
                         f"pass --schedule step to use it, or drop it")
    for name, schedule in (("onecycle_pct", "onecycle"), ("poly_power", "poly")):
        if cfg.schedule != schedule:
            out[name] = f"it shapes --schedule {schedule}, and this run uses {cfg.schedule}; drop it"
    two_stage = spec.rebalance is not None
    if not two_stage:
        for name in ("stage2_epochs", "stage2_lr", "stage2_batch_size", "stage2_optimizer"):
            out[name] = (f"the method {spec.name} has one stage (no rebalancer), so there is no stage 2 to set; "
                         f"drop it, or pick a two-stage method (ltreg list shows the stages)")
    needs_holdout = two_stage and bool(getattr(registry("rebalancers").get(spec.rebalance.name), "needs_holdout",
                                               False))
    if not needs_holdout:
        out["holdout_fraction"] = (f"only a rebalancer that tunes on held-out training data uses it, and "
                                   f"{spec.name}'s {'does not' if two_stage else 'has none'}; drop it")
    stage2_momentum = two_stage and optimizer_traits(cfg.stage2_optimizer)[0]
    if not optimizer_traits(cfg.optimizer)[0] and not stage2_momentum:
        out["momentum"] = (f"--optimizer {cfg.optimizer} has no momentum"
                           + (f" and neither has --stage2-optimizer {cfg.stage2_optimizer}" if two_stage else "")
                           + "; drop it (Adam-family optimizers take --opt-betas), or use --optimizer sgd")
    if cfg.optimizer != "sgd":
        out["nesterov"] = f"it applies to --optimizer sgd, not {cfg.optimizer}; drop it (or use --optimizer nesterov)"
    if cfg.mix is None:
        out["mix_alpha"] = "it sets the Beta(alpha, alpha) of --mix, and no --mix is given; pass --mix mixup|cutmix or drop it"
    else:
        why = mix_refusal(spec)
        if why:
            out["mix"] = out["mix_alpha"] = why
    if cfg.mixed_precision == "fp16" and (cfg.cpu or not _cuda()):
        out["mixed_precision"] = ("fp16 autocast needs a CUDA GPU and this run is on the CPU, where it would train in "
                                  "fp32; use --mixed-precision bf16 (CPU autocast) or no")
    return out


def mix_refusal(spec: MethodSpec) -> str | None:
    """Why ``--mix`` cannot apply to the method ``spec`` (None: it can): mixing needs the loss to weigh each
    image's two labels (``mixable`` logit losses), and a method with its own batch transform mixes already."""
    from ltreg.registry import registry

    if spec.batch_transform is not None:
        return (f"the method {spec.name} mixes its own batches (batch transform {spec.batch_transform.name}); "
                f"drop --mix")
    if not getattr(registry("losses").get(spec.loss.name), "mixable", False):
        mixable = sorted(n for n in registry("losses").names() if getattr(registry("losses").get(n), "mixable", False))
        return (f"the method {spec.name}'s loss ({spec.loss.name}) does not weigh an image's two labels, so mixed "
                f"images would train on the first label only; drop --mix, or use a method whose loss is one of "
                f"{', '.join(mixable)}")
    return None


def _cuda() -> bool:
    import torch

    return torch.cuda.is_available()


def refuse_ineffective(cfg: TrainConfig, spec: MethodSpec, given: set[str]) -> None:
    """Stop before any work when a setting the user gave would do nothing (see :func:`ineffective`)."""
    for name, why in ineffective(cfg, spec).items():
        if name in given:
            raise ConfigError(f"{flag(name)} {getattr(cfg, name)!r} would have no effect: {why}")


def check_dataset_kwargs(cfg: TrainConfig) -> None:
    """Every ``--data-arg`` is an argument of the data set's builder that no setting owns (checked with the
    builder's signature before any data is read)."""
    from ltreg.registry import registry

    for key in cfg.dataset_kwargs:
        if key in RUN_ARGUMENTS:
            raise ConfigError(f"--data-arg {key}=... is set by the setting {RUN_ARGUMENTS[key]}; use that flag")
    check_builder_args(cfg.dataset, registry("datasets").get(cfg.dataset), cfg.data_args().call_kwargs(),
                       complete=False)


def _quick_values(values: dict[str, Any], small_backbone: str | None = None) -> dict[str, Any]:
    """What ``--quick`` changes: 2 epochs of at most 10 steps, a small backbone (``small_backbone``, the method's
    quick one, is kept), 1 stage-2 epoch."""
    backbone = values.get("backbone")
    epochs, steps, batch = (values.get(k, getattr(TrainConfig, k)) for k in ("epochs", "max_steps_per_epoch", "batch_size"))
    ints = all(isinstance(v, int) for v in (epochs, batch)) and (steps is None or isinstance(steps, int))
    if not ints:  # a wrong type: leave it for TrainConfig to name
        return {}
    small = backbone if backbone in ("resnet8", "resnet20", "resnet32", small_backbone) else (small_backbone or "resnet8")
    out = {
        "epochs": min(epochs, 2),
        "warmup_epochs": 0,
        "milestones": [],
        "max_steps_per_epoch": min(steps or 10, 10),
        "stage2_epochs": 1,
        "backbone": small,
        "batch_size": min(batch, 64),
        "quick": False,
    }
    if small != backbone:  # a small random backbone: the weights of the one it replaces do not apply
        out.update(pretrained=False, init_from=None)
    if values.get("schedule") != "onecycle":
        out["warmup_lr"] = 0.0  # no warm-up left to start from it
    return out
