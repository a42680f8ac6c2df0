"""ICCL's warm-up curriculum: the first ``T_w`` epochs train the uniform branch only."""

from __future__ import annotations

import math

from ltreg import StepState


def warmup_epochs(fraction: float, num_epochs: int) -> int:
    """``T_w = round(fraction * num_epochs)`` (halves round up): 100 of 200 CIFAR epochs, 45 of 90 on iNat."""
    if not 0.0 <= fraction <= 1.0:
        raise ValueError(f"ICCL warmup_fraction must be in [0, 1], got {fraction}")
    return int(math.floor(fraction * int(num_epochs) + 0.5))


def in_warmup(state: StepState, fraction: float) -> bool:
    """Whether the step ``state`` describes (0-based ``state.epoch``) lies in the warm-up epochs."""
    return int(state.epoch) < warmup_epochs(fraction, state.num_epochs)
