"""Batch transforms that mix images: ICCL's interpolation of a class-agnostic and a class-aware batch."""

from __future__ import annotations

import dataclasses

import numpy as np
import torch
from torch import Tensor

from ltreg.step import Batch, Extra, Part, StepState

_TAG = 0x1CC1  # separates this stream of random numbers from others keyed on (seed, epoch, step)


def global_lambdas(alpha: float, n: int, seed: int, epoch: int, step: int) -> Tensor:
    """``n`` draws of Beta(alpha, alpha), a pure function of (seed, epoch, step): same on every process."""
    rng = np.random.default_rng([_TAG, int(seed) % (1 << 64), int(epoch), int(step)])
    lam = rng.uniform(size=n) if alpha == 1.0 else rng.beta(alpha, alpha, size=n)
    return torch.from_numpy(lam.astype(np.float32))


class PairMixup(Part):
    """ICCL (§4.5): x^I = lam x^a + (1 - lam) x^b with lam ~ Beta(alpha, alpha) per sample.

    Reads ``extra["pair_images"]`` (the class-aware stream, ``[B, V, C, H, W]``) and
    ``extra["targets_b"]``; returns images ``[B, 2V, ...]`` = (x^a views, x^I views) and
    ``extra["lam"] [B]``. lam is drawn for the global batch and sliced by rank, so the split of a
    global batch over processes does not change it. ``pair_images`` is dropped once mixed.
    """

    def __init__(self, alpha: float = 1.0) -> None:
        if not alpha > 0:
            raise ValueError(f"pair-mixup alpha must be > 0 (Beta(alpha, alpha)), got {alpha}")
        self.alpha = float(alpha)

    def lambdas(self, batch_size: int, state: StepState) -> Tensor:
        """This process's slice ``[B]`` of the global batch's lambdas."""
        lam = global_lambdas(self.alpha, batch_size * state.world_size, state.seed,
                             state.epoch, state.step)
        return lam[state.rank * batch_size:(state.rank + 1) * batch_size]

    def transform_batch(self, batch: Batch, state: StepState) -> Batch:
        if Extra.PAIR_IMAGES not in batch.extra or Extra.TARGETS_B not in batch.extra:
            raise KeyError("pair-mixup needs extra['pair_images'] and extra['targets_b']: "
                           "use the 'paired' sampler (ViewDataset role='pair') with this transform")
        xa, xb = batch.images, batch.extra[Extra.PAIR_IMAGES]
        if xa.shape != xb.shape:
            raise ValueError(f"pair-mixup: images {tuple(xa.shape)} and pair_images {tuple(xb.shape)} differ")
        if not xa.is_floating_point():
            raise TypeError(f"pair-mixup mixes float images; got {xa.dtype} (apply the view pipelines first)")
        lam = self.lambdas(xa.shape[0], state).to(xa.device, non_blocking=True)
        w = lam.to(xa.dtype).view(-1, *([1] * (xa.dim() - 1)))
        mixed = torch.lerp(xb, xa, w)  # = lam * xa + (1 - lam) * xb
        extra = {k: v for k, v in batch.extra.items() if k != Extra.PAIR_IMAGES}
        extra[Extra.LAM] = lam
        return dataclasses.replace(batch, images=torch.cat([xa, mixed], dim=1), extra=extra)
