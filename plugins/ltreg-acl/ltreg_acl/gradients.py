"""The gradient claim behind ACL, made measurable: does a positive pair attract or repel?

For anchor ``i`` and positive ``p``, the coefficient of ``z_p`` in ``-dL_i/dz_i`` is ``-dL_i/ds_ip``: a positive
``dL/ds_ip`` means the pair is pushed apart (SupCon's "gradient conflict": for SupCon, Khosla et al., arXiv
2004.11362, ``dL_i/ds_ip = (P_ip - 1/|P(i)|) / tau`` with ``P_ip`` the softmax weight of ``p``). The
similarities are made autograd leaves by contrasting the rows of ``S = Z Z^T`` against the identity: the core
then computes ``S_ij / tau`` as its logits, and ``S_ij`` enters anchor ``i``'s term only.
"""

from __future__ import annotations

from typing import Any, Literal

import torch
from torch import Tensor

from ltreg import contrast_set, supcon
from ltreg_acl.loss import acl


def positive_pair_gradients(
    z: Tensor,
    labels: Tensor,
    logits: Tensor,
    log_prior: Tensor,
    *,
    loss: Literal["supcon", "acl"],
    temperature: float,
    **acl_kwargs: Any,
) -> Tensor:
    """``dL/ds_ip`` for every ordered positive pair ``(i, p)`` of the views ``z`` ``[B, V, D]`` (> 0: repelled)."""
    b, v, d = z.shape
    flat = z.reshape(-1, d).detach()
    sim = (flat @ flat.T).requires_grad_(True)
    cs = contrast_set(z.detach(), labels)
    cs = cs._replace(z=torch.eye(sim.shape[0], dtype=sim.dtype, device=sim.device))
    anchors = sim.view(b, v, -1)
    if loss == "supcon":
        res = supcon(anchors, labels, temperature, contrast=cs)
    elif loss == "acl":
        res = acl(anchors, labels, logits, log_prior, temperature=temperature, contrast=cs, **acl_kwargs)
    else:
        raise ValueError(f"loss must be 'supcon' or 'acl', got {loss!r}")
    (grad,) = torch.autograd.grad(res.loss, sim)
    y = labels.repeat_interleave(v)
    pos = (y.unsqueeze(1) == y.unsqueeze(0)) & ~torch.eye(y.shape[0], dtype=torch.bool, device=y.device)
    return grad[pos]
