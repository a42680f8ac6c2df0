"""The run's record (:class:`RunCard`) and the model card and plot written from it.

A finished run hands one typed :class:`RunCard` to ``save_pretrained``; it is stored in
``config.json`` (the ``ltreg`` block) and rendered as ``README.md`` (YAML metadata with
``model-index`` results, then the body for people) and ``per_class_accuracy.png``.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import timm
from huggingface_hub import EvalResult, ModelCardData

from ltreg.files import write_with
from ltreg.layout import PLOT_FILE
from ltreg.registry import IN_PROCESS
from ltreg.version import __version__

#: Stands for the repo id in the card's snippets; a push writes the real id into the uploaded copy.
REPO_PLACEHOLDER = "<repo_id>"
SPLITS = (("top1", "All"), ("many", "Many"), ("medium", "Medium"), ("few", "Few"))


@dataclass
class DatasetRecord:
    """The training data of a run as the card and ``ltreg eval`` need it (``builder_args`` rebuild it)."""

    name: str
    test_name: str = ""
    class_counts: list[int] = field(default_factory=list)
    class_names: list[str] = field(default_factory=list)
    many_thr: int = 100
    few_thr: int = 20
    image_size: int = 32
    mean: list[float] = field(default_factory=list)
    std: list[float] = field(default_factory=list)
    info: dict[str, Any] = field(default_factory=dict)
    builder_args: dict[str, Any] = field(default_factory=dict)
    hub_id: str | None = None  # the Hub data set id, when the data came from the Hub
    identity: str = ""  # ltreg.data.lt.data_identity of the training set: evaluation compares it


@dataclass
class RunCard:
    """What a run records about itself for ``config.json``, the model card and ``metrics.json``.

    ``recipe`` holds the training settings that change the result (one value per setting, as run);
    ``metrics`` the test metrics without the per-class list, which is ``per_class``.
    """

    method: str | None = None
    citation: str = ""
    bibtex: str = ""
    hparams: dict[str, Any] = field(default_factory=dict)
    recipe: dict[str, Any] = field(default_factory=dict)
    dataset: DatasetRecord | None = None
    metrics: dict[str, Any] = field(default_factory=dict)
    per_class: list[float | None] | None = None
    license: str | None = None
    augmentation: str = ""  # the training views as run: pipelines, flips and why
    #: The tuner: name, args, trainable / total parameters (backbone, and stage 1 with heads), base weights.
    tuner: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> RunCard:
        """The card from a ``config.json`` ltreg block; unknown keys are ignored (data, not instructions)."""
        known = {f.name for f in fields(cls)}
        values = {k: v for k, v in raw.items() if k in known}
        ds = values.get("dataset")
        if isinstance(ds, dict):
            ds_known = {f.name for f in fields(DatasetRecord)}
            values["dataset"] = DatasetRecord(**{k: v for k, v in ds.items() if k in ds_known}) if "name" in ds else None
        elif ds is not None:
            values["dataset"] = None
        return cls(**values)


@dataclass(frozen=True)
class Profile:
    """The long-tail profile of training counts, measured (whatever any builder was asked for)."""

    imbalance: float | None  # largest / smallest class; None without counts
    shape: str  # balanced | step | exponential | irregular | unknown
    largest: int = 0
    smallest: int = 0

    def text(self) -> str:
        if self.imbalance is None:
            return "class counts unknown"
        return (f"imbalance {self.imbalance:.3g} ({self.largest} / {self.smallest} images per class, measured), "
                f"{self.shape} profile")


def measure_profile(counts: list[int]) -> Profile:
    """Imbalance ratio and profile shape of per-class training counts: ``balanced`` (all equal), ``step`` (two
    levels), ``exponential`` (log count falls linearly with the head-to-tail rank, R² >= 0.97) or ``irregular``."""
    import math

    c = sorted((int(n) for n in counts if n > 0), reverse=True)
    if not c:
        return Profile(None, "unknown")
    ratio = c[0] / c[-1]
    if c[0] == c[-1]:
        shape = "balanced"
    elif len(set(c)) == 2:
        shape = "step"
    else:
        ys = [math.log(n) for n in c]
        xs = list(range(len(c)))
        mx, my = sum(xs) / len(xs), sum(ys) / len(ys)
        sxy = sum((x - mx) * (y - my) for x, y in zip(xs, ys))
        sxx, syy = sum((x - mx) ** 2 for x in xs), sum((y - my) ** 2 for y in ys)
        r2 = sxy * sxy / (sxx * syy) if sxx and syy else 0.0
        shape = "exponential" if r2 >= 0.97 else "irregular"
    return Profile(ratio, shape, c[0], c[-1])


def _declared(info: dict[str, Any]) -> str:
    """What the builder was asked for, when it applied a long-tail profile: '' otherwise."""
    profile, imbalance = info.get("profile"), info.get("imbalance")
    if imbalance is None or profile in (None, "fixed"):
        return ""
    return f"built with the {profile} profile at imbalance {_fmt(imbalance)}"


def _fmt(value: Any) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)


def plot_per_class(card: RunCard, path: Path) -> bool:
    """Per-class test accuracy against training count (log x), coloured by split; False if no data."""
    ds = card.dataset
    if ds is None or not ds.class_counts or not card.per_class:
        return False
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError:  # matplotlib is the optional "plot" extra
        return False
    many, few = ds.many_thr, ds.few_thr
    fig = Figure(figsize=(6, 3.6), dpi=110)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    for label, color, keep in (("many", "tab:blue", lambda n: n > many), ("medium", "tab:orange", lambda n: few <= n <= many),
                               ("few", "tab:red", lambda n: n < few)):  # fmt: skip
        pts = [(n, a) for n, a in zip(ds.class_counts, card.per_class) if a is not None and keep(n)]
        if pts:
            ax.scatter(*zip(*pts), s=14, color=color, label=f"{label} ({len(pts)})")
    for thr in (many, few):
        ax.axvline(thr, color="grey", lw=0.8, ls="--")
    ax.set(xscale="log", xlabel="training images of the class (log)", ylabel="test top-1 %", ylim=(-3, 103),
           title="per-class test accuracy against training frequency")
    ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    write_with(path, lambda f: fig.savefig(f, format="png"))
    return True


def _results(card: RunCard) -> list[EvalResult]:
    ds, m = card.dataset, card.metrics
    if ds is None:
        return []
    return [EvalResult(task_type="image-classification", dataset_type=ds.name, dataset_name=ds.test_name or ds.name,
                       dataset_split="test", metric_type="accuracy", metric_name=f"top-1 ({label.lower()})",
                       metric_value=round(float(m[key]), 4))
            for key, label in SPLITS if isinstance(m.get(key), (int, float)) and m[key] == m[key]]


def model_card(config: dict[str, Any], card: RunCard, plot: bool = False) -> str:
    """README.md: YAML metadata (``model-index``, an ``ltreg:`` block) and a body for people."""
    model_cfg = config["ltreg"]["model"]
    arch, method, ds, metrics = config["architecture"], card.method, card.dataset, card.metrics
    name = ds.name if ds else None
    counts = ds.class_counts if ds else []
    block: dict[str, Any] = {"distributions": {"ltreg": __version__}}
    if method:
        dist, version = config["ltreg"].get("dist", IN_PROCESS), config["ltreg"].get("dist_version", "")
        info = ds.info if ds else {}
        measured = measure_profile(counts)
        block = {"method": method, "distribution": dist, "hparams": card.hparams, "dataset": name,
                 "lt_profile": {"measured": {"imbalance": measured.imbalance, "shape": measured.shape,
                                             "largest": measured.largest, "smallest": measured.smallest},
                                "declared": ({"profile": info.get("profile"), "imbalance": info.get("imbalance")}
                                             if _declared(info) else None),
                                "seed": card.recipe.get("seed")},
                 "class_counts": counts, "many_thr": ds.many_thr if ds else None, "few_thr": ds.few_thr if ds else None,
                 "distributions": {**block["distributions"], **({dist: version} if dist != IN_PROCESS else {})}}
    results = _results(card)
    data = ModelCardData(
        library_name="timm", license=card.license, pipeline_tag="image-classification",
        tags=["ltreg", "timm", "image-classification", "long-tailed-recognition", *([method] if method else [])],
        datasets=[ds.hub_id] if ds and ds.hub_id else None,
        model_name=f"{arch}-{method}-{name}" if results else None, eval_results=results or None, ltreg=block,
    )
    title = f"{method} on {name} ({arch})" if method else f"ltreg model ({arch}, {model_cfg['num_classes']} classes)"
    body = [f"# {title}", "",
            f"A long-tailed image classifier saved by [ltreg](https://pypi.org/project/ltreg/) {__version__}: "
            f"timm backbone `{arch}`, {model_cfg['classifier']} classifier over {model_cfg['num_classes']} classes"
            + (f", trained with the method **{method}** on **{name}**." if method else "."),
            "", f"Parameters: {config.get('num_parameters', 0) / 1e6:.2f} M; input "
            f"{'×'.join(str(v) for v in config['pretrained_cfg']['input_size'])}."]
    if results and ds:
        body += ["", f"## Results (top-1 %, {ds.test_name or name})", "",
                 "| split | classes | top-1 % |", "|---|---:|---:|"]
        n_all = sum(metrics.get(f"num_{g}", 0) for g in ("many", "medium", "few"))
        for key, label in SPLITS:
            n = n_all if key == "top1" else metrics.get(f"num_{key}", "")
            value = metrics.get(key)
            shown = f"{value:.2f}" if isinstance(value, (int, float)) and value == value else "–"
            body.append(f"| {label} | {n} | {shown} |")
        body += ["", f"Many-shot: > {ds.many_thr} training images; few-shot: < {ds.few_thr}."]
        views = metrics.get("eval_views")
        if isinstance(views, dict) and isinstance(views.get("name"), str):
            body += [f"Test-time views: `{views['name']}` ({views.get('description', '')}); "
                     f"`ltreg eval --tta NAME` evaluates with another set."]
    if plot:
        body += ["", f"![per-class test accuracy against training frequency]({PLOT_FILE})"]
    if method and ds:
        rows: list[tuple[str, Any]] = [
            ("method", method), ("backbone", arch),
            ("classifier", model_cfg["classifier"] + (f" (s = {model_cfg['cosine_scale']:g})"
                                                      if model_cfg["classifier"] == "cosine" else "")),
            ("projection head", model_cfg["proj_dim"] or "none"),
            ("data set", f"{name}: {sum(counts)} training images in {len(counts)} classes, "
                         f"{measure_profile(counts).text()}"
                         + (f"; {_declared(ds.info)}" if _declared(ds.info) else ""))]
        if card.augmentation:
            rows.append(("augmentation", card.augmentation))
        rows += [(k, v) for k, v in card.recipe.items() if v not in (None, [])]
        rows += [(f"hparams.{k}", v) for k, v in card.hparams.items()]
        body += ["", "## Training recipe", "", "| setting | value |", "|---|---|"]
        body += [f"| {k} | {_fmt(v)} |" for k, v in rows]
    body += _tuner_section(card, config)
    body += _usage(arch, config)
    if model_cfg["classifier"] == "cosine":
        body += ["", "The classifier is cosine: timm's linear head holds `s * w_c / ||w_c||` with zero bias, so timm's "
                 "logits are ltreg's times the feature norm: the same predictions (argmax), not the same logits."]
    if card.citation or card.bibtex:
        body += ["", "## Citation", ""] + ([card.citation] if card.citation else [])
        if card.bibtex:
            body += ["", "```bibtex", card.bibtex.strip(), "```"]
    return f"---\n{data.to_yaml()}\n---\n" + "\n".join(body).rstrip() + "\n"


def _tuner_section(card: RunCard, config: dict[str, Any]) -> list[str]:
    """The tuner, its parameter counts, and what the files hold (merged, adapter only, adapter modules)."""
    t = card.tuner
    if not t:
        return []
    args = ", ".join(f"{k}={v!r}" for k, v in (t.get("args") or {}).items())
    lines = ["", "## Tuner", "", f"`{t.get('name')}({args})`: {t.get('backbone_trainable', 0):,} of "
             f"{t.get('backbone_total', 0):,} backbone parameters trained; stage 1 trained {t.get('trainable', 0):,} "
             f"of {t.get('total', 0):,} parameters (heads and method parts included)."]
    adapter = config["ltreg"].get("adapter")
    if adapter:
        lines += ["", f"This repo holds the **adapter only** (peft's `adapter_model.safetensors` and "
                  f"`adapter_config.json`) and the heads; the backbone is the base model `{adapter['base']}`, which "
                  f"`ltreg.from_pretrained` fetches through timm before it applies the adapter."]
    elif config["ltreg"]["model"].get("tuner"):
        lines += ["", f"The {t.get('name')} modules cannot be merged into the backbone's weights: "
                  f"`model.safetensors` holds them beside the base weights, so this model loads in ltreg "
                  f"(`ltreg.from_pretrained`), not in timm alone (timm stops on the adapter tensors)."]
    elif t.get("mergeable"):
        lines += ["", "The adapter is merged into `model.safetensors`: a plain timm model."
                  + (" The run folder also holds the adapter alone in `adapter/` (`ltreg push RUN --repo ID "
                     "--adapter-only`)." if t.get("base") else "")]
    return lines


def _usage(arch: str, config: dict[str, Any]) -> list[str]:
    """How to load and classify one image: with ltreg, then with timm alone (or, for a model whose backbone holds
    adapter modules or only an adapter, with ltreg / peft). Every line runs as written once ``<repo_id>`` is a
    Hub repo id or a local folder and ``image.png`` an image (tests/test_card.py runs them)."""
    pcfg = config["pretrained_cfg"]
    size = tuple(pcfg["input_size"])
    mode = "RGB" if size[0] == 3 else "L"
    transform = (f"timm.data.create_transform(input_size={size}, interpolation={pcfg['interpolation']!r}, "
                 f"crop_pct={pcfg['crop_pct']}, mean={tuple(pcfg['mean'])}, std={tuple(pcfg['std'])})")
    lines = ["", "## How to load", "",
             f"Replace `{REPO_PLACEHOLDER}` with the Hub repo id (org/name) or a local folder, and `image.png` with "
             "your image.", "",
             "```python", "import ltreg, timm, torch", "from PIL import Image", "",
             f'repo = "{REPO_PLACEHOLDER}"',
             "model = ltreg.from_pretrained(repo)  # LTModel, eval mode",
             f"transform = {transform}  # the evaluation view",
             f'image = transform(Image.open("image.png").convert("{mode}")).unsqueeze(0)',
             "with torch.no_grad():",
             "    probs = model.predict(image).softmax(-1)  # [1, classes]",
             "print(probs.argmax(-1).item())  # class index; names: label_names in config.json",
             "backbone = ltreg.load_backbone(repo)  # the timm backbone alone: pooled features",
             "```"]
    adapter = config["ltreg"].get("adapter")
    if adapter:
        base = adapter["base"]
        return lines + ["", "With timm and peft alone (the backbone: pooled features):", "", "```python",
                        "import timm", "from peft import PeftModel", "",
                        f'base = timm.create_model("{base}", pretrained=True, num_classes=0)',
                        f'backbone = PeftModel.from_pretrained(base, "{REPO_PLACEHOLDER}").eval()', "```"]
    if config["ltreg"]["model"].get("tuner"):
        return lines
    module = timm.models.model_entrypoint(arch).__module__
    register = [f"import {module}  # registers {arch} into timm"] if module.startswith("ltreg") else []
    return lines + ["", "With timm alone (backbone + classifier, no projection head), preprocessing included:", "",
                    "```python", "import os", "import timm, torch", "from PIL import Image", *register, "",
                    f'repo = "{REPO_PLACEHOLDER}"',
                    'name = f"local-dir:{repo}" if os.path.isdir(repo) else f"hf-hub:{repo}"',
                    "model = timm.create_model(name, pretrained=True).eval()",
                    "cfg = timm.data.resolve_data_config({}, model=model)",
                    "transform = timm.data.create_transform(**cfg)",
                    'image = Image.open("image.png").convert("RGB" if cfg["input_size"][0] == 3 else "L")',
                    "with torch.no_grad():",
                    "    probs = model(transform(image).unsqueeze(0)).softmax(-1)",
                    'print(model.pretrained_cfg["label_names"][probs.argmax(-1).item()])', "```"]
