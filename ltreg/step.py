"""The step contract: what the one trainer hands to a loss and to every part's hooks.

A training step is ``batch -> model -> Outputs -> loss(outputs, batch, state) -> LossOutput``.
Everything a method needs beyond that (a key encoder, a queue, prototypes, class counts,
the distributed gather) reaches it through :class:`StepState`, never through a fork of the loop.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor


class Extra:
    """Names of the tensors that samplers, batch transforms and parts attach to ``Batch.extra`` /
    ``Outputs.extra``: one constant per key instead of a bare string in each producer and consumer."""

    PAIR_IMAGES = "pair_images"  # Batch: the paired sampler's second image, [B, V, C, H, W]
    PAIR_INDEX = "pair_index"  # Batch: its index, [B]
    TARGETS_B = "targets_b"  # Batch: its label, [B]
    LAM = "lam"  # Batch: pair-mixup weights of the first image, [B]
    MIX_TARGETS = "mix_targets"  # Batch: --mix partners' labels, [B]
    MIX_LAM = "mix_lam"  # Batch: --mix share of each image's own label, 0-dim
    POSITIVES = "positives"  # Batch: k-global positives, [B, k, V', C, H, W]
    POSITIVE_INDEX = "positive_index"  # Batch: their indices, [B, k]
    KEY_Z = "key_z"  # Outputs: momentum-encoder key projections, [B, D]
    POSITIVES_Z = "positives_z"  # Outputs: key projections of the k-global positives, [B, k, D]


@dataclass
class Batch:
    """One local mini-batch.

    ``images`` is ``[B, V, C, H, W]`` (V views per image, per the method's view pipelines);
    ``extra`` carries what a sampler or batch transform attached, under the names of :class:`Extra`.
    """

    images: Tensor
    targets: Tensor
    index: Tensor
    extra: dict[str, Tensor] = field(default_factory=dict)

    def to(self, device: torch.device | str, non_blocking: bool = False) -> Batch:
        return Batch(
            self.images.to(device, non_blocking=non_blocking),
            self.targets.to(device, non_blocking=non_blocking),
            self.index.to(device, non_blocking=non_blocking),
            {k: v.to(device, non_blocking=non_blocking) for k, v in self.extra.items()},
        )

    def __len__(self) -> int:
        return self.targets.shape[0]


@dataclass
class Outputs:
    """Model outputs for every view: ``z`` is L2-normalised ``[B, V, D]``, ``logits`` ``[B, V, C]``,
    ``features`` the backbone's pooled features ``[B, V, F]``. Parts may add tensors to ``extra``
    (the momentum memory puts its key projections there)."""

    z: Tensor
    logits: Tensor
    features: Tensor
    extra: dict[str, Tensor] = field(default_factory=dict)


@dataclass
class LossOutput:
    """``total`` is what is back-propagated; ``parts`` are detached scalars for logging."""

    total: Tensor
    parts: dict[str, Tensor] = field(default_factory=dict)


def flatten_views(x: Tensor, labels: Tensor) -> tuple[Tensor, Tensor]:
    """Per-view ``[B, V, ...]`` rows as ``[B*V, ...]`` (sample-major, as the contrast set orders them) and their labels."""
    return x.flatten(0, 1), labels.repeat_interleave(x.shape[1])


def _identity(x: Tensor) -> Tensor:
    return x


@dataclass
class StepState:
    """What a loss may read besides outputs and batch.

    ``gather`` concatenates a tensor over processes along dim 0 *with* gradient (identity on one
    process); ``gather_nograd`` does the same without it (queues, statistics);
    ``all_reduce_mean`` averages a tensor over processes. ``seed`` is the run's one seed (parts
    that draw random numbers derive their generators from it and ``global_step``).
    """

    class_counts: Tensor
    num_classes: int
    seed: int = 0
    epoch: int = 0
    step: int = 0
    num_epochs: int = 1
    steps_per_epoch: int = 1
    model: Any = None
    prototypes: Any = None
    memory: Any = None
    world_size: int = 1
    rank: int = 0
    gather: Callable[[Tensor], Tensor] = _identity
    gather_nograd: Callable[[Tensor], Tensor] = _identity
    all_reduce_mean: Callable[[Tensor], Tensor] = _identity

    @property
    def global_step(self) -> int:
        """Steps of the current stage done before this one: ``epoch * steps_per_epoch + step``."""
        return self.epoch * self.steps_per_epoch + self.step

    @property
    def prior(self) -> Tensor:
        """Class prior pi_c = n_c / N of the training set."""
        return self.class_counts / self.class_counts.sum()

    @property
    def progress(self) -> float:
        """Fraction of stage-1 training done, in [0, 1]."""
        total = max(1, self.num_epochs * self.steps_per_epoch)
        return min(1.0, self.global_step / total)


class Part:
    """Base for every declared part (sampler aside): optional hooks the trainer calls.

    A part that holds learnable tensors is an ``nn.Module`` too; the trainer puts its
    parameters in the optimizer and its buffers in checkpoints.
    """

    def on_train_start(self, state: StepState) -> None:  # noqa: B027 - optional hook
        """Called once before the first epoch (after resume)."""

    def on_epoch_start(self, state: StepState) -> None:  # noqa: B027
        """Called at the start of every epoch."""

    def transform_batch(self, batch: Batch, state: StepState) -> Batch:
        """Called on every batch before the forward (mixing, pairing); returns the batch to use."""
        return batch

    def on_forward(self, outputs: Outputs, batch: Batch, state: StepState) -> None:  # noqa: B027
        """Called after the model's forward, before the loss (may add to ``outputs.extra``)."""

    def on_step_end(self, outputs: Outputs, batch: Batch, state: StepState) -> None:  # noqa: B027
        """Called after the optimizer step (EMA updates, enqueue, momentum update)."""


@dataclass
class BuildContext:
    """What a part's ``from_context(ctx, **kwargs)`` may use when a run builds it.

    ``embed(indices, pipeline, use_key, slot)`` returns normalised projections ``[n, D]`` of training
    images under one view pipeline, without gradient and in eval mode (key encoder when ``use_key``
    and a memory exists), batched, independent of the order and grouping of ``indices`` and identical
    on every process; ``slot`` picks the augmentation draw (two slots: two different views). ``features(split)`` returns backbone features
    and labels of ``"train"`` or ``"holdout"`` (a split held out of the training data, or the
    data set's own validation split) for post-hoc rebalancers.
    """

    targets: Tensor
    num_classes: int
    seed: int
    model: Any
    train_set: Any
    hparams: Any
    num_epochs: int = 1
    embed: Callable[..., Tensor] | None = None
    features: Callable[[str], tuple[Tensor, Tensor]] | None = None
    memory: Any = None

    @property
    def class_counts(self) -> Tensor:
        return torch.bincount(self.targets, minlength=self.num_classes)

    @property
    def embed_dim(self) -> int:
        return self.model.embed_dim

    @property
    def feature_dim(self) -> int:
        return self.model.num_features
