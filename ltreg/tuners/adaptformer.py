"""``adaptformer``: a parallel bottleneck adapter beside the MLP of every transformer block.

AdaptFormer (Chen et al., NeurIPS 2022), as LIFT (Shi et al., ICML 2024) uses it: the block's MLP
branch becomes ``mlp(norm2(x)) + s * up(relu(down(ln(x))))`` where ``x`` is the block's residual
stream before ``norm2``. ``up`` (weight and bias) and ``down``'s bias start at zero, so the adapted
model computes exactly what the base does at step 0. Arguments: the bottleneck width ``dim``, the
scale ``s`` (``learnable_scale``: a learned scalar starting at ``scale``, LIFT's choice), ``layernorm``
(LIFT's LayerNorm on the adapter's input; AdaptFormer's default has none), ``dropout`` after the
ReLU, and ``init`` of ``down``'s weight (``uniform``: AdaptFormer's Kaiming-uniform, ``normal``: LIFT's).

The adapter sits in a registered submodule ``blocks.N.adaptformer`` (saved with the backbone); two
hooks on the block's ``norm2`` (reads ``x``) and ``mlp`` (adds the adapter's output) wire it in, so
timm's block code and parameter names stay as they are. It cannot be merged into the backbone's
weights (a ReLU sits between the projections): a model with AdaptFormer loads in ltreg.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from ltreg.errors import TunerError
from ltreg.tuners.base import Tuner, arch_name

ATTR = "adaptformer"


class AdaptFormerAdapter(nn.Module):
    """``s * up(dropout(relu(down(ln(x)))))``, zero at initialisation."""

    def __init__(self, width: int, dim: int, scale: float, learnable_scale: bool, layernorm: bool, dropout: float,
                 init: str) -> None:
        super().__init__()
        self.ln = nn.LayerNorm(width) if layernorm else nn.Identity()
        self.down = nn.Linear(width, dim)
        self.act = nn.ReLU()
        self.dropout = nn.Dropout(dropout)
        self.up = nn.Linear(dim, width)
        if learnable_scale:
            self.scale = nn.Parameter(torch.full((1,), float(scale)))
        else:
            self.register_buffer("scale", torch.full((1,), float(scale)), persistent=True)
        if init == "normal":
            nn.init.kaiming_normal_(self.down.weight, a=math.sqrt(5))
        else:
            nn.init.kaiming_uniform_(self.down.weight, a=math.sqrt(5))
        for tensor in (self.down.bias, self.up.weight, self.up.bias):
            nn.init.zeros_(tensor)
        self._x: Tensor | None = None

    def forward(self, x: Tensor) -> Tensor:
        return self.up(self.dropout(self.act(self.down(self.ln(x))))) * self.scale

    # hooks on the block: norm2's input is the residual stream the adapter reads
    def read_input(self, module: nn.Module, args: tuple[Any, ...]) -> None:
        self._x = args[0]

    def add_output(self, module: nn.Module, args: tuple[Any, ...], output: Tensor) -> Tensor:
        x, self._x = self._x, None
        if x is None:
            raise RuntimeError("AdaptFormer: the block's mlp ran without its norm2 first; this block layout is "
                               "not supported")
        return output + self(x)


def adaptable_blocks(backbone: nn.Module) -> list[tuple[str, nn.Module]]:
    """Transformer blocks with ``norm2`` and an ``mlp`` (timm's ViT / DeiT / CLIP / EVA / Swin blocks)."""
    return [(n, m) for n, m in backbone.named_modules()
            if isinstance(getattr(m, "mlp", None), nn.Module) and isinstance(getattr(m, "norm2", None), nn.Module)]


def _width(block: nn.Module) -> int:
    fc1 = getattr(block.mlp, "fc1", None)
    if isinstance(fc1, nn.Linear):
        return fc1.in_features
    first = next((m for m in block.mlp.modules() if isinstance(m, nn.Linear)), None)
    if first is None:
        raise TunerError(f"tuner adaptformer: cannot tell the width of the block MLP {type(block.mlp).__name__}")
    return first.in_features


@dataclass(frozen=True)
class AdaptFormer(Tuner):
    """A zero-initialised bottleneck adapter parallel to each block's MLP; only the adapters train."""

    name: ClassVar[str] = "adaptformer"
    structural: ClassVar[bool] = True
    mergeable: ClassVar[bool] = False
    dim: int = field(default=64, metadata={"min": 1, "max": 65536})
    scale: float = field(default=0.1, metadata={"min": 0})
    learnable_scale: bool = False
    layernorm: bool = False
    dropout: float = field(default=0.0, metadata={"min": 0, "max": 0.99})
    init: str = field(default="uniform", metadata={"choices": ("uniform", "normal")})

    def check(self, backbone: nn.Module) -> None:
        if not adaptable_blocks(backbone):
            raise TunerError(f"tuner adaptformer adapts transformer blocks (an MLP beside a norm2), and the backbone "
                             f"{arch_name(backbone)} has none (a CNN?). Pick a ViT backbone, or --tuner lora / bitfit / "
                             f"linear / full for this one")

    def add_modules(self, backbone: nn.Module) -> None:
        for _, block in adaptable_blocks(backbone):
            adapter = AdaptFormerAdapter(_width(block), self.dim, self.scale, self.learnable_scale, self.layernorm,
                                         self.dropout, self.init)
            block.add_module(ATTR, adapter)
            block.norm2.register_forward_pre_hook(adapter.read_input)
            block.mlp.register_forward_hook(adapter.add_output)

    def is_added(self, key: str) -> bool:
        return f".{ATTR}." in f".{key}"

    def trains(self, name: str, param: nn.Parameter, module: nn.Module) -> bool:
        return self.is_added(name)
