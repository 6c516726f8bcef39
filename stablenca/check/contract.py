"""The stability contract: what a committed JSON file expects of each formulation × dtype, and the judge.

The shipped contract's numbers are derived, not measured: the ratio family's breakdown windows from
the exp limits (:func:`stablenca.check.theory_window`), ModernNCA's gradient breakdown and every
``max_*_bits`` from an error analysis evaluated on the sweep's seeded batches
(:mod:`stablenca.check.bounds`); its ``comment`` gives the derivations, tests/test_check.py recomputes them.
"""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path
from typing import Any

from .. import floats
from ..errors import ContractError
from .measure import CheckRow

#: The contract's default tolerance: a measured breakdown within [expected / f, expected × f] passes.
#: 1.5 covers the grid point that reports a breakdown anywhere in the ratio's theory windows
#: (f >= 1.48 for float32; the derivation is in the shipped contract's comment).
DEFAULT_TOLERANCE_FACTOR = 1.5
SHIPPED_CONTRACT = Path(__file__).parent.parent / "contracts" / "default.json"


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
        return [d for d in floats.DTYPE_NAMES if d in seen]


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
