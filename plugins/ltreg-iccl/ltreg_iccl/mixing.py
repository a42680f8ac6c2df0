"""The core's pair-mixup, switched off during ICCL's warm-up (registered as ``iccl-pair-mixup``).

During the warm-up only the uniform branch is trained (Tiong et al. 2021, §3.4), so mixing there
would double the forward pass for nothing and put interpolated images into the uniform branch's
BatchNorm batch statistics. Before ``T_w`` this transform returns the class-agnostic batch as it is
(images ``[B, V, ...]``, ``pair_images`` dropped, no ``lam``); from ``T_w`` on it is
:class:`ltreg.mixing.PairMixup` unchanged (images ``[B, 2V, ...]`` = (x^a, x^I), ``extra["lam"]``).
"""

from __future__ import annotations

import dataclasses

from ltreg import Batch, PairMixup, StepState
from ltreg_iccl.schedule import in_warmup


class WarmupPairMixup(PairMixup):
    """``pair-mixup`` that passes batches through unmixed while ``state.epoch < T_w``.

    ``mix_during_warmup=True`` mixes from the first step (the loss then ignores the interpolative
    branch until ``T_w``): the behaviour of the core ``pair-mixup``.
    """

    def __init__(self, alpha: float = 1.0, warmup_fraction: float = 0.5, mix_during_warmup: bool = False) -> None:
        super().__init__(alpha)
        if not 0.0 <= warmup_fraction <= 1.0:
            raise ValueError(f"ICCL warmup_fraction must be in [0, 1], got {warmup_fraction}")
        self.warmup_fraction, self.mix_during_warmup = float(warmup_fraction), bool(mix_during_warmup)

    def transform_batch(self, batch: Batch, state: StepState) -> Batch:
        if not self.mix_during_warmup and in_warmup(state, self.warmup_fraction):
            return dataclasses.replace(batch, extra={k: v for k, v in batch.extra.items() if k != "pair_images"})
        return super().transform_batch(batch, state)
