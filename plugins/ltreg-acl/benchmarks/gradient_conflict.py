"""ACL's gradient claim on random features: the fraction of positive pairs that are pushed apart, SupCon vs ACL.

A positive pair (i, p) is repelled when the coefficient of z_p in -dL_i/dz_i is negative, i.e. dL/ds_ip > 0
(computed with autograd on the similarity matrix, ``ltreg_acl.gradients``). Features: long-tailed labels
(p_c ~ 2^-c), the V views of one image are noisy copies of one random direction on the sphere, so other views
of the same image are the easy positives. Prints a table; asserts nothing.

    python plugins/ltreg-acl/benchmarks/gradient_conflict.py [--batch 64 --classes 10 --dim 32 --tau 0.1]
"""

from __future__ import annotations

import argparse

import torch
import torch.nn.functional as F
from ltreg_acl import negative_weights
from ltreg_acl.gradients import positive_pair_gradients


def main() -> None:
    """Print, per V, the fraction (and count) of repelled positive pairs under each loss."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--classes", type=int, default=10)
    ap.add_argument("--dim", type=int, default=32)
    ap.add_argument("--tau", type=float, default=0.1)
    ap.add_argument("--noise", type=float, default=0.6, help="view noise around the image's direction")
    ap.add_argument("--seeds", type=int, default=5)
    args = ap.parse_args()
    losses = {
        "SupCon": dict(loss="supcon"),
        "ACL (per-positive)": dict(loss="acl", positives="per-positive"),
        "ACL (same-image)": dict(loss="acl", positives="same-image"),
    }
    print(f"repelled positive pairs (dL/ds_ip > 0), batch {args.batch}, {args.classes} classes, tau {args.tau}, "
          f"{args.seeds} seeds")
    print(f"{'V':>3}  " + "  ".join(f"{name:>20}" for name in losses))
    for v in (2, 4, 8):
        frac = {name: [0, 0] for name in losses}
        for seed in range(args.seeds):
            g = torch.Generator().manual_seed(seed)
            y = torch.multinomial(torch.tensor([0.5 ** k for k in range(args.classes)]), args.batch, True, generator=g)
            base = torch.randn(args.batch, 1, args.dim, generator=g, dtype=torch.float64)
            z = F.normalize(base + args.noise * torch.randn(args.batch, v, args.dim, generator=g, dtype=torch.float64), dim=-1)
            u = torch.randn(args.batch, v, args.classes, generator=g, dtype=torch.float64)
            counts = torch.bincount(y, minlength=args.classes).double().clamp_min(1)
            omega = negative_weights("dataset", counts, y)
            for name, kw in losses.items():
                extra = {} if kw["loss"] == "supcon" else {"omega": omega, "alpha": 0.05, "beta": 1.0}
                grads = positive_pair_gradients(z, y, u, (counts / counts.sum()).log(), temperature=args.tau, **kw, **extra)
                frac[name][0] += int((grads > 0).sum())
                frac[name][1] += grads.numel()
        cells = [f"{100 * r / max(1, n):6.2f}% of {n:>7}" for r, n in frac.values()]
        print(f"{v:>3}  " + "  ".join(f"{c:>20}" for c in cells))


if __name__ == "__main__":
    main()
