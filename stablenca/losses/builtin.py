"""The five built-in loss formulations (pure functions; :mod:`.registry` names them).

Every formulation takes

* ``distances`` — (B, C) distances from B queries to C candidates, already divided
  by the temperature T (so ``exp(-distances)`` is the kernel);
* ``labels`` — (B,) the queries' class indices (or standardised targets for
  regression);
* ``candidate_labels`` — (C,) the candidates' class indices (or targets);
* ``self_mask`` — (B, C) bool, True where the candidate *is* the query (excluded);

and returns a :class:`LossOutput`: per-sample losses plus how they reduce to the
scalar that is optimised. Intermediates are offered through
:func:`stablenca.publish.publish`, so probes can see them without knowing the loss.

In the student's setting (in-batch neighbours) the candidates are the batch
itself: ``distances = cdist(E, E)``, ``candidate_labels = labels`` and
``self_mask = eye(B)``.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from ..publish import publish
from .base import LossOutput, Task

#: The student's epsilon, as in the story.
RATIO_EPS = 1e-10
#: TALENT adds this to the class probabilities before the log.
MODERNNCA_EPS = 1e-7


def _class_masks(labels, candidate_labels, self_mask):
    same = labels[:, None] == candidate_labels[None, :]
    same_class_mask = same & ~self_mask
    other_class_mask = ~same & ~self_mask
    return same_class_mask, other_class_mask


def _kernel_sums(distances, labels, candidate_labels, self_mask):
    """P = exp(-d); P_same, P_diff as the student summed them (mask multiply; 0/1 floats: faster, same bits, NaN*0)."""
    same_class_mask, other_class_mask = _class_masks(labels, candidate_labels, self_mask)
    publish("distances", distances)
    publish("same_class_mask", same_class_mask)
    publish("self_mask", self_mask)
    exp_out = torch.exp(-distances)
    publish("exp_out", exp_out)
    p_same = (exp_out * same_class_mask.to(exp_out.dtype)).sum(dim=1)
    p_diff = (exp_out * other_class_mask.to(exp_out.dtype)).sum(dim=1)
    publish("p_same", p_same)
    publish("p_diff", p_diff)
    return p_same, p_diff


def class_table(candidate_labels: torch.Tensor, n_classes: int) -> torch.Tensor:
    """``[candidate_labels[j] == k]`` as a (K, C) bool table: the one-hot targets, class-major."""
    classes = torch.arange(n_classes, device=candidate_labels.device)
    return classes[:, None] == candidate_labels[None, :]


def per_class(probabilities: torch.Tensor, table: torch.Tensor) -> torch.Tensor:
    """``probabilities @ one_hot`` (B, K): each row's probability mass per class (TALENT's readout).

    Computed as ``(table @ probabilities^T)^T`` from the class-major (K, C) ``table``: the same
    sums, but MKL runs a (B, C) @ (C, K) product with a handful of columns 2-5x slower than
    this (K, C) @ (C, B) one (bench/talent_alternatives.py, "class sums").

    NOTE[DIFF]: TALENT multiplies ``softmax @ one_hot``; the same terms summed in another order,
    rounding only (bench/talent_lockstep.py: float64 training stays within rounding of TALENT's).
    """
    return (table.to(probabilities.dtype) @ probabilities.mT).mT


def _all_rows(distances):
    return torch.ones(distances.shape[0], dtype=torch.bool, device=distances.device)


def ratio(distances, labels, candidate_labels, self_mask) -> LossOutput:
    """The student's ratio loss, unprotected: ``-mean(log(P_same / P_diff))``.

    ``P = exp(-d)``, ``P_same = Σ_{same class, not self} P``,
    ``P_diff = Σ_{other class} P``.

    Failure domain: unbounded below, because ``P_diff`` excludes the same class, so
    scaling every distance by s > 1 lowers the loss whenever the nearest same-class
    candidate is nearer than the nearest other-class one. Training therefore
    inflates the distance scale until ``exp`` underflows to exactly 0.0 (d > 103.97
    in float32, d > 745.1 in float64): then ``P_same / P_diff`` is 0/0 (NaN),
    0/x (log 0 = -inf) or x/0 (+inf). A row that is the only member of its class
    in the batch has ``P_same = 0`` at every scale, so ``log(0)``.

    >>> d = torch.tensor([[0., 1., 2.], [1., 0., 3.], [2., 3., 0.]])
    >>> y = torch.tensor([0, 0, 1])
    >>> out = ratio(d, y, y, torch.eye(3, dtype=torch.bool))
    >>> out.per_sample[0].item() == -math.log(math.exp(-1) / math.exp(-2))
    True
    >>> bool(torch.isinf(out.per_sample[2]))  # the singleton class: log(0)
    True
    """
    p_same, p_diff = _kernel_sums(distances, labels, candidate_labels, self_mask)
    per_sample = -torch.log(p_same / p_diff)
    return LossOutput(per_sample, "mean", _all_rows(distances))


def ratio_eps(distances, labels, candidate_labels, self_mask, eps: float = RATIO_EPS) -> LossOutput:
    """The student's epsilon patch, exactly: ``-mean(log((P_same + ε) / (P_diff + ε + ε)))``, ε = 1e-10.

    The homework's code adds ε to both sums and then once more in the divisor
    (``P_diff = sum + eps`` followed by ``log(P_same / (P_diff + eps))``); the
    additions are done in that order, so the float32 roundings are the student's too.

    Failure domain: never NaN, but it hides the failure. Once both sums underflow
    the loss is exactly ``-log(ε / 2ε) = log 2`` and the gradient is exactly zero, so
    training silently stops; while one sum is far below 1e-10 the loss saturates near
    ``±log(1e-10 / P)`` and the gradient of that sum is divided by 1e-10 instead of
    by itself (biased). A singleton class contributes ``-log(1e-10 / (P_diff + 2ε))``,
    a constant large term with no useful gradient.

    >>> d = torch.tensor([[0., 200.], [200., 0.]])
    >>> y = torch.tensor([0, 0])
    >>> round(ratio_eps(d, y, y, torch.eye(2, dtype=torch.bool)).loss.item(), 4)  # both sums underflowed: log 2
    0.6931
    >>> d = torch.tensor([[0., 1., 2.], [1., 0., 3.], [2., 3., 0.]])
    >>> y = torch.tensor([0, 0, 1])
    >>> out = ratio_eps(d, y, y, torch.eye(3, dtype=torch.bool))
    >>> abs(out.per_sample[0].item() - math.log(math.exp(-2) / math.exp(-1))) < 1e-6  # ε is invisible at O(1) sums
    True
    """
    p_same, p_diff = _kernel_sums(distances, labels, candidate_labels, self_mask)
    # ε twice in the divisor, as the student's code has it (P_diff + eps, then + eps again).
    per_sample = -torch.log((p_same + eps) / (p_diff + eps + eps))
    return LossOutput(per_sample, "mean", _all_rows(distances))


def difference(distances, labels, candidate_labels, self_mask) -> LossOutput:
    """The student's difference loss: ``P_diff.sum() - P_same.sum()``.

    Bounded (each term lies in [0, C]) and never NaN. Failure domain: the gradient
    of a pair is ``±exp(-d)``, which vanishes for far pairs, so once the
    embeddings spread out (or as soon as d exceeds the exp underflow limit) pairs
    stop contributing: the loss stays finite but learning stalls. It is a sum, so
    its size grows with the batch.

    >>> d = torch.tensor([[0., 1.], [1., 0.]])
    >>> y = torch.tensor([0, 1])
    >>> round(difference(d, y, y, torch.eye(2, dtype=torch.bool)).loss.item(), 6)
    0.735759
    """
    p_same, p_diff = _kernel_sums(distances, labels, candidate_labels, self_mask)
    return LossOutput(p_diff - p_same, "sum", _all_rows(distances))


def nca_logspace(distances, labels, candidate_labels, self_mask) -> LossOutput:
    """NCA in log space: ``-(logsumexp(-d over same class) - logsumexp(-d over all but self))``.

    The per-row value is ``-log p_i`` with ``p_i`` the NCA probability that the
    query's stochastic neighbour has its class. ``logsumexp`` subtracts the row
    maximum before exponentiating, so at least one term is ``exp(0) = 1`` and
    neither sum can underflow: the loss is finite at every distance scale, and it
    is bounded below by 0 (the denominator includes the numerator).

    Rows with no same-class candidate (a singleton class) have ``p_i = 0``: they are
    excluded (``included`` is False for them) and counted, never turned into inf.

    >>> d = torch.tensor([[0., 1., 2.], [1., 0., 3.], [2., 3., 0.]])
    >>> y = torch.tensor([0, 0, 1])
    >>> out = nca_logspace(d * 1000, y, y, torch.eye(3, dtype=torch.bool))
    >>> out.n_excluded, bool(torch.isfinite(out.loss))
    (1, True)
    """
    same_class_mask, _ = _class_masks(labels, candidate_labels, self_mask)
    publish("distances", distances)
    publish("same_class_mask", same_class_mask)
    publish("self_mask", self_mask)
    included = same_class_mask.any(dim=1)
    # Select rows *before* logsumexp: an all -inf row has a NaN gradient, and
    # torch.where would still backpropagate it (0 * NaN).
    logits = -distances[included]
    log_same = torch.logsumexp(logits.masked_fill(~same_class_mask[included], -math.inf), dim=1)
    log_all = torch.logsumexp(logits.masked_fill(self_mask[included], -math.inf), dim=1)
    return LossOutput(log_all - log_same, "mean", included)


def modernnca(distances, labels, candidate_labels, self_mask, n_classes: int | None = None,
              task: Task = "multiclass") -> LossOutput:
    """TALENT's ModernNCA objective.

    ``p = softmax(-d)`` over candidates (self masked with +inf, as TALENT's
    ``fill_diagonal_(inf)``), prediction ``p @ y_candidates``.

    * classification: ``-log(p @ onehot + 1e-7)[label]`` (TALENT's ``log(p + 1e-7)``
      then NLL);
    * regression: ``(p @ y_candidates - y)^2`` (MSE on standardised targets).

    Softmax is max-shifted, so its largest term is 1 and the row sum never
    underflows: finite at every scale. The ``1e-7`` only matters when the correct
    class gets probability < 1e-7; it then caps the loss at ``-log(1e-7) ≈ 16.1``
    (and zeroes that row's gradient), a deliberate bound, not a hidden NaN.

    >>> d = torch.tensor([[0., 1., 2.], [1., 0., 3.], [2., 3., 0.]])
    >>> y = torch.tensor([0, 0, 1])
    >>> out = modernnca(d, y, y, torch.eye(3, dtype=torch.bool), n_classes=2)
    >>> round(out.per_sample[0].item(), 6) == round(-math.log(1 / (1 + math.exp(-1)) + 1e-7), 6)
    True
    """
    publish("distances", distances)
    publish("self_mask", self_mask)
    if task == "multiclass":
        # Computed whether or not anyone listens: a replayed step must run the same ops as the
        # recorded one (the tracer numbers them).
        publish("same_class_mask", (labels[:, None] == candidate_labels[None, :]) & ~self_mask)
    # NOTE[DIFF]: TALENT mutates the distance matrix in place (fill_diagonal_);
    # masked_fill keeps the caller's tensor intact and also handles a self-mask
    # that is not the leading diagonal.
    probabilities = F.softmax(-distances.masked_fill(self_mask, math.inf), dim=-1)
    publish("softmax", probabilities)
    if task == "multiclass":
        if n_classes is None:
            n_classes = int(max(int(labels.max()), int(candidate_labels.max()))) + 1
        class_probabilities = per_class(probabilities, class_table(candidate_labels, n_classes))
        log_probabilities = torch.log(class_probabilities + MODERNNCA_EPS)
        per_sample = -log_probabilities.gather(1, labels[:, None]).squeeze(1)
    else:
        prediction = probabilities @ candidate_labels.to(probabilities.dtype)
        per_sample = (prediction - labels.to(probabilities.dtype)) ** 2
    return LossOutput(per_sample, "mean", _all_rows(distances))
