"""One formulation on one batch in one dtype, against its reference; and the per-row aggregation."""

from __future__ import annotations

import dataclasses
import math
import statistics
from typing import Any

import torch

from .. import floats, losses
from .. import reference as ref
from ..errors import ConfigError, StableNCAError
from .batches import POPULATIONS, Batch

#: Breakdown when more than this fraction of the significand bits are wrong.
THRESHOLD = 0.5

#: A patched formulation -> the quantity it patches. Its own reference shows only its
#: rounding; measured against the exact unpatched loss (``ratio`` without epsilon) the bias
#: the patch introduces shows too (the error-vs-scale figure draws both).
UNPATCHED = {"ratio_eps": "ratio"}


def threshold_bits(dtype) -> float:
    """Bits of error above which a result counts as broken: half the significand bits.

    >>> threshold_bits("float32"), threshold_bits("float64")
    (12.0, 26.5)
    """
    return THRESHOLD * floats.significand_bits(dtype)



@dataclasses.dataclass
class Evaluation:
    """One formulation on one batch in one dtype, against the reference."""

    scale: float
    population: str
    loss: float
    finite: bool
    loss_bits: float
    grad_bits: float | None
    vanished: bool
    failed: bool
    loss_failed: bool
    reason: str
    #: Bits of error against the unpatched quantity (:data:`UNPATCHED`); None for other losses.
    unpatched_loss_bits: float | None = None
    unpatched_grad_bits: float | None = None

    @property
    def loss_finite(self) -> bool:
        return math.isfinite(self.loss)


def run_formulation(formulation, batch: Batch, dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """Loss (a 0-d tensor of ``dtype``) and its gradient w.r.t. the distances (float64)."""
    dtype = floats.as_dtype(dtype)
    d = batch.distances.detach().to(dtype, copy=True).requires_grad_(True)
    try:
        with torch.enable_grad():
            out = losses.evaluate(formulation, d, batch.labels, batch.labels, batch.self_mask,
                                  n_classes=batch.n_classes)
            loss = out.loss
            grad = torch.autograd.grad(loss, d, allow_unused=True)[0] if loss.requires_grad else None
    except StableNCAError:
        raise
    except RuntimeError as exc:
        raise ConfigError(f"loss {formulation.name!r} cannot run in {floats.dtype_name(dtype)}: {exc}",
                          fix=f"drop --dtype {floats.dtype_name(dtype)}") from None
    grad = torch.zeros_like(d) if grad is None else grad
    return loss.detach(), grad.detach().to(torch.float64)


def _bits_against(loss, grad, reference: ref.RefResult, dtype) -> tuple[float, float | None]:
    loss_bits = ref.bits_of_error(loss, reference.loss, dtype)
    grad_bits = None
    if reference.grad is not None and reference.loss_finite:
        grad_bits = ref.gradient_bits_of_error(grad.numpy(), reference.grad, dtype)
    return float(loss_bits), grad_bits


def evaluate(formulation, batch: Batch, dtype, reference: ref.RefResult,
             unpatched: ref.RefResult | None = None) -> Evaluation:
    """Run ``formulation`` on ``batch`` in ``dtype`` and measure it against ``reference``
    (and against ``unpatched``, the exact loss it patches, when given; it does not decide
    the breakdown, which stays a property of the formulation's own arithmetic)."""
    dtype = floats.as_dtype(dtype)
    loss, grad = run_formulation(formulation, batch, dtype)
    finite = bool(torch.isfinite(loss)) and bool(torch.isfinite(grad).all())
    loss_bits, grad_bits = _bits_against(loss, grad, reference, dtype)
    unpatched_bits = (None, None) if unpatched is None else _bits_against(loss, grad, unpatched, dtype)
    vanished = bool((grad == 0).all()) and reference.grad_nonzero and reference.loss_finite
    limit = threshold_bits(dtype)
    reasons = []
    if not finite:
        reasons.append("non-finite " + ("loss" if not torch.isfinite(loss) else "gradient"))
    if loss_bits > limit and finite:
        reasons.append(f"loss {loss_bits:.1f} bits")
    if grad_bits is not None and grad_bits > limit and finite:
        reasons.append(f"gradient {grad_bits:.1f} bits")
    loss_failed = not bool(torch.isfinite(loss)) or loss_bits > limit
    return Evaluation(batch.scale, batch.population, float(loss), finite, float(loss_bits), grad_bits,
                      vanished, bool(reasons), loss_failed, ", ".join(reasons), *unpatched_bits)


# --------------------------------------------------------------------------- aggregation


def _median(values):
    return float(statistics.median(values)) if values else None


def _max(values):
    return float(max(values)) if values else None


@dataclasses.dataclass
class PopulationStats:
    n: int
    finite_fraction: float
    loss_bits_median: float | None
    loss_bits_max: float | None
    grad_bits_median: float | None
    grad_bits_max: float | None
    vanished_fraction: float

    @classmethod
    def of(cls, evaluations: list[Evaluation]) -> PopulationStats:
        n = len(evaluations)
        loss_bits = [e.loss_bits for e in evaluations]
        grad_bits = [e.grad_bits for e in evaluations if e.grad_bits is not None]
        return cls(n, sum(e.finite for e in evaluations) / n if n else 0.0, _median(loss_bits), _max(loss_bits),
                   _median(grad_bits), _max(grad_bits), sum(e.vanished for e in evaluations) / n if n else 0.0)


@dataclasses.dataclass
class CheckRow:
    """The result of one formulation × dtype."""

    loss: str
    dtype: str
    reference: str
    threshold_bits: float
    breakdown_scale: float | None
    breakdown_reason: str
    loss_breakdown_scale: float | None
    nonfinite_scale: float | None
    populations: dict[str, PopulationStats]
    #: Population (a) per scale, for Herbie-style error-vs-scale plots.
    per_scale: list[dict[str, Any]] = dataclasses.field(default_factory=list)
    #: The loss the per-scale ``unpatched_*`` bits are measured against (:data:`UNPATCHED`), or None.
    unpatched: str | None = None

    def to_dict(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        out["populations"] = {k: dataclasses.asdict(v) for k, v in self.populations.items()}
        return out


def summarise(loss: str, dtype: str, reference_label: str, evaluations: list[Evaluation],
              unpatched: str | None = None) -> CheckRow:
    paired = sorted((e for e in evaluations if e.population == "paired"), key=lambda e: e.scale)
    breakdown = next((e for e in paired if e.failed), None)
    loss_breakdown = next((e for e in paired if e.loss_failed), None)
    nonfinite = next((e for e in paired if not e.finite), None)
    return CheckRow(
        loss, dtype, reference_label, threshold_bits(dtype),
        None if breakdown is None else breakdown.scale, "" if breakdown is None else breakdown.reason,
        None if loss_breakdown is None else loss_breakdown.scale,
        None if nonfinite is None else nonfinite.scale,
        {p: PopulationStats.of([e for e in evaluations if e.population == p]) for p in POPULATIONS},
        _per_scale(paired), unpatched,
    )


def _per_scale(paired: list[Evaluation]) -> list[dict[str, Any]]:
    """Median bits of error and the finite fractions (loss and gradient; loss alone) at each
    scale of the sweep (population a); the medians against the unpatched loss where measured."""
    by_scale: dict[float, list[Evaluation]] = {}
    for evaluation in paired:
        by_scale.setdefault(evaluation.scale, []).append(evaluation)
    rows = []
    for scale, group in sorted(by_scale.items()):
        stats = PopulationStats.of(group)
        row = {"scale": scale, "loss_bits_median": stats.loss_bits_median,
               "grad_bits_median": stats.grad_bits_median, "finite_fraction": stats.finite_fraction,
               "loss_finite_fraction": sum(e.loss_finite for e in group) / len(group)}
        unpatched_loss = [e.unpatched_loss_bits for e in group if e.unpatched_loss_bits is not None]
        if unpatched_loss:
            row["unpatched_loss_bits_median"] = _median(unpatched_loss)
            row["unpatched_grad_bits_median"] = _median(
                [e.unpatched_grad_bits for e in group if e.unpatched_grad_bits is not None])
        rows.append(row)
    return rows
