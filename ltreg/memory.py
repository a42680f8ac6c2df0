"""MoCo-v2 memory: a momentum key encoder plus a labeled FIFO queue (KCL, TSC, CoGloAT, Reb-SupCon, PaCo).

The loop calls ``on_forward`` (key projections, and k-global positives in one batched forward) and
``on_step_end`` (momentum update from the query model, then enqueue of the gathered keys).
"""

from __future__ import annotations

import copy
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ltreg.distributed import unwrap as _unwrap
from ltreg.step import Batch, BuildContext, Extra, Outputs, Part, StepState


class MomentumQueue(nn.Module, Part):
    """Momentum key encoder (copy of backbone + projector, no gradient) and a labeled key queue.

    Buffers: ``queue_z [Q, D]``, ``queue_labels [Q]`` (-1 marks an empty slot), ``ptr`` (next slot).
    The key encoder runs in this module's mode: training mode (the default) uses batch statistics in
    BatchNorm as MoCo does; ``eval()`` uses the running statistics copied from the query model.
    """

    def __init__(self, model: nn.Module, momentum: float = 0.999, queue_size: int = 4096, key_view: int = 1,
                 positive_view: int = 0) -> None:
        super().__init__()
        if not 0.0 <= momentum <= 1.0:
            raise ValueError(f"MomentumQueue momentum must be in [0, 1], got {momentum}")
        if queue_size < 1:
            raise ValueError(f"MomentumQueue queue_size must be >= 1, got {queue_size}")
        model = _unwrap(model)
        self.momentum, self.key_view, self.positive_view = momentum, key_view, positive_view
        self.key_backbone = copy.deepcopy(model.backbone).requires_grad_(False)
        self.key_projector = copy.deepcopy(model.projector).requires_grad_(False)
        self._source = (model,)  # fallback query model when state.model is None; not a submodule
        dim = model.embed_dim
        self.register_buffer("queue_z", torch.zeros(queue_size, dim))
        self.register_buffer("queue_labels", torch.full((queue_size,), -1, dtype=torch.long))
        self.register_buffer("ptr", torch.zeros((), dtype=torch.long))

    @classmethod
    def from_context(cls, ctx: BuildContext, **kwargs: Any) -> MomentumQueue:
        """Copy the run's model into the key encoder."""
        return cls(ctx.model, **kwargs)

    @property
    def queue_size(self) -> int:
        return self.queue_z.shape[0]

    @property
    def valid(self) -> Tensor:
        """``[Q]`` bool: slots holding a key."""
        return self.queue_labels >= 0

    @torch.no_grad()
    def key_encode(self, images: Tensor) -> Tensor:
        """L2-normalised key projections ``[N, D]`` of images ``[N, C, H, W]`` (no gradient)."""
        if self.queue_z.device != images.device:
            self.to(images.device)
        return F.normalize(self.key_projector(self.key_backbone(images)), dim=-1)

    @torch.no_grad()
    def on_forward(self, outputs: Outputs, batch: Batch, state: StepState) -> None:
        """Add ``key_z [B, D]`` (view ``key_view``) and, with k-global positives, ``positives_z [B, k, D]``."""
        if batch.images.dim() != 5 or batch.images.shape[1] <= self.key_view:
            raise ValueError(f"MomentumQueue key_view={self.key_view} needs images [B, V > {self.key_view}, C, H, W]; "
                             f"got {tuple(batch.images.shape)}: declare enough views in the method spec")
        keys = batch.images[:, self.key_view]
        pos = batch.extra.get(Extra.POSITIVES)
        if pos is None:
            outputs.extra[Extra.KEY_Z] = self.key_encode(keys)
            return
        b, k = pos.shape[:2]
        z = self.key_encode(torch.cat([keys, pos[:, :, self.positive_view].flatten(0, 1)]))  # one forward
        outputs.extra[Extra.KEY_Z] = z[:b]
        outputs.extra[Extra.POSITIVES_Z] = z[b:].view(b, k, -1)

    @torch.no_grad()
    def momentum_update(self, model: nn.Module) -> None:
        """k <- m k + (1-m) q for parameters; buffers (BN running statistics) are copied."""
        model = _unwrap(model)
        pairs = ((self.key_backbone, model.backbone), (self.key_projector, model.projector))
        kp = [p for key, _ in pairs for p in key.parameters()]
        qp = [p.detach() for _, q in pairs for p in q.parameters()]
        if len(kp) != len(qp):
            raise RuntimeError("the key encoder and the query model no longer have the same architecture")
        if kp:
            torch._foreach_mul_(kp, self.momentum)
            torch._foreach_add_(kp, qp, alpha=1.0 - self.momentum)
        for (key, q) in pairs:
            for kb, qb in zip(key.buffers(), q.buffers()):
                kb.copy_(qb)

    @torch.no_grad()
    def enqueue(self, z: Tensor, labels: Tensor) -> None:
        """Write keys and labels FIFO at ``ptr`` (wrapping around); keeps the newest Q if more arrive."""
        n, q = z.shape[0], self.queue_size
        start = self.ptr
        if n > q:
            z, labels, start = z[n - q:], labels[n - q:], self.ptr + (n - q)
        slots = (start + torch.arange(z.shape[0], device=self.ptr.device)) % q
        self.queue_z[slots] = z.to(self.queue_z.dtype)
        self.queue_labels[slots] = labels.long()
        self.ptr.copy_((self.ptr + n) % q)

    def on_step_end(self, outputs: Outputs, batch: Batch, state: StepState) -> None:
        """Momentum update from ``state.model``, then enqueue the gathered keys with their labels."""
        self.momentum_update(state.model if state.model is not None else self._source[0])
        if Extra.KEY_Z in outputs.extra:
            self.enqueue(state.gather_nograd(outputs.extra[Extra.KEY_Z]), state.gather_nograd(batch.targets))
