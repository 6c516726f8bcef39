"""``report.md`` and ``report.zh.md`` of a ``stablenca diagnose`` output, from the records alone.

:func:`build_report` reads ``summary.json`` and every ``<run>/records.jsonl`` (and
``finding.json``, ``result.json``), draws the figures (:mod:`stablenca.plots`) and
writes the English and the Chinese report, atomically. Nothing is retrained.

How the two languages stay the same: :func:`extract` pulls every number from the
run into one :class:`Doc` (a list of blocks whose parameters are already formatted
strings); :func:`render` fills the English or the Chinese template of each block
with those same strings. A number therefore exists once, and no template holds a
number of its own that the other lacks (``tests/test_report.py`` checks both).
"""

from __future__ import annotations

import dataclasses
import math
import string
from pathlib import Path
from typing import Any

from .plots import (
    FIGURES_DIR,
    Figure,
    RunData,
    RunSet,
    check_curves,
    load_check,
    load_run_set,
    num,
    plot_all,
)
from .floats import exp_limits, facts
from .losses import RATIO_EPS, REGISTRY, is_stable
from .records import atomic_write_text

REPORT_NAMES = {"en": "report.md", "zh": "report.zh.md"}


# --------------------------------------------------------------------------- numbers


def fmt(value: Any) -> str:
    """One spelling of a number for both languages.

    >>> [fmt(x) for x in (3, 0.5538277, -4.013765, 1.2107e-27, 254950.8, float("nan"), float("inf"), 0.0)]
    ['3', '0.5538', '-4.014', '1.21e-27', '2.55e+05', 'NaN', 'inf', '0']
    """
    if value is None:
        return "—"
    if isinstance(value, bool):
        return str(int(value))
    if isinstance(value, int):
        return str(value)
    from .plots import format_number

    return format_number(value, small_digits=3)


def _step_of(record: dict[str, Any]) -> int | None:
    step = record.get("step")
    return int(step) if isinstance(step, (int, float)) and math.isfinite(step) else None


def first_where(run: RunData, key: str, predicate=lambda v: v > 0) -> dict[str, Any] | None:
    """The first record whose ``key`` is finite and satisfies ``predicate``."""
    for record in run.records:
        value = num(record.get(key))
        if math.isfinite(value) and predicate(value):
            return record
    return None


def extreme(run: RunData, key: str, *, largest: bool = True) -> tuple[float, int | None] | None:
    """The largest (or smallest) finite value of ``key`` and the step it was recorded at."""
    best: tuple[float, int | None] | None = None
    for record in run.records:
        value = num(record.get(key))
        if not math.isfinite(value):
            continue
        if best is None or (value > best[0] if largest else value < best[0]):
            best = (value, _step_of(record))
    return best


def count_where(run: RunData, key: str, predicate) -> int:
    return sum(1 for r in run.records if predicate(num(r.get(key))))


def at_step(run: RunData, step: int | None) -> dict[str, Any] | None:
    if step is None:
        return None
    return next((r for r in reversed(run.records) if _step_of(r) == step), None)


def first_value(run: RunData, key: str) -> tuple[float, int | None] | None:
    """The first finite value of ``key`` and its step."""
    record = first_where(run, key, lambda v: True)
    return None if record is None else (num(record[key]), _step_of(record))


def last_value(run: RunData, key: str) -> tuple[float, int | None] | None:
    for record in reversed(run.records):
        value = num(record.get(key))
        if math.isfinite(value):
            return value, _step_of(record)
    return None


def finite_steps(run: RunData) -> int:
    """Steps whose loss and gradient were finite (the record's ``finite`` flag, else the values)."""
    count = 0
    for record in run.records:
        if "finite" in record:
            count += bool(record["finite"])
        else:
            count += math.isfinite(num(record.get("loss"))) and math.isfinite(num(record.get("grad_norm")))
    return count


def accuracy_of(run: RunData) -> float | None:
    test = (run.result or {}).get("test") or run.entry.get("test") or {}
    value = test.get("accuracy")
    return None if value is None else num(value)


# --------------------------------------------------------------------------- the document


Part = tuple[str, dict[str, str]]


@dataclasses.dataclass
class Block:
    kind: str  # "title", "h2", "p", "bullets", "table", "code", "image"
    parts: list[Any] = dataclasses.field(default_factory=list)
    text: str = ""


class Doc:
    """Blocks of message ids and formatted parameters; rendered once per language."""

    def __init__(self) -> None:
        self.blocks: list[Block] = []

    def title(self, msg: str, **params) -> None:
        self.blocks.append(Block("title", [(msg, _strings(params))]))

    def h2(self, msg: str, **params) -> None:
        self.blocks.append(Block("h2", [(msg, _strings(params))]))

    def p(self, *parts: Part) -> None:
        parts = [part for part in parts if part]
        if parts:
            self.blocks.append(Block("p", list(parts)))

    def bullets(self, items: list[list[Part]]) -> None:
        items = [[part for part in item if part] for item in items]
        if any(items):
            self.blocks.append(Block("bullets", [item for item in items if item]))

    def table(self, headers: list[str], rows: list[list[Any]]) -> None:
        self.blocks.append(Block("table", [headers, rows]))

    def code(self, text: str) -> None:
        self.blocks.append(Block("code", text=text))

    def image(self, path: str, *caption: Part) -> None:
        self.blocks.append(Block("image", list(caption), text=path))


def m(msg: str, **params) -> Part:
    """A message part: its id and its parameters as strings (numbers through :func:`fmt`)."""
    return msg, _strings(params)


def _strings(params: dict[str, Any]) -> dict[str, str]:
    return {k: (v if isinstance(v, str) else fmt(v)) for k, v in params.items()}


def render(doc: Doc, lang: str) -> str:
    """The Markdown of ``doc`` in ``lang`` ("en" or "zh")."""
    messages = MESSAGES[lang]
    joiner = "" if lang == "zh" else " "

    def resolve(params: dict[str, str]) -> dict[str, str]:
        return {k: (messages[v[1:]] if v.startswith("@") and v[1:] in messages else v) for k, v in params.items()}

    def text(parts: list[Part]) -> str:
        return joiner.join(messages[msg].format(**resolve(params)) for msg, params in parts)

    def cell(value: Any) -> str:
        if isinstance(value, tuple):
            value = text([value])
        return str(value).replace("|", "\\|").replace("\n", " ")

    out: list[str] = []
    for block in doc.blocks:
        if block.kind == "title":
            out.append(f"# {text(block.parts)}")
        elif block.kind == "h2":
            out.append(f"## {text(block.parts)}")
        elif block.kind == "p":
            out.append(text(block.parts))
        elif block.kind == "bullets":
            out.append("\n".join(f"- {text(item)}" for item in block.parts))
        elif block.kind == "table":
            headers, rows = block.parts
            lines = ["| " + " | ".join(messages[h] for h in headers) + " |",
                     "|" + "---|" * len(headers)]
            lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows]
            out.append("\n".join(lines))
        elif block.kind == "code":
            out.append(f"```\n{block.text}\n```")
        elif block.kind == "image":
            caption = text(block.parts)
            out.append(f"![{caption}]({block.text})\n\n*{caption}*")
    return "\n\n".join(out) + "\n"


# --------------------------------------------------------------------------- extraction


def _code(value: Any) -> str:
    return "" if value is None else str(value)


def _short_op(op: str | None) -> str:
    if not op:
        return "?"
    parts = op.split(".")
    return parts[1] if len(parts) > 1 and parts[0] == "aten" else op


def extract(run_set: RunSet, figures: list[Figure], check: dict[str, Any] | None = None,
            problems: list[str] | None = None) -> Doc:
    """Every section of the report, with this run set's numbers."""
    doc = Doc()
    summary = run_set.summary
    runs = run_set.runs
    doc.title("title")
    doc.p(m("intro", data=_code(summary.get("data") or "?"), seed=_code(summary.get("seed")),
            n_runs=len(runs)),
          m("intro_command", command=summary["command"]) if summary.get("command") else None)
    if run_set.interrupted:
        cut = [r.name for r in runs if r.interrupted]
        doc.p(m("interrupted", n_recorded=sum(1 for r in runs if r.records), n_cut=len(cut)))
    if not runs:
        doc.p(m("no_runs"))
    section = _Counter()
    _in_short(doc, runs)
    _runs_table(doc, section, runs)
    ratio_runs = [r for r in runs if r.loss == "ratio"]
    if ratio_runs:
        _ratio_unbounded(doc, section, ratio_runs)
    _underflow(doc, section, runs)
    _failures(doc, section, runs)
    _singleton(doc, section, runs)
    _epsilon(doc, section, [r for r in runs if r.loss == "ratio_eps"])
    _difference(doc, section, [r for r in runs if r.loss == "difference"])
    _stable(doc, section, [r for r in runs if is_stable(r.loss)])
    if check is not None:
        _check_section(doc, section, check)
    _figures(doc, section, figures, runs, problems or [])
    return doc


class _Counter:
    def __init__(self) -> None:
        self.value = 0

    def next(self) -> int:
        self.value += 1
        return self.value


def word(kind: str, value: str) -> str:
    """A translatable word (resolved at render time), or ``value`` itself when it has no translation."""
    return f"@{kind}_{value}" if f"{kind}_{value}" in EN else value


def _status(run: RunData) -> tuple[str, dict[str, str]]:
    return m("raw", text=word("status", run.status))


def _in_short(doc: Doc, runs: list[RunData]) -> None:
    if not runs:
        return
    doc.h2("h_short")
    items = []
    for run in runs:
        zero = next((r for r in (first_where(run, "exp_zero"), first_where(run, "softmax_zero")) if r), None)
        zero_part = m("short_zero", step=_step_of(zero)) if zero is not None else (
            m("short_no_zero") if run.has("exp_zero") or run.has("softmax_zero") else None)
        first = run.first_nonfinite
        if first:
            root = first.get("root_cause") or {}
            items.append([m("short_failed", run=run.name, step=first.get("step"), kind=root.get("kind") or "unknown",
                            op=_short_op(first.get("op")), phase=word("phase", first.get("phase") or "unknown"),
                            root_op=_short_op(root.get("op") or first.get("op"))),
                          zero_part])
        elif run.interrupted:
            items.append([m("short_interrupted", run=run.name, n_steps=len(run.records)), zero_part])
        else:
            items.append([m("short_finite", run=run.name, status=word("status", run.status),
                            n_finite=finite_steps(run), n_steps=len(run.records)), zero_part])
    doc.bullets(items)


def _runs_table(doc: Doc, section: _Counter, runs: list[RunData]) -> None:
    doc.h2("h_runs", n=section.next())
    rows = []
    for run in runs:
        first = run.first_nonfinite
        if first:
            where = m("cell_first", step=first.get("step"), op=_short_op(first.get("op")),
                      phase=word("phase", first.get("phase") or "unknown"))
            root = (first.get("root_cause") or {}).get("kind") or "unknown"
        else:
            where, root = "—", "—"
        acc = accuracy_of(run)
        rows.append([f"`{run.name}`", run.model, run.loss, run.dtype, _status(run), len(run.records), where,
                     f"`{root}`" if root != "—" else root, fmt(acc)])
    doc.table(["col_run", "col_model", "col_loss", "col_dtype", "col_status", "col_steps", "col_first",
               "col_root", "col_acc"], rows)
    doc.p(m("runs_note"))


def _ratio_unbounded(doc: Doc, section: _Counter, ratio_runs: list[RunData]) -> None:
    doc.h2("h_ratio", n=section.next())
    doc.p(m("ratio_formula"))
    for run in ratio_runs:
        if not run.records:
            doc.p(m("no_records", run=run.name))
            continue
        parts: list[Part] = []
        loss0, lowest = first_value(run, "loss"), extreme(run, "loss", largest=False)
        if loss0 and lowest:
            negative = count_where(run, "loss", lambda v: math.isfinite(v) and v < 0)
            parts.append(m("ratio_loss", run=run.name, loss0=loss0[0], step0=loss0[1], loss_min=lowest[0],
                           loss_min_step=lowest[1], n_negative=negative, n_steps=len(run.records)))
        dmax0, dmax_peak = first_value(run, "d_max"), extreme(run, "d_max")
        if dmax0 and dmax_peak:
            factor = dmax_peak[0] / dmax0[0] if dmax0[0] > 0 else math.inf
            parts.append(m("ratio_dmax", d0=dmax0[0], step0=dmax0[1], dpeak=dmax_peak[0],
                           dpeak_step=dmax_peak[1], factor=factor))
        for key in ("d_p50", "d_other_p50", "d_other_min"):
            a, b = first_value(run, key), last_value(run, key)
            if a and b:
                parts.append(m("ratio_growth", key=key, a=a[0], a_step=a[1], b=b[0], b_step=b[1]))
        a, b = first_value(run, "p_diff_min"), last_value(run, "p_diff_min")
        low = extreme(run, "p_diff_min", largest=False)
        if a and b and low:
            parts.append(m("ratio_pdiff", a=a[0], a_step=a[1], low=low[0], low_step=low[1]))
        doc.p(*parts)
    doc.p(m("ratio_see_figures"))


def _limits_params(dtype: str) -> dict[str, str]:
    normal, zero = exp_limits(dtype)
    return {"dtype": dtype, "normal": f"{normal:.2f}", "zero": f"{zero:.2f}"}


def _underflow(doc: Doc, section: _Counter, runs: list[RunData]) -> None:
    doc.h2("h_underflow", n=section.next())
    dtypes = list(dict.fromkeys(r.dtype for r in runs)) or ["float32"]
    for dtype in dtypes:
        doc.p(m("limits", **_limits_params(dtype)))
    if "float64" not in dtypes:
        doc.p(m("limits_other", **_limits_params("float64")))
    items = []
    for run in runs:
        limits = _limits_params(run.dtype)
        normal, zero = exp_limits(run.dtype)
        if not run.records:
            items.append([m("no_records", run=run.name)])
            continue
        parts: list[Part] = []
        keys = [k for k in ("exp_zero", "softmax_zero") if run.has(k)]
        peak_d = extreme(run, "d_max")
        zero_record = None
        zero_key = None
        for key in keys:
            record = first_where(run, key)
            if record is not None and (zero_record is None or _step_of(record) < _step_of(zero_record)):
                zero_record, zero_key = record, key
        if zero_record is not None:
            peak = extreme(run, zero_key)
            parts.append(m("underflow_yes", run=run.name, step=_step_of(zero_record), epoch=zero_record.get("epoch"),
                           count=num(zero_record[zero_key]), key=zero_key, dmax=num(zero_record.get("d_max")),
                           peak=peak[0], peak_step=peak[1]))
        elif keys:
            relation = "above" if peak_d and peak_d[0] > normal else "below"
            parts.append(m(f"underflow_no_{relation}", run=run.name, n_steps=len(run.records), key=" / ".join(keys),
                           dmax=peak_d[0] if peak_d else None, dmax_step=peak_d[1] if peak_d else None,
                           normal=limits["normal"], zero=limits["zero"]))
        else:
            parts.append(m("underflow_unknown", run=run.name, dmax=peak_d[0] if peak_d else None,
                           dmax_step=peak_d[1] if peak_d else None, zero=limits["zero"]))
        sub = first_where(run, "exp_subnormal") or first_where(run, "softmax_subnormal")
        if sub is not None:
            parts.append(m("subnormal_first", step=_step_of(sub), dmax=num(sub.get("d_max"))))
        crossed = first_where(run, "d_max", lambda v: v > zero)
        if crossed is not None:
            parts.append(m("crossed_zero", step=_step_of(crossed), dmax=num(crossed.get("d_max")),
                           zero=limits["zero"]))
        fail = at_step(run, run.failure_step)
        if fail is not None:
            values = {k: num(fail.get(k)) for k in ("d_max", "p_same_min", "p_diff_min")}
            if "p_same_min" in fail:
                parts.append(m("at_failure_p", step=run.failure_step, dmax=values["d_max"],
                               psame=values["p_same_min"], pdiff=values["p_diff_min"]))
            else:
                parts.append(m("at_failure", step=run.failure_step, dmax=values["d_max"]))
        items.append(parts)
    doc.bullets(items)


def _failures(doc: Doc, section: _Counter, runs: list[RunData]) -> None:
    doc.h2("h_failure", n=section.next())
    failed = [r for r in runs if r.first_nonfinite]
    if not failed:
        doc.p(m("no_failure", n_runs=len(runs)))
        return
    for run in failed:
        first = run.first_nonfinite or {}
        root = first.get("root_cause") or {}
        phase = first.get("phase") or "unknown"
        node = first.get("backward_node")
        record = at_step(run, run.failure_step)
        parts: list[Part] = [m("failure_head", run=run.name, step=first.get("step"), epoch=first.get("epoch"),
                               op=_code(first.get("op")), phase_word=word("phase", phase),
                               node=f" (`{node}`)" if node else "", source=_code(first.get("source") or "?"),
                               pattern=_code(first.get("pattern") or "?"), kind=_code(root.get("kind") or "unknown"),
                               root_op=_code(root.get("op") or "?"), detail=_code(root.get("detail") or ""))]
        pattern = first.get("pattern")
        inputs = [s for s in (first.get("inputs") or (run.finding or {}).get("inputs") or []) if isinstance(s, dict)]
        if pattern == "overflow" and phase == "backward":
            loss = num(record.get("loss")) if record else math.nan
            if len(inputs) >= 2:
                parts.append(m("explain_backward_overflow", loss=loss, big=num(inputs[0].get("max")),
                               small=num(inputs[1].get("min")), dtype=run.dtype, fmax=facts(run.dtype).max))
            else:
                parts.append(m("explain_backward_overflow_short", loss=loss, dtype=run.dtype,
                               fmax=facts(run.dtype).max))
        elif pattern == "overflow":
            parts.append(m("explain_forward_overflow", dtype=run.dtype, fmax=facts(run.dtype).max))
        elif pattern in ("0/0", "x/0", "log(0)", "inf-inf", "0*inf"):
            parts.append(m("explain_" + {"0/0": "nan", "x/0": "xdiv0", "log(0)": "log0", "inf-inf": "infinf",
                                         "0*inf": "zeroinf"}[pattern]))
        else:
            parts.append(m("explain_generic", pattern=_code(pattern or "?")))
        if record is not None:
            zeros = {k: num(record.get(k)) for k in ("exp_zero", "softmax_zero") if k in record}
            key = next((k for k, v in zeros.items() if math.isfinite(v) and v > 0), None)
            if key is not None:
                first_zero = first_where(run, key)
                parts.append(m("failure_precursor", count=zeros[key], key=key, first=_step_of(first_zero)))
            elif zeros:
                parts.append(m("failure_no_precursor", key=" / ".join(zeros)))
        kind = root.get("kind")
        if kind in ("underflow", "empty_set", "cancellation", "nonfinite_input", "domain", "division_by_zero"):
            parts.append(m(f"root_{kind}", root_op=_code(root.get("op") or "?")))
        doc.p(*parts)
        chain = run.chain_text()
        if chain:
            doc.p(m("chain_intro"))
            doc.code(str(chain))
        if run.entry.get("capsule"):
            doc.p(m("replay", capsule=str(run.entry["capsule"])))


def _singleton(doc: Doc, section: _Counter, runs: list[RunData]) -> None:
    doc.h2("h_singleton", n=section.next())
    watched = [r for r in runs if r.has("rows_without_same_class")]
    seen = []
    for run in watched:
        record = first_where(run, "rows_without_same_class")
        if record is not None:
            peak = extreme(run, "rows_without_same_class")
            seen.append(m("singleton_seen", run=run.name, loss=run.loss, step=_step_of(record),
                          count=num(record["rows_without_same_class"]), peak=peak[0], loss_at=num(record.get("loss"))))
    if seen:
        doc.p(m("singleton_formula"))
        doc.bullets([[part] for part in seen])
    elif watched:
        steps = sum(len(r.records) for r in watched)
        sizes = sorted({int(num(r.config.get("batch_size"))) for r in watched
                        if math.isfinite(num(r.config.get("batch_size")))})
        doc.p(m("singleton_not_seen", n_steps=steps, n_runs=len(watched),
                sizes=", ".join(str(s) for s in sizes) or "?"), m("singleton_formula"))
    else:
        doc.p(m("singleton_not_recorded"), m("singleton_formula"))
    for logspace in (r for r in runs if r.loss == "nca_logspace"):
        excluded = (logspace.result or {}).get("excluded_rows", logspace.entry.get("excluded_rows"))
        if excluded is None:
            excluded = int(sum(v for v in logspace.series("rows_excluded") if math.isfinite(v)))
        doc.p(m("singleton_logspace", run=logspace.name, excluded=excluded))


def _epsilon(doc: Doc, section: _Counter, runs: list[RunData]) -> None:
    doc.h2("h_eps", n=section.next())
    if not runs:
        doc.p(m("not_run", loss="ratio_eps"), m("eps_formula", eps=RATIO_EPS))
    for run in runs:
        _epsilon_run(doc, run, RATIO_EPS)


def _epsilon_run(doc: Doc, run: RunData, eps: float) -> None:
    if not run.records:
        doc.p(m("no_records", run=run.name), m("eps_formula", eps=eps))
        return
    n = len(run.records)
    lo, hi = extreme(run, "loss", largest=False), extreme(run, "loss")
    parts: list[Part] = [m("eps_run", run=run.name, status=word("status", run.status), n_steps=n,
                           n_finite=finite_steps(run), loss_min=lo[0] if lo else None,
                           loss_max=hi[0] if hi else None)]
    first_zero = first_where(run, "exp_zero")
    if first_zero is not None:
        peak = extreme(run, "exp_zero")
        parts.append(m("eps_zeros", step=_step_of(first_zero), peak=peak[0], peak_step=peak[1]))
    elif run.has("exp_zero"):
        parts.append(m("eps_no_zeros", n_steps=n))
    psame, pdiff = extreme(run, "p_same_min", largest=False), extreme(run, "p_diff_min", largest=False)
    if psame and pdiff:
        parts.append(m("eps_small", psame=psame[0], psame_step=psame[1], pdiff=pdiff[0], pdiff_step=pdiff[1]))
    doc.p(*parts)
    parts = [m("eps_formula", eps=eps)]
    if psame and pdiff:
        below = sum(1 for r in run.records if min(num(r.get("p_same_min")), num(r.get("p_diff_min"))) < eps)
        positive = [v for r in run.records for v in (num(r.get("p_same_min")), num(r.get("p_diff_min")))
                    if math.isfinite(v) and v > 0]
        parts.append(m("eps_below", n_below=below, n_steps=n, eps=eps))
        if positive:
            smallest = min(positive)
            parts.append(m("eps_bias", p=smallest, factor=smallest / (smallest + eps)))
        exact = sum(1 for r in run.records if num(r.get("p_same_min")) == 0 or num(r.get("p_diff_min")) == 0)
        if exact:
            parts.append(m("eps_exact_zero", n_zero=exact))
    dead = sum(1 for r in run.records if num(r.get("loss")) == 0 and num(r.get("grad_norm")) == 0)
    if dead:
        parts.append(m("eps_dead", n_dead=dead))
    parts.append(m("eps_conclusion"))
    doc.p(*parts)


def _difference(doc: Doc, section: _Counter, runs: list[RunData]) -> None:
    doc.h2("h_difference", n=section.next())
    doc.p(m("difference_formula"))
    if not runs:
        doc.p(m("not_run", loss="difference"))
    for run in runs:
        _difference_run(doc, run)


def _difference_run(doc: Doc, run: RunData) -> None:
    if not run.records:
        doc.p(m("no_records", run=run.name))
        return
    n = len(run.records)
    parts: list[Part] = [m("difference_run", run=run.name, status=word("status", run.status), n_steps=n,
                           n_finite=finite_steps(run))]
    peak = extreme(run, "d_max")
    if peak:
        _, zero = exp_limits(run.dtype)
        weight = math.exp(-peak[0])
        parts.append(m("difference_weight", dmax=peak[0], step=peak[1], weight=weight))
        if peak[0] > zero:
            parts.append(m("difference_weight_zero", dtype=run.dtype, zero=f"{zero:.2f}"))
    first_zero = first_where(run, "exp_zero")
    if first_zero is not None:
        top = extreme(run, "exp_zero")
        parts.append(m("difference_zeros", step=_step_of(first_zero), peak=top[0], peak_step=top[1]))
    elif run.has("exp_zero"):
        parts.append(m("difference_no_zeros"))
    g0, g1 = first_value(run, "grad_norm"), last_value(run, "grad_norm")
    glow = extreme(run, "grad_norm", largest=False)
    if g0 and g1 and glow:
        parts.append(m("difference_grad", g0=g0[0], s0=g0[1], g1=g1[0], s1=g1[1], glow=glow[0], slow=glow[1]))
    doc.p(*parts)


def _stable(doc: Doc, section: _Counter, runs: list[RunData]) -> None:
    doc.h2("h_stable", n=section.next())
    doc.p(m("stable_formula"))
    present = {r.loss for r in runs}
    items = []
    for run in runs:
        if not run.records:
            items.append([m("no_records", run=run.name)])
            continue
        peak = extreme(run, "d_max")
        parts: list[Part] = [m("stable_run", run=run.name, status=word("status", run.status),
                               n_finite=finite_steps(run), n_steps=len(run.records),
                               dmax=peak[0] if peak else None, acc=accuracy_of(run))]
        if run.has("softmax_zero"):
            steps = count_where(run, "softmax_zero", lambda v: math.isfinite(v) and v > 0)
            top = extreme(run, "softmax_zero")
            if steps:
                parts.append(m("stable_softmax_zero", n=steps, peak=top[0]))
            else:
                parts.append(m("stable_softmax_none"))
        _, zero = exp_limits(run.dtype)
        if peak and peak[0] > zero:
            parts.append(m("stable_beyond", dmax=peak[0], zero=f"{zero:.2f}"))
        items.append(parts)
    for loss in (name for name, f in REGISTRY.items() if f.stable):
        if loss not in present:
            items.append([m("not_run", loss=loss)])
    doc.bullets(items)


def _check_section(doc: Doc, section: _Counter, check: dict[str, Any]) -> None:
    doc.h2("h_check", n=section.next())
    rows = []
    for row in check_curves(check):
        rows.append([f"`{row['loss']}`", row["dtype"], fmt(row["breakdown_scale"]) if math.isfinite(
            row["breakdown_scale"]) else ("cell_none", {}), row["breakdown_reason"] or "—",
            fmt(row["finite_fraction"]), f"{fmt(row['loss_bits_median'])} / {fmt(row['loss_bits_max'])}"])
    doc.p(m("check_intro"))
    doc.table(["col_loss", "col_dtype", "col_breakdown", "col_reason", "col_finite", "col_bits"], rows)


_FIGURE_CAPTIONS = {"timeline": "fig_timeline", "gradients": "fig_gradients", "chain": "fig_chain",
                    "domain": "fig_domain", "check": "fig_check"}


def _figures(doc: Doc, section: _Counter, figures: list[Figure], runs: list[RunData], problems: list[str]) -> None:
    doc.h2("h_figures", n=section.next())
    if not figures:
        doc.p(m("no_figures"))
    by_name = {r.name: r for r in runs}
    order = {"domain": 0, "check": 1}
    ordered = sorted(figures, key=lambda f: (order.get(f.kind, 2), [r.name for r in runs].index(f.run)
                                             if f.run in by_name else 0))
    for k, figure in enumerate(ordered, start=1):
        run = by_name.get(figure.run) if figure.run else None
        params: dict[str, Any] = {"k": k, "run": figure.run or ""}
        if run is not None:
            params.update(_limits_params(run.dtype))
        relative = f"{FIGURES_DIR}/{figure.path.name}"
        doc.image(relative, m(_FIGURE_CAPTIONS[figure.kind], **params))
    if problems:
        doc.p(m("figure_problems"))
        doc.code("\n".join(problems))


# --------------------------------------------------------------------------- messages

EN: dict[str, str] = {
    "raw": "{text}",
    "title": "stablenca diagnose report",
    "intro": "Data: {data}; seed {seed}; {n_runs} runs. Every number below is read from this directory's "
             "`summary.json` and `<run>/records.jsonl` (one record per training batch); nothing was retrained "
             "to write this report.",
    "intro_command": "Command: `{command}`.",
    "interrupted": "**This diagnose was interrupted.** The report covers what was recorded before it stopped: "
                   "{n_recorded} runs have records, and {n_cut} runs are marked *interrupted* (they have no final "
                   "result, and their records may end mid-epoch).",
    "no_runs": "No run was recorded in this directory.",
    "no_records": "`{run}`: no records were written.",
    "not_run": "`{loss}`: not run.",
    "h_short": "In short",
    "short_failed": "`{run}` went non-finite at step {step}: first bad op `{op}` ({phase}), root cause `{kind}` at `{root_op}`.",
    "short_finite": "`{run}` ({status}): {n_finite} of {n_steps} recorded steps finite.",
    "short_interrupted": "`{run}` was interrupted after {n_steps} recorded steps.",
    "short_zero": "Its first exact 0.0 from `exp`/softmax was at step {step}.",
    "short_no_zero": "No `exp`/softmax output was ever exactly 0.0.",
    "h_runs": "{n}. The runs",
    "col_run": "run", "col_model": "model", "col_loss": "loss", "col_dtype": "dtype", "col_status": "status",
    "col_steps": "recorded steps", "col_first": "first non-finite", "col_root": "root cause",
    "col_acc": "test accuracy", "col_breakdown": "breakdown scale", "col_reason": "why",
    "col_finite": "finite fraction", "col_bits": "bits of error (median / max)",
    "cell_first": "step {step}: `{op}` ({phase})",
    "cell_none": "none",
    "runs_note": "A step whose loss or gradient is not finite is never applied: the run stops there. Test accuracy "
                 "is measured with the parameters before the failing step. Steps and epochs are counted from 0, as "
                 "in the records.",
    "status_completed": "completed", "status_early_stopped": "early stopped", "status_diverged": "diverged",
    "status_interrupted": "interrupted",
    "phase_forward": "forward", "phase_backward": "backward", "phase_optimizer": "optimizer",
    "phase_unknown": "unknown phase",
    "h_ratio": "{n}. The ratio loss is unbounded below, so training inflates the distances",
    "ratio_formula": "The student's loss is `−log(P_same / P_diff)` with `P = exp(−d/T)`, where `P_same` sums over "
                     "the query's own class and `P_diff` over the *other* classes only. Because the denominator "
                     "leaves the own class out, `P_same / P_diff` is not a probability: it can exceed 1, so the loss "
                     "can drop below 0 and has no lower bound. With one same-class neighbour at distance `a` and one "
                     "other-class neighbour at `b` the loss is `a − b`, and multiplying every distance by `s` "
                     "multiplies the loss by `s`. Once queries sit nearer to their own class than to the others, "
                     "the cheapest way to lower the loss further is to blow up the distance scale.",
    "ratio_loss": "In `{run}` the loss went from {loss0} (step {step0}) to {loss_min} (step {loss_min_step}); "
                  "{n_negative} of its {n_steps} recorded steps had a negative loss, which a true NCA loss "
                  "(`−log p`, `p ≤ 1`) never gives.",
    "ratio_dmax": "Meanwhile the largest distance `d_max` grew from {d0} (step {step0}) to {dpeak} "
                  "(step {dpeak_step}), a factor of {factor}.",
    "ratio_growth": "`{key}`: {a} (step {a_step}) → {b} (step {b_step}).",
    "ratio_pdiff": "The smallest other-class sum of a row, `P_diff`, went from {a} (step {a_step}) down to {low} "
                   "(step {low_step}).",
    "ratio_see_figures": "The timeline and failure-domain figures below show these series step by step.",
    "h_underflow": "{n}. Did the distances cross the exp underflow limit?",
    "limits": "In {dtype}, `exp(−d)` leaves the normal range for `d > {normal}` (it turns subnormal and loses "
              "precision) and rounds to exactly 0.0 for `d > {zero}`. These are constants of IEEE floating point, "
              "not of the model; the distances here are already divided by the temperature T.",
    "limits_other": "(For comparison, in {dtype} the limits are {normal} and {zero}.)",
    "underflow_yes": "`{run}`: **yes**. The first exact 0.0 appeared at step {step} (epoch {epoch}): {count} `{key}` "
                     "entries were 0.0 while `d_max` was {dmax}. The count peaked at {peak} per batch "
                     "(step {peak_step}).",
    "underflow_no_below": "`{run}`: **no**. No output was exactly 0.0 in its {n_steps} recorded steps (`{key}` = 0 "
                          "throughout); `d_max` peaked at {dmax} (step {dmax_step}), below the subnormal limit "
                          "{normal}.",
    "underflow_no_above": "`{run}`: **no exact zero**. No output was exactly 0.0 in its {n_steps} recorded steps "
                          "(`{key}` = 0 throughout), although `d_max` peaked at {dmax} (step {dmax_step}), above "
                          "the subnormal limit {normal}.",
    "underflow_unknown": "`{run}`: this loss publishes no `exp` or softmax outputs, so underflow was not counted; "
                         "`d_max` peaked at {dmax} (step {dmax_step}) against the limit {zero}.",
    "subnormal_first": "Subnormal outputs first appeared at step {step} (`d_max` {dmax}).",
    "crossed_zero": "`d_max` first exceeded {zero} at step {step} ({dmax}).",
    "at_failure_p": "At the failing step {step}: `d_max` = {dmax}, smallest `P_same` = {psame}, smallest "
                    "`P_diff` = {pdiff}.",
    "at_failure": "At the failing step {step}: `d_max` = {dmax}.",
    "h_failure": "{n}. How the first non-finite value appeared",
    "no_failure": "None of the {n_runs} runs produced a non-finite loss or gradient.",
    "failure_head": "`{run}`, step {step} (epoch {epoch}): the first op that made NaN/inf out of finite inputs was "
                    "`{op}` in the **{phase_word}** pass{node}, at `{source}`. Pattern `{pattern}`; root cause "
                    "`{kind}` at `{root_op}`: `{detail}`.",
    "explain_backward_overflow": "The forward loss of that step was still finite ({loss}). The derivative of "
                                 "`P_same / P_diff` with respect to `P_diff` is `−P_same / P_diff²`, so the backward "
                                 "pass divides by `P_diff` once more: the traced division had numerators up to {big} "
                                 "and divisors as small as {small}, and their quotient exceeded the largest {dtype} "
                                 "number {fmax}, so it became inf.",
    "explain_backward_overflow_short": "The forward loss of that step was still finite ({loss}); the backward pass "
                                       "divides by the small sums once more, and a quotient exceeded the largest "
                                       "{dtype} number {fmax}.",
    "failure_precursor": "In the forward pass of that same step {count} outputs counted by `{key}` had already "
                         "underflowed to exactly 0.0 without any error; the first such step was {first}. Those "
                         "silent zeros removed terms from the sums and pushed `P_diff` towards 0.",
    "failure_no_precursor": "No output had underflowed to exactly 0.0 at that step (`{key}` = 0): a tiny but "
                            "non-zero `P_diff`, from a row whose other classes are all far away, was enough.",
    "explain_forward_overflow": "A finite value exceeded the largest {dtype} number {fmax} in the forward pass.",
    "explain_nan": "Some row had `P_same` and `P_diff` both exactly 0.0, so `P_same / P_diff` = 0/0 = NaN: every "
                   "`exp(−d)` of that row had underflowed.",
    "explain_xdiv0": "Some row had `P_diff` exactly 0.0 (every other-class term underflowed) while `P_same > 0`, so "
                     "the ratio is +inf and the loss −inf.",
    "explain_log0": "Some row had `P_same` exactly 0.0 (every same-class term underflowed, or the row has no "
                    "same-class neighbour), so `log(0)` = −inf and the loss is +inf.",
    "explain_infinf": "Two infinities of opposite sign met in an addition (`inf − inf` = NaN).",
    "explain_zeroinf": "A zero met an infinity in a product (`0 × inf` = NaN).",
    "explain_generic": "The tracer classified it as `{pattern}`.",
    "root_underflow": "The root cause is earlier and silent: `{root_op}` turned finite inputs into exact zeros, and "
                      "those zeros reached the failing op.",
    "root_empty_set": "The root cause is a sum over nothing at `{root_op}`: a mask selected no element, as for a "
                      "query that is the only member of its class in the batch.",
    "root_cancellation": "The root cause is a cancellation at `{root_op}`: a subtraction of nearly equal numbers "
                         "lost most of its significant bits.",
    "root_nonfinite_input": "The NaN/inf was already in an input or a parameter (`{root_op}`).",
    "root_domain": "`{root_op}` was evaluated outside its domain.",
    "root_division_by_zero": "An exact zero that was an input value reached a pole at `{root_op}`.",
    "chain_intro": "The traced chain (first non-finite op first, `←` points to its cause):",
    "replay": "Replay that step under the tracer with `stablenca replay {capsule}`.",
    "h_singleton": "{n}. A class with a single member in the batch gives log(0) at once",
    "singleton_formula": "For a query that is the only member of its class in the batch, `P_same` is an empty sum: "
                         "exactly 0 at every distance scale, so `−log(0 / P_diff)` = +inf from the first step on, "
                         "with no scale growth needed.",
    "singleton_seen": "`{run}` (`{loss}`): {count} rows without a same-class neighbour first appeared at step "
                      "{step} (loss there: {loss_at}); at most {peak} in one batch.",
    "singleton_not_seen": "Not seen in this run: `rows_without_same_class` was 0 in all {n_steps} recorded steps of "
                          "the {n_runs} runs that record it (batch size {sizes}).",
    "singleton_not_recorded": "Not recorded in this run (no loss published the class masks).",
    "singleton_logspace": "`{run}` excludes such rows instead of turning them into inf: {excluded} rows were "
                          "excluded over its run.",
    "h_eps": "{n}. The epsilon patch (`ratio_eps`) hides the failure",
    "eps_run": "`{run}` ({status}, {n_steps} recorded steps): the loss was finite in {n_finite} of {n_steps} steps, "
               "between {loss_min} and {loss_max}.",
    "eps_zeros": "Yet `exp` did underflow: exact zeros first at step {step}, up to {peak} per batch "
                 "(step {peak_step}).",
    "eps_no_zeros": "`exp` returned no exact zero in its {n_steps} recorded steps.",
    "eps_small": "The smallest `P_same` of a row reached {psame} (step {psame_step}) and the smallest `P_diff` "
                 "{pdiff} (step {pdiff_step}).",
    "eps_formula": "The patch adds `{eps}` to both sums: `−log((P_same + {eps}) / (P_diff + {eps}))`. It bounds the "
                   "loss, but a sum far below `{eps}` no longer counts: the loss saturates, and the gradient of "
                   "`log(P + {eps})` is `P′ / (P + {eps})` instead of `P′ / P`, smaller by the factor "
                   "`P / (P + {eps})`.",
    "eps_below": "In {n_below} of {n_steps} recorded steps some row had `P_same` or `P_diff` below `{eps}`.",
    "eps_bias": "At the smallest non-zero recorded sum, {p}, that factor is {factor}.",
    "eps_exact_zero": "In {n_zero} steps a sum was exactly 0.0 in some row: there the gradient through that sum is "
                      "exactly 0.",
    "eps_dead": "In {n_dead} steps the loss and the gradient were both exactly 0: both sums had underflowed and "
                "training silently stopped.",
    "eps_conclusion": "The NaN is gone, but the rows whose sums underflowed get a biased (vanishing) gradient, and "
                      "nothing in the loss tells you so; only the records do.",
    "h_difference": "{n}. The difference loss stays finite, but far pairs stop learning",
    "difference_formula": "`P_diff.sum() − P_same.sum()` is a bounded sum of `exp(−d)` terms and never NaN. Its "
                          "derivative with respect to a pair's distance is `±exp(−d)`, so a pair contributes in "
                          "proportion to `exp(−d)`: far pairs contribute (almost) nothing.",
    "difference_run": "`{run}` ({status}): {n_finite} of {n_steps} recorded steps were finite.",
    "difference_weight": "At its largest recorded distance {dmax} (step {step}) a pair's gradient weight "
                         "`exp(−d)` is {weight}.",
    "difference_weight_zero": "In {dtype} that is exactly 0.0 (beyond {zero}).",
    "difference_zeros": "`exp` outputs that were exactly 0.0, i.e. pairs with an exactly zero gradient, first "
                        "appeared at step {step} and reached {peak} per batch (step {peak_step}).",
    "difference_no_zeros": "No `exp` output was exactly 0.0.",
    "difference_grad": "The total gradient norm was {g0} at step {s0}, {g1} at step {s1} and {glow} at its "
                       "smallest (step {slow}): the loss is a sum over the batch, so the near pairs keep it large "
                       "while the far ones drop out.",
    "h_stable": "{n}. The log-space form and TALENT's softmax form stay finite",
    "stable_formula": "`nca_logspace` uses `logsumexp(x) = m + log Σ exp(x − m)` with `m = max x`, and TALENT's "
                      "`softmax` shifts by the row maximum in the same way. The largest term is then `exp(0) = 1`, "
                      "so the sum is at least 1 and its log is finite at any distance scale; terms far below the "
                      "maximum may still underflow to 0.0, which only drops their negligible share. Their "
                      "denominator includes the own class, so the loss is `−log p` with `p ≤ 1`: bounded below by 0, "
                      "and nothing rewards inflating the scale.",
    "stable_run": "`{run}` ({status}): {n_finite} of {n_steps} recorded steps finite; `d_max` peaked at {dmax}; "
                  "test accuracy {acc}.",
    "stable_softmax_zero": "Softmax entries underflowed to 0.0 in {n} steps (up to {peak} per batch), yet the loss "
                           "stayed finite.",
    "stable_softmax_none": "No softmax entry underflowed to 0.0.",
    "stable_beyond": "Its distances reached {dmax}, beyond the exp limit {zero}, without harm.",
    "h_check": "{n}. Error versus distance scale (`stablenca check`)",
    "check_intro": "Swept on generated batches, every formulation and dtype: the smallest scale where it breaks "
                   "(non-finite, or more than half of the significand bits wrong) and its bits of error.",
    "h_figures": "{n}. Figures",
    "no_figures": "No figure was drawn.",
    "figure_problems": "Figures that could not be drawn:",
    "fig_timeline": "Figure {k}. `{run}`: loss, total gradient norm, distance scale against the {dtype} exp limits "
                    "{normal} and {zero}, and the exp/softmax outputs that underflowed to 0.0, per step.",
    "fig_gradients": "Figure {k}. `{run}`: gradient norm of every parameter tensor per step (log colour).",
    "fig_chain": "Figure {k}. `{run}`: the root-cause chain of the first non-finite value.",
    "fig_domain": "Figure {k}. Where the ratio loss and its gradient are finite, +inf, −inf or NaN, as a function "
                  "of the same-class and the other-class distance, in float32 and float64; the ratio runs' "
                  "trajectories from the records drawn over it.",
    "fig_check": "Figure {k}. Bits of error against the distance scale for every formulation and dtype "
                 "(`stablenca check`).",
}

ZH: dict[str, str] = {
    "raw": "{text}",
    "title": "stablenca 诊断报告",
    "intro": "数据：{data}；随机种子 {seed}；共 {n_runs} 个运行。下文的每个数字都读自本目录的 `summary.json` 与 "
             "`<run>/records.jsonl`（每个训练批次一条记录）；撰写本报告时没有重新训练。",
    "intro_command": "命令：`{command}`。",
    "interrupted": "**本次诊断被中断。** 报告只涵盖中断前记录下来的内容：{n_recorded} 个运行有记录，{n_cut} 个运行标为"
                   "*已中断*（它们没有最终结果，记录可能停在某个轮次中间）。",
    "no_runs": "本目录中没有记录任何运行。",
    "no_records": "`{run}`：没有写入任何记录。",
    "not_run": "`{loss}`：未运行。",
    "h_short": "概要",
    "short_failed": "`{run}` 在第 {step} 步出现非有限值：首个出错的运算是 `{op}`（{phase}），根本原因是 `{root_op}` 处的 `{kind}`。",
    "short_finite": "`{run}`（{status}）：已记录的 {n_steps} 步中有 {n_finite} 步为有限值。",
    "short_interrupted": "`{run}` 在记录了 {n_steps} 步之后被中断。",
    "short_zero": "它的 `exp`/softmax 第一次输出精确的 0.0 是在第 {step} 步。",
    "short_no_zero": "它的 `exp`/softmax 输出从未精确为 0.0。",
    "h_runs": "{n}. 各个运行",
    "col_run": "运行", "col_model": "模型", "col_loss": "损失", "col_dtype": "数据类型", "col_status": "状态",
    "col_steps": "已记录步数", "col_first": "首个非有限值", "col_root": "根本原因",
    "col_acc": "测试准确率", "col_breakdown": "失效尺度", "col_reason": "原因",
    "col_finite": "有限比例", "col_bits": "误差位数（中位数 / 最大值）",
    "cell_first": "第 {step} 步：`{op}`（{phase}）",
    "cell_none": "无",
    "runs_note": "损失或梯度不是有限值的那一步永远不会被应用：运行在该处停止。测试准确率用的是失败那一步之前的参数。"
                 "步数和轮次与记录中一样从 0 开始计数。",
    "status_completed": "完成", "status_early_stopped": "提前停止", "status_diverged": "发散",
    "status_interrupted": "已中断",
    "phase_forward": "前向", "phase_backward": "反向", "phase_optimizer": "优化器",
    "phase_unknown": "未知阶段",
    "h_ratio": "{n}. 比值损失没有下界，所以训练会把距离越拉越大",
    "ratio_formula": "学生的损失是 `−log(P_same / P_diff)`，其中 `P = exp(−d/T)`，`P_same` 对查询样本自己的类别求和，"
                     "`P_diff` 只对*其他*类别求和。由于分母不包含自己的类别，`P_same / P_diff` 不是概率：它可以大于 1，"
                     "所以损失可以低于 0，而且没有下界。若同类近邻的距离为 `a`、异类近邻的距离为 `b`，损失就是 `a − b`；"
                     "把所有距离乘以 `s`，损失也乘以 `s`。一旦查询样本离自己的类别比离其他类别更近，继续降低损失最省事"
                     "的办法就是把整个距离尺度放大。",
    "ratio_loss": "在 `{run}` 中，损失从 {loss0}（第 {step0} 步）变为 {loss_min}（第 {loss_min_step} 步）；"
                  "已记录的 {n_steps} 步中有 {n_negative} 步损失为负，而真正的 NCA 损失（`−log p`，`p ≤ 1`）绝不会为负。",
    "ratio_dmax": "与此同时，最大距离 `d_max` 从 {d0}（第 {step0} 步）增长到 {dpeak}（第 {dpeak_step} 步），"
                  "增大了 {factor} 倍。",
    "ratio_growth": "`{key}`：{a}（第 {a_step} 步）→ {b}（第 {b_step} 步）。",
    "ratio_pdiff": "各行中最小的异类和 `P_diff` 从 {a}（第 {a_step} 步）一路降到 {low}（第 {low_step} 步）。",
    "ratio_see_figures": "下面的时间线图和失效区域图逐步展示了这些序列。",
    "h_underflow": "{n}. 距离是否越过了 exp 的下溢界限？",
    "limits": "在 {dtype} 中，当 `d > {normal}` 时 `exp(−d)` 离开正规数范围（变为次正规数并损失精度），当 "
              "`d > {zero}` 时舍入为精确的 0.0。这些是 IEEE 浮点数的常数，与模型无关；这里的距离已经除以温度 T。",
    "limits_other": "（作为对比，{dtype} 的界限是 {normal} 和 {zero}。）",
    "underflow_yes": "`{run}`：**是**。第一个精确的 0.0 出现在第 {step} 步（第 {epoch} 轮）：有 {count} 个 `{key}` "
                     "元素为 0.0，当时 `d_max` 为 {dmax}。该计数的峰值为每批 {peak} 个（第 {peak_step} 步）。",
    "underflow_no_below": "`{run}`：**否**。在已记录的 {n_steps} 步中没有任何输出精确为 0.0（`{key}` 始终为 0）；"
                          "`d_max` 的峰值为 {dmax}（第 {dmax_step} 步），低于次正规界限 {normal}。",
    "underflow_no_above": "`{run}`：**没有精确的零**。在已记录的 {n_steps} 步中没有任何输出精确为 0.0（`{key}` 始终为 0），"
                          "尽管 `d_max` 的峰值 {dmax}（第 {dmax_step} 步）高于次正规界限 {normal}。",
    "underflow_unknown": "`{run}`：该损失没有公开 `exp` 或 softmax 的输出，因此没有统计下溢；`d_max` 的峰值为 {dmax}"
                         "（第 {dmax_step} 步），界限为 {zero}。",
    "subnormal_first": "次正规输出最早出现在第 {step} 步（`d_max` 为 {dmax}）。",
    "crossed_zero": "`d_max` 在第 {step} 步首次超过 {zero}（{dmax}）。",
    "at_failure_p": "在失败的第 {step} 步：`d_max` = {dmax}，最小的 `P_same` = {psame}，最小的 `P_diff` = {pdiff}。",
    "at_failure": "在失败的第 {step} 步：`d_max` = {dmax}。",
    "h_failure": "{n}. 第一个非有限值是如何出现的",
    "no_failure": "{n_runs} 个运行都没有产生非有限的损失或梯度。",
    "failure_head": "`{run}`，第 {step} 步（第 {epoch} 轮）：第一个由有限输入产生 NaN/inf 的算子是**{phase_word}**"
                    "传播中的 `{op}`{node}，位于 `{source}`。模式 `{pattern}`；根本原因：`{root_op}` 处的 `{kind}`："
                    "`{detail}`。",
    "explain_backward_overflow": "这一步的前向损失仍然是有限的（{loss}）。`P_same / P_diff` 对 `P_diff` 的导数是 "
                                 "`−P_same / P_diff²`，所以反向传播要再除一次 `P_diff`：被追踪的除法中分子最大为 {big}，"
                                 "除数最小为 {small}，它们的商超过了 {dtype} 的最大值 {fmax}，于是变成 inf。",
    "explain_backward_overflow_short": "这一步的前向损失仍然是有限的（{loss}）；反向传播要再除一次这些很小的和，"
                                       "其中一个商超过了 {dtype} 的最大值 {fmax}。",
    "failure_precursor": "在同一步的前向传播中，已有 {count} 个由 `{key}` 统计的输出悄无声息地下溢为精确的 0.0，"
                         "没有任何报错；最早出现这种情况的是第 {first} 步。这些无声的零从和中去掉了一些项，把 `P_diff` 推向 0。",
    "failure_no_precursor": "在那一步没有任何输出下溢为精确的 0.0（`{key}` = 0）：某一行的其他类别都离得很远，"
                            "使 `P_diff` 极小但不为零，这就足够了。",
    "explain_forward_overflow": "前向传播中一个有限值超过了 {dtype} 的最大值 {fmax}。",
    "explain_nan": "某一行的 `P_same` 和 `P_diff` 都精确为 0.0，所以 `P_same / P_diff` = 0/0 = NaN：该行所有的 "
                   "`exp(−d)` 都已下溢。",
    "explain_xdiv0": "某一行的 `P_diff` 精确为 0.0（所有异类项都已下溢），而 `P_same > 0`，所以比值为 +inf，损失为 −inf。",
    "explain_log0": "某一行的 `P_same` 精确为 0.0（所有同类项都已下溢，或该行没有同类近邻），所以 `log(0)` = −inf，"
                    "损失为 +inf。",
    "explain_infinf": "两个符号相反的无穷大在加法中相遇（`inf − inf` = NaN）。",
    "explain_zeroinf": "零与无穷大在乘法中相遇（`0 × inf` = NaN）。",
    "explain_generic": "追踪器把它归类为 `{pattern}`。",
    "root_underflow": "根本原因更早，而且是无声的：`{root_op}` 把有限的输入变成了精确的零，这些零一直传到了出错的算子。",
    "root_empty_set": "根本原因是 `{root_op}` 处对空集求和：掩码没有选中任何元素，例如某个查询样本是批次中其类别的唯一成员。",
    "root_cancellation": "根本原因是 `{root_op}` 处的相消：两个几乎相等的数相减，丢失了大部分有效位。",
    "root_nonfinite_input": "NaN/inf 早已存在于输入或参数中（`{root_op}`）。",
    "root_domain": "`{root_op}` 在其定义域之外被求值。",
    "root_division_by_zero": "一个本身就是输入值的精确零在 `{root_op}` 处碰到了极点。",
    "chain_intro": "追踪到的链条（首个非有限算子在前，`←` 指向它的原因）：",
    "replay": "用 `stablenca replay {capsule}` 在追踪器下重放这一步。",
    "h_singleton": "{n}. 批次中只有一个成员的类别会立刻得到 log(0)",
    "singleton_formula": "如果某个查询样本是批次中其类别的唯一成员，`P_same` 就是空和：在任何距离尺度下都精确为 0，"
                         "所以从第一步起 `−log(0 / P_diff)` = +inf，根本不需要距离尺度增长。",
    "singleton_seen": "`{run}`（`{loss}`）：第 {step} 步首次出现 {count} 个没有同类近邻的行（该步损失：{loss_at}）；"
                      "单个批次中最多 {peak} 个。",
    "singleton_not_seen": "本次运行中没有出现：在记录它的 {n_runs} 个运行的全部 {n_steps} 个已记录步中，"
                          "`rows_without_same_class` 始终为 0（批大小 {sizes}）。",
    "singleton_not_recorded": "本次运行没有记录这一项（没有损失公开类别掩码）。",
    "singleton_logspace": "`{run}` 会排除这样的行，而不是把它们变成 inf：整个运行中共排除了 {excluded} 行。",
    "h_eps": "{n}. epsilon 补丁（`ratio_eps`）掩盖了失效",
    "eps_run": "`{run}`（{status}，已记录 {n_steps} 步）：{n_steps} 步中有 {n_finite} 步损失为有限值，"
               "范围在 {loss_min} 到 {loss_max} 之间。",
    "eps_zeros": "然而 `exp` 确实下溢了：第 {step} 步首次出现精确的零，每批最多 {peak} 个（第 {peak_step} 步）。",
    "eps_no_zeros": "在已记录的 {n_steps} 步中 `exp` 没有返回精确的零。",
    "eps_small": "各行中最小的 `P_same` 达到 {psame}（第 {psame_step} 步），最小的 `P_diff` 达到 {pdiff}"
                 "（第 {pdiff_step} 步）。",
    "eps_formula": "这个补丁给两个和都加上 `{eps}`：`−log((P_same + {eps}) / (P_diff + {eps}))`。它让损失有界，"
                   "但远小于 `{eps}` 的和就不再起作用：损失饱和，而 `log(P + {eps})` 的梯度是 `P′ / (P + {eps})` 而不是 "
                   "`P′ / P`，缩小了 `P / (P + {eps})` 倍。",
    "eps_below": "在已记录的 {n_steps} 步中有 {n_below} 步，某一行的 `P_same` 或 `P_diff` 低于 `{eps}`。",
    "eps_bias": "在记录到的最小非零和 {p} 处，这个因子是 {factor}。",
    "eps_exact_zero": "有 {n_zero} 步中某一行的和精确为 0.0：在那里，经过这个和的梯度精确为 0。",
    "eps_dead": "有 {n_dead} 步的损失和梯度都精确为 0：两个和都已下溢，训练悄无声息地停了下来。",
    "eps_conclusion": "NaN 消失了，但和已下溢的那些行得到的是有偏的（趋于消失的）梯度，损失本身不会告诉你这一点；只有记录会。",
    "h_difference": "{n}. 差值损失保持有限，但远处的样本对不再学习",
    "difference_formula": "`P_diff.sum() − P_same.sum()` 是 `exp(−d)` 项的有界和，从不产生 NaN。它对某一对样本距离的"
                          "导数是 `±exp(−d)`，所以每一对的贡献与 `exp(−d)` 成正比：远处的样本对（几乎）没有贡献。",
    "difference_run": "`{run}`（{status}）：已记录的 {n_steps} 步中有 {n_finite} 步为有限值。",
    "difference_weight": "在记录到的最大距离 {dmax}（第 {step} 步）处，一对样本的梯度权重 `exp(−d)` 为 {weight}。",
    "difference_weight_zero": "在 {dtype} 中它精确为 0.0（超过了 {zero}）。",
    "difference_zeros": "精确为 0.0 的 `exp` 输出，也就是梯度精确为零的样本对，最早出现在第 {step} 步，"
                        "每批最多达到 {peak} 个（第 {peak_step} 步）。",
    "difference_no_zeros": "没有任何 `exp` 输出精确为 0.0。",
    "difference_grad": "总梯度范数在第 {s0} 步为 {g0}，在第 {s1} 步为 {g1}，最小时为 {glow}（第 {slow} 步）："
                       "损失是对整个批次求和，所以近处的样本对让它保持很大，而远处的样本对退出了学习。",
    "h_stable": "{n}. 对数空间形式和 TALENT 的 softmax 形式保持有限",
    "stable_formula": "`nca_logspace` 使用 `logsumexp(x) = m + log Σ exp(x − m)`，其中 `m = max x`；TALENT 的 "
                      "`softmax` 同样先减去每行的最大值。于是最大的一项是 `exp(0) = 1`，和至少为 1，它的对数在任何距离"
                      "尺度下都是有限的；远低于最大值的项仍可能下溢为 0.0，但这只会丢掉它们微不足道的份额。它们的分母包含"
                      "自己的类别，所以损失是 `−log p`，`p ≤ 1`：下界为 0，放大距离尺度得不到任何好处。",
    "stable_run": "`{run}`（{status}）：已记录的 {n_steps} 步中有 {n_finite} 步为有限值；`d_max` 的峰值为 {dmax}；"
                  "测试准确率 {acc}。",
    "stable_softmax_zero": "有 {n} 步出现 softmax 元素下溢为 0.0（每批最多 {peak} 个），但损失仍然有限。",
    "stable_softmax_none": "没有任何 softmax 元素下溢为 0.0。",
    "stable_beyond": "它的距离达到了 {dmax}，超过了 exp 界限 {zero}，却没有造成问题。",
    "h_check": "{n}. 误差与距离尺度（`stablenca check`）",
    "check_intro": "在生成的批次上扫描每种形式与数据类型：开始失效的最小尺度（非有限，或超过一半的有效位出错）及其误差位数。",
    "h_figures": "{n}. 图",
    "no_figures": "没有绘制任何图。",
    "figure_problems": "无法绘制的图：",
    "fig_timeline": "图 {k}. `{run}`：每一步的损失、总梯度范数、距离尺度与 {dtype} 的 exp 界限 {normal} 和 {zero} 的对比，"
                    "以及下溢为 0.0 的 exp/softmax 输出个数。",
    "fig_gradients": "图 {k}. `{run}`：每个参数张量在每一步的梯度范数（对数色标）。",
    "fig_chain": "图 {k}. `{run}`：第一个非有限值的根本原因链。",
    "fig_domain": "图 {k}. 比值损失及其梯度在何处为有限、+inf、−inf 或 NaN，作为同类距离和异类距离的函数，分别在 "
                  "float32 和 float64 中计算；图上叠加了比值损失运行在记录中的轨迹。",
    "fig_check": "图 {k}. 每种形式与数据类型的误差位数随距离尺度的变化（`stablenca check`）。",
}

MESSAGES = {"en": EN, "zh": ZH}


def placeholders(template: str) -> set[str]:
    return {name for _, name, _, _ in string.Formatter().parse(template) if name}


# --------------------------------------------------------------------------- entry point


def build_report(out_dir: str | Path, check_path: str | Path | None = None) -> list[Path]:
    """Draw the figures and write ``report.md`` and ``report.zh.md`` into ``out_dir``.

    Reads only what ``stablenca diagnose`` recorded (and ``check_path``, default
    ``out_dir/check.json`` when present). Returns the written paths, figures first.
    """
    out = Path(out_dir)
    run_set = load_run_set(out)
    if check_path is None and (out / "check.json").is_file():
        check_path = out / "check.json"
    check = load_check(check_path) if check_path is not None else None
    problems: list[str] = []
    figures = plot_all(out, check_path, run_set=run_set, strict=False, problems=problems)
    doc = extract(run_set, figures, check, problems)
    written = [f.path for f in figures]
    for lang, name in REPORT_NAMES.items():
        atomic_write_text(out / name, render(doc, lang))
        written.append(out / name)
    return written
