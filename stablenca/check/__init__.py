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

import dataclasses
import json
import math
import statistics
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from . import floats, losses
from . import reference as ref
from .errors import ConfigError, ContractError, StableNCAError

#: Every row's nearest same-class and nearest other-class distance lies in [s, KAPPA s].
KAPPA = 1.25
#: All other off-diagonal distances lie in [s, FAR s].
FAR = 3.0
SCALE_MIN, SCALE_MAX = 1e-3, 1e4
POINTS_PER_DECADE = 10
ROWS = (8, 16)
CLASSES = (2, 3)
DEFAULT_BATCHES = 3
DEFAULT_DTYPES = floats.DTYPE_NAMES
#: Breakdown when more than this fraction of the significand bits are wrong.
THRESHOLD = 0.5
POPULATIONS = ("paired", "singleton")
POPULATION_HELP = {
    "paired": "every class has >= 2 members (population a; breakdown scales refer to it)",
    "singleton": "one class has exactly 1 member (population b)",
}
#: The contract's default tolerance: a measured breakdown within [expected / f, expected × f] passes.
DEFAULT_TOLERANCE_FACTOR = 1.5
SHIPPED_CONTRACT = Path(__file__).parent / "contracts" / "default.json"


def threshold_bits(dtype) -> float:
    """Bits of error above which a result counts as broken: half the significand bits.

    >>> threshold_bits("float32"), threshold_bits("float64")
    (12.0, 26.5)
    """
    return THRESHOLD * floats.significand_bits(dtype)


def theory_window(dtype, kappa: float = KAPPA) -> tuple[float, float]:
    """Where the *ratio* loss must break for batches of this generator: [L_normal/kappa, L_zero].

    >>> [round(x, 1) for x in theory_window("float32")]
    [69.9, 104.0]
    """
    normal, zero = floats.exp_limits(dtype)
    return normal / kappa, zero


def scale_grid(scale_min: float = SCALE_MIN, scale_max: float = SCALE_MAX,
               points_per_decade: int = POINTS_PER_DECADE) -> list[float]:
    """Log-uniform scales, both ends included.

    >>> grid = scale_grid(1, 100, 2)
    >>> [round(s, 2) for s in grid]
    [1.0, 3.16, 10.0, 31.62, 100.0]
    """
    lo, hi = math.log10(scale_min), math.log10(scale_max)
    count = max(1, round((hi - lo) * points_per_decade))
    return [10 ** (lo + (hi - lo) * k / count) for k in range(count + 1)]


# --------------------------------------------------------------------------- batches


@dataclasses.dataclass
class Batch:
    """One generated batch: float64 distances exact in every dtype, labels, its scale."""

    distances: torch.Tensor
    labels: torch.Tensor
    scale: float
    population: str = "paired"

    @property
    def self_mask(self) -> torch.Tensor:
        return torch.eye(len(self.labels), dtype=torch.bool)

    @property
    def n_classes(self) -> int:
        return int(self.labels.max()) + 1

    @property
    def rows(self) -> int:
        return len(self.labels)

    def __repr__(self) -> str:
        return f"Batch({self.summary()})"

    def summary(self) -> str:
        """One line: scale, labels, and the nearest same/other distances per row."""
        d = self.distances.detach()
        same = self.labels[:, None] == self.labels[None, :]
        off = ~self.self_mask
        inf = torch.tensor(math.inf, dtype=d.dtype)
        near_same = torch.where(same & off, d, inf).min(dim=1).values
        near_other = torch.where(~same, d, inf).min(dim=1).values
        off_values = d[off]
        return (f"scale={self.scale:.4g} rows={self.rows} labels={self.labels.tolist()} "
                f"off-diagonal distances in [{float(off_values.min()):.4g}, {float(off_values.max()):.4g}]; "
                f"nearest same-class per row {[round(float(x), 4) for x in near_same]}; "
                f"nearest other-class per row {[round(float(x), 4) for x in near_other]}")


def quantize(values: torch.Tensor) -> torch.Tensor:
    """Round to 8 significant bits: exact in bfloat16, and in float16 for |x| in [2**-14, 65504].

    >>> quantize(torch.tensor([1.0 + 2**-9, 3.0], dtype=torch.float64)).tolist()
    [1.0, 3.0]
    """
    return values.to(torch.float32).to(torch.bfloat16).to(torch.float64)


def build_batch(labels: Sequence[int], scale: float, far: Sequence[Sequence[float]],
                near_same: Sequence[tuple[int, float] | None], near_other: Sequence[tuple[int, float] | None],
                population: str | None = None) -> Batch:
    """The deterministic construction behind both the check and :mod:`stablenca.testing.strategies`.

    ``far[i][j]`` (i < j used) in [1, FAR]; row i's ``near_same = (j, u)`` and
    ``near_other = (k, v)`` set ``u_ij = u_ji = u`` and ``u_ik = u_ki = v`` with u, v
    in [1, KAPPA] (later rows may overwrite earlier pairs, always with a value in
    [1, KAPPA], so every row keeps a nearest same and other distance in [s, KAPPA s]).
    Distances are ``quantize(scale · u)``.
    """
    labels = [int(v) for v in labels]
    rows = len(labels)
    u = np.ones((rows, rows))
    for i in range(rows):
        for j in range(i + 1, rows):
            u[i, j] = u[j, i] = far[i][j]
    for i in range(rows):
        for pair in (near_same[i], near_other[i]):
            if pair is not None:
                j, value = pair
                u[i, j] = u[j, i] = value
    np.fill_diagonal(u, 0.0)
    distances = quantize(torch.from_numpy(scale * u))
    counts = np.bincount(labels)
    if population is None:
        population = "singleton" if (counts == 1).any() else "paired"
    # Labels as 0..k-1 in order of first appearance (the losses index one-hot by label).
    return Batch(distances, torch.tensor(labels, dtype=torch.int64), float(scale), population)


def _labels(rng: np.random.Generator, rows: int, classes: int, singleton: bool) -> list[int]:
    if singleton:
        labels = [0] + [c for c in range(1, classes) for _ in range(2)]
        pool = list(range(1, classes))
    else:
        labels = [c for c in range(classes) for _ in range(2)]
        pool = list(range(classes))
    labels += [int(rng.choice(pool)) for _ in range(rows - len(labels))]
    rng.shuffle(labels)
    return labels


def random_batch(rng: np.random.Generator, scale: float, population: str = "paired",
                 rows: tuple[int, int] = ROWS, classes: tuple[int, int] = CLASSES) -> Batch:
    """A random batch at ``scale`` of the given population (see the module docstring)."""
    n_rows = int(rng.integers(rows[0], rows[1] + 1))
    n_classes = int(rng.integers(classes[0], classes[1] + 1))
    labels = _labels(rng, n_rows, n_classes, population == "singleton")
    far = rng.uniform(1.0, FAR, size=(n_rows, n_rows))
    near_same, near_other = [], []
    for i in range(n_rows):
        same = [j for j in range(n_rows) if j != i and labels[j] == labels[i]]
        other = [j for j in range(n_rows) if labels[j] != labels[i]]
        near_same.append((int(rng.choice(same)), float(rng.uniform(1.0, KAPPA))) if same else None)
        near_other.append((int(rng.choice(other)), float(rng.uniform(1.0, KAPPA))))
    return build_batch(labels, scale, far, near_same, near_other, population)


# --------------------------------------------------------------------------- one evaluation


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


def evaluate(formulation, batch: Batch, dtype, reference: ref.RefResult) -> Evaluation:
    """Run ``formulation`` on ``batch`` in ``dtype`` and measure it against ``reference``."""
    dtype = floats.as_dtype(dtype)
    loss, grad = run_formulation(formulation, batch, dtype)
    finite = bool(torch.isfinite(loss)) and bool(torch.isfinite(grad).all())
    loss_bits = ref.bits_of_error(loss, reference.loss, dtype)
    grad_bits = None
    if reference.grad is not None and reference.loss_finite:
        grad_bits = ref.gradient_bits_of_error(grad.numpy(), reference.grad, dtype)
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
                      vanished, bool(reasons), loss_failed, ", ".join(reasons))


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

    def to_dict(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        out["populations"] = {k: dataclasses.asdict(v) for k, v in self.populations.items()}
        return out


def summarise(loss: str, dtype: str, reference_label: str, evaluations: list[Evaluation]) -> CheckRow:
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
        _per_scale(paired),
    )


def _per_scale(paired: list[Evaluation]) -> list[dict[str, Any]]:
    """Median bits of error and the finite fraction at each scale of the sweep (population a)."""
    by_scale: dict[float, list[Evaluation]] = {}
    for evaluation in paired:
        by_scale.setdefault(evaluation.scale, []).append(evaluation)
    rows = []
    for scale, group in sorted(by_scale.items()):
        stats = PopulationStats.of(group)
        rows.append({"scale": scale, "loss_bits_median": stats.loss_bits_median,
                     "grad_bits_median": stats.grad_bits_median, "finite_fraction": stats.finite_fraction})
    return rows


# --------------------------------------------------------------------------- contract


_UNSET = "unset"


@dataclasses.dataclass
class Expectation:
    """One contract entry. ``breakdown``: a scale, or None for "none up to the top of the sweep"."""

    breakdown: float | None
    tolerance_factor: float
    max_loss_bits: float | None = None
    max_grad_bits: float | None = None
    loss_breakdown: float | None | str = _UNSET  # optional; _UNSET: not stated
    note: str = ""


@dataclasses.dataclass
class Contract:
    path: str
    tolerance_factor: float
    sweep: dict[str, Any]
    expect: dict[str, dict[str, Expectation]]

    @property
    def losses(self) -> list[str]:
        return list(self.expect)

    @property
    def dtypes(self) -> list[str]:
        seen: list[str] = []
        for per_dtype in self.expect.values():
            seen += [d for d in per_dtype if d not in seen]
        return [d for d in DEFAULT_DTYPES if d in seen]


@dataclasses.dataclass
class Violation:
    loss: str
    dtype: str
    field: str
    expected: Any
    measured: Any
    message: str


_SWEEP_KEYS = {"seed": int, "batches": int, "points_per_decade": int, "scale_min": float, "scale_max": float}
_ENTRY_KEYS = {"breakdown", "loss_breakdown", "tolerance_factor", "max_loss_bits", "max_grad_bits", "note"}


def _number(value, what: str, where: str, *, positive: bool = True) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or \
            (value <= 0 if positive else value < 0):
        raise ContractError(f"{where}: {what} must be a {'positive' if positive else 'non-negative'} number, "
                            f"not {value!r}", fix="see docs/check.md for the contract format")
    return float(value)


def load_contract(path: str | Path) -> Contract:
    """Read and validate a contract file; anything malformed raises :class:`ContractError`.

    ``path`` may be ``"default"`` for the shipped contract.
    """
    path = SHIPPED_CONTRACT if str(path) == "default" else Path(path)
    where = str(path)
    fix = "see docs/check.md for the contract format"
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise ContractError(f"contract file {where} does not exist", fix="check the path") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ContractError(f"contract file {where} cannot be read: {exc}", fix="check the path") from None
    except json.JSONDecodeError as exc:
        raise ContractError(f"contract file {where} is not valid JSON: {exc.msg} at line {exc.lineno}",
                            fix=fix) from None
    if not isinstance(data, dict) or not isinstance(data.get("expect"), dict) or not data["expect"]:
        raise ContractError(f"contract file {where} has no 'expect' object", fix=fix)
    unknown = set(data) - {"stablenca_contract", "tolerance_factor", "sweep", "expect", "threshold", "comment"}
    if unknown:
        raise ContractError(f"contract file {where} has unknown keys {sorted(unknown)}", fix=fix)
    if data.get("stablenca_contract", 1) != 1:
        raise ContractError(f"contract file {where} has version {data['stablenca_contract']!r}; this stablenca "
                            f"reads version 1", fix="upgrade stablenca or rewrite the contract")
    factor = _number(data.get("tolerance_factor", DEFAULT_TOLERANCE_FACTOR), "tolerance_factor", where)
    if factor < 1:
        raise ContractError(f"{where}: tolerance_factor must be >= 1, not {factor}", fix=fix)
    sweep = data.get("sweep", {})
    if not isinstance(sweep, dict) or set(sweep) - set(_SWEEP_KEYS):
        raise ContractError(f"{where}: 'sweep' must be an object with keys among {sorted(_SWEEP_KEYS)}", fix=fix)
    for key, kind in _SWEEP_KEYS.items():
        if key in sweep:
            value = sweep[key]
            if kind is int and (isinstance(value, bool) or not isinstance(value, int) or value < 0
                                or (key != "seed" and value < 1)):
                raise ContractError(f"{where}: sweep.{key} must be a {'non-negative' if key == 'seed' else 'positive'}"
                                    f" integer, not {value!r}", fix=fix)
            if kind is float:
                _number(value, f"sweep.{key}", where)
    expect: dict[str, dict[str, Expectation]] = {}
    for loss, per_dtype in data["expect"].items():
        if not isinstance(per_dtype, dict) or not per_dtype:
            raise ContractError(f"{where}: expect[{loss!r}] must be an object of dtypes", fix=fix)
        expect[loss] = {}
        for dtype, entry in per_dtype.items():
            here = f"{where}: expect[{loss!r}][{dtype!r}]"
            if dtype not in floats.DTYPE_NAMES:
                raise ContractError(f"{here}: unknown dtype", fix=f"use one of {', '.join(floats.DTYPE_NAMES)}")
            if not isinstance(entry, dict) or "breakdown" not in entry:
                raise ContractError(f"{here} must be an object with a 'breakdown' (a scale or \"none\")", fix=fix)
            if set(entry) - _ENTRY_KEYS:
                raise ContractError(f"{here} has unknown keys {sorted(set(entry) - _ENTRY_KEYS)}", fix=fix)
            scales = {}
            for key in ("breakdown", "loss_breakdown"):
                raw = entry.get(key, _UNSET)
                scales[key] = raw if raw is _UNSET else (None if raw is None or raw == "none"
                                                         else _number(raw, key, here))
            tolerance = _number(entry.get("tolerance_factor", factor), "tolerance_factor", here)
            if tolerance < 1:
                raise ContractError(f"{here}: tolerance_factor must be >= 1, not {tolerance}", fix=fix)
            bounds = {}
            for key in ("max_loss_bits", "max_grad_bits"):
                bounds[key] = None if entry.get(key) is None else _number(entry[key], key, here, positive=False)
            note = entry.get("note", "")
            if not isinstance(note, str):
                raise ContractError(f"{here}: note must be a string", fix=fix)
            expect[loss][dtype] = Expectation(scales["breakdown"], tolerance, bounds["max_loss_bits"],
                                              bounds["max_grad_bits"], scales["loss_breakdown"], note)
    return Contract(where, factor, dict(sweep), expect)


def _fmt_scale(value: float | None) -> str:
    return "none" if value is None else f"{value:.3g}"


def _scale_mismatch(what: str, expected: float | None, measured: float | None, reason: str, factor: float,
                    scale_max: float) -> str | None:
    why = f" ({reason})" if reason and measured is not None else ""
    if expected is None:
        return None if measured is None else \
            f"{what}: expected none up to {scale_max:.3g}, measured {measured:.3g}{why}"
    if measured is not None and expected / factor <= measured <= expected * factor:
        return None
    found = f"none up to {scale_max:.3g}" if measured is None else f"{measured:.3g}{why}"
    return f"{what}: expected {expected:.3g} (tolerance factor {factor:g}: {expected / factor:.3g}..{expected * factor:.3g}), " \
           f"measured {found}"


def judge(contract: Contract, rows: list[CheckRow], scale_max: float) -> list[Violation]:
    """Compare measured rows with the contract: one :class:`Violation` per mismatch."""
    violations = []
    for row in rows:
        expectation = contract.expect.get(row.loss, {}).get(row.dtype)
        if expectation is None:
            continue
        f = expectation.tolerance_factor
        checks = [("breakdown", "breakdown scale", expectation.breakdown, row.breakdown_scale, row.breakdown_reason)]
        if expectation.loss_breakdown is not _UNSET:
            checks.append(("loss_breakdown", "breakdown scale of the loss alone", expectation.loss_breakdown,
                           row.loss_breakdown_scale, ""))
        for field, what, expected, measured, reason in checks:
            message = _scale_mismatch(what, expected, measured, reason, f, scale_max)
            if message:
                violations.append(Violation(row.loss, row.dtype, field, "none" if expected is None else expected,
                                            measured, message))
        paired = row.populations["paired"]
        for field, bound, value in (("max_loss_bits", expectation.max_loss_bits, paired.loss_bits_max),
                                    ("max_grad_bits", expectation.max_grad_bits, paired.grad_bits_max)):
            if bound is not None and value is not None and value > bound:
                what = "loss" if field == "max_loss_bits" else "gradient"
                violations.append(Violation(row.loss, row.dtype, field, bound, value,
                                            f"max bits of error of the {what}: expected <= {bound:g}, "
                                            f"measured {value:.1f}"))
    return violations


# --------------------------------------------------------------------------- the check


@dataclasses.dataclass
class CheckReport:
    sweep: dict[str, Any]
    rows: list[CheckRow]
    seconds: float
    contract: Contract | None = None
    violations: list[Violation] = dataclasses.field(default_factory=list)
    unjudged: list[str] = dataclasses.field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.violations

    def row(self, loss: str, dtype: str) -> CheckRow:
        for row in self.rows:
            if row.loss == loss and row.dtype == dtype:
                return row
        raise KeyError((loss, dtype))

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "command": "check",
            "sweep": self.sweep,
            "populations": POPULATION_HELP,
            "results": [r.to_dict() for r in self.rows],
            "seconds": round(self.seconds, 2),
            "contract": None,
        }
        if self.contract is not None:
            out["contract"] = {"path": self.contract.path, "ok": self.ok,
                               "violations": [dataclasses.asdict(v) for v in self.violations],
                               "not_in_contract": self.unjudged}
        return out

    def format_table(self) -> str:
        s = self.sweep
        lines = [
            f"stablenca check: {s['n_scales']} scales {s['scale_min']:.0e}..{s['scale_max']:.0e} "
            f"({s['points_per_decade']}/decade), {s['batches']} batches per scale and population, seed {s['seed']}; "
            f"rows {s['rows'][0]}-{s['rows'][1]}, {s['classes'][0]}-{s['classes'][1]} classes; "
            f"nearest same/other distance of every row in [s, {s['kappa']}s]",
            f"breakdown: smallest scale where a batch in which every class has >= 2 members gives a non-finite "
            f"loss/gradient or more than {THRESHOLD:g} of the significand bits wrong "
            f"(bits = log2(1 + ulps), med/max over the sweep)",
            "",
            f"{'':<72}{'every class has >= 2 members (a)':<41}| {'a singleton class (b)'}",
            f"{'loss':<14}{'dtype':<10}{'reference':<20}{'breakdown scale (a)':<28}{'finite':>7} "
            f"{'loss bits':^11} {'grad bits':^11} {'vanished':>8} | {'finite':>6} {'loss bits':^11} "
            f"{'grad bits':^11}",
            f"{'':<79} {'med / max':^11} {'med / max':^11} {'':>8} | {'':>6} {'med / max':^11} {'med / max':^11}",
        ]
        lines = [line.rstrip() for line in lines]

        def bits(median, maximum):
            if median is None:
                return f"{'-':^11}"
            return f"{median:>5.1f}/{maximum:<5.1f}"

        for r in self.rows:
            a, b = r.populations["paired"], r.populations["singleton"]
            breakdown = "none" if r.breakdown_scale is None else f"{r.breakdown_scale:.3g} {r.breakdown_reason}"
            if len(breakdown) > 27:
                breakdown = breakdown[:26] + "~"
            lines.append(
                f"{_short_loss_name(r.loss):<14}{r.dtype:<10}{r.reference[:19]:<20}{breakdown:<28}{a.finite_fraction:>7.2f} "
                f"{bits(a.loss_bits_median, a.loss_bits_max)} {bits(a.grad_bits_median, a.grad_bits_max)} "
                f"{a.vanished_fraction:>8.2f} | {b.finite_fraction:>6.2f} {bits(b.loss_bits_median, b.loss_bits_max)} "
                f"{bits(b.grad_bits_median, b.grad_bits_max)}".rstrip())
        lines.append(f"({self.seconds:.1f}s)")
        if self.contract is not None:
            lines.append("")
            if self.ok:
                lines.append(f"contract {self.contract.path}: OK")
            else:
                lines.append(f"contract {self.contract.path}: {len(self.violations)} violation(s)")
                for v in self.violations:
                    lines.append(f"  - {v.loss} x {v.dtype}: {v.message}")
            for item in self.unjudged:
                lines.append(f"  (not in the contract, measured only: {item})")
        return "\n".join(lines)


def _short_loss_name(spec: str, width: int = 13) -> str:
    """A table-width name: a file or module spec shows as ``stem:function``."""
    if losses.is_user_spec(spec):
        module, _, function = spec.rpartition(":")
        spec = f"{module.replace(chr(92), '/').rsplit('/', 1)[-1].removesuffix('.py').rsplit('.', 1)[-1]}:{function}"
    return spec if len(spec) <= width else spec[: width - 1] + "…"


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
    rows = [summarise(formulations[k].name, dtype, references[k].describe(dps), evaluations[(k, dtype)])
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
                for k, (formulation, reference) in enumerate(zip(formulations, references)):
                    result = ref.compute_reference(reference, batch.distances, batch.labels, batch.labels,
                                                   batch.self_mask, dps=dps, mp_inputs=mp_inputs)
                    for dtype in dtypes:
                        evaluations[(k, dtype)].append(evaluate(formulation, batch, dtype, result))
    return evaluations
