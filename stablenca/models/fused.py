"""TALENT's ModernNCA objective (and ``nca_logspace``) from embeddings to per-row losses, with a
closed-form backward.

The eager path (``cdist`` → mask → ``softmax`` → readout → ``log``/NLL or squared
error, :func:`stablenca.losses.builtin.modernnca`) records every step on autograd's tape,
and its backward walks them one by one: about ten passes over the (B, C) matrix. The
gradient has a closed form, so the backward here makes four passes (the float mask's
rows, subtract, times s, divided by d), two sums and two matrix products. When the queries
are the candidates' leading rows (the Trainer's case) it returns one gradient for both
roles instead of two that autograd would add through a zero-filled slice gradient. The
forward runs the same ops as the eager path, so the loss and everything published
(distances, softmax, masks) are the same bits (nca_logspace's loss: within rounding, see
:class:`_NCALogspaceObjective`); only the gradient's rounding differs
(tests/test_fused.py compares it with autograd in float64). The backward builds its (B, C) matrix
2^64 higher and brings the gradients back after the products, as the Trainer's distance backward
does (:func:`.neighbours.lifted_gradients`): no product on the slow path for subnormal operands once the
softmax has underflowed, and the same bits as unscaled wherever nothing in it is subnormal
(tests/test_fused.py). Under ``torch.autocast`` it runs the
eager path's ops instead (autocast chooses each op's dtype, and the closed form is float32 or
float64 throughout).

Derivation, for queries q_i, candidates c_j, distances d_ij = ||q_i - c_j||, logits
z_ij = -d_ij / T with the self pairs at -inf, s = softmax(z) per row, prediction
u_i = sum_j s_ij t_j (t_j the candidate's one-hot row, or its target):

* classification, loss_i = -log(u_{i,y_i} + eps) (TALENT's eps): with m_ij = [y_j == y_i],
  dloss_i/dz_ij = -s_ij (m_ij - u_{i,y_i}) / (u_{i,y_i} + eps);
* regression, loss_i = (u_i - y_i)^2: dloss_i/dz_ij = 2 (u_i - y_i) s_ij (t_j - u_i);

then dL/dd_ij = -dL/dz_ij / T, and with G_ij = (dL/dd_ij) / d_ij (0 where d_ij = 0, as
torch's ``_euclidean_dist_backward`` does, which also covers the masked self pairs where
s_ij = 0):

    dL/dq_i = q_i * sum_j G_ij - (G C)_i,    dL/dc_j = c_j * sum_i G_ij - (G^T Q)_j.

``nca_logspace`` (-log of the probability of the own class, from two logsumexps) has
dloss_i/dz_ij = s_ij - q_ij (q the softmax over the same class): the same G and the same
products (:class:`_NCALogspaceObjective`).
"""

from __future__ import annotations

import math

import torch

from ..losses.base import LossOutput
from ..losses.builtin import MODERNNCA_EPS, class_table as make_class_table, modernnca, nca_logspace, per_class
from ..publish import publish
from .neighbours import divided_by, exp_floor, leading_self_mask, lifted_gradients


class _ModernNCAObjective(torch.autograd.Function):
    """Per-row ModernNCA losses of ``queries`` against ``candidates`` (self pairs on the leading diagonal)."""

    @staticmethod
    def forward(ctx, queries, candidates, labels, candidate_labels, class_table, targets, temperature,
                classification, shared):
        if shared:  # ``queries`` is None: the leading rows of ``candidates``
            queries = candidates[:len(labels)]
        raw = torch.cdist(queries, candidates, p=2)
        # x / 1.0 == x exactly: skipped at T = 1 as in the eager path (the same bits)
        distances = raw if temperature == 1.0 else raw / temperature
        logits = distances.neg()
        logits.fill_diagonal_(-math.inf)  # the eager path's masked_fill(self, inf) then negation
        # softmax written over its input (the kernel reads each row before it writes it: the same
        # bits as torch.softmax), one (B, C) buffer fewer per step
        probabilities = torch.ops.aten._softmax.out(logits, -1, False, out=logits)
        del logits
        if classification:
            picked = per_class(probabilities, class_table).gather(1, labels[:, None]).squeeze(1)
            per_sample = -torch.log(picked + MODERNNCA_EPS)
        else:
            picked = probabilities @ targets  # a matrix-vector product, as in the eager path
            per_sample = (picked - labels) ** 2
        ctx.save_for_backward(queries, candidates, raw, probabilities, labels, candidate_labels, class_table, picked)
        ctx.temperature, ctx.classification, ctx.shared = temperature, classification, shared
        ctx.mark_non_differentiable(distances, probabilities)
        ctx.set_materialize_grads(False)  # no (B, C) zero gradients for the two published outputs
        return per_sample, distances, probabilities

    @staticmethod
    def backward(ctx, grad_per_sample, _grad_distances, _grad_probabilities):
        queries, candidates, raw, probabilities, labels, candidate_labels, class_table, picked = ctx.saved_tensors
        if grad_per_sample is None:  # only the published outputs were used
            return (None,) * 9
        # dL/dd_ij = coefficient_i * H_ij * d_ij, with H_ij = s_ij r_ij / d_ij; the row factor is
        # applied to the (B, dim) products, not to the (B, C) matrix.
        if ctx.classification:
            # r_ij = m_ij - u_iy, coefficient_i = g_i / (T (u_iy + eps))
            coefficient = grad_per_sample / (ctx.temperature * (picked + MODERNNCA_EPS))
        else:
            # r_ij = t_j - u_i, coefficient_i = -2 g_i (u_i - y_i) / T
            coefficient = -2 * grad_per_sample * (picked - labels) / ctx.temperature
        # H is built 2^64 higher and the gradients brought back after the products (lifted_gradients):
        # the same bits wherever H holds no subnormal number, and no products on the CPU's slow path
        # for subnormal operands where the softmax has underflowed.
        def gradients(scale):
            if ctx.classification:
                # m as rows of the (K, C) class table picked by label (a row copy, faster than converting
                # the (B, C) bool mask); m_ii = 1 here, but the diagonal is zeroed below
                ratio = (class_table.to(probabilities.dtype) * scale).index_select(0, labels)
                ratio.sub_(picked[:, None] * scale)
            else:
                ratio = candidate_labels[None, :] * scale - picked[:, None] * scale
            ratio.mul_(probabilities).div_(raw)
            return _embedding_gradients(ctx, ratio, coefficient, queries, candidates, raw)

        return lifted_gradients(gradients) + (None,) * 7


def _embedding_gradients(ctx, ratio, coefficient, queries, candidates, raw):
    """(dL/dqueries, dL/dcandidates) from ``ratio`` = H (B, C), dL/draw_ij = coefficient_i H_ij raw_ij.

    H's diagonal (the self pairs) is zeroed here, and H = 0 where raw = 0 (cdist's rule). The
    row factor is applied to the (B, dim) products, not to the (B, C) matrix.
    """
    # The self pairs are the diagonal; other zeros (duplicate rows) leave a non-finite entry, which
    # the row sums reveal.
    ratio.diagonal().zero_()
    row_sums = ratio.sum(dim=1)
    if not bool(torch.isfinite(row_sums).all()):
        ratio.masked_fill_(raw == 0, 0)
        row_sums = ratio.sum(dim=1)
    if ctx.shared:  # the queries are the candidates' leading rows: one gradient for both roles
        # dL/de_j = e_j (a_j rowsum_j [j < B] + (a H)_j) - [a (H E)]_j [j < B] - (H^T (a Q))_j: the
        # autograd path's two gradients, summed here instead of through a zero-filled slice gradient
        weights = coefficient @ ratio
        weights[:len(queries)] += coefficient * row_sums
        grad = candidates * weights[:, None]
        grad[:len(queries)] -= (ratio @ candidates).mul_(coefficient[:, None])
        grad.addmm_(ratio.mT, coefficient[:, None] * queries, alpha=-1)
        return None, grad
    grad_queries = grad_candidates = None
    if ctx.needs_input_grad[0]:
        grad_queries = coefficient[:, None] * (queries * row_sums[:, None] - ratio @ candidates)
    if ctx.needs_input_grad[1]:
        grad_candidates = candidates * (coefficient @ ratio)[:, None] - ratio.mT @ (coefficient[:, None] * queries)
    return grad_queries, grad_candidates


class _NCALogspaceObjective(torch.autograd.Function):
    """Per-row ``nca_logspace`` losses (:func:`stablenca.losses.builtin.nca_logspace`) of the included
    rows, with the self pairs on the leading diagonal.

    The forward runs the eager path's ops, with one addition: each exponential that would come
    out below the smallest normal number times e^16 is raised to that (:func:`_raised_tails`), so
    that no exp underflows. torch's CPU exp takes a slow path for every result that underflows and
    for exp(-inf): 7x (-inf) to 80x (a subnormal result) the time of a normal one on the Intel Xeon
    of reports/benchmarks.md's ninth round (``python bench/underflow_cost.py``), and a masked row of a
    logsumexp is mostly -inf. The published
    tensors are the eager path's bits; the loss is the eager one's within the rounding bound of
    tests/test_fused_logspace.py (the raised terms add at most C e^16 tiny to sums of at least 1:
    in float32, 1.9e-28 for C = 1848, about 2^-69 of an ulp of 1). The backward: with z = -d, loss_i =
    logsumexp_{j != i} z_ij - logsumexp_{same class} z_ij has dloss_i/dz_ij = s_ij - q_ij, s the
    softmax over all but self and q the one over the same class. Each is exp(z - its own
    logsumexp), so both stay finite at any distance scale (s_ij / p_i would overflow exactly where
    this loss is meant to hold). Then dL/draw_ij = g_i (q_ij - s_ij) / T.
    """

    @staticmethod
    def forward(ctx, queries, candidates, same, included, labels, class_table, temperature, shared):
        if shared:
            queries = candidates[:len(same)]
        raw = torch.cdist(queries, candidates, p=2)
        distances = raw if temperature == 1.0 else raw / temperature
        if bool(included.all()):
            # The eager path's masked logits without masked_fill (4x slower than these passes on the
            # CPU): the same class's as the logits plus a row of 0 / -inf picked by label (x + 0 = x,
            # but -0.0 + 0 = +0.0, which no logsumexp tells apart); the self pairs, the diagonal.
            logits = -distances
            same_logits = torch.zeros(class_table.shape, dtype=distances.dtype, device=distances.device)
            same_logits = same_logits.masked_fill_(~class_table, -math.inf).index_select(0, labels)
            same_logits.fill_diagonal_(-math.inf).add_(logits)
            log_same = torch.logsumexp(_raised_tails(same_logits), dim=1)
            del same_logits
            log_all = torch.logsumexp(_raised_tails(logits.fill_diagonal_(-math.inf)), dim=1)
        else:  # the eager path's ops on the included rows, tails raised
            logits = -distances[included]
            log_same = torch.logsumexp(_raised_tails(logits.masked_fill(~same[included], -math.inf)), dim=1)
            self_mask = _leading_diagonal(distances)[included]
            log_all = torch.logsumexp(_raised_tails(logits.masked_fill_(self_mask, -math.inf)), dim=1)
        del logits
        ctx.save_for_backward(queries, candidates, raw, distances, included, labels, class_table, log_same, log_all)
        ctx.temperature, ctx.shared = temperature, shared
        ctx.mark_non_differentiable(distances)
        ctx.set_materialize_grads(False)
        return log_all - log_same, distances

    @staticmethod
    def backward(ctx, grad_per_sample, _grad_distances):
        queries, candidates, raw, distances, included, labels, class_table, log_same, log_all = ctx.saved_tensors
        if grad_per_sample is None:
            return (None,) * 8
        rows = len(labels)
        # excluded rows (no same-class candidate): no gradient, and +inf shifts make their s and q 0
        coefficient = distances.new_zeros(rows)
        coefficient[included] = grad_per_sample / ctx.temperature
        shift_same = distances.new_full((rows,), math.inf)
        shift_same[included] = log_same
        shift_all = distances.new_full((rows,), math.inf)
        shift_all[included] = log_all
        # q - s, each as exp(-d - shift): -shift - d in one pass, raised to the floor (no exp
        # underflows: the slow path), then exp in place. q's arguments are <= 0 on the same class
        # (shift_same >= the class's largest -d); capped at 0 elsewhere, where q is then zeroed by a
        # product with the class rows (a finite exp: no inf * 0; faster than masked_fill).
        floor = exp_floor(distances.dtype)
        ratio = torch.sub(shift_same.neg()[:, None], distances).clamp_(floor, 0).exp_()
        ratio.mul_(class_table.to(distances.dtype).index_select(0, labels))  # its diagonal: zeroed below
        ratio.sub_(torch.sub(shift_all.neg()[:, None], distances).clamp_min_(floor).exp_())
        ratio.div_(raw)
        return _embedding_gradients(ctx, ratio, coefficient, queries, candidates, raw) + (None,) * 6


def modernnca_objective(queries: torch.Tensor, candidates: torch.Tensor, labels: torch.Tensor,
                        candidate_labels: torch.Tensor, *, task: str, n_classes: int | None,
                        temperature: float = 1.0) -> LossOutput:
    """TALENT's ModernNCA loss from embeddings, publishing what the eager path publishes.

    The candidates' first ``len(queries)`` rows are the queries themselves (the self pairs
    are the leading diagonal), as in both candidate schemes of the Trainer.

    >>> q = torch.tensor([[0.0, 0.0], [3.0, 4.0]])
    >>> out = modernnca_objective(q, q, torch.tensor([0, 1]), torch.tensor([0, 1]),
    ...                           task="multiclass", n_classes=2)
    >>> round(out.per_sample[0].item(), 4)  # the only neighbour has the other class: -log(1e-7)
    16.1181
    """
    if torch.is_autocast_enabled(candidates.device.type):
        # autocast picks each op's dtype (the readout product in half precision, the embeddings
        # too); the Function's backward would multiply float32 matrices by half ones. Under
        # autocast, TALENT's ops as the eager path runs them.
        distances = divided_by(torch.cdist(queries, candidates, p=2), temperature)
        return modernnca(distances, labels, candidate_labels, _leading_diagonal(distances), n_classes=n_classes,
                         task=task)
    classification = task != "regression"
    same = class_table = targets = None
    if classification:
        class_table, same, counts = _same_class(labels, candidate_labels, n_classes)
    else:
        labels, candidate_labels = labels.to(queries.dtype), candidate_labels.to(queries.dtype)
        targets = candidate_labels
    shared = _leading_slice(queries, candidates)
    per_sample, distances, probabilities = _ModernNCAObjective.apply(
        None if shared else queries, candidates, labels, candidate_labels, class_table, targets, float(temperature),
        classification, shared)
    publish("distances", distances)
    publish("self_mask", _leading_diagonal(distances))
    if classification:
        publish("same_class_mask", same)
        publish("same_class_counts", counts)
    publish("softmax", probabilities)
    included = torch.ones(len(per_sample), dtype=torch.bool, device=per_sample.device)
    return LossOutput(per_sample, "mean", included)


def nca_logspace_objective(queries: torch.Tensor, candidates: torch.Tensor, labels: torch.Tensor,
                           candidate_labels: torch.Tensor, *, task: str = "multiclass", n_classes: int | None = None,
                           temperature: float = 1.0) -> LossOutput:
    """:func:`stablenca.losses.builtin.nca_logspace` from embeddings, publishing what the eager path
    publishes; the candidates' first ``len(queries)`` rows are the queries (``task`` is accepted
    for a signature shared with :func:`modernnca_objective`; this loss is multiclass only).

    >>> q = torch.tensor([[0.0, 0.0], [3.0, 4.0], [0.0, 1.0]])
    >>> out = nca_logspace_objective(q, q, torch.tensor([0, 1, 0]), torch.tensor([0, 1, 0]))
    >>> out.n_excluded  # row 1 has no same-class neighbour
    1
    >>> round(out.per_sample[0].item(), 5)  # log(1 + e^-4): the same class at d = 1, the other class at 5
    0.01815
    """
    if torch.is_autocast_enabled(candidates.device.type):  # as in modernnca_objective
        distances = divided_by(torch.cdist(queries, candidates, p=2), temperature)
        return nca_logspace(distances, labels, candidate_labels, _leading_diagonal(distances))
    class_table, same, counts = _same_class(labels, candidate_labels, n_classes)
    included = counts > 0
    shared = _leading_slice(queries, candidates)
    per_sample, distances = _NCALogspaceObjective.apply(None if shared else queries, candidates, same, included,
                                                        labels, class_table, float(temperature), shared)
    publish("distances", distances)
    publish("same_class_mask", same)
    publish("same_class_counts", counts)
    publish("self_mask", _leading_diagonal(distances))
    return LossOutput(per_sample, "mean", included)


#: The built-in loss functions with a fused kernel (keyed by the function, so a user's loss never matches).
OBJECTIVES = {modernnca: modernnca_objective, nca_logspace: nca_logspace_objective}


def fused_objective(loss_fn, kernel: str):
    """The fused objective that replaces ``loss_fn`` under ``kernel``, or None (it then runs eager)."""
    return OBJECTIVES.get(loss_fn) if kernel == "fused" else None


def _same_class(labels: torch.Tensor, candidate_labels: torch.Tensor, n_classes: int | None):
    """(the (K, C) class table, the published same-class mask, each row's count of it) of queries that
    are the leading candidates.

    The mask is the eager path's ``(labels[:, None] == candidate_labels[None, :]) & ~self``, the same
    bits, as rows of the class table picked by label: a copy per row instead of a comparison per
    pair (10x faster); the self pairs are the diagonal. A row's count is its class's count among the
    candidates less one (itself, a candidate of its own class): no pass over the mask.
    """
    if n_classes is None:
        n_classes = int(max(int(labels.max()), int(candidate_labels.max()))) + 1
    table = make_class_table(candidate_labels, n_classes)
    same = table.index_select(0, labels)
    same.fill_diagonal_(False)
    counts = table.sum(dim=1).index_select(0, labels) - 1
    return table, same, counts


def _leading_slice(queries: torch.Tensor, candidates: torch.Tensor) -> bool:
    """Whether ``queries`` is a slice of ``candidates``' leading rows (the Trainer's embeddings of batch +
    sampled rows): the Function then takes the candidates alone and returns one gradient for both roles."""
    return (queries._base is candidates and queries.data_ptr() == candidates.data_ptr()
            and queries.stride() == candidates.stride())


def _raised_tails(logits: torch.Tensor) -> torch.Tensor:
    """``logits`` (fresh, changed in place) with every entry below its row's largest + :func:`.neighbours.exp_floor`
    raised to that: logsumexp then exponentiates no argument below the floor. A -inf entry (masked)
    becomes finite and adds e^floor instead of 0: C of them add C e^floor to a sum of at least 1 (the
    row's largest term). A row that is all -inf stays so, and a NaN row stays NaN."""
    return torch.maximum(logits, logits.amax(dim=1, keepdim=True) + exp_floor(logits.dtype), out=logits)


def _leading_diagonal(distances: torch.Tensor) -> torch.Tensor:
    """The self pairs of a (queries, candidates) matrix whose candidates start with the queries (shared, read-only)."""
    return leading_self_mask(*distances.shape, distances.device)
