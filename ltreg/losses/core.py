"""The one masked log-softmax core of the supervised-contrastive family.

Every contrastive loss in ltreg (SupCon, KCL, BCL, PaCo and the plugins ACL, CoGloAT, ECL, ...) is
:func:`contrastive_loss` with different positives, column weights, temperatures and extra columns.
For anchor ``i`` with scaled features ``a_i = anchors_i / tau_i`` the columns are

* sample columns ``j`` of ``contrast`` with logit ``l_ij = a_i . c_j`` and denominator weight ``w_ij``
  (``col_weight`` times the class-average factor), where the anchor's own column (``self_index``) and
  empty slots (``contrast_labels < 0``) are excluded from ``A(i)`` altogether;
* extra columns ``k`` (e.g. PaCo's class centres) with logit ``x_ik`` taken as given.

Positives ``P(i)`` are the columns of ``A(i)`` sharing the anchor's label, unless ``pos_index`` /
``pos_mask`` say otherwise; sample positives weigh ``pos_weight`` and extra positives their
``extra_pos`` value ``e_ik``; ``W_i`` is the total positive weight. With ``Den_i = sum_j w_ij exp(l_ij)
+ sum_k exp(x_ik)`` the shared-denominator loss (SupCon, KCL, BCL, PaCo) is

    L_i = -1/W_i * [ pos_weight * sum_{p in P(i)} (l_ip - log Den_i) + sum_k e_ik (x_ik - log Den_i) ]

and the per-positive-denominator loss (ACL, CoGloAT) puts each positive alone with the
negatives, ``Neg_i = Den_i`` restricted to non-positive columns:

    L_i = 1/W_i * [ pos_weight * sum_p log(1 + Neg_i / exp(l_ip)) + sum_k e_ik log(1 + Neg_i / exp(x_ik)) ]

The shared form with unit weights and no extra column is SupCon's ``L^sup_out`` (Khosla et al.,
"Supervised Contrastive Learning", arXiv 2004.11362, Eq. 2); the per-positive form is the term of Bach
et al., "Global Contrastive Learning for Long-Tailed Classification" (TMLR 2023), Eq. 1. Each method's own
equation, paper and readings are in its loss's docstring.

An anchor with ``W_i = 0`` (no positive) contributes exactly 0 and is excluded from the mean.
Masked columns get the finite logit ``NEG`` (never ``-inf``), every log-sum-exp subtracts its row
maximum, and half-precision inputs are computed in float32 with autocast off: no NaN or inf appears
under fp16 / bf16 autocast, even for rows where every column is masked.

The shared mode runs on a fused kernel (:class:`_FusedContrast`): one ``[N, M + K]`` buffer holds the
logits, then (in place) their softmax, then the gradient, so the backward is the two matmuls.
Label positives are summed through per-class feature sums (``O((N + M) D)``, no ``[N, M]`` mask) and
``pos_index`` positives are gathered (``O(N P)``); a dense ``pos_mask`` costs a float copy of the mask in
each pass, ``[N, M]`` column weights their own buffer, and the class average's own-class term a mask
built in four row blocks (1/4 buffer). The per-positive mode runs on plain autograd over dense
``[N, M]`` tensors (several buffers; it serves the plugins, not the benchmarked baselines).
"""

from __future__ import annotations

from typing import Literal, NamedTuple

import torch
from torch import Tensor
from torch.autograd.function import once_differentiable

NEG = -1e30
"""Logit of a masked column: finite, so a fully masked row gives a finite log-partition."""

_TINY = 1e-12


class ContrastiveResult(NamedTuple):
    """The loss (a scalar for ``"mean"``, ``[N]`` for ``"none"``) and each anchor's positive count ``[N]``."""

    loss: Tensor
    num_pos: Tensor


class _Positives(NamedTuple):
    """Positive columns in one of three forms: label groups (per-class sums), an index list, or a dense mask."""

    gid_c: Tensor | None = None
    gid_a: Tensor | None = None
    index: Tensor | None = None
    mask: Tensor | None = None


def _sparse(rows: Tensor, cols: Tensor, shape: tuple[int, int], values: Tensor) -> Tensor:
    """A sparse ``shape`` matrix with ``values`` at ``(rows, cols)``. Group sums and gathers run as products with
    it: on CPU these are serial loops, where ``index_add_`` runs many short parallel regions that stall when
    other processes share the cores."""
    return torch.sparse_coo_tensor(torch.stack([rows, cols]), values, shape, check_invariants=False)


class _FusedContrast(torch.autograd.Function):
    """Per anchor, ``log(sum_j exp(l_ij + bias_ij) + sum_k exp(x_ik))`` and ``sum_{p in P(i)} l_ip``, ``l = scale * a c^T``.

    One ``[N, M' + K']`` buffer holds the logits (sample columns, then the extra ones, each block padded to a
    multiple of 16 with masked columns so the GEMM runs on whole 64-byte tiles), then (in place) their
    softmax, then the gradient ``softmax * g1 + positives * g2``; the backward is the two matmuls. Label
    positives are summed through per-class feature sums, so neither pass needs an ``[N, M]`` mask.
    """

    @staticmethod
    def forward(
        ctx,
        a: Tensor,
        c: Tensor,
        extra: Tensor | None,
        scale: Tensor | float,
        bias: _Bias,
        self_index: Tensor | None,
        pos: _Positives,
    ) -> tuple[Tensor, Tensor]:
        n, m = a.shape[0], c.shape[0]
        k = 0 if extra is None else extra.shape[1]
        m16, k16 = -(-m // 16) * 16, -(-k // 16) * 16
        buf = torch.empty(n, m16 + k16, dtype=a.dtype, device=a.device)
        cp = c if m16 == m else torch.cat([c, c.new_zeros(m16 - m, c.shape[1])])  # zero rows: padded columns
        if isinstance(scale, Tensor):
            torch.mm(a * scale.unsqueeze(1), cp.T, out=buf[:, :m16])
        else:
            zero = torch.zeros((), dtype=a.dtype, device=a.device)
            torch.addmm(zero, a, cp.T, beta=0, alpha=scale, out=buf[:, :m16])
        s = buf[:, :m]
        csum = same = None
        if pos.index is not None:
            pos_sum = (s.gather(1, pos.index.clamp_min(0)) * (pos.index >= 0)).sum(1)
        elif pos.mask is not None:
            pos_sum = torch.bmm(s.unsqueeze(1), pos.mask.to(s.dtype).unsqueeze(2)).view(-1)
        else:
            cols = torch.arange(m, device=c.device)
            csum = torch.sparse.mm(_sparse(pos.gid_c, cols, (m, m), torch.ones_like(c[:, 0])), c)  # per group
            found = (pos.gid_a >= 0).to(a.dtype)
            rows = torch.arange(n, device=a.device)
            cg = torch.sparse.mm(_sparse(rows, pos.gid_a.clamp_min(0), (n, m), found), csum)  # anchor's group
            pos_sum = torch.bmm(a.unsqueeze(1), cg.unsqueeze(2)).view(-1) * scale
            if self_index is not None:
                same = pos.gid_c[self_index] == pos.gid_a
                pos_sum = pos_sum - s.gather(1, self_index.unsqueeze(1)).squeeze(1) * same
        bias.add_to(s)
        if self_index is not None:
            s.scatter_(1, self_index.unsqueeze(1), NEG)
        buf[:, m:m16] = NEG
        if extra is not None:
            buf[:, m16 : m16 + k] = extra
        buf[:, m16 + k :] = NEG
        top = buf.amax(1)
        # softmax in place: the CPU and CUDA kernels read every element of a row before writing it
        torch.ops.aten._softmax.out(buf, 1, False, out=buf)
        ctx.pos, ctx.scale, ctx.extra_cols = pos, scale, (m16, m16 + k)
        ctx.save_for_backward(a, c, buf, self_index, csum, same, scale if isinstance(scale, Tensor) else None)
        return top - buf.amax(1).log(), pos_sum  # the largest probability is exp(top - log Z) >= 1 / (M + K)

    @staticmethod
    @once_differentiable
    def backward(ctx, g1: Tensor, g2: Tensor) -> tuple[Tensor | None, ...]:
        # The saved softmax becomes the gradient in place; a second backward through the same graph is
        # refused by autograd's version check ("modified by an inplace operation").
        a, c, p, self_index, csum, same, scale_t = ctx.saved_tensors
        pos: _Positives = ctx.pos
        scale = ctx.scale if scale_t is None else scale_t.unsqueeze(1)
        m, (lo, hi) = c.shape[0], ctx.extra_cols
        p.mul_(g1.unsqueeze(1) * scale)  # sample columns: d/dl = softmax * g1, times scale for d/da and d/dc
        s, h = p[:, :m], (g2.unsqueeze(1) * scale).view(-1)
        gx = p[:, lo:hi] / scale if ctx.needs_input_grad[2] else None
        ga_in = gc_in = None
        if pos.index is not None:
            s.scatter_add_(1, pos.index.clamp_min(0), h.unsqueeze(1) * (pos.index >= 0))
        elif pos.mask is not None:
            s.addcmul_(pos.mask.to(s.dtype), h.unsqueeze(1))
        else:
            h = h * (pos.gid_a >= 0)
            if self_index is not None:  # P(i) excludes the anchor's own column; its softmax entry is 0
                s.scatter_(1, self_index.unsqueeze(1), (-h * same).unsqueeze(1))
            n, ga = a.shape[0], pos.gid_a.clamp_min(0)
            rows, cols = torch.arange(n, device=a.device), torch.arange(m, device=c.device)
            if ctx.needs_input_grad[0] or ctx.needs_input_grad[3]:  # h_i * (sum of the anchor's group)
                ga_in = torch.sparse.mm(_sparse(rows, ga, (n, m), h), csum)
            if ctx.needs_input_grad[1]:  # sum of h_i a_i over the anchors of each column's group
                per_group = torch.sparse.mm(_sparse(ga, rows, (m, n), h), a)
                gc_in = torch.sparse.mm(_sparse(cols, pos.gid_c, (m, m), torch.ones_like(c[:, 0])), per_group)
        ga = gc = gs = None
        if ctx.needs_input_grad[0] or ctx.needs_input_grad[3]:
            ga = s @ c if ga_in is None else torch.addmm(ga_in, s, c, out=ga_in)
            if ctx.needs_input_grad[3]:
                gs = (ga * a).sum(1) / scale_t
        if ctx.needs_input_grad[1]:
            gc = s.T @ a if gc_in is None else torch.addmm(gc_in, s.T, a, out=gc_in)
        return ga, gc, gx, gs, None, None, None


def group_ids(contrast_labels: Tensor, anchor_labels: Tensor) -> tuple[Tensor, Tensor]:
    """Dense ids of the contrast labels ``[M]`` (in ``[0, M)``) and each anchor's id ``[N]`` (-1: absent).

    Sort-based, so it needs no class count and no host sync; anchors with a negative label get -1.
    """
    m = contrast_labels.shape[0]
    sorted_y, order = contrast_labels.sort()
    new = torch.ones(m, dtype=torch.bool, device=sorted_y.device)
    new[1:] = sorted_y[1:] != sorted_y[:-1]
    gid_sorted = new.cumsum(0) - 1
    gid_c = torch.empty_like(gid_sorted).scatter_(0, order, gid_sorted)
    pos = torch.searchsorted(sorted_y, anchor_labels).clamp_max(m - 1)
    found = (sorted_y[pos] == anchor_labels) & (anchor_labels >= 0)
    return gid_c, torch.where(found, gid_sorted[pos], -1)


def _log_weight(w: Tensor) -> Tensor:
    """``log w`` with zero weights mapped to the finite ``NEG``."""
    return torch.where(w > 0, w.clamp_min(_TINY).log(), NEG)


class _Bias(NamedTuple):
    """Log denominator weight of the sample columns: ``cols`` (``[M]`` or ``[N, M]``; ``NEG`` for empty slots)
    plus ``own_lw[i]`` on the columns whose group ``gid`` is the group ``own[i]`` of anchor ``i``'s own column."""

    cols: Tensor
    gid: Tensor | None = None
    own: Tensor | None = None
    own_lw: Tensor | None = None

    def add_to(self, s: Tensor) -> Tensor:
        """``s += bias`` in place (no autograd); the own-group mask is built in 4 row blocks to bound its memory."""
        s.add_(self.cols)
        if self.own_lw is not None:
            step = -(-s.shape[0] // 4)
            mask = torch.empty(step, s.shape[1], dtype=s.dtype, device=s.device)
            gid, own = (
                self.gid.to(s.dtype).unsqueeze(0),
                self.own.to(s.dtype).unsqueeze(1),
            )  # float ids: no int temp
            for r in range(0, s.shape[0], step):  # row blocks, not samples: 4 iterations
                rows = s[r : r + step]
                blk = torch.eq(own[r : r + step], gid, out=mask[: rows.shape[0]])
                rows.add_(blk.mul_(self.own_lw[r : r + step].unsqueeze(1)))
        return s

    def dense(self) -> Tensor:
        """The bias as one differentiable-path tensor, ``[M]`` or ``[N, M]``."""
        if self.own_lw is None:
            return self.cols
        return self.cols + (self.gid.unsqueeze(0) == self.own.unsqueeze(1)) * self.own_lw.unsqueeze(1)


class _Groups(NamedTuple):
    """Label groups (:func:`group_ids`) of the columns and anchors, and each group's number of usable columns."""

    gid_c: Tensor
    gid_a: Tensor
    count: Tensor


def _groups(contrast_labels: Tensor, anchor_labels: Tensor, valid: Tensor, dtype: torch.dtype) -> _Groups:
    """Group ids and per-group column counts (empty slots not counted)."""
    gid_c, gid_a = group_ids(contrast_labels, anchor_labels)
    count = torch.zeros(gid_c.shape[0], dtype=dtype, device=valid.device).index_add_(
        0, gid_c, valid.to(dtype)
    )
    return _Groups(gid_c, gid_a, count)


def _column_bias(
    valid: Tensor,
    dtype: torch.dtype,
    col_weight: Tensor | float | None,
    groups: _Groups | None,
    self_index: Tensor | None,
) -> _Bias:
    """The denominator log-weights: ``log col_weight`` and, given ``groups``, the class average ``-log |class of j in A(i)|``."""
    bias = torch.zeros(valid.shape[0], dtype=dtype, device=valid.device).masked_fill(~valid, NEG)
    if col_weight is not None:
        w = (
            col_weight
            if isinstance(col_weight, Tensor)
            else torch.tensor(float(col_weight), device=valid.device, dtype=dtype)
        )
        bias = bias + _log_weight(w.to(dtype))
    if groups is None:
        return _Bias(bias)
    gid, cnt = groups.gid_c, groups.count
    bias = bias - cnt[gid].clamp_min(1).log()
    if self_index is None:
        return _Bias(bias)
    # the anchor's own class has one column fewer in A(i): weight 1/(n - 1) instead of 1/n
    own = gid[self_index]
    n_own = cnt[own]
    own_lw = torch.where(valid[self_index] & (n_own > 1), (n_own / (n_own - 1).clamp_min(1)).log(), 0.0)
    return _Bias(bias, gid, own, own_lw)


def _positives(
    groups: _Groups | None,
    valid: Tensor,
    self_index: Tensor | None,
    pos_index: Tensor | None,
    pos_mask: Tensor | None,
    dtype: torch.dtype,
) -> tuple[_Positives, Tensor]:
    """The positives in kernel form (cleaned of the self column and empty slots) and their count ``[N]``."""
    if pos_index is not None:
        idx = pos_index.clamp_min(0)
        ok = (pos_index >= 0) & valid[idx]
        if self_index is not None:
            ok &= idx != self_index.unsqueeze(1)
        return _Positives(index=torch.where(ok, pos_index, -1)), ok.sum(1).to(dtype)
    if pos_mask is not None:
        mask = pos_mask & valid.unsqueeze(0)
        if self_index is not None:
            mask = mask.scatter(1, self_index.unsqueeze(1), False)
        return _Positives(mask=mask), mask.sum(1).to(dtype)
    gid_c, gid_a = groups.gid_c, groups.gid_a
    count = groups.count[gid_a.clamp_min(0)] * (gid_a >= 0)
    if self_index is not None:
        count = count - (gid_c[self_index] == gid_a).to(dtype)
    return _Positives(gid_c=gid_c, gid_a=gid_a), count


def _dense_positives(
    anchor_labels: Tensor,
    contrast_labels: Tensor,
    valid: Tensor,
    self_index: Tensor | None,
    pos_index: Tensor | None,
    pos_mask: Tensor | None,
) -> Tensor:
    """The ``[N, M]`` bool positive mask (per-positive mode only)."""
    if pos_index is not None:
        m = contrast_labels.shape[0]  # padding goes to a spare last column, dropped
        mask = torch.zeros(anchor_labels.shape[0], m + 1, dtype=torch.bool, device=valid.device)
        mask = mask.scatter_(1, torch.where(pos_index >= 0, pos_index, m), True)[:, :m]
    elif pos_mask is not None:
        mask = pos_mask.clone()
    else:
        mask = (anchor_labels.unsqueeze(1) == contrast_labels.unsqueeze(0)) & (anchor_labels >= 0).unsqueeze(
            1
        )
    mask &= valid.unsqueeze(0)
    if self_index is not None:
        mask.scatter_(1, self_index.unsqueeze(1), False)
    return mask


def _per_positive(
    a: Tensor,
    c: Tensor,
    bias: _Bias,
    pos: Tensor,
    self_index: Tensor | None,
    pos_weight: float,
    extra: Tensor | None,
    extra_w: Tensor | None,
) -> tuple[Tensor, Tensor, Tensor]:
    """Per-positive-denominator loss numerator ``[N]``, positive weight ``W`` ``[N]`` and count ``[N]``."""
    s = a @ c.T
    neg = (s + bias.dense()).masked_fill(pos, NEG)
    if self_index is not None:
        neg = neg.scatter(1, self_index.unsqueeze(1), NEG)
    log_neg = neg.logsumexp(1)
    if extra is not None:
        log_neg = torch.logaddexp(log_neg, extra.masked_fill(extra_w > 0, NEG).logsumexp(1))
    terms = torch.logaddexp(s, log_neg.unsqueeze(1)) - s
    num = pos_weight * (terms * pos).sum(1)
    count = pos.sum(1).to(a.dtype)
    weight = pos_weight * count
    if extra is not None:
        num = num + ((torch.logaddexp(extra, log_neg.unsqueeze(1)) - extra) * extra_w).sum(1)
        weight = weight + extra_w.sum(1)
        count = count + (extra_w > 0).sum(1)
    return num, weight, count


def contrastive_loss(
    anchors: Tensor,
    contrast: Tensor,
    anchor_labels: Tensor,
    contrast_labels: Tensor,
    *,
    temperature: float | Tensor = 0.1,
    self_index: Tensor | None = None,
    pos_index: Tensor | None = None,
    pos_mask: Tensor | None = None,
    pos_weight: float = 1.0,
    col_weight: Tensor | float | None = None,
    class_average: bool = False,
    per_positive_denominator: bool = False,
    extra_logits: Tensor | None = None,
    extra_pos: Tensor | None = None,
    reduction: Literal["mean", "none"] = "mean",
) -> ContrastiveResult:
    """Masked log-softmax contrastive loss of ``anchors`` ``[N, D]`` against ``contrast`` ``[M, D]`` (see module doc).

    Args:
        anchors, contrast: features (normally L2-normalised); half precision is computed in float32.
        anchor_labels: ``[N]`` long. contrast_labels: ``[M]`` long, ``-1`` marks an empty slot (ignored).
        temperature: a float or a per-anchor ``[N]`` tensor; divides the sample logits only.
        self_index: ``[N]`` column of each anchor inside ``contrast`` (excluded from ``A(i)``), or None.
        pos_index: ``[N, P]`` positive columns (``-1`` pads; no duplicates), replacing label equality.
        pos_mask: ``[N, M]`` bool positives replacing label equality (dense; slower than ``pos_index``).
        pos_weight: weight of every sample positive (PaCo's alpha).
        col_weight: weight of each sample column in the denominator: a float, ``[M]`` or ``[N, M]``.
        class_average: divide each column by the number of columns of its class in ``A(i)`` (BCL / ECL).
        per_positive_denominator: each positive's denominator is itself plus the negatives only.
        extra_logits: ``[N, K]`` extra columns (e.g. class-centre logits with their offsets), not scaled.
        extra_pos: ``[N, K]`` bool or float weight of each extra column as a positive.
        reduction: ``"mean"`` over anchors that have a positive, or ``"none"`` (``[N]``, 0 without positives).
    """
    n, m = anchors.shape[0], contrast.shape[0]
    if anchors.dim() != 2 or contrast.dim() != 2 or anchors.shape[1] != contrast.shape[1]:
        raise ValueError(
            f"anchors [N, D] and contrast [M, D] must share D; got {tuple(anchors.shape)} and {tuple(contrast.shape)}"
        )
    if anchor_labels.shape != (n,) or contrast_labels.shape != (m,):
        raise ValueError(
            f"labels must be [N]={n} and [M]={m}; got {tuple(anchor_labels.shape)} and {tuple(contrast_labels.shape)}"
        )
    if pos_index is not None and pos_mask is not None:
        raise ValueError("give at most one of pos_index and pos_mask")
    if (extra_pos is not None) != (extra_logits is not None):
        raise ValueError("extra_pos goes with extra_logits: give both or neither")
    if isinstance(temperature, float | int) and temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    if reduction not in ("mean", "none"):
        raise ValueError(f"reduction must be 'mean' or 'none', got {reduction!r}")

    dtype = torch.promote_types(anchors.dtype, torch.float32)
    with torch.autocast(anchors.device.type, enabled=False):
        if isinstance(temperature, Tensor):
            scale: Tensor | float = 1.0 / temperature.to(dtype=dtype, device=anchors.device).expand(n)
        else:
            scale = 1.0 / float(temperature)
        a, c = anchors.to(dtype), contrast.to(dtype)
        valid = contrast_labels >= 0
        by_label = pos_index is None and pos_mask is None and not per_positive_denominator
        groups = _groups(contrast_labels, anchor_labels, valid, dtype) if class_average or by_label else None
        bias = _column_bias(valid, dtype, col_weight, groups if class_average else None, self_index)
        extra = extra_logits.to(dtype) if extra_logits is not None else None
        extra_w = extra_pos.to(dtype) if extra_pos is not None else None
        if per_positive_denominator:
            pos = _dense_positives(anchor_labels, contrast_labels, valid, self_index, pos_index, pos_mask)
            a_s = a * (scale.unsqueeze(1) if isinstance(scale, Tensor) else scale)
            num, weight, count = _per_positive(a_s, c, bias, pos, self_index, pos_weight, extra, extra_w)
            per_anchor = num / weight.clamp_min(_TINY)
        else:
            pos, count = _positives(groups, valid, self_index, pos_index, pos_mask, dtype)
            log_z, pos_sum = _FusedContrast.apply(a, c, extra, scale, bias, self_index, pos)
            num, weight = pos_weight * pos_sum, pos_weight * count
            if extra is not None:
                num = num + (extra_w * extra).sum(1)
                weight = weight + extra_w.sum(1)
                count = count + (extra_w > 0).sum(1)
            per_anchor = log_z - num / weight.clamp_min(_TINY)
        has = weight > 0
        per_anchor = per_anchor * has
        if reduction == "none":
            return ContrastiveResult(per_anchor, count)
        return ContrastiveResult(per_anchor.sum() / has.sum().clamp_min(1), count)
