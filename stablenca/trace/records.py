"""The tracer's records: :class:`Finding`, :class:`ChainLink`, :class:`Precursor`,
:class:`TraceResult`, the root-cause vocabulary and the tensor statistics they carry."""

from __future__ import annotations

import dataclasses
import linecache
import math
import os
from typing import Any

import torch

from ..floats import exp_underflow_overflow as _exp_limits  # noqa: F401  (the tracer's name)
from ..floats import significand_bits as _significand_bits  # noqa: F401
from ..records import json_safe

__all__ = ["ROOT_CAUSE_KINDS", "PRECURSOR_KINDS", "ChainLink", "Finding", "Precursor", "TraceResult",
           "tensor_stats"]

_INF = math.inf

#: Every value ``Finding.root_cause["kind"]`` can take.
ROOT_CAUSE_KINDS = (
    "underflow",
    "overflow",
    "cancellation",
    "empty_set",
    "nonfinite_input",
    "domain",
    "division_by_zero",
    "pole",
    "evaluation_order",
    "unknown",
)
#: Kinds a :class:`Precursor` can have (finite results that are silently wrong).
PRECURSOR_KINDS = ("underflow", "overflow", "cancellation", "empty_set")


def _dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).replace("torch.", "")


_TINY: dict[torch.dtype, float] = {}


def _tiny(dtype: torch.dtype) -> float:
    v = _TINY.get(dtype)
    if v is None:
        v = _TINY[dtype] = torch.finfo(dtype).tiny
    return v


_SMALLV: dict[torch.dtype, float] = {}


def _small(dtype: torch.dtype) -> float:
    """1/sqrt(finfo.max): a divisor below it multiplies by more than sqrt(finfo.max).

    float32: 5.42e-20, float64: 7.46e-155, float16: 3.91e-3, bfloat16: 5.42e-20.
    """
    v = _SMALLV.get(dtype)
    if v is None:
        v = _SMALLV[dtype] = 1.0 / math.sqrt(torch.finfo(dtype).max)
    return v


def tensor_stats(t: torch.Tensor) -> dict[str, Any]:
    """Shape, dtype and value statistics of a tensor that survive NaN/Inf.

    ``min``/``max`` are over the finite elements (``None`` when there are none); the
    counts ``zeros``, ``negative`` (finite), ``nan``, ``posinf`` and ``neginf`` are disjoint;
    ``subnormal`` counts the non-zero finite values below the smallest normal number.

    >>> tensor_stats(torch.tensor([0.0, -1.0, float("nan"), float("inf")]))["nan"]
    1
    """
    with torch.no_grad():
        x = t.detach()
        out: dict[str, Any] = {"shape": list(x.shape), "dtype": _dtype_name(x.dtype), "numel": x.numel()}
        empty = {"min": None, "max": None, "zeros": 0, "negative": 0, "nan": 0, "posinf": 0, "neginf": 0,
                 "subnormal": 0}
        if x.numel() == 0 or x.is_complex() or x.layout != torch.strided or x.device.type == "meta":
            out.update(empty)
            return out
        if x.dtype == torch.bool:
            n_true = int(x.sum())
            out.update(empty)
            out.update({"min": 0.0 if n_true < x.numel() else 1.0, "max": 1.0 if n_true else 0.0,
                        "zeros": x.numel() - n_true})
            return out
        if not x.is_floating_point():
            lo, hi = torch.aminmax(x)
            out.update(empty)
            out.update({"min": float(lo), "max": float(hi), "zeros": int((x == 0).sum()),
                        "negative": int((x < 0).sum())})
            return out
        finite = torch.isfinite(x)
        tiny = torch.finfo(x.dtype).tiny
        counts = torch.stack([
            (x == 0).sum(), (x < 0).sum(), torch.isnan(x).sum(), (x == _INF).sum(), (x == -_INF).sum(),
            ((x != 0) & (x.abs() < tiny)).sum(), finite.sum(),
        ]).tolist()
        if counts[6]:
            lo, hi = torch.aminmax(x[finite])
            lo, hi = float(lo), float(hi)
        else:
            lo = hi = None
        out.update({"min": lo, "max": hi, "zeros": counts[0], "negative": counts[1] - counts[4], "nan": counts[2],
                    "posinf": counts[3], "neginf": counts[4], "subnormal": counts[5]})
        return out


_json_safe = json_safe  # one implementation, in stablenca.records


def _n(n: int, word: str) -> str:
    return f"{n} {word}" if n == 1 else f"{n} {word}s"


def _fmt(x: float) -> str:
    if x is None:
        return "-"
    if x == 0 or (1e-3 <= abs(x) < 1e5):
        return f"{x:.4g}"
    return f"{x:.3g}"


def _stats_line(s: dict[str, Any] | None) -> str:
    if not s:
        return "(freed)"
    head = f"{s.get('dtype', '?')}{s.get('shape', '?')}"
    if "min" not in s:
        return head
    parts = [f"min {_fmt(s['min'])}", f"max {_fmt(s['max'])}", f"zeros {s['zeros']}", f"negative {s['negative']}"]
    for key in ("nan", "posinf", "neginf", "subnormal"):
        if s.get(key):
            parts.append(f"{key} {s[key]}")
    return f"{head} " + ", ".join(parts)


def _format_source(src: tuple[str, int] | None) -> str | None:
    if src is None:
        return None
    filename, lineno = src
    code = linecache.getline(filename, lineno).strip()
    shown = filename
    try:
        rel = os.path.relpath(filename)
        if not rel.startswith(".."):
            shown = rel
    except ValueError:
        pass
    return f"{shown}:{lineno}  {code}" if code else f"{shown}:{lineno}"




@dataclasses.dataclass
class ChainLink:
    """One op of the root-cause chain (first link: the first non-finite op)."""

    op: str
    phase: str
    detail: str
    stats: dict[str, Any] | None = None
    kind: str | None = None  # a precursor kind, "mask", "allowed_inf", "input", or None (carried; tiny values)
    backward_node: str | None = None
    module: str | None = None
    source: str | None = None
    unit: list | None = None  # [phase, op packet or autograd node, occurrence]: stablenca.trace.units

    @property
    def short(self) -> str:
        if self.op == "input":
            return "input"
        parts = self.op.split(".")
        return parts[1] if len(parts) > 1 else self.op

    def __str__(self) -> str:
        name = self.short
        if self.kind in PRECURSOR_KINDS:
            name = f"{name} {self.kind}"
        return f"{name} ({self.detail})" if self.detail else name

    def to_dict(self) -> dict[str, Any]:
        return _json_safe(dataclasses.asdict(self))


@dataclasses.dataclass
class Precursor:
    """A finite result that is silently wrong (underflow, overflow, cancellation, empty set)."""

    kind: str
    op: str
    phase: str
    detail: str
    count: int
    index: int  # position of the op in the traced sequence (first occurrence)
    backward_node: str | None = None
    module: str | None = None
    source: str | None = None
    occurrences: int = 1

    def __str__(self) -> str:
        where = f" at {self.source}" if self.source else ""
        times = f" (×{self.occurrences})" if self.occurrences > 1 else ""
        return f"{self.kind} in {self.op} ({self.phase}){where}: {self.detail}{times}"

    def to_dict(self) -> dict[str, Any]:
        return _json_safe(dataclasses.asdict(self))


@dataclasses.dataclass
class Finding:
    """The first op that produced NaN/Inf from finite values, and why.

    ``to_dict()`` is JSON-safe: non-finite floats are written as the strings ``"NaN"``,
    ``"Infinity"`` and ``"-Infinity"``, so ``json.dumps(d, allow_nan=False)`` works and
    ``json.loads(json.dumps(d)) == d``.
    """

    op: str
    phase: str
    backward_node: str | None
    module: str | None
    source: str | None
    inputs: list[dict[str, Any]]
    output: dict[str, Any]
    pattern: str
    detail: str
    chain: list[ChainLink]
    root_cause: dict[str, str]
    precursors: list[Precursor]
    index: int = 0
    unit: list | None = None  # the first non-finite op's unit (stablenca.trace.units)
    #: the counterfactual replays' verdicts (stablenca.trace.verify.Verification.to_dict()), or None
    verification: dict[str, Any] | None = None

    @property
    def short(self) -> str:
        parts = self.op.split(".")
        return parts[1] if len(parts) > 1 else self.op

    def chain_text(self) -> str:
        """The chain on one line, first non-finite op first: ``div (...) ← sum (...) ← ...``."""
        return " ← ".join(str(link) for link in self.chain)

    def __str__(self) -> str:
        lines = [self.chain_text()]
        where = f"{self.phase}" + (f" in {self.backward_node}" if self.backward_node else "")
        lines.append(f"first non-finite: {self.op} ({where})"
                     + (f", module {self.module}" if self.module else ""))
        if self.source:
            lines.append(f"  at {self.source}")
        lines.append(f"pattern: {self.detail}")
        rc = self.root_cause
        verdict = f" [{rc['verdict']}]" if rc.get("verdict") else ""
        lines.append(f"root cause: {rc['kind']} at {rc['op']}{verdict}: {rc['detail']}")
        if self.verification and self.verification.get("status") == "not run":
            lines.append(f"verification: not run, {self.verification['reason']}")
        elif self.verification:
            lines.append(f"verified by counterfactual replay: {self.verification['statement']}")
        for s in self.inputs:
            lines.append(f"  input {s.get('arg', '?')}: {_stats_line(s)}")
        lines.append(f"  output: {_stats_line(self.output)}")
        for link in self.chain[1:]:
            if link.source:
                lines.append(f"  {link.short} at {link.source}")
        if self.precursors:
            lines.append(f"precursors ({len(self.precursors)}):")
            lines.extend(f"  {p}" for p in self.precursors[:10])
        return "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        d = {
            "op": self.op,
            "short": self.short,
            "phase": self.phase,
            "backward_node": self.backward_node,
            "module": self.module,
            "source": self.source,
            "index": self.index,
            "pattern": self.pattern,
            "detail": self.detail,
            "inputs": self.inputs,
            "output": self.output,
            "chain": [link.to_dict() for link in self.chain],
            "chain_text": self.chain_text(),
            "root_cause": dict(self.root_cause),
            "precursors": [p.to_dict() for p in self.precursors],
            "unit": self.unit,
            "verification": self.verification,
        }
        return _json_safe(d)


@dataclasses.dataclass
class TraceResult:
    """What :func:`trace_call` saw: the value, the first finding (or None) and precursors.

    ``bool(result)`` is True when something non-finite happened.
    """

    value: Any
    finding: Finding | None
    findings: list[Finding]
    precursors: list[Precursor]
    precursors_dropped: int = 0

    def __bool__(self) -> bool:
        return self.finding is not None

    def to_dict(self) -> dict[str, Any]:
        return _json_safe({
            "finding": None if self.finding is None else self.finding.to_dict(),
            "findings": [f.to_dict() for f in self.findings],
            "precursors": [p.to_dict() for p in self.precursors],
            "precursors_dropped": self.precursors_dropped,
        })
