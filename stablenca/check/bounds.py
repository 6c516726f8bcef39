"""What the error analysis says the check must measure: the contract's derived numbers.

The shipped contract (``stablenca/contracts/default.json``) states, for each accurate
formulation, the most bits of error the sweep may show (``max_loss_bits``,
``max_grad_bits``), and for ModernNCA the scale at which its gradient breaks. Both are
derived here from the formulation's algebra and the dtype's unit roundoff, on the very
batches the sweep draws (they depend on the seed only: the distances are exact in every
dtype, so every machine sees the same batches), never from a measurement.

Conventions (those of :class:`stablenca.cases._base.Budget`): ``u = 2**-p``; each
``+ - * /`` rounds with relative error ``<= u``; ``exp``/``log`` are within 1 ulp
(relative ``2u``; a subnormal result within ``eta``, the smallest subnormal); a sum of
``n`` terms is taken sequentially (``(n-1) u`` on the sum of magnitudes, Higham 2nd ed.
sec. 4.2); first order in ``u``. The check measures the loss in ulps of the loss itself
(no floor) and the gradient normwise in ulps of ``max|r|``; a dtype number ``v`` has
``spacing(v) > u |v|`` and ``spacing(v) >= eta``, so an absolute error ``E`` is at most
``E / max(u |v|, eta)`` ulps (+1 ulp for rounding the reference, and the ordered count's
endpoint). The condition numbers (``|m| / L``, ``sum |terms| / |L|``,
``u / max|r|``) are those of each batch, computed from the exact reference: a bound over
every batch the generator could draw would be infinite (a batch whose every row is
saturated has a loss and a gradient as small as ``exp(-0.25 s)``).
"""

from __future__ import annotations

import math

import numpy as np

from .. import floats
from .. import reference as ref
from ..cases._base import bits_for_ulps
from .batches import POPULATIONS, Batch, random_batch, scale_grid
from .measure import threshold_bits


def lse_error_ulps(n: int) -> float:
    """Absolute error of a max-shifted logsumexp over ``n`` terms, in units of ``u``, without
    the final rounding of ``m + log S`` (``u |lse|``, added by the caller).

    The shifted arguments round (``u |x_j - m|``, and ``exp(x_j - m) |x_j - m| <= 1/e``), each exp
    adds ``2u``, the sum ``(n-1) u``: ``S >= 1`` is off by ``(n+1) u + (n-1) u / e`` relative;
    ``log S`` adds ``2u log S <= 2u log n``, and ``log n`` more covers ``m + log S``'s rounding
    at ``|m|`` plus ``log n``. So ``(n+1) + (n-1)/e + 3 log n``.

    >>> round(lse_error_ulps(15), 2)
    29.27
    """
    return (n + 1) + (n - 1) / math.e + 3 * math.log(max(n, 1))


def _unit(dtype) -> tuple[float, float]:
    facts = floats.facts(dtype)
    return 2.0 ** -facts.significand_bits, facts.smallest_subnormal


def _kernel(batch: Batch) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """float64 distances, the same-class mask and the off-self mask (accurate enough to evaluate a bound)."""
    d = batch.distances.double().numpy()
    labels = batch.labels.numpy()
    off = ~np.eye(len(labels), dtype=bool)
    same = (labels[:, None] == labels[None, :]) & off
    return d, same, off


def _lse(x: np.ndarray, mask: np.ndarray) -> tuple[float, float]:
    """(max, logsumexp) of ``x`` over ``mask``."""
    m = float(np.max(x[mask]))
    return m, m + math.log(float(np.sum(np.exp(x[mask] - m))))


def nca_logspace_error(batch: Batch, dtype) -> tuple[float, float]:
    """(loss, gradient) absolute error bounds of ``nca_logspace`` on ``batch`` (rows with a same-class candidate).

    Per row: two logsumexps, each off by ``e = (lse_error_ulps(n) + |lse|) u`` (``n`` finite
    terms; masked terms are exact zeros), their difference ``u L_i``; the mean of ``R``
    non-negative terms ``(R+1) u L`` (sequential sum and the division). Loss:
    ``mean_i(e_all + e_same) + (R+2) u L``.

    Gradient ``(p_all - p_same) / R`` (LogsumexpBackward: ``g exp(x - lse)``): each ``p`` is off
    by ``p (e + 4u) + u/e`` (``x - lse`` carries ``e`` and rounds, ``u p |x - lse| <= u/e``; exp
    ``2u``; ``g = 1/R`` and the product ``2u``); the two branches add (``u |r|``).
    """
    u, _ = _unit(dtype)
    d, same, off = _kernel(batch)
    rows = [i for i in range(len(d)) if same[i].any()]
    R = len(rows)
    if R == 0:  # every row a singleton: the loss is an empty mean, nothing is computed
        return 0.0, 0.0
    losses, row_errors, grad_error = [], [], 0.0
    for i in rows:
        x = -d[i]
        entry = np.zeros(len(x))
        parts = []
        for mask in (off[i], same[i]):
            _, lse = _lse(x, mask)
            e = (lse_error_ulps(int(mask.sum())) + abs(lse)) * u
            p = np.where(mask, np.exp(np.where(mask, x - lse, 0.0)), 0.0)
            entry += np.where(mask, p * (e + 4 * u) + u / math.e, 0.0)
            parts.append((lse, e, p))
        (lse_all, e_all, p_all), (lse_same, e_same, p_same) = parts
        losses.append(lse_all - lse_same)
        row_errors.append(e_all + e_same)
        grad_error = max(grad_error, float(np.max(entry / R + u * np.abs(p_all - p_same) / R)))
    loss = float(np.mean(losses))
    return float(np.mean(row_errors)) + (R + 2) * u * loss, grad_error


def modernnca_error(batch: Batch, dtype) -> float:
    """Absolute error bound of the ``modernnca`` loss on ``batch`` (classification, ``1e-7`` added).

    Softmax over the ``n`` candidates (self masked to an exact 0): ``exp(x_j - m)`` is off by
    ``u |x_j - m| + 2u``, the sum ``S`` by ``delta_S = sum_j p_j u |x_j - m| + (n+1) u`` relative,
    ``1/S`` and the product ``2u`` (ATen multiplies by the reciprocal). The class sum ``q`` (a
    matmul with a one-hot: exact products, ``n`` terms) is off by
    ``sum_(j in class) p_j (u |x_j - m| + 4u) + q delta_S + (n-1) u q``; ``q + 1e-7`` rounds
    (``u (q + 1e-7)``); ``log`` turns that into ``delta / (q + 1e-7)`` and adds ``2u |L_i|``.
    The mean of ``R`` terms of either sign: ``(R-1) u mean|L_i| + u |L|``.
    """
    from ..losses.builtin import MODERNNCA_EPS

    u, _ = _unit(dtype)
    d, same, off = _kernel(batch)
    R = len(d)
    n = int(off[0].sum())
    row_losses, row_errors = [], []
    for i in range(R):
        x = -d[i]
        m = float(np.max(x[off[i]]))
        e = np.where(off[i], np.exp(np.where(off[i], x - m, 0.0)), 0.0)
        p = e / e.sum()
        shift = u * np.abs(x - m)
        delta_s = float(np.sum(p * shift)) + (n + 1) * u
        q = float(p[same[i]].sum())
        delta_q = float(np.sum((p * (shift + 4 * u))[same[i]])) + q * delta_s + (n - 1) * u * q
        loss_i = -math.log(q + MODERNNCA_EPS)
        row_losses.append(loss_i)
        row_errors.append((delta_q + u * (q + MODERNNCA_EPS)) / (q + MODERNNCA_EPS) + 2 * u * abs(loss_i))
    mean_abs = float(np.mean(np.abs(row_losses)))
    return float(np.mean(row_errors)) + (R - 1) * u * mean_abs + u * abs(float(np.mean(row_losses)))


def modernnca_gradient_error(batch: Batch, dtype) -> float:
    """Bound on the largest absolute error of an entry of ``modernnca``'s gradient on ``batch``.

    NLL and ``mean`` give ``g_k = -[k in class] / ((q + 1e-7) R)`` (two roundings, and the forward's
    ``q`` off by ``delta_q`` relative: ``[k in class] |r| delta_q``); SoftmaxBackward forms
    ``p_j (g_j - sum_k p_k g_k)``: the dot product is off by ``(max delta_p + (n+1) u) q / ((q + 1e-7) R)``,
    the difference rounds (``u |g_j - dot|``), and the product adds ``|r| (delta_p_j + u)``, with
    ``delta_p_j = u |x_j - m| + (n+5) u`` the softmax's relative error (as in :func:`modernnca_error`).
    No cancellation is assumed away: for a saturated row ``g_j - dot`` is ``-(1 - q) / (q + 1e-7) R``,
    tiny, while the bound keeps the dot product's absolute error.
    """
    from ..losses.builtin import MODERNNCA_EPS

    u, _ = _unit(dtype)
    d, same, off = _kernel(batch)
    R = len(d)
    n = int(off[0].sum())
    worst = 0.0
    for i in range(R):
        x = -d[i]
        m = float(np.max(x[off[i]]))
        e = np.where(off[i], np.exp(np.where(off[i], x - m, 0.0)), 0.0)
        p = e / e.sum()
        delta_p = np.where(off[i], u * np.abs(x - m) + (n + 5) * u, 0.0)
        q = float(p[same[i]].sum())
        delta_q = float(np.sum((p * (u * np.abs(x - m) + 4 * u))[same[i]])) / max(q, 1e-300) \
            + float(np.sum(p * u * np.abs(x - m))) + (2 * n + 1) * u
        qe = q + MODERNNCA_EPS
        g = np.where(same[i], -1.0 / (qe * R), 0.0)
        dot = -q / (qe * R)
        r = p * (g - dot)
        dot_error = (float(delta_p.max()) + (n + 1) * u) * q / (qe * R)
        error = p * (np.where(same[i], 2 * u / (qe * R), 0.0) + dot_error + u * np.abs(g - dot)) \
            + np.abs(r) * (delta_p + u + np.where(same[i], delta_q * q / qe, 0.0))
        worst = max(worst, float(np.max(np.where(off[i], error, 0.0))))
    return worst


def difference_error(batch: Batch, dtype) -> tuple[float, float]:
    """(loss, gradient) absolute error bounds of ``difference`` on ``batch``.

    ``exp(-d_ij)`` (``-d`` exact) is off by ``2u e_ij``, or by ``eta`` where ``e_ij`` is below the
    normal range; mask products are exact; each row sums ``rows`` terms (``(rows-1) u`` on the sum
    of magnitudes), ``P_diff - P_same`` rounds (``u |D_i|``), the sum over rows ``(rows-1) u``:
    ``sum_ij (2u e_ij + eta [e_ij < tiny]) + (rows-1) u sum_ij e_ij + rows u sum_i |D_i|``.
    The gradient is ``-/+ e_ij`` itself (ExpBackward multiplies by the stored result and by an
    exact ``+-1``): ``max_ij (2u e_ij + eta [e_ij < tiny])``.
    """
    u, eta = _unit(dtype)
    tiny = floats.facts(dtype).tiny
    d, same, off = _kernel(batch)
    rows = len(d)
    e = np.where(off, np.exp(-d), 0.0)
    per_entry = 2 * u * e + np.where(off & (e < tiny), eta, 0.0)
    row_diff = np.abs((e * (off & ~same)).sum(axis=1) - (e * same).sum(axis=1))
    loss = float(per_entry.sum()) + (rows - 1) * u * float(e.sum()) + rows * u * float(row_diff.sum())
    return loss, float(per_entry.max())


def _ulps(error: float, exact: float, dtype) -> float:
    """An absolute error in ulps of ``exact`` (see the module docstring), plus 1 for the reference's rounding."""
    u, eta = _unit(dtype)
    return error / max(u * abs(exact), eta) + 1.0


def batch_bits(name: str, batch: Batch, dtype, exact: ref.RefResult) -> tuple[float, float | None]:
    """(loss bits, gradient bits) that ``name`` may show on ``batch`` at most, in the check's measure."""
    loss_exact = float(exact.loss)
    grad_exact = float(np.max(np.abs(exact.grad)))
    if name == "nca_logspace":
        loss_error, grad_error = nca_logspace_error(batch, dtype)
    elif name == "difference":
        loss_error, grad_error = difference_error(batch, dtype)
    elif name == "modernnca":
        loss_error, grad_error = modernnca_error(batch, dtype), None
    else:
        raise ValueError(f"no derived bound for {name!r}")
    grad_bits = None if grad_error is None else bits_for_ulps(_ulps(grad_error, grad_exact, dtype) - 0.5)
    return bits_for_ulps(_ulps(loss_error, loss_exact, dtype)), grad_bits


def sweep_batches(sweep: dict, population: str = "paired"):
    """The sweep's batches, drawn exactly as :func:`stablenca.check.run_check` draws them."""
    grid = scale_grid(sweep["scale_min"], sweep["scale_max"], sweep["points_per_decade"])
    for scale_index, scale in enumerate(grid):
        for b in range(sweep["batches"]):
            rng = np.random.default_rng([sweep["seed"], scale_index, POPULATIONS.index(population), b])
            yield random_batch(rng, scale, population)


def derived_bits(name: str, dtype, sweep: dict) -> tuple[float, float | None]:
    """The most bits of error (loss, gradient) the analysis allows ``name`` over the paired batches of ``sweep``.

    Rounded up to 0.01 bit: the contract's ``max_loss_bits`` / ``max_grad_bits``.
    """
    from .. import losses

    reference = ref.reference_for(losses.resolve(name, "multiclass"))
    worst_loss, worst_grad = 0.0, None
    for batch in sweep_batches(sweep):
        exact = ref.compute_reference(reference, batch.distances, batch.labels, batch.labels, batch.self_mask)
        loss_bits, grad_bits = batch_bits(name, batch, dtype, exact)
        worst_loss = max(worst_loss, loss_bits)
        if grad_bits is not None:
            worst_grad = max(worst_grad or 0.0, grad_bits)
    up = lambda v: None if v is None else math.ceil(v * 100) / 100  # noqa: E731
    return up(worst_loss), up(worst_grad)


# --------------------------------------------------------------------------- ModernNCA's gradient breakdown


def _row_gaps(batch: Batch) -> np.ndarray:
    """Per row: nearest other-class distance minus nearest same-class distance (exact: 8-bit distances)."""
    d, same, off = _kernel(batch)
    other = off & ~same
    return np.array([d[i][other[i]].min() - d[i][same[i]].min() for i in range(len(d))])


def modernnca_gradient_breaks(batch: Batch, dtype, slack: float = 1.0) -> bool:
    """Whether theory says ModernNCA's gradient has more than half its bits wrong on ``batch``.

    Row ``i`` with gap ``g`` (nearest other minus nearest same class): SoftmaxBackward forms
    ``p_k (-1 + q) / (q + 1e-7)`` for the class members, with ``q = 1 - exp(-g)`` to first order.
    ``q`` is a rounded sum near 1, so ``-1 + q`` is a multiple of ``u``-sized steps: the entry
    ``~ exp(-g) / R`` comes out ``0`` (an error of ``exp(-g) / R``) or a multiple of the spacing
    of numbers near 1 (``u`` below 1, ``2u`` above; an error of about ``u / R``): about
    ``min(slack u, exp(-g)) / R``, with ``slack`` = 1/2 and 2 bracketing the rounding. The row's largest exact entry is
    ``exp(-g) / R`` for ``g > 0`` and ``min(1, exp(g + ln 1e7)) / R`` for ``g <= 0`` (a row whose
    class is farther is capped by the ``1e-7``: ``q / (q + 1e-7)``). The normwise error exceeds
    the threshold ``t`` bits once ``max error > (2**t - 1) u max entry``, i.e. once every row is
    either saturated (``g`` beyond about ``t ln 2``) or capped beyond ``ln 1e7 = 16.12``.
    """
    from ..losses.builtin import MODERNNCA_EPS

    u, _ = _unit(dtype)
    gaps = _row_gaps(batch)
    error = max([min(slack * u, math.exp(-g)) for g in gaps if g > 0] or [0.0])
    largest = max(math.exp(-g) if g > 0 else min(1.0, math.exp(g - math.log(MODERNNCA_EPS))) for g in gaps)
    return error > (2.0 ** threshold_bits(dtype) - 1) * u * largest


def modernnca_breakdown(dtype, sweep: dict, slack: float = 1.0) -> float | None:
    """The first scale of ``sweep`` at which theory says a paired batch breaks ModernNCA's gradient (None: none)."""
    for batch in sweep_batches(sweep):
        if modernnca_gradient_breaks(batch, dtype, slack):
            return batch.scale
    return None
