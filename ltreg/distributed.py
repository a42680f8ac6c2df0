"""Collectives for losses and parts: an all-gather that keeps gradient, and no-grad helpers.

Losses contrast local anchors against the global batch. ``gather_with_grad`` concatenates over
processes; its backward sums the incoming gradients over processes and returns this process's
slice, so a loss averaged over local anchors, with DDP's gradient averaging, gives exactly the
gradient of the loss over the global batch.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor, nn


def unwrap(model: Any) -> Any:
    """The module inside a DDP / FSDP / Accelerate wrapper (the model itself when unwrapped)."""
    while isinstance(getattr(model, "module", None), nn.Module):
        model = model.module
    return model


def _active() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


class _GatherWithGrad(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: Tensor) -> Tensor:  # type: ignore[override]
        ctx.rank, ctx.n = dist.get_rank(), x.shape[0]
        out = [torch.empty_like(x) for _ in range(dist.get_world_size())]
        dist.all_gather(out, x.contiguous())
        return torch.cat(out)

    @staticmethod
    def backward(ctx, grad: Tensor) -> Tensor:  # type: ignore[override]
        grad = grad.contiguous().clone()
        dist.all_reduce(grad)
        return grad[ctx.rank * ctx.n : (ctx.rank + 1) * ctx.n]


def gather_with_grad(x: Tensor) -> Tensor:
    """Concatenate ``x`` (equal shapes on every process) along dim 0, differentiably."""
    return _GatherWithGrad.apply(x) if _active() else x


@torch.no_grad()
def gather_nograd(x: Tensor) -> Tensor:
    """Concatenate ``x`` along dim 0 over processes, without gradient (queues, statistics)."""
    if not _active():
        return x.detach()
    out = [torch.empty_like(x) for _ in range(dist.get_world_size())]
    dist.all_gather(out, x.detach().contiguous())
    return torch.cat(out)


@torch.no_grad()
def all_reduce_mean(x: Tensor) -> Tensor:
    """The mean of ``x`` over processes (a new tensor)."""
    if not _active():
        return x.detach().clone()
    y = x.detach().clone()
    dist.all_reduce(y)
    return y / dist.get_world_size()


@torch.no_grad()
def all_reduce_sum(x: Tensor) -> Tensor:
    """The sum of ``x`` over processes (a new tensor)."""
    if not _active():
        return x.detach().clone()
    y = x.detach().clone()
    dist.all_reduce(y)
    return y


#: The longest message :func:`share_outcome` carries (bytes of UTF-8).
MAX_OUTCOME_BYTES = 4096


def share_outcome(error: BaseException | None, device: torch.device) -> tuple[int, str] | None:
    """Process 0's outcome of a step only it takes, on every process: None when it succeeded, else its exit
    status and message (UTF-8 bytes broadcast as tensors; no pickle). A collective: every process calls it,
    the others with ``error=None``. Without a process group: this process's own outcome."""
    code = int(getattr(error, "exit_code", 1)) if error is not None else 0
    if not _active():
        return None if error is None else (code, str(error))
    mine = dist.get_rank() == 0 and error is not None
    payload = str(error).encode()[:MAX_OUTCOME_BYTES] if mine else b""
    head = torch.tensor([int(mine), code, len(payload)], dtype=torch.int64, device=device)
    dist.broadcast(head, 0)
    failed, code, n = head.tolist()
    if not failed:
        return None
    buf = (torch.frombuffer(bytearray(payload), dtype=torch.uint8).to(device) if dist.get_rank() == 0
           else torch.empty(n, dtype=torch.uint8, device=device))
    dist.broadcast(buf, 0)
    return code, bytes(buf.cpu().tolist()).decode(errors="replace")


class GlobalBatchNorm(nn.modules.batchnorm._BatchNorm):
    """Batch norm over the global batch on any device (torch's SyncBatchNorm is GPU-only).

    Per-channel sums, then sums of squared deviations, are concatenated over processes with
    :func:`gather_with_grad`, so statistics and their gradients equal one process's on the
    whole batch. Outside distributed training it is plain batch norm.
    """

    def _check_input_dim(self, x: Tensor) -> None:
        if x.dim() < 2:
            raise ValueError(f"expected at least 2-D input, got {x.dim()}-D")

    def forward(self, x: Tensor) -> Tensor:
        if not (self.training and _active()):
            return super().forward(x)
        dims = [0, *range(2, x.dim())]
        shape = [1, -1] + [1] * (x.dim() - 2)
        n = (x.numel() // x.shape[1]) * dist.get_world_size()
        mean = gather_with_grad(x.sum(dims).unsqueeze(0)).sum(0) / n  # two passes: precise variance
        centred = x - mean.view(shape)
        var = gather_with_grad((centred * centred).sum(dims).unsqueeze(0)).sum(0) / n
        if self.track_running_stats and self.running_mean is not None:
            with torch.no_grad():
                m = self.momentum if self.momentum is not None else 0.1
                self.running_mean.lerp_(mean.detach().to(self.running_mean.dtype), m)
                self.running_var.lerp_((var.detach() * n / max(1, n - 1)).to(self.running_var.dtype), m)
                self.num_batches_tracked += 1
        y = centred * torch.rsqrt(var.view(shape) + self.eps)
        if self.affine:
            y = y * self.weight.view(shape) + self.bias.view(shape)
        return y


def convert_batchnorm(module: nn.Module) -> nn.Module:
    """Replace every BatchNorm1d/2d/3d by :class:`GlobalBatchNorm`, keeping parameters and buffers."""
    if isinstance(module, nn.modules.batchnorm._BatchNorm) and not isinstance(module, GlobalBatchNorm):
        new = GlobalBatchNorm(module.num_features, module.eps, module.momentum, module.affine, module.track_running_stats)
        new.load_state_dict(module.state_dict())
        new.train(module.training)
        return new
    for name, child in module.named_children():
        setattr(module, name, convert_batchnorm(child))
    return module
