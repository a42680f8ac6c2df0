"""LTModel: a timm backbone, a projection head and a (linear or cosine) classifier.

``forward(images[B, V, C, H, W]) -> Outputs`` runs every view in one batched pass; each
method's loss picks the views and heads it needs. The backbone is timm's with ``num_classes=0``
(pooled features), so any timm architecture works, and the CIFAR ResNets ltreg registers too.
"""

from __future__ import annotations

import math
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import timm
import torch
import torch.nn.functional as F
from torch import Tensor, nn

import ltreg.models.cifar_resnet  # noqa: F401 - registers resnet8/20/32/... into timm
from ltreg.step import Outputs


class ModelConfigError(ValueError):
    """An unknown backbone or an inconsistent head configuration."""


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

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


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
