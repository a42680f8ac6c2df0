"""Untrusted files: weights load only from safetensors; pickle needs an explicit flag and then loads
with ``weights_only=True``; corrupt, truncated or mismatched files give errors that name the file."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch

from ltreg.errors import CheckpointError
from ltreg.layout import HEADS_FILE, WEIGHTS_FILE
from ltreg.models.ltmodel import LTModel, from_pretrained
from ltreg.models.pretrained import MissingPluginWarning
from tests.test_hub import toy_run


def edit_config(folder: Path, edit: Any) -> None:
    """Hand-edit config.json; the edited folder no longer matches its manifest, which goes (a folder from elsewhere)."""
    path = folder / "config.json"
    config = json.loads(path.read_text())
    edit(config)
    path.write_text(json.dumps(config))
    (folder / "manifest.json").unlink(missing_ok=True)


def test_missing_or_corrupt_files_are_named(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="neither a model folder nor a Hub repo id"):
        from_pretrained(tmp_path / "nowhere")
    toy_run(tmp_path)
    for name in (WEIGHTS_FILE, HEADS_FILE):
        data = (tmp_path / name).read_bytes()
        (tmp_path / name).write_bytes(data[: len(data) // 2])
        with pytest.raises(CheckpointError, match=rf"{name} does not match its SHA-256 in manifest.json"):
            from_pretrained(tmp_path)  # the manifest catches it first
        manifest = (tmp_path / "manifest.json").read_bytes()
        (tmp_path / "manifest.json").unlink()
        with pytest.raises(CheckpointError, match=rf"{name} of .* is corrupt or truncated"):
            from_pretrained(tmp_path)  # without a manifest, safetensors' own check
        (tmp_path / name).write_bytes(data)
        (tmp_path / "manifest.json").write_bytes(manifest)
    (tmp_path / HEADS_FILE).unlink()
    with pytest.raises(CheckpointError, match=HEADS_FILE):
        from_pretrained(tmp_path)
    (tmp_path / "config.json").unlink()
    with pytest.raises(CheckpointError, match="no config.json"):
        from_pretrained(tmp_path)


def test_config_that_does_not_match_the_weights(tmp_path: Path) -> None:
    toy_run(tmp_path)
    original = (tmp_path / "config.json").read_text()

    def both(key: str, model_key: str, value: Any) -> Any:
        return lambda c: (c.__setitem__(key, value), c["ltreg"]["model"].__setitem__(model_key, value))

    cases = [
        (both("num_classes", "num_classes", 7), r"num_classes=7 but .*\['classifier\.weight'\] has shape \(5, 96\)"),
        (lambda c: c.__setitem__("num_classes", 7), r"contradicts itself: num_classes=7"),
        (both("architecture", "backbone", "resnet8"), r"architecture 'resnet8'.* missing tensors"),
        (lambda c: c["ltreg"]["model"].__setitem__("proj_dim", 8),
         r"projector\.2\.weight'\] has shape \(16, 96\), the model expects \(8, 96\)"),
    ]
    for edit, message in cases:
        edit_config(tmp_path, edit)
        with pytest.raises(CheckpointError, match=message):
            from_pretrained(tmp_path)
        (tmp_path / "config.json").write_text(original)


def test_pickle_only_folder_needs_the_flag(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    model = toy_run(tmp_path)
    (tmp_path / WEIGHTS_FILE).unlink()
    (tmp_path / HEADS_FILE).unlink()
    torch.save(model.state_dict(), tmp_path / "pytorch_model.bin")
    with pytest.raises(CheckpointError, match=r"only pickle weights \(pytorch_model\.bin\).*trust_remote_pickle=True"):
        from_pretrained(tmp_path)
    calls = []
    real_load = torch.load
    monkeypatch.setattr(torch, "load", lambda *a, **kw: calls.append(kw) or real_load(*a, **kw))
    loaded = LTModel.from_pretrained(tmp_path, trust_remote_pickle=True)
    assert calls == [{"map_location": "cpu", "weights_only": True}]
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(loaded.predict(x), model.predict(x), atol=0, rtol=0)


def test_missing_plugin_warns_and_still_loads(tmp_path: Path) -> None:
    model = toy_run(tmp_path)

    def plugin(c: dict) -> None:
        c["ltreg"].update(method="iccl-nowhere", dist="ltreg-iccl", dist_version="0.3.0")

    edit_config(tmp_path, plugin)
    with pytest.warns(MissingPluginWarning, match=r"'iccl-nowhere'.*pip install ltreg-iccl==0\.3\.0"):
        loaded = from_pretrained(tmp_path)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(loaded.predict(x), model.predict(x), atol=0, rtol=0)


# -- config.json is data, not instructions ------------------------------------------------------
@pytest.mark.parametrize("key, value, match", [
    ("backbone_kwargs", {"checkpoint_path": "/etc/passwd"}, r"ltreg\.model\.backbone_kwargs\.checkpoint_path"),
    ("backbone_kwargs", {"pretrained": True}, r"backbone_kwargs\.pretrained"),
    ("backbone_kwargs", {"pretrained_cfg_overlay": {"hf_hub_id": "evil/weights"}}, r"backbone_kwargs\.pretrained_cfg_overlay"),
    ("backbone_kwargs", {"cache_dir": "/tmp"}, r"backbone_kwargs\.cache_dir"),
    ("backbone_kwargs", {"drop_rate": float("nan")}, r"backbone_kwargs\.drop_rate must be a number in \[0, 1\)"),
    ("backbone_kwargs", ["checkpoint_path"], r"ltreg\.model\.backbone_kwargs"),
    ("num_classes", -3, r"ltreg\.model\.num_classes.*integer in \[1, 100000\]"),
    ("num_classes", 10**9, r"ltreg\.model\.num_classes"),
    ("num_classes", "5", r"ltreg\.model\.num_classes"),
    ("num_classes", True, r"ltreg\.model\.num_classes"),
    ("in_chans", 0, r"ltreg\.model\.in_chans"),
    ("in_chans", 10**6, r"ltreg\.model\.in_chans"),
    ("proj_dim", -1, r"ltreg\.model\.proj_dim"),
    ("proj_dim", 10**9, r"ltreg\.model\.proj_dim"),
    ("proj_hidden", 10**9, r"ltreg\.model\.proj_hidden"),
    ("cosine_scale", float("nan"), r"ltreg\.model\.cosine_scale"),
    ("cosine_scale", float("inf"), r"ltreg\.model\.cosine_scale"),
    ("classifier", "exec", r"ltreg\.model\.classifier"),
    ("backbone", "hf-hub:evil/model", r"ltreg\.model\.backbone"),
    ("backbone", "../../etc/passwd", r"ltreg\.model\.backbone"),
    ("proj_bn", "yes", r"ltreg\.model\.proj_bn"),
    ("evil", 1, r"unknown key ltreg\.model\.evil"),
])
def test_untrusted_model_config_is_refused_by_key(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                  key: str, value: Any, match: str) -> None:
    toy_run(tmp_path)
    if key in ("num_classes",):
        edit_config(tmp_path, lambda c: (c.__setitem__(key, value), c["ltreg"]["model"].__setitem__(key, value)))
    else:
        edit_config(tmp_path, lambda c: c["ltreg"]["model"].__setitem__(key, value))
    import timm

    monkeypatch.setattr(timm, "create_model", lambda *a, **kw: pytest.fail(f"timm.create_model reached: {kw}"))
    with pytest.raises(CheckpointError, match=rf"config\.json of .*{match}"):
        from_pretrained(tmp_path)


def test_allowed_backbone_kwargs_still_load(tmp_path: Path) -> None:
    model = toy_run(tmp_path)
    edit_config(tmp_path, lambda c: c["ltreg"]["model"]["backbone_kwargs"].update(drop_rate=0.1))
    loaded = from_pretrained(tmp_path)
    assert loaded.config.backbone_kwargs == {"drop_rate": 0.1}
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(loaded.predict(x), model.predict(x), atol=0, rtol=0)


@pytest.mark.parametrize("text, match", [
    ("[1, 2]", "no ltreg model block"),
    ('{"ltreg": [1]}', "no ltreg model block"),
    ("{" * 100_000, "not valid JSON"),
    ("{not json", "not valid JSON"),
])
def test_malformed_config_json_is_a_named_error(tmp_path: Path, text: str, match: str) -> None:
    toy_run(tmp_path)
    (tmp_path / "config.json").write_text(text)
    (tmp_path / "manifest.json").unlink()  # a folder from elsewhere: nothing to verify against
    with pytest.raises(CheckpointError, match=rf"config\.json of .*{match}"):
        from_pretrained(tmp_path)


def test_oversized_config_json_is_not_parsed(tmp_path: Path) -> None:
    toy_run(tmp_path)
    (tmp_path / "config.json").write_text(" " * (5 * 2**20) + "{}")
    (tmp_path / "manifest.json").unlink()
    with pytest.raises(CheckpointError, match="more than a model config can be"):
        from_pretrained(tmp_path)


def test_plugin_hint_cannot_smuggle_a_pip_command(tmp_path: Path) -> None:
    toy_run(tmp_path)
    edit_config(tmp_path, lambda c: c["ltreg"].update(method="nowhere", dist="x --index-url http://evil/simple"))
    with pytest.raises(CheckpointError, match=r"refused key ltreg\.dist"):
        from_pretrained(tmp_path)


def test_recorded_data_args_are_validated_and_paths_from_the_hub_dropped() -> None:
    from ltreg.card import DatasetRecord, RunCard
    from ltreg.data.build import DataArgs
    from ltreg.evaluate import recorded_data_args

    args = {"dataset": "imagefolder-lt", "root": "/etc", "imbalance": 10.0, "profile": None, "seed": 1,
            "kwargs": {"split_dir": "/etc"}}
    card = RunCard(method="ce", dataset=DatasetRecord(name="imagefolder-lt", builder_args=args))
    assert recorded_data_args(card, trusted=True) == DataArgs(**args)  # the user's own run folder
    assert recorded_data_args(card, trusted=False) == DataArgs("imagefolder-lt", None, 10.0, None, 1, {})
    hub = RunCard(dataset=DatasetRecord(name="hf-lt", hub_id="org/data",
                                        builder_args={**args, "dataset": "hf-lt", "root": "org/data"}))
    assert recorded_data_args(hub, trusted=False).root == "org/data"  # a Hub data set id is no path
    for key, value in (("imbalance", 0.5), ("seed", "1"), ("kwargs", []), ("root", 3), ("nope", 1)):
        bad = RunCard(dataset=DatasetRecord(name="x", builder_args={**args, key: value}))
        with pytest.raises(CheckpointError, match="recorded data set arguments"):
            recorded_data_args(bad, trusted=True)
