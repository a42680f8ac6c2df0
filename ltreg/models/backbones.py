"""Where a backbone's architecture and initial weights come from: timm names, tags, Hub repos, folders.

``--backbone`` accepts a timm architecture (``resnet50``: random weights unless ``--pretrained``), a
tagged name (``resnet50.a1_in1k``: that tag's weights), ``hf-hub:org/name`` (that repo's weights) or a
folder (a timm model folder, ``config.json`` + ``model.safetensors``, or an ltreg run / model folder).
``--init-from`` starts from an ltreg run folder or Hub repo: backbone, and heads whose shapes match.

Weights always load through timm (``timm.create_model(..., pretrained=True)``), so ``HF_ENDPOINT``,
the Hub cache, ``HF_HUB_OFFLINE`` and timm's input-channel adaptation work exactly as in timm. The
:class:`~ltreg.models.ltmodel.LTModel` itself records only the plain architecture (what
``config.json``'s ``architecture`` must be for ``timm.create_model("hf-hub:...")``).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from ltreg.errors import ConfigError

#: model_args keys of a source's config.json that the run sets itself.
_RUN_ARGS = ("in_chans", "num_classes")


def parse_backbone(name: str) -> tuple[str, str]:
    """``(kind, ref)``: kind is ``arch``, ``tag``, ``hub`` or ``dir``; ref is what ``timm.create_model`` takes."""
    if name.startswith("hf-hub:"):
        if name.removeprefix("hf-hub:").count("/") != 1:
            raise ConfigError(f"backbone {name!r}: a Hub backbone is hf-hub:org/name")
        return "hub", name
    path = name.removeprefix("local-dir:")
    if name.startswith("local-dir:") or "/" in name or os.sep in name or Path(name).is_dir():
        if not Path(path).is_dir():
            raise ConfigError(f"backbone {name!r} is not a folder here and not a timm name; for a Hub repo "
                              f"write hf-hub:{path}")
        return "dir", f"local-dir:{Path(path).resolve()}"
    if "." not in name:
        return "arch", name
    import timm
    from timm.models import split_model_name_tag

    arch = split_model_name_tag(name)[0]
    if timm.is_model(arch) and name not in timm.list_pretrained(name):  # a tag timm does not know: never guess
        tags = timm.list_pretrained(f"{arch}.*")[:6]
        raise ConfigError(f"backbone {name!r}: timm has no weights tagged {name.split('.', 1)[1]!r} for {arch}. "
                          + (f"Its tags: {', '.join(tags)}." if tags else f"{arch} has no pretrained weights in timm.")
                          + f" Or pass --backbone {arch} to train from random weights")
    return "tag", name


def implies_pretrained(name: str) -> bool:
    """Whether the backbone name itself names weights (a tag, a Hub repo, a folder)."""
    return parse_backbone(name)[0] != "arch"


def resolve_arch(name: str) -> tuple[str, dict[str, Any]]:
    """The plain timm architecture a backbone name builds and the model arguments its source declares.

    Only ``config.json`` is read (downloaded for ``hf-hub:``); weights are loaded later, by
    :func:`load_initial_weights`.
    """
    from timm.models import split_model_name_tag
    from timm.models._hub import load_model_config_from_hf, load_model_config_from_path

    kind, ref = parse_backbone(name)
    if kind in ("arch", "tag"):
        return split_model_name_tag(name)[0], {}
    try:
        if kind == "hub":
            _, arch, args = load_model_config_from_hf(ref.removeprefix("hf-hub:"))
        else:
            _, arch, args = load_model_config_from_path(ref.removeprefix("local-dir:"))
    except Exception as exc:  # noqa: BLE001 - not found, offline, corrupt: one message with the way out
        raise ConfigError(f"backbone {name}: cannot read its config.json ({type(exc).__name__}: {exc}). A Hub repo "
                          f"must exist (or be in the cache when HF_HUB_OFFLINE=1); a folder must hold config.json "
                          f"and model.safetensors (a timm model folder or an ltreg run)") from exc
    args = {k: v for k, v in (args or {}).items() if k not in _RUN_ARGS}
    return split_model_name_tag(arch)[0], args


def backbone_stats(name: str) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """The mean / std a timm backbone name (tagged or its default tag) was pretrained with (``--normalize backbone``)."""
    from timm.models import get_pretrained_cfg

    kind = parse_backbone(name)[0]
    cfg = get_pretrained_cfg(name) if kind in ("arch", "tag") else None
    if cfg is None or not cfg.mean or not cfg.std:
        raise ConfigError(f"--normalize backbone: timm records no mean / std for the backbone {name!r} (a timm name "
                          f"or tag is needed); use --normalize data")
    return tuple(cfg.mean), tuple(cfg.std)


def _weights_of(name: str) -> str:
    """Where timm finds the weights of a registry name (tagged or its default tag); error if it has none."""
    import timm
    from timm.models import get_pretrained_cfg, split_model_name_tag

    cfg = get_pretrained_cfg(name)
    if cfg is None or not (cfg.hf_hub_id or cfg.url or cfg.file or cfg.state_dict):
        arch = split_model_name_tag(name)[0]
        tags = timm.list_pretrained(f"{arch}.*")[:6]
        hint = f" Its tags with weights: {', '.join(tags)}." if tags else ""
        raise ConfigError(f"backbone {name}: timm has no pretrained weights for {name}.{hint} Drop --pretrained to "
                          f"train from random weights, or pick a tagged name (timm.list_pretrained()) or an hf-hub: repo")
    return f"hf-hub:{cfg.hf_hub_id}" if cfg.hf_hub_id else (cfg.url or cfg.file or "timm")


def _tagged(name: str) -> str:
    """``arch.tag`` of a timm name: the tag given, or the default tag timm picks for a plain architecture."""
    from timm.models import get_pretrained_cfg, split_model_name_tag

    arch, tag = split_model_name_tag(name)
    cfg = get_pretrained_cfg(name)
    return f"{arch}.{tag or getattr(cfg, 'tag', None) or '?'}"


def _timm_backbone(model: nn.Module, ref: str, label: str, named: str | None = None) -> tuple[dict[str, Tensor], str]:
    """The state dict of ``ref`` built by timm with its pretrained weights for this model's input channels,
    and a note on input-channel adaptation ('' when none was needed). A failure names ``named`` (the label with
    the tag and the weights' location tried) or ``label``."""
    import timm

    chans = model.config.in_chans
    try:
        src = timm.create_model(ref, pretrained=True, num_classes=0, in_chans=chans, **model.config.backbone_kwargs)
    except Exception as exc:  # noqa: BLE001 - download, offline cache miss, corrupt file: one message
        first = (str(exc).strip().splitlines() or [""])[0]
        raise ConfigError(f"{named or label}: cannot load the pretrained weights ({type(exc).__name__}: {first}). Online, "
                          f"check the name and HF_ENDPOINT; with HF_HUB_OFFLINE=1 they must be in the Hub cache "
                          f"(run once online); or train from random weights (a plain --backbone without "
                          f"--pretrained)") from exc
    pcfg = getattr(src, "pretrained_cfg", {}) or {}
    src_chans = (pcfg.get("input_size") or (3,))[0]
    note = ""
    if src_chans != chans:
        note = (f"; input convolution {pcfg.get('first_conv')!r} adapted from {src_chans} to {chans} channel(s) "
                f"by timm's adapt_input_conv (the data has {chans})")
    return src.state_dict(), note


def _load_exact(module: nn.Module, state: dict[str, Tensor], label: str) -> None:
    """Load ``state`` into ``module``; every key and shape must match, else name the first mismatch."""
    ours = module.state_dict()
    missing, extra = sorted(ours.keys() - state.keys()), sorted(state.keys() - ours.keys())
    if missing or extra:
        raise ConfigError(f"{label}: the weights do not fit the backbone: missing {missing[:4]}, unexpected {extra[:4]}")
    for key, value in ours.items():
        if value.shape != state[key].shape:
            raise ConfigError(f"{label}: {key} has shape {tuple(state[key].shape)} in the weights but "
                              f"{tuple(value.shape)} in this run's backbone (input channels or model arguments "
                              f"differ); pass the matching --backbone or data")
    module.load_state_dict(state)


def _load_heads(model: nn.Module, heads: dict[str, Tensor]) -> list[str]:
    """Load the projector and the classifier where every tensor's shape matches; say what happened to each."""
    said = []
    for part in ("projector", "classifier"):
        ours = {k: v for k, v in model.state_dict().items() if k.startswith(part + ".")}
        theirs = {k: v for k, v in heads.items() if k.startswith(part + ".")}
        if not ours:
            continue
        if ours.keys() != theirs.keys():
            said.append(f"{part} kept random (its layers differ: {sorted(theirs)[:3]} there, {sorted(ours)[:3]} here)")
            continue
        bad = [k for k in ours if ours[k].shape != theirs[k].shape]
        if bad:
            said.append(f"{part} kept random ({bad[0]} is {tuple(theirs[bad[0]].shape)} there, "
                        f"{tuple(ours[bad[0]].shape)} here)")
            continue
        getattr(model, part).load_state_dict({k.removeprefix(part + "."): v for k, v in theirs.items()})
        said.append(f"{part} loaded")
    return said


def _init_from(model: nn.Module, source: str) -> str:
    """Backbone (and matching heads) from an ltreg run / model folder, Hub repo or timm folder."""
    from timm.models import split_model_name_tag

    from ltreg.hub import read_config, read_safetensors, resolve
    from ltreg.layout import HEADS_FILE

    try:
        folder, label = resolve(source)
    except Exception as exc:  # noqa: BLE001 - CheckpointError or Hub errors: name the flag
        raise ConfigError(f"--init-from {source}: {exc}") from exc
    config = read_config(folder, label)
    arch = split_model_name_tag(str(config.get("architecture", "")))[0]
    if arch != model.config.backbone:
        raise ConfigError(f"--init-from {source} holds a {arch!r} backbone but this run builds "
                          f"{model.config.backbone!r}; pass --backbone {arch}")
    state, note = _timm_backbone(model, f"local-dir:{folder}", f"--init-from {label}")
    _load_exact(model.backbone, state, f"--init-from {label}")
    said = ["backbone loaded"]
    if (folder / HEADS_FILE).is_file():
        said += _load_heads(model, read_safetensors(folder / HEADS_FILE, label))
    else:
        said.append(f"heads kept random (no {HEADS_FILE}: a timm folder, not an ltreg run)")
    return f"init-from {label}: {', '.join(said)}{note}"


def load_initial_weights(model: nn.Module, backbone: str | None, pretrained: bool, init_from: str | None,
                         say: Callable[[str], None] = print) -> str | None:
    """Load the initial weights the run names into ``model`` (an LTModel built by ``build_run``) and say so.

    ``init_from`` wins (the config allows only one source); else the backbone's tag / Hub repo / folder,
    or timm's default tag of a plain name with ``pretrained``. Nothing named: random weights, None.
    The global RNG is left as it was, so everything after the model is seeded as in a run from scratch.
    """
    if init_from is None and not (backbone and (pretrained or implies_pretrained(backbone))):
        return None
    with torch.random.fork_rng(devices=[]):
        if init_from is not None:
            message = _init_from(model, init_from)
        else:
            assert backbone is not None
            kind, ref = parse_backbone(backbone)
            where = ref if kind in ("hub", "dir") else _weights_of(backbone)
            label = f"backbone {backbone}"
            named = f"{label} (timm tag {_tagged(backbone)}, weights {where})" if kind in ("arch", "tag") else label
            state, note = _timm_backbone(model, ref, label, named)
            _load_exact(model.backbone, state, label)
            message = f"{label}: pretrained weights from {where}{note}"
    say(message)
    return message
