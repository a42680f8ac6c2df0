"""The run builder: everything a run needs, constructed once, in one readable order.

``build_run(RunConfig) -> Run``: accelerator -> data (and the held-out split a rebalancer
declares) -> the run folder check -> model (initial weights, then the tuner) -> step state, data passes, build context -> the
method's parts -> checkpoints. Nothing here trains:
:mod:`ltreg.stages` sets each stage up (loader, optimizer, schedule) and :mod:`ltreg.loop` runs them.
"""

from __future__ import annotations

import inspect
import os
import shutil
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from accelerate import Accelerator, DataLoaderConfiguration
from accelerate.utils import DistributedDataParallelKwargs, set_seed
from safetensors import SafetensorError, safe_open
from safetensors.torch import save
from torch import nn

import ltreg.distributed as D
from ltreg.card import DatasetRecord, RunCard
from ltreg.checkpoint import Checkpoints, claim_run_folder, guard_run_folder
from ltreg.config import RunConfig, TrainConfig, ineffective, mix_refusal, resolve_tuner
from ltreg.data.build import build_data, with_input
from ltreg.data.evalviews import EvalViews, build_eval_views
from ltreg.data.lt import LTData, LTDataset, data_identity
from ltreg.data.split import carve_holdout
from ltreg.data.views import apply_augment, describe_views
from ltreg.errors import ConfigError, PeerError, TrainingError
from ltreg.evaluate import DataPasses
from ltreg.files import RunLock, probe_writable, write_atomic
from ltreg.method import PartRef, build_part
from ltreg.models.backbones import backbone_stats, load_initial_weights, resolve_arch
from ltreg.models.heads import CosineLinear
from ltreg.models.ltmodel import LTModel, LTModelConfig
from ltreg.registry import registry
from ltreg.runlog import check_tracker
from ltreg.step import BuildContext, Part, StepState
from ltreg.tuners import TunedParams, Tuner


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
    #: Trainable and total parameters of stage 1 (model and trainable parts), set by ``stages.stage1_setup``.
    counts: tuple[int, int] = (0, 0)
    eval_views: EvalViews | None = None  # the test-time views of the final evaluation (None: the centre view)
    lock: RunLock | None = None  # held by the main process from the folder check to the end of the run

    @property
    def cfg(self) -> TrainConfig:
        return self.config.cfg

    @property
    def run_dir(self) -> Path:
        return self.cfg.run_dir

    def stateful(self) -> dict[str, nn.Module]:
        """What a checkpoint saves besides the optimizer: the model, every part with tensors and the rebalancer
        (in stage 2 it holds what ``setup`` built from the stage-1 model, e.g. KD's teacher: a resumed stage 2
        re-runs ``setup`` on a model that has not loaded its weights yet)."""
        reb = self.parts.rebalancer
        return {"model": self.model, **self.parts.modules(), **({"rebalancer": reb} if isinstance(reb, nn.Module) else {})}

    def effective_recipe(self) -> dict[str, Any]:
        """The recipe settings that took effect in this run (the card records only those)."""
        drop = ineffective(self.cfg, self.config.spec)
        return {k: v for k, v in self.cfg.recipe_items().items() if k not in drop}

    def card(self, metrics: dict[str, Any]) -> RunCard:
        """What ``config.json``, the model card and ``ltreg eval`` record about this run."""
        train, cfg, spec = self.data.train, self.cfg, self.config.spec
        args = cfg.data_args()
        hub_id = args.root if args.root and args.root.count("/") == 1 and not Path(args.root).exists() else None
        dataset = DatasetRecord(name=cfg.dataset, test_name=self.data.test.name, class_counts=train.class_counts.tolist(),
                                class_names=list(train.class_names), many_thr=train.many_thr, few_thr=train.few_thr,
                                image_size=train.image_size, mean=list(train.mean), std=list(train.std),
                                info=dict(train.info), builder_args=args.to_dict(), hub_id=hub_id,
                                identity=data_identity(train))
        tuner = {**self.tuner.to_dict(), "backbone_trainable": self.tuned.trainable, "backbone_total": self.tuned.total,
                 "trainable": self.counts[0], "total": self.counts[1], "structural": self.tuner.structural,
                 "mergeable": self.tuner.mergeable, "base": base_weights(cfg)}
        return RunCard(method=spec.name, citation=spec.citation, bibtex=spec.bibtex, hparams=self.config.hparams.to_dict(),
                       recipe=self.effective_recipe(), dataset=dataset, license=cfg.license,
                       augmentation=describe_views(training_views(self.config, self.parts), train) + (
                           f"; then {cfg.mix} of image pairs in stage 1, lam ~ Beta({cfg.mix_alpha}, {cfg.mix_alpha}) "
                           f"per step" if cfg.mix else ""),
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


def preflight_output(run_dir: Path, min_free_mb: int = 50) -> None:
    """Fail before training when the run folder cannot be written or the disk is (nearly) full."""
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        probe_writable(run_dir)
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


#: Set by a process manager that starts several processes itself (torchrun, mpirun / MPI, Slurm's srun).
_WORLD_VARS = ("WORLD_SIZE", "OMPI_COMM_WORLD_SIZE", "PMI_SIZE", "PMIX_RANK", "SLURM_NTASKS", "LOCAL_RANK")


def check_launch(env: Mapping[str, str] | None = None) -> None:
    """Stop when ``accelerate launch --num_processes N`` (N > 1) started a single process.

    Without ``--multi_gpu`` (and with fewer than two GPUs) Accelerate's simple launcher runs the script
    once: it sets ``MASTER_ADDR`` / ``MASTER_PORT`` for the N processes asked for, but no ``WORLD_SIZE``,
    so the run would quietly train on one process with N times the per-process batch.
    """
    env = os.environ if env is None else env
    launched = "ACCELERATE_USE_CPU" in env or "ACCELERATE_MIXED_PRECISION" in env  # set by accelerate launch
    if launched and "MASTER_ADDR" in env and not any(k in env for k in _WORLD_VARS):
        raise ConfigError(
            "accelerate launch was asked for several processes (--num_processes > 1) but started one: without "
            "--multi_gpu on a machine with fewer than two GPUs it runs the script once. Add --multi_gpu "
            "(accelerate launch --multi_gpu --num_processes N -m ltreg train ...; on CPU it starts N gloo "
            "processes), or drop --num_processes to train on one process"
        )


def make_accelerator(cfg: TrainConfig) -> Accelerator:
    """Accelerate for this run. Several processes on a machine without CUDA run on CPU (gloo) without
    ``--cpu``; DDP is told that every trainable parameter gets a gradient each step (heads a stage does not
    train are frozen, see :func:`freeze_unused_heads`), so it never searches for unused ones."""
    check_launch()
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


def training_views(rc: RunConfig, parts: Parts) -> tuple[str, ...]:
    """The view pipelines the run trains on, stage 1 then stage 2, ``--augment`` applied."""
    views = rc.spec.views_for(rc.hparams) + tuple(getattr(parts.rebalancer, "views", ()) or ())
    return apply_augment(views, rc.cfg.augment)


def check_augment_applies(rc: RunConfig, parts: Parts) -> None:
    """``--augment`` replaces the method's ``cls`` views: a method without one would ignore it, so it stops."""
    views = rc.spec.views_for(rc.hparams) + tuple(getattr(parts.rebalancer, "views", ()) or ())
    if rc.cfg.augment is not None and not any(v.split("+")[0] == "cls" for v in views):
        raise ConfigError(f"--augment {rc.cfg.augment} sets the classifier's crop-and-flip view ('cls'), and the method "
                          f"{rc.spec.name} has none: its views are {', '.join(dict.fromkeys(views))} (part of the "
                          f"method, see `ltreg info {rc.spec.name}`). Drop --augment")


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
    stats = backbone_stats(cfg.backbone or "resnet8") if cfg.normalize == "backbone" else (None, None)
    data = with_input(data, cfg.image_size, *stats)
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
    views = test_views(rc, data.test)  # an unknown view set stops here, before any training
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
    if cfg.mix is not None:  # the --mix setting: a batch transform of the method's stage 1
        refusal = mix_refusal(spec)
        if refusal:
            raise ConfigError(f"--mix {cfg.mix} would have no effect: {refusal}")
        built["batch_transform"] = build_part("batch_transform", PartRef(cfg.mix, alpha=cfg.mix_alpha), hparams, ctx)
    parts = Parts(loss=build_part("loss", spec.loss, hparams, ctx), sampler=build_part("sampler", spec.sampler, hparams, ctx),
                  rebalancer=build_part("rebalance", spec.rebalance, hparams, ctx) if spec.rebalance else None, **built)
    state.prototypes, state.memory, state.model = parts.prototypes, parts.memory, model
    check_augment_applies(rc, parts)
    if cfg.resume and cfg.overwrite:
        raise ConfigError("--resume continues a run and --overwrite starts it over: pass one of them")
    lock, refusal = None, None
    if acc.is_main_process:  # the main process checks, locks and claims the folder; the others hear how it went
        try:
            preflight_output(cfg.run_dir, cfg.min_free_mb)
            lock = RunLock(cfg.run_dir).acquire()  # a second training into this folder stops here, named
            try:
                guard_run_folder(cfg.run_dir, cfg.resume, cfg.overwrite)
                claim_run_folder(cfg.run_dir)
            except BaseException:
                lock.release()
                raise
        except Exception as exc:  # noqa: BLE001 - shared with the other processes, then raised
            refusal = exc
    outcome = D.share_outcome(refusal, acc.device)  # no process waits for a main process that stopped
    if refusal is not None:
        raise refusal
    if outcome is not None:
        raise PeerError(f"the main process stopped before training (process {acc.process_index} stops with it): "
                        f"{outcome[1]}", outcome[0])
    if spec.head_init is not None:
        init_head(rc, model, train_set, say=acc.print, write=acc.is_main_process)
        acc.wait_for_everyone()
    return Run(rc, acc, data, train_set, holdout, model, parts, state, ctx, passes, Checkpoints(cfg.run_dir, acc),
               tuner=tuner, tuned=tuned, eval_views=views, lock=lock)


def test_views(rc: RunConfig, test: LTDataset) -> EvalViews:
    """The final evaluation's view set: ``--tta NAME`` (its default arguments), else the method's ``eval_views``."""
    if rc.cfg.tta is not None:
        return build_eval_views(rc.cfg.tta, test)
    ref = rc.spec.eval_views
    return build_eval_views(ref.name, test, **ref.resolve_kwargs(rc.hparams))


def init_head(rc: RunConfig, model: LTModel, train: LTDataset, say: Callable[[str], None], write: bool) -> None:
    """Run the method's head initialiser (``ltreg.head_inits``) on the built model, leaving the global RNG as it
    was; with ``--init-from`` (heads loaded from a run) it is skipped, and said so. On ``--resume`` it runs
    (from its cache in the run folder) and the checkpoint then overwrites the heads."""
    ref = rc.spec.head_init
    assert ref is not None
    if rc.cfg.init_from is not None:
        say(f"head init {ref.name}: skipped, --init-from {rc.cfg.init_from} gives the heads")
        return
    factory = registry("head_inits").get(ref.name)
    kwargs = ref.resolve_kwargs(rc.hparams)
    try:
        inspect.signature(factory).bind(**kwargs)
    except TypeError as exc:
        raise ConfigError(f"head init {ref.name!r} does not accept {sorted(kwargs)}: {exc}") from exc
    init = factory(**kwargs)
    classifier = model.classifier
    if not isinstance(classifier, CosineLinear):
        raise ConfigError(f"head init {ref.name!r} sets the rows of a cosine classifier, but the method "
                          f"{rc.spec.name} builds a {type(classifier).__name__}; declare ModelSpec(classifier='cosine')")
    cache = rc.cfg.run_dir / f"head_init-{ref.name}.safetensors"
    key = init.cache_key(train)
    rows, where = None, "computed"
    if cache.is_file() and not cache.is_symlink():
        try:
            with safe_open(str(cache), "pt") as fh:
                if (fh.metadata() or {}).get("key") == key:
                    rows, where = fh.get_tensor("weight"), f"read from {cache}"
        except (SafetensorError, OSError):  # a corrupt cache is recomputed and replaced
            rows = None
    if rows is None:
        with torch.random.fork_rng(devices=[]):  # random-weight towers (tests, --quick) leave the run's RNG alone
            rows = init.weights(train).contiguous()
        if write:
            write_atomic(cache, save(tensors={"weight": rows}, metadata={"key": key}), root=rc.cfg.run_dir)
            where = f"computed, cached in {cache}"
    if rows.shape != classifier.weight.shape:
        raise ConfigError(f"head init {ref.name!r} gives rows of shape {tuple(rows.shape)} but the classifier is "
                          f"{tuple(classifier.weight.shape)} (classes x backbone features): the text model's image "
                          f"tower must be the backbone's ({rc.cfg.backbone})")
    with torch.no_grad():
        classifier.weight.copy_(rows.to(classifier.weight.dtype))
    say(f"{init.describe(train.num_classes)}; {where}")


def loader_workers(cfg: TrainConfig, acc: Accelerator) -> int:
    """``--num-workers``, or from the CPUs this process may use: on CUDA all but one (at most 8) decode and
    augment while the GPU trains; on CPU none, since the model's own threads already use every core."""
    if cfg.num_workers is not None:
        return cfg.num_workers
    if acc.device.type != "cuda":
        return 0
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(1, min(8, cpus // acc.num_processes - 1))
