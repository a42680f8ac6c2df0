"""ltreg: a registry of long-tailed recognition methods with one Accelerate trainer.

``ltreg.list_methods()``, ``ltreg.get_method(name)``, ``ltreg.register_method(spec)``,
``ltreg.train(method, **config)``, ``ltreg.LTModel``, ``ltreg.load_backbone(...)``.
"""

from __future__ import annotations

from typing import Any

from ltreg.errors import LtregError  # noqa: E402
from ltreg.method import (  # noqa: E402
    ConfigError,
    HParams,
    MethodSpec,
    ModelSpec,
    PartRef,
    Recipe,
    get_method,
    hp,
    list_methods,
    register_method,
)
from ltreg.registry import (  # noqa: E402
    register_dataset,
    register_loss,
    register_memory,
    register_prototypes,
    register_rebalancer,
    register_sampler,
    register_transform,
    register_tuner,
    registry,
)
from ltreg.step import Batch, BuildContext, LossOutput, Outputs, Part, StepState  # noqa: E402
from ltreg.tuners import TunedParams, Tuner, TunerError  # noqa: E402
from ltreg.version import __version__  # noqa: E402


def __getattr__(name: str) -> Any:
    """Heavy objects (timm, accelerate) load on first use, so ``ltreg list`` stays fast."""
    if name in ("LTModel", "LTModelConfig", "load_backbone", "save_pretrained", "push_to_hub", "from_pretrained"):
        from ltreg.models import ltmodel

        return getattr(ltmodel, name)
    if name == "train":
        from ltreg.trainer import train

        return train
    if name == "evaluate_pretrained":
        from ltreg.evaluate import evaluate_pretrained

        return evaluate_pretrained
    if name in ("RunCard", "DatasetRecord"):
        from ltreg import card

        return getattr(card, name)
    raise AttributeError(f"module 'ltreg' has no attribute {name!r}")


__all__ = [
    "__version__", "Batch", "BuildContext", "ConfigError", "HParams", "LtregError", "LossOutput", "MethodSpec", "ModelSpec",
    "Outputs", "Part", "PartRef", "Recipe", "StepState", "get_method", "hp", "list_methods", "register_method",
    "register_dataset", "register_loss", "register_memory", "register_prototypes", "register_rebalancer",
    "register_sampler", "register_transform", "register_tuner", "registry", "TunedParams", "Tuner", "TunerError",
]
