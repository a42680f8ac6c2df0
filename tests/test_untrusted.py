"""Untrusted files: weights load only from safetensors; pickle needs an explicit flag and then loads
with ``weights_only=True``; corrupt, truncated or mismatched files give errors that name the file."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch

from ltreg.hub import HEADS_FILE, WEIGHTS_FILE, CheckpointError
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
