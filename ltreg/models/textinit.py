"""Text-initialised classifiers: class names x prompt templates -> CLIP text embeddings -> cosine classifier rows.

The head initialiser ``clip-text`` (registry group ``ltreg.head_inits``; optional extra ``pip install
ltreg[clip]``, built on ``open_clip``) follows LIFT's semantic-aware initialisation (Shi et al., ICML 2024;
[C] trainer.py ``init_head_text_feat``):

1. each class name (underscores read as spaces) is put into every prompt template (``"a photo of a {}."``);
2. the CLIP text tower encodes the prompts; each embedding is L2-normalised and the templates are averaged;
3. the image tower's classifier runs on the features *before* CLIP's visual projection (timm's CLIP ViT with
   ``num_classes=0``: ``ln_post`` of the class token, width 768 for ViT-B/16), so the text embedding is mapped
   back through that projection, ``t @ P^T`` with ``P`` the visual projection ``[width, embed]``, and
   normalised again: the row a cosine classifier compares features with.

The image tower is timm's model of the same checkpoint (``vit_base_patch16_clip_224.openai`` for open_clip's
``ViT-B-16`` / ``openai``). ``open_clip`` loads weights from the Hugging Face cache like timm (so
``HF_HUB_OFFLINE=1`` works once cached); ``clip_pretrained`` may also be a local checkpoint file, or None for
random weights (tests, ``--quick``). A run computes the rows once and caches them in its run folder
(``head_init-clip-text.safetensors``, keyed by model, weights, templates, names and projection).
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ltreg.errors import ClassNamesError, ConfigError, MissingExtraError

#: LIFT's prompt (``prompt="default"`` [C: trainer.py ``get_tokenized_prompts``]).
LIFT_TEMPLATES: tuple[str, ...] = ("a photo of a {}.",)
#: Prompts per forward pass of the text tower (LIFT splits at 1000 [C: models.py ``encode_text``]).
CHUNK = 1000


def import_open_clip() -> Any:
    """``open_clip``, or a :class:`MissingExtraError` naming the extra that installs it."""
    try:
        import open_clip
    except ImportError as exc:
        raise MissingExtraError(
            "the head initialiser clip-text needs open_clip, which is not installed: pip install 'ltreg[clip]' "
            "(or pip install open_clip_torch)"
        ) from exc
    return open_clip


def read_class_names(path: str | os.PathLike, num_classes: int) -> list[str]:
    """One class name per line (blank lines skipped), in class-index order; exactly ``num_classes`` of them."""
    try:
        lines = Path(path).read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise ClassNamesError(f"cannot read the class names file {path} ({exc}); give a UTF-8 text file with one "
                              f"name per line (--hp class_names=FILE)") from exc
    names = [line.strip() for line in lines if line.strip()]
    if len(names) != num_classes:
        raise ClassNamesError(f"the class names file {path} has {len(names)} names but the data set has "
                              f"{num_classes} classes; give one name per class, in class-index order")
    return names


def prompt_names(names: Sequence[str], num_classes: int, source: str) -> list[str]:
    """The names that go into prompts (``_`` read as a space); missing or bare-index names stop with the fix."""
    fix = ("give a file with one name per line in class-index order (--hp class_names=FILE), or a data set that "
           "carries names (an image folder's sub-folder names, a Hub data set's ClassLabel names)")
    if len(names) != num_classes or not all(isinstance(n, str) and n.strip() for n in names):
        raise ClassNamesError(f"text initialisation needs a name for each of the {num_classes} classes, but "
                              f"{source} gives {len(names)} usable names; {fix}")
    bare = [n for n in names if n.strip().lstrip("-").isdigit()]
    if bare:
        raise ClassNamesError(f"text initialisation needs class names, but {len(bare)} of the {num_classes} names "
                              f"of {source} are bare indices ({', '.join(bare[:5])}{' ...' if len(bare) > 5 else ''}): "
                              f"a prompt 'a photo of a {bare[0]}.' says nothing; {fix}")
    return [n.strip().replace("_", " ") for n in names]


def text_classifier(clip: nn.Module, tokenizer: Any, names: Sequence[str], templates: Sequence[str],
                    project: bool = True) -> Tensor:
    """Rows ``[C, F]``: per class the mean over templates of the normalised text embeddings, mapped back through
    the visual projection (``project``) and normalised -- what a cosine classifier on pre-projection features
    starts from."""
    device = next(clip.parameters()).device
    rows = None
    with torch.no_grad():
        for template in templates:
            prompts = [template.format(n) for n in names]
            emb = torch.cat([clip.encode_text(tokenizer(prompts[i:i + CHUNK]).to(device)).float()
                             for i in range(0, len(prompts), CHUNK)])
            emb = F.normalize(emb, dim=-1)
            rows = emb if rows is None else rows + emb
        assert rows is not None
        rows = rows / len(templates)
        if project:
            rows = rows @ visual_projection(clip).float().t()
        return F.normalize(rows, dim=-1)


def visual_projection(clip: nn.Module) -> Tensor:
    """The image tower's projection ``P`` ``[width, embed]`` (features before it, times ``P``, are CLIP's image
    embedding); an error for towers without one (then use ``projection="none"``)."""
    proj = getattr(getattr(clip, "visual", None), "proj", None)
    if isinstance(proj, nn.Linear):  # timm-based towers keep it as a linear layer: y = x W^T
        return proj.weight.t()
    if not isinstance(proj, Tensor):
        raise ConfigError(f"the CLIP model's image tower ({type(getattr(clip, 'visual', None)).__name__}) has no "
                          f"projection matrix to map text embeddings back to its features; pass "
                          f"projection='none' if the backbone's features are already CLIP embeddings")
    return proj


class ClipTextInit:
    """Head initialiser ``clip-text``: the cosine classifier's rows from class-name prompts (see the module).

    ``clip_model`` is an open_clip model name (``ViT-B-16``) or a model config file (``*.json``), ``clip_pretrained`` its weights tag (``openai``),
    a local checkpoint file, or None (random weights); ``templates`` the prompts with ``{}`` for the name;
    ``class_names`` a file with one name per line (default: the data set's names); ``projection`` ``visual``
    (LIFT: map back through the image tower's projection) or ``none`` (rows are the text embeddings).
    """

    def __init__(self, clip_model: str = "ViT-B-16", clip_pretrained: str | None = "openai",
                 templates: Sequence[str] = LIFT_TEMPLATES, class_names: str | None = None,
                 projection: str = "visual") -> None:
        if isinstance(templates, str):  # one string from a spec / --hp: templates separated by "|"
            templates = tuple(t.strip() for t in templates.split("|"))
        if not templates or not all(isinstance(t, str) and t.count("{}") == 1 for t in templates):
            raise ConfigError(f"clip-text templates must be strings with one {{}} for the class name, got {templates!r}")
        if projection not in ("visual", "none"):
            raise ConfigError(f"clip-text projection must be 'visual' or 'none', got {projection!r}")
        self.clip_model, self.clip_pretrained = clip_model, clip_pretrained
        self.templates, self.class_names, self.projection = tuple(templates), class_names, projection

    def names(self, train: Any) -> list[str]:
        """The prompt names for the training set ``train`` (from the file when one is given)."""
        if self.class_names is not None:
            raw = read_class_names(self.class_names, train.num_classes)
            return prompt_names(raw, train.num_classes, f"the file {self.class_names}")
        return prompt_names(list(train.class_names), train.num_classes, f"the data set {train.name}")

    def cache_key(self, train: Any) -> str:
        """What the rows depend on, hashed: the cache in the run folder is reused only when it matches."""
        what = {"model": self.clip_model, "pretrained": self.clip_pretrained, "templates": self.templates,
                "names": self.names(train), "projection": self.projection}
        return hashlib.sha256(json.dumps(what, sort_keys=True).encode()).hexdigest()

    def weights(self, train: Any) -> Tensor:
        """The rows ``[C, F]`` for ``train``'s classes, computed on CPU with the CLIP text tower."""
        names = self.names(train)
        open_clip = import_open_clip()
        name = self.clip_model
        try:
            if name.endswith(".json") and Path(name).is_file():  # a model config of one's own (tests, --quick)
                open_clip.add_model_config(name)
                name = Path(name).stem
            clip = open_clip.create_model(name, pretrained=self.clip_pretrained)
            tokenizer = open_clip.get_tokenizer(name)
        except Exception as exc:  # noqa: BLE001 - unknown name, offline cache miss, bad file: one message
            raise ConfigError(
                f"head init clip-text: cannot load the CLIP model {self.clip_model!r} with weights "
                f"{self.clip_pretrained!r} ({type(exc).__name__}: {exc}). Names: open_clip.list_models(); tags: "
                f"open_clip.list_pretrained(); offline (HF_HUB_OFFLINE=1) the weights must be in the Hub cache"
            ) from exc
        return text_classifier(clip.eval(), tokenizer, names, self.templates, self.projection == "visual")

    def describe(self, num_classes: int) -> str:
        weights = self.clip_pretrained or "random weights"
        proj = "mapped back through the image tower's projection" if self.projection == "visual" else "unprojected"
        return (f"head init clip-text: {num_classes} classes x {len(self.templates)} prompt template(s) through the "
                f"text tower of {self.clip_model} ({weights}), {proj}")


__all__ = ["ClipTextInit", "LIFT_TEMPLATES", "import_open_clip", "prompt_names", "read_class_names",
           "text_classifier", "visual_projection"]
