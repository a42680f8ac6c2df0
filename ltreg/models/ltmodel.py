"""LTModel: a timm backbone, a projection head and a (linear or cosine) classifier.

``forward(images[B, V, C, H, W]) -> Outputs`` runs every view in one batched pass; each
method's loss picks the views and heads it needs. The backbone is timm's with ``num_classes=0``
(pooled features), so any timm architecture works, and the CIFAR ResNets ltreg registers too.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import timm
import torch
import torch.nn.functional as F
from torch import Tensor, nn

import ltreg.models.cifar_resnet  # noqa: F401 - registers resnet8/20/32/... into timm
import ltreg.models.micro_vit  # noqa: F401 - registers vit_micro_patch4 (CPU checks of ViT tuners) into timm
from ltreg.card import RunCard
from ltreg.errors import ModelConfigError
from ltreg.hub import push_run
from ltreg.models import pretrained
from ltreg.models.config import LTModelConfig
from ltreg.models.heads import CosineLinear, projector
from ltreg.step import Outputs

__all__ = ["LTModel", "LTModelConfig", "ModelConfigError", "CosineLinear", "create_backbone", "from_pretrained",
           "load_backbone", "save_pretrained", "push_to_hub"]


def create_backbone(name: str, in_chans: int, **kwargs: Any) -> nn.Module:
    """A timm model without classifier; unknown names list close timm matches."""
    if not timm.is_model(name):
        import difflib

        close = difflib.get_close_matches(name, timm.list_models(), n=5, cutoff=0.6)
        hint = f" Did you mean {', '.join(close)}?" if close else ""
        raise ModelConfigError(
            f"unknown backbone {name!r}: not a timm architecture.{hint} "
            f"List them with `python -c \"import timm; print(timm.list_models())\"`; small CPU-sized "
            f"ones ltreg adds: resnet8, resnet20, resnet32."
        )
    return timm.create_model(name, pretrained=False, num_classes=0, in_chans=in_chans, **kwargs)


class LTModel(nn.Module):
    """Backbone + projection head (normalised output) + classifier, all views in one pass.

    ``config.backbone`` is a plain timm architecture: the run builder resolves a source the user names
    (``resnet18.a1_in1k``, ``hf-hub:org/name``, a folder) with :func:`ltreg.models.backbones.resolve_arch`
    and :func:`ltreg.models.backbones.load_initial_weights` loads its weights.
    """

    def __init__(self, config: LTModelConfig) -> None:
        super().__init__()
        if config.classifier not in ("linear", "cosine"):
            raise ModelConfigError(f"classifier must be 'linear' or 'cosine', got {config.classifier!r}")
        self.config = config
        self.backbone = create_backbone(config.backbone, config.in_chans, **config.backbone_kwargs)
        if config.tuner is not None:  # a saved model whose backbone holds a tuner's modules (AdaptFormer, ...)
            from ltreg.tuners import tuner_from_dict

            tuner = tuner_from_dict(config.tuner, "the model config")
            tuner.check(self.backbone)
            tuner.add_modules(self.backbone)
        width = self.backbone.num_features
        self.num_features = width
        if config.proj_dim == "width":
            config.proj_dim = width
        elif isinstance(config.proj_dim, str):
            raise ModelConfigError(f"proj_dim must be an int, None or 'width', got {config.proj_dim!r}")
        self.projector = projector(width, config.proj_hidden, config.proj_dim, config.proj_bn)
        if config.classifier == "cosine":
            self.classifier: nn.Module = CosineLinear(width, config.num_classes, config.cosine_scale)
        else:
            self.classifier = nn.Linear(width, config.num_classes)

    @property
    def num_classes(self) -> int:
        return self.config.num_classes

    @property
    def embed_dim(self) -> int:
        return self.config.proj_dim or self.num_features

    #: Memory format of the backbone's input (``torch.channels_last`` after ``--channels-last``).
    memory_format: torch.memory_format = torch.contiguous_format

    def forward_features(self, x: Tensor) -> Tensor:
        """Pooled backbone features ``[N, F]`` of images ``[N, C, H, W]``."""
        return self.backbone(x.contiguous(memory_format=self.memory_format))

    def project(self, h: Tensor) -> Tensor:
        """L2-normalised projections ``[N, D]``."""
        return F.normalize(self.projector(h), dim=-1)

    def forward(self, images: Tensor) -> Outputs:
        """``images`` is ``[B, V, C, H, W]`` (or ``[B, C, H, W]`` for one view)."""
        if images.dim() == 4:
            images = images.unsqueeze(1)
        b, v = images.shape[:2]
        h = self.forward_features(images.flatten(0, 1))
        z = self.project(h)
        logits = self.classifier(h)
        return Outputs(z=z.view(b, v, -1), logits=logits.view(b, v, -1), features=h.view(b, v, -1))

    def predict(self, images: Tensor) -> Tensor:
        """Classifier logits ``[N, C]`` of single-view images ``[N, C, H, W]``."""
        return self.classifier(self.forward_features(images))

    @classmethod
    def from_pretrained(cls, repo_or_dir: str | os.PathLike, *, revision: str | None = None,
                        trust_remote_pickle: bool = False) -> LTModel:
        """A model folder or Hub repo id written by :meth:`save_pretrained`, in eval mode."""
        return pretrained.load_pretrained(cls, repo_or_dir, revision, trust_remote_pickle)[0]

    def save_pretrained(self, directory: str | os.PathLike, card: RunCard | None = None) -> Path:
        """Config, safetensors weights, heads, model card and manifest in ``directory``."""
        return pretrained.save_pretrained(self, directory, card)

    def push_to_hub(self, repo_id: str, *, private: bool = False, revision: str | None = None,
                    token: str | None = None, card: RunCard | None = None) -> str:
        """Save to a temporary folder and push it in one commit; the folder is kept if the push fails."""
        folder = Path(tempfile.mkdtemp(prefix="ltreg-push-"))
        self.save_pretrained(folder, card)
        url = push_run(folder, repo_id, private=private, revision=revision, token=token)
        shutil.rmtree(folder)
        return url


def from_pretrained(repo_or_dir: str | os.PathLike, *, revision: str | None = None,
                    trust_remote_pickle: bool = False) -> LTModel:
    """An :class:`LTModel` (eval mode) from a folder written by :func:`save_pretrained` or a Hub repo id."""
    return LTModel.from_pretrained(repo_or_dir, revision=revision, trust_remote_pickle=trust_remote_pickle)


def load_backbone(repo_or_dir: str | os.PathLike, **kwargs: Any) -> nn.Module:
    """The timm backbone alone (``model(x)`` gives pooled features), eval mode."""
    return from_pretrained(repo_or_dir, **kwargs).backbone.eval()


def save_pretrained(model: LTModel, directory: str | os.PathLike, card: RunCard | None = None) -> Path:
    """See :meth:`LTModel.save_pretrained`."""
    return model.save_pretrained(directory, card)


def push_to_hub(model: LTModel, repo_id: str, **kwargs: Any) -> str:
    """See :meth:`LTModel.push_to_hub`."""
    return model.push_to_hub(repo_id, **kwargs)
