"""Batch transforms that mix images: ICCL's interpolation of a class-agnostic and a class-aware batch, and the
``--mix`` setting's Mixup and CutMix for methods whose loss is a cross-entropy on hard labels."""

from __future__ import annotations

import dataclasses

import numpy as np
import torch
from torch import Tensor

from ltreg.step import Batch, Extra, Part, StepState

_TAG = 0x1CC1  # separates this stream of random numbers from others keyed on (seed, epoch, step)
_MIX_TAG = 0x313A  # the stream of --mix (one lam and one box per step)


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


def _batch_rng(seed: int, epoch: int, step: int) -> np.random.Generator:
    """The random numbers of one step of ``--mix``: a pure function of (seed, epoch, step), the same on every
    process and after a resume."""
    return np.random.default_rng([_MIX_TAG, int(seed) % (1 << 64), int(epoch), int(step)])


class _BatchMix(Part):
    """Mixes each image with its partner in the reversed local batch (timm's pairing, ``x.flip(0)``), all views
    alike, with one ``lam ~ Beta(alpha, alpha)`` per step [D: timm's "batch" mode]. Attaches
    ``extra[Extra.MIX_TARGETS]`` (the partners' labels ``[B]``) and ``extra[Extra.MIX_LAM]`` (the weight of the
    image's own label, a 0-dim tensor): a mixable loss (``mixable = True``, the logit losses) then computes
    ``lam L(y) + (1 - lam) L(y_partner)``."""

    kind = ""

    def __init__(self, alpha: float = 1.0) -> None:
        if not alpha > 0:
            raise ValueError(f"{self.kind} alpha must be > 0 (Beta(alpha, alpha)), got {alpha}")
        self.alpha = float(alpha)

    def mix(self, images: Tensor, partner: Tensor, rng: np.random.Generator) -> tuple[Tensor, float]:
        """The mixed images and the share of each image's own label in them."""
        raise NotImplementedError

    def transform_batch(self, batch: Batch, state: StepState) -> Batch:
        x = batch.images
        if not x.is_floating_point():
            raise TypeError(f"{self.kind} mixes float images; got {x.dtype} (apply the view pipelines first)")
        mixed, lam = self.mix(x, x.flip(0), _batch_rng(state.seed, state.epoch, state.step))
        extra = {**batch.extra, Extra.MIX_TARGETS: batch.targets.flip(0),
                 Extra.MIX_LAM: torch.tensor(lam, dtype=torch.float32).to(x.device, non_blocking=True)}
        return dataclasses.replace(batch, images=mixed, extra=extra)


class Mixup(_BatchMix):
    """Mixup (Zhang et al., ICLR 2018, arXiv 1710.09412) [P]: ``lam x + (1 - lam) x_partner``; alpha 1 (lam
    uniform) is the paper's CIFAR setting [P]."""

    kind = "mixup"

    def mix(self, images: Tensor, partner: Tensor, rng: np.random.Generator) -> tuple[Tensor, float]:
        lam = float(rng.beta(self.alpha, self.alpha))
        return torch.lerp(partner, images, lam), lam


class CutMix(_BatchMix):
    """CutMix (Yun et al., ICCV 2019, arXiv 1905.04899) [P]: a box of area ``1 - lam`` of each image (centre
    uniform, sides ``sqrt(1 - lam)`` of the image's, clipped at the border) is replaced by the partner's; lam
    is then the share of the image left, measured after the clipping (as the paper's code and timm's
    ``correct_lam``) [C]. alpha 1 is the paper's default [P]."""

    kind = "cutmix"

    def mix(self, images: Tensor, partner: Tensor, rng: np.random.Generator) -> tuple[Tensor, float]:
        lam = float(rng.beta(self.alpha, self.alpha))
        h, w = images.shape[-2:]
        cut = (1.0 - lam) ** 0.5
        ch, cw = int(h * cut), int(w * cut)
        cy, cx = int(rng.integers(h)), int(rng.integers(w))
        y1, y2 = max(cy - ch // 2, 0), min(cy + ch // 2, h)
        x1, x2 = max(cx - cw // 2, 0), min(cx + cw // 2, w)
        out = images.clone()
        out[..., y1:y2, x1:x2] = partner[..., y1:y2, x1:x2]
        return out, 1.0 - (y2 - y1) * (x2 - x1) / (h * w)
