"""Checking a case: measure it in the given dtypes (:func:`check_case`, a JSON-safe dict) and
lay the result out for a human (:func:`format_case_table`, a string). Printing and the exit
code belong to ``stablenca check --case`` (:mod:`stablenca.commands.check`).

>>> result = check_case("ce_on_probabilities", ["float32"])
>>> result["ok"], result["results"][0]["warnings"][0]["kind"]
(True, 'probability_inputs')
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .. import floats
from .. import reference as ref
from . import get_case, run_case
from .plots import plot_case

#: The dtypes a case is checked in without --dtype.
DEFAULT_DTYPES = ("float32", "float64")


def check_case(name: str, dtypes: Sequence[str] | None = None, *, figures: str | Path | None = None,
               dps: int = ref.DEFAULT_DPS) -> dict[str, Any]:
    """Run case ``name`` in every dtype; a JSON-safe dict (``ok``: documented behaviour reproduced).

    With ``figures`` (a directory), also write ``case-<name>.png`` there (see
    :func:`stablenca.cases.plots.plot_case`).
    """
    case = get_case(name)
    dtypes = [floats.dtype_name(d) for d in (dtypes or DEFAULT_DTYPES)]
    started = time.perf_counter()
    runs = [run_case(name, dtype, dps=dps) for dtype in dtypes]
    result: dict[str, Any] = {
        "command": "check",
        "case": case.name,
        "title": case.title,
        "description": case.description,
        "family": case.family,
        "domain": case.domain.to_dict(),
        "reference": f"mpmath ({dps} digits)",
        "expected_root_cause": case.expected_root_cause,
        "expected_warning": case.expected_warning,
        "silent": case.silent or None,
        "fix": case.fix,
        "results": [run.to_dict() for run in runs],
        "ok": all(run.ok for run in runs),
        "figure": None,
    }
    if figures is not None:
        result["figure"] = str(plot_case(runs, Path(figures) / f"case-{case.name}.png"))
    result["seconds"] = round(time.perf_counter() - started, 2)
    return result


def _bits(median, maximum) -> str:
    if not isinstance(median, (int, float)) or not isinstance(maximum, (int, float)):
        return f"{'-':^11}"
    return f"{median:>5.1f}/{maximum:<5.1f}"


def _ranges_text(ranges: list[list[float]]) -> str:
    parts = []
    for lo, hi in ranges[:3]:
        parts.append(f"{lo:.3g}" if lo == hi else f"[{lo:.3g}, {hi:.3g}]")
    if len(ranges) > 3:
        parts.append(f"+{len(ranges) - 3} more")
    return ", ".join(parts)


def _verdict(flag) -> str:
    return {True: "OK", False: "FAILED", None: "measured only"}[flag]


def format_case_table(result: dict[str, Any]) -> str:
    """A human summary of :func:`check_case`'s result (what ``stablenca check --case`` prints)."""
    lines = [
        f"stablenca check --case {result['case']}: {result['title']}",
        f"sweep: {result['domain']['text']}; family: {result['family']}",
        f"reference: {result['reference']}; bits of error = log2(1 + ulps of the correctly rounded reference)"
        + (f", values below {result['results'][0]['floor']:g} in ulps of {result['results'][0]['floor']:g}"
           if result["results"] and result["results"][0]["floor"] else ""),
        "",
        f"{'form':<9}{'dtype':<9}{'finite':>7} {'value bits':^11} {'grad bits':^11} {'vanished':>8}  "
        f"where it breaks (x)",
        f"{'':<25} {'med / max':^11} {'med / max':^11}",
    ]
    for run in result["results"]:
        for name, form in run["forms"].items():
            where = []
            if form["nonfinite_value"]:
                where.append("value non-finite " + _ranges_text(form["nonfinite_value"]))
            if form["nonfinite_grad"]:
                where.append("grad non-finite " + _ranges_text(form["nonfinite_grad"]))
            if not where and form["broken_value"]:
                where.append(f"value > {run['threshold_bits']:g} bits " + _ranges_text(form["broken_value"]))
            if not where and form["broken_grad"]:
                where.append(f"grad > {run['threshold_bits']:g} bits " + _ranges_text(form["broken_grad"]))
            lines.append(
                f"{name:<9}{run['dtype']:<9}{form['finite_fraction']:>7.2f} "
                f"{_bits(form['value_bits_median'], form['value_bits_max'])} "
                f"{_bits(form['grad_bits_median'], form['grad_bits_max'])} {form['vanished_fraction']:>8.2f}  "
                f"{'; '.join(where) or 'nowhere'}".rstrip())
    lines.append("")
    for run in result["results"]:
        naive = run["traces"]["naive"]
        expected = run["expected_root_cause"]
        if naive["input"] is None:
            continue
        if naive["finding"] is None:
            lines.append(f"tracer, naive form, {run['dtype']} at x = {naive['input']:g}: no NaN/Inf "
                         f"(value {naive['value']:.6g}, gradient {naive['grad']:.6g})"
                         f" (expected: {expected or 'none'}: {_verdict(run['root_cause_ok'])})")
        else:
            lines.append(f"tracer, naive form, {run['dtype']} at x = {naive['input']:g}: {naive['chain_text']}")
            lines.append(f"  root cause {naive['root_cause']} (expected {expected}: "
                         f"{_verdict(run['root_cause_ok'])})")
        for name, trace in run["traces"].items():
            if name in ("naive", "fixed") or trace["input"] is None:
                continue
            if trace["finding"] is None:
                lines.append(f"  {name}: no NaN/Inf (value {trace['value']:.6g}, gradient {trace['grad']:.6g})")
            elif trace.get("nan_surfaces_in") == "backward":
                lines.append(f"  {name}: value finite ({trace['value']:.6g}) but gradient {trace['grad']}: the "
                             f"{trace['phase']} {trace['op']} ({trace['root_cause']}) in the branch `where` did "
                             f"not select comes back in backward as 0 * inf")
            else:
                lines.append(f"  {name}: {trace['chain_text']}")
    precursor_runs = [run for run in result["results"] if run["precursors"]]
    for run in precursor_runs:
        lines.append(f"precursors of the naive form, {run['dtype']}:")
        lines.extend(f"  {p}" for p in run["precursors"][:4])
    if result["silent"]:
        lines.append(f"silent failure: {result['silent']}")
    for run in result["results"]:
        for warning in run["warnings"]:
            lines.append(f"loss-input warning ({run['dtype']}): {warning['loss']}: {warning['message']}")
        if run["expected_warning"] is not None:
            lines.append(f"  expected warning {run['expected_warning']}: {_verdict(run['warning_ok'])}")
    lines.append(f"fix: {result['fix']}")
    for run in result["results"]:
        budget = run["budget"]
        fixed = run["forms"]["fixed"]
        stated = "no stated budget" if budget is None else \
            f"budget value <= {budget['value_bits']:g}, gradient <= {budget['grad_bits']:g} bits"
        lines.append(f"fixed form, {run['dtype']}: max {fixed['value_bits_max']:.1f} bits (value), "
                     f"{fixed['grad_bits_max']:.1f} bits (gradient); {stated}: {_verdict(run['fixed_ok'])}")
    if result.get("figure"):
        lines.append(f"figure: {result['figure']}")
    lines.append(f"{'OK' if result['ok'] else 'NOT AS DOCUMENTED'} ({result.get('seconds', 0):.1f}s)")
    return "\n".join(lines)
