"""stablenca's pytest plugin: assert that a loss is numerically stable, with hypothesis.

Registered through the ``pytest11`` entry point, so it is active in every pytest
run once stablenca is installed; importing it costs nothing (torch, hypothesis and
mpmath are imported on first use). It provides the fixture ``stablenca_check``,
which is :func:`assert_stable`::

    def test_my_loss_is_stable(stablenca_check):
        stablenca_check("mypkg.losses:my_loss", dtype="float32", max_bits=8)

    def test_builtin(stablenca_check):
        stablenca_check("nca_logspace", dtype="float32")          # passes
        stablenca_check("ratio", dtype="float32")                 # fails: exp underflow

On failure hypothesis shrinks the batch and the assertion message shows the
counterexample: the scale, the labels, the nearest same/other-class distances of
every row, and the computed loss and gradient against the reference.
"""

from __future__ import annotations

import pytest

#: The default error measures (see :func:`assert_stable`).
LOSS_FLOOR = "scale"
GRAD_FLOOR = "scale"


def _formulation(loss):
    # Imports inside the functions: the plugin loads in every pytest run and must stay free of
    # torch, hypothesis and mpmath until a test uses it (tests/test_pytest_plugin.py checks this).
    from .. import losses
    from ..losses.user import as_loss_output

    if isinstance(loss, str):
        return losses.resolve(loss, "multiclass")
    if isinstance(loss, losses.Formulation):
        return loss
    if callable(loss):
        name = getattr(loss, "__qualname__", getattr(loss, "__name__", "loss"))

        def wrapped(distances, labels, candidate_labels, self_mask):
            return as_loss_output(loss(distances, labels, candidate_labels, self_mask), distances, name)

        return losses.Formulation(name, wrapped, ("multiclass",), False, name,
                                  reference=getattr(loss, "reference", None))
    raise TypeError(f"assert_stable: loss must be a name, 'package.module:function', a Formulation or a callable, "
                    f"not {type(loss).__name__}")


def _reference(formulation, reference):
    from .. import reference as ref  # lazy, as in _formulation

    if reference is None:
        return ref.reference_for(formulation)
    if isinstance(reference, ref.Reference):
        return reference
    if isinstance(reference, str):
        return ref.get_reference(reference)
    if callable(reference):
        return ref.Reference(formulation.name, None, reference, label="float64 (given reference)")
    raise TypeError(f"assert_stable: reference must be None, a registered name, a Reference or a callable, "
                    f"not {type(reference).__name__}")


def _check_floor(value, kind: str) -> None:
    if value in ("scale", "rows") or (isinstance(value, (int, float)) and not isinstance(value, bool) and value >= 0):
        return
    raise ValueError(f"assert_stable: {kind} must be 'scale', 'rows' or a number >= 0, not {value!r}")


def _floor(value, batch, kind: str) -> float:
    """The magnitude below which errors count as absolute (see :func:`assert_stable`)."""
    _check_floor(value, kind)
    per_row = 1.0 / batch.rows if kind == "grad_floor" else 1.0
    if value == "scale":
        return max(1.0, batch.scale) * per_row
    if value == "rows":
        return per_row
    return float(value)


def _grad_summary(grad, reference, limit: int = 4) -> str:
    import numpy as np  # lazy, as in _formulation

    error = np.abs(grad - reference)
    worst = np.argsort(error, axis=None)[::-1][:limit]
    parts = []
    for flat in worst:
        i, j = np.unravel_index(flat, grad.shape)
        parts.append(f"d[{i},{j}]: computed {grad[i, j]:.6g}, reference {reference[i, j]:.6g}")
    return "; ".join(parts)


def assert_stable(loss, *, dtype="float32", max_bits: float | None = None, max_grad_bits: float | None = None,
                  strategy=None, reference=None, max_examples: int | None = None,
                  loss_floor: float | str = LOSS_FLOOR, grad_floor: float | str = GRAD_FLOOR,
                  check_gradient: bool = True) -> dict:
    """Assert that ``loss`` is finite and within ``max_bits`` of its reference over a strategy.

    * ``loss``: a built-in name, ``"package.module:function"``, a
      :class:`stablenca.losses.Formulation`, or a callable with the loss signature
      ``(distances, labels, candidate_labels, self_mask)``.
    * ``dtype``: evaluated dtype (the distances are cast to it; they are exact in it).
    * ``max_bits``: the largest bits of error of the loss allowed (default: half the
      significand bits, 12 for float32, the breakdown threshold of ``stablenca
      check``); ``max_grad_bits`` the same for the gradient (default ``max_bits``).
    * ``strategy``: a hypothesis strategy of :class:`stablenca.check.Batch`
      (default ``stablenca.testing.strategies.batches(regime="all")``: scales 1e-3..1e4,
      every class with >= 2 members).
    * ``reference``: default the registered mpmath reference (built-ins), else the
      loss's ``reference`` attribute, else its own float64 evaluation; or a
      registered name, a :class:`stablenca.reference.Reference`, or a float64 callable.
    * ``loss_floor``: the loss error is counted in ulps of ``max(|reference|, floor)``.
      ``"scale"`` (default) is ``max(1, s)`` for a batch at scale s: rounding the
      distances (size s) by one ulp moves any loss of them by about ulp(s), so that
      is the accuracy asked of a loss smaller than s; a larger loss is measured
      relatively. ``"rows"`` is 1; ``0`` is Herbie's purely relative bits of error.
    * ``grad_floor``: likewise for the gradient, normwise (``max|g - r|`` in ulps of
      ``max(max|r|, floor)``). ``"scale"`` (default) is ``max(1, s) / B`` (the
      entries of the gradient of a mean over B rows are at most about 1/B, and a
      one-ulp change of distances of size s changes them by a factor 1 ± s·ulp(1));
      ``"rows"`` is 1/B; ``0`` is purely normwise-relative.

    Returns ``{"examples": n, "max_loss_bits": .., "max_grad_bits": ..}`` when it passes.
    """
    __tracebackhide__ = True
    import numpy as np  # lazy, as in _formulation: torch, hypothesis and mpmath load on first use
    import torch
    from hypothesis import HealthCheck, Phase, given, settings

    from .. import check, floats
    from .. import reference as ref
    from . import strategies

    _check_floor(loss_floor, "loss_floor")
    _check_floor(grad_floor, "grad_floor")
    formulation = _formulation(loss)
    reference = _reference(formulation, reference)
    dtype = floats.as_dtype(dtype)
    dtype_name = floats.dtype_name(dtype)
    max_bits = check.threshold_bits(dtype) if max_bits is None else float(max_bits)
    max_grad_bits = max_bits if max_grad_bits is None else float(max_grad_bits)
    strategy = strategies.batches(regime="all") if strategy is None else strategy
    seen = {"examples": 0, "max_loss_bits": 0.0, "max_grad_bits": 0.0}
    budget = settings.default.max_examples if max_examples is None else int(max_examples)

    @settings(max_examples=budget, deadline=None, database=None,
              phases=[Phase.explicit, Phase.generate, Phase.target, Phase.shrink],
              suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                     HealthCheck.function_scoped_fixture])
    @given(strategy)
    def stable_on(batch):
        __tracebackhide__ = True
        if not isinstance(batch, check.Batch):
            raise TypeError(f"the strategy must generate stablenca.check.Batch, not {type(batch).__name__}")
        result = ref.compute_reference(reference, batch.distances, batch.labels, batch.labels, batch.self_mask)
        computed, grad = check.run_formulation(formulation, batch, dtype)
        grad = grad.numpy()
        problems = []
        loss_bits = ref.bits_of_error(computed, result.loss, dtype, floor=_floor(loss_floor, batch, "loss_floor"))
        if not torch.isfinite(computed):
            problems.append("the loss is not finite")
        elif loss_bits > max_bits:
            problems.append(f"the loss has {loss_bits:.1f} bits of error (> {max_bits:g})")
        grad_bits = 0.0
        if check_gradient and result.grad is not None and result.loss_finite:
            grad_bits = ref.gradient_bits_of_error(grad, result.grad, dtype,
                                                   floor=_floor(grad_floor, batch, "grad_floor"))
            if not np.isfinite(grad).all():
                problems.append("the gradient is not finite")
            elif grad_bits > max_grad_bits:
                problems.append(f"the gradient has {grad_bits:.1f} bits of error (> {max_grad_bits:g})")
        seen["examples"] += 1
        seen["max_loss_bits"] = max(seen["max_loss_bits"], float(loss_bits))
        seen["max_grad_bits"] = max(seen["max_grad_bits"], float(grad_bits))
        if problems:
            lines = [
                f"stablenca: {formulation.name} is not stable in {dtype_name}: {'; '.join(problems)}",
                f"  counterexample: {batch.summary()}",
                f"  loss: computed {float(computed)!r}, reference {float(result.loss)!r} ({result.label})",
            ]
            if result.grad is not None and result.loss_finite:
                lines.append(f"  gradient (largest errors): {_grad_summary(grad, result.grad)}")
            if batch.rows <= 6:
                lines.append(f"  distances: {batch.distances.tolist()}")
            raise AssertionError("\n".join(lines))

    stable_on()
    return seen


@pytest.fixture
def stablenca_check():
    """:func:`stablenca.testing.pytest_plugin.assert_stable`: ``stablenca_check(loss, dtype=..., max_bits=...)``."""
    return assert_stable
