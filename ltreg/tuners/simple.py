"""Tuners that add nothing: ``full`` (everything trains), ``linear`` (a frozen backbone), ``bitfit``
(biases only, Ben Zaken et al. 2022) and ``layernorm`` (LayerNorm scales and shifts only)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from torch import nn

from ltreg.errors import TunerError
from ltreg.tuners.base import Tuner, arch_name


@dataclass(frozen=True)
class Full(Tuner):
    """Every backbone parameter trains: end-to-end fine-tuning (or training from scratch), as ltreg always did."""

    name: ClassVar[str] = "full"

    def trains(self, name: str, param: nn.Parameter, module: nn.Module) -> bool:
        return True

    def keeps_eval(self, module: nn.Module) -> bool:
        return False


@dataclass(frozen=True)
class Linear(Tuner):
    """A frozen backbone: only the heads the method trains learn (a linear probe with a linear classifier).

    The whole backbone stays in eval mode (BatchNorm statistics, dropout and drop-path off), so training
    sees the features that evaluation sees.
    """

    name: ClassVar[str] = "linear"

    def trains(self, name: str, param: nn.Parameter, module: nn.Module) -> bool:
        return False

    def keeps_eval(self, module: nn.Module) -> bool:
        return True


@dataclass(frozen=True)
class BitFit(Tuner):
    """Only the backbone's biases train (every parameter named ``*.bias``, norm shifts included)."""

    name: ClassVar[str] = "bitfit"

    def check(self, backbone: nn.Module) -> None:
        if not any(n.endswith(".bias") or n == "bias" for n, _ in backbone.named_parameters()):
            raise TunerError(f"tuner bitfit: the backbone {arch_name(backbone)} has no bias parameters to train; "
                             f"pick --tuner linear or --tuner full")

    def trains(self, name: str, param: nn.Parameter, module: nn.Module) -> bool:
        return name.endswith(".bias") or name == "bias"


_NORMS = (nn.LayerNorm,)


@dataclass(frozen=True)
class LayerNormTuning(Tuner):
    """Only the scales and shifts of the backbone's LayerNorms train (timm's LayerNorm2d included)."""

    name: ClassVar[str] = "layernorm"

    def check(self, backbone: nn.Module) -> None:
        if not any(isinstance(m, _NORMS) and m.weight is not None for m in backbone.modules()):
            raise TunerError(f"tuner layernorm: the backbone {arch_name(backbone)} has no LayerNorm to tune (a CNN "
                             f"with BatchNorm?); pick --tuner bitfit (biases, BatchNorm shifts included), linear or "
                             f"full")

    def trains(self, name: str, param: nn.Parameter, module: nn.Module) -> bool:
        return isinstance(module, _NORMS)
