"""What an evaluation reports, computed from logits: top-1 and top-5 by All / Many / Medium / Few, per class,
the confusion matrix and the expected calibration error; as typed records, strict JSON, CSV and a heatmap.

* Groups follow the model's *training* counts: many-shot > ``many_thr`` images, few-shot < ``few_thr``.
  "All" is image-level accuracy; a group's accuracy is the mean of its classes' accuracies (the
  literature's convention; on a balanced test set both agree), over classes with at least one test image.
* Top-5: the true class among the five largest logits (top-k with k = 5, as timm and torchvision report).
* Expected calibration error (Guo et al. 2017): the maximum softmax probability of each image falls in
  one of 15 equal-width bins ``(b/15, (b+1)/15]``; ECE = sum over bins of (images in bin / images) *
  |accuracy in bin - mean confidence in bin|, reported in percent like the accuracies.
* The confusion matrix counts (true class, predicted class) pairs; rows are true classes. It is kept
  sparse (iNaturalist's 8,142 classes would be 66 M cells), written as a CSV matrix and drawn as a
  row-normalised heatmap with classes ordered head -> tail, grouped into at most 50 bins of classes.
* No value is NaN: a metric that cannot be computed is ``None`` and a ``*_reason`` key says why, and
  every JSON file is written with ``allow_nan=False`` (:func:`dumps`).
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

#: Equal-width confidence bins of the expected calibration error.
ECE_BINS = 15
#: The k of top-k accuracy besides top-1.
TOP_K = 5
#: The heatmap draws at most this many rows and columns; more classes are grouped into bins.
MAX_HEATMAP_CELLS = 50
#: A confusion CSV is a dense matrix up to this many classes, else one row per non-zero cell.
MAX_DENSE_CSV = 2000
GROUPS = ("many", "medium", "few")


def dumps(obj: Any, indent: int | None = 1) -> str:
    """JSON text that strict parsers accept: a NaN or infinity raises ``ValueError`` instead of being written."""
    return json.dumps(obj, indent=indent, allow_nan=False)


def json_safe(obj: Any) -> Any:
    """``obj`` with every NaN or infinite float replaced by None; in a mapping, a key ``<key>_reason`` beside
    it says what the value was (a list item has no place for one). What ltreg writes as JSON goes through it."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        out: dict[Any, Any] = {}
        for k, v in obj.items():
            out[k] = json_safe(v)
            if isinstance(v, float) and not math.isfinite(v) and f"{k}_reason" not in obj:
                out[f"{k}_reason"] = f"not a finite number ({v})"
        return out
    if isinstance(obj, (list, tuple)):
        return [json_safe(v) for v in obj]
    return obj


@dataclass(frozen=True)
class GroupScore:
    """Accuracy of one class group (All, Many, Medium or Few); ``reason`` says why a value is None."""

    name: str
    classes: int
    scored_classes: int
    images: int
    top1: float | None
    top5: float | None
    reason: str | None = None


@dataclass(frozen=True)
class ClassScore:
    """One class: its training count and group, its test images and accuracies, and the class its images
    are most often mistaken for (``confused_with``, with the share of its images, in %)."""

    index: int
    name: str
    train_count: int | None
    group: str | None
    images: int
    top1: float | None
    top5: float | None
    confused_with: str | None
    confused_share: float | None


@dataclass
class LTReport:
    """Everything :func:`lt_report` computes from one set of logits."""

    class_names: list[str]
    train_counts: list[int] | None
    many_thr: int
    few_thr: int
    groups: dict[str, GroupScore]  # all, many, medium, few
    balanced_acc: float
    ece: float
    top5_reason: str | None
    per_class: list[ClassScore]
    confusion: Confusion
    order: list[int]  # class indices head -> tail (training count descending; index order without counts)

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def metrics_dict(self) -> dict[str, Any]:
        """The flat keys of ``metrics.json`` (``top1``, ``many``, ``num_many``, ``per_class``, ...) plus
        ``top5``, ``many_top5``, ..., ``ece``; a None value comes with ``<key>_reason``."""
        out: dict[str, Any] = {"top1": self.groups["all"].top1, "top5": self.groups["all"].top5,
                               "balanced_acc": self.balanced_acc, "num_tested": self.groups["all"].scored_classes}
        if self.top5_reason:
            out["top5_reason"] = self.top5_reason
        for g in GROUPS:
            score = self.groups[g]
            out[g], out[f"{g}_top5"], out[f"num_{g}"] = score.top1, score.top5, score.classes
            out[f"num_{g}_tested"] = score.scored_classes
            if score.top1 is None:
                out[f"{g}_reason"] = score.reason
            if score.top5 is None:
                out[f"{g}_top5_reason"] = score.reason or self.top5_reason
        out["ece"], out["ece_bins"] = self.ece, ECE_BINS
        out["per_class"] = [c.top1 for c in self.per_class]
        return out

    def to_json(self) -> dict[str, Any]:
        """The report as JSON-ready data: groups, balanced accuracy, ECE, and per class (head -> tail)."""
        return {
            "groups": {k: asdict(v) for k, v in self.groups.items()},
            "balanced_acc": self.balanced_acc,
            "ece": self.ece, "ece_bins": ECE_BINS, "top5_reason": self.top5_reason,
            "many_thr": self.many_thr, "few_thr": self.few_thr,
            "per_class": [asdict(self.per_class[c]) for c in self.order],
        }


def _pct(x: float) -> float:
    return round(100.0 * x, 4)


@dataclass(frozen=True)
class Confusion:
    """A confusion matrix kept sparse: the non-zero cells ``(rows[i], cols[i]) = counts[i]``, rows the true
    classes, sorted by row then column."""

    rows: Tensor
    cols: Tensor
    counts: Tensor
    num_classes: int

    def dense(self) -> Tensor:
        """The ``[C, C]`` int64 matrix."""
        out = torch.zeros(self.num_classes * self.num_classes, dtype=torch.int64)
        out[self.rows * self.num_classes + self.cols] = self.counts
        return out.view(self.num_classes, self.num_classes)


def confusion_matrix(preds: Tensor, targets: Tensor, num_classes: int) -> Confusion:
    """Counts of (true, predicted) pairs as a sparse :class:`Confusion`."""
    keys, counts = torch.unique(targets.long().cpu() * num_classes + preds.long().cpu(), return_counts=True)
    return Confusion(keys // num_classes, keys % num_classes, counts, num_classes)


def expected_calibration_error(probs: Tensor, targets: Tensor, bins: int = ECE_BINS) -> float:
    """ECE in percent over equal-width bins of the top-1 probability (see the module docstring)."""
    conf, pred = probs.max(1)
    hit = (pred == targets).double()
    edges = torch.linspace(0, 1, bins + 1, dtype=torch.float64)[1:-1]
    which = torch.bucketize(conf.double(), edges)  # bin b holds (edge_b, edge_{b+1}]
    gap = torch.zeros(bins, dtype=torch.float64).index_add_(0, which, hit - conf.double())
    return _pct(float(gap.abs().sum()) / max(1, conf.numel()))


def head_to_tail(train_counts: Tensor | None, num_classes: int) -> list[int]:
    """Class indices by training count, largest first (ties in index order)."""
    if train_counts is None:
        return list(range(num_classes))
    return torch.argsort(-train_counts.long(), stable=True).tolist()


def _most_confused(cm: Confusion, num_classes: int) -> tuple[Tensor, Tensor]:
    """Per true class, the most frequent wrong prediction (-1: none) and its count."""
    rows, cols, vals = cm.rows, cm.cols, cm.counts
    off = rows != cols
    rows, cols, vals = rows[off], cols[off], vals[off]
    best_col = torch.full((num_classes,), -1, dtype=torch.int64)
    best_val = torch.zeros(num_classes, dtype=torch.int64)
    if vals.numel():
        key = rows * (int(vals.max()) + 1) + vals  # sort by row, then count; the last of a row is its largest
        order = torch.argsort(key, stable=True)
        rows, cols, vals = rows[order], cols[order], vals[order]
        last = torch.ones_like(rows, dtype=torch.bool)
        last[:-1] = rows[1:] != rows[:-1]
        best_col[rows[last]], best_val[rows[last]] = cols[last], vals[last]
    return best_col, best_val


def lt_report(logits: Tensor, targets: Tensor, train_counts: Tensor | None, many_thr: int, few_thr: int,
              class_names: list[str] | None = None) -> LTReport:
    """Top-1 / top-5 by group and per class, the confusion matrix and ECE of ``logits [N, C]`` on ``targets``.

    ``train_counts`` (the model's training images per class) defines the groups; without it only All is
    computed and the groups are None with a reason. ``targets`` must lie in ``[0, C)``.
    """
    logits, targets = logits.float().cpu(), targets.long().cpu()
    n, num_classes = logits.shape
    names = list(class_names) if class_names is not None else [str(i) for i in range(num_classes)]
    probs = logits.softmax(1)
    pred = logits.argmax(1)
    k = min(TOP_K, num_classes)
    top5_reason = (None if num_classes > TOP_K else
                   f"the model has {num_classes} classes, so every image is right within its top {TOP_K}")
    topk = logits.topk(k, dim=1).indices
    hit1 = (pred == targets).double()
    hit5 = (topk == targets.unsqueeze(1)).any(1).double()
    seen = torch.bincount(targets, minlength=num_classes).double()
    present = seen > 0

    def per_class(hits: Tensor) -> Tensor:
        return torch.zeros(num_classes, dtype=torch.float64).index_add_(0, targets, hits) / seen.clamp(min=1)

    acc1, acc5 = per_class(hit1), per_class(hit5)
    cm = confusion_matrix(pred, targets, num_classes)
    best_col, best_val = _most_confused(cm, num_classes)

    counts = train_counts.long().cpu() if train_counts is not None else None
    masks: dict[str, Tensor] = {}
    if counts is not None:
        masks = {"many": counts > many_thr, "few": counts < few_thr}
        masks["medium"] = ~masks["many"] & ~masks["few"]
    group_of = [next((g for g in GROUPS if masks and bool(masks[g][c])), None) for c in range(num_classes)]

    def score(name: str, mask: Tensor | None) -> GroupScore:
        if name == "all":
            return GroupScore("all", num_classes, int(present.sum()), n, _pct(float(hit1.mean())),
                              None if top5_reason else _pct(float(hit5.mean())), top5_reason)
        if mask is None:
            return GroupScore(name, 0, 0, 0, None, None, "the model records no training class counts")
        m = mask & present
        images = int(seen[mask].sum())
        if not mask.any():
            rule = {"many": f"more than {many_thr}", "medium": f"{few_thr} to {many_thr}",
                    "few": f"fewer than {few_thr}"}[name]
            return GroupScore(name, 0, 0, 0, None, None, f"no class has {rule} training images")
        if not m.any():
            return GroupScore(name, int(mask.sum()), 0, 0, None, None,
                              f"none of the {int(mask.sum())} {name}-shot classes has a test image")
        top5 = None if top5_reason else _pct(float(acc5[m].mean()))
        return GroupScore(name, int(mask.sum()), int(m.sum()), images, _pct(float(acc1[m].mean())), top5,
                          top5_reason)

    groups = {"all": score("all", None), **{g: score(g, masks.get(g)) for g in GROUPS}}
    classes = [
        ClassScore(c, names[c], None if counts is None else int(counts[c]), group_of[c], int(seen[c]),
                   _pct(float(acc1[c])) if present[c] else None,
                   _pct(float(acc5[c])) if present[c] and not top5_reason else None,
                   names[int(best_col[c])] if best_col[c] >= 0 else None,
                   _pct(float(best_val[c]) / float(seen[c])) if best_col[c] >= 0 else None)
        for c in range(num_classes)
    ]
    return LTReport(names, None if counts is None else counts.tolist(), many_thr, few_thr, groups,
                    _pct(float(acc1[present].mean())), expected_calibration_error(probs, targets), top5_reason,
                    classes, cm, head_to_tail(counts, num_classes))


# -- human-readable tables ---------------------------------------------------------------------------------


def _cell(value: float | None, width: int) -> str:
    return f"{'–':>{width}}" if value is None else f"{value:>{width}.2f}"


def format_groups(metrics: dict[str, Any]) -> list[str]:
    """The All / Many / Medium / Few table (top-1 and top-5 %) of a ``metrics.json``-style mapping."""
    lines = [f"| {'split':<8} | {'classes':>7} | {'top-1 %':>8} | {'top-5 %':>8} |",
             "|" + "-" * 10 + "|" + "-" * 9 + "|" + "-" * 10 + "|" + "-" * 10 + "|"]
    n = sum(int(metrics.get(f"num_{g}", 0)) for g in GROUPS) or len(metrics.get("per_class") or [])

    def classes(total: int, tested: int | None) -> str:  # "8/10": 8 of the 10 classes have test images
        return f"{total:>7}" if tested is None or tested == total else f"{f'{tested}/{total}':>7}"

    lines.append(f"| {'All':<8} | {classes(n, metrics.get('num_tested'))} | {_cell(metrics['top1'], 8)} | "
                 f"{_cell(metrics.get('top5'), 8)} |")
    for g in GROUPS:
        lines.append(f"| {g.capitalize():<8} | {classes(metrics.get(f'num_{g}', 0), metrics.get(f'num_{g}_tested'))} | "
                     f"{_cell(metrics.get(g), 8)} | {_cell(metrics.get(f'{g}_top5'), 8)} |")
    notes = [f"{g.capitalize()}: {metrics[f'{g}_reason']}" for g in GROUPS if metrics.get(f"{g}_reason")]
    if metrics.get("top5_reason"):
        notes.append(f"top-5: {metrics['top5_reason']}")
    if any(metrics.get(f"num_{g}_tested", metrics.get(f"num_{g}")) != metrics.get(f"num_{g}") for g in GROUPS):
        notes.append("k/n: k of the n classes have test images")
    lines += [f"({'; '.join(notes)})"] if notes else []
    tail = f"balanced accuracy {metrics['balanced_acc']:.2f} %"
    if metrics.get("ece") is not None:
        tail += f"; expected calibration error {metrics['ece']:.2f} % ({metrics.get('ece_bins', ECE_BINS)} equal-width bins)"
    return [*lines, tail]


def format_per_class(report: LTReport) -> str:
    """One row per class, head -> tail: training count, group, test images, top-1 / top-5 %, most confused with."""
    width = max([len(c.name) for c in report.per_class] + [5])
    lines = [f"| {'class':<{width}} | {'train':>6} | {'group':<6} | {'test':>5} | {'top-1 %':>7} | {'top-5 %':>7} | "
             f"most often mistaken for |",
             f"|{'-' * (width + 2)}|--------|--------|-------|---------|---------|-------------------------|"]
    for c in (report.per_class[i] for i in report.order):
        conf = f"{c.confused_with} ({c.confused_share:.1f} %)" if c.confused_with is not None else "–"
        train = "–" if c.train_count is None else str(c.train_count)
        lines.append(f"| {c.name:<{width}} | {train:>6} | {c.group or '–':<6} | {c.images:>5} | {_cell(c.top1, 7)} | "
                     f"{_cell(c.top5, 7)} | {conf:<23} |")
    return "\n".join(lines)


# -- files ----------------------------------------------------------------------------------------------------


def confusion_csv(report: LTReport) -> str:
    """The confusion matrix as CSV, rows and columns head -> tail: a header row of predicted class names,
    then one row per true class (its name, then counts). Above ``MAX_DENSE_CSV`` classes: one row
    ``true,predicted,count`` per non-zero cell."""
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    names, order = report.class_names, report.order
    if report.num_classes > MAX_DENSE_CSV:
        w.writerow(["true", "predicted", "count"])
        cm = report.confusion
        for r, c, v in zip(cm.rows.tolist(), cm.cols.tolist(), cm.counts.tolist()):
            w.writerow([names[r], names[c], v])
        return buf.getvalue()
    dense = report.confusion.dense()[order][:, order]
    w.writerow(["true \\ predicted", *(names[c] for c in order)])
    for i, row in zip(order, dense.tolist()):
        w.writerow([names[i], *row])
    return buf.getvalue()


def per_class_csv(report: LTReport) -> str:
    """Per-class scores as CSV, head -> tail (the columns of :class:`ClassScore`)."""
    buf = io.StringIO()
    cols = list(ClassScore.__dataclass_fields__)
    w = csv.DictWriter(buf, fieldnames=cols, lineterminator="\n")
    w.writeheader()
    for i in report.order:
        w.writerow({k: ("" if v is None else v) for k, v in asdict(report.per_class[i]).items()})
    return buf.getvalue()


def binned_confusion(report: LTReport, max_cells: int = MAX_HEATMAP_CELLS) -> tuple[Tensor, list[tuple[int, int]]]:
    """The row-normalised confusion matrix over head -> tail class bins: ``([B, B] fractions, bins)``, each
    bin a range ``(first, last)`` of head -> tail ranks; one class per bin when there are at most
    ``max_cells`` classes, else ``max_cells`` bins of consecutive ranks as equal in size as can be.
    A row of a bin without test images is all zero."""
    c = report.num_classes
    b = min(c, max_cells)
    rank = torch.empty(c, dtype=torch.int64)
    rank[torch.tensor(report.order)] = torch.arange(c)
    bin_of_rank = torch.arange(c) * b // c
    rows, cols, vals = report.confusion.rows, report.confusion.cols, report.confusion.counts
    cells = torch.zeros(b * b, dtype=torch.float64).index_add_(
        0, bin_of_rank[rank[rows]] * b + bin_of_rank[rank[cols]], vals.double()).view(b, b)
    cells = cells / cells.sum(1, keepdim=True).clamp(min=1)
    starts = [int((torch.arange(c)[bin_of_rank == i]).min()) for i in range(b)]
    bins = [(s, (starts[i + 1] if i + 1 < b else c) - 1) for i, s in enumerate(starts)]
    return cells, bins


def plot_confusion(report: LTReport, path: Path, title: str = "") -> bool:
    """The heatmap of :func:`binned_confusion` as a PNG (square-root colour scale, Many / Medium / Few
    borders dashed, rows without test images grey); False when matplotlib (the ``plot`` extra) is not installed."""
    try:
        import matplotlib
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.colors import PowerNorm
        from matplotlib.figure import Figure
    except ImportError:
        return False
    cells, bins = binned_confusion(report)
    b = len(bins)
    names, order = report.class_names, report.order
    per_class = all(lo == hi for lo, hi in bins)
    fig = Figure(figsize=(7.5, 6.4), dpi=110)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    shown = cells.clone()
    shown[cells.sum(1) == 0] = float("nan")  # a bin without test images: grey, not "all wrong"
    cmap = matplotlib.colormaps["viridis"].with_extremes(bad="lightgrey")
    im = ax.imshow(shown.numpy(), cmap=cmap, norm=PowerNorm(0.5, vmin=0, vmax=1), interpolation="nearest")
    cbar = fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04)
    cbar.set_label("share of the row's test images (square-root scale)")
    if per_class and b <= 30:
        labels = [names[order[lo]] for lo, _ in bins]
        ax.set_xticks(range(b), labels, rotation=90, fontsize=7)
        ax.set_yticks(range(b), labels, fontsize=7)
        what = "class"
    else:
        step = max(1, b // 10)
        ticks = list(range(0, b, step))
        labels = [f"{bins[i][0] + 1}" if per_class else f"{bins[i][0] + 1}–{bins[i][1] + 1}" for i in ticks]
        ax.set_xticks(ticks, labels, rotation=90, fontsize=7)
        ax.set_yticks(ticks, labels, fontsize=7)
        what = "class rank" if per_class else f"class ranks ({b} bins of about {report.num_classes / b:.0f} classes)"
    if report.train_counts is not None:  # Many | Medium | Few borders, at the bin holding the group's first rank
        counts = report.train_counts
        for border in (sum(n > report.many_thr for n in counts), sum(n >= report.few_thr for n in counts)):
            if 0 < border < report.num_classes:
                pos = border * b // report.num_classes - 0.5
                ax.axhline(pos, color="white", lw=0.8, ls="--")
                ax.axvline(pos, color="white", lw=0.8, ls="--")
    borders = "; dashed: Many | Medium | Few" if report.train_counts is not None else ""
    ax.set(xlabel=f"predicted {what}, head → tail{borders}", ylabel=f"true {what}, head → tail",
           title=title or f"confusion matrix, {report.num_classes} classes (rows normalised)")
    fig.tight_layout()
    tmp = path.with_name(f".{path.name}.tmp")
    fig.savefig(tmp, format="png")
    os.replace(tmp, path)
    return True
