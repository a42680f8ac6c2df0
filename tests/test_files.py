"""The reliability families of issue 27, one test (or more) each: writes never follow planted links or leave
the run folder, push uploads only manifest-listed regular files, folders that are not ltreg's are left
alone, one training per folder (two real processes), integrity that cannot be switched off, recorded paths
not followed, bounded YAML, settings that do nothing refused, data read as what it is, the exit-code table,
no leftovers and umask modes."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

import ltreg
from ltreg.checkpoint import claim_run_folder, guard_run_folder
from ltreg.errors import CheckpointError, ConfigError, DataError, DataLayoutError, RunFolderError, UsageError
from ltreg.files import (
    LOCK_FILE,
    MANIFEST,
    TMP_PREFIX,
    Manifest,
    RunLock,
    clean_leftovers,
    probe_writable,
    write_atomic,
    write_manifest,
    write_with,
)

ROOT = Path(__file__).resolve().parents[1]
VICTIM = b"the user's own file, outside the run folder\n"


def victim(tmp_path: Path) -> Path:
    path = tmp_path / "outside" / "victim.txt"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(VICTIM)
    return path


def test_writes_never_follow_a_link_planted_at_any_name(tmp_path: Path) -> None:
    """Family 1: links at the old fixed temporary names and at the final names; the victim stays byte for byte."""
    run, target = tmp_path / "run", victim(tmp_path)
    (run / "checkpoints").mkdir(parents=True)
    for name in (".metrics.csv.tmp", ".config.json.tmp", ".write-probe", "metrics.json", ".model.safetensors.tmp",
                 "checkpoints/.latest.tmp", f"{TMP_PREFIX}x"):
        (run / name).symlink_to(target)
    write_atomic(run / "metrics.csv", "a,b\n1,2\n", root=run)
    write_atomic(run / "metrics.json", "{}", root=run)  # the link at the final name is replaced, not written through
    write_atomic(run / "checkpoints" / "latest", "stage1-epoch-1", root=run)
    write_with(run / "model.safetensors", lambda f: Path(f).write_bytes(b"weights"), root=run)
    probe_writable(run)
    assert target.read_bytes() == VICTIM
    assert not (run / "metrics.json").is_symlink() and (run / "metrics.json").read_text() == "{}"
    assert (run / "model.safetensors").read_bytes() == b"weights"


def test_a_training_writes_nothing_through_links_planted_in_its_folder(tmp_path: Path, tiny: dict) -> None:
    """Family 1 and 10 end to end: every fixed temporary or probe name of the old code is a link to the victim;
    a killed run's temporary checkpoint folder is left over; a whole training runs into the folder."""
    run, target = tmp_path / "run", victim(tmp_path)
    (run / "checkpoints" / f"{TMP_PREFIX}stage1-epoch-9").mkdir(parents=True)  # killed before its first checkpoint
    write_manifest(run, "run", [])
    names = [".write-probe", ".metrics.csv.tmp", ".metrics.json.tmp", ".config.json.tmp", ".README.md.tmp",
             ".model.safetensors.tmp", ".ltreg_heads.safetensors.tmp", ".manifest.json.tmp",
             ".per_class_accuracy.png.tmp", "checkpoints/.latest.tmp", "checkpoints/.tmp-stage1-epoch-1",
             "checkpoints/.tmp-stage1-epoch-2"]
    for name in names:
        (run / name).symlink_to(target)
    old = os.umask(0o027)
    try:
        ltreg.train("ce", output_dir=str(run), quiet=True, resume=True, **tiny)
    finally:
        os.umask(old)
    assert target.read_bytes() == VICTIM and sorted(p.name for p in target.parent.iterdir()) == ["victim.txt"]
    assert (run / "model.safetensors").stat().st_mode & 0o777 == 0o640  # the umask, like every other file
    assert (run / "config.json").stat().st_mode & 0o777 == 0o640
    modes = {p.name: p.stat().st_mode & 0o777 for p in (run / "checkpoints").rglob("*")
             if p.is_file() and not p.is_symlink()}  # the planted links' target is the victim
    assert set(modes.values()) == {0o640}, modes  # Accelerate's checkpoint files too
    assert not list(run.rglob(f"{TMP_PREFIX}*"))  # the killed run's leftover went at this start
    assert json.loads((run / MANIFEST).read_text())["kind"] == "model"


def test_writes_refuse_a_link_on_the_way_out_of_the_run_folder(tmp_path: Path) -> None:
    run, target = tmp_path / "run", victim(tmp_path)
    run.mkdir()
    (run / "checkpoints").symlink_to(target.parent)
    with pytest.raises(RunFolderError, match=r"checkpoints is a symbolic link .* never through a link"):
        write_atomic(run / "checkpoints" / "latest", "x", root=run)
    assert sorted(p.name for p in target.parent.iterdir()) == ["victim.txt"] and target.read_bytes() == VICTIM


def test_files_follow_the_umask_and_leftovers_go_at_the_next_start(tmp_path: Path) -> None:
    """Family 10: model.safetensors was 0600; a killed run's temporary folders survived."""
    old = os.umask(0o027)
    try:
        write_with(tmp_path / "model.safetensors", lambda f: Path(f).write_bytes(b"w"))
        write_atomic(tmp_path / "config.json", "{}")
    finally:
        os.umask(old)
    assert (tmp_path / "model.safetensors").stat().st_mode & 0o777 == 0o640
    assert (tmp_path / "config.json").stat().st_mode & 0o777 == 0o640
    (tmp_path / "checkpoints" / f"{TMP_PREFIX}stage1-epoch-2").mkdir(parents=True)
    (tmp_path / f"{TMP_PREFIX}abc-metrics.csv").write_text("partial")
    gone = claim_run_folder(tmp_path)
    assert len(gone) == 2 and not [p for p in tmp_path.rglob(f"{TMP_PREFIX}*")]
    assert clean_leftovers(tmp_path) == []


def test_push_uploads_only_regular_files_the_manifest_lists(tmp_path: Path) -> None:
    """Family 2: a link named like a model file is refused, an unlisted file is not uploaded, --repo checked."""
    from ltreg.hub import check_repo_id, upload_list
    from tests.test_hub import toy_run

    run, target = tmp_path / "run", victim(tmp_path)
    toy_run(run)
    (run / "secrets.txt").write_text("not for the Hub")
    files = upload_list(run)
    assert "secrets.txt" not in files and "metrics.json" not in files and files[-1] == MANIFEST  # metrics: unlisted
    assert {"config.json", "model.safetensors", "ltreg_heads.safetensors"} <= set(files)
    (run / "ltreg_heads.safetensors").unlink()
    (run / "ltreg_heads.safetensors").symlink_to(target)
    with pytest.raises(CheckpointError, match=r"ltreg_heads\.safetensors is a symbolic link"):
        upload_list(run)
    for bad in ("a/b/c", "../etc", "org/" + "x" * 200, "org/na me"):
        with pytest.raises(UsageError, match=r"--repo .* is not a Hub repo id"):
            check_repo_id(bad)


def test_overwrite_refuses_a_folder_that_is_not_ltregs(tmp_path: Path) -> None:
    """Family 3: a user's README.md / config.json are never deleted, --overwrite or not."""
    (tmp_path / "README.md").write_text("my notes")
    (tmp_path / "config.json").write_text("{}")
    for overwrite in (False, True):
        with pytest.raises(RunFolderError, match=r"is not an ltreg run folder .* --output-dir"):
            guard_run_folder(tmp_path, resume=False, overwrite=overwrite)
    assert (tmp_path / "README.md").read_text() == "my notes" and (tmp_path / "config.json").read_text() == "{}"
    write_manifest(tmp_path, "run", [])  # now it is a run ltreg wrote: --overwrite removes its files only
    (tmp_path / "mine.txt").write_text("kept")
    guard_run_folder(tmp_path, resume=False, overwrite=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mine.txt"]


def test_a_second_training_into_a_locked_folder_stops_and_a_killed_holder_frees_it(
        tmp_path: Path, subprocess_env: dict) -> None:
    """Family 3: two real processes for one folder; the lock of a SIGKILLed one is not stale."""
    run = tmp_path / "run"
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time; from pathlib import Path; from ltreg.files import RunLock; "
         f"lock = RunLock(Path({str(run)!r})).acquire(); print('locked', flush=True); time.sleep(600)"],
        stdout=subprocess.PIPE, text=True, env=subprocess_env, cwd=ROOT)
    try:
        assert holder.stdout.readline().strip() == "locked"
        proc = subprocess.run([sys.executable, "-m", "ltreg", "train", "--quick", "--epochs", "1", "--output-dir",
                               str(run), "--max-steps-per-epoch", "1"], capture_output=True, text=True,
                              env=subprocess_env, cwd=tmp_path, timeout=600)
        assert proc.returncode == 2, proc.stderr[-2000:]
        assert f"another ltreg process (pid {holder.pid}) is training into {run}" in proc.stderr, proc.stderr
        assert "Traceback" not in proc.stderr and not (run / "checkpoints").exists()
        # two processes: only the main one locks; it refuses, and the other stops with it instead of waiting
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        proc = subprocess.run([sys.executable, "-m", "accelerate.commands.launch", "--num_machines", "1",
                               "--mixed_precision", "no", "--dynamo_backend", "no", "--num_processes", "2",
                               "--main_process_port", str(port), "--multi_gpu", "-m", "ltreg", "train", "--quick",
                               "--epochs", "1", "--output-dir", str(run), "--max-steps-per-epoch", "1"],
                              capture_output=True, text=True, env=subprocess_env, cwd=tmp_path, timeout=300)
        assert proc.returncode != 0 and f"another ltreg process (pid {holder.pid})" in proc.stderr, proc.stderr[-3000:]
        assert "the main process stopped before training (process 1 stops with it)" in proc.stderr, proc.stderr[-3000:]
        assert "internal error" not in proc.stderr and not (run / "checkpoints").exists()
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    lock = RunLock(run).acquire()  # the kernel dropped the killed holder's lock
    lock.release()
    assert (run / LOCK_FILE).is_file()


def test_a_model_folder_is_trusted_only_with_a_complete_manifest(tmp_path: Path) -> None:
    """Family 4: deleting the manifest, or one entry, no longer switches the check off."""
    from tests.test_hub import toy_run

    toy_run(tmp_path)
    raw = bytearray((tmp_path / "model.safetensors").read_bytes())
    raw[-1] ^= 1
    (tmp_path / "model.safetensors").write_bytes(bytes(raw))
    manifest = json.loads((tmp_path / MANIFEST).read_text())
    del manifest["sha256"]["model.safetensors"]
    (tmp_path / MANIFEST).write_text(json.dumps(manifest))
    with pytest.raises(CheckpointError, match=r"has no entry for model\.safetensors"):
        ltreg.from_pretrained(tmp_path)
    (tmp_path / MANIFEST).unlink()
    with pytest.raises(CheckpointError, match=r"has no manifest\.json"):
        ltreg.from_pretrained(tmp_path)


def test_a_checkpoint_must_list_every_file_it_holds(tmp_path: Path) -> None:
    (tmp_path / "a.bin").write_bytes(b"a")
    write_manifest(tmp_path, "checkpoint")
    Manifest.read(tmp_path, "ck").verify(tmp_path, "ck")
    (tmp_path / "optimizer.bin").write_bytes(b"planted")
    with pytest.raises(CheckpointError, match=r"holds optimizer\.bin, which its manifest\.json does not list"):
        Manifest.read(tmp_path, "ck").verify(tmp_path, "ck")


def test_recorded_paths_are_never_followed() -> None:
    """Family 5: a local folder's recorded root and builder arguments are dropped like a Hub repo's."""
    from ltreg.card import DatasetRecord, RunCard
    from ltreg.evaluate import recorded_data_args

    args = {"dataset": "imagefolder-lt", "root": "/usr", "imbalance": 10.0, "profile": None, "seed": 1,
            "kwargs": {"split_dir": "/etc"}}
    rec = recorded_data_args(RunCard(dataset=DatasetRecord(name="imagefolder-lt", builder_args=args)))
    assert rec is not None and rec.root is None and rec.kwargs == {}


def test_a_yaml_alias_bomb_is_refused_quickly(tmp_path: Path) -> None:
    """Family 6: nested aliases expanding to 10^8 values; refused in well under a second, in a short message."""
    from ltreg.config import load_yaml

    lines = ['a0: &a0 ["x","x","x","x","x","x","x","x","x","x"]']
    lines += [f"a{i}: &a{i} [" + ",".join([f"*a{i - 1}"] * 10) + "]" for i in range(1, 8)]
    (tmp_path / "bomb.yaml").write_text("\n".join(lines) + "\n")
    start = time.perf_counter()
    with pytest.raises(ConfigError, match=r"expands to more than 100000 values") as info:
        load_yaml(tmp_path / "bomb.yaml")
    assert time.perf_counter() - start < 5 and len(str(info.value)) < 400
    (tmp_path / "big.yaml").write_text("epochs: 1\n" + "#" * (2 << 20))
    with pytest.raises(ConfigError, match=r"not corrupt, just too large"):
        load_yaml(tmp_path / "big.yaml")


@pytest.mark.parametrize("method, overrides, match", [
    ("ce", {"schedule": "cosine", "milestones": [5]}, r"--milestones .* --schedule step"),
    ("ce", {"stage2_epochs": 3}, r"--stage2-epochs .* one stage"),
    ("ce", {"optimizer": "adamw", "momentum": 0.5}, r"--momentum .* adamw has no momentum"),
    ("ce", {"optimizer": "adamw", "momentum": 0.9}, r"--momentum .* adamw has no momentum"),  # even the default value
    ("ce", {"schedule": "cosine", "poly_power": 2.0}, r"--poly-power .* shapes --schedule poly"),
    ("ce", {"holdout_fraction": 0.2}, r"--holdout-fraction .* drop it"),
])
def test_settings_that_do_nothing_are_refused(method: str, overrides: dict, match: str) -> None:
    """Family 7: accepted, ignored and written into the card before; now refused, naming why and the fix."""
    from ltreg.config import resolve_config

    with pytest.raises(ConfigError, match=match):
        resolve_config(ltreg.get_method(method), overrides)


@pytest.mark.skipif(torch.cuda.is_available(), reason="fp16 works on a GPU")
def test_fp16_on_a_cpu_is_refused_and_the_card_keeps_only_what_took_effect() -> None:
    from ltreg.config import ineffective, resolve_config

    with pytest.raises(ConfigError, match=r"--mixed-precision .* fp16 autocast needs a CUDA GPU .* bf16"):
        resolve_config(ltreg.get_method("ce"), {"mixed_precision": "fp16"})
    rc = resolve_config(ltreg.get_method("ce"), {"optimizer": "adamw"})
    assert {"momentum", "stage2_epochs", "milestones", "nesterov"} <= set(ineffective(rc.cfg, rc.spec))


def test_float_labels_are_refused_not_truncated() -> None:
    """Family 8: a float label column (1.7) was read as class 1."""
    import datasets

    from ltreg.data.hf import _labels

    with pytest.raises(DataError, match=r"label column 'label' holds float64 values \(e.g. 1\.7\)"):
        _labels(datasets.Dataset.from_dict({"label": [0.0, 1.7, 2.0]}), "label")
    assert _labels(datasets.Dataset.from_dict({"label": [0, 2]}), "label").tolist() == [0, 2]


def test_link_loops_and_duplicate_images_are_named(tmp_path: Path) -> None:
    """Family 8: a link loop yielded duplicated, mislabelled images."""
    from ltreg.data.folder import scan
    from tests.test_run_folder import image_folder

    root = image_folder(tmp_path / "imgs")
    (root / "c0" / "loop").symlink_to(root / "c0")
    with pytest.raises(DataLayoutError, match=r"loop.* is .*c0 again .*Remove the link"):
        scan(root, None, "error")
    (root / "c0" / "loop").unlink()
    (root / "c1" / "copy.png").symlink_to(root / "c0" / "0.png")
    with pytest.raises(DataLayoutError, match=r"are the same file \(a symbolic link to .* read twice"):
        scan(root, None, "error")
    (root / "c1" / "copy.png").unlink()
    os.link(root / "c0" / "0.png", root / "c1" / "hard.png")  # one inode, two names, two labels
    with pytest.raises(DataLayoutError, match=r"c1/hard\.png and .*c0/0\.png are the same file \(hard links"):
        scan(root, None, "error")
    (root / "c1" / "hard.png").unlink()
    assert len(scan(root, None, "error").paths) == 18


def test_data_identity_tells_two_data_sets_of_one_class_count_apart() -> None:
    """Family 8: --resume on another data set of the same class count continued silently."""
    from ltreg.data.lt import LTDataset, TensorSource, data_identity

    def ds(targets: list[int], names: list[str]) -> LTDataset:
        return LTDataset("x", TensorSource(torch.zeros(len(targets), 1, 2, 2, dtype=torch.uint8)),
                         torch.tensor(targets), 2, names, 1, 2)

    a = data_identity(ds([0, 1, 1], ["cat", "dog"]))
    assert a.startswith("3 images, 2 classes, sha256 ") and a == data_identity(ds([0, 1, 1], ["cat", "dog"]))
    assert a != data_identity(ds([1, 0, 1], ["cat", "dog"])) and a != data_identity(ds([0, 1, 1], ["dog", "cat"]))


def _table() -> dict[int, set[str]]:
    text = (ROOT / "docs" / "reliability.md").read_text()
    section = text.split("## Exit codes", 1)[1].split("\n## ", 1)[0]
    rows = {}
    for line in section.splitlines():
        m = re.match(r"\| (\d+) \|[^|]*\| (.*) \|$", line)
        if m:
            rows[int(m.group(1))] = set(re.findall(r"`(\w+)`", m.group(2)))
    return rows


def test_exit_code_table_matches_the_cli(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    """Family 9: the documented exit codes are the ones the errors carry and the command line returns."""
    import ltreg.errors as E
    from ltreg import cli

    rows = _table()
    assert set(rows) == {0, 1, 2, 130}
    documented = {name for names in rows.values() for name in names}
    assert set(E.__all__) <= documented, set(E.__all__) - documented
    for code in (1, 2):
        for name in rows[code]:
            assert getattr(E, name).exit_code == code, name
    assert cli.main(["list"]) == 0
    assert cli.main(["train", "--epochs", "two"]) == 2  # a setting
    assert cli.main(["eval", str(Path("/nonexistent/model"))]) == 1  # a model folder that is not there
    with pytest.raises(SystemExit) as info:
        cli.main(["train", "--milestones", "3,x"])  # argparse: bad input, its own message
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert "<lambda>" not in err and "'3,x' is not comma-separated epochs" in err

    def interrupted(args: object) -> int:
        raise KeyboardInterrupt

    monkeypatch.setattr(cli, "cmd_list", interrupted)
    assert cli.main(["list"]) == 130


def test_resume_on_another_data_set_of_the_same_class_count_stops_and_eval_warns(tmp_path: Path, tiny: dict) -> None:
    """Family 8: same class count, other images: --resume stops naming both data sets; eval on them warns."""
    from ltreg.evaluate import DataMismatchWarning
    from tests.test_run_folder import image_folder

    a, b = image_folder(tmp_path / "a", per_class=8), image_folder(tmp_path / "b", per_class=8)
    (b / "c2" / "7.png").unlink()  # three classes in both; one image fewer in b
    run = tmp_path / "run"
    settings = {**tiny, "epochs": 1, "batch_size": 4, "dataset": "imagefolder-lt", "output_dir": str(run), "quiet": True}
    ltreg.train("ce", data_root=str(a), **settings)
    with pytest.raises(CheckpointError, match=r"other settings .*data: '\d+ images, 3 classes, sha256 \w+' in the run, "
                                              r"'\d+ images, 3 classes, sha256 \w+' now"):
        ltreg.train("ce", data_root=str(b), resume=True, **settings)
    with pytest.warns(DataMismatchWarning, match=r"training set rebuilt for imagefolder-lt at .* is not the one"):
        ltreg.evaluate_pretrained(run, dataset="imagefolder-lt", data_root=str(b))


def test_an_error_paragraph_is_bounded() -> None:
    """Family 6: a message quoting a huge value from a file stays one readable paragraph."""
    import io

    from ltreg.clierrors import MAX_MESSAGE, report

    out = io.StringIO()
    assert report(ConfigError("unknown key " + "k" * 1_000_000), stream=out) == 2
    assert len(out.getvalue()) < MAX_MESSAGE + 200 and "--debug shows the whole error" in out.getvalue()


def test_a_peer_process_crash_is_not_called_a_bug() -> None:
    """Family 9: a dead peer of a distributed run was reported as 'a bug in ltreg'."""
    from ltreg.clierrors import explain

    failure = explain(RuntimeError("[../third_party/gloo/gloo/transport/tcp/pair.cc:534] Connection closed by peer"))
    assert "bug" not in failure.message and "another process of this distributed run stopped" in failure.message
    assert "bug in ltreg" in explain(KeyError("boom")).message
