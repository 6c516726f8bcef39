"""Error budgets of the stable formulations, derived (not measured), for the property tests.

Conventions as in :class:`stablenca.cases._base.Budget`: ``u`` the unit roundoff, each
``+ - * /`` within ``u``, ``exp``/``log`` within 1 ulp (``2u``), sums of ``n`` terms taken
sequentially (``gamma_(n-1)``, Higham 2nd ed. sec. 3.1 and 4.2), first order in ``u``.
The measure is the one of :func:`stablenca.testing.pytest_plugin.assert_stable`: the loss in ulps
of ``M = max(|L|, 1, s)``, the gradient normwise in ulps of ``G = max(max|r|, max(1, s) / B)``
for a batch of ``B`` rows at scale ``s``, with ``spacing(M) > u M``. The generator
(:func:`stablenca.testing.strategies.batches`) puts every distance in ``[0, 3 s]`` (FAR = 3, and
8-bit input rounding: ``3.01 s``), the nearest same-class one in ``[s, 1.25 s]``, and
has at most 3 classes, so ``B - 2 <= R`` included rows.

One logsumexp over ``n`` terms ``x_j = -d_j`` (``|x_j - max| <= D = 3.01 s``): the shifted
arguments round (``u |x_j - m|``, and ``exp(x_j - m) |x_j - m| <= 1/e``), exp adds ``2u``, the
sum ``gamma_(n-1)``: ``S >= 1`` is off by ``(n+1) u + (n-1) u / e`` relative; ``log S`` adds
``2u log n`` and ``m + log S`` rounds by ``u (D + log n)``. So

    E_lse <= ((n+1) + (n-1)/e + 3 log n) u + D u.
"""

import math

# One copy of each: the contract's derived bounds (stablenca/check/bounds.py) use the same.
from stablenca.cases._base import bits_for_ulps as bits
from stablenca.check.bounds import lse_error_ulps as _lse_ulps

#: Largest distance of a generated batch in units of its scale (FAR = 3, 8-bit rounding up).
D_OVER_S = 3.01


def nca_logspace_bits(rows: int) -> tuple[float, float]:
    """(loss bits, gradient bits) of ``nca_logspace`` on a batch of ``rows`` rows.

    Loss ``mean_i(lse_all_i - lse_same_i)``: two logsumexps over ``n = rows - 1`` terms
    (``2 E_lse``), the difference ``u L_i`` with ``L_i <= 0.25 s + log n`` (nearest same-class
    within ``1.25 s``, nearest overall ``>= s``), the mean over ``R <= rows`` rows
    ``(R+1) u L``; over ``u M`` with ``M >= max(1, s, L)``:
    ``2 lse + 2 D/s + (0.25 + log n) + (rows + 1)``, + 1/2 ulp for rounding the reference.

    Gradient ``(p_same - p_all) / R`` from LogsumexpBackward ``g exp(x - lse)``: each ``p`` is off
    by ``p (E_lse + 2u) + u p |x - lse|`` with ``p |log p| <= 1/e``, the difference and ``1/R``
    by ``2u``; twice (both logsumexps), over ``u G`` with ``G >= max(1, s)/B`` and
    ``B/R <= rows/(rows-2)``: ``(rows/(rows-2)) * 2 (lse + D/s + 2 + 1/e + 2)``.
    """
    n = rows - 1
    loss = 2 * _lse_ulps(n) + 2 * D_OVER_S + (0.25 + math.log(n)) + (rows + 1) + 0.5
    grad = rows / (rows - 2) * 2 * (_lse_ulps(n) + D_OVER_S + 4 + 1 / math.e)
    return bits(loss), bits(grad)


def modernnca_bits(rows: int) -> tuple[float, float]:
    """(loss bits, gradient bits) of TALENT's ``modernnca`` loss on a batch of ``rows`` rows.

    Loss ``mean_i -log(q_i + 1e-7)``, ``q_i = sum_(j in class) p_ij``, ``p = softmax(-d)`` over
    ``n = rows - 1`` candidates: ``p_j`` is off by ``(2 + (n+1) + (n-1)/e + 2) u + u |x_j - m|``
    relative (exp, the sum, the division), the class sum (a matmul with a one-hot) adds
    ``gamma_(n-1)``: ``q`` is off by ``((2n+4) + (n-1)/e + D/s·s) u q``; ``+ 1e-7`` rounds (``u``),
    ``log`` adds ``2u |L_i|`` with ``L_i <= -log(1e-7) = 16.12``, and the mean ``(R+1) u L``. Over
    ``u M`` (``M >= max(1, s, L)``): ``(2n+4) + (n-1)/e + D/s + 1 + 2·16.12 + (rows+1)``, + 1/2 ulp.

    Gradient: NLL, matmul and SoftmaxBackward give ``-(p_j / (q + 1e-7)) ([j in class] - q) / R``,
    at most ``1/R``. Its absolute error is at most ``(δq + the relative errors of p_j and of
    1/(q + 1e-7), about (n+5) u each) / R``; over ``u G``, ``G >= max(1, s)/B``:
    ``(rows/(rows-2)) ((2n+4) + (n-1)/e + D/s + 2 (n+5) + 4)``.
    """
    n = rows - 1
    q_rel = (2 * n + 4) + (n - 1) / math.e + D_OVER_S
    loss = q_rel + 1 + 2 * 16.12 + (rows + 1) + 0.5
    grad = rows / (rows - 2) * (q_rel + 2 * (n + 5) + 4)
    return bits(loss), bits(grad)


BOUNDS = {"nca_logspace": nca_logspace_bits, "modernnca": modernnca_bits}
