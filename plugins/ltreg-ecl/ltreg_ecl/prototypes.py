"""ECL prototypes: the core's classifier-derived prototypes with a linear map, at the classifier's width.

CC-GE compares the ``[C, D]`` classifier weights with the ``[C, d]`` prototypes, so ECL needs d = D (64 for
ResNet-32, 512 for ResNet-34, 2048 for ResNeXt-50). ``ModelSpec.proj_dim`` is one fixed number for every
backbone, so when the run's model is built this part resizes the projection head's output layer to the
backbone width and records it in ``model.config.proj_dim`` (saved models reload with the same shape).
"""

from __future__ import annotations

from typing import Any

from torch import nn

from ltreg.prototypes import ClassifierPrototypes, PrototypeError
from ltreg.step import BuildContext


def match_projection_width(model: nn.Module) -> int:
    """Make the model's projections as wide as its backbone features (d = D) and return D.

    Only the last Linear of the projection MLP is replaced (before the optimizer exists); a model whose
    head cannot be resized is refused with the fix.
    """
    model = getattr(model, "module", model)
    width = model.num_features
    if model.embed_dim == width:
        return width
    head = getattr(model, "projector", None)
    last = head[-1] if isinstance(head, nn.Sequential) and len(head) else None
    if not isinstance(last, nn.Linear):
        raise PrototypeError(
            f"ECL needs projections as wide as the backbone features ({width}) so that CC-GE compares [C, {width}] "
            f"classifier weights with [C, d] prototypes, but the model projects to d = {model.embed_dim} with a head "
            f"that is not an MLP ending in a Linear; declare ModelSpec(proj_dim={width})"
        )
    head[-1] = nn.Linear(last.in_features, width).to(last.weight.device, last.weight.dtype)
    model.config.proj_dim = width
    return width


class ECLPrototypes(ClassifierPrototypes):
    """``p_c = normalize(U w_c)``, U one Linear D -> D [C-pred], recomputed from the live classifier every step."""

    @classmethod
    def from_context(cls, ctx: BuildContext, **kwargs: Any) -> ECLPrototypes:
        """Match the projection width to the backbone, then build the linear prototype map on the run's model."""
        match_projection_width(ctx.model)
        kwargs.setdefault("kind", "linear")
        return cls(ctx.model, **kwargs)
