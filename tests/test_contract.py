"""The plugin contract is data (issue 25): what a method needs from the core is declared on its spec.

* Views (:class:`ltreg.ViewPlan`: pipelines, count, modifiers, positives, query) and the second stage
  (:class:`ltreg.Stage`: kind, rebalancer, epochs) are typed fields, checked when a spec is made and when a
  run's hyper-parameters are known; a bad one is a :class:`ltreg.SpecError` naming the method and the field.
* View kinds, sampler roles and stage kinds are open registries: a plugin adds one in-process (or by entry
  point) and trains with it without editing the core.
* ``ltreg info`` shows the declared fields.
* ``--resume`` reads where the run stood from the checkpoint's state record, not from folder names: a renamed
  folder resumes bit-identically, a missing or corrupt record is a :class:`ltreg.ResumeStateError`.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

import ltreg
from ltreg import HParams, MethodSpec, PartRef, Pick, SpecError, Stage, ViewPlan, hp
from ltreg.cli import main
from tests.conftest import TINY

RUN = {"epochs": 2, "max_steps_per_epoch": 2, "batch_size": 32, "eval_batch_size": 512, "log_every": 2}


@dataclasses.dataclass(frozen=True)
class KnobHParams(HParams):
    n: int = dataclasses.field(default=2, metadata={"min": 0})
    first: str = "cls"
    erase: bool = False
    stage2_epochs: int = 3


def spec(**changes: object) -> MethodSpec:
    values: dict = {"name": "contract-probe", "summary": "s", "citation": "c", "loss": PartRef("ce"),
                    "hparams": KnobHParams()}
    return MethodSpec(**{**values, **changes})


# -- 1. views and stages are typed fields, resolved per run ---------------------------------------------
def test_view_plan_resolves_hp_pipelines_count_and_modifiers() -> None:
    s = spec(views=ViewPlan((hp("first"), "sim"), count=hp("n"), modifiers={"erase": hp("erase")}))
    assert s.views_for(s.hparams) == ("cls", "sim")
    assert s.views_for(s.hparams.replace(n=4, first="rand")) == ("rand", "sim", "sim", "sim")
    assert s.views_for(s.hparams.replace(n=1, erase=True)) == ("cls+erase",)
    picked = spec(views=ViewPlan((Pick(hp("first"), {"cls": "minimal", "big": "rand"}),)))
    assert picked.views_for(picked.hparams) == ("minimal",)
    assert picked.views_for(picked.hparams.replace(first="big")) == ("rand",)
    with pytest.raises(SpecError, match="no pipeline for first='other'"):
        picked.views_for(picked.hparams.replace(first="other"))
    assert spec(views=("rand", "sim")).views == ViewPlan(("rand", "sim"))  # a tuple is short for ViewPlan(...)


def test_stage_epochs_hp_is_what_the_stage2_flag_sets() -> None:
    from ltreg.config import resolve_config

    s = spec(stage2=Stage(PartRef("crt"), epochs=hp("stage2_epochs")))
    assert s.stages == 2 and s.rebalance == PartRef("crt") and s.stage2_epochs(s.hparams) == 3
    rc = resolve_config(s, {"stage2_epochs": 7})
    assert rc.hparams.stage2_epochs == 7 and rc.cfg.stage2_epochs is None  # one value, recorded once
    assert spec(stage2=Stage(PartRef("crt"))).stage2_epochs(KnobHParams()) is None  # the rebalancer's default


@pytest.mark.parametrize("changes, words", [
    ({"views": ViewPlan(())}, "views.pipelines"),
    ({"views": ViewPlan(("cls",), count=0)}, "views.count"),
    ({"views": ViewPlan(("cls",), modifiers={"erase": "yes"})}, "views.modifiers"),
    ({"views": ViewPlan(("cls",), query=(-1,))}, "views.query"),
    ({"views": ["cls"]}, "must be a ViewPlan"),
    ({"views": ViewPlan((Pick(hp("first"), {}),))}, "views.pipelines"),
    ({"stage2": PartRef("crt")}, "must be a Stage"),
    ({"stage2": Stage(PartRef("crt"), epochs=-1)}, "stage2.epochs"),
    ({"stage2": Stage(PartRef("crt"), epochs=hp("no_such"))}, "stage2.epochs"),
    ({"stage2": Stage(PartRef("crt", epochs=4))}, "Stage(epochs=...)"),
])
def test_invalid_declared_fields_are_refused_when_the_spec_is_made(changes: dict, words: str) -> None:
    with pytest.raises(SpecError, match="contract-probe") as info:
        spec(**changes)
    assert words in str(info.value)


@pytest.mark.parametrize("changes, hparams, words", [
    ({"views": ViewPlan(("cls", "blurry"))}, {}, "view kind 'blurry', which is not registered"),
    ({"views": ViewPlan(("cls+nope",))}, {}, "view kind 'nope'"),
    ({"views": ViewPlan((hp("missing"),))}, {}, "has no hyper-parameter 'missing'"),
    ({"views": ViewPlan(("cls",), count=hp("n"))}, {"n": 0}, "must be an int >= 1"),
    ({"views": ViewPlan(("cls", "sim"), query=(2,))}, {}, "past the 2 views"),
    ({"stage2": Stage(PartRef("crt"), kind="distill")}, {}, "stage kind 'distill' is not registered"),
])
def test_invalid_fields_under_a_run_s_hparams_stop_before_anything_is_built(
        changes: dict, hparams: dict, words: str, tmp_path: Path) -> None:
    from ltreg.config import resolve_config

    with pytest.raises(SpecError, match=words):
        resolve_config(spec(**changes), {"hparams": hparams, "output_dir": str(tmp_path / "run")})
    assert not (tmp_path / "run").exists()


def test_no_plugin_subclasses_method_spec() -> None:
    """Every installed method is a plain MethodSpec: what it needs is in its fields, not in overridden code."""
    for row in ltreg.list_methods():
        assert not row["error"], row
        assert type(ltreg.get_method(row["name"])) is MethodSpec, row["name"]


# -- 2. view kinds, sampler roles and stage kinds are open registries ------------------------------------
class TwinSampler(ltreg.LabelSampler):
    """Records ``(i, j)`` with ``j`` the next image of the permutation: role ``twin``."""

    extra_role = "twin"

    def __len__(self) -> int:
        return self.targets.numel()

    def epoch_indices(self) -> torch.Tensor:
        perm = torch.randperm(self.targets.numel(), generator=self._generator())
        return torch.stack([perm, perm.roll(1)], 1)


def twin_role(views: ltreg.ViewDataset, extra: list[int]) -> dict:
    (j,) = extra
    return {"twin_index": j, "twin_view": views.load(j, views.pipelines[:1], 1)[0]}


@pytest.fixture
def plugin_parts() -> Iterator[dict]:
    """A view kind, a sampler role, a sampler and a stage kind registered in-process, as a plugin would."""
    from torchvision.transforms import v2

    seen: dict = {"stage": []}
    upside_down = ltreg.ViewKind(lambda data: [v2.RandomVerticalFlip(p=1.0)], help="vertical flip")

    def setup(run: object) -> None:
        seen["stage"].append("setup")
        return None  # trains nothing: a post-hoc kind

    def finish(run: object) -> dict:
        seen["stage"].append("finish")
        return {"probe": 1}

    ltreg.register_view("upside-down", upside_down)
    ltreg.register_sampler_role("twin", twin_role)
    ltreg.register_sampler("twin", TwinSampler)
    ltreg.register_stage("probe-stage", ltreg.StageKind(setup, finish))
    try:
        yield seen
    finally:
        for group, name in (("views", "upside-down"), ("sampler_roles", "twin"), ("samplers", "twin"),
                            ("stages", "probe-stage")):
            ltreg.registry(group).unregister(name)


def test_a_plugin_adds_a_view_kind_a_sampler_role_and_a_stage_kind_in_process(plugin_parts: dict,
                                                                               tmp_path: Path) -> None:
    from ltreg.config import resolve_config
    from ltreg.run import build_run
    from ltreg.stages import make_loader

    probe = spec(views=ViewPlan(("upside-down", "cls")), sampler=PartRef("twin"),
                 stage2=Stage(PartRef("tau-norm"), kind="probe-stage"))
    rc = resolve_config(probe, {**TINY, "output_dir": str(tmp_path / "run"), "epochs": 1, "max_steps_per_epoch": 2})
    run = build_run(rc)
    loader = make_loader(run, probe.views_for(rc.hparams), run.parts.sampler, 8, 1)
    batch = next(iter(loader))
    assert batch.images.shape[:2] == (8, 2) and set(batch.extra) == {"twin_index", "twin_view"}
    assert batch.extra["twin_view"].shape == batch.images[:, 0].shape
    vds = loader.view_dataset
    i = int(batch.index[0])  # view 0 is image i upside down (only the flip is random-free: compare the rows)
    flipped = vds.load(i, vds.pipelines[:1], 0)[0]
    assert torch.equal(flipped, batch.images[0, 0]) and not torch.equal(flipped, flipped.flip(-2))
    assert int(batch.extra["twin_index"][0]) != i
    assert "sampler role twin" in probe.describe() and "stage 2    probe-stage: tau-norm()" in probe.describe()

    ltreg.register_method(probe)
    try:
        out = ltreg.train("contract-probe", **{**TINY, "epochs": 1, "max_steps_per_epoch": 2},
                          output_dir=str(tmp_path / "trained"))
    finally:
        ltreg.registry("methods").unregister("contract-probe")
    assert plugin_parts["stage"] == ["setup", "finish"] and out.metrics["stage2"] == {"probe": 1}
    assert [r["stage"] for r in out.history] == [1]


def test_an_unregistered_sampler_role_is_a_named_error() -> None:
    from ltreg.config import resolve_config
    from ltreg.data.build import build_data
    from ltreg.data.views import ViewDataset
    from ltreg.errors import UnknownNameError

    train = build_data(resolve_config(ltreg.get_method("ce"), {"dataset": "digits-lt"}).cfg.data_args()).train
    with pytest.raises(UnknownNameError, match="unknown sampler role 'twin'.*pair"):
        ViewDataset(train, ("cls",), role="twin")


# -- 3. ltreg info shows the declared fields ---------------------------------------------------------
@pytest.mark.parametrize("method, lines", [
    ("acl", ["  views      rand, sim  (pipelines hp.augment, sim; count hp.num_views; positives sim; query all)",
             "  sampler role -", "  stage 2    -"]),
    ("iccl", ["  views      cls  (pipelines cls; modifiers +jitter if hp.colour_jitter; positives sim; query all)",
              "  sampler role pair", "  stage 2    rebalance: kd-rebalance(gamma=hp.stage2_gamma"]),
    ("cogloat", ["  sampler role positives", "epochs hp.stage2_epochs = 100"]),
    ("rebsupcon", ["(pipelines rand, sim; positives sim; query 0)", "  stage 2    rebalance: crt(reinit=hp.stage2_reinit)"]),
])
def test_ltreg_info_shows_views_sampler_role_and_stage2(method: str, lines: list[str],
                                                        capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["info", method]) == 0
    out = capsys.readouterr().out
    for line in lines:
        assert line in out, out


# -- 4. resume reads the state record, not folder names ------------------------------------------------
def interrupted_run(folder: Path, method: str, after_epochs: int, monkeypatch: pytest.MonkeyPatch,
                    **settings: object) -> None:
    """Train ``method`` into ``folder`` and stop it (KeyboardInterrupt) after ``after_epochs`` checkpointed epochs."""
    from ltreg import loop as loop_module
    from ltreg.config import resolve_config
    from ltreg.trainer import Trainer

    trainer = Trainer(resolve_config(ltreg.get_method(method), {**settings, "output_dir": str(folder)}))
    original, calls = loop_module.run_epoch, {"n": 0}

    def stop(*args: object, **kwargs: object) -> dict:
        if calls["n"] == after_epochs:
            raise KeyboardInterrupt
        calls["n"] += 1
        return original(*args, **kwargs)

    monkeypatch.setattr(loop_module, "run_epoch", stop)
    with pytest.raises(KeyboardInterrupt):
        trainer.fit()
    monkeypatch.undo()


def test_a_renamed_checkpoint_folder_resumes_from_its_state_record(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                                  capsys: pytest.CaptureFixture[str]) -> None:
    """``stage1-epoch-1`` renamed ``stage2-epoch-5``: the record says stage 1, epoch 1, and the run continues there
    (reading the name would skip stage 1 and the second epoch); the weights equal an uninterrupted run's."""
    full = ltreg.train("logit-adjust", output_dir=str(tmp_path / "full"), **RUN)
    part = tmp_path / "part"
    interrupted_run(part, "logit-adjust", 1, monkeypatch, **RUN)
    ck = part / "checkpoints"
    state = json.loads((ck / "stage1-epoch-1" / "trainer_state.json").read_text())
    assert (state["stage"], state["epoch"], state["step"]) == (1, 1, 2)
    (ck / "stage1-epoch-1").rename(ck / "stage2-epoch-5")
    (ck / "latest").write_text("stage2-epoch-5")
    capsys.readouterr()
    resumed = ltreg.train("logit-adjust", output_dir=str(part), resume=True, **RUN)
    out = capsys.readouterr().out
    assert f"resumed from {ck / 'stage2-epoch-5'} (stage 1, epoch 1)" in out and "stage 1 epoch   2" in out, out
    for key, value in full.model.state_dict().items():
        torch.testing.assert_close(resumed.model.state_dict()[key], value, rtol=0, atol=0, msg=key)
    assert [r["loss"] for r in full.history] == [r["loss"] for r in resumed.history]


@pytest.mark.parametrize("damage", ["missing", "not json", "stage as text", "no epoch"])
def test_a_missing_or_corrupt_state_record_is_a_named_error(damage: str, tmp_path: Path,
                                                            monkeypatch: pytest.MonkeyPatch,
                                                            capsys: pytest.CaptureFixture[str]) -> None:
    part = tmp_path / "part"
    interrupted_run(part, "logit-adjust", 1, monkeypatch, **RUN)
    record = part / "checkpoints" / "stage1-epoch-1" / "trainer_state.json"
    state = json.loads(record.read_text())
    if damage == "missing":
        record.unlink()
    elif damage == "not json":
        record.write_text("{stage: 1")
    elif damage == "stage as text":
        record.write_text(json.dumps({**state, "stage": "1"}))
    else:
        record.write_text(json.dumps({k: v for k, v in state.items() if k != "epoch"}))
    capsys.readouterr()
    argv = ["train", "--method", "logit-adjust", "--output-dir", str(part), "--resume",
            *[x for k, v in RUN.items() for x in ("--" + k.replace("_", "-"), str(v))]]
    code = main(argv)
    out, err = capsys.readouterr()
    assert code == 1, out[-2000:] + err[-2000:]
    assert "Traceback" not in err and f"the state record {record}" in err and "missing or corrupt" in err, err
    assert "stage 1 epoch" not in out and "resumed from" not in out
