"""LTModel: a timm backbone, a projection head and a (linear or cosine) classifier.

``forward(images[B, V, C, H, W]) -> Outputs`` runs every view in one batched pass; each
method's loss picks the views and heads it needs. The backbone is timm's with ``num_classes=0``
(pooled features), so any timm architecture works, and the CIFAR ResNets ltreg registers too.
"""

from __future__ import annotations

import math
import os
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import timm
import torch
import torch.nn.functional as F
from torch import Tensor, nn

import ltreg.models.cifar_resnet  # noqa: F401 - registers resnet8/20/32/... into timm
from ltreg.errors import ConfigError
from ltreg.step import Outputs


class ModelConfigError(ConfigError):
    """An unknown backbone or an inconsistent head configuration; ``key`` is the offending field."""

    def __init__(self, message: str, key: str = "") -> None:
        super().__init__(message)
        self.key = key


@dataclass
class LTModelConfig:
    """Everything needed to rebuild an :class:`LTModel` (saved as part of ``config.json``)."""

    backbone: str = "resnet8"
    num_classes: int = 10
    in_chans: int = 3
    classifier: str = "linear"  # "linear" | "cosine"
    cosine_scale: float = 30.0
    proj_dim: int | str | None = 128  # "width": as wide as the backbone features (ECL's CC-GE needs d = D)
    proj_hidden: int | None = None
    proj_bn: bool = False
    backbone_kwargs: dict[str, Any] = field(default_factory=dict)

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
    "img_size": (lambda v: _is_int(v) and 1 <= v <= 8192, "an integer in [1, 8192]"),
}
_BACKBONE_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_]*(\.[A-Za-z0-9_]+)?$")


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


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


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


class CosineLinear(nn.Module):
    """u_c = s * cos(h, w_c): the NormedLinear classifier of BCL / ECL (s = 30)."""

    def __init__(self, in_features: int, out_features: int, scale: float = 30.0) -> None:
        super().__init__()
        self.scale = scale
        self.weight = nn.Parameter(torch.empty(out_features, in_features).uniform_(-1, 1) / math.sqrt(in_features))

    def forward(self, h: Tensor) -> Tensor:
        return self.scale * F.normalize(h, dim=-1) @ F.normalize(self.weight, dim=-1).t()


def create_backbone(name: str, in_chans: int, **kwargs: Any) -> nn.Module:
    """A timm model without classifier; unknown names list close timm matches."""
    if not timm.is_model(name):
        import difflib

        close = difflib.get_close_matches(name, timm.list_models(), n=5, cutoff=0.6)
        hint = f" Did you mean {', '.join(close)}?" if close else ""
        raise ModelConfigError(
            f"unknown backbone {name!r}: not a timm architecture.{hint} "
            f"List them with `python -c \"import timm; print(timm.list_models())\"`; small CPU-sized "
            f"ones ltreg adds: resnet8, resnet20, resnet32."
        )
    return timm.create_model(name, pretrained=False, num_classes=0, in_chans=in_chans, **kwargs)


class LTModel(nn.Module):
    """Backbone + projection head (normalised output) + classifier, all views in one pass."""

    def __init__(self, config: LTModelConfig) -> None:
        super().__init__()
        if config.classifier not in ("linear", "cosine"):
            raise ModelConfigError(f"classifier must be 'linear' or 'cosine', got {config.classifier!r}")
        self.config = config
        self.backbone = create_backbone(config.backbone, config.in_chans, **config.backbone_kwargs)
        width = self.backbone.num_features
        self.num_features = width
        if config.proj_dim == "width":
            config.proj_dim = width
        elif isinstance(config.proj_dim, str):
            raise ModelConfigError(f"proj_dim must be an int, None or 'width', got {config.proj_dim!r}")
        if config.proj_dim:
            hidden = config.proj_hidden or width
            layers: list[nn.Module] = [nn.Linear(width, hidden)]
            if config.proj_bn:
                layers.append(nn.BatchNorm1d(hidden))
            layers += [nn.ReLU(inplace=True), nn.Linear(hidden, config.proj_dim)]
            self.projector: nn.Module = nn.Sequential(*layers)
        else:
            self.projector = nn.Identity()
        if config.classifier == "cosine":
            self.classifier: nn.Module = CosineLinear(width, config.num_classes, config.cosine_scale)
        else:
            self.classifier = nn.Linear(width, config.num_classes)

    @property
    def num_classes(self) -> int:
        return self.config.num_classes

    @property
    def embed_dim(self) -> int:
        return self.config.proj_dim or self.num_features

    def forward_features(self, x: Tensor) -> Tensor:
        """Pooled backbone features ``[N, F]`` of images ``[N, C, H, W]``."""
        return self.backbone(x)

    def project(self, h: Tensor) -> Tensor:
        """L2-normalised projections ``[N, D]``."""
        return F.normalize(self.projector(h), dim=-1)

    def forward(self, images: Tensor) -> Outputs:
        """``images`` is ``[B, V, C, H, W]`` (or ``[B, C, H, W]`` for one view)."""
        if images.dim() == 4:
            images = images.unsqueeze(1)
        b, v = images.shape[:2]
        h = self.forward_features(images.flatten(0, 1))
        z = self.project(h)
        logits = self.classifier(h)
        return Outputs(z=z.view(b, v, -1), logits=logits.view(b, v, -1), features=h.view(b, v, -1))

    def predict(self, images: Tensor) -> Tensor:
        """Classifier logits ``[N, C]`` of single-view images ``[N, C, H, W]``."""
        return self.classifier(self.forward_features(images))

    @classmethod
    def from_pretrained(cls, repo_or_dir: str | os.PathLike, *, revision: str | None = None,
                        trust_remote_pickle: bool = False) -> LTModel:
        """A model folder or Hub repo id written by :meth:`save_pretrained` (see :func:`ltreg.hub.from_pretrained`)."""
        from ltreg.hub import from_pretrained

        return from_pretrained(repo_or_dir, revision=revision, trust_remote_pickle=trust_remote_pickle)

    def save_pretrained(self, directory: str | os.PathLike, run_meta: dict[str, Any] | None = None) -> Path:
        """Config, safetensors weights and model card in ``directory`` (see :func:`ltreg.hub.save_pretrained`)."""
        from ltreg.hub import save_pretrained

        return save_pretrained(self, directory, run_meta=run_meta)

    def push_to_hub(self, repo_id: str, *, private: bool = False, revision: str | None = None,
                    token: str | None = None, run_meta: dict[str, Any] | None = None) -> str:
        """Save to a temporary folder and push it in one commit (see :func:`ltreg.hub.push_to_hub`)."""
        from ltreg.hub import push_to_hub

        return push_to_hub(self, repo_id, private=private, revision=revision, token=token, run_meta=run_meta)
