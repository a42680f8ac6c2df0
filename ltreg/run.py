"""The run builder: everything a run needs, constructed once, in one readable order.

``build_run(RunConfig) -> Run``: accelerator -> data (and the held-out split a rebalancer
declares) -> the run folder check -> model (initial weights, then the tuner) -> step state, data passes, build context -> the
method's parts -> checkpoints. Nothing here trains: :mod:`ltreg.loop` runs what this builds, and
:func:`stage_setup` gives the loop each stage's loader, optimizer and schedule.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from accelerate import Accelerator, DataLoaderConfiguration
from accelerate.utils import DistributedDataParallelKwargs, set_seed
from torch import nn
from torch.utils.data import DataLoader

import ltreg.distributed as D
from ltreg.budget import scale_count
from ltreg.card import DatasetRecord, RunCard
from ltreg.checkpoint import Checkpoints, guard_run_folder
from ltreg.config import RunConfig, TrainConfig, resolve_tuner
from ltreg.data.build import build_data
from ltreg.data.lt import LTData, LTDataset
from ltreg.data.views import ViewDataset, collate
from ltreg.errors import LtregError
from ltreg.evaluate import DataPasses
from ltreg.method import ConfigError, PartRef, build_part
from ltreg.models.backbones import load_initial_weights, resolve_arch
from ltreg.models.ltmodel import LTModel, LTModelConfig
from ltreg.optim import (
    OptimSettings,
    build_optimizer,
    param_groups,
    split_decay,
    stage1_schedule,
    stage2_schedule,
)
from ltreg.registry import registry
from ltreg.runlog import check_tracker
from ltreg.step import Batch, BuildContext, LossOutput, Outputs, Part, StepState
from ltreg.tuners import TunedParams, Tuner


class TrainingError(LtregError, RuntimeError):
    """A run that cannot go on; the message says what was kept and what to do."""


@dataclass
class Parts:
    """The method's declared parts, built for this run (``None``: the method declares none)."""

    loss: Any
    sampler: Any
    memory: Any = None
    prototypes: Any = None
    batch_transform: Any = None
    rebalancer: Any = None

    def hooks(self) -> list[Part]:
        """Parts whose hooks the loop calls, in a fixed order."""
        return [p for p in (self.memory, self.prototypes, self.batch_transform) if isinstance(p, Part)]

    def modules(self) -> dict[str, nn.Module]:
        """Parts holding tensors (parameters or buffers), by role: the optimizer and checkpoints need them."""
        named = {"memory": self.memory, "prototypes": self.prototypes, "batch_transform": self.batch_transform,
                 "loss": self.loss}
        return {k: v for k, v in named.items() if isinstance(v, nn.Module)}


@dataclass
class Run:
    """One run, built: configuration, accelerator, data, model, parts, state and checkpoints."""

    config: RunConfig
    accelerator: Accelerator
    data: LTData
    train_set: LTDataset
    holdout: LTDataset | None
    model: LTModel
    parts: Parts
    state: StepState
    ctx: BuildContext
    passes: DataPasses
    checkpoints: Checkpoints
    tuner: Tuner
    tuned: TunedParams
    #: Trainable and total parameters of stage 1 (model and trainable parts), set by :func:`stage1_setup`.
    counts: tuple[int, int] = (0, 0)

    @property
    def cfg(self) -> TrainConfig:
        return self.config.cfg

    @property
    def run_dir(self) -> Path:
        return self.cfg.run_dir

    def stateful(self) -> dict[str, nn.Module]:
        """What a checkpoint saves besides the optimizer: the model and every part with tensors."""
        return {"model": self.model, **self.parts.modules()}


def carve_holdout(train: LTDataset, fraction: float, seed: int) -> tuple[LTDataset, LTDataset]:
    """Split ``fraction`` of every class with >= 2 images off the training set (for stage-2 tuning)."""
    g = torch.Generator().manual_seed(seed + 7)
    perm = torch.randperm(len(train), generator=g)
    targets = train.targets[perm]
    order = torch.argsort(targets, stable=True)
    perm, targets = perm[order], targets[order]
    counts = torch.bincount(targets, minlength=train.num_classes)
    starts = torch.cumsum(counts, 0) - counts
    rank = torch.arange(len(train)) - starts[targets]
    take = torch.where(counts >= 2, (counts.double() * fraction).floor().clamp(min=1).long(), 0)
    held = rank < take[targets]
    return (train.subset(perm[~held].sort().values.numpy()),
            train.subset(perm[held].sort().values.numpy(), name=f"{train.name}-holdout"))


def preflight_output(run_dir: Path, min_free_mb: int = 50) -> None:
    """Fail before training when the run folder cannot be written or the disk is (nearly) full."""
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        probe = run_dir / ".write-probe"
        probe.write_bytes(b"0" * 1024)
        probe.unlink()
    except OSError as exc:
        raise TrainingError(
            f"cannot write to the run folder {run_dir} ({exc.strerror or exc}); pass --output-dir to a writable folder"
        ) from exc
    free_mb = shutil.disk_usage(run_dir).free / 2**20
    if free_mb < min_free_mb:
        raise TrainingError(
            f"only {free_mb:.0f} MB free on the disk of {run_dir}; checkpoints need more. Free space or pass --output-dir"
        )


def _needs_holdout(ref: PartRef | None) -> bool:
    """Whether the declared rebalancer tunes on held-out training data (its class says so)."""
    return ref is not None and bool(getattr(registry("rebalancers").get(ref.name), "needs_holdout", False))


def model_config(rc: RunConfig, train: LTDataset) -> LTModelConfig:
    """The LTModel the method's spec and the data ask for."""
    m = rc.spec.model_for(rc.hparams)  # model fields may be hp(...) references (e.g. a recipe's projection size)
    arch, source_args = resolve_arch(rc.cfg.backbone or "resnet8")  # a tag / hf-hub: / folder -> its architecture
    return LTModelConfig(backbone=arch, backbone_kwargs=source_args, num_classes=train.num_classes, in_chans=train.channels,
                         classifier=m.classifier, cosine_scale=m.cosine_scale, proj_dim=m.proj_dim,
                         proj_hidden=m.proj_hidden, proj_bn=m.proj_bn)


def make_accelerator(cfg: TrainConfig) -> Accelerator:
    """Accelerate for this run. Several processes on a machine without CUDA run on CPU (gloo) without
    ``--cpu``; DDP is told that every trainable parameter gets a gradient each step (heads a stage does not
    train are frozen, see :func:`freeze_unused_heads`), so it never searches for unused ones."""
    several = int(os.environ.get("WORLD_SIZE", "1")) > 1
    return Accelerator(cpu=cfg.cpu or (several and not torch.cuda.is_available()), mixed_precision=cfg.mixed_precision,
                       gradient_accumulation_steps=cfg.grad_accum, log_with=cfg.log_with,
                       dataloader_config=DataLoaderConfiguration(split_batches=True), project_dir=str(cfg.run_dir),
                       kwargs_handlers=[DistributedDataParallelKwargs(find_unused_parameters=False)])


def sync_batchnorm(model: nn.Module, device: torch.device) -> nn.Module:
    """Batch statistics over the global batch: torch's SyncBatchNorm on CUDA, :class:`GlobalBatchNorm` on CPU."""
    if device.type == "cuda":
        return nn.SyncBatchNorm.convert_sync_batchnorm(model)
    return D.convert_batchnorm(model)


def build_run(rc: RunConfig) -> Run:
    """Construct everything for ``rc``; nothing is written before the data, model and parts are built."""
    cfg, spec, hparams = rc.cfg, rc.spec, rc.hparams
    check_tracker(cfg.log_with)
    acc = make_accelerator(cfg)
    if cfg.batch_size % acc.num_processes:
        raise ConfigError(f"batch_size {cfg.batch_size} is the global batch and must split evenly over "
                          f"{acc.num_processes} processes; use a multiple of {acc.num_processes}")
    set_seed(cfg.seed)
    data = build_data(cfg.data_args())
    train_set, holdout = data.train, data.val
    if _needs_holdout(spec.rebalance) and holdout is None:  # before any part indexes the training set
        train_set, holdout = carve_holdout(train_set, cfg.holdout_fraction, cfg.seed)
    model = LTModel(model_config(rc, train_set))
    load_initial_weights(model, cfg.backbone, cfg.pretrained, cfg.init_from, say=acc.print)
    tuner = resolve_tuner(spec, cfg, hparams)
    tuned = tuner.apply(model.backbone)  # before any part copies the model and before the optimizer is built
    if tuner.structural:
        model.config.tuner = tuner.to_dict()
    if acc.num_processes > 1 and cfg.sync_bn:  # batch statistics of the global batch, as on one process
        model = sync_batchnorm(model, acc.device)
    if cfg.channels_last:
        model = model.to(memory_format=torch.channels_last)
        model.memory_format = torch.channels_last
    if cfg.compile:
        model.backbone.compile()
    state = StepState(class_counts=train_set.class_counts.float(), num_classes=train_set.num_classes, seed=cfg.seed,
                      num_epochs=cfg.epochs, world_size=acc.num_processes, rank=acc.process_index,
                      gather=D.gather_with_grad, gather_nograd=D.gather_nograd, all_reduce_mean=D.all_reduce_mean)
    passes = DataPasses(model, acc.device, cfg.eval_batch_size, cfg.seed, accelerator=acc,
                        num_workers=loader_workers(cfg, acc))
    splits = {"train": train_set, "holdout": holdout}

    def features(split: str) -> tuple[torch.Tensor, torch.Tensor]:
        if splits.get(split) is None:
            raise TrainingError(f"no {split} split: the rebalancer must declare needs_holdout")
        out = passes.extract(splits[split])
        return out.features, out.targets

    ctx = BuildContext(targets=train_set.targets, num_classes=train_set.num_classes, seed=cfg.seed, model=model,
                       train_set=train_set, hparams=hparams, num_epochs=cfg.epochs, features=features,
                       embed=lambda idx, pipeline="none", use_key=True, slot=0: passes.embed(
                           train_set, idx, pipeline, use_key, slot))
    built: dict[str, Any] = {}
    for role in ("memory", "prototypes", "batch_transform"):
        ref = getattr(spec, role)
        if ref is not None:
            built[role] = build_part(role, ref, hparams, ctx)
            if role == "memory":
                ctx.memory = passes.memory = built[role]
    parts = Parts(loss=build_part("loss", spec.loss, hparams, ctx), sampler=build_part("sampler", spec.sampler, hparams, ctx),
                  rebalancer=build_part("rebalance", spec.rebalance, hparams, ctx) if spec.rebalance else None, **built)
    state.prototypes, state.memory, state.model = parts.prototypes, parts.memory, model
    if cfg.resume and cfg.overwrite:
        raise ConfigError("--resume continues a run and --overwrite starts it over: pass one of them")
    guard_run_folder(cfg.run_dir, cfg.resume, cfg.overwrite, delete=acc.is_main_process)
    acc.wait_for_everyone()
    if acc.is_main_process:
        preflight_output(cfg.run_dir, cfg.min_free_mb)
    return Run(rc, acc, data, train_set, holdout, model, parts, state, ctx, passes, Checkpoints(cfg.run_dir, acc),
               tuner, tuned)


def run_card(run: Run, metrics: dict[str, Any]) -> RunCard:
    """What ``config.json``, the model card and ``ltreg eval`` record about this run."""
    train, cfg, spec = run.data.train, run.cfg, run.config.spec
    args = cfg.data_args()
    hub_id = args.root if args.root and args.root.count("/") == 1 and not Path(args.root).exists() else None
    dataset = DatasetRecord(name=cfg.dataset, test_name=run.data.test.name, class_counts=train.class_counts.tolist(),
                            class_names=list(train.class_names), many_thr=train.many_thr, few_thr=train.few_thr,
                            image_size=train.image_size, mean=list(train.mean), std=list(train.std),
                            info=dict(train.info), builder_args=args.to_dict(), hub_id=hub_id)
    tuner = {**run.tuner.to_dict(), "backbone_trainable": run.tuned.trainable, "backbone_total": run.tuned.total,
             "trainable": run.counts[0], "total": run.counts[1], "structural": run.tuner.structural,
             "mergeable": run.tuner.mergeable, "base": base_weights(cfg)}
    return RunCard(method=spec.name, citation=spec.citation, bibtex=spec.bibtex, hparams=run.config.hparams.to_dict(),
                   recipe=cfg.recipe_items(), dataset=dataset, license=cfg.license,
                   metrics={k: v for k, v in metrics.items() if k != "per_class"}, per_class=metrics.get("per_class"),
                   tuner=tuner)


def base_weights(cfg: TrainConfig) -> str | None:
    """Where timm fetches the run's initial backbone weights from (a tag or ``hf-hub:org/name``), or None
    (random weights, a local folder, ``--init-from``): the base an adapter-only export names."""
    from ltreg.models.backbones import parse_backbone

    if cfg.init_from is not None or not cfg.pretrained or not cfg.backbone:
        return None
    kind, ref = parse_backbone(cfg.backbone)
    return ref if kind in ("hub", "tag", "arch") else None


# -- what each stage trains with -------------------------------------------------------------------
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


def loader_workers(cfg: TrainConfig, acc: Accelerator) -> int:
    """``--num-workers``, or from the CPUs this process may use: on CUDA all but one (at most 8) decode and
    augment while the GPU trains; on CPU none, since the model's own threads already use every core."""
    if cfg.num_workers is not None:
        return cfg.num_workers
    if acc.device.type != "cuda":
        return 0
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(1, min(8, cpus // acc.num_processes - 1))


def make_loader(run: Run, views: Iterable[str], sampler: Any, batch_size: int) -> DataLoader:
    """A loader of the training set's ``views`` in ``sampler`` order; its dataset and sampler stay reachable.

    Workers persist across epochs (the view dataset's epoch lives in shared memory), memory is pinned
    for CUDA, and each worker prefetches batches ahead.
    """
    vds = ViewDataset(run.train_set, tuple(views), role=getattr(sampler, "extra_role", None),
                      positive_views=run.config.spec.positive_views, seed=run.cfg.seed)
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
    query = list(spec.query_views) if spec.query_views is not None else None
    module = StepModule(run.model, trainable, run.parts.loss, run.parts.hooks(), query)
    params = [p for p in module.parameters() if p.requires_grad]
    run.counts = (sum(p.numel() for p in params), sum(p.numel() for p in module.parameters()))
    loader = make_loader(run, spec.views_for(run.config.hparams), run.parts.sampler, cfg.batch_size)
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
    epochs = scale_count(cfg.stage2_epochs if cfg.stage2_epochs is not None else reb.epochs, cfg.budget_fraction)
    if epochs <= 0:
        return None
    lr = cfg.stage2_lr or reb.lr or cfg.lr
    if groups and isinstance(groups[0], dict):
        groups = [{"params": g["params"], "lr": lr * g.get("lr_scale", 1.0)} for g in groups]
    settings = OptimSettings.stage2(cfg, lr)
    optimizer = build_optimizer(split_decay(groups, settings), settings)
    sampler = build_part("sampler", PartRef(reb.sampler, **getattr(reb, "sampler_kwargs", {})), run.config.hparams,
                         run.ctx)
    loader = make_loader(run, reb.views, sampler, cfg.stage2_batch_size or cfg.batch_size)
    steps = min(cfg.max_steps_per_epoch or 10**12, len(loader))
    trainable = {"rebalancer": reb} if any(p.requires_grad for p in reb.parameters()) else {}
    module = StepModule(run.model, trainable, reb.loss, [], None)
    module, loader, optimizer, scheduler = _prepare(run, module, loader, optimizer, stage2_schedule(epochs * steps, steps))
    return StageSetup(2, epochs, steps, module, loader, optimizer, scheduler, [])
