"""Loss and gradient against the distance scale: why the ratio loss inflates the scale.

Take one real batch (its distances ``D``, from a committed capsule), write it as
``D = s · U`` with ``U = D / median(D)``, and move only the scale ``s``. For every
formulation this module evaluates, in float64 and as a pure computation,

* the loss ``L(s)``;
* the push ``dL/ds`` that the optimiser feels along the scale direction;
* ``|∂L/∂D|``, the Frobenius norm of the gradient with respect to the distances.

What it shows (see ``docs/exercises.md``): with ``p = P_same / (P_same + P_diff)``
the ratio loss is ``-log(P_same / P_diff) = -logit(p)``. For a row whose nearest
same-class candidate is nearer than its nearest other-class one it falls
*linearly* in ``s`` with slope ``d_same_min - d_diff_min < 0`` that never decays,
while NCA's ``-log p`` gains only an exponentially small amount from such rows and
is pushed back by the misclassified ones, so it has a finite optimum.

Float64 keeps every ``exp(-s·U)`` of the sweep a normal number as long as
``s · max(U) <= 700`` (float64's ``exp(-d)`` leaves the normal range at
d > 708.4); the scale grid is checked against that bound. That is not enough for
the ratio forms: the backward of ``log(a / b)`` overflows once
``2·(-ln P_diff) - (-ln P_same)`` passes ln(DBL_MAX) = 709.78, in float64 as in
float32 (at 88.72). So ``ratio`` and ``ratio_eps`` are evaluated in their log-space
equivalents (:func:`exact_loss`): the same functions of ``D``, whose value and
gradient stay finite at every scale.

>>> u = torch.tensor([[0., 1., 3., 2.], [1., 0., 2., 4.], [3., 2., 0., 1.], [2., 4., 1., 0.]], dtype=torch.float64)
>>> y = torch.tensor([0, 0, 1, 1])
>>> batch = Batch(u, y, y, torch.eye(4, dtype=torch.bool))
>>> sweep = sweep_scale(batch, [1.0, 10.0, 100.0], ["ratio", "nca_logspace"])
>>> [round(v, 4) for v in sweep.curves["ratio"].dloss_dscale]  # tends to ratio_slope: never decays
[-0.7289, -0.5017, -0.5]
>>> ratio_slope(batch)
-0.5
>>> [f"{v:.1e}" for v in sweep.curves["nca_logspace"].dloss_dscale]  # decays like exp(-s/2)
['-3.4e-01', '-3.4e-03', '-1.9e-22']
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from pathlib import Path

import torch

from . import losses
from .errors import ConfigError

#: The formulations the sweep compares (all registered ones that fit class labels).
FORMULATIONS = ("ratio", "nca_logspace", "modernnca", "difference", "ratio_eps")
#: Largest ``s · max(U)`` allowed: float64 ``exp(-d)`` stays normal up to d = 708.4.
FLOAT64_EXP_BOUND = 700.0


@dataclasses.dataclass(frozen=True)
class Batch:
    """One batch's distances (float64) and labels, in the losses' interface."""

    distances: torch.Tensor
    labels: torch.Tensor
    candidate_labels: torch.Tensor
    self_mask: torch.Tensor

    @property
    def unit(self) -> torch.Tensor:
        """``U = D / median(D)`` over the candidate pairs (self pairs excluded): scale 1 is the batch's median."""
        return self.distances / self.median

    @property
    def median(self) -> float:
        return float(self.distances[~self.self_mask].median())


@dataclasses.dataclass
class Curve:
    loss: list[float]
    dloss_dscale: list[float]
    grad_norm: list[float]


@dataclasses.dataclass
class Sweep:
    scales: list[float]
    median_distance: float
    curves: dict[str, Curve]

    def argmin(self, name: str) -> float:
        """The scale of the smallest loss on the grid (the grid's end when the loss still falls there)."""
        losses_ = self.curves[name].loss
        return self.scales[min(range(len(losses_)), key=losses_.__getitem__)]


def batch_from_capsule(path: str | Path) -> Batch:
    """The failing step's batch, rebuilt from a capsule: its model state, batch rows and candidate draw.

    The distances are those the step computed (float32 model, as trained), returned in float64
    and detached, so the sweep measures the formulations, not the model.
    """
    from .artifacts import load_capsule
    from .training.trainer import Trainer, TrainConfig

    capsule = load_capsule(path)
    trainer = Trainer(TrainConfig(**capsule["config"]))
    trainer.model.load_state_dict(capsule["model_state"])
    if capsule.get("generator_state") is not None:
        trainer.generator.set_state(capsule["generator_state"])
    trainer.model.train()  # the step ran in train mode (batch statistics in BatchNorm)
    with torch.no_grad():
        pairs = trainer.pairs(capsule["batch_indices"])
    return Batch(pairs.distances.detach().to(torch.float64), pairs.labels.clone(), pairs.candidate_labels.clone(),
                 pairs.self_mask.clone())


def row_log_sums(distances: torch.Tensor, batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
    same = (batch.labels[:, None] == batch.candidate_labels[None, :]) & ~batch.self_mask
    other = (batch.labels[:, None] != batch.candidate_labels[None, :]) & ~batch.self_mask
    log_same = torch.logsumexp((-distances).masked_fill(~same, -math.inf), dim=1)
    log_other = torch.logsumexp((-distances).masked_fill(~other, -math.inf), dim=1)
    return log_same, log_other


def exact_loss(name: str, distances: torch.Tensor, batch: Batch) -> torch.Tensor:
    """The formulation ``name`` as a function of ``distances``, evaluated so that it stays exact.

    ``ratio`` is ``log P_diff - log P_same`` and ``ratio_eps`` is
    ``logaddexp(log P_diff, log 2eps) - logaddexp(log P_same, log eps)`` (the same values,
    in log space; the student's divisor carries eps twice); the other formulations are the registered functions, which are
    finite at every scale in float64 within the sweep's bound.
    """
    if name in ("ratio", "ratio_eps"):
        log_same, log_other = row_log_sums(distances, batch)
        if name == "ratio_eps":
            log_eps = math.log(losses.RATIO_EPS)
            log_same = torch.logaddexp(log_same, torch.full_like(log_same, log_eps))
            log_other = torch.logaddexp(log_other, torch.full_like(log_other, log_eps + math.log(2)))
        return (log_other - log_same).mean()
    n_classes = int(max(int(batch.labels.max()), int(batch.candidate_labels.max()))) + 1
    return losses.evaluate(losses.get(name), distances, batch.labels, batch.candidate_labels, batch.self_mask,
                           n_classes=n_classes).loss


def _evaluate(name: str, batch: Batch, scale: float) -> tuple[float, float, float]:
    distances = (scale * batch.unit).requires_grad_(True)
    loss = exact_loss(name, distances, batch)
    (grad_d,) = torch.autograd.grad(loss, distances)
    # dL/ds = <∂L/∂D, U>: the chain rule through D = s·U.
    return float(loss.detach()), float((grad_d * batch.unit).sum()), float(grad_d.norm())


def sweep_scale(batch: Batch, scales: Sequence[float], names: Sequence[str] = FORMULATIONS) -> Sweep:
    """Evaluate every formulation at each scale ``s`` (``D = s · U``) in float64."""
    unknown = [n for n in names if n not in losses.REGISTRY]
    if unknown:
        raise ConfigError(f"unknown formulation(s) {', '.join(unknown)}", fix=f"use some of {', '.join(FORMULATIONS)}")
    largest = float(batch.unit.max())
    too_far = [s for s in scales if not 0 < s * largest <= FLOAT64_EXP_BOUND]
    if too_far:
        raise ConfigError(f"scales {too_far[:3]} put s·max(U) outside (0, {FLOAT64_EXP_BOUND:g}] (max U = "
                          f"{largest:.3g}), where float64 exp is no longer exact", fix="use smaller positive scales")
    curves = {}
    for name in names:
        points = [_evaluate(name, batch, float(s)) for s in scales]
        curves[name] = Curve(*(list(column) for column in zip(*points)))
    return Sweep([float(s) for s in scales], batch.median, curves)


def ratio_slope(batch: Batch) -> float:
    """The ratio loss's limiting slope ``dL/ds`` as ``s -> inf``: mean over rows of ``min U_same - min U_diff``.

    For large ``s`` each sum is dominated by its nearest candidate, so the row's loss is
    ``s · (min U_same - min U_diff)`` plus a term that tends to a constant: a straight line.
    """
    unit = batch.unit
    same = (batch.labels[:, None] == batch.candidate_labels[None, :]) & ~batch.self_mask
    other = (batch.labels[:, None] != batch.candidate_labels[None, :]) & ~batch.self_mask
    nearest_same = unit.masked_fill(~same, math.inf).min(dim=1).values
    nearest_other = unit.masked_fill(~other, math.inf).min(dim=1).values
    return float((nearest_same - nearest_other).mean())


def log_grid(low: float, high: float, n: int) -> list[float]:
    """``n`` scales spaced log-uniformly from ``low`` to ``high``.

    >>> log_grid(1.0, 100.0, 3)
    [1.0, 10.0, 100.0]
    """
    if not (0 < low < high) or n < 2:
        raise ConfigError(f"log_grid({low}, {high}, {n}) needs 0 < low < high and n >= 2",
                          fix="use for example log_grid(0.01, 100, 41)")
    step = (math.log10(high) - math.log10(low)) / (n - 1)
    inner = [float(f"{10 ** (math.log10(low) + i * step):.12g}") for i in range(1, n - 1)]
    return [float(low), *inner, float(high)]  # the ends exactly as given (no rounding past a bound)


def format_table(sweep: Sweep, every: int = 1) -> str:
    """Plain-text table: one line per scale, loss and dL/ds per formulation."""
    names = list(sweep.curves)
    header = f"{'s':>9} " + " ".join(f"{n + ' L':>16} {n + ' dL/ds':>18}" for n in names)
    lines = [f"median distance of the batch (s = 1): {sweep.median_distance:.6g}", header]
    for i in range(0, len(sweep.scales), every):
        cells = " ".join(f"{sweep.curves[n].loss[i]:>16.6g} {sweep.curves[n].dloss_dscale[i]:>18.6g}" for n in names)
        lines.append(f"{sweep.scales[i]:>9.4g} {cells}")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m stablenca.scale_sweep CAPSULE``: the sweep on the capsule's batch, as a table."""
    import argparse

    parser = argparse.ArgumentParser(prog="python -m stablenca.scale_sweep", description=main.__doc__)
    parser.add_argument("capsule")
    parser.add_argument("--low", type=float, default=0.01)
    parser.add_argument("--high", type=float, default=None, help="default: the largest exact scale")
    parser.add_argument("--points", type=int, default=13)
    args = parser.parse_args(argv)
    batch = batch_from_capsule(args.capsule)
    high = args.high if args.high is not None else FLOAT64_EXP_BOUND / float(batch.unit.max())
    sweep = sweep_scale(batch, log_grid(args.low, high, args.points))
    print(format_table(sweep))
    print(f"ratio's limiting slope dL/ds = mean(min U_same - min U_diff) = {ratio_slope(batch):.6g}")
    for name in FORMULATIONS:
        print(f"{name}: smallest loss on the grid at s = {sweep.argmin(name):.4g}")
    return 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
