"""ltreg: a registry of long-tailed recognition methods with one Accelerate trainer.

This module is the one public API: everything a method plugin or a user needs is importable from
``ltreg`` and listed in ``__all__`` (the import contracts in ``pyproject.toml`` check that plugins
import nothing else from ltreg). Light names (specs, step records, parts' bases, losses, errors) load
with the package; heavy ones (``LTModel``, ``train``, ``evaluate_pretrained``: timm, Accelerate) on
first use, so ``ltreg list`` stays fast.

    ltreg.list_methods(), ltreg.get_method(name), ltreg.register_method(spec)
    ltreg.train(method, **config), ltreg.LTModel.from_pretrained(...), ltreg.load_backbone(...)
"""

from __future__ import annotations

from typing import Any

from ltreg.data.build import with_defaults
from ltreg.data.lt import LTData, LTDataset
from ltreg.errors import (
    CheckpointError,
    ConfigError,
    DataError,
    LtregError,
    NonFiniteLossError,
    PeerError,
    PrototypeError,
    PushError,
    RebalanceError,
    RegistryError,
    ResumeStateError,
    RunFolderError,
    SettingError,
    SpecError,
    TrainingError,
    TunerError,
    UsageError,
)
from ltreg.losses import (
    NEG,
    ContrastiveResult,
    ContrastSet,
    anchors_and_columns,
    balanced_softmax,
    bcl,
    centre_columns,
    class_balanced_weights,
    contrast_set,
    contrastive_loss,
    drw_weights,
    focal,
    global_mean,
    group_ids,
    kcl,
    ldam,
    ldam_margins,
    logit_adjusted_ce,
    mixup_ce,
    paco,
    sample_positives,
    state_contrast,
    supcon,
)
from ltreg.method import (
    HParams,
    MethodSpec,
    ModelSpec,
    PartRef,
    Pick,
    Recipe,
    Stage,
    StageKind,
    ViewPlan,
    get_method,
    hp,
    list_methods,
    register_method,
)
from ltreg.mixing import PairMixup
from ltreg.rebalance import Rebalancer
from ltreg.registry import (
    register_dataset,
    register_eval_views,
    register_head_init,
    register_loss,
    register_memory,
    register_prototypes,
    register_rebalancer,
    register_sampler,
    register_sampler_role,
    register_stage,
    register_transform,
    register_tuner,
    register_view,
    registry,
)
from ltreg.samplers import LabelSampler
from ltreg.step import Batch, BuildContext, Extra, LossOutput, Outputs, Part, StepState, flatten_views
from ltreg.tags import Reading, Tag
from ltreg.tuners import TunedParams, Tuner
from ltreg.version import __version__

#: Heavy names and the module each comes from, loaded on first access.
_LAZY = {
    "LTModel": "ltreg.models.ltmodel",
    "LTModelConfig": "ltreg.models.ltmodel",
    "load_backbone": "ltreg.models.ltmodel",
    "save_pretrained": "ltreg.models.ltmodel",
    "push_to_hub": "ltreg.models.ltmodel",
    "from_pretrained": "ltreg.models.ltmodel",
    "train": "ltreg.trainer",
    "evaluate_pretrained": "ltreg.evaluate",
    "evaluate_model": "ltreg.evaluate",
    "EvalReport": "ltreg.evaluate",
    "predict": "ltreg.inference",
    "Prediction": "ltreg.inference",
    "RunCard": "ltreg.card",
    "DatasetRecord": "ltreg.card",
    "ViewKind": "ltreg.data.views",
    "ViewDataset": "ltreg.data.views",
}


def __getattr__(name: str) -> Any:
    """Heavy objects (timm, accelerate) load on first use."""
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'ltreg' has no attribute {name!r}")


__all__ = [
    "__version__",
    # method specs and the registry
    "HParams", "MethodSpec", "ModelSpec", "PartRef", "Recipe", "hp", "get_method", "list_methods", "register_method",
    "Reading", "Tag",
    "registry", "register_dataset", "register_loss", "register_memory", "register_prototypes", "register_rebalancer",
    "register_sampler", "register_transform", "register_head_init", "register_eval_views", "register_tuner",
    # what a method declares it needs from the core, and the open vocabularies it names
    "ViewPlan", "Stage", "StageKind", "Pick", "register_view", "register_sampler_role", "register_stage",
    # data sets
    "LTData", "LTDataset", "with_defaults",
    # the step contract and the parts' bases
    "Batch", "BuildContext", "Extra", "LossOutput", "Outputs", "Part", "StepState", "flatten_views",
    "LabelSampler", "Rebalancer", "PairMixup", "Tuner", "TunedParams",
    # losses: the contrastive core and helpers, logit-level losses
    "NEG", "ContrastSet", "ContrastiveResult", "anchors_and_columns", "contrast_set", "contrastive_loss",
    "centre_columns", "global_mean", "group_ids", "sample_positives", "state_contrast", "supcon", "kcl", "bcl", "paco", "balanced_softmax",
    "class_balanced_weights", "drw_weights", "focal", "ldam", "ldam_margins", "logit_adjusted_ce", "mixup_ce",
    # errors
    "LtregError", "UsageError", "ConfigError", "SettingError", "RegistryError", "DataError", "PrototypeError",
    "RebalanceError", "TunerError", "RunFolderError", "CheckpointError", "ResumeStateError", "SpecError", "TrainingError", "NonFiniteLossError", "PeerError", "PushError",
    # models, training and evaluation (loaded on first use)
    *_LAZY,
]
