"""Run a case: every form over the sweep against the mpmath reference, and the tracer on the naive form."""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import Any

import numpy as np
import torch

from .. import floats
from .. import reference as ref
from ..records import json_safe
from ..errors import ConfigError
from ..trace import trace_call
from ._base import Case
from .detect import LossInputWarning, check_loss_inputs

#: A point counts as broken above this fraction of the significand bits (as ``stablenca check``).
THRESHOLD = 0.5


def threshold_bits(dtype) -> float:
    return THRESHOLD * floats.significand_bits(dtype)


@dataclasses.dataclass
class FormRun:
    """One form over the sweep in one dtype."""

    form: str
    note: str
    values: np.ndarray
    grads: np.ndarray
    value_bits: np.ndarray
    grad_bits: np.ndarray
    warnings: list[LossInputWarning]

    @property
    def finite(self) -> np.ndarray:
        return np.isfinite(self.values) & np.isfinite(self.grads)

    def summary(self, x: np.ndarray, dtype: str, exact_grads: np.ndarray) -> dict[str, Any]:
        limit = threshold_bits(dtype)
        vanished = (self.grads == 0) & (exact_grads != 0) & (self.grad_bits > limit)
        return {
            "form": self.form,
            "note": self.note,
            "value_bits_median": float(np.median(self.value_bits)),
            "value_bits_max": float(np.max(self.value_bits)),
            "grad_bits_median": float(np.median(self.grad_bits)),
            "grad_bits_max": float(np.max(self.grad_bits)),
            "finite_fraction": float(np.mean(self.finite)),
            "vanished_fraction": float(np.mean(vanished)),
            "nonfinite_value": _ranges(x, ~np.isfinite(self.values)),
            "nonfinite_grad": _ranges(x, ~np.isfinite(self.grads)),
            "broken_value": _ranges(x, self.value_bits > limit),
            "broken_grad": _ranges(x, self.grad_bits > limit),
            "vanished_grad": _ranges(x, vanished),
            "warnings": [w.to_dict() for w in _unique(self.warnings)],
        }


@dataclasses.dataclass
class CaseRun:
    """The result of :func:`run_case`: the sweep per form, the tracer's finding, the verdicts."""

    case: Case
    dtype: str
    x: np.ndarray
    reference: list
    gradient_reference: list
    forms: dict[str, FormRun]
    traces: dict[str, dict[str, Any]]
    precursors: list[str]
    dps: int

    @property
    def naive_trace(self) -> dict[str, Any]:
        return self.traces["naive"]

    @property
    def finding(self):
        """The tracer's :class:`~stablenca.trace.Finding` for the naive form at the trigger (or None)."""
        return self.traces["naive"]["finding_object"]

    @property
    def root_cause(self) -> str | None:
        return self.traces["naive"]["root_cause"]

    @property
    def expected_root_cause(self) -> str | None:
        return self.case.expected_root_cause_for(self.dtype)

    @property
    def root_cause_ok(self) -> bool:
        return self.root_cause == self.expected_root_cause

    @property
    def naive_warnings(self) -> list[LossInputWarning]:
        return _unique(self.forms["naive"].warnings)

    @property
    def warning_ok(self) -> bool:
        expected = self.case.expected_warning
        got = {w.kind for w in self.naive_warnings}
        return (expected is None and not got) or (expected in got)

    @property
    def budget(self):
        return self.case.budgets.get(self.dtype)

    @property
    def fixed_ok(self) -> bool | None:
        """The fixed form is finite everywhere, within its budget, warning-free and clean under the tracer.

        None when the case states no budget for this dtype (measured only).
        """
        fixed = self.forms["fixed"]
        clean = bool(fixed.finite.all()) and not fixed.warnings and self.traces["fixed"]["finding"] is None
        if self.budget is None:
            return None if clean else False
        return clean and float(np.max(fixed.value_bits)) <= self.budget.value_bits \
            and float(np.max(fixed.grad_bits)) <= self.budget.grad_bits

    @property
    def ok(self) -> bool:
        return self.root_cause_ok and self.warning_ok and self.fixed_ok is not False

    def to_dict(self) -> dict[str, Any]:
        exact_grads = np.array([float(g) for g in self.gradient_reference])
        budget = None if self.budget is None else dataclasses.asdict(self.budget)
        return _json_safe({
            "case": self.case.name,
            "dtype": self.dtype,
            "reference": f"mpmath ({self.dps} digits)",
            "threshold_bits": threshold_bits(self.dtype),
            "floor": self.case.floor,
            "grad_floor": self.case.grad_floor,
            "forms": {name: form.summary(self.x, self.dtype, exact_grads) for name, form in self.forms.items()},
            "traces": {name: {k: v for k, v in t.items() if k != "finding_object"} for name, t in self.traces.items()},
            "precursors": self.precursors,
            "expected_root_cause": self.expected_root_cause,
            "root_cause": self.root_cause,
            "root_cause_ok": self.root_cause_ok,
            "expected_warning": self.case.expected_warning,
            "warnings": [w.to_dict() for w in self.naive_warnings],
            "warning_ok": self.warning_ok,
            "budget": budget,
            "fixed_ok": self.fixed_ok,
            "ok": self.ok,
        })

    def curves(self) -> dict[str, Any]:
        """x and the per-point bits of every form (for plots)."""
        return {"x": self.x.tolist(),
                "forms": {name: {"value_bits": f.value_bits.tolist(), "grad_bits": f.grad_bits.tolist(),
                                 "value_finite": np.isfinite(f.values).tolist(),
                                 "grad_finite": np.isfinite(f.grads).tolist(), "note": f.note}
                          for name, f in self.forms.items()}}


def _json_safe(value):
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    return json_safe(value)


def _unique(warnings: list[LossInputWarning]) -> list[LossInputWarning]:
    """One warning per (kind, loss), the one with the most affected rows."""
    best: dict[tuple[str, str], LossInputWarning] = {}
    for w in warnings:
        key = (w.kind, w.loss)
        if key not in best or w.count > best[key].count:
            best[key] = w
    return list(best.values())


def _ranges(x: np.ndarray, mask: np.ndarray) -> list[list[float]]:
    """Contiguous runs of ``mask`` over the sorted sweep, as ``[first x, last x]``.

    >>> _ranges(np.array([1.0, 2.0, 3.0, 4.0]), np.array([False, True, True, False]))
    [[2.0, 3.0]]
    """
    runs: list[list[float]] = []
    start = None
    for i, flagged in enumerate(mask.tolist()):
        if flagged and start is None:
            start = i
        if not flagged and start is not None:
            runs.append([float(x[start]), float(x[i - 1])])
            start = None
    if start is not None:
        runs.append([float(x[start]), float(x[len(x) - 1])])
    return runs


@functools.lru_cache(maxsize=32)
def _references(name: str, dps: int) -> tuple[tuple, tuple]:
    from . import get_case  # the package's registry: it imports this module, so not at the top

    case = get_case(name)
    x = case.domain.points()
    return tuple(case.reference_values(x, dps)), tuple(case.reference_gradients(x, dps))


def evaluate_form(case: Case, form: str, x: np.ndarray, dtype: torch.dtype) -> tuple[np.ndarray, np.ndarray,
                                                                                    list[LossInputWarning]]:
    """Values and gradients (float64 arrays) of one form at ``x`` in ``dtype``, and its loss-input warnings."""
    try:
        with check_loss_inputs() as warnings:
            values, grads = case.evaluate(form, x, dtype)
    except RuntimeError as exc:
        raise ConfigError(f"case {case.name!r} cannot run in {floats.dtype_name(dtype)}: {exc}",
                          fix="use --dtype float32 or float64") from None
    return values.to(torch.float64).numpy(), grads.to(torch.float64).numpy(), list(warnings)


def trace_form(case: Case, form: str, value: float, dtype: torch.dtype, *,
               cancellation_bits: int | None = None) -> dict[str, Any]:
    """Run one form at one input under the tracer (forward and backward)."""
    t = torch.tensor([value], dtype=torch.float64).to(dtype).requires_grad_(True)
    result = trace_call(case.forms[form], t, cancellation_bits=cancellation_bits)
    y = result.value
    finding = result.finding
    grad = t.grad
    out: dict[str, Any] = {
        "input": float(value),
        "value": float(y.detach().reshape(-1)[0]) if isinstance(y, torch.Tensor) else None,
        "value_finite": bool(torch.isfinite(y).all()) if isinstance(y, torch.Tensor) else None,
        "grad": None if grad is None else float(grad.reshape(-1)[0]),
        "finding": None if finding is None else finding.to_dict(),
        "finding_object": finding,
        "root_cause": None if finding is None else finding.root_cause.get("kind"),
        "phase": None if finding is None else finding.phase,
        "op": None if finding is None else finding.op,
        "chain_text": None if finding is None else finding.chain_text(),
        "precursors": [str(p) for p in result.precursors],
    }
    if finding is not None and out["value_finite"]:
        # The forward result is finite although an op made NaN/Inf: it was masked (where) and, with
        # backward, comes back as 0 * inf = NaN in the gradient. Measure that gradient untraced.
        x = torch.tensor([value], dtype=torch.float64).to(dtype).requires_grad_(True)
        with torch.enable_grad():
            (g,) = torch.autograd.grad(case.forms[form](x).sum(), x)
        out["grad"] = float(g[0])
        out["nan_surfaces_in"] = "backward" if not bool(torch.isfinite(g).all()) else None
    else:
        out["nan_surfaces_in"] = None if finding is None else "forward"
    return out


def run_case(name: str, dtype: str | torch.dtype = "float32", *, dps: int = ref.DEFAULT_DPS) -> CaseRun:
    """Evaluate every form of case ``name`` over its sweep in ``dtype`` and trace the naive form.

    Returns a :class:`CaseRun`: per form the values, gradients and bits of error
    (:func:`stablenca.reference.bits_of_error` against the mpmath reference rounded to
    ``dtype``, with the case's ``floor``) and the loss-input warnings of the run; the
    tracer's finding for every form at the case's trigger input (``.finding``,
    ``.root_cause``); the precursors of the naive form at the case's probe input;
    and the verdicts ``root_cause_ok``, ``warning_ok``, ``fixed_ok``, ``ok``.

    >>> run = run_case("log_softmax", "float32")
    >>> run.root_cause, run.root_cause_ok, run.fixed_ok
    ('underflow', True, True)
    """
    from . import get_case  # the package's registry: it imports this module, so not at the top

    case = get_case(name)
    torch_dtype = floats.as_dtype(dtype)
    dtype_name = floats.dtype_name(torch_dtype)
    x = case.domain.points()
    values_ref, grads_ref = _references(case.name, dps)
    forms: dict[str, FormRun] = {}
    for form in case.forms:
        values, grads, warnings = evaluate_form(case, form, x, torch_dtype)
        value_bits = np.asarray(ref.bits_of_error(values, list(values_ref), torch_dtype, floor=case.floor))
        grad_bits = np.asarray(ref.bits_of_error(grads, list(grads_ref), torch_dtype, floor=case.grad_floor))
        forms[form] = FormRun(form, case.form_notes.get(form, form), values, grads, value_bits, grad_bits, warnings)
    trigger = case.trigger.get(dtype_name)
    traces = {}
    for form in case.forms:
        traces[form] = trace_form(case, form, trigger, torch_dtype) if trigger is not None else \
            {"input": None, "finding": None, "finding_object": None, "root_cause": None, "phase": None,
             "op": None, "chain_text": None, "precursors": [], "nan_surfaces_in": None}
    precursors: list[str] = []
    probe = case.probe.get(dtype_name)
    if probe is not None:
        precursors = trace_form(case, "naive", probe, torch_dtype,
                                cancellation_bits=case.probe_cancellation_bits)["precursors"]
    return CaseRun(case, dtype_name, x, list(values_ref), list(grads_ref), forms, traces, precursors, dps)
