"""Every CLI failure ends in one paragraph (what, which file or flag, how to fix) and a non-zero exit
status: 2 for bad input, 1 for runtime failures; a traceback only with ``--debug``."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from safetensors import SafetensorError

import ltreg.trainer
from ltreg.cli import main
from tests.conftest import TINY


def run_cli(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    code = main(argv)
    err = capsys.readouterr().err
    return code, err


def assert_one_paragraph(err: str) -> None:
    assert err.startswith("ltreg: error: "), err
    assert "Traceback" not in err, err


@pytest.mark.parametrize("text, match", [
    ("epochs: [1\nlr: 0.1\n", "is not valid YAML"),
    ("epochs: !!python/object/apply:os.system ['echo pwned']\n", "uses a tag ltreg does not run"),
    ("learning_rate: 0.1\n", "unknown key 'learning_rate'"),
    ("epochs: .nan\n", "--epochs must be of type int, got nan"),
    ("lr: .nan\n", "--lr must be > 0 (a finite number), got nan"),
])
def test_bad_yaml_is_one_paragraph_and_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture[str], text: str,
                                              match: str) -> None:
    path = tmp_path / "run.yaml"
    path.write_text(text)
    code, err = run_cli(["train", "--config", str(path), "--output-dir", str(tmp_path / "run")], capsys)
    assert code == 2
    assert_one_paragraph(err)
    assert match in err
    assert not (tmp_path / "run").exists()


def test_missing_yaml_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, err = run_cli(["train", "--config", str(tmp_path / "nope.yaml")], capsys)
    assert code == 2
    assert_one_paragraph(err)
    assert f"cannot read the YAML run file {tmp_path / 'nope.yaml'} (--config)" in err


def test_unknown_data_arg_and_bad_hp(capsys: pytest.CaptureFixture[str]) -> None:
    code, err = run_cli(["train", "--data-arg", "splitdir=/x"], capsys)
    assert code == 2
    assert_one_paragraph(err)
    assert "no argument 'splitdir'" in err
    code, err = run_cli(["train", "--method", "logit-adjust", "--hp", "tau=nan"], capsys)
    assert code == 2 and "tau=nan" in err and "finite" in err


def test_debug_adds_the_traceback(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, err = run_cli(["--debug", "train", "--epochs", "0"], capsys)
    assert code == 2 and "Traceback" in err and err.rstrip().splitlines()[-1].startswith("ltreg: error: --epochs")
    code, err = run_cli(["train", "--epochs", "0", "--debug"], capsys)
    assert code == 2 and "Traceback" in err


def test_unexpected_exception_is_an_internal_error(monkeypatch: pytest.MonkeyPatch,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setattr(ltreg.trainer, "train", lambda *a, **kw: {}["boom"])
    code, err = run_cli(["train"], capsys)
    assert code == 1
    assert_one_paragraph(err)
    assert "internal error: KeyError: 'boom'" in err and "--debug" in err and "report" in err


def test_disk_full_mid_run_is_explained(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    def full(*args: object, **kwargs: object) -> None:
        raise SafetensorError('Error while serializing: IoError(Os { code: 28, kind: StorageFull, '
                              'message: "No space left on device" })')

    monkeypatch.setattr(ltreg.trainer, "train", full)
    code, err = run_cli(["train"], capsys)
    assert code == 1
    assert_one_paragraph(err)
    assert "the disk filled up" in err and "--resume" in err
    monkeypatch.setattr(ltreg.trainer, "train", lambda *a, **kw: (_ for _ in ()).throw(OSError(28, "No space left on device", "/runs/x")))
    code, err = run_cli(["train"], capsys)
    assert code == 1 and "the disk is full (No space left on device: /runs/x)" in err


@pytest.fixture(scope="module")
def finished(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny run with a checkpoint to damage."""
    out = tmp_path_factory.mktemp("cli") / "run"
    argv = ["train", "--method", "ce", "--output-dir", str(out), "--cpu",
            *[x for k, v in {**TINY, "epochs": 1}.items() for x in ("--" + k.replace("_", "-"), str(v))]]
    assert main(argv) == 0
    return out


def _damage(finished: Path, tmp_path: Path, name: str, how: str) -> tuple[Path, list[Path]]:
    run = tmp_path / "run"
    shutil.copytree(finished, run)
    latest = run / "checkpoints" / (run / "checkpoints" / "latest").read_text().strip()
    files = sorted(latest.glob(name))
    assert files, sorted(p.name for p in latest.iterdir())
    for f in files:
        data = f.read_bytes()
        f.write_bytes(data[: len(data) // 2] if how == "truncate" else b"\xff" * 16 + data[16:])
    return run, files


@pytest.mark.parametrize("name, how", [("optimizer*.bin", "truncate"), ("*.safetensors", "header")])
def test_damaged_checkpoint_on_resume(finished: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                      name: str, how: str) -> None:
    run, files = _damage(finished, tmp_path, name, how)
    argv = ["train", "--method", "ce", "--output-dir", str(run), "--cpu", "--resume",
            *[x for k, v in {**TINY, "epochs": 2}.items() for x in ("--" + k.replace("_", "-"), str(v))]]
    code, err = run_cli(argv, capsys)
    assert code == 1
    assert_one_paragraph(err.splitlines()[-1] + "\n")
    assert "Traceback" not in err
    last = err.strip().splitlines()[-1]
    # today the CLI explains the loader's error; a CheckpointError from the checkpoint module naming the file
    # is printed as it is
    assert ("truncated or corrupt" in last and str(run / "checkpoints" / "stage1-epoch-1") in last) or (
        "checkpoint" in last and any(f.name in last for f in files)), last
