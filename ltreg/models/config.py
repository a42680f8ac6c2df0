"""LTModelConfig: everything needed to rebuild an :class:`~ltreg.models.ltmodel.LTModel` (saved in ``config.json``)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any


class ModelConfigError(ValueError):
    """An unknown backbone or an inconsistent head configuration."""


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

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)
