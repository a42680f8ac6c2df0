"""Optimizers (timm's factory), parameter groups, layer decay and learning-rate schedules."""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

import ltreg
from ltreg.cli import build_parser
from ltreg.config import TrainConfig, resolve_config
from ltreg.errors import ConfigError
from ltreg.models.ltmodel import LTModel, LTModelConfig
from ltreg.optim import OptimSettings, build_optimizer, lr_schedule, param_groups, split_decay

OPTIMIZERS = {"sgd": "SGD", "nesterov": "SGD", "adamw": "AdamW", "adam": "Adam", "lamb": "Lamb", "lars": "Lars",
              "lion": "Lion"}


def lr_factor(total: int, steps_per_epoch: int, warmup_epochs: int, schedule: str, milestones: list[int],
              decay: float) -> Callable[[int], float]:
    """ltreg 0.1's schedule (warm-up, then cosine / step / constant): the default must equal it to the bit."""
    warm = warmup_epochs * steps_per_epoch

    def factor(step: int) -> float:
        if step < warm:
            return (step + 1) / warm
        if schedule == "cosine":
            return 0.5 * (1 + math.cos(math.pi * min(1.0, (step - warm) / max(1, total - warm))))
        if schedule == "step":
            return decay ** sum(step // max(1, steps_per_epoch) >= m for m in milestones)
        return 1.0

    return factor


def small_model() -> LTModel:
    torch.manual_seed(0)
    return LTModel(LTModelConfig(backbone="resnet8", num_classes=5, in_chans=1, proj_dim=8))


@pytest.mark.parametrize("name", sorted(OPTIMIZERS))
def test_each_optimizer_builds_and_takes_a_step(name: str) -> None:
    model = small_model()
    settings = OptimSettings(name=name, lr=0.01, weight_decay=1e-4)
    opt = build_optimizer(param_groups(model, list(model.parameters()), settings), settings)
    assert type(opt).__name__ == OPTIMIZERS[name]
    if name == "nesterov":
        assert opt.param_groups[0]["nesterov"] is True
    before = model.classifier.weight.detach().clone()
    out = model(torch.randn(4, 1, 8, 8))
    torch.nn.functional.cross_entropy(out.logits[:, 0], torch.tensor([0, 1, 2, 3])).backward()
    opt.step()
    assert not torch.equal(before, model.classifier.weight)


def test_default_is_exactly_the_sgd_ltreg_always_built() -> None:
    cfg = TrainConfig()
    model = small_model()
    params = list(model.parameters())
    settings = OptimSettings.stage1(cfg)
    opt = build_optimizer(param_groups(model, params, settings), settings)
    assert type(opt) is torch.optim.SGD and len(opt.param_groups) == 1
    g = opt.param_groups[0]
    assert (g["lr"], g["momentum"], g["weight_decay"], g["nesterov"]) == (cfg.lr, cfg.momentum, cfg.weight_decay, False)
    assert g["params"] == params  # same order: the optimizer state of old checkpoints still fits
    # the default schedule is ltreg's old lr_factor, to the last bit
    for warmup, schedule, milestones in ((0, "cosine", []), (2, "cosine", []), (1, "step", [2, 3]), (0, "constant", [])):
        old = lr_factor(50, 10, warmup, schedule, milestones, 0.1)
        new = lr_schedule(50, 10, schedule=schedule, warmup_epochs=warmup, milestones=milestones, decay=0.1, base_lr=0.05)
        assert [old(i) for i in range(52)] == [new(i) for i in range(52)]


def test_schedule_shapes() -> None:
    total, spe = 100, 10
    warm = lr_schedule(total, spe, schedule="cosine", warmup_epochs=2, base_lr=0.1, warmup_lr=0.01)
    rise = [warm(i) for i in range(20)]
    assert rise[0] == pytest.approx(0.1 + 0.9 / 20) and rise[19] == 1.0
    assert all(b > a for a, b in zip(rise, rise[1:]))  # linear warm-up from warmup_lr / lr
    assert warm(total) == pytest.approx(0.0, abs=1e-12)  # cosine ends at 0
    floor = lr_schedule(total, spe, schedule="cosine", base_lr=0.1, min_lr=0.001)
    assert floor(total) == pytest.approx(0.01) and floor(0) == 1.0
    one = lr_schedule(total, spe, schedule="onecycle", base_lr=0.1, onecycle_pct=0.25)
    values = [one(i) for i in range(total)]
    assert values[0] == pytest.approx(1 / 25) and max(values) == 1.0 and values.index(1.0) == 25
    assert values[-1] == pytest.approx(0.0, abs=1e-12)
    step = lr_schedule(total, spe, schedule="step", milestones=[3, 6], decay=0.1)
    assert (step(29), step(30), step(60)) == (1.0, 0.1, pytest.approx(0.01))
    poly = lr_schedule(total, spe, schedule="poly", poly_power=2.0)
    assert poly(50) == pytest.approx(0.25) and poly(total) == 0.0
    assert math.isclose(lr_schedule(total, spe, schedule="constant")(77), 1.0)


def test_layer_decay_gives_early_layers_smaller_lr_and_skips_decay_on_norms() -> None:
    model = small_model()
    settings = OptimSettings(name="adamw", lr=0.1, weight_decay=0.05, layer_decay=0.5, skip_norm_bias=True)
    opt = build_optimizer(param_groups(model, list(model.parameters()), settings), settings)
    lr_of = {id(p): g["lr"] for g in opt.param_groups for p in g["params"]}
    wd_of = {id(p): g["weight_decay"] for g in opt.param_groups for p in g["params"]}
    b = model.backbone
    lrs = [lr_of[id(b.conv1.weight)], lr_of[id(b.layer1[0].conv1.weight)], lr_of[id(b.layer3[0].conv1.weight)],
           lr_of[id(model.classifier.weight)]]
    assert lrs == pytest.approx([0.1 * 0.5**4, 0.1 * 0.5**3, 0.1 * 0.5, 0.1])  # stem < blocks < heads
    assert wd_of[id(b.bn1.weight)] == 0.0 and wd_of[id(model.classifier.bias)] == 0.0
    assert wd_of[id(b.conv1.weight)] == 0.05 and wd_of[id(model.classifier.weight)] == 0.05
    wrapped = torch.nn.Module()
    wrapped.module = model  # as DDP / Accelerate wrap it: the same groups
    again = param_groups(wrapped, list(model.parameters()), settings)
    assert [(g["lr"], len(g["params"])) for g in again] == [(g["lr"], len(g["params"])) for g in opt.param_groups]
    # stage 2 groups keep their lr_scale and split off the 1-d tensors
    groups = split_decay([{"params": [model.classifier.weight, model.classifier.bias], "lr": 0.2}],
                         OptimSettings(weight_decay=0.05, skip_norm_bias=True))
    assert [(len(g["params"]), g["weight_decay"], g["lr"]) for g in groups] == [(1, 0.05, 0.2), (1, 0.0, 0.2)]


def test_settings_are_validated_with_the_flag_and_the_fix() -> None:
    bad = [
        ({"optimizer": "adamx"}, r"optimizer 'adamx' is not an optimizer.*adamw"),
        ({"optimizer": "adamw", "nesterov": True}, "nesterov applies to --optimizer sgd.*drop --nesterov"),
        ({"opt_betas": [0.9, 0.99]}, "opt_betas is not used by --optimizer sgd"),
        ({"optimizer": "adamw", "stage2_optimizer": "adamw", "momentum": 0.8},
         "momentum=0.8 is not used by --optimizer adamw nor --stage2-optimizer adamw"),
        ({"optimizer": "adamw", "opt_betas": [0.9]}, r"--opt-betas \(opt_betas\) must be two numbers"),
        ({"layer_decay": 1.5}, r"--layer-decay \(layer_decay\) must be in \(0, 1\]"),
        ({"layer_decay": float("nan")}, r"--layer-decay \(layer_decay\) must be in \(0, 1\]"),
        ({"schedule": "onecycle", "warmup_epochs": 5}, "onecycle has its own warm-up.*--warmup-epochs 0"),
        ({"warmup_lr": 0.001}, "warmup_lr=0.001 needs a warm-up"),
        ({"schedule": "step", "min_lr": 0.001}, "min_lr applies to schedule cosine"),
        ({"schedule": "linear"}, "schedule must be one of cosine, step, constant, onecycle, poly"),
        ({"stage2_optimizer": "adamq"}, "stage2_optimizer 'adamq'"),
    ]
    for values, match in bad:
        with pytest.raises(ConfigError, match=match):
            TrainConfig(**values)
    args = build_parser().parse_args(["train", "--optimizer", "adamw", "--opt-betas", "0.9,0.95", "--layer-decay",
                                      "0.75", "--schedule", "onecycle", "--wd-skip-norm-bias"])
    overrides = {k: v for k, v in vars(args).items() if k in TrainConfig.__dataclass_fields__}
    cfg = resolve_config(ltreg.get_method("ce"), overrides).cfg
    assert (cfg.optimizer, cfg.opt_betas, cfg.layer_decay, cfg.schedule, cfg.wd_skip_norm_bias) == (
        "adamw", [0.9, 0.95], 0.75, "onecycle", True)


def test_recipe_table_and_fingerprint_name_the_optimizer() -> None:
    items = TrainConfig(optimizer="adamw", opt_betas=[0.9, 0.95], layer_decay=0.7).recipe_items()
    assert items["optimizer"] == "adamw" and items["opt_betas"] == [0.9, 0.95] and items["layer_decay"] == 0.7
    assert "nesterov" not in items and items["momentum"] == 0.9  # momentum: stage 2's SGD uses it
    items = TrainConfig(optimizer="adamw", stage2_optimizer="adamw").recipe_items()
    assert "momentum" not in items and "nesterov" not in items  # used by neither stage: not shown as if it were
    assert TrainConfig().recipe_items()["optimizer"] == "sgd"
    assert TrainConfig(optimizer="adamw").fingerprint()["optimizer"] == "adamw"  # a resume must match it


def test_short_run_trains_with_adamw_layer_decay_and_onecycle(tmp_path: Path) -> None:
    out = tmp_path / "run"
    ltreg.train("ce", epochs=1, max_steps_per_epoch=2, batch_size=32, eval_batch_size=512, optimizer="adamw",
                lr=0.001, weight_decay=0.05, layer_decay=0.8, schedule="onecycle", wd_skip_norm_bias=True,
                output_dir=str(out))
    card = (out / "README.md").read_text()
    for row in ("| optimizer | adamw |", "| layer_decay | 0.8 |", "| schedule | onecycle |", "| wd_skip_norm_bias | True |"):
        assert row in card
    saved = sorted(out.glob("checkpoints/*/optimizer*.bin"))
    assert saved, sorted(p.relative_to(out) for p in out.rglob("*"))
    state = torch.load(saved[-1], map_location="cpu", weights_only=True)
    assert all("exp_avg_sq" in s for s in state["state"].values())  # AdamW's moments, not SGD's momentum buffer
    lrs = sorted({g["initial_lr"] for g in state["param_groups"]})
    assert len(lrs) > 2 and max(lrs) == pytest.approx(0.001) and min(lrs) < 0.001 * 0.8**3


def test_stage2_uses_its_own_optimizer(tmp_path: Path) -> None:
    out = tmp_path / "two"
    ltreg.train("supcon", epochs=1, max_steps_per_epoch=2, batch_size=32, eval_batch_size=512, stage2_epochs=1,
                stage2_optimizer="adamw", stage2_lr=0.001, output_dir=str(out))
    saved = sorted(out.glob("checkpoints/stage2-*/optimizer*.bin"))
    assert saved, sorted(str(p.relative_to(out)) for p in out.rglob("*"))
    state = torch.load(saved[-1], map_location="cpu", weights_only=True)
    assert state["state"] and all("exp_avg" in s for s in state["state"].values())
    assert "| stage2_optimizer | adamw |" in (out / "README.md").read_text()
