"""The file names of a run folder and of a model folder (or Hub repo): written here once, used everywhere.

A run folder ``RUN/`` holds the model files (what a push uploads), the training log and
``checkpoints/<name>/`` (with the ``checkpoints/latest`` pointer). Only names live here; reading and
writing them is :mod:`ltreg.checkpoint`'s, :mod:`ltreg.hub`'s and :mod:`ltreg.models.pretrained`'s job.
"""

from __future__ import annotations

#: timm's hub layout plus an ``ltreg`` block (architecture, classes, training record).
CONFIG_FILE = "config.json"
#: The backbone's weights in timm's layout.
WEIGHTS_FILE = "model.safetensors"
#: Projection head and exact classifier.
HEADS_FILE = "ltreg_heads.safetensors"
#: The model card.
CARD_FILE = "README.md"
#: The card's per-class accuracy plot.
PLOT_FILE = "per_class_accuracy.png"
#: Final test metrics.
METRICS_FILE = "metrics.json"
#: The per-epoch training log.
METRICS_CSV = "metrics.csv"
#: SHA-256 of the model files (checked on load) or of a checkpoint's files.
MANIFEST = "manifest.json"

#: The run folder's checkpoints (never pushed).
CHECKPOINTS_DIR = "checkpoints"
#: Inside ``checkpoints/``: a plain file naming the checkpoint to resume from.
POINTER = "latest"
#: Inside a checkpoint folder: the model's and parts' tensors, and the loop's position and history.
STATE_WEIGHTS = "ltreg_state.safetensors"
TRAINER_STATE = "trainer_state.json"

#: peft's adapter files: an adapter-only model folder holds them instead of ``model.safetensors``.
ADAPTER_WEIGHTS = "adapter_model.safetensors"
ADAPTER_CONFIG = "adapter_config.json"
#: The adapter-only model folder inside a run folder (a LoRA / DoRA / IA3 run on a base timm can fetch).
ADAPTER_DIR = "adapter"
#: What an adapter-only model folder cannot do without.
ADAPTER_FILES = (CONFIG_FILE, ADAPTER_WEIGHTS, ADAPTER_CONFIG, HEADS_FILE)

#: What a push uploads (when present); never checkpoints or logs.
MODEL_FILES = (CONFIG_FILE, WEIGHTS_FILE, HEADS_FILE, CARD_FILE, PLOT_FILE, METRICS_FILE, MANIFEST)
#: What ``push --adapter-only`` uploads from ``adapter/``.
ADAPTER_MODEL_FILES = (CONFIG_FILE, ADAPTER_WEIGHTS, ADAPTER_CONFIG, HEADS_FILE, CARD_FILE, MANIFEST)
#: What a model folder cannot do without.
REQUIRED_FILES = (CONFIG_FILE, WEIGHTS_FILE, HEADS_FILE)
#: The files of a finished run that ``--overwrite`` removes (with ``checkpoints/``).
RUN_FILES = (CONFIG_FILE, WEIGHTS_FILE, HEADS_FILE, METRICS_FILE, METRICS_CSV, CARD_FILE, PLOT_FILE, MANIFEST)
