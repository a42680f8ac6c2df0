"""Artifacts: ``save_pretrained`` / ``from_pretrained`` in timm's hub layout plus ltreg's heads.

A model folder (or Hub repo) holds ``config.json`` (timm's keys plus an ``ltreg`` block),
``model.safetensors`` (the timm model: backbone + classifier as its head, so
``timm.create_model("hf-hub:org/name", pretrained=True)`` loads it) and ``ltreg_heads.safetensors``
(projection head and the exact classifier). Weights are never read from pickle.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import timm
import torch
from safetensors.torch import load_file, save_file
from torch import nn

import ltreg
from ltreg.models.ltmodel import CosineLinear, LTModel, LTModelConfig

HEADS_FILE = "ltreg_heads.safetensors"
WEIGHTS_FILE = "model.safetensors"


class CheckpointError(ValueError):
    """A model folder that cannot be loaded as asked: missing, mismatched or untrusted files."""


def _head_prefix(timm_model: nn.Module) -> str:
    head = timm_model.get_classifier()
    for name, module in timm_model.named_modules():
        if module is head:
            return name
    raise CheckpointError(f"cannot find the classifier of {type(timm_model).__name__}")


def timm_state_dict(model: LTModel) -> dict[str, torch.Tensor]:
    """The LTModel as a timm model's state dict (backbone + classifier as the timm head).

    A cosine classifier is stored as ``s * w_c / ||w_c||`` with zero bias: timm's linear head then
    ranks classes exactly as the cosine classifier does (the feature norm is common to all classes).
    """
    state = {k: v.detach().cpu().contiguous() for k, v in model.backbone.state_dict().items()}
    probe = timm.create_model(model.config.backbone, pretrained=False, num_classes=model.num_classes,
                              in_chans=model.config.in_chans, **model.config.backbone_kwargs)
    prefix = _head_prefix(probe)
    clf = model.classifier
    if isinstance(clf, CosineLinear):
        weight = clf.scale * torch.nn.functional.normalize(clf.weight.detach(), dim=-1)
        bias = torch.zeros(weight.shape[0])
    elif isinstance(clf, nn.Linear):
        weight, bias = clf.weight.detach(), (clf.bias.detach() if clf.bias is not None else torch.zeros(clf.out_features))
    else:
        raise CheckpointError(f"classifier {type(clf).__name__} cannot be written in timm's layout")
    state[f"{prefix}.weight"] = weight.cpu().contiguous()
    state[f"{prefix}.bias"] = bias.cpu().contiguous()
    return state


def save_pretrained(model: LTModel, directory: str | os.PathLike, run_meta: dict[str, Any] | None = None) -> Path:
    """Write ``config.json``, ``model.safetensors`` and ``ltreg_heads.safetensors`` atomically."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    cfg = model.config
    meta = dict(run_meta or {})
    dataset = meta.get("dataset", {})
    config = {
        "architecture": cfg.backbone,
        "num_classes": cfg.num_classes,
        "num_features": model.num_features,
        "global_pool": "avg",
        "label_names": dataset.get("class_names") or [str(i) for i in range(cfg.num_classes)],
        "model_args": {"in_chans": cfg.in_chans, **cfg.backbone_kwargs},
        "pretrained_cfg": {
            "input_size": [cfg.in_chans, dataset.get("image_size", 32), dataset.get("image_size", 32)],
            "mean": dataset.get("mean", [0.5] * cfg.in_chans),
            "std": dataset.get("std", [0.5] * cfg.in_chans),
            "num_classes": cfg.num_classes,
            "classifier": _head_prefix(timm.create_model(cfg.backbone, pretrained=False, num_classes=cfg.num_classes,
                                                         in_chans=cfg.in_chans, **cfg.backbone_kwargs)),
        },
        "ltreg": {"version": ltreg.__version__, "model": cfg.to_dict(), **meta},
    }
    heads = {f"projector.{k}": v for k, v in model.projector.state_dict().items()}
    heads.update({f"classifier.{k}": v for k, v in model.classifier.state_dict().items()})
    for name, tensors in ((WEIGHTS_FILE, timm_state_dict(model)), (HEADS_FILE, heads)):
        tmp = directory / f".{name}.tmp"
        save_file({k: v.detach().cpu().contiguous() for k, v in tensors.items()}, str(tmp), metadata={"format": "pt"})
        os.replace(tmp, directory / name)
    tmp = directory / ".config.json.tmp"
    tmp.write_text(json.dumps(config, indent=1, default=str))
    os.replace(tmp, directory / "config.json")
    return directory


def load_local(directory: str | os.PathLike) -> LTModel:
    """Rebuild an :class:`LTModel` from a folder written by :func:`save_pretrained`."""
    directory = Path(directory)
    cfg_path = directory / "config.json"
    if not cfg_path.exists():
        raise CheckpointError(f"{directory} has no config.json: not an ltreg model folder")
    config = json.loads(cfg_path.read_text())
    if "ltreg" not in config:
        raise CheckpointError(f"{cfg_path} has no 'ltreg' block: a plain timm model; load it with timm.create_model")
    model = LTModel(LTModelConfig(**config["ltreg"]["model"]))
    weights = load_file(str(directory / WEIGHTS_FILE))
    prefix = config["pretrained_cfg"]["classifier"]
    backbone = {k: v for k, v in weights.items() if not k.startswith(prefix + ".")}
    model.backbone.load_state_dict(backbone)
    heads = load_file(str(directory / HEADS_FILE))
    model.projector.load_state_dict({k[len("projector."):]: v for k, v in heads.items() if k.startswith("projector.")})
    model.classifier.load_state_dict({k[len("classifier."):]: v for k, v in heads.items() if k.startswith("classifier.")})
    return model.eval()
