"""Artifacts: ``save_pretrained`` / ``from_pretrained`` / ``push_run`` in timm's hub layout plus ltreg's heads.

A model folder (or Hub repo) holds ``config.json`` (timm's keys plus an ``ltreg`` block),
``model.safetensors`` (the timm model: backbone + classifier as its head, so
``timm.create_model("hf-hub:org/name", pretrained=True)`` loads it), ``ltreg_heads.safetensors``
(projection head and the exact classifier), ``README.md`` (the model card) and
``per_class_accuracy.png``. Weights are never read from pickle unless the caller trusts it.
"""

from __future__ import annotations

import fnmatch
import json
import os
import shlex
import shutil
import tempfile
import warnings
from pathlib import Path
from typing import Any

import timm
import torch
from huggingface_hub import CommitOperationAdd, EvalResult, HfApi, ModelCardData, snapshot_download
from huggingface_hub.errors import (
    HFValidationError,
    LocalEntryNotFoundError,
    RepositoryNotFoundError,
    RevisionNotFoundError,
)
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import Tensor, nn

import ltreg
from ltreg.models.ltmodel import CosineLinear, LTModel, LTModelConfig, ModelConfigError
from ltreg.registry import IN_PROCESS, RegistryError, registry

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
HEADS_FILE = "ltreg_heads.safetensors"
CARD_FILE = "README.md"
PLOT_FILE = "per_class_accuracy.png"
METRICS_FILE = "metrics.json"
#: What a push uploads (when present); never checkpoints/ or logs.
MODEL_FILES = (CONFIG_FILE, WEIGHTS_FILE, HEADS_FILE, CARD_FILE, PLOT_FILE, METRICS_FILE)
REQUIRED_FILES = (CONFIG_FILE, WEIGHTS_FILE, HEADS_FILE)
PICKLE_PATTERNS = ("pytorch_model.bin", "*.pt", "*.pth", "*.ckpt")
#: Stands for the repo id in the card's snippets; a push writes the real id into the uploaded copy.
REPO_PLACEHOLDER = "<repo_id>"
SPLITS = (("top1", "All"), ("many", "Many"), ("medium", "Medium"), ("few", "Few"))
RECIPE_KEYS = ("epochs", "batch_size", "lr", "momentum", "weight_decay", "nesterov", "schedule", "warmup_epochs",
               "milestones", "lr_decay", "stage2_epochs", "stage2_lr", "stage2_batch_size", "holdout_fraction",
               "mixed_precision", "grad_accum", "seed")  # fmt: skip


class CheckpointError(ValueError):
    """A model folder that cannot be loaded as asked: missing, mismatched, corrupt or untrusted files."""


class PushError(RuntimeError):
    """A Hub push that failed; the message names the intact local folder and the command to retry."""


class MissingPluginWarning(UserWarning):
    """The method a checkpoint was trained with is not installed (the weights still load)."""


# -- timm layout ------------------------------------------------------------------------------
def _head_prefix(timm_model: nn.Module) -> str:
    head = timm_model.get_classifier()
    for name, module in timm_model.named_modules():
        if module is head:
            return name
    raise CheckpointError(f"cannot find the classifier of {type(timm_model).__name__}")


def head_prefix(cfg: LTModelConfig) -> str:
    """Name of the classifier module in the timm model ``cfg.backbone`` with ``num_classes`` outputs."""
    probe = timm.create_model(cfg.backbone, pretrained=False, num_classes=cfg.num_classes, in_chans=cfg.in_chans,
                              **cfg.backbone_kwargs)
    return _head_prefix(probe)


def timm_state_dict(model: LTModel, prefix: str) -> dict[str, Tensor]:
    """The LTModel as a timm model's state dict (backbone + classifier as the timm head ``prefix``).

    A cosine classifier is stored as ``s * w_c / ||w_c||`` with zero bias: timm's linear head then
    ranks classes exactly as the cosine classifier does (the feature norm is common to all classes).
    """
    state = {k: v.detach().cpu().contiguous() for k, v in model.backbone.state_dict().items()}
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


def _method_dist(method: str) -> tuple[str, str] | None:
    """(distribution, version) that provides ``method`` here, or None when it is not installed."""
    try:
        entry = registry("methods").entry(method)
    except RegistryError:
        return None
    return entry.dist, entry.version


# -- saving -----------------------------------------------------------------------------------
def _write_atomic(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def save_pretrained(model: LTModel, directory: str | os.PathLike, run_meta: dict[str, Any] | None = None) -> Path:
    """Write config, weights, heads, model card and per-class plot; each file atomically."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    cfg = model.config
    meta = dict(run_meta or {})
    dataset = meta.get("dataset", {})
    size = dataset.get("image_size", 32)
    prefix = head_prefix(cfg)
    block: dict[str, Any] = {"version": ltreg.__version__, "model": cfg.to_dict(), **meta}
    if meta.get("method") and (found := _method_dist(meta["method"])):
        block["dist"], block["dist_version"] = found
    config = {
        "architecture": cfg.backbone,
        "num_classes": cfg.num_classes,
        "num_features": model.num_features,
        "global_pool": "avg",
        "label_names": dataset.get("class_names") or [str(i) for i in range(cfg.num_classes)],
        "model_args": {"in_chans": cfg.in_chans, **cfg.backbone_kwargs},
        "pretrained_cfg": {
            "input_size": [cfg.in_chans, size, size],
            "interpolation": "bilinear",
            "crop_pct": 0.875 if size >= 96 else 1.0,  # ltreg's "none" eval view
            "mean": dataset.get("mean", [0.5] * cfg.in_chans),
            "std": dataset.get("std", [0.5] * cfg.in_chans),
            "num_classes": cfg.num_classes,
            "classifier": prefix,
        },
        "ltreg": block,
    }
    heads = {f"projector.{k}": v for k, v in model.projector.state_dict().items()}
    heads.update({f"classifier.{k}": v for k, v in model.classifier.state_dict().items()})
    for name, tensors in ((WEIGHTS_FILE, timm_state_dict(model, prefix)), (HEADS_FILE, heads)):
        tmp = directory / f".{name}.tmp"
        save_file({k: v.detach().cpu().contiguous() for k, v in tensors.items()}, str(tmp), metadata={"format": "pt"})
        os.replace(tmp, directory / name)
    plot = _plot_per_class(meta, directory / PLOT_FILE)
    _write_atomic(directory / CARD_FILE, model_card(config, plot=plot).encode())
    _write_atomic(directory / CONFIG_FILE, json.dumps(config, indent=1, default=str).encode())
    return directory


def _plot_per_class(meta: dict[str, Any], path: Path) -> bool:
    """Per-class test accuracy against training count (log x), coloured by split; False if no data."""
    counts, acc = meta.get("dataset", {}).get("class_counts"), meta.get("per_class")
    if not counts or not acc:
        return False
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError:  # matplotlib is the optional "plot" extra
        return False
    many, few = meta["dataset"]["many_thr"], meta["dataset"]["few_thr"]
    fig = Figure(figsize=(6, 3.6), dpi=110)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    for label, color, keep in (("many", "tab:blue", lambda n: n > many), ("medium", "tab:orange", lambda n: few <= n <= many),
                               ("few", "tab:red", lambda n: n < few)):  # fmt: skip
        pts = [(n, a) for n, a in zip(counts, acc) if a is not None and keep(n)]
        if pts:
            ax.scatter(*zip(*pts), s=14, color=color, label=f"{label} ({len(pts)})")
    for thr in (many, few):
        ax.axvline(thr, color="grey", lw=0.8, ls="--")
    ax.set(xscale="log", xlabel="training images of the class (log)", ylabel="test top-1 %", ylim=(-3, 103),
           title="per-class test accuracy against training frequency")
    ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    tmp = path.with_name(f".{path.name}.tmp")
    fig.savefig(tmp, format="png")
    os.replace(tmp, path)
    return True


def _fmt(value: Any) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)


def model_card(config: dict[str, Any], plot: bool = False) -> str:
    """README.md: YAML metadata (``model-index``, an ``ltreg:`` block) and a body for people."""
    meta = config["ltreg"]
    cfg = LTModelConfig(**meta["model"])
    arch, method = config["architecture"], meta.get("method")
    dataset, metrics, tc = meta.get("dataset", {}), meta.get("metrics", {}), meta.get("train_config", {})
    name = dataset.get("name")
    counts = dataset.get("class_counts") or []
    block: dict[str, Any] = {"distributions": {"ltreg": ltreg.__version__}}
    if method:
        dist, version = meta.get("dist", IN_PROCESS), meta.get("dist_version", "")
        block = {"method": method, "distribution": dist, "hparams": meta.get("hparams", {}), "dataset": name,
                 "lt_profile": {"profile": (dataset.get("info") or {}).get("profile", tc.get("profile")),
                                "imbalance": tc.get("imbalance") or (max(counts) / min(counts) if counts else None),
                                "seed": tc.get("seed")},
                 "class_counts": counts, "many_thr": dataset.get("many_thr"), "few_thr": dataset.get("few_thr"),
                 "distributions": {**block["distributions"], **({dist: version} if dist != IN_PROCESS else {})}}
    results = [EvalResult(task_type="image-classification", dataset_type=name, dataset_name=dataset.get("test_name", name),
                          dataset_split="test", metric_type="accuracy", metric_name=f"top-1 ({label.lower()})",
                          metric_value=round(float(metrics[key]), 4))
               for key, label in SPLITS if name and isinstance(metrics.get(key), (int, float)) and metrics[key] == metrics[key]]
    data = ModelCardData(
        library_name="timm", license="apache-2.0", pipeline_tag="image-classification",
        tags=["ltreg", "timm", "image-classification", "long-tailed-recognition", *([method] if method else [])],
        datasets=[name] if name else None, model_name=f"{arch}-{method}-{name}" if results else None,
        eval_results=results or None, ltreg=block,
    )
    title = f"{method} on {name} ({arch})" if method else f"ltreg model ({arch}, {cfg.num_classes} classes)"
    body = [f"# {title}", "",
            f"A long-tailed image classifier saved by [ltreg](https://pypi.org/project/ltreg/) {ltreg.__version__}: "
            f"timm backbone `{arch}`, {cfg.classifier} classifier over {cfg.num_classes} classes"
            + (f", trained with the method **{method}** on **{name}**." if method else ".")]
    if results:
        body += ["", f"## Results (top-1 %, {dataset.get('test_name', name)})", "",
                 "| split | classes | top-1 % |", "|---|---:|---:|"]
        n_all = sum(metrics.get(f"num_{g}", 0) for g in ("many", "medium", "few"))
        for key, label in SPLITS:
            n = n_all if key == "top1" else metrics.get(f"num_{key}", "")
            value = float(metrics.get(key, float("nan")))
            body.append(f"| {label} | {n} | {'–' if value != value else f'{value:.2f}'} |")
        body += ["", f"Many-shot: > {dataset.get('many_thr')} training images; few-shot: < {dataset.get('few_thr')}."]
    if plot:
        body += ["", f"![per-class test accuracy against training frequency]({PLOT_FILE})"]
    if method:
        rows = [("method", method), ("backbone", arch),
                ("classifier", cfg.classifier + (f" (s = {cfg.cosine_scale:g})" if cfg.classifier == "cosine" else "")),
                ("projection head", cfg.proj_dim or "none"),
                ("data set", f"{name}, {block['lt_profile']['profile']} profile, imbalance {_fmt(block['lt_profile']['imbalance'])}, "
                             f"{sum(counts)} training images")]
        rows += [(k, tc[k]) for k in RECIPE_KEYS
                 if tc.get(k) not in (None, []) and (k not in ("milestones", "lr_decay") or tc.get("schedule") == "step")]
        rows += [(f"hparams.{k}", v) for k, v in meta.get("hparams", {}).items()]
        body += ["", "## Training recipe", "", "| setting | value |", "|---|---|"]
        body += [f"| {k} | {_fmt(v)} |" for k, v in rows]
    body += ["", "## How to load", "", f"Replace `{REPO_PLACEHOLDER}` with the Hub repo id or a local folder.", "",
             "```python", "import ltreg", "",
             f'model = ltreg.from_pretrained("{REPO_PLACEHOLDER}")  # LTModel, eval mode',
             "logits = model.predict(images)  # images [N, C, H, W], normalised with config.json's mean / std",
             f'backbone = ltreg.load_backbone("{REPO_PLACEHOLDER}")  # timm backbone: pooled features',
             "```", "", "With timm alone (backbone + classifier, no projection head):", "", "```python", "import timm"]
    if timm.models.model_entrypoint(arch).__module__.startswith("ltreg"):
        body.append(f"import ltreg.models.cifar_resnet  # registers {arch} into timm")
    body += ["", f'model = timm.create_model("hf-hub:{REPO_PLACEHOLDER}", pretrained=True).eval()', "```"]
    if cfg.classifier == "cosine":
        body += ["", "The classifier is cosine: timm's linear head holds `s * w_c / ||w_c||` with zero bias, so timm's "
                 "logits are ltreg's times the feature norm: the same predictions (argmax), not the same logits."]
    if meta.get("citation"):
        body += ["", "## Citation", "", meta["citation"]]
    return f"---\n{data.to_yaml()}\n---\n" + "\n".join(body).rstrip() + "\n"


# -- pushing ----------------------------------------------------------------------------------
def push_run(run_dir: str | os.PathLike, repo_id: str, *, private: bool = False, revision: str | None = None,
             token: str | None = None) -> str:
    """Upload a run folder's model files to ``repo_id`` in one commit; returns the repo URL.

    Local files are only read. Any failure raises :class:`PushError` with the retry command.
    """
    run_dir = Path(run_dir).resolve()
    missing = [f for f in REQUIRED_FILES if not (run_dir / f).is_file()]
    if missing:
        raise CheckpointError(f"{run_dir} lacks {', '.join(missing)}: not a finished run or model folder; "
                              f"train it to the end (or save_pretrained a model there) first")
    method = json.loads((run_dir / CONFIG_FILE).read_text()).get("ltreg", {}).get("method", "model")
    ops = [CommitOperationAdd(f, (run_dir / f).read_bytes().replace(REPO_PLACEHOLDER.encode(), repo_id.encode())
                              if f == CARD_FILE else str(run_dir / f))
           for f in MODEL_FILES if (run_dir / f).is_file()]
    try:
        api = HfApi(token=token)
        url = api.create_repo(repo_id, private=private, exist_ok=True)
        if revision not in (None, "main"):
            api.create_branch(repo_id, branch=revision, exist_ok=True)
        api.create_commit(repo_id, ops, commit_message=f"ltreg {ltreg.__version__}: upload {method}",
                          revision=revision)
    except Exception as exc:  # noqa: BLE001 - every failure gets the same way out: retry later
        cmd = " ".join(["ltreg push", shlex.quote(str(run_dir)), "--repo", repo_id,
                        *(["--revision", revision] if revision else []), *(["--private"] if private else [])])
        raise PushError(
            f"pushing to the Hub repo {repo_id} failed: {type(exc).__name__}: {str(exc).strip()}\n"
            f"The upload is a single commit: the repo holds all of the model files or none of them. "
            f"The local run folder is intact at {run_dir}; retry with:\n  {cmd}"
        ) from exc
    return f"{url}/tree/{revision}" if revision else str(url)


def push_to_hub(model: LTModel, repo_id: str, *, private: bool = False, revision: str | None = None,
                token: str | None = None, run_meta: dict[str, Any] | None = None) -> str:
    """Save an in-memory model to a temporary folder and push it; the folder is kept if the push fails."""
    folder = Path(tempfile.mkdtemp(prefix="ltreg-push-"))
    save_pretrained(model, folder, run_meta=run_meta)
    url = push_run(folder, repo_id, private=private, revision=revision, token=token)
    shutil.rmtree(folder)
    return url


# -- loading ----------------------------------------------------------------------------------
def _refuse_pickle(label: str, names: list[str]) -> CheckpointError:
    return CheckpointError(
        f"{label} has no {WEIGHTS_FILE}, only pickle weights ({', '.join(names)}). ltreg does not unpickle "
        f"downloaded or shared files by default (unpickling can run arbitrary code). If you trust their author, "
        f"pass trust_remote_pickle=True (read with torch.load(weights_only=True)), or convert them to safetensors."
    )


def _resolve(repo_or_dir: str | os.PathLike, revision: str | None, trust_remote_pickle: bool) -> tuple[Path, str]:
    """A local folder as is, or the needed files of a Hub repo in the user's cache; and a label for errors."""
    path = Path(repo_or_dir)
    if path.is_dir():
        return path, str(path)
    repo_id = str(repo_or_dir).removeprefix("hf-hub:")
    if path.exists() or repo_id.count("/") != 1 or repo_id.startswith((".", "/", "~")):
        raise CheckpointError(f"{repo_or_dir} is neither a model folder nor a Hub repo id (org/name)")
    label = f"{repo_id}@{revision or 'main'}"
    patterns = [*REQUIRED_FILES, *(PICKLE_PATTERNS if trust_remote_pickle else ())]
    try:
        folder = Path(snapshot_download(repo_id, revision=revision, allow_patterns=patterns))
        if not (folder / WEIGHTS_FILE).exists() and not trust_remote_pickle:
            remote = HfApi().list_repo_files(repo_id, revision=revision)
            pickles = [f for f in remote if any(fnmatch.fnmatch(f, p) for p in PICKLE_PATTERNS)]
            if pickles:
                raise _refuse_pickle(label, pickles)
    except (RepositoryNotFoundError, RevisionNotFoundError, LocalEntryNotFoundError, HFValidationError) as exc:
        raise CheckpointError(f"{repo_or_dir} is not a local folder, and the Hub repo {label} cannot be found "
                              f"(nor in the cache when offline): {type(exc).__name__}: {exc}") from exc
    return folder, label


def _read_safetensors(path: Path, label: str) -> dict[str, Tensor]:
    try:
        return load_file(str(path))
    except (SafetensorError, OSError) as exc:
        raise CheckpointError(
            f"{path.name} of {label} is corrupt or truncated ({path}: {exc}); save the model again, or for a Hub "
            f"repo delete that cached file and load again"
        ) from exc


def _read_config(folder: Path, label: str) -> tuple[dict[str, Any], LTModelConfig]:
    """config.json and the LTModelConfig it describes; its timm keys must agree with the ltreg block."""
    path = folder / CONFIG_FILE
    if not path.is_file():
        raise CheckpointError(f"{label} has no {CONFIG_FILE}: not an ltreg model folder or repo")
    try:
        config = json.loads(path.read_text())
        cfg = LTModelConfig(**config["ltreg"]["model"])
    except KeyError as exc:
        raise CheckpointError(f"{CONFIG_FILE} of {label} has no ltreg model block ({exc}): a plain timm model? "
                              f"load it with timm.create_model") from exc
    except (ValueError, TypeError) as exc:
        raise CheckpointError(f"{CONFIG_FILE} of {label} is corrupt: {exc}") from exc
    for key, ours in (("architecture", cfg.backbone), ("num_classes", cfg.num_classes)):
        if config.get(key, ours) != ours:
            raise CheckpointError(f"{CONFIG_FILE} of {label} contradicts itself: {key}={config[key]!r} but "
                                  f"ltreg.model says {ours!r}")
    return config, cfg


def _gather(folder: Path, label: str, prefix: str, trust_remote_pickle: bool) -> tuple[dict[str, Tensor], dict[str, str]]:
    """The weights in LTModel layout (the timm head kept under ``timm:{prefix}.*``) and each key's file."""
    state: dict[str, Tensor] = {}
    origin: dict[str, str] = {}

    def add(file: str, tensors: dict[str, Tensor], timm_layout: bool) -> None:
        for k, v in tensors.items():
            key = (f"timm:{k}" if k.startswith(prefix + ".") else f"backbone.{k}") if timm_layout else k
            state[key], origin[key] = v, f"{file}[{k!r}]"

    if (folder / WEIGHTS_FILE).is_file():
        add(WEIGHTS_FILE, _read_safetensors(folder / WEIGHTS_FILE, label), True)
    else:
        pickles = sorted({p for pat in PICKLE_PATTERNS for p in folder.glob(pat)})
        if not pickles:
            raise CheckpointError(f"{label} has no {WEIGHTS_FILE}: incomplete model folder or upload")
        if not trust_remote_pickle:
            raise _refuse_pickle(label, [p.name for p in pickles])
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
    add(HEADS_FILE, _read_safetensors(folder / HEADS_FILE, label), False)
    return state, origin


def _check(model: LTModel, prefix: str, state: dict[str, Tensor], origin: dict[str, str], label: str) -> None:
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


def _warn_missing_plugin(meta: dict[str, Any]) -> None:
    method = meta.get("method")
    if method and method not in registry("methods"):
        dist = meta.get("dist")
        how = (f"pip install {dist}" + (f"=={meta['dist_version']}" if meta.get("dist_version") else "")
               if dist and dist != IN_PROCESS else "register the method (it was registered in-process)")
        warnings.warn(MissingPluginWarning(
            f"this model was trained with the method {method!r}"
            + (f" from the distribution {dist!r}" if dist else "")
            + f", which is not installed; the weights load without it, but to train or fine-tune it: {how}"
        ), stacklevel=4)


def _load(repo_or_dir: str | os.PathLike, revision: str | None, trust_remote_pickle: bool) -> tuple[LTModel, dict[str, Any]]:
    folder, label = _resolve(repo_or_dir, revision, trust_remote_pickle)
    config, cfg = _read_config(folder, label)
    try:
        model = LTModel(cfg)
    except ModelConfigError as exc:
        raise CheckpointError(f"{CONFIG_FILE} of {label}: {exc}") from exc
    prefix = head_prefix(cfg)
    state, origin = _gather(folder, label, prefix, trust_remote_pickle)
    _check(model, prefix, state, origin, label)
    model.load_state_dict({k: v for k, v in state.items() if not k.startswith("timm:")})
    _warn_missing_plugin(config["ltreg"])
    return model.eval(), config


def from_pretrained(repo_or_dir: str | os.PathLike, *, revision: str | None = None,
                    trust_remote_pickle: bool = False) -> LTModel:
    """An :class:`LTModel` (eval mode) from a folder written by :func:`save_pretrained` or a Hub repo id."""
    return _load(repo_or_dir, revision, trust_remote_pickle)[0]


def load_backbone(repo_or_dir: str | os.PathLike, **kwargs: Any) -> nn.Module:
    """The timm backbone alone (``model(x)`` gives pooled features), eval mode."""
    return from_pretrained(repo_or_dir, **kwargs).backbone.eval()


@torch.inference_mode()
def evaluate_pretrained(repo_or_dir: str | os.PathLike, dataset: str | None = None, data_root: str | None = None,
                        *, revision: str | None = None, batch_size: int = 256) -> dict[str, Any]:
    """Top-1, balanced, many / medium / few and per-class accuracy on the test split of the data set the
    model was trained on (same LT profile, imbalance and seed, hence the same split thresholds) or ``dataset``."""
    from torch.utils.data import DataLoader

    from ltreg.config import TrainConfig
    from ltreg.data.build import build_data
    from ltreg.data.views import ViewDataset, collate
    from ltreg.evaluate import lt_metrics

    model, config = _load(repo_or_dir, revision, False)
    tc = config["ltreg"].get("train_config") or {}
    name = dataset or tc.get("dataset")
    if name is None:
        raise CheckpointError(f"{repo_or_dir} does not record the data set it was trained on; pass dataset=")
    same = {k: tc[k] for k in ("imbalance", "profile", "seed") if k in tc} if name == tc.get("dataset") else {}
    data = build_data(TrainConfig(dataset=name, data_root=data_root, **same))
    if (data.test.num_classes, data.test.channels) != (model.num_classes, model.config.in_chans):
        raise CheckpointError(
            f"{repo_or_dir} has {model.num_classes} classes and {model.config.in_chans} input channels; the data set "
            f"{name} has {data.test.num_classes} and {data.test.channels}: evaluate it on a matching data set"
        )
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    model.to(device)
    logits, targets = [], []
    for batch in DataLoader(ViewDataset(data.test, ("none",)), batch_size=batch_size, collate_fn=collate):
        logits.append(model.predict(batch.images[:, 0].to(device)).float().cpu())
        targets.append(batch.targets)
    train = data.train
    return lt_metrics(torch.cat(logits), torch.cat(targets), train.class_counts, train.many_thr, train.few_thr)
