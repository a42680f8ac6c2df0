"""CIFAR-style ResNets (He et al. 2016, option A shortcuts as in LDAM-DRW), registered into timm.

``timm.create_model("resnet32", num_classes=100)`` works once ltreg is imported; the models follow
timm's interface (``forward_features``, ``forward_head``, ``get_classifier``, ``reset_classifier``)
so timm's hub loading and ltreg's heads use them like any timm backbone.
"""

from __future__ import annotations

import torch.nn.functional as F
from timm.models import build_model_with_cfg, generate_default_cfgs, register_model
from torch import Tensor, nn


class _Block(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.pad = cout - cin if (stride != 1 or cin != cout) else 0
        self.stride = stride

    def forward(self, x: Tensor) -> Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        short = x
        if self.pad or self.stride != 1:  # option A: subsample and zero-pad channels
            short = x[:, :, :: self.stride, :: self.stride]
            short = F.pad(short, (0, 0, 0, 0, self.pad // 2, self.pad - self.pad // 2))
        return F.relu(out + short)


class CifarResNet(nn.Module):
    """ResNet-(6n+2) for small images: three stages of n basic blocks, widths 16/32/64."""

    def __init__(
        self,
        depth: int = 32,
        num_classes: int = 10,
        in_chans: int = 3,
        widths: tuple[int, int, int] = (16, 32, 64),
        drop_rate: float = 0.0,
        global_pool: str = "avg",
        **_: object,
    ) -> None:
        super().__init__()
        if (depth - 2) % 6:
            raise ValueError(f"CIFAR ResNet depth must be 6n+2, got {depth}")
        n = (depth - 2) // 6
        self.num_classes = num_classes
        self.num_features = self.head_hidden_size = widths[2]
        self.drop_rate = drop_rate
        self.global_pool = global_pool
        self.conv1 = nn.Conv2d(in_chans, widths[0], 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(widths[0])
        layers, cin = [], widths[0]
        for i, w in enumerate(widths):
            blocks = [_Block(cin if j == 0 else w, w, (1 if i == 0 else 2) if j == 0 else 1) for j in range(n)]
            layers.append(nn.Sequential(*blocks))
            cin = w
        self.layer1, self.layer2, self.layer3 = layers
        self.fc = nn.Linear(widths[2], num_classes) if num_classes > 0 else nn.Identity()
        for m in self.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                nn.init.kaiming_normal_(m.weight)

    def group_matcher(self, coarse: bool = False) -> dict[str, str]:
        """timm's parameter groups (stem, then each stage or block): layer-wise lr decay reads them."""
        return {"stem": r"^conv1|bn1", "blocks": r"^layer(\d+)" if coarse else r"^layer(\d+)\.(\d+)"}

    def get_classifier(self) -> nn.Module:
        return self.fc

    def reset_classifier(self, num_classes: int, global_pool: str | None = None) -> None:
        self.num_classes = num_classes
        if global_pool is not None:
            self.global_pool = global_pool
        self.fc = nn.Linear(self.num_features, num_classes) if num_classes > 0 else nn.Identity()

    def forward_features(self, x: Tensor) -> Tensor:
        x = F.relu(self.bn1(self.conv1(x)))
        return self.layer3(self.layer2(self.layer1(x)))

    def forward_head(self, x: Tensor, pre_logits: bool = False) -> Tensor:
        x = x.mean((2, 3)) if self.global_pool else x.flatten(1)
        if self.drop_rate:
            x = F.dropout(x, self.drop_rate, self.training)
        return x if pre_logits else self.fc(x)

    def forward(self, x: Tensor) -> Tensor:
        return self.forward_head(self.forward_features(x))


def _cfg(**kw: object) -> dict:
    return {
        "num_classes": 10,
        "input_size": (3, 32, 32),
        "mean": (0.4914, 0.4822, 0.4465),
        "std": (0.2470, 0.2435, 0.2616),
        "classifier": "fc",
        "first_conv": "conv1",
        **kw,
    }


default_cfgs = generate_default_cfgs({f"resnet{d}.untrained": _cfg() for d in (8, 20, 32, 44, 56, 110)})


def _create(depth: int, variant: str, pretrained: bool, **kwargs: object) -> CifarResNet:
    return build_model_with_cfg(CifarResNet, variant, pretrained, depth=depth, **kwargs)


@register_model
def resnet8(pretrained: bool = False, **kwargs: object) -> CifarResNet:
    """CIFAR ResNet-8 (CPU-sized)."""
    return _create(8, "resnet8", pretrained, **kwargs)


@register_model
def resnet20(pretrained: bool = False, **kwargs: object) -> CifarResNet:
    """CIFAR ResNet-20."""
    return _create(20, "resnet20", pretrained, **kwargs)


@register_model
def resnet32(pretrained: bool = False, **kwargs: object) -> CifarResNet:
    """CIFAR ResNet-32, the CIFAR-LT backbone of LDAM-DRW, KCL, PaCo, ICCL and CoGloAT."""
    return _create(32, "resnet32", pretrained, **kwargs)


@register_model
def resnet44(pretrained: bool = False, **kwargs: object) -> CifarResNet:
    """CIFAR ResNet-44."""
    return _create(44, "resnet44", pretrained, **kwargs)


@register_model
def resnet56(pretrained: bool = False, **kwargs: object) -> CifarResNet:
    """CIFAR ResNet-56."""
    return _create(56, "resnet56", pretrained, **kwargs)


@register_model
def resnet110(pretrained: bool = False, **kwargs: object) -> CifarResNet:
    """CIFAR ResNet-110."""
    return _create(110, "resnet110", pretrained, **kwargs)


__all__ = ["CifarResNet"]
