"""The one Accelerate trainer: every method, both stages, any device set-up.

A run is: resolve the method -> build the LT data, the model and the declared parts -> stage 1
(``loss(outputs, batch, state)`` plus part hooks) -> optional stage 2 (the rebalancer owns its loss,
sampler and trainable parameters; the same epoch loop runs it) -> evaluation -> ``save_pretrained``.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
import shutil
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from accelerate import Accelerator, DataLoaderConfiguration
from accelerate.utils import set_seed
from safetensors.torch import load_file, save_file
from torch import Tensor, nn
from torch.utils.data import DataLoader

from ltreg import distributed as D
from ltreg.config import TrainConfig, resolve_config
from ltreg.data.build import build_data
from ltreg.data.lt import LTDataset
from ltreg.data.views import ViewDataset, collate
from ltreg.evaluate import format_table, geometry_metrics, lt_metrics
from ltreg.method import ConfigError, MethodSpec, PartRef, build_part, get_method
from ltreg.models.ltmodel import LTModel, LTModelConfig
from ltreg.step import Batch, BuildContext, LossOutput, Outputs, Part, StepState

WEIGHTS = "ltreg_state.safetensors"


class TrainingError(RuntimeError):
    """A run that cannot go on; the message says what was kept and what to do."""


class NonFiniteLossError(TrainingError):
    pass


@dataclass
class RunResult:
    """What a finished run leaves: its folder, final metrics, per-epoch history and the model."""

    run_dir: Path
    metrics: dict[str, Any]
    history: list[dict[str, Any]]
    model: LTModel
    config: TrainConfig


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
    return train.subset(perm[~held].sort().values.numpy()), train.subset(perm[held].sort().values.numpy(), name=f"{train.name}-holdout")


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "w") as fh:
        fh.write(text)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


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


class Trainer:
    """Builds a run from a :class:`TrainConfig` and runs it: ``Trainer(cfg).fit() -> RunResult``."""

    def __init__(self, cfg: TrainConfig, spec: MethodSpec | None = None) -> None:
        self.cfg = cfg
        self.spec = spec or get_method(cfg.method)
        self.hparams = self.spec.hparams.replace(**cfg.hparams)
        self.run_dir = cfg.run_dir
        self.accelerator = Accelerator(
            cpu=cfg.cpu,
            mixed_precision=cfg.mixed_precision,
            gradient_accumulation_steps=cfg.grad_accum,
            dataloader_config=DataLoaderConfiguration(split_batches=True),
            project_dir=str(self.run_dir),
            log_with=cfg.log_with,
        )
        acc = self.accelerator
        if cfg.log_with:
            acc.init_trackers(f"ltreg-{self.spec.name}", config={k: v for k, v in cfg.to_dict().items()
                                                                  if isinstance(v, (int, float, str, bool))})
        if cfg.batch_size % acc.num_processes:
            raise ConfigError(
                f"batch_size {cfg.batch_size} is the global batch and must split evenly over "
                f"{acc.num_processes} processes; use a multiple of {acc.num_processes}"
            )
        if acc.is_main_process:
            preflight_output(self.run_dir, cfg.min_free_mb)
        set_seed(cfg.seed)
        self.data = build_data(cfg)
        self.train_set, self.holdout = self.data.train, self.data.val
        self.history: list[dict[str, Any]] = []
        self.model = LTModel(self._model_config())
        if acc.num_processes > 1:  # batch statistics of the global batch, as on one process
            self.model = D.convert_batchnorm(self.model)
        self.ctx = BuildContext(
            targets=self.train_set.targets,
            num_classes=self.train_set.num_classes,
            seed=cfg.seed,
            model=self.model,
            train_set=self.train_set,
            hparams=self.hparams,
            num_epochs=cfg.epochs,
            embed=self._embed,
            features=self._features,
        )
        self.rebalancer = (
            build_part("rebalance", self.spec.rebalance, self.hparams, self.ctx) if self.spec.rebalance else None
        )
        if self.rebalancer is not None and getattr(self.rebalancer, "needs_holdout", False) and self.holdout is None:
            # before any other part indexes the training set
            self.train_set, self.holdout = carve_holdout(self.train_set, cfg.holdout_fraction, cfg.seed)
            self.ctx.train_set, self.ctx.targets = self.train_set, self.train_set.targets
        self.parts: dict[str, Any] = {}
        for role in ("memory", "prototypes", "batch_transform"):
            ref = getattr(self.spec, role)
            if ref is not None:
                self.parts[role] = build_part(role, ref, self.hparams, self.ctx)
                if role == "memory":
                    self.ctx.memory = self.parts[role]
        self.loss = build_part("loss", self.spec.loss, self.hparams, self.ctx)
        self.sampler = build_part("sampler", self.spec.sampler, self.hparams, self.ctx)
        self.state = StepState(
            class_counts=self.train_set.class_counts.float(),
            num_classes=self.train_set.num_classes,
            num_epochs=cfg.epochs,
            world_size=acc.num_processes,
            rank=acc.process_index,
            gather=D.gather_with_grad,
            gather_nograd=D.gather_nograd,
            all_reduce_mean=D.all_reduce_mean,
            prototypes=self.parts.get("prototypes"),
            memory=self.parts.get("memory"),
            scratch={"seed": cfg.seed},
        )

    # -- building --------------------------------------------------------------------------
    def _model_config(self) -> LTModelConfig:
        m = self.spec.model
        return LTModelConfig(
            backbone=self.cfg.backbone or "resnet8",
            num_classes=self.train_set.num_classes,
            in_chans=self.train_set.channels,
            classifier=m.classifier,
            cosine_scale=m.cosine_scale,
            proj_dim=m.proj_dim,
            proj_hidden=m.proj_hidden,
            proj_bn=m.proj_bn,
        )

    def _loader(self, dataset: LTDataset, views: Iterable[str], sampler: Any, batch_size: int) -> DataLoader:
        role = getattr(sampler, "extra_role", None)
        vds = ViewDataset(dataset, tuple(views), role=role, positive_views=self.spec.positive_views, seed=self.cfg.seed)
        if len(sampler) < batch_size:
            raise ConfigError(
                f"an epoch of the {type(sampler).__name__} has {len(sampler)} samples, fewer than one batch of "
                f"{batch_size}; lower batch_size"
            )
        loader = DataLoader(vds, batch_size=batch_size, sampler=sampler, collate_fn=collate,
                            num_workers=self.cfg.num_workers, drop_last=True)
        loader.view_dataset, loader.ltreg_sampler = vds, sampler  # type: ignore[attr-defined]
        return loader

    def _prepared(self, loader: DataLoader, *others: Any) -> Any:
        """``accelerator.prepare`` that keeps the loader's view dataset and sampler reachable."""
        vds, sampler = loader.view_dataset, loader.ltreg_sampler  # type: ignore[attr-defined]
        out = self.accelerator.prepare(loader, *others)
        prepared = out[0] if others else out
        prepared.view_dataset, prepared.ltreg_sampler = vds, sampler
        return out

    def _part_modules(self) -> list[nn.Module]:
        mods = [p for p in self.parts.values() if isinstance(p, nn.Module)]
        if isinstance(self.loss, nn.Module):
            mods.append(self.loss)
        return mods

    def _part_params(self) -> list[nn.Parameter]:
        seen: set[int] = {id(p) for p in self.model.parameters()}
        out = []
        for mod in self._part_modules():
            for p in mod.parameters():
                if p.requires_grad and id(p) not in seen:
                    seen.add(id(p))
                    out.append(p)
        return out

    def _schedule(self, total_steps: int, steps_per_epoch: int, warmup_epochs: int, schedule: str,
                  milestones: list[int]) -> Callable[[int], float]:
        warm = warmup_epochs * steps_per_epoch

        def factor(step: int) -> float:
            if step < warm:
                return (step + 1) / warm
            if schedule == "cosine":
                t = (step - warm) / max(1, total_steps - warm)
                return 0.5 * (1 + math.cos(math.pi * min(1.0, t)))
            if schedule == "step":
                epoch = step // max(1, steps_per_epoch)
                return self.cfg.lr_decay ** sum(epoch >= m for m in milestones)
            return 1.0

        return factor

    # -- embedding helpers handed to parts ------------------------------------------------
    @torch.no_grad()
    def _embed(self, indices: Tensor, pipeline: str = "none", use_key: bool = True) -> Tensor:
        """Normalised projections of training images under one pipeline (identical on every process)."""
        vds = ViewDataset(self.train_set, (pipeline,), seed=self.cfg.seed + 1)
        vds.set_epoch(self.state.epoch)
        memory = self.parts.get("memory")
        model = self.model
        out = []
        for chunk in torch.split(torch.as_tensor(indices), self.cfg.eval_batch_size):
            images = torch.stack([vds[int(i)]["images"][0] for i in chunk]).to(self.accelerator.device)
            if use_key and memory is not None:
                out.append(memory.key_encode(images))
            else:
                was = model.training
                model.eval()
                out.append(model.project(model.forward_features(images)))
                model.train(was)
        dim = model.embed_dim
        return torch.cat(out) if out else torch.empty(0, dim, device=self.accelerator.device)

    @torch.no_grad()
    def _features(self, split: str) -> tuple[Tensor, Tensor]:
        """Backbone features and labels of ``train`` or ``holdout`` (single centre view)."""
        dataset = {"train": self.train_set, "holdout": self.holdout}[split]
        if dataset is None:
            raise TrainingError("no holdout split: the rebalancer must declare needs_holdout")
        out = self.extract(dataset)
        return out["features"], out["targets"]

    @torch.no_grad()
    def extract(self, dataset: LTDataset) -> dict[str, Tensor]:
        """Logits, normalised embeddings, backbone features and targets of a data set (eval mode)."""
        model = self.model
        was = model.training
        model.eval()
        loader = DataLoader(ViewDataset(dataset, ("none",)), batch_size=self.cfg.eval_batch_size, collate_fn=collate)
        loader = self.accelerator.prepare_data_loader(loader, device_placement=True)
        outs: dict[str, list[Tensor]] = {"logits": [], "z": [], "features": [], "targets": []}
        for batch in loader:
            with self.accelerator.autocast():
                o = model(batch.images)
            got = self.accelerator.gather_for_metrics((o.logits[:, 0].float(), o.z[:, 0].float(), o.features[:, 0].float(), batch.targets))
            for key, value in zip(outs, got):
                outs[key].append(value.cpu())
        model.train(was)
        return {k: torch.cat(v) for k, v in outs.items()}

    # -- the loop --------------------------------------------------------------------------
    def _run_epoch(
        self,
        stage: int,
        epoch: int,
        loader: DataLoader,
        forward: Callable[[Tensor], Outputs],
        loss_fn: Callable[[Outputs, Batch, StepState], LossOutput],
        optimizer: torch.optim.Optimizer,
        scheduler: Any,
        hooks: list[Any],
        params: list[nn.Parameter],
        step_offset: int,
        query_views: list[int] | None = None,
    ) -> dict[str, Any]:
        acc, state, cfg = self.accelerator, self.state, self.cfg
        state.epoch = epoch
        if hasattr(loader, "set_epoch"):  # Accelerate re-sets sampler and dataset epochs from its own counter
            loader.set_epoch(epoch)
        loader.view_dataset.set_epoch(epoch)  # type: ignore[attr-defined]
        loader.ltreg_sampler.set_epoch(epoch)  # type: ignore[attr-defined]
        start = time.time()  # the epoch's time includes its start hooks (e.g. coreset prototypes)
        for h in hooks:
            h.on_epoch_start(state)
        names: list[str] | None = None
        sums: Tensor | None = None
        steps = 0
        bad_step = torch.full((), -1, dtype=torch.long, device=acc.device)
        bad_mask: Tensor | None = None
        limit = cfg.max_steps_per_epoch or len(loader)
        for i, batch in enumerate(loader):
            if i >= limit:
                break
            state.step = i
            for h in hooks:
                batch = h.transform_batch(batch, state)
            with acc.accumulate(self.model):
                with acc.autocast():
                    outputs = forward(batch.images if query_views is None else batch.images[:, query_views])
                    for h in hooks:
                        h.on_forward(outputs, batch, state)
                    out = loss_fn(outputs, batch, state)
                acc.backward(out.total)
                if acc.sync_gradients:
                    D.sync_gradients(params)
                optimizer.step()
                scheduler.step()
                optimizer.zero_grad(set_to_none=True)
            if acc.sync_gradients:
                for h in hooks:
                    h.on_step_end(outputs, batch, state)
            if names is None:
                names = ["loss", *out.parts]
            vec = torch.stack([out.total.detach().float(), *[v.detach().float() for v in out.parts.values()]])
            finite = torch.isfinite(vec)
            first = (bad_step < 0) & ~finite.all()
            bad_step = torch.where(first, torch.full_like(bad_step, step_offset + i), bad_step)
            bad_mask = torch.where(first, ~finite, bad_mask if bad_mask is not None else torch.zeros_like(finite))
            sums = vec if sums is None else sums + vec
            steps += 1
            if (i + 1) % cfg.log_every == 0:
                self._check_finite(bad_step, bad_mask, names, stage)
        self._check_finite(bad_step, bad_mask, names or [], stage)
        row: dict[str, Any] = {"stage": stage, "epoch": epoch + 1, "steps": steps}
        if sums is not None and names is not None:
            means = (D.all_reduce_mean(sums) / steps).tolist()
            row.update({n: round(v, 6) for n, v in zip(names, means)})
        row["lr"] = optimizer.param_groups[0]["lr"]
        row["seconds"] = round(time.time() - start, 3)
        return row

    def _check_finite(self, bad_step: Tensor, bad_mask: Tensor | None, names: list[str], stage: int) -> None:
        step = int(D.all_reduce_sum((bad_step >= 0).float() * (bad_step + 1)).item())
        if step > 0 and bad_mask is not None:
            bad = [n for n, b in zip(names, bad_mask.tolist()) if b]
            kept = self.latest_checkpoint()
            raise NonFiniteLossError(
                f"non-finite loss at stage {stage}, global step {int(bad_step.clamp(min=0).item())} "
                f"(parts: {', '.join(bad) or 'loss'}). The run stopped; the last good checkpoint "
                f"{'is ' + str(kept) if kept else 'does not exist yet'}. Lower the learning rate, check the "
                f"temperature, or use mixed_precision=no, then resume with --resume."
            )

    # -- checkpoints ---------------------------------------------------------------------
    @property
    def checkpoint_root(self) -> Path:
        return self.run_dir / "checkpoints"

    def latest_checkpoint(self) -> Path | None:
        pointer = self.checkpoint_root / "latest"
        if not pointer.exists():
            return None
        path = self.checkpoint_root / pointer.read_text().strip()
        return path if path.is_dir() else None

    def _save_checkpoint(self, name: str, trainer_state: dict[str, Any]) -> None:
        """Write the state folder under a temporary name, then rename it and move the pointer."""
        acc = self.accelerator
        tmp = self.checkpoint_root / f".tmp-{name}"
        if acc.is_main_process and tmp.exists():
            shutil.rmtree(tmp)
        acc.wait_for_everyone()
        acc.save_state(str(tmp), safe_serialization=True)  # optimizer, scheduler, RNG states
        acc.wait_for_everyone()  # every process has written its RNG state before the rename
        if acc.is_main_process:
            save_file(self._weights(), str(tmp / WEIGHTS))
            _write_atomic(tmp / "trainer_state.json", json.dumps(trainer_state, indent=1))
            final = self.checkpoint_root / name
            previous = self.latest_checkpoint()
            if final.exists():
                shutil.rmtree(final)
            os.replace(tmp, final)
            _write_atomic(self.checkpoint_root / "latest", name)
            if previous is not None and previous != final:
                shutil.rmtree(previous, ignore_errors=True)
        acc.wait_for_everyone()

    def _stateful(self) -> dict[str, nn.Module]:
        mods = {"model": self.model}
        mods.update({role: p for role, p in self.parts.items() if isinstance(p, nn.Module)})
        if isinstance(self.loss, nn.Module):
            mods["loss"] = self.loss
        return mods

    def _weights(self) -> dict[str, Tensor]:
        """Model and part tensors for the checkpoint, as safetensors (no pickle for weights)."""
        out = {}
        for prefix, mod in self._stateful().items():
            for key, value in mod.state_dict().items():
                out[f"{prefix}.{key}"] = value.detach().cpu().contiguous()
        return out

    def _load_weights(self, path: Path) -> None:
        tensors = load_file(str(path / WEIGHTS))
        for prefix, mod in self._stateful().items():
            mine = {k[len(prefix) + 1:]: v for k, v in tensors.items() if k.startswith(prefix + ".")}
            mod.load_state_dict(mine)

    def _write_metrics_csv(self) -> None:
        if not self.accelerator.is_main_process or not self.history:
            return
        keys: list[str] = []
        for row in self.history:
            keys += [k for k in row if k not in keys]
        buf = io.StringIO()
        writer = csv.DictWriter(buf, fieldnames=keys)
        writer.writeheader()
        writer.writerows(self.history)
        _write_atomic(self.run_dir / "metrics.csv", buf.getvalue())

    # -- stages ------------------------------------------------------------------------
    def _stage1(self) -> None:
        acc, cfg = self.accelerator, self.cfg
        loader = self._loader(self.train_set, self.spec.views_for(self.hparams), self.sampler, cfg.batch_size)
        self.model.to(acc.device)
        for mod in self._part_modules():
            mod.to(acc.device)
        params = [p for p in self.model.parameters() if p.requires_grad] + self._part_params()
        optimizer = torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay,
                                    nesterov=cfg.nesterov)
        steps_per_epoch = min(cfg.max_steps_per_epoch or 10**12, len(loader))  # global batches
        self.state.steps_per_epoch = steps_per_epoch
        factor = self._schedule(cfg.epochs * steps_per_epoch, steps_per_epoch, cfg.warmup_epochs, cfg.schedule,
                                cfg.milestones)
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
        # The model is not wrapped in DDP: gradients are averaged by D.sync_gradients (see there).
        loader, optimizer, scheduler = self._prepared(loader, optimizer, scheduler)
        self.state.model = self.model
        self.state.class_counts = self.state.class_counts.to(acc.device)
        start_epoch = 0
        if cfg.resume:
            start_epoch = self._resume()
        hooks = [p for p in self.parts.values() if isinstance(p, Part)]
        query_views = list(self.spec.query_views) if self.spec.query_views is not None else None
        for h in hooks:
            h.on_train_start(self.state)
        for epoch in range(start_epoch, cfg.epochs):
            row = self._run_epoch(1, epoch, loader, self.model, self.loss, optimizer, scheduler, hooks,
                                  params, epoch * steps_per_epoch, query_views)
            self.history.append(row)
            if (epoch + 1) % cfg.checkpoint_every == 0 or epoch + 1 == cfg.epochs:
                self._save_checkpoint(f"stage1-epoch-{epoch + 1}", {"stage": 1, "epoch": epoch + 1,
                                                                    "history": self.history})
                row["checkpoint"] = f"stage1-epoch-{epoch + 1}"
            self._end_epoch(row)

    def _end_epoch(self, row: dict[str, Any]) -> None:
        """Metrics CSV, trackers and the progress line (after the epoch's checkpoint is on disk)."""
        if not self.history or self.history[-1] is not row:
            self.history.append(row)
        self._write_metrics_csv()
        self.accelerator.log({k: v for k, v in row.items() if isinstance(v, (int, float))})
        if self.accelerator.is_main_process:
            skip = ("stage", "epoch", "steps", "seconds", "lr", "checkpoint")
            parts = "  ".join(f"{k} {v:.4f}" for k, v in row.items() if k not in skip)
            saved = "  [checkpoint]" if "checkpoint" in row else ""
            print(f"stage {row['stage']} epoch {row['epoch']:>3}  {parts}  lr {row['lr']:.4g}  {row['seconds']:.1f}s{saved}",
                  flush=True)

    def _resume(self) -> int:
        path = self.latest_checkpoint()
        if path is None:
            if self.accelerator.is_main_process:
                print(f"--resume: no checkpoint in {self.checkpoint_root}; starting from scratch", flush=True)
            return 0
        state = json.loads((path / "trainer_state.json").read_text())
        self.accelerator.load_state(str(path))
        self._load_weights(path)
        self.history = list(state["history"])
        if self.accelerator.is_main_process:
            print(f"resumed from {path} (stage {state['stage']}, epoch {state['epoch']})", flush=True)
        return int(state["epoch"])

    def _stage2(self) -> dict[str, Any]:
        reb, cfg = self.rebalancer, self.cfg
        model = self.model
        groups = reb.setup(model)
        epochs = cfg.stage2_epochs if cfg.stage2_epochs is not None else reb.epochs
        info: dict[str, Any] = {}
        if epochs > 0:
            lr = cfg.stage2_lr or reb.lr or cfg.lr
            if groups and isinstance(groups[0], dict):
                groups = [{"params": g["params"], "lr": lr * g.get("lr_scale", 1.0)} for g in groups]
            params = [p for g in groups for p in (g["params"] if isinstance(g, dict) else [g])]
            optimizer = torch.optim.SGD(groups, lr=lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
            sampler = build_part("sampler", PartRef(reb.sampler, **getattr(reb, "sampler_kwargs", {})),
                                 self.hparams, self.ctx)
            loader = self._loader(self.train_set, reb.views, sampler, cfg.stage2_batch_size or cfg.batch_size)
            steps = min(cfg.max_steps_per_epoch or 10**12, len(loader))
            scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, self._schedule(epochs * steps, steps, 0, "cosine", []))
            loader, optimizer, scheduler = self._prepared(loader, optimizer, scheduler)
            model.train()
            if getattr(reb, "freeze_backbone", True):
                model.backbone.eval()
            self.state.num_epochs, self.state.steps_per_epoch = epochs, steps
            for epoch in range(epochs):
                row = self._run_epoch(2, epoch, loader, model, reb.loss, optimizer, scheduler, [], params,
                                      epoch * steps)
                self._end_epoch(row)
        info.update(reb.finalize(model, self.ctx) or {})
        return info

    # -- public ----------------------------------------------------------------------------
    def fit(self) -> RunResult:
        """Train (stage 1, stage 2), evaluate, save; returns the :class:`RunResult`."""
        from ltreg.hub import save_pretrained

        acc, cfg = self.accelerator, self.cfg
        if acc.is_main_process:
            n, c = len(self.train_set), self.train_set.num_classes
            counts = self.train_set.class_counts
            print(f"ltreg: {self.spec.name} on {cfg.dataset} ({n} training images, {c} classes, "
                  f"counts {int(counts.max())}..{int(counts.min())}), backbone {self._model_config().backbone}, "
                  f"{acc.num_processes} process(es) on {acc.device}", flush=True)
        self._stage1()
        stage2_info: dict[str, Any] = {}
        if self.rebalancer is not None:
            stage2_info = self._stage2()
        metrics = self.evaluate(self.data.test)
        metrics["stage2"] = stage2_info
        model = self.model
        if acc.is_main_process:
            _write_atomic(self.run_dir / "metrics.json", json.dumps(metrics, indent=1))
            save_pretrained(model, self.run_dir, run_meta=self.run_meta(metrics))
            print(format_table(metrics, title=f"{self.spec.name} on {self.data.test.name} (top-1 %, test set)"), flush=True)
            print(f"run folder: {self.run_dir}", flush=True)
        acc.wait_for_everyone()
        for tracker in acc.trackers:  # not end_training(): it would tear down the process group
            tracker.finish()
        return RunResult(self.run_dir, metrics, self.history, model, cfg)

    def evaluate(self, dataset: LTDataset) -> dict[str, Any]:
        """Test metrics: top-1, balanced, many / medium / few, per class, and geometry of the embedding."""
        out = self.extract(dataset)
        train = self.data.train
        metrics = lt_metrics(out["logits"], out["targets"], train.class_counts, train.many_thr, train.few_thr)
        metrics["geometry"] = geometry_metrics(out["z"], out["targets"], train.num_classes)
        metrics["train_counts"] = train.class_counts.tolist()
        return metrics

    def run_meta(self, metrics: dict[str, Any]) -> dict[str, Any]:
        """What ``config.json`` and the model card record about the run."""
        train = self.data.train
        return {
            "method": self.spec.name,
            "citation": self.spec.citation,
            "hparams": self.hparams.to_dict(),
            "train_config": self.cfg.to_dict(),
            "dataset": {"name": self.cfg.dataset, "info": train.info, "class_counts": train.class_counts.tolist(),
                        "many_thr": train.many_thr, "few_thr": train.few_thr, "class_names": train.class_names,
                        "test_name": self.data.test.name, "image_size": train.image_size,
                        "mean": list(train.mean), "std": list(train.std)},
            "metrics": {k: v for k, v in metrics.items() if k != "per_class"},
            "per_class": metrics.get("per_class"),
        }


def train(method: str | None = None, yaml_path: str | None = None, **overrides: Any) -> RunResult:
    """Train ``method`` with keyword overrides of :class:`TrainConfig` (``hparams={...}`` for the method)."""
    from ltreg.config import DEFAULT_METHOD, load_yaml

    yaml_values = load_yaml(yaml_path) if yaml_path else {}
    spec = get_method(method or yaml_values.get("method") or overrides.get("method") or DEFAULT_METHOD)
    overrides.pop("method", None)
    cfg = resolve_config(spec, overrides, yaml_values)
    return Trainer(cfg, spec).fit()


__all__ = ["Trainer", "RunResult", "TrainingError", "NonFiniteLossError", "train", "build_data"]
