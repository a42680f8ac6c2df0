"""Run folders and checkpoints (issue 20): nothing outside a run folder is ever removed or written, an
existing run is never overwritten unasked, ``--resume`` continues only the run it was asked to (same
settings, valid pointer, verified files), a full disk and a kill lose nothing but the current epoch,
and a run that fails on its data or model leaves no folder behind.

Real runs on the embedded digits-LT data with a tiny budget; CLI subprocesses where the exit status
and the message are the guarantee, ``ltreg.cli.main`` in-process where a fault is injected.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import struct
import subprocess
import zipfile
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import ltreg
from ltreg.cli import main
from tests.conftest import LTREG

#: One epoch of logit-adjust on digits-LT, 2 steps: a finished run with one checkpoint (a method with a
#: hyper-parameter, so that ``--hp`` changes the fingerprint).
RUN = {"epochs": 1, "max_steps_per_epoch": 2, "batch_size": 32, "eval_batch_size": 512, "log_every": 2}
METHOD = "logit-adjust"


def flags(values: dict) -> list[str]:
    return [x for k, v in values.items() for x in ("--" + k.replace("_", "-"), str(v))]


def train_argv(run: Path, *extra: str, method: str = METHOD, **changes: object) -> list[str]:
    return ["train", "--method", method, "--output-dir", str(run), *flags({**RUN, **changes}), *extra]


def cli(argv: list[str], env: dict, cwd: Path) -> subprocess.CompletedProcess:
    """``ltreg ARGV`` in a subprocess, from ``cwd`` (not the repository: nothing may land there)."""
    return subprocess.run(LTREG + argv, env=env, cwd=cwd, capture_output=True, text=True, timeout=300)


def in_process(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    code = main(argv)
    out, err = capsys.readouterr()
    return code, out, err


def snapshot(folder: Path) -> dict[str, bytes | str]:
    """Every entry under ``folder``: file bytes, or the target of a symbolic link (never followed)."""
    out: dict[str, bytes | str] = {}
    for path in sorted(folder.rglob("*")):
        rel = str(path.relative_to(folder))
        if rel == ".ltreg.lock":  # the lock's note of its last holder (its pid), not run data
            continue
        if path.is_symlink():
            out[rel] = "-> " + os.readlink(path)
        elif path.is_file():
            out[rel] = path.read_bytes()
    return out


def one_paragraph(err: str) -> str:
    """The CLI's error: one ``ltreg: error:`` paragraph on stderr, no traceback; returns it."""
    assert "Traceback" not in err, err[-3000:]
    lines = [line for line in err.strip().splitlines() if line.strip()]
    assert lines and lines[-1].startswith("ltreg: error: "), err[-3000:]
    return lines[-1]


def flip_tensor_byte(path: Path) -> None:
    """Flip one bit in the middle of the tensor data (not the header) of a safetensors or torch zip file."""
    data = bytearray(path.read_bytes())
    if path.suffix == ".safetensors":
        (header,) = struct.unpack("<Q", data[:8])
        start, size = 8 + header, len(data) - 8 - header
    else:  # a torch zip: the largest stored record is tensor data
        with zipfile.ZipFile(path) as zf:
            info = max(zf.infolist(), key=lambda i: i.file_size)
        assert info.compress_type == zipfile.ZIP_STORED
        name_len, extra_len = struct.unpack("<HH", data[info.header_offset + 26:info.header_offset + 30])
        start, size = info.header_offset + 30 + name_len + extra_len, info.file_size
    assert size > 0
    data[start + size // 2] ^= 0x01
    path.write_bytes(bytes(data))


def assert_same_weights(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=0, atol=0, msg=key)


@pytest.fixture(scope="module")
def finished(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A finished run folder (model files, checkpoints/stage1-epoch-1, latest); tests damage copies of it."""
    out = tmp_path_factory.mktemp("finished") / "run"
    ltreg.train(METHOD, output_dir=str(out), **RUN)
    assert (out / "checkpoints" / "latest").read_text().strip() == "stage1-epoch-1"
    assert (out / "model.safetensors").is_file()
    return out


@pytest.fixture
def run_copy(finished: Path, tmp_path: Path) -> Path:
    run = tmp_path / "run"
    shutil.copytree(finished, run, symlinks=True)
    return run


def image_folder(root: Path, classes: int = 3, per_class: int = 6) -> Path:
    """A small RGB image folder: another data set (other class and channel counts than digits-LT)."""
    from PIL import Image

    g = torch.Generator().manual_seed(0)
    for c in range(classes):
        (root / f"c{c}").mkdir(parents=True)
        for i in range(per_class):
            pixels = (torch.rand(12, 12, 3, generator=g) * 255).to(torch.uint8).numpy()
            Image.fromarray(pixels).save(root / f"c{c}" / f"{i}.png")
    return root


# -- 1. the latest pointer is a name, never a path ------------------------------------------------------
@pytest.mark.parametrize("how", ["absolute", "relative", "symlink", "checkpoint-like"])
def test_latest_pointer_cannot_reach_outside_the_run_folder(run_copy: Path, tmp_path: Path, subprocess_env: dict,
                                                           how: str) -> None:
    victim = tmp_path / "VICTIM"
    ck = run_copy / "checkpoints"
    epochs = 1
    if how == "checkpoint-like":  # a folder that loads as a checkpoint: resumed from, then deleted as "previous"
        shutil.copytree(ck / "stage1-epoch-1", victim)
        epochs = 2
    else:
        victim.mkdir()
    (victim / "precious.txt").write_text("keep me")
    kept = snapshot(victim)
    if how in ("absolute", "checkpoint-like"):
        (ck / "latest").write_text(f"{victim}\n")
    elif how == "relative":
        (ck / "latest").write_text("../../VICTIM\n")
    else:  # a symbolic link named like a checkpoint, pointing outside; the real checkpoint is gone
        shutil.rmtree(ck / "stage1-epoch-1")
        (ck / "stage1-epoch-1").symlink_to(victim, target_is_directory=True)
    def outside() -> dict[str, bytes | str]:  # everything next to the run folder (hf/: the subprocess's cache)
        return {k: v for k, v in snapshot(tmp_path).items() if not k.startswith(("run/", "hf/"))}

    before = outside()
    proc = cli(train_argv(run_copy, "--resume", epochs=epochs), subprocess_env, tmp_path)
    assert victim.is_dir() and snapshot(victim) == kept, proc.stderr[-2000:]
    assert outside() == before  # nothing removed or written outside the run folder
    assert proc.returncode == 1, proc.stdout[-2000:]
    msg = one_paragraph(proc.stderr)
    assert "pointer" in msg and str(ck / "latest") in msg and "--overwrite" in msg, msg
    assert "stage 1 epoch" not in proc.stdout  # stopped before training


# -- 2. an existing run is never overwritten unasked ---------------------------------------------------
def test_rerun_into_a_finished_run_folder_needs_resume_or_overwrite(run_copy: Path, tmp_path: Path,
                                                                    subprocess_env: dict) -> None:
    before = snapshot(run_copy)
    proc = cli(train_argv(run_copy), subprocess_env, tmp_path)
    assert proc.returncode != 0
    msg = one_paragraph(proc.stderr)
    assert str(run_copy) in msg and all(f in msg for f in ("--resume", "--overwrite", "--output-dir")), msg
    assert "stage 1 epoch" not in proc.stdout
    assert snapshot(run_copy) == before  # model files and checkpoints byte-identical

    proc = cli(train_argv(run_copy, "--resume", "--overwrite"), subprocess_env, tmp_path)
    assert proc.returncode == 2
    msg = one_paragraph(proc.stderr)
    assert "--resume" in msg and "--overwrite" in msg, msg
    assert snapshot(run_copy) == before

    (run_copy / "checkpoints" / "stage1-epoch-7").mkdir()  # an old run's stale checkpoint
    (run_copy / "notes.txt").write_text("mine")  # not a run file: kept
    proc = cli(train_argv(run_copy, "--overwrite"), subprocess_env, tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "stage 1 epoch   1" in proc.stdout and "resumed from" not in proc.stdout  # started over
    assert sorted(p.name for p in (run_copy / "checkpoints").iterdir()) == ["latest", "stage1-epoch-1"]
    assert (run_copy / "notes.txt").read_text() == "mine"
    assert len((run_copy / "metrics.csv").read_text().strip().splitlines()) == 2  # header + one epoch


# -- 3. --resume continues only the run it was asked to ------------------------------------------------
@pytest.mark.parametrize("change, key", [
    ({"method": "ce"}, "method"),
    ({"lr": 0.01}, "lr"),
    ({"imbalance": 20}, "imbalance"),
    ({"seed": 1}, "seed"),
    ({"hp": "tau=2.0"}, "hparams"),
])
def test_resume_with_other_settings_names_the_difference(run_copy: Path, capsys: pytest.CaptureFixture[str],
                                                        change: dict, key: str) -> None:
    before = snapshot(run_copy)
    change = dict(change)
    method = change.pop("method", METHOD)
    extra = ["--hp", change.pop("hp")] if "hp" in change else []
    code, out, err = in_process(train_argv(run_copy, "--resume", *extra, method=method, **change), capsys)
    assert code == 1, out[-2000:]
    msg = one_paragraph(err)
    assert "other settings" in msg and f"{key}:" in msg and "--output-dir" in msg, msg
    assert "stage 1 epoch" not in out
    assert snapshot(run_copy) == before


def test_resume_on_another_data_set_is_a_named_error(run_copy: Path, tmp_path: Path,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    root = image_folder(tmp_path / "imgs")
    argv = train_argv(run_copy, "--resume", "--dataset", "imagefolder-lt", "--data-root", str(root), batch_size=4)
    code, out, err = in_process(argv, capsys)
    assert code == 1, out[-2000:] + err[-2000:]
    msg = one_paragraph(err)
    assert "other settings" in msg and "dataset:" in msg, msg


def test_resume_with_other_tensor_shapes_is_a_named_error_not_a_size_mismatch(
        run_copy: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Even when the recorded settings were edited to match, 3 RGB classes do not load into 10 grey ones."""
    from ltreg.config import resolve_config
    from ltreg.files import write_manifest

    root = image_folder(tmp_path / "imgs")
    overrides = {**RUN, "batch_size": 4, "dataset": "imagefolder-lt", "data_root": str(root),
                 "output_dir": str(run_copy), "resume": True}
    cfg = resolve_config(ltreg.get_method(METHOD), overrides).cfg
    ck = run_copy / "checkpoints" / "stage1-epoch-1"
    state = json.loads((ck / "trainer_state.json").read_text())
    state["fingerprint"] = json.loads(json.dumps(cfg.fingerprint(), default=str))
    (ck / "trainer_state.json").write_text(json.dumps(state))
    write_manifest(ck, "checkpoint")
    argv = train_argv(run_copy, "--resume", "--dataset", "imagefolder-lt", "--data-root", str(root), batch_size=4)
    code, out, err = in_process(argv, capsys)
    assert code == 1, out[-2000:] + err[-2000:]
    msg = one_paragraph(err)
    assert "does not fit this run's model" in msg and "classifier" in msg and str(ck) in msg, msg
    assert len(err.strip().splitlines()) == 1, err


# -- 4. a missing pointer is not a fresh start ----------------------------------------------------------
@pytest.mark.parametrize("pointer", [None, "stage1-epoch-9", "stage1-epoch-1/../../x"])
def test_resume_with_checkpoints_but_no_valid_latest_pointer_stops(run_copy: Path, capsys: pytest.CaptureFixture[str],
                                                                   pointer: str | None) -> None:
    latest = run_copy / "checkpoints" / "latest"
    latest.unlink()
    if pointer is not None:
        latest.write_text(pointer)
    before = snapshot(run_copy)
    code, out, err = in_process(train_argv(run_copy, "--resume"), capsys)
    assert code == 1, out[-2000:]
    msg = one_paragraph(err)
    assert "stage1-epoch-1" in msg and f"echo stage1-epoch-1 > {latest}" in msg and "--overwrite" in msg, msg
    assert "stage 1 epoch" not in out
    assert snapshot(run_copy) == before  # the checkpoints are still there


# -- 5. corruption is detected before training or inference ---------------------------------------------
@pytest.mark.parametrize("name", ["ltreg_state.safetensors", "optimizer.bin", "model.safetensors"])
def test_flipped_byte_in_a_checkpoint_is_named_on_resume(run_copy: Path, capsys: pytest.CaptureFixture[str],
                                                         name: str) -> None:
    ck = run_copy / "checkpoints" / "stage1-epoch-1"
    flip_tensor_byte(ck / name)
    code, out, err = in_process(train_argv(run_copy, "--resume"), capsys)
    assert code == 1, out[-2000:]
    msg = one_paragraph(err)
    assert f"{name} does not match its SHA-256" in msg and str(ck) in msg, msg
    assert "stage 1 epoch" not in out and "resumed from" not in out


def test_flipped_byte_in_the_run_folder_model_is_named_on_load_and_eval(run_copy: Path,
                                                                         capsys: pytest.CaptureFixture[str]) -> None:
    from ltreg.errors import CheckpointError

    ltreg.from_pretrained(run_copy)  # intact: loads
    flip_tensor_byte(run_copy / "model.safetensors")
    with pytest.raises(CheckpointError, match="model.safetensors does not match its SHA-256"):
        ltreg.from_pretrained(run_copy)
    code, out, err = in_process(["eval", str(run_copy)], capsys)
    assert code == 1
    msg = one_paragraph(err)
    assert "model.safetensors does not match its SHA-256" in msg and str(run_copy) in msg, msg
    assert "| All" not in out


# -- 6. a full disk mid-run keeps the previous checkpoint ------------------------------------------------
def test_disk_full_at_the_second_checkpoint_keeps_the_first_resumable(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                                      capsys: pytest.CaptureFixture[str]) -> None:
    import ltreg.checkpoint

    three = {"epochs": 3}
    full = ltreg.train(METHOD, output_dir=str(tmp_path / "full"), **{**RUN, **three})
    run = tmp_path / "run"
    real, calls = ltreg.checkpoint.save_file, {"n": 0}

    def filling(tensors: dict, filename: str, *args: object, **kwargs: object) -> None:
        calls["n"] += 1
        if calls["n"] == 2:
            real(tensors, filename, *args, **kwargs)  # part of the file is written, then the disk is full
            raise OSError(errno.ENOSPC, "No space left on device", filename)
        real(tensors, filename, *args, **kwargs)

    monkeypatch.setattr(ltreg.checkpoint, "save_file", filling)
    code, out, err = in_process(train_argv(run, **three), capsys)
    monkeypatch.undo()
    assert code == 1 and calls["n"] == 2, out[-2000:]
    msg = one_paragraph(err)
    assert "the disk is full" in msg and "--resume" in msg, msg
    ck = run / "checkpoints"
    assert (ck / "latest").read_text().strip() == "stage1-epoch-1"
    assert sorted(p.name for p in ck.iterdir()) == ["latest", "stage1-epoch-1"]  # no partial checkpoint left
    assert not (run / "model.safetensors").exists()
    from ltreg.files import Manifest

    Manifest.read(ck / "stage1-epoch-1", "checkpoint").verify(ck / "stage1-epoch-1", "checkpoint")
    code, out, err = in_process(train_argv(run, "--resume", **three), capsys)
    assert code == 0, err[-3000:]
    assert f"resumed from {ck / 'stage1-epoch-1'}" in out and "stage 1 epoch   1" not in out
    assert_same_weights(load_file(str(tmp_path / "full" / "model.safetensors")), load_file(str(run / "model.safetensors")))
    assert [r["loss"] for r in full.history] == [
        float(r["loss"]) for r in json.loads((ck / "stage1-epoch-3" / "trainer_state.json").read_text())["history"]]


# -- 7. a run that fails on its data or model leaves no folder ------------------------------------------
@pytest.mark.parametrize("case", ["missing data root", "empty class folder", "unknown backbone"])
def test_data_or_model_errors_leave_no_run_folder(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                  case: str) -> None:
    out_dir = tmp_path / "runs" / "new"
    if case == "missing data root":
        extra = ["--dataset", "imagefolder-lt", "--data-root", str(tmp_path / "nonexistent")]
    elif case == "empty class folder":
        root = image_folder(tmp_path / "imgs")
        (root / "c3").mkdir()
        (root / "c3" / "broken.png").write_bytes(b"not an image")
        extra = ["--dataset", "imagefolder-lt", "--data-root", str(root)]
    else:
        extra = ["--backbone", "resnet_nope"]
    code, out, err = in_process(train_argv(out_dir, *extra), capsys)
    assert code == 2, out[-2000:] + err[-2000:]
    one_paragraph(err)
    assert not out_dir.exists() and not out_dir.parent.exists()


# -- 8. a run killed in stage 2 resumes bit-identically --------------------------------------------------
def test_interrupted_in_stage2_resumes_to_the_uninterrupted_weights(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                                    capsys: pytest.CaptureFixture[str]) -> None:
    from ltreg import loop as loop_module
    from ltreg.config import resolve_config
    from ltreg.trainer import Trainer

    base = {**RUN, "epochs": 2, "stage2_epochs": 2, "checkpoint_every": 1}
    full = ltreg.train("supcon", output_dir=str(tmp_path / "full"), **base)
    assert [(r["stage"], r["epoch"]) for r in full.history] == [(1, 1), (1, 2), (2, 1), (2, 2)]
    trainer = Trainer(resolve_config(ltreg.get_method("supcon"), {**base, "output_dir": str(tmp_path / "part")}))
    original, calls = loop_module.run_epoch, {"n": 0}

    def interrupted(*args: object, **kwargs: object) -> dict:
        if calls["n"] == 3:  # stage 1's two epochs and stage 2's first are done and checkpointed
            raise KeyboardInterrupt
        calls["n"] += 1
        return original(*args, **kwargs)

    monkeypatch.setattr(loop_module, "run_epoch", interrupted)
    with pytest.raises(KeyboardInterrupt):
        trainer.fit()
    monkeypatch.undo()
    assert (tmp_path / "part" / "checkpoints" / "latest").read_text() == "stage2-epoch-1"
    capsys.readouterr()
    resumed = ltreg.train("supcon", output_dir=str(tmp_path / "part"), resume=True, **base)
    out = capsys.readouterr().out
    assert f"resumed from {tmp_path / 'part' / 'checkpoints' / 'stage2-epoch-1'} (stage 2, epoch 1)" in out, out
    assert "stage 1 epoch" not in out and "stage 2 epoch   1" not in out and "stage 2 epoch   2" in out, out
    assert_same_weights(full.model.state_dict(), resumed.model.state_dict())
    assert [r["loss"] for r in full.history] == [r["loss"] for r in resumed.history]
    assert full.metrics["top1"] == resumed.metrics["top1"]


def test_checkpoints_folder_that_is_a_link_is_refused(tmp_path: Path) -> None:
    from types import SimpleNamespace

    from ltreg.checkpoint import Checkpoints
    from ltreg.errors import CheckpointError

    elsewhere = tmp_path / "elsewhere"
    (elsewhere / "stage1-epoch-1").mkdir(parents=True)
    (elsewhere / "latest").write_text("stage1-epoch-1")
    run = tmp_path / "run"
    run.mkdir()
    (run / "checkpoints").symlink_to(elsewhere, target_is_directory=True)
    ck = Checkpoints(run, SimpleNamespace(is_main_process=True, wait_for_everyone=lambda: None))
    for call in (ck.latest, ck.existing, ck.resume_point):
        with pytest.raises(CheckpointError, match="symbolic link"):
            call()
    assert (elsewhere / "stage1-epoch-1").is_dir()
