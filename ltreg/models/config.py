"""LTModelConfig: everything needed to rebuild an :class:`~ltreg.models.ltmodel.LTModel` (saved in ``config.json``).

A config read from a folder or the Hub is data: :func:`check_model_config` bounds every size and
lets only an allow-list of keyword arguments reach ``timm.create_model``.
"""

from __future__ import annotations

import math
import re
from dataclasses import asdict, dataclass, field
from typing import Any

from ltreg.errors import CheckpointError, ModelConfigError, TunerError


@dataclass
class LTModelConfig:
    """The backbone (a timm name), the class count and the heads of an LTModel."""

    backbone: str = "resnet8"
    num_classes: int = 10
    in_chans: int = 3
    classifier: str = "linear"  # "linear" | "cosine"
    cosine_scale: float = 30.0
    proj_dim: int | str | None = 128  # "width": as wide as the backbone features (ECL's CC-GE needs d = D)
    proj_hidden: int | None = None
    proj_bn: bool = False
    backbone_kwargs: dict[str, Any] = field(default_factory=dict)
    #: The structural tuner whose modules the backbone holds (``{"name": "adaptformer", "args": {...}}``);
    #: None: a plain timm backbone (also after a LoRA / DoRA / IA3 run, saved merged).
    tuner: dict[str, Any] | None = None

    def __post_init__(self) -> None:
        check_model_config(self)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


#: Largest sizes a model config may ask for: a config.json is data, and 10**9 classes is an allocation.
MAX_CLASSES = 100_000
MAX_IN_CHANS = 64
MAX_DIM = 65_536
MAX_COSINE_SCALE = 1e4
#: Keyword arguments of ``timm.create_model`` a config may pass to the backbone, with their check and
#: range. Nothing that loads or downloads (``pretrained``, ``pretrained_cfg(_overlay)``, ``checkpoint_path``,
#: ``cache_dir``) and nothing ltreg sets itself (``num_classes``, ``in_chans``).
BACKBONE_KWARGS: dict[str, tuple[Any, str]] = {
    **{name: (lambda v: _is_number(v) and 0 <= v < 1, "a number in [0, 1)")
       for name in ("drop_rate", "drop_path_rate", "drop_block_rate", "proj_drop_rate", "attn_drop_rate",
                    "pos_drop_rate", "patch_drop_rate")},
    "global_pool": (lambda v: v in ("", "avg", "max", "avgmax", "catavgmax", "fast", "token", "map"),
                    "one of '', avg, max, avgmax, catavgmax, fast, token, map"),
    "img_size": (lambda v: _ints(v, 8192), "an integer in [1, 8192] or a pair of them"),
    # the size of a transformer (a small ViT made for tests or CPUs: timm's own config.json model_args)
    "patch_size": (lambda v: _ints(v, 1024), "an integer in [1, 1024] or a pair of them"),
    "embed_dim": (lambda v: _is_int(v) and 1 <= v <= 16384, "an integer in [1, 16384]"),
    "depth": (lambda v: _is_int(v) and 1 <= v <= 256, "an integer in [1, 256]"),
    "num_heads": (lambda v: _is_int(v) and 1 <= v <= 256, "an integer in [1, 256]"),
    "mlp_ratio": (lambda v: _is_number(v) and 0 < v <= 64, "a number in (0, 64]"),
}
_BACKBONE_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_]*(\.[A-Za-z0-9_]+)?$")


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _ints(v: Any, hi: int) -> bool:
    """An integer in [1, hi], or a pair of them (timm writes ``img_size`` as ``[H, W]``)."""
    pair = isinstance(v, (list, tuple)) and len(v) == 2
    return all(_is_int(x) and 1 <= x <= hi for x in (v if pair else [v]))


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _size(v: Any, hi: int) -> bool:
    return _is_int(v) and 1 <= v <= hi


def check_model_config(cfg: LTModelConfig) -> None:
    """Types and bounds of every field; :class:`ModelConfigError` names the key, the allowed values and the value."""
    checks: list[tuple[str, bool, str]] = [
        ("backbone", isinstance(cfg.backbone, str) and bool(_BACKBONE_NAME.match(cfg.backbone)),
         "a timm architecture name (letters, digits, _ and one optional .tag; no hub prefix or path)"),
        ("num_classes", _size(cfg.num_classes, MAX_CLASSES), f"an integer in [1, {MAX_CLASSES}]"),
        ("in_chans", _size(cfg.in_chans, MAX_IN_CHANS), f"an integer in [1, {MAX_IN_CHANS}]"),
        ("classifier", cfg.classifier in ("linear", "cosine"), "'linear' or 'cosine'"),
        ("cosine_scale", _is_number(cfg.cosine_scale) and 0 < cfg.cosine_scale <= MAX_COSINE_SCALE,
         f"a finite number in (0, {MAX_COSINE_SCALE:g}]"),
        ("proj_dim", cfg.proj_dim is None or cfg.proj_dim == "width" or _size(cfg.proj_dim, MAX_DIM),
         f"an integer in [1, {MAX_DIM}], 'width' or null"),
        ("proj_hidden", cfg.proj_hidden is None or _size(cfg.proj_hidden, MAX_DIM), f"an integer in [1, {MAX_DIM}] or null"),
        ("proj_bn", isinstance(cfg.proj_bn, bool), "true or false"),
        ("backbone_kwargs", isinstance(cfg.backbone_kwargs, dict), "a mapping of keyword arguments"),
        ("tuner", cfg.tuner is None or isinstance(cfg.tuner, dict), "a mapping {name, args} or null"),
    ]
    for key, ok, want in checks:
        if not ok:
            raise ModelConfigError(f"{key} must be {want}, got {_short(getattr(cfg, key))}", key)
    for name, value in cfg.backbone_kwargs.items():
        if name not in BACKBONE_KWARGS:
            raise ModelConfigError(
                f"{_short(name)} is not an allowed backbone argument (allowed: {', '.join(sorted(BACKBONE_KWARGS))}); "
                f"arguments that load files or download weights are never taken from a config",
                f"backbone_kwargs.{str(name)[:80]}")
        check, want = BACKBONE_KWARGS[name]
        if not check(value):
            raise ModelConfigError(f"backbone_kwargs.{name} must be {want}, got {_short(value)}", f"backbone_kwargs.{name}")
    if cfg.tuner is not None:
        from ltreg.tuners import tuner_from_dict

        try:
            tuner = tuner_from_dict(cfg.tuner, "the model config")
        except TunerError as exc:
            raise ModelConfigError(str(exc), "tuner") from exc
        if not tuner.structural:
            raise ModelConfigError(f"tuner {tuner.name!r} adds no modules: a model config names only a tuner whose "
                                   f"modules the backbone holds (lora, dora, ia3, adaptformer)", "tuner")


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


_DIST_NAME = re.compile(r"^[A-Za-z0-9]([A-Za-z0-9._-]{0,98}[A-Za-z0-9])?$")  # PEP 508 distribution name
_VERSION = re.compile(r"^[0-9][A-Za-z0-9.+!_-]{0,62}$")
_PRINTABLE = re.compile(r"^[\x21-\x7e]{1,100}$")  # one printable ASCII word, e.g. a method name


def folder_model_config(config: dict[str, Any], label: str) -> LTModelConfig:
    """The LTModelConfig a model folder's ``config.json`` describes, checked as untrusted data.

    Every field of the ``ltreg.model`` block is type- and range-checked (an allow-list of backbone
    arguments), the plugin hint must be a plain distribution name and version, and the timm keys must
    agree with the ltreg block; a refusal is a :class:`CheckpointError` naming the file and the key.
    """
    where = f"config.json of {label}"
    block = config.get("ltreg")
    model = block.get("model") if isinstance(block, dict) else None
    if not isinstance(block, dict) or not isinstance(model, dict):
        raise CheckpointError(f"{where} has no ltreg model block (key 'ltreg.model'): a plain timm model? "
                              f"load it with timm.create_model")
    unknown = sorted(set(model) - set(LTModelConfig.__dataclass_fields__))
    if unknown:
        raise CheckpointError(f"{where}: unknown key ltreg.model.{unknown[0]} (known: "
                              f"{', '.join(LTModelConfig.__dataclass_fields__)}); a newer ltreg wrote it, or it was edited")
    try:
        cfg = LTModelConfig(**model)
    except ModelConfigError as exc:
        raise CheckpointError(f"{where}: refused key ltreg.model.{exc.key}: {exc}. A model folder or Hub repo is "
                              f"data: its config may not pass other values") from exc
    for key, pattern in (("dist", _DIST_NAME), ("dist_version", _VERSION), ("method", _PRINTABLE)):
        value = block.get(key)
        if value is not None and not (isinstance(value, str) and pattern.match(value)):
            raise CheckpointError(f"{where}: refused key ltreg.{key}={str(value)[:80]!r}: not a plain "
                                  f"{'version' if key == 'dist_version' else 'name'}")
    for key, ours in (("architecture", cfg.backbone), ("num_classes", cfg.num_classes)):
        if config.get(key, ours) != ours:
            raise CheckpointError(f"{where} contradicts itself: {key}={config[key]!r} but ltreg.model says {ours!r}")
    return cfg
