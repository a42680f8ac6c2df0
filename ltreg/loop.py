"""The one training loop: runs what :func:`ltreg.run.build_run` built, stage by stage.

``fit(run)``: for each stage (1: the method's loss; 2: the rebalancer's, when declared) run its
epochs -- part hooks, forward, loss, backward, optimizer step -- write a checkpoint after each
epoch, then evaluate on the test split and save the model folder with its card. A killed run
resumes from the last checkpoint bit-identically (``--resume``).
"""

from __future__ import annotations

import itertools
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

import ltreg.distributed as D
from ltreg.card import RunCard
from ltreg.checkpoint import TrainerState
from ltreg.config import TrainConfig
from ltreg.data.lt import data_identity
from ltreg.data.views import describe_views
from ltreg.errors import CheckpointError, ConfigError, NonFiniteLossError, SpecError
from ltreg.evaluate import evaluate, format_table
from ltreg.files import Manifest, write_atomic
from ltreg.layout import METRICS_FILE, TRAINER_STATE
from ltreg.method import StageKind
from ltreg.models.ltmodel import LTModel
from ltreg.optim import base_lr
from ltreg.registry import registry
from ltreg.reports import dumps, json_safe
from ltreg.run import Run, training_views
from ltreg.runlog import RunLog
from ltreg.stages import StageSetup, stage1_setup


@dataclass
class RunResult:
    """What a finished run leaves: its folder, final metrics, per-epoch history and the model."""

    run_dir: Path
    metrics: dict[str, Any]
    history: list[dict[str, Any]]
    model: LTModel
    config: TrainConfig


def _check_finite(run: Run, bad_step: Tensor, bad_mask: Tensor | None, names: list[str], stage: int) -> None:
    """Raise :class:`NonFiniteLossError` when any process saw a non-finite loss (one collective, host sync)."""
    step = int(D.all_reduce_sum((bad_step >= 0).float() * (bad_step + 1)).item())
    if step > 0 and bad_mask is not None:
        bad = [n for n, b in zip(names, bad_mask.tolist()) if b]
        kept = run.checkpoints.latest()
        raise NonFiniteLossError(
            f"non-finite loss at stage {stage}, global step {int(bad_step.clamp(min=0).item())} (parts: {', '.join(bad) or 'loss'}). "
            f"The run stopped; the last good checkpoint {'is ' + str(kept) if kept else 'does not exist yet'}. "
            f"Start over with --overwrite and a lower --lr (or another temperature, or --mixed-precision no): "
            f"--resume continues only with the same settings, which would diverge again."
        )


def run_epoch(run: Run, st: StageSetup, epoch: int, log: RunLog) -> dict[str, Any]:
    """One epoch of stage ``st``: returns its row (mean loss parts, lr, steps, seconds)."""
    acc, state = run.accelerator, run.state
    state.epoch = run.passes.epoch = epoch
    st.loader.set_epoch(epoch)
    st.loader.view_dataset.set_epoch(epoch)
    st.loader.ltreg_sampler.set_epoch(epoch)
    start = time.time()  # the epoch's time includes its start hooks (e.g. coreset prototypes)
    for h in st.hooks:
        h.on_epoch_start(state)
    names: list[str] = []
    sums: Tensor | None = None
    bad_step = torch.full((), -1, dtype=torch.long, device=acc.device)
    bad_mask: Tensor | None = None
    steps = 0
    bar = log.progress(st.steps_per_epoch, f"stage {st.stage} epoch {epoch + 1}/{st.epochs}")
    for i, batch in enumerate(itertools.islice(st.loader, st.steps_per_epoch)):  # no batch past the last step
        state.step = i
        for h in st.hooks:
            batch = h.transform_batch(batch, state)
        with acc.accumulate(st.module):
            with acc.autocast():
                out, outputs = st.module(batch, state)
            acc.backward(out.total)
            st.optimizer.step()
            st.scheduler.step()
            st.optimizer.zero_grad(set_to_none=True)
        if acc.sync_gradients:
            for h in st.hooks:
                h.on_step_end(outputs, batch, state)
        names = names or ["loss", *out.parts]
        vec = torch.stack([out.total.detach().float(), *[v.detach().float() for v in out.parts.values()]])
        finite = torch.isfinite(vec)
        first = (bad_step < 0) & ~finite.all()
        bad_step = torch.where(first, torch.full_like(bad_step, state.global_step), bad_step)
        bad_mask = torch.where(first, ~finite, bad_mask if bad_mask is not None else torch.zeros_like(finite))
        sums = vec if sums is None else sums + vec
        steps += 1
        bar.step()
        if (i + 1) % run.cfg.log_every == 0:
            _check_finite(run, bad_step, bad_mask, names, st.stage)
            bar.show(loss=float(sums[0]) / steps, lr=base_lr(st.optimizer))
    bar.close()
    _check_finite(run, bad_step, bad_mask, names, st.stage)
    row: dict[str, Any] = {"stage": st.stage, "epoch": epoch + 1, "steps": steps,
                           "global_step": (epoch + 1) * st.steps_per_epoch}
    if sums is not None:
        row.update({n: round(v, 6) for n, v in zip(names, (D.all_reduce_mean(sums) / steps).tolist())})
    row["lr"] = base_lr(st.optimizer)  # --lr as scheduled, not a layer-decayed group's
    row["seconds"] = round(time.time() - start, 3)
    return row


def run_fingerprint(run: Run) -> dict[str, Any]:
    """What a resume must match: the settings that change the result, and the training data's identity
    (class names, counts, each sample's file or index and label), so another data set of the same class
    count is not continued on silently."""
    return {**json.loads(json.dumps(run.cfg.fingerprint(), default=str)), "data": data_identity(run.train_set)}


def _train_stage(run: Run, st: StageSetup, log: RunLog, start_epoch: int) -> None:
    run.state.num_epochs, run.state.steps_per_epoch = st.epochs, st.steps_per_epoch
    if start_epoch >= st.epochs:
        return
    for h in st.hooks:
        h.on_train_start(run.state)
    fingerprint = run_fingerprint(run)
    for epoch in range(start_epoch, st.epochs):
        row = run_epoch(run, st, epoch, log)
        if (epoch + 1) % run.cfg.checkpoint_every == 0 or epoch + 1 == st.epochs:
            name = f"stage{st.stage}-epoch-{epoch + 1}"
            state = TrainerState(st.stage, epoch + 1, (epoch + 1) * st.steps_per_epoch, [*log.history, row], fingerprint)
            run.checkpoints.save(name, run.stateful(), state)
            row["checkpoint"] = name
        log.epoch(row)


#: Settings that set a run's length; its schedule is laid out over them, so a resume cannot change them.
LENGTH_KEYS = frozenset({"epochs", "stage2_epochs", "max_steps_per_epoch", "milestones", "warmup_epochs"})


def check_same_length(run: Run, saved: TrainerState, fingerprint: dict[str, Any]) -> None:
    """Refuse ``--resume`` with another length (``--epochs``) and name the command that trains on instead.

    The learning-rate schedule of the checkpointed run is laid out over its own number of steps (a cosine has
    reached or is heading for its floor); stretching it afterwards would give neither the run it was nor the
    longer one. A new run that starts from the checkpointed weights (``--init-from``) trains on honestly.
    """
    old = saved.fingerprint
    changed = {k for k in set(old) | set(fingerprint) if old.get(k) != fingerprint.get(k)}
    if not changed or not changed <= LENGTH_KEYS or not old:
        return  # the same run, or other settings too (the checkpoint's own check names them)
    cfg, was = run.cfg, old.get("epochs")
    more = cfg.epochs - was if isinstance(was, int) and cfg.epochs > was else cfg.epochs
    diff = "; ".join(f"{k}: {old.get(k)!r} in the run, {fingerprint.get(k)!r} now" for k in sorted(changed))
    data = f" --data-root {cfg.data_root}" if cfg.data_root else ""
    raise ConfigError(
        f"--resume cannot change the length of the run in {cfg.run_dir} ({diff}): its learning-rate schedule is "
        f"laid out over the {was} epoch(s) it was started with. To continue the run as it was, resume with its own "
        f"settings. To train on from its weights for {more} more epoch(s), start a new run from them: "
        f"`ltreg train --method {cfg.method} --dataset {cfg.dataset}{data} --backbone {run.model.config.backbone} "
        f"--init-from {cfg.run_dir} --epochs {more} --output-dir {cfg.run_dir}-more` (with the run's other flags)"
    )


def _resume(run: Run, log: RunLog, stage: int) -> int:
    """Load the latest checkpoint if it belongs to ``stage`` (or a later one); the epoch to start at.

    The stage and epoch come from the checkpoint's state record, not from its folder's name."""
    path = run.checkpoints.resume_point()
    if path is None:
        return 0
    stood = run.checkpoints.state(path)
    if stood.stage < stage:
        return 0
    if stood.stage > stage:  # this stage finished; the later stage loads the checkpoint
        return 10**9
    fingerprint = run_fingerprint(run)
    try:
        saved = run.checkpoints.load(path, run.stateful(), fingerprint)  # verified first, then compared
    except CheckpointError:  # damaged (named as is), or other settings: when only the length differs, say how
        Manifest.read(path, f"checkpoint {path}").verify(path, f"checkpoint {path}")
        check_same_length(run, TrainerState.read(path / TRAINER_STATE), fingerprint)
        raise
    log.history = list(saved.history)
    log.say(f"resumed from {path} (stage {saved.stage}, epoch {saved.epoch})")
    return saved.epoch


def stage_kind(name: str) -> StageKind:
    """The registered stage kind ``name`` (registry ``stages``)."""
    kind = registry("stages").get(name)
    if not isinstance(kind, StageKind):
        raise SpecError(f"stage kind {name!r} is a {type(kind).__name__}, not a StageKind; register a StageKind")
    return kind


def fit(run: Run) -> RunResult:
    """Train every stage, evaluate on the test split, save the model folder; returns the :class:`RunResult`."""
    acc, cfg = run.accelerator, run.cfg
    log = RunLog(run.run_dir, acc, quiet=cfg.quiet)
    counts = run.train_set.class_counts
    log.say(f"ltreg: {run.config.spec.name} on {cfg.dataset} ({len(run.train_set)} training images, "
            f"{run.train_set.num_classes} classes, counts {int(counts.max())}..{int(counts.min())}), backbone "
            f"{run.model.config.backbone}, {acc.num_processes} process(es) on {acc.device}")
    if run.data.summary:
        log.say(f"data: {run.data.summary}")
    log.say(f"views: {describe_views(training_views(run.config, run.parts), run.train_set)}")
    for note in run.config.notes:
        log.say(note)
    if cfg.log_with:
        acc.init_trackers(f"ltreg-{run.config.spec.name}", config={k: v for k, v in cfg.to_dict().items()
                                                                   if isinstance(v, (int, float, str, bool))})
    st1 = stage1_setup(run)
    trainable, total = run.counts
    log.say(f"{run.tuned.describe()}; stage 1 trains {trainable:,} of {total:,} parameters "
            f"({100.0 * trainable / max(total, 1):.2f} %, heads and parts included)")
    _train_stage(run, st1, log, _resume(run, log, 1) if cfg.resume else 0)
    stage2_info: dict[str, Any] = {}
    if run.config.spec.stage2 is not None:
        kind = stage_kind(run.config.spec.stage2.kind)
        st2 = kind.setup(run)
        if st2 is not None:
            _train_stage(run, st2, log, _resume(run, log, 2) if cfg.resume else 0)
        stage2_info = dict(kind.finish(run) or {})
    metrics = evaluate(run.passes, run.data.test, run.data.train, run.eval_views)
    metrics["stage2"] = stage2_info
    metrics = json_safe(metrics)  # None and a reason, never NaN: metrics.json and config.json stay valid JSON
    log.final(metrics)
    if acc.is_main_process:
        write_atomic(run.run_dir / METRICS_FILE, dumps(metrics), root=run.run_dir)  # strict: never NaN
        card: RunCard = run.card(metrics)
        D.unwrap(run.model).save_pretrained(run.run_dir, card)
        log.say(format_table(metrics, title=f"{run.config.spec.name} on {run.data.test.name} (top-1 %, test set)"))
        log.say(f"run folder: {run.run_dir}")
    acc.wait_for_everyone()
    for tracker in acc.trackers:  # not end_training(): it would tear down the process group
        tracker.finish()
    return RunResult(run.run_dir, metrics, log.history, run.model, cfg)
