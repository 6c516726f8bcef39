"""Counterfactual replays: is the blamed op's rounding really what made the step fail?

The tracer names the first non-finite op and walks back to a precursor. That is a story
built from what happened; a numerical analyst asks for the counterfactual. Following
Herbie's *local error* (evaluate one op exactly, everything else as is), FPDebug's *shadow
execution* in higher precision and Precimonious' *precision tuning by search* (see
``ANCHORS.md``), this module replays the same step several times:

* **float64 reference**: the whole step in float64 from the same (working-dtype) inputs and
  parameters. It gives the *exact value* (to float64 accuracy) of the failing quantity: the
  loss for a forward failure, the autograd node's gradient for a backward one.
* **injection** (per candidate): the float64 step, with only the candidate's output rounded
  to the working dtype (a backward node: every op inside it). If that run fails, or the
  failing quantity leaves the working dtype's range, the candidate's rounding suffices.
* **promotion with cast-back** (per candidate): the working-dtype step, with only the
  candidate computed in float64 and its result cast back to the working dtype before any
  consumer sees it (for a backward node the autograd engine casts the node's gradients back
  to the dtype it recorded). If that run is finite, computing this op exactly is enough.
  Without the cast-back, type promotion would carry float64 into every downstream op and
  prove nothing about the op itself.

A candidate is ``confirmed`` when its injection fails or its promotion succeeds, else
``present, not causal``. When the float64 reference fails too, the working dtype's rounding is not to blame
(``float64 fails too``: a pole, an empty set, a domain error, or a range float64 lacks too). Finally, the **promotion search** looks
for a smallest set of units (forward ops and backward nodes) that, promoted with cast-back,
make the step finite: first each candidate alone, then delta debugging (ddmin) over every
unit of the step.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from typing import Any

import torch

from .calls import _loss_tensor, trace_call
from .replay import _REFERENCE, Forward, _replay, _replays  # noqa: F401  (_replay: tests and bench)
from .units import unit_label

__all__ = ["VERDICTS", "Verification", "verify_call", "verify_step", "apply_verification"]

#: The values of a candidate's ``verdict``.
VERDICTS = ("confirmed", "present, not causal", "float64 fails too")


@dataclasses.dataclass
class Verification:
    """What the counterfactual replays showed (see the module docstring); ``to_dict()`` is JSON."""

    working_dtype: str
    quantity: str  # "loss" or "gradient from DivBackward0 (backward)"
    reference_finite: bool  # the float64 replay is finite and within the working range
    exact_value: float | None  # max |value| of the failing quantity, float64, where it failed
    representable: bool  # exact_value is finite and within the working dtype's range
    candidates: list[dict[str, Any]]
    promotion_set: list[str] | None  # labels of a smallest unit set found; None: none found
    promotion_minimal: bool  # 1-minimal (no unit of the set can be dropped)
    promotion_tests: int
    replays: int
    statement: str

    def verdict(self, unit) -> str | None:
        for c in self.candidates:
            if c["unit"] == list(unit):
                return c["verdict"]
        return None

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        if d["exact_value"] is not None and not math.isfinite(d["exact_value"]):
            d["exact_value"] = "Infinity" if d["exact_value"] > 0 else "NaN"
        return d


def verify_step(forward: Forward, finding, *, working: torch.dtype, max_tests: int = 32) -> Verification:
    """Replay ``forward`` counterfactually for ``finding``'s first op and its chain's precursors."""
    replays = 0

    def replay(dtype, how=None, units=()):
        nonlocal replays
        replays += 1
        return _replay(forward, dtype, working, target, how, units, stop_early=True)

    target = finding.unit if (finding.unit and finding.unit[0] == "backward") else None
    units = _candidate_units(finding)
    backward_units = [u for u, _ in units if u[0] == "backward"]

    def shared(dtype, how, plain_first):
        """Plain forward; backward passes for each backward candidate (and a plain one first)."""
        nonlocal replays
        passes = ([(None, (), True)] if plain_first else []) + [(how, [u], True) for u in backward_units]
        replays += len(passes)
        outs = _replays(forward, dtype, working, target, None, (), passes) if passes else []
        return (outs[0] if plain_first else None), dict(zip(backward_units, outs[1:] if plain_first else outs))

    ref, injected_b = shared(_REFERENCE, "inject", True)
    candidates, seen, where = [], None, None
    promoted_b = shared(working, "promote", False)[1] if ref.finite else {}
    for unit, role in units:
        entry = {"unit": list(unit), "label": unit_label(unit), "role": role}
        if not ref.finite:
            entry.update(injection_fails=None, promotion_fixes=None, verdict="float64 fails too")
        else:
            injected = injected_b.get(unit) or replay(_REFERENCE, "inject", [unit])
            promoted = promoted_b.get(unit) or replay(working, "promote", [unit])
            seen = seen or promoted.seen
            if where is None and list(unit) == list(finding.unit or ()) and injected.quantity is not None \
                    and ref.quantity is not None and injected.quantity.shape == ref.quantity.shape:
                where = ~torch.isfinite(injected.quantity)  # the first op's own failure, placed in float64
            entry["injection_fails"] = not injected.finite
            entry["promotion_fixes"] = promoted.finite
            entry["verdict"] = "confirmed" if (entry["injection_fails"] or entry["promotion_fixes"]) \
                else "present, not causal"
        candidates.append(entry)
    exact = None
    if ref.quantity is not None and ref.quantity.numel():
        picked = ref.quantity[where] if where is not None and bool(where.any()) else ref.quantity
        exact = float(picked.abs().max()) if bool(torch.isfinite(picked).all()) else math.inf
    limit = torch.finfo(working).max
    representable = exact is not None and exact <= limit
    quantity = "loss" if target is None else f"gradient from {unit_label(target)}"

    promotion, minimal, tests = None, False, 0
    if ref.finite:  # (the working-dtype step failed: that is why there is a finding)
        promotion, minimal, tests = _promotion_search(
            lambda units: replay(working, "promote", units).finite, candidates,
            seen if seen is not None else replay(working).seen, max_tests)
    wd = str(working).replace("torch.", "")
    statement = _statement(wd, quantity, ref.finite, exact, representable, candidates, promotion)
    return Verification(wd, quantity, ref.finite, exact, representable, candidates,
                        [unit_label(u) for u in promotion] if promotion is not None else None, minimal, tests,
                        replays, statement)


def _candidate_units(finding) -> list[tuple[tuple, str]]:
    """The first non-finite op, then each precursor link of the chain (root cause last)."""
    out: list[tuple[tuple, str]] = []
    if finding.unit:
        out.append((tuple(finding.unit), "first non-finite op"))
    for link in finding.chain[1:]:
        if link.unit and link.kind in ("underflow", "overflow", "cancellation", "empty_set"):
            unit = tuple(link.unit)
            if all(unit != u for u, _ in out):
                out.append((unit, f"{link.kind} precursor"))
    return out


def _promotion_search(fixes: Callable[[list[tuple]], bool], candidates, units: list[tuple],
                      max_tests: int) -> tuple[list[tuple] | None, bool, int]:
    """A smallest set of units whose promotion makes the step finite (candidates first, then ddmin)."""
    tests = 0
    for c in candidates:  # a single unit that suffices is minimal: the empty set fails
        if c.get("promotion_fixes"):
            return [tuple(c["unit"])], True, tests
    tests += 1
    if not fixes(units):
        return None, False, tests
    current, n = list(units), 2
    while len(current) >= 2 and tests < max_tests:
        chunk = math.ceil(len(current) / n)
        subsets = [current[i:i + chunk] for i in range(0, len(current), chunk)]
        reduced = False
        for subset in subsets:  # ddmin: try each subset, then each complement
            tests += 1
            if fixes(subset):
                current, n, reduced = subset, 2, True
                break
            if tests >= max_tests:
                break
        if not reduced and tests < max_tests and n > 2:
            for subset in subsets:
                complement = [u for u in current if u not in subset]
                tests += 1
                if fixes(complement):
                    current, n, reduced = complement, max(n - 1, 2), True
                    break
                if tests >= max_tests:
                    break
        if not reduced:
            if n >= len(current):
                return current, True, tests
            n = min(len(current), 2 * n)
    return current, len(current) == 1, tests


def _statement(dtype, quantity, ref_finite, exact, representable, candidates, promotion) -> str:
    if not ref_finite and exact is not None and math.isfinite(exact) and not representable:
        return (f"the exact {quantity} ({exact:.3g}, float64 replay) is beyond {dtype}'s range: no evaluation order "
                f"in {dtype} can hold it, so the fix is a rescaling or log space, not a rewrite of the order")
    if not ref_finite:
        return (f"the float64 replay fails too, so the failure is not an artifact of {dtype} rounding: a pole, an "
                f"empty set or a domain error of the formula, or a range that float64 lacks as well")
    value = f"{exact:.3g}" if exact is not None and math.isfinite(exact) else "not finite"
    parts = []
    if representable:
        parts.append(f"the exact {quantity} is finite ({value}, float64 replay) and representable in {dtype}: "
                     f"the failure is an artifact of how the arithmetic is ordered, and the fix is a rewrite "
                     f"(e.g. log-space), not an epsilon")
    else:
        parts.append(f"the exact {quantity} ({value}, float64 replay) is beyond {dtype}'s range")
    if promotion is None:
        parts.append(f"no set of ops computed in float64 and cast back to {dtype} makes the step finite: the "
                     f"intermediate values themselves leave {dtype}'s range, so only a rewrite helps")
    confirmed = [c["label"] for c in candidates if c["verdict"] == "confirmed"]
    present = [c["label"] for c in candidates if c["verdict"] == "present, not causal"]
    if confirmed:
        parts.append("confirmed: " + ", ".join(confirmed))
    if present:
        parts.append("present, not causal: " + ", ".join(present))
    if promotion:
        enough = ", ".join(unit_label(u) for u in promotion)
        text = f"computing {enough} in float64 is enough"
        not_enough = [c["label"] for c in candidates if c.get("promotion_fixes") is False
                      and tuple(c["unit"]) not in promotion]
        if not_enough:
            text += "; promoting " + " or ".join(not_enough) + " is not"
        parts.append(text)
    return "; ".join(parts)


def apply_verification(finding, verification: Verification) -> None:
    """Attach the verdicts to ``finding`` and restate its root cause when the replays overturn it.

    When the first non-finite op is confirmed, the exact failing quantity is representable, and
    the traced root cause is ``present, not causal`` (or is that op's own overflow), the root
    cause becomes that op's ``evaluation_order`` (the traced one is kept under
    ``root_cause["traced"]``).
    """
    finding.verification = verification.to_dict()
    root = dict(finding.root_cause)
    root.pop("traced", None)
    root_unit = next((link.unit for link in reversed(finding.chain)
                      if link.unit and link.op == root.get("op") and link.kind == root.get("kind")), None)
    first = verification.verdict(finding.unit) if finding.unit else None
    traced = verification.verdict(root_unit) if root_unit else None
    overturned = traced == "present, not causal" or (root.get("op") == finding.op and root.get("kind") == "overflow")
    if overturned and first == "confirmed" and verification.representable:
        value = f"{verification.exact_value:.3g}"
        detail = (f"{unit_label(finding.unit)} makes ±inf/NaN in {verification.working_dtype} although the exact "
                  f"{verification.quantity} is finite ({value}, float64 replay): an intermediate of the op's "
                  f"evaluation order leaves the range")
        if root.get("op") != finding.op:
            detail += f"; the {root['kind']} at {root['op']} was present, not causal"
        finding.root_cause = {
            "op": finding.op, "kind": "evaluation_order", "verdict": "confirmed", "detail": detail,
            "traced": root,
        }
    else:
        verdict = traced or first
        if verdict is not None:
            root["verdict"] = verdict
        finding.root_cause = root


def verify_call(fn: Callable, *args, finding=None, **kwargs) -> tuple[Any, Verification | None]:
    """Trace ``fn(*args)`` (loss, then backward) and verify its finding; ``(finding, verification)``.

    Floating tensor arguments are the step's inputs: each replay casts them to its dtype and,
    where they require grad, counts their gradients.
    """
    if finding is None:
        finding = trace_call(fn, *args, **kwargs).finding
    if finding is None:
        return None, None
    floats = [a for a in args if isinstance(a, torch.Tensor) and a.is_floating_point()]
    working = floats[0].dtype if floats else torch.get_default_dtype()

    def forward(dtype):
        leaves = []
        cast = []
        for a in args:
            if isinstance(a, torch.Tensor) and a.is_floating_point():
                t = a.detach().to(dtype).requires_grad_(a.requires_grad)
                leaves.append(t)
                cast.append(t)
            else:
                cast.append(a)
        loss = _loss_tensor(fn(*cast, **kwargs))
        return loss, [t for t in leaves if t.requires_grad]

    verification = verify_step(forward, finding, working=working)
    apply_verification(finding, verification)
    return finding, verification
