"""The Hugging Face Hub and model folders as files: find a folder or download a repo, read, push.

This module knows file names and the Hub, not models: :mod:`ltreg.models.pretrained` turns the
files into an :class:`~ltreg.models.ltmodel.LTModel`. A model folder (or Hub repo) holds
``config.json`` (timm's keys plus an ``ltreg`` block), ``model.safetensors`` (timm's layout),
``ltreg_heads.safetensors`` (projection head and exact classifier), ``README.md`` (the model card),
``per_class_accuracy.png``, ``metrics.json`` and ``manifest.json`` (SHA-256 of each, checked on load).
Weights are never read from pickle unless the caller trusts it.
"""

from __future__ import annotations

import fnmatch
import json
import os
import shlex
from pathlib import Path
from typing import Any

from huggingface_hub import CommitOperationAdd, HfApi, snapshot_download
from huggingface_hub.errors import (
    HFValidationError,
    LocalEntryNotFoundError,
    RepositoryNotFoundError,
    RevisionNotFoundError,
)
from safetensors import SafetensorError
from safetensors.torch import load_file
from torch import Tensor

from ltreg.card import REPO_PLACEHOLDER
from ltreg.checkpoint import verify_manifest
from ltreg.errors import CheckpointError, PushError
from ltreg.layout import (
    ADAPTER_CONFIG,
    ADAPTER_DIR,
    ADAPTER_FILES,
    ADAPTER_MODEL_FILES,
    ADAPTER_WEIGHTS,
    CARD_FILE,
    CONFIG_FILE,
    MANIFEST,
    MODEL_FILES,
    REQUIRED_FILES,
    WEIGHTS_FILE,
)
from ltreg.models.config import folder_model_config
from ltreg.version import __version__

PICKLE_PATTERNS = ("pytorch_model.bin", "*.pt", "*.pth", "*.ckpt")
#: A config.json larger than this is refused before it is parsed (a real one is a few kB).
MAX_CONFIG_BYTES = 4 * 2**20

__all__ = ["CheckpointError", "PushError", "resolve", "read_config", "read_safetensors", "push_run", "MODEL_FILES"]


def refuse_pickle(label: str, names: list[str]) -> CheckpointError:
    return CheckpointError(
        f"{label} has no {WEIGHTS_FILE}, only pickle weights ({', '.join(names)}). ltreg does not unpickle "
        f"downloaded or shared files by default (unpickling can run arbitrary code). If you trust their author, "
        f"pass trust_remote_pickle=True (read with torch.load(weights_only=True)), or convert them to safetensors."
    )


def resolve(repo_or_dir: str | os.PathLike, revision: str | None = None, trust_remote_pickle: bool = False,
            files: tuple[str, ...] = (*REQUIRED_FILES, ADAPTER_WEIGHTS, ADAPTER_CONFIG, MANIFEST)) -> tuple[Path, str]:
    """A local folder as is, or ``files`` of a Hub repo in the user's cache; and a label for errors.

    The folder's ``manifest.json``, when present, is checked: a file that does not match its SHA-256
    is a :class:`CheckpointError` before anything is loaded.
    """
    path = Path(repo_or_dir)
    if path.is_dir():
        verify_manifest(path, str(path), required=False)
        return path, str(path)
    repo_id = str(repo_or_dir).removeprefix("hf-hub:")
    if path.exists() or repo_id.count("/") != 1 or repo_id.startswith((".", "/", "~")):
        raise CheckpointError(f"{repo_or_dir} is neither a model folder nor a Hub repo id (org/name)")
    label = f"{repo_id}@{revision or 'main'}"
    patterns = [*files, *(PICKLE_PATTERNS if trust_remote_pickle else ())]
    try:
        folder = Path(snapshot_download(repo_id, revision=revision, allow_patterns=patterns))
        if not (folder / WEIGHTS_FILE).exists() and not (folder / ADAPTER_WEIGHTS).exists() and not trust_remote_pickle:
            remote = HfApi().list_repo_files(repo_id, revision=revision)
            pickles = [f for f in remote if any(fnmatch.fnmatch(f, p) for p in PICKLE_PATTERNS)]
            if pickles:
                raise refuse_pickle(label, pickles)
    except (RepositoryNotFoundError, RevisionNotFoundError, LocalEntryNotFoundError, HFValidationError) as exc:
        raise CheckpointError(f"{repo_or_dir} is not a local folder, and the Hub repo {label} cannot be found "
                              f"(nor in the cache when offline): {type(exc).__name__}: {exc}") from exc
    verify_manifest(folder, label, required=False)
    return folder, label


def read_config(folder: Path, label: str) -> dict[str, Any]:
    """``config.json`` of a model folder as a mapping (data only: nothing in it is executed or followed)."""
    path = folder / CONFIG_FILE
    if not path.is_file():
        raise CheckpointError(f"{label} has no {CONFIG_FILE}: not an ltreg model folder or repo")
    if path.stat().st_size > MAX_CONFIG_BYTES:
        raise CheckpointError(f"{CONFIG_FILE} of {label} ({path}) is {path.stat().st_size} bytes, more than a model "
                              f"config can be ({MAX_CONFIG_BYTES}); refusing to parse it")
    try:
        config = json.loads(path.read_text())
    except (ValueError, UnicodeDecodeError, RecursionError) as exc:
        raise CheckpointError(f"{CONFIG_FILE} of {label} ({path}) is corrupt: not valid JSON ({exc}); save the model "
                              f"again") from exc
    if not isinstance(config, dict):
        raise CheckpointError(f"{CONFIG_FILE} of {label} is not a JSON object, so it has no ltreg model block: "
                              f"not an ltreg model folder")
    return config


def read_safetensors(path: Path, label: str) -> dict[str, Tensor]:
    """Tensors of a safetensors file; a corrupt or truncated one is a :class:`CheckpointError` naming it."""
    try:
        return load_file(str(path))
    except (SafetensorError, OSError) as exc:
        raise CheckpointError(
            f"{path.name} of {label} is corrupt or truncated ({path}: {exc}); save the model again, or for a Hub "
            f"repo delete that cached file and load again"
        ) from exc


def push_run(run_dir: str | os.PathLike, repo_id: str, *, private: bool = False, revision: str | None = None,
             token: str | None = None, adapter_only: bool = False) -> str:
    """Upload a run folder's model files to ``repo_id`` in one commit; returns the repo URL.

    ``adapter_only`` uploads the run's ``adapter/`` folder instead (peft's adapter files, the heads and a
    config naming the base model). Local files are only read. Any failure raises :class:`PushError` with
    the retry command.
    """
    run_dir = Path(run_dir).resolve()
    required = REQUIRED_FILES
    if adapter_only:
        if not (run_dir / ADAPTER_DIR / CONFIG_FILE).is_file():
            raise CheckpointError(
                f"{run_dir} has no adapter-only export ({ADAPTER_DIR}/): only a run with a mergeable tuner (lora, "
                f"dora, ia3) on a base timm can fetch (a tagged timm name or --backbone hf-hub:org/name, not a local "
                f"folder, random weights or --init-from) writes one. Push the merged model: drop --adapter-only")
        run_dir, required = run_dir / ADAPTER_DIR, ADAPTER_FILES
    missing = [f for f in required if not (run_dir / f).is_file()]
    if missing:
        raise CheckpointError(f"{run_dir} lacks {', '.join(missing)}: not a finished run or model folder; "
                              f"train it to the end (or save_pretrained a model there) first")
    verify_manifest(run_dir, str(run_dir), required=False)
    config = read_config(run_dir, str(run_dir))
    folder_model_config(config, str(run_dir))  # refuses a tampered config before anything is uploaded
    method = config["ltreg"].get("method") or "model"
    ops = [CommitOperationAdd(f, (run_dir / f).read_bytes().replace(REPO_PLACEHOLDER.encode(), repo_id.encode())
                              if f == CARD_FILE else str(run_dir / f))
           for f in (ADAPTER_MODEL_FILES if adapter_only else MODEL_FILES) if (run_dir / f).is_file()]
    try:
        api = HfApi(token=token)
        url = api.create_repo(repo_id, private=private, exist_ok=True)
        if revision not in (None, "main"):
            api.create_branch(repo_id, branch=revision, exist_ok=True)
        api.create_commit(repo_id, ops, commit_message=f"ltreg {__version__}: upload {method}",
                          revision=revision)
    except Exception as exc:  # noqa: BLE001 - every failure gets the same way out: retry later
        cmd = " ".join(["ltreg push", shlex.quote(str(run_dir.parent if adapter_only else run_dir)), "--repo", repo_id,
                        *(["--adapter-only"] if adapter_only else []),
                        *(["--revision", revision] if revision else []), *(["--private"] if private else [])])
        raise PushError(
            f"pushing to the Hub repo {repo_id} failed: {type(exc).__name__}: {str(exc).strip()}\n"
            f"The upload is a single commit: the repo holds all of the model files or none of them. "
            f"The local run folder is intact at {run_dir}; retry with:\n  {cmd}"
        ) from exc
    return f"{url}/tree/{revision}" if revision else str(url)
