"""The built-in losses in mpmath: exact enough to judge float16 through float64.

Written so that mpmath's fixed precision never cancels: 1/P_same - 1/P_all is
computed as P_diff / (P_same P_all), log P_all - log P_same as log1p(P_diff / P_same),
sums with mp.fsum (exact before rounding). Otherwise 50 digits would be as blind
as float64 once P_diff / P_same < 1e-50 (a gap of 115 in distance).

mpmath's exponent range is unbounded, so ``exp(-1e4)`` is a tiny positive number, never
0.0: these references stay valid exactly where the float types break. The gradients
with respect to the distances are analytic (checked against float64 autograd and
mpmath finite differences in ``tests/test_reference.py``).
"""

from __future__ import annotations

import functools
from typing import Any

import mpmath
import torch
from mpmath import mp

from .base import MpResult
from .builtin import MODERNNCA_EPS, RATIO_EPS


@functools.lru_cache(maxsize=16384)
def _exp_neg(x, prec: int):
    """exp(-x) at ``prec`` bits, memoised (a distance matrix is symmetric)."""
    with mp.workprec(prec):
        return mp.exp(-x)


class MpRows(list):
    """The distance matrix as a list of rows of mpf, with a cache of per-row kernel sums
    (what :func:`to_mp_inputs` returns): the five references share one exp per entry."""

    def __init__(self, rows):
        super().__init__(rows)
        self.sums: dict = {}


def _row(d, i, labels, candidate_labels, self_mask):
    """(kernel exp(-d) of row i, same-class indices, other-class indices, P_same, P_diff)."""
    same = tuple(j for j, c in enumerate(candidate_labels) if not self_mask[i][j] and c == labels[i])
    other = tuple(j for j, c in enumerate(candidate_labels) if not self_mask[i][j] and c != labels[i])
    prec = mp.prec
    cache = getattr(d, "sums", None)
    key = (i, prec, same, other)
    if cache is not None and key in cache:
        return cache[key]
    kernel = [_exp_neg(x, prec) for x in d[i]]
    result = kernel, same, other, mp.fsum(kernel[j] for j in same), mp.fsum(kernel[j] for j in other)
    if cache is not None:
        cache[key] = result
    return result


def _zeros(rows, cols):
    return [[mp.zero] * cols for _ in range(rows)]


def _freeze(grad):
    return tuple(tuple(row) for row in grad)


def _scatter(grad_row, kernel, same, to_same, other, to_other) -> None:
    """A row's gradient: d loss / d d_ij = exp(-d_ij) times the row's factor for j's class."""
    for j in same:
        grad_row[j] = kernel[j] * to_same
    for j in other:
        grad_row[j] = kernel[j] * to_other


def _nan_grad(rows, cols):
    return tuple(tuple(mp.nan for _ in range(cols)) for _ in range(rows))


def _mp_ratio_family(d, labels, candidate_labels, self_mask, eps):
    """``mean_i -log((P_same + eps) / (P_diff + 2 eps))`` and its gradient (eps=0: the ratio).

    The divisor carries eps twice, as the student's patch (and ``ratio_eps``) has it.
    """
    rows, cols = len(d), len(d[0])
    grad = _zeros(rows, cols)
    terms = []
    for i in range(rows):
        kernel, same, other, raw_same, raw_diff = _row(d, i, labels, candidate_labels, self_mask)
        p_same, p_diff = raw_same + eps, raw_diff + 2 * eps
        if p_same == 0 or p_diff == 0:
            # log 0: +inf (no same-class candidate), -inf, or nan (0/0); the mathematical value.
            terms.append(mp.nan if p_same == p_diff else (mp.inf if p_same == 0 else mp.ninf))
            continue
        # log((P_diff + 2 eps) / (P_same + eps)) = log1p((P_diff - P_same + eps) / (P_same + eps)):
        # the difference of the raw sums, never of the sums plus eps (that would cancel).
        terms.append(mp.log1p((raw_diff - raw_same + eps) / p_same) if eps else mp.log(p_diff / p_same))
        _scatter(grad[i], kernel, same, 1 / (p_same * rows), other, -1 / (p_diff * rows))
    if any(not mpmath.isfinite(t) for t in terms):
        return MpResult(sum(terms, mp.zero) / rows, _nan_grad(rows, cols))
    return MpResult(mp.fsum(terms) / rows, _freeze(grad))


def mp_ratio(d, labels, candidate_labels, self_mask):
    """The mathematical ratio loss: finite whenever both sets are non-empty."""
    return _mp_ratio_family(d, labels, candidate_labels, self_mask, mp.zero)


def mp_ratio_eps(d, labels, candidate_labels, self_mask):
    """ratio_eps's own formula, the student's (1e-10 on both sums and once more in the divisor; the float64 value of the constant)."""
    return _mp_ratio_family(d, labels, candidate_labels, self_mask, mp.mpf(RATIO_EPS))


def mp_difference(d, labels, candidate_labels, self_mask):
    """``sum_i (P_diff_i - P_same_i)``; d/dd_ij is +exp(-d_ij) (same class) or -exp(-d_ij)."""
    rows, cols = len(d), len(d[0])
    grad = _zeros(rows, cols)
    terms = []
    for i in range(rows):
        kernel, same, other, _, _ = _row(d, i, labels, candidate_labels, self_mask)
        for j in same:
            terms.append(-kernel[j])
            grad[i][j] = kernel[j]
        for j in other:
            terms.append(kernel[j])
            grad[i][j] = -kernel[j]
    return MpResult(mp.fsum(terms), _freeze(grad))


def mp_nca_logspace(d, labels, candidate_labels, self_mask):
    """``mean over rows with a same-class candidate of log(P_all / P_same)``."""
    rows, cols = len(d), len(d[0])
    grad = _zeros(rows, cols)
    parts = [_row(d, i, labels, candidate_labels, self_mask) for i in range(rows)]
    included = [i for i in range(rows) if parts[i][1]]
    if not included:
        return MpResult(mp.zero, _freeze(grad))
    n = len(included)
    terms = []
    for i in included:
        kernel, same, other, p_same, p_diff = parts[i]
        p_all = p_same + p_diff
        terms.append(mp.log1p(p_diff / p_same))
        to_same = p_diff / (p_same * p_all * n)  # (1/P_same - 1/P_all) / n without cancellation
        _scatter(grad[i], kernel, same, to_same, other, -1 / (p_all * n))
    return MpResult(mp.fsum(terms) / n, _freeze(grad))


def mp_modernnca(d, labels, candidate_labels, self_mask):
    """TALENT's classification objective: ``mean_i -log(q_i + 1e-7)``, q = softmax mass on the label.

    With ``p_ij = exp(-d_ij) / Z_i`` (self excluded): ``dq/dd_ij = p_ij (q - [j same])``,
    and ``1 - q = P_diff / Z`` exactly.
    """
    eps = mp.mpf(MODERNNCA_EPS)
    rows, cols = len(d), len(d[0])
    grad = _zeros(rows, cols)
    terms = []
    for i in range(rows):
        kernel, same, other, p_same, p_diff = _row(d, i, labels, candidate_labels, self_mask)
        z = p_same + p_diff
        q = p_same / z
        terms.append(-mp.log(q + eps))
        _scatter(grad[i], kernel, same, p_diff / (z * z * (q + eps) * rows), other, -q / (z * (q + eps) * rows))
    return MpResult(mp.fsum(terms) / rows, _freeze(grad))


def to_mp_inputs(distances, labels, candidate_labels, self_mask):
    """Torch inputs → Python lists; distances become exact mpf (every float is exact in mpmath)."""
    d = distances.detach().to(torch.float64).tolist()
    exact: dict[float, Any] = {}
    for row in d:
        for x in row:
            if x not in exact:
                exact[x] = mp.mpf(x)
    return (MpRows([exact[x] for x in row] for row in d), [int(v) for v in labels.tolist()],
            [int(v) for v in candidate_labels.tolist()], [[bool(v) for v in row] for row in self_mask.tolist()])
