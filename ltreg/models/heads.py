"""The heads an LTModel puts on a timm backbone: the projection MLP and the cosine classifier."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class CosineLinear(nn.Module):
    """u_c = s * cos(h, w_c): the NormedLinear classifier of BCL / ECL (s = 30)."""

    def __init__(self, in_features: int, out_features: int, scale: float = 30.0) -> None:
        super().__init__()
        self.scale = scale
        self.weight = nn.Parameter(torch.empty(out_features, in_features).uniform_(-1, 1) / math.sqrt(in_features))

    def forward(self, h: Tensor) -> Tensor:
        return self.scale * F.normalize(h, dim=-1) @ F.normalize(self.weight, dim=-1).t()


def projector(width: int, hidden: int | None, out: int | None, batch_norm: bool) -> nn.Module:
    """``Linear(width, hidden) [BN] ReLU Linear(hidden, out)``, or the identity when ``out`` is falsy."""
    if not out:
        return nn.Identity()
    hidden = hidden or width
    layers: list[nn.Module] = [nn.Linear(width, hidden)]
    if batch_norm:
        layers.append(nn.BatchNorm1d(hidden))
    layers += [nn.ReLU(inplace=True), nn.Linear(hidden, out)]
    return nn.Sequential(*layers)
