"""Saving an LTModel as a model folder and building one from a folder or Hub repo (timm's ``_builder`` role).

``save_pretrained`` writes timm's layout plus ltreg's heads, the card and a manifest; loading
resolves the files (:mod:`ltreg.hub`), validates ``config.json`` as data, builds the model class
it is given, and checks every tensor's key and shape before loading.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import warnings
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file
from torch import Tensor, nn

from ltreg.card import RunCard, model_card, plot_per_class
from ltreg.checkpoint import write_atomic, write_manifest
from ltreg.errors import CheckpointError, ModelConfigError, RegistryError, TunerError
from ltreg.hub import PICKLE_PATTERNS, read_config, read_safetensors, refuse_pickle, resolve
from ltreg.layout import (
    ADAPTER_CONFIG,
    ADAPTER_DIR,
    ADAPTER_WEIGHTS,
    CARD_FILE,
    CONFIG_FILE,
    HEADS_FILE,
    PLOT_FILE,
    WEIGHTS_FILE,
)
from ltreg.models.config import LTModelConfig, folder_model_config
from ltreg.models.timm_layout import head_prefix, timm_state_dict
from ltreg.registry import IN_PROCESS, registry
from ltreg.reports import json_safe
from ltreg.version import __version__


class MissingPluginWarning(UserWarning):
    """The method a checkpoint was trained with is not installed (the weights still load)."""


def _method_dist(method: str) -> tuple[str, str] | None:
    """(distribution, version) that provides ``method`` here, or None when it is not installed."""
    try:
        entry = registry("methods").entry(method)
    except RegistryError:
        return None
    return entry.dist, entry.version


def folder_config(model: Any, card: RunCard, cfg: LTModelConfig | None = None, num_parameters: int | None = None,
                  adapter: dict[str, Any] | None = None) -> dict[str, Any]:
    """``config.json``: timm's keys (``hf-hub:`` loading reads them) plus the ``ltreg`` block.

    ``cfg`` / ``num_parameters``: those of the model as written (merged: no tuner); ``adapter``: the base
    an adapter-only folder applies its adapter to (``{"base": "hf-hub:org/name"}``).
    """
    cfg = cfg or model.config
    ds = card.dataset
    size = ds.image_size if ds else 32
    block: dict[str, Any] = {"version": __version__, "model": cfg.to_dict(), **card.to_dict()}
    if card.method and (found := _method_dist(card.method)):
        block["dist"], block["dist_version"] = found
    if adapter is not None:
        block["adapter"] = adapter
    return {
        "architecture": cfg.backbone,
        "num_classes": cfg.num_classes,
        "num_features": model.num_features,
        "num_parameters": num_parameters if num_parameters is not None else sum(p.numel() for p in model.parameters()),
        "global_pool": "avg",
        "label_names": (ds.class_names if ds and ds.class_names else [str(i) for i in range(cfg.num_classes)]),
        "model_args": {"in_chans": cfg.in_chans, **cfg.backbone_kwargs},
        "pretrained_cfg": {
            "input_size": [cfg.in_chans, size, size],
            "interpolation": "bilinear",
            "crop_pct": 0.875 if size >= 96 else 1.0,  # ltreg's "none" eval view
            "mean": list(ds.mean) if ds and ds.mean else [0.5] * cfg.in_chans,
            "std": list(ds.std) if ds and ds.std else [0.5] * cfg.in_chans,
            "num_classes": cfg.num_classes,
            "classifier": head_prefix(cfg),
        },
        "ltreg": block,
    }


def _write_tensors(directory: Path, name: str, tensors: dict[str, Tensor]) -> None:
    tmp = directory / f".{name}.tmp"
    save_file({k: v.detach().cpu().contiguous() for k, v in tensors.items()}, str(tmp), metadata={"format": "pt"})
    os.replace(tmp, directory / name)


def _heads(model: Any) -> dict[str, Tensor]:
    heads = {f"projector.{k}": v for k, v in model.projector.state_dict().items()}
    heads.update({f"classifier.{k}": v for k, v in model.classifier.state_dict().items()})
    return heads


def save_pretrained(model: Any, directory: str | os.PathLike, card: RunCard | None = None) -> Path:
    """Write weights, heads, card, plot, config and manifest into ``directory``; each file atomically.

    A backbone with a mergeable tuner (LoRA, DoRA, IA3) is written merged: ``model.safetensors`` is a plain
    timm model. When the card names the base weights (a tag or Hub repo timm can fetch), the adapter alone
    is written too, as a model folder of its own in ``adapter/`` (``ltreg push --adapter-only``). A tuner
    that cannot merge (AdaptFormer) is written with its modules: ``config.json`` names it, ltreg rebuilds it.
    """
    from ltreg.tuners import tuner_from_dict

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    card = card or RunCard()
    tuner = tuner_from_dict(model.config.tuner, "the model") if model.config.tuner else None
    backbone, cfg = model.backbone, model.config
    if tuner is not None and tuner.mergeable:
        backbone = tuner.merge(model.backbone)
        cfg = dataclasses.replace(model.config, tuner=None)
    num_parameters = sum(p.numel() for p in backbone.parameters()) + sum(p.numel() for p in model.projector.parameters()) \
        + sum(p.numel() for p in model.classifier.parameters())
    config = folder_config(model, card, cfg, num_parameters)
    _write_tensors(directory, WEIGHTS_FILE, timm_state_dict(backbone, model.classifier, config["pretrained_cfg"]["classifier"]))
    _write_tensors(directory, HEADS_FILE, _heads(model))
    plot = plot_per_class(card, directory / PLOT_FILE)
    write_atomic(directory / CARD_FILE, model_card(config, card, plot=plot))
    write_atomic(directory / CONFIG_FILE, json.dumps(json_safe(config), indent=1, default=str, allow_nan=False))
    write_manifest(directory, [CONFIG_FILE, WEIGHTS_FILE, HEADS_FILE])
    base = card.tuner.get("base") if card.tuner else None
    if tuner is not None and tuner.mergeable and base:
        save_adapter(model, directory / ADAPTER_DIR, card, tuner, base)
    return directory


def save_adapter(model: Any, directory: Path, card: RunCard, tuner: Any, base: str) -> Path:
    """The adapter-only model folder: peft's adapter files, the heads, a config naming ``base`` and a card."""
    directory.mkdir(parents=True, exist_ok=True)
    config = folder_config(model, card, adapter={"base": base})
    _write_tensors(directory, ADAPTER_WEIGHTS, tuner.adapter_state(model.backbone))
    write_atomic(directory / ADAPTER_CONFIG, json.dumps(tuner.adapter_config(model.backbone, base), indent=1, default=str))
    _write_tensors(directory, HEADS_FILE, _heads(model))
    write_atomic(directory / CARD_FILE, model_card(config, card))
    write_atomic(directory / CONFIG_FILE, json.dumps(config, indent=1, default=str))
    write_manifest(directory, [CONFIG_FILE, ADAPTER_WEIGHTS, ADAPTER_CONFIG, HEADS_FILE])
    return directory


#: A base model an adapter-only config may name: a timm name (optionally tagged) or ``hf-hub:org/name``.
_BASE = re.compile(r"^(hf-hub:[A-Za-z0-9][A-Za-z0-9_.-]{0,95}/[A-Za-z0-9][A-Za-z0-9_.-]{0,95}"
                   r"|[A-Za-z][A-Za-z0-9_]*(\.[A-Za-z0-9_]+)?)$")


def _load_adapter_only(cls: type[nn.Module], folder: Path, label: str, cfg: LTModelConfig,
                       adapter: Any) -> nn.Module:
    """Build the base from timm (its id from config.json), add the tuner's modules, load adapter and heads."""
    import timm

    from ltreg.tuners import tuner_from_dict

    base = adapter.get("base") if isinstance(adapter, dict) else None
    if not (isinstance(base, str) and _BASE.match(base)):
        raise CheckpointError(f"{CONFIG_FILE} of {label}: refused key ltreg.adapter.base={str(base)[:80]!r}: an "
                              f"adapter's base is a timm name or hf-hub:org/name")
    if cfg.tuner is None:
        raise CheckpointError(f"{CONFIG_FILE} of {label} is an adapter-only folder without a tuner (ltreg.model.tuner)")
    try:
        model = cls(dataclasses.replace(cfg, tuner=None))
        with torch.random.fork_rng(devices=[]):
            src = timm.create_model(base, pretrained=True, num_classes=0, in_chans=cfg.in_chans, **cfg.backbone_kwargs)
        model.backbone.load_state_dict(src.state_dict())
        tuner = tuner_from_dict(cfg.tuner, label)
        tuner.add_modules(model.backbone)
        tuner.load_adapter_state(model.backbone, read_safetensors(folder / ADAPTER_WEIGHTS, label), label)
    except (ModelConfigError, TunerError) as exc:
        raise CheckpointError(f"the adapter-only model {label} (base {base}): {exc}") from exc
    except Exception as exc:  # noqa: BLE001 - download, offline cache miss, a base of another shape: one message
        raise CheckpointError(f"the adapter-only model {label} needs its base model {base} from timm, which failed "
                              f"({type(exc).__name__}: {str(exc)[:300]}). Online, check HF_ENDPOINT; with "
                              f"HF_HUB_OFFLINE=1 the base must be in the Hub cache") from exc
    model.config.tuner = cfg.tuner
    heads = read_safetensors(folder / HEADS_FILE, label) if (folder / HEADS_FILE).is_file() else None
    if heads is None:
        raise CheckpointError(f"{label} has no {HEADS_FILE} (projection head and classifier): incomplete folder")
    want = _heads(model)
    bad = sorted(want.keys() ^ heads.keys()) or [k for k in want if tuple(want[k].shape) != tuple(heads[k].shape)]
    if bad:
        raise CheckpointError(f"{HEADS_FILE} of {label} does not fit its {CONFIG_FILE}: {bad[:3]}")
    model.load_state_dict({**model.state_dict(), **heads})
    return model


def _gather(folder: Path, label: str, prefix: str, trust_remote_pickle: bool) -> tuple[dict[str, Tensor], dict[str, str]]:
    """The weights in LTModel layout (the timm head kept under ``timm:{prefix}.*``) and each key's file."""
    state: dict[str, Tensor] = {}
    origin: dict[str, str] = {}

    def add(file: str, tensors: dict[str, Tensor], timm_layout: bool) -> None:
        for k, v in tensors.items():
            key = (f"timm:{k}" if k.startswith(prefix + ".") else f"backbone.{k}") if timm_layout else k
            state[key], origin[key] = v, f"{file}[{k!r}]"

    if (folder / WEIGHTS_FILE).is_file():
        add(WEIGHTS_FILE, read_safetensors(folder / WEIGHTS_FILE, label), True)
    else:
        pickles = sorted({p for pat in PICKLE_PATTERNS for p in folder.glob(pat)})
        if not pickles:
            raise CheckpointError(f"{label} has no {WEIGHTS_FILE}: incomplete model folder or upload")
        if not trust_remote_pickle:
            raise refuse_pickle(label, [p.name for p in pickles])
        loaded = torch.load(pickles[0], map_location="cpu", weights_only=True)
        loaded = loaded.get("state_dict", loaded) if isinstance(loaded, dict) else loaded
        if not isinstance(loaded, dict):
            raise CheckpointError(f"{pickles[0].name} of {label} holds {type(loaded).__name__}, not a state dict")
        if any(k.startswith("backbone.") for k in loaded):  # an LTModel state dict: heads included
            add(pickles[0].name, loaded, False)
            return state, origin
        add(pickles[0].name, loaded, True)
    if not (folder / HEADS_FILE).is_file():
        raise CheckpointError(f"{label} has no {HEADS_FILE} (projection head and classifier): incomplete folder")
    add(HEADS_FILE, read_safetensors(folder / HEADS_FILE, label), False)
    return state, origin


def _check(model: nn.Module, prefix: str, state: dict[str, Tensor], origin: dict[str, str], label: str) -> None:
    """Every tensor the model built from config.json needs, with its shape; else name key and shape."""
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    if any(k.startswith("timm:") for k in state):
        expected |= {f"timm:{prefix}.weight": (model.num_classes, model.num_features),
                     f"timm:{prefix}.bias": (model.num_classes,)}
    arch = f"architecture {model.config.backbone!r}, num_classes={model.num_classes}"
    for key in ("classifier.weight", f"timm:{prefix}.weight"):
        if key in state and key in expected and state[key].shape[0] != model.num_classes:
            raise CheckpointError(f"num_classes mismatch in {label}: {CONFIG_FILE} says num_classes={model.num_classes}"
                                  f" but {origin[key]} has shape {tuple(state[key].shape)} "
                                  f"({state[key].shape[0]} classes)")
    missing, unexpected = sorted(expected.keys() - state.keys()), sorted(state.keys() - expected.keys())
    if missing or unexpected:
        raise CheckpointError(
            f"the weights of {label} do not match its {CONFIG_FILE} ({arch}): "
            f"{len(missing)} missing tensors {missing[:4]}, {len(unexpected)} unexpected {[origin[k] for k in unexpected[:4]]}"
        )
    for key, shape in expected.items():
        if tuple(state[key].shape) != shape:
            raise CheckpointError(f"the weights of {label} do not match its {CONFIG_FILE} ({arch}): "
                                  f"{origin[key]} has shape {tuple(state[key].shape)}, the model expects {shape}")


def _warn_missing_plugin(block: dict[str, Any]) -> None:
    method = block.get("method")
    if method and method not in registry("methods"):
        dist = block.get("dist")
        how = (f"pip install {dist}" + (f"=={block['dist_version']}" if block.get("dist_version") else "")
               if dist and dist != IN_PROCESS else "register the method (it was registered in-process)")
        warnings.warn(MissingPluginWarning(
            f"this model was trained with the method {method!r}"
            + (f" from the distribution {dist!r}" if dist else "")
            + f", which is not installed; the weights load without it, but to train or fine-tune it: {how}"
        ), stacklevel=4)


def load_pretrained(cls: type[nn.Module], repo_or_dir: str | os.PathLike, revision: str | None = None,
                    trust_remote_pickle: bool = False) -> tuple[Any, RunCard]:
    """A ``cls`` model (eval mode) with the folder's or repo's weights, and the run's card."""
    folder, label = resolve(repo_or_dir, revision, trust_remote_pickle)
    config = read_config(folder, label)
    cfg = folder_model_config(config, label)
    block = config["ltreg"] if isinstance(config.get("ltreg"), dict) else {}
    if "adapter" in block and (folder / ADAPTER_WEIGHTS).is_file() and not (folder / WEIGHTS_FILE).is_file():
        model = _load_adapter_only(cls, folder, label, cfg, block["adapter"])
        _warn_missing_plugin(block)
        return model.eval(), RunCard.from_dict(block)
    try:
        model = cls(cfg)
    except (ModelConfigError, TypeError) as exc:  # TypeError: an allowed backbone argument this backbone lacks
        raise CheckpointError(f"{CONFIG_FILE} of {label}: {exc}") from exc
    prefix = head_prefix(cfg)
    state, origin = _gather(folder, label, prefix, trust_remote_pickle)
    _check(model, prefix, state, origin, label)
    model.load_state_dict({k: v for k, v in state.items() if not k.startswith("timm:")})
    block = config["ltreg"] if isinstance(config.get("ltreg"), dict) else {}
    _warn_missing_plugin(block)
    return model.eval(), RunCard.from_dict(block)
