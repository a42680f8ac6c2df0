"""timm's layout of an LTModel: the backbone plus the classifier as timm's own head.

``model.safetensors`` holds exactly what ``timm.create_model(arch, num_classes=C)`` has, so
``timm.create_model("hf-hub:org/name", pretrained=True)`` loads an ltreg model.
"""

from __future__ import annotations

import timm
import torch
from torch import Tensor, nn

from ltreg.errors import ModelConfigError
from ltreg.models.config import LTModelConfig
from ltreg.models.heads import CosineLinear


def head_prefix(cfg: LTModelConfig) -> str:
    """Name of the classifier module in the timm model ``cfg.backbone`` with ``num_classes`` outputs."""
    with torch.device("meta"):  # no allocation: only the module names are read
        probe = timm.create_model(cfg.backbone, pretrained=False, num_classes=cfg.num_classes, in_chans=cfg.in_chans,
                                  **cfg.backbone_kwargs)
    head = probe.get_classifier()
    for name, module in probe.named_modules():
        if module is head:
            return name
    raise ModelConfigError(f"cannot find the classifier of {type(probe).__name__}")


def timm_state_dict(backbone: nn.Module, classifier: nn.Module, prefix: str) -> dict[str, Tensor]:
    """Backbone tensors plus the classifier as the timm head ``prefix`` (CPU, contiguous).

    A cosine classifier is stored as ``s * w_c / ||w_c||`` with zero bias: timm's linear head then
    ranks classes exactly as the cosine classifier does (the feature norm is common to all classes).
    """
    state = {k: v.detach().cpu().contiguous() for k, v in backbone.state_dict().items()}
    if isinstance(classifier, CosineLinear):
        weight = classifier.scale * torch.nn.functional.normalize(classifier.weight.detach(), dim=-1)
        bias = torch.zeros(weight.shape[0])
    elif isinstance(classifier, nn.Linear):
        weight = classifier.weight.detach()
        bias = classifier.bias.detach() if classifier.bias is not None else torch.zeros(classifier.out_features)
    else:
        raise ModelConfigError(f"classifier {type(classifier).__name__} cannot be written in timm's layout")
    state[f"{prefix}.weight"] = weight.cpu().contiguous()
    state[f"{prefix}.bias"] = bias.cpu().contiguous()
    return state
