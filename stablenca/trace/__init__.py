"""Find the first NaN/Inf of a PyTorch computation *and* the silent step that caused it.

A per-op NaN checker run on the student's ratio loss ``-log(P_same / P_diff)`` blames
``aten.div`` (0/0), and ``torch.autograd.detect_anomaly`` blames ``LogBackward0``. The real
origin is earlier and finite: ``exp`` mapped distances above 103.97 (float32) to exactly
0.0. This module runs a computation under a :class:`~torch.utils._python_dispatch.TorchDispatchMode`
that sees every ATen op of the forward *and* the backward pass, and

* records the **first op that makes NaN/Inf out of finite values** (a :class:`Finding`:
  op, phase, backward node, module path, user source line, input/output statistics and
  the NaN/Inf *pattern* such as ``0/0``, ``x/0``, ``log(0)``, ``inf-inf``, ``0*inf``,
  ``overflow``);
* records **precursors** as they happen: finite results that are silently wrong
  (:class:`Precursor`);
* walks back from the first non-finite op, through the ops that carried the offending
  zeros or infinities, to the earliest precursor: the **root-cause chain**.

Root-cause vocabulary (``Finding.root_cause["kind"]``, shared with the rest of stablenca):

``underflow``
    finite non-zero inputs became exact zeros (``exp(-d)`` with ``d > 103.97`` in float32,
    a product of two tiny numbers, a softmax entry far below the row maximum).
``overflow``
    finite inputs became ±inf (``exp(x)`` with ``x > 88.72`` in float32).
``cancellation``
    an add/sub with an inexact operand (exact ones: masks, constants, inputs, integer results
    of exact ops, never count) lost at least half of the significand bits
    (``bits lost = log2(max(|a|, |b|) / |a ± b|)``; 12 of 24 in float32, 26 of 53 in
    float64), or cancelled to exactly 0.0 (``1 - exp(-1e-8) == 0`` in float32).
``empty_set``
    a reduction over nothing: a sum/mean whose rows are exact zeros because every reduced
    element is 0 (a mask that selected nothing, e.g. the only member of its class in a
    batch), a reduction over a size-0 dimension, or a softmax/logsumexp over a row that is
    entirely -inf.
``nonfinite_input``
    the NaN/Inf was already in a tensor that was not produced under the tracer (a leaf
    input or a parameter); the root-cause ``op`` is then ``"input"``.
``domain``
    a function evaluated outside its domain from finite inputs with no precursor
    (``log(negative)``, ``sqrt(negative)``, ``pow(negative, 0.5)``, ``acos(2)``).
``division_by_zero``
    an exact zero reached a pole with no precursor to explain the zero (``x/0``, ``0/0``,
    ``log(0)``, ``1/sqrt(0)``): the zero was an exact input value, or the divisor of a 0/0
    is a ``std``/``var``/norm that is exactly 0 (the root then names that reduction).
``pole``
    finite inputs gave ±inf that the op recomputed in float64 gives too (``lgamma(0)``): the
    exact value is infinite, so it is not an overflow.
``evaluation_order``
    set by :mod:`stablenca.trace.verify`: the first non-finite op's rounding is confirmed as
    the cause, and the exact failing quantity is finite and representable (an intermediate of
    the op's evaluation order left the range).
``unknown``
    none of the above (for instance ``inf - inf`` of two allow-listed infinities).

Overflow from a tiny divisor. On real runs of the ratio loss the forward pass often stays
finite: ``P_diff`` is tiny but not zero (1.36e-24, a sum of ``exp(-d)`` terms most of which
underflowed to 0.0 or are subnormal), and it is ``DivBackward0`` that overflows, computing
``(P_same / P_diff) / P_diff``. An overflowing ``a / b`` (``div``, ``true_divide``,
``reciprocal``; forward or backward, so ``LogBackward0``'s ``grad / x`` too) satisfies
``|b| < |a| / finfo.max``; the tracer blames the *divisor* where, at an overflowing element,
``0 < |b| < 1/sqrt(finfo.max)`` (5.42e-20 in float32, 7.46e-155 in float64): dividing by
``b`` alone multiplies by more than ``sqrt(max)``, so any numerator up to ``sqrt(max)``
overflows. ``pow(a, b)`` blames a base ``0 < |a| < 1`` raised to ``b < 0``. The chain then
continues through the tensor that holds the tiny operand (in backward, the forward tensor
saved for backward, found by identity or else by storage, offset, shape, stride and dtype) to
the ops that produced it, and ends at the exp underflow when there is one::

    div (overflow in 6 of 624 elements, backward DivBackward0: divisor as small as 1.36e-24)
    ← sum (divisor values as small as 1.36e-24: 6 of 624 below 5.42e-20 where the result
    overflowed, forward) ← mul (mask multiply) ← exp underflow (249300 finite inputs → 0.0: …;
    77117 subnormal outputs)

What counts as "near underflow": outputs that are exactly zero from finite inputs or
subnormal (an ``underflow`` precursor), and, followed but *not* a precursor, positive
outputs of ``exp``/``exp2``/``_softmax``/``sigmoid``/``erfc`` below ``1/sqrt(finfo.max)``.
With no underflow upstream the root cause stays ``overflow`` at the division, its detail
naming the divisor and the op it traces back to. Tiny values are followed for 8 ops
downstream of where they appear.

Intentional infinities are not findings: ops on the allow-list (``fill_``,
``fill_diagonal_``, ``masked_fill``, ``full``, ``scalar_tensor``, ``where``,
``index_put_``, ``copy_``, ...) may write ±inf when one of their scalar arguments is ±inf
(TALENT's ``distances.fill_diagonal_(torch.inf)``), and ops that merely carry such an inf
(``neg``, ``exp(-inf) = 0``, a softmax over a row with some -inf entries) are fine. Only a
*new* NaN made out of them, or one reaching the traced result, is reported. Extend the list
with ``allow=("aten.log",)`` (an op name, overload packet or short name) or a predicate
``allow=lambda func, args, kwargs: ...``.

Usage::

    >>> import torch
    >>> from stablenca import losses
    >>> d = torch.tensor([[0., 150., 160.], [150., 0., 170.], [160., 170., 0.]])
    >>> y = torch.tensor([0, 0, 1])
    >>> finding = find_nonfinite(lambda d: losses.ratio(d, y, y, torch.eye(3, dtype=torch.bool)).loss, d)
    >>> finding.op, finding.pattern, finding.phase, finding.root_cause["kind"]
    ('aten.div.Tensor', '0/0', 'forward', 'underflow')
    >>> print(finding.chain_text())
    div (0/0 in 3 of 3 elements, forward) ← sum empty_set (exact 0 in 3 of 3 rows: the mask selected nothing in 1; every selected term was 0.0, underflow upstream in 2) ← mul (mask multiply) ← exp underflow (6 finite inputs → 0.0: x ≤ -150 (float32 exp(x) rounds to 0.0 below -103.97))
    >>> find_nonfinite(lambda d: losses.nca_logspace(d, y, y, torch.eye(3, dtype=torch.bool)).loss, d) is None
    True

The package: :mod:`~stablenca.trace.records` (the records), :mod:`~stablenca.trace.registry`
(op facts per overload packet), :mod:`~stablenca.trace.ops`, :mod:`~stablenca.trace.provenance`
(typed events, exactness), :mod:`~stablenca.trace.detectors` and :mod:`~stablenca.trace.zeros`
(pure detectors returning verdicts), :mod:`~stablenca.trace.patterns` (the pattern of a
NaN/Inf), :mod:`~stablenca.trace.candidates`, :mod:`~stablenca.trace.chain` (chain search),
:mod:`~stablenca.trace.places`, :mod:`~stablenca.trace.tracer`, :mod:`~stablenca.trace.calls`,
and :mod:`~stablenca.trace.replay` / :mod:`~stablenca.trace.verify` (counterfactual replays
that confirm or overturn a cause).

:func:`find_nonfinite` returns the :class:`Finding` or ``None``; :func:`trace_call` returns a
:class:`TraceResult` that also carries the precursors of a clean run (its ``bool()`` is
False when nothing non-finite happened). :class:`Tracer` is the context manager underneath.

Cost: Python dispatch of every ATen op (a do-nothing dispatch mode alone costs about 2× on a
tiny MLP step). Per op the tracer adds one reduction of each floating output (``sum``: a
finite sum proves every element finite; ``aminmax`` for ops that can underflow), nothing
for ops that cannot create NaN/Inf from finite inputs (``neg``, ``relu``, ``where``,
indexing, ...) unless an input is tainted, cheap pre-checks for underflow (``exp``,
``exp2``, ``_softmax``, ``sigmoid``, ``erfc``, plus the smallest positive output when a
-inf mask put zeros there; ``mul``/``div``/``pow`` in forward) and
cancellation (out-of-place ``add``/``sub``/``rsub`` in forward), a short frame walk for the
source line of ops that build an autograd node, and full statistics only for flagged ops.
In-place variants are checked for NaN/Inf but not for precursors (their inputs are gone).
A NaN/Inf is a *candidate* until its values go on (an op consumes it and its output is
non-finite, ``.item()`` reads it, or it is the traced result): PyTorch's own
``ratio = grad / dist; ratio.masked_fill_(dist == 0, 0)`` in the backward of ``cdist`` is not
reported (see :attr:`Tracer.discarded`). Measured overheads are in ``docs/trace.md``.
"""

from .records import (PRECURSOR_KINDS, ROOT_CAUSE_KINDS, ChainLink, Finding, Precursor, TraceResult,
                      tensor_stats)
from .calls import find_nonfinite, trace_call
from .tracer import DEFAULT_ALLOW, Tracer

__all__ = [
    "ROOT_CAUSE_KINDS",
    "PRECURSOR_KINDS",
    "DEFAULT_ALLOW",
    "ChainLink",
    "Finding",
    "Precursor",
    "TraceResult",
    "Tracer",
    "find_nonfinite",
    "trace_call",
    "tensor_stats",
]
