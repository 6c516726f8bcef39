"""``stablenca check``: sweep the distance scale and measure where each loss breaks.

What is swept
-------------
Scales ``s`` log-uniform from 1e-3 to 1e4 (10 points per decade). At each scale,
small generated batches (8–16 rows, 2–3 classes), of two populations reported
separately:

* ``paired`` (population a): every class has at least 2 members;
* ``singleton`` (population b): one class has exactly 1 member (the ratio family
  breaks there at every scale: ``P_same = 0``; a failure unrelated to underflow).

What a scale means
------------------
A batch at scale ``s`` is a distance matrix (symmetric, zero diagonal) in which
**every row's nearest same-class and nearest other-class distances lie in
[s, KAPPA·s]** (KAPPA = 1.25), the other distances in [s, FAR·s] (FAR = 3). The
kernel sums are dominated by those nearest terms, so the theory is testable: the
ratio loss is exact while ``exp(-KAPPA·s)`` is a normal float and is NaN/inf as soon
as ``exp(-s)`` is 0.0, so its breakdown lies in [L_normal/KAPPA, L_zero]:
float32 [69.9, 104.0], float64 [566.7, 745.1] (see :func:`stablenca.floats.exp_limits`). Distances are
rounded to 8 significant bits, so each batch is exactly representable in float16,
bfloat16, float32 and float64: the error measured is the formulation's, not the
input's, and one mpmath reference serves every dtype.

What is measured
----------------
Per formulation × dtype × population: the fraction of finite results (loss and
gradient all finite), the median and max **bits of error** of the loss (Herbie's
metric against the correctly rounded mpmath reference) and of the gradient
(normwise, see :func:`stablenca.reference.gradient_bits_of_error`), and the
fraction of *vanished* gradients (all exactly zero while the exact gradient is not).

The **breakdown scale** is the smallest swept scale at which a population-(a)
batch gives a non-finite loss or gradient, or more than :data:`THRESHOLD` of the
dtype's significand bits wrong (more than half: float32 12 of 24, float64 26.5 of
53, float16 5.5 of 11, bfloat16 4 of 8), in the loss or in the gradient.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch

from .. import floats, losses
from .. import reference as ref
from ..errors import ConfigError, ContractError, StableNCAError
from .batches import (CLASSES, FAR, KAPPA, POINTS_PER_DECADE, POPULATION_HELP, POPULATIONS, ROWS, SCALE_MAX,
                      SCALE_MIN, Batch, build_batch, quantize, random_batch, scale_grid, theory_window)
from .contract import (DEFAULT_TOLERANCE_FACTOR, SHIPPED_CONTRACT, Contract, Expectation, Violation, judge,
                       load_contract)
from .measure import (THRESHOLD, UNPATCHED, CheckRow, Evaluation, PopulationStats, evaluate, run_formulation,
                      summarise, threshold_bits)
from .table import CheckReport

DEFAULT_BATCHES = 3
DEFAULT_DTYPES = floats.DTYPE_NAMES

__all__ = [
    "CLASSES", "DEFAULT_BATCHES", "DEFAULT_DTYPES", "DEFAULT_TOLERANCE_FACTOR", "FAR", "KAPPA", "POINTS_PER_DECADE",
    "POPULATION_HELP", "POPULATIONS", "ROWS", "SCALE_MAX", "SCALE_MIN", "SHIPPED_CONTRACT", "THRESHOLD", "Batch",
    "CheckReport", "CheckRow", "Contract", "Evaluation", "Expectation", "PopulationStats", "Violation", "build_batch",
    "evaluate", "judge", "load_contract", "quantize", "random_batch", "run_check", "run_formulation", "scale_grid",
    "summarise", "theory_window", "threshold_bits",
]


def run_check(loss_specs: Sequence[str] | None = None, dtypes: Sequence[str] | None = None, *,
              contract: Contract | str | Path | None = None, seed: int | None = None, batches: int | None = None,
              scale_min: float | None = None, scale_max: float | None = None,
              points_per_decade: int | None = None, populations: Sequence[str] = POPULATIONS,
              dps: int = ref.DEFAULT_DPS, progress: Callable[[str], None] | None = None) -> CheckReport:
    """Sweep the scales and measure every formulation × dtype (see the module docstring).

    Without ``loss_specs``/``dtypes`` the contract's formulations/dtypes are checked
    (all five built-ins × four dtypes without a contract); explicit arguments beat
    the contract's ``sweep`` section, which beats the defaults. References are
    computed once per batch and shared by every dtype.
    """
    if contract is not None and not isinstance(contract, Contract):
        contract = load_contract(contract)
    sweep = contract.sweep if contract is not None else {}
    seed = sweep.get("seed", 0) if seed is None else seed
    batches = sweep.get("batches", DEFAULT_BATCHES) if batches is None else batches
    scale_min = sweep.get("scale_min", SCALE_MIN) if scale_min is None else scale_min
    scale_max = sweep.get("scale_max", SCALE_MAX) if scale_max is None else scale_max
    points_per_decade = sweep.get("points_per_decade", POINTS_PER_DECADE) if points_per_decade is None \
        else points_per_decade
    if not 0 < scale_min < scale_max:
        raise ConfigError(f"scale range {scale_min}..{scale_max} is empty", fix="use 0 < scale_min < scale_max")
    if batches < 1:
        raise ConfigError(f"batches={batches} must be >= 1", fix="use --batches 1 or more")
    if loss_specs is None:
        loss_specs = contract.losses if contract is not None else list(losses.REGISTRY)
    if dtypes is None:
        dtypes = contract.dtypes if contract is not None else list(DEFAULT_DTYPES)
    dtypes = [floats.dtype_name(d) for d in dtypes]
    try:
        formulations = [losses.resolve(spec, "multiclass") for spec in loss_specs]
    except StableNCAError as exc:
        if contract is not None and any(spec in contract.expect for spec in loss_specs):
            raise ContractError(f"contract {contract.path}: {exc.problem}", fix=exc.fix) from None
        raise
    references = [ref.reference_for(f) for f in formulations]
    grid = scale_grid(scale_min, scale_max, points_per_decade)
    started = time.perf_counter()
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny tensors: threading costs more than it gives
    try:
        evaluations = _sweep(formulations, references, dtypes, grid, populations, batches, seed, dps, progress)
    finally:
        torch.set_num_threads(threads)
    rows = [summarise(formulations[k].name, dtype, references[k].describe(dps), evaluations[(k, dtype)],
                      UNPATCHED.get(formulations[k].name))
            for k in range(len(formulations)) for dtype in dtypes]
    report = CheckReport(
        sweep={"scale_min": scale_min, "scale_max": scale_max, "points_per_decade": points_per_decade,
               "n_scales": len(grid), "batches": batches, "seed": seed, "rows": list(ROWS),
               "classes": list(CLASSES), "kappa": KAPPA, "far": FAR, "dps": dps,
               "threshold": f"more than {THRESHOLD:g} of the significand bits",
               "threshold_bits": {d: threshold_bits(d) for d in dtypes}},
        rows=rows, seconds=time.perf_counter() - started, contract=contract)
    if contract is not None:
        report.violations = judge(contract, rows, scale_max)
        report.unjudged = [f"{r.loss} x {r.dtype}" for r in rows
                           if r.dtype not in contract.expect.get(r.loss, {})]
    return report


def _sweep(formulations, references, dtypes, grid, populations, batches, seed, dps, progress):
    evaluations: dict[tuple[int, str], list[Evaluation]] = {
        (k, d): [] for k in range(len(formulations)) for d in dtypes}
    for scale_index, scale in enumerate(grid):
        if progress is not None:
            progress(f"scale {scale:.3g} ({scale_index + 1}/{len(grid)})")
        for population in populations:
            for b in range(batches):
                rng = np.random.default_rng([seed, scale_index, POPULATIONS.index(population), b])
                batch = random_batch(rng, scale, population)
                mp_inputs = ref.to_mp_inputs(batch.distances, batch.labels, batch.labels, batch.self_mask)

                def reference_of(reference):
                    return ref.compute_reference(reference, batch.distances, batch.labels, batch.labels,
                                                 batch.self_mask, dps=dps, mp_inputs=mp_inputs)

                for k, (formulation, reference) in enumerate(zip(formulations, references)):
                    result = reference_of(reference)
                    patched = UNPATCHED.get(formulation.name)
                    unpatched = None if patched is None else reference_of(ref.reference_for(losses.get(patched)))
                    for dtype in dtypes:
                        evaluations[(k, dtype)].append(evaluate(formulation, batch, dtype, result, unpatched))
    return evaluations
