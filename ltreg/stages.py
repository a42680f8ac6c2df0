"""Each stage's set-up, beside the loop that runs it: the step module, loader, optimizer and schedule.

Stage 1 trains the method's loss and sampler over every trainable model and part parameter; stage 2
(when the method declares ``stage2=Stage(...)`` of the core's kind ``rebalance``) trains what the rebalancer's ``setup`` leaves trainable, with
its own sampler, views and loss. Both go through ``accelerator.prepare`` (DDP / FSDP as configured).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader

import ltreg.distributed as D
from ltreg.budget import scale_count
from ltreg.data.views import ViewDataset, apply_augment, collate
from ltreg.errors import ConfigError
from ltreg.method import PartRef, StageKind, build_part
from ltreg.optim import (
    OptimSettings,
    build_optimizer,
    param_groups,
    split_decay,
    stage1_schedule,
    stage2_schedule,
)
from ltreg.run import Run, loader_workers
from ltreg.step import Batch, LossOutput, Outputs, Part, StepState


class StepModule(nn.Module):
    """The model and one stage's trainable parts as one module: one forward is one step's loss.

    Accelerate wraps it (DDP, FSDP, DeepSpeed as configured), so every parameter a stage trains --
    backbone, heads, learnable prototypes, parameters of a loss -- is synchronised by the same
    wrapper, whichever part's code reads it inside the loss.
    """

    def __init__(self, model: nn.Module, parts: dict[str, nn.Module], loss: Callable[..., LossOutput],
                 hooks: list[Part], query_views: list[int] | None) -> None:
        super().__init__()
        self.model, self.parts = model, nn.ModuleDict(parts)
        self._step = (loss, hooks, query_views)  # a tuple: not registered as submodules twice

    def forward(self, batch: Batch, state: StepState) -> tuple[LossOutput, Outputs]:
        loss, hooks, query = self._step
        outputs = self.model(batch.images if query is None else batch.images[:, query])
        for h in hooks:
            h.on_forward(outputs, batch, state)
        return loss(outputs, batch, state), outputs


@dataclass
class StageSetup:
    """One stage's loop inputs: the prepared step module, loader, optimizer and schedule, hooks and budget."""

    stage: int
    epochs: int
    steps_per_epoch: int
    module: Any
    loader: Any
    optimizer: torch.optim.Optimizer
    scheduler: Any
    hooks: list[Part]


def make_loader(run: Run, views: Iterable[str], sampler: Any, batch_size: int, epochs: int) -> DataLoader:
    """A loader of the training set's ``views`` in ``sampler`` order; its dataset and sampler stay reachable.

    Workers persist across epochs (the view dataset's epoch lives in shared memory), memory is pinned
    for CUDA, and each worker prefetches batches ahead.
    """
    vds = ViewDataset(run.train_set, apply_augment(tuple(views), run.cfg.augment),
                      role=getattr(sampler, "extra_role", None), positive_views=run.config.spec.views.positives,
                      seed=run.cfg.seed, num_epochs=epochs)
    if len(sampler) < batch_size:
        raise ConfigError(f"an epoch of the {type(sampler).__name__} has {len(sampler)} samples, fewer than one batch "
                          f"of {batch_size}; lower batch_size")
    workers = loader_workers(run.cfg, run.accelerator)
    loader = DataLoader(vds, batch_size=batch_size, sampler=sampler, collate_fn=collate, num_workers=workers,
                        drop_last=True, persistent_workers=workers > 0, prefetch_factor=4 if workers else None,
                        pin_memory=run.accelerator.device.type == "cuda")
    loader.view_dataset, loader.ltreg_sampler = vds, sampler  # type: ignore[attr-defined]
    return loader


def _prepare(run: Run, module: StepModule, loader: DataLoader, optimizer: torch.optim.Optimizer,
             factor: Callable[[int], float]) -> tuple:
    vds, sampler = loader.view_dataset, loader.ltreg_sampler  # type: ignore[attr-defined]
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
    module, loader, optimizer, scheduler = run.accelerator.prepare(module, loader, optimizer, scheduler)
    loader.view_dataset, loader.ltreg_sampler = vds, sampler
    return module, loader, optimizer, scheduler


def freeze_unused_heads(run: Run) -> None:
    """Freeze the model heads stage 1 does not train (``ModelSpec.train_heads``): their parameters get no
    gradient, as on one process, and DDP needs no search for unused parameters."""
    for head in ("projector", "classifier"):
        if head not in run.config.spec.model_for(run.config.hparams).train_heads:
            getattr(run.model, head).requires_grad_(False)


def stage1_setup(run: Run) -> StageSetup:
    """Stage 1: the method's loss and sampler over all trainable model and part parameters."""
    cfg, spec, acc = run.cfg, run.config.spec, run.accelerator
    run.model.to(acc.device)
    for mod in run.parts.modules().values():
        mod.to(acc.device)
    freeze_unused_heads(run)
    trainable = {k: m for k, m in run.parts.modules().items() if any(p.requires_grad for p in m.parameters())}
    query = list(spec.views.query) if spec.views.query is not None else None
    module = StepModule(run.model, trainable, run.parts.loss, run.parts.hooks(), query)
    params = [p for p in module.parameters() if p.requires_grad]
    run.counts = (sum(p.numel() for p in params), sum(p.numel() for p in module.parameters()))
    loader = make_loader(run, spec.views_for(run.config.hparams), run.parts.sampler, cfg.batch_size, cfg.epochs)
    settings = OptimSettings.stage1(cfg)
    optimizer = build_optimizer(param_groups(run.model, params, settings), settings)
    steps = min(cfg.max_steps_per_epoch or 10**12, len(loader))
    factor = stage1_schedule(cfg, cfg.epochs * steps, steps)
    module, loader, optimizer, scheduler = _prepare(run, module, loader, optimizer, factor)
    run.state.class_counts = run.state.class_counts.to(acc.device)
    return StageSetup(1, cfg.epochs, steps, module, loader, optimizer, scheduler, run.parts.hooks())


def tuner_bounds(run: Run, groups: list[Any]) -> list[Any]:
    """Stage 2's groups without the backbone parameters the tuner froze: a rebalancer that fine-tunes the
    backbone (KD with ``freeze_backbone=False``) trains what the tuner lets train, nothing more."""
    backbone = D.unwrap(run.model).backbone
    modules = dict(backbone.named_modules())
    frozen = set()
    for name, param in backbone.named_parameters():
        owner = modules[name.rsplit(".", 1)[0]] if "." in name else backbone
        if not run.tuner.trains(name, param, owner):
            param.requires_grad_(False)
            frozen.add(id(param))
    if not frozen:
        return groups
    if groups and isinstance(groups[0], dict):
        kept = [{**g, "params": [p for p in g["params"] if id(p) not in frozen]} for g in groups]
        return [g for g in kept if g["params"]]
    return [p for p in groups if id(p) not in frozen]


def stage2_setup(run: Run) -> StageSetup | None:
    """Stage 2: the rebalancer's trainable groups, sampler, views and loss (its ``setup`` freezes the rest);
    None for a post-hoc rebalancer (no epochs)."""
    reb, cfg = run.parts.rebalancer, run.cfg
    groups = tuner_bounds(run, reb.setup(run.model))
    declared = run.config.spec.stage2_epochs(run.config.hparams)  # None: the rebalancer's default
    epochs = cfg.stage2_epochs if cfg.stage2_epochs is not None else declared if declared is not None else reb.epochs
    epochs = scale_count(epochs, cfg.budget_fraction)
    if epochs <= 0:
        return None
    lr = cfg.stage2_lr or reb.lr or cfg.lr
    if groups and isinstance(groups[0], dict):
        groups = [{"params": g["params"], "lr": lr * g.get("lr_scale", 1.0)} for g in groups]
    settings = OptimSettings.stage2(cfg, lr)
    optimizer = build_optimizer(split_decay(groups, settings), settings)
    sampler = build_part("sampler", PartRef(reb.sampler, **getattr(reb, "sampler_kwargs", {})), run.config.hparams,
                         run.ctx)
    loader = make_loader(run, reb.views, sampler, cfg.stage2_batch_size or cfg.batch_size, epochs)
    steps = min(cfg.max_steps_per_epoch or 10**12, len(loader))
    trainable = {"rebalancer": reb} if any(p.requires_grad for p in reb.parameters()) else {}
    module = StepModule(run.model, trainable, reb.loss, [], None)
    module, loader, optimizer, scheduler = _prepare(run, module, loader, optimizer, stage2_schedule(epochs * steps, steps))
    return StageSetup(2, epochs, steps, module, loader, optimizer, scheduler, [])


def finish_stage2(run: Run) -> dict[str, Any]:
    """The rebalancer's post-hoc step after its epochs (tau-norm, NCM, LA, LWS folding): what it chose."""
    return run.parts.rebalancer.finalize(run.model, run.ctx) or {}


#: The core's stage kind ``rebalance`` (entry point ``ltreg.stages``): train the declared rebalancer, then finalize it.
REBALANCE_STAGE = StageKind(stage2_setup, finish_stage2, help="train the rebalancer's heads, then its post-hoc step")
