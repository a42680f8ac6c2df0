"""A CPU-sized CLIP-style ViT registered into timm, for ``--quick`` runs and tests of tuners on transformers.

``vit_micro_patch4`` is timm's own ``VisionTransformer`` (so every ViT tuner, AdaptFormer or LoRA target
finds the modules it expects: ``blocks[i].mlp``, ``attn.qkv``, norms) with CLIP's layout -- a class token,
a LayerNorm before the blocks (``ln_pre``), token pooling -- at width 64, depth 2, 2 heads, patch 4. Its
input size is dynamic, so the 8x8 digits and 32x32 CIFAR images both run without resizing.
"""

from __future__ import annotations

from typing import Any

from timm.models import build_model_with_cfg, generate_default_cfgs, register_model
from timm.models.vision_transformer import VisionTransformer

#: The micro ViT's width: a CLIP text tower meant to initialise its classifier projects to this.
MICRO_WIDTH = 64

default_cfgs = generate_default_cfgs({"vit_micro_patch4.untrained": {
    "url": "", "num_classes": 0, "input_size": (3, 32, 32), "pool_size": None, "crop_pct": 1.0,
    "interpolation": "bicubic", "mean": (0.48145466, 0.4578275, 0.40821073),
    "std": (0.26862954, 0.26130258, 0.27577711), "first_conv": "patch_embed.proj", "classifier": "head",
}})


@register_model
def vit_micro_patch4(pretrained: bool = False, **kwargs: Any) -> VisionTransformer:
    """CLIP-style ViT, width 64, depth 2, 2 heads, patch 4, dynamic input size (CPU checks)."""
    args: dict[str, Any] = dict(img_size=32, patch_size=4, embed_dim=MICRO_WIDTH, depth=2, num_heads=2, mlp_ratio=2.0,
                                pre_norm=True, global_pool="token", dynamic_img_size=True)
    args.update(kwargs)
    return build_model_with_cfg(VisionTransformer, "vit_micro_patch4", pretrained, **args)


__all__ = ["MICRO_WIDTH", "vit_micro_patch4"]
