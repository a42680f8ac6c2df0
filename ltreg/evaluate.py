"""Evaluation: top-1, balanced accuracy, many / medium / few, per-class accuracy, feature geometry.

The geometry metrics are the CoGloAT paper's (methods.md §5) on the normalised contrastive
embedding of the test split (or the normalised backbone features for a model without projector).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor


def lt_metrics(logits: Tensor, targets: Tensor, train_counts: Tensor, many_thr: int, few_thr: int) -> dict[str, Any]:
    """Top-1 over the test set, per class, and averaged over the many / medium / few class groups."""
    num_classes = train_counts.numel()
    correct = (logits.argmax(1) == targets).double()
    hits = torch.zeros(num_classes, dtype=torch.float64).index_add_(0, targets, correct)
    seen = torch.bincount(targets, minlength=num_classes).double()
    per_class = torch.where(seen > 0, hits / seen.clamp(min=1), torch.nan)
    present = seen > 0
    groups = {"many": train_counts > many_thr, "few": train_counts < few_thr}
    groups["medium"] = ~groups["many"] & ~groups["few"]
    out: dict[str, Any] = {
        "top1": 100.0 * correct.mean().item(),
        "balanced_acc": 100.0 * per_class[present].mean().item(),
    }
    for name, mask in groups.items():
        m = mask & present
        out[name] = 100.0 * per_class[m].mean().item() if m.any() else float("nan")
        out[f"num_{name}"] = int(mask.sum())
    out["per_class"] = [round(100.0 * v, 4) if v == v else None for v in per_class.tolist()]
    return out


def geometry_metrics(z: Tensor, targets: Tensor, num_classes: int) -> dict[str, float]:
    """Intra alignment, variance, inter uniformity and improved inter uniformity (CoGloAT §4).

    Plain Euclidean distances (not squared); class centres are not re-normalised; the improved
    inter uniformity keeps the paper's factor 2 over ordered pairs.
    """
    z = z.double()
    counts = torch.bincount(targets, minlength=num_classes).double()
    present = counts > 0
    centres = torch.zeros(num_classes, z.shape[1], dtype=z.dtype).index_add_(0, targets, z)
    centres = centres / counts.clamp(min=1).unsqueeze(1)
    dist_to_centre = (z - centres[targets]).norm(dim=1)
    var = torch.zeros(num_classes, dtype=z.dtype).index_add_(0, targets, dist_to_centre) / counts.clamp(min=1)
    order = torch.argsort(targets, stable=True)
    zs = z[order]
    intra = torch.zeros(num_classes, dtype=z.dtype)
    start = 0
    for c, n in enumerate(counts.long().tolist()):  # evaluation only: one cdist per class
        if n:
            block = zs[start : start + n]
            intra[c] = torch.cdist(block, block).sum() / (n * n)
            start += n
    c_present = centres[present]
    k = c_present.shape[0]
    out = {"intra": intra[present].mean().item(), "variance": var[present].mean().item()}
    if k > 1:
        d = torch.cdist(c_present, c_present)
        off = ~torch.eye(k, dtype=torch.bool)
        out["inter"] = (d[off].sum() / (k * (k - 1))).item()
        v = var[present]
        ratio = d / (v.unsqueeze(0) + v.unsqueeze(1)).abs().clamp(min=1e-12)
        out["inter_improved"] = (2.0 * ratio[off].sum() / (k * (k - 1))).item()
    else:
        out["inter"] = out["inter_improved"] = float("nan")
    return out


def format_table(metrics: dict[str, Any], title: str = "") -> str:
    """The All / Many / Medium / Few table printed at the end of a run."""
    head = f"| {'split':<8} | {'classes':>7} | {'top-1 %':>8} |"
    rule = "|" + "-" * 10 + "|" + "-" * 9 + "|" + "-" * 10 + "|"
    n = sum(metrics[f"num_{g}"] for g in ("many", "medium", "few"))
    rows = [f"| {'All':<8} | {n:>7} | {metrics['top1']:>8.2f} |"]
    for g in ("many", "medium", "few"):
        rows.append(f"| {g.capitalize():<8} | {metrics[f'num_{g}']:>7} | {metrics[g]:>8.2f} |")
    lines = ([title] if title else []) + [head, rule, *rows]
    lines.append(f"balanced accuracy {metrics['balanced_acc']:.2f} %")
    return "\n".join(lines)
