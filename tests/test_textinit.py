"""Text-initialised classifiers (head initialiser ``clip-text``): rows equal to normalised prompt embeddings
projected back through the image tower's projection, computed here independently from a tiny open_clip model
with random weights; the cache in the run folder; the named errors."""

from __future__ import annotations

import dataclasses
import json
import sys

import pytest
import torch
import torch.nn.functional as F

open_clip = pytest.importorskip("open_clip")

from ltreg.config import resolve_config  # noqa: E402
from ltreg.errors import ClassNamesError, ConfigError, MissingExtraError  # noqa: E402
from ltreg.method import ModelSpec, PartRef, get_method, register_method  # noqa: E402
from ltreg.models.micro_vit import MICRO_WIDTH  # noqa: E402
from ltreg.registry import registry  # noqa: E402
from ltreg.run import build_run  # noqa: E402

NAMES = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine_and_more"]
TEMPLATES = ("a photo of a {}.", "a drawing of the {}.")


@pytest.fixture
def tiny_clip(tmp_path):
    """A tiny open_clip model from a custom config (image tower as wide as vit_micro_patch4), random weights
    saved as a checkpoint file; returns (config path, checkpoint path, the model)."""
    cfg = {"embed_dim": 16, "vision_cfg": {"image_size": 32, "layers": 1, "width": MICRO_WIDTH, "patch_size": 8},
           "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 16, "heads": 2, "layers": 1}}
    path = tmp_path / "tiny_clip_test.json"
    path.write_text(json.dumps(cfg))
    open_clip.add_model_config(path)
    torch.manual_seed(3)
    model = open_clip.create_model("tiny_clip_test", pretrained=None).eval()
    ckpt = tmp_path / "tiny_clip_test.pt"
    torch.save(model.state_dict(), ckpt)
    names = tmp_path / "names.txt"
    names.write_text("\n".join(NAMES) + "\n")
    return path, ckpt, model, names


def expected_rows(model, names, templates):
    """The classifier rows written out by hand: per template the normalised text embeddings, averaged, times
    the visual projection transposed, normalised."""
    tok = open_clip.get_tokenizer("tiny_clip_test")
    per_template = []
    with torch.no_grad():
        for t in templates:
            emb = model.encode_text(tok([t.format(n.replace("_", " ")) for n in names]))
            per_template.append(emb / emb.norm(dim=-1, keepdim=True))
        mean = torch.stack(per_template).mean(0)
        back = mean @ model.visual.proj.t()
    return back / back.norm(dim=-1, keepdim=True)


def _spec(name, **head):
    base = get_method("logit-adjust")
    return dataclasses.replace(base, name=name, model=ModelSpec(classifier="cosine", cosine_scale=25.0, proj_dim=None),
                               head_init=PartRef("clip-text", **head), recipes={})


@pytest.fixture
def method():
    names = []

    def make(**head):
        name = f"text-init-test-{len(names)}"
        names.append(name)
        return register_method(_spec(name, **head))

    yield make
    for n in names:
        registry("methods").unregister(n)


def _build(spec, tmp_path, **over):
    cfg = {"backbone": "vit_micro_patch4", "output_dir": str(tmp_path / "run"), "epochs": 1, **over}
    return build_run(resolve_config(spec, cfg))


def test_rows_equal_the_prompt_embeddings_and_are_cached(tiny_clip, method, tmp_path, capsys):
    cfg, ckpt, model, names = tiny_clip
    spec = method(clip_model=str(cfg), clip_pretrained=str(ckpt), templates="|".join(TEMPLATES), class_names=str(names))
    run = _build(spec, tmp_path)
    want = expected_rows(model, NAMES, TEMPLATES)
    got = run.model.classifier.weight.detach()
    assert got.shape == (10, MICRO_WIDTH)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
    cache = tmp_path / "run" / "head_init-clip-text.safetensors"
    assert cache.is_file() and "computed, cached" in capsys.readouterr().out
    run2 = _build(spec, tmp_path, resume=True)  # same key: read back, not recomputed
    assert "read from" in capsys.readouterr().out
    torch.testing.assert_close(run2.model.classifier.weight.detach(), want, atol=1e-5, rtol=1e-5)
    # a different template is another key: recomputed, different rows
    spec3 = method(clip_model=str(cfg), clip_pretrained=str(ckpt), templates="itap of a {}.", class_names=str(names))
    run3 = _build(spec3, tmp_path, resume=True)
    assert "computed" in capsys.readouterr().out
    torch.testing.assert_close(run3.model.classifier.weight.detach(), expected_rows(model, NAMES, ("itap of a {}.",)),
                               atol=1e-5, rtol=1e-5)


def test_run_rng_is_untouched_by_a_random_text_tower(tiny_clip, method, tmp_path):
    cfg, _, _, names = tiny_clip
    with_init = _build(method(clip_model=str(cfg), clip_pretrained=None, class_names=str(names)), tmp_path / "a")
    after_a = torch.random.get_rng_state()
    plain = dataclasses.replace(with_init.config.spec, name="text-init-plain", head_init=None)
    _build(plain, tmp_path / "b")
    assert torch.equal(after_a, torch.random.get_rng_state())


def test_bare_index_names_and_a_short_names_file_stop(tiny_clip, method, tmp_path):
    cfg, ckpt, _, _ = tiny_clip
    with pytest.raises(ClassNamesError, match="bare indices.*--hp class_names=FILE"):
        _build(method(clip_model=str(cfg), clip_pretrained=str(ckpt)), tmp_path)  # digits-lt names are "0".."9"
    short = tmp_path / "short.txt"
    short.write_text("cat\ndog\n")
    with pytest.raises(ClassNamesError, match="has 2 names but the data set has 10"):
        _build(method(clip_model=str(cfg), clip_pretrained=str(ckpt), class_names=str(short)), tmp_path)


def test_width_mismatch_and_linear_classifier_stop(tiny_clip, method, tmp_path):
    cfg, ckpt, _, names = tiny_clip
    narrow = tmp_path / "narrow_clip_test.json"
    narrow.write_text(json.dumps({**json.loads(cfg.read_text()), "vision_cfg": {"image_size": 32, "layers": 1,
                                                                                "width": 32, "patch_size": 8,
                                                                                "head_width": 16}}))
    spec = method(clip_model=str(narrow), clip_pretrained=None, class_names=str(names))
    with pytest.raises(ConfigError, match=r"rows of shape \(10, 32\) but the classifier is \(10, 64\)"):
        _build(spec, tmp_path)
    linear = register_method(dataclasses.replace(spec, name="text-init-linear", model=ModelSpec(proj_dim=None)))
    try:
        with pytest.raises(ConfigError, match="cosine classifier"):
            _build(linear, tmp_path)
    finally:
        registry("methods").unregister("text-init-linear")


def test_missing_open_clip_names_the_extra(tiny_clip, method, tmp_path, monkeypatch):
    cfg, ckpt, _, names = tiny_clip
    monkeypatch.setitem(sys.modules, "open_clip", None)  # import open_clip -> ImportError
    with pytest.raises(MissingExtraError, match=r"pip install 'ltreg\[clip\]'"):
        _build(method(clip_model=str(cfg), clip_pretrained=str(ckpt), class_names=str(names)), tmp_path)


def test_rows_match_the_clip_zero_shot_scores(tiny_clip):
    """Through the projection, cosine scores of pre-projection features against the rows rank classes like
    CLIP's own zero-shot cosine against the unprojected text embeddings when P is orthogonal (a check that
    the projection is applied on the right side)."""
    from ltreg.models.textinit import text_classifier

    _, _, model, _ = tiny_clip
    q, _ = torch.linalg.qr(torch.randn(MICRO_WIDTH, 16))
    with torch.no_grad():
        model.visual.proj.copy_(q)  # [width, embed] with orthonormal columns
    rows = text_classifier(model, open_clip.get_tokenizer("tiny_clip_test"), NAMES, TEMPLATES[:1])
    text = F.normalize(model.encode_text(open_clip.get_tokenizer("tiny_clip_test")(
        [TEMPLATES[0].format(n.replace("_", " ")) for n in NAMES])), dim=-1).detach()
    feats = torch.randn(5, MICRO_WIDTH)
    ours = F.normalize(feats, dim=-1) @ rows.t()
    clip = F.normalize(feats @ q, dim=-1) @ text.t()
    assert torch.equal(ours.argmax(1), clip.argmax(1))
