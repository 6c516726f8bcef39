"""The sections of the diagnose report: what the recorded runs say, as a :class:`.markdown.Doc`.

:func:`extract` pulls every number from the run set into one document of message ids
and formatted parameters; the languages are only applied when it is rendered
(:func:`stablenca.report.build_report`). A number therefore exists once, and no
template holds a number of its own that the other lacks (``tests/test_report.py``
checks both catalogues).
"""

from __future__ import annotations

import math
from typing import Any

from ..floats import exp_limits, facts
from ..losses import RATIO_EPS, REGISTRY, is_stable
from .figures import FIGURES_DIR, Figure
from .markdown import Doc, Part, Prose, fmt, m
from .messages_en import EN
from .runs import RunData, RunSet, check_curves, num


# --------------------------------------------------------------------------- numbers


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


# --------------------------------------------------------------------------- extraction


def _code(value: Any) -> str:
    return "" if value is None else str(value)


def _short_op(op: str | None) -> str:
    if not op:
        return "?"
    parts = op.split(".")
    return parts[1] if len(parts) > 1 and parts[0] == "aten" else op


def extract(run_set: RunSet, figures: list[Figure], check: dict[str, Any] | None = None,
            problems: list[str] | None = None, studies: list[tuple[str, dict[str, Any]]] | None = None) -> Doc:
    """Every section of the report, with this run set's numbers (and the studies', when given:
    ``(relative path, study.json)`` pairs from ``stablenca study``)."""
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
    if studies:
        _homework(doc, section, studies, run_set)
    _figures(doc, section, figures, runs, problems or [])
    return doc


def _interval_parts(paired: dict[str, Any]) -> dict[str, Any]:
    return {"delta": f"{paired['mean']:+.4f}", "low": f"{paired['low']:+.4f}", "high": f"{paired['high']:+.4f}"}


#: Config fields that must agree for a study row's seed 0 and a diagnose run to be the same training.
_SAME_TRAINING = ("model", "loss", "task", "dtype", "epochs", "batch_size", "optimizer", "lr", "weight_decay",
                  "patience", "candidates", "readout", "sample_rate", "split_seed", "numerical", "model_options")


def _seed_zero(study: dict[str, Any], run_set: RunSet | None) -> list[tuple[str, str, float, float]]:
    """(study row, diagnose run, study seed-0 test accuracy, diagnose test accuracy) for every study row
    whose configuration is a diagnose run's (with the same seed)."""
    if run_set is None or run_set.summary.get("seed") != 0:
        return []
    pairs = []
    for row in study.get("rows", []):
        config = row.get("config") or {}
        seed_zero = next((r for r in row.get("per_seed", []) if r.get("seed") == 0), None)
        accuracy = ((seed_zero or {}).get("test") or {}).get("accuracy")
        if accuracy is None or not config:
            continue
        for run in run_set.runs:
            test = ((run.result or {}).get("test") or {}).get("accuracy")
            if test is not None and run.config and all(run.config.get(k) == config.get(k) for k in _SAME_TRAINING):
                pairs.append((row["id"], run.name, float(accuracy), float(test)))
    return pairs


def _provenance(doc: Doc, study: dict[str, Any], run_set: RunSet | None) -> None:
    """Which code and machine made the study, and whether its seed 0 reproduces the diagnose run."""
    machine = study.get("machine") or {}
    if machine:
        doc.p(m("homework_machine" if machine.get("code") else "homework_machine_no_code",
                cpus=machine.get("cpu_count", "?"), torch=machine.get("torch", "?"), jobs=machine.get("jobs", "?"),
                code=machine.get("code") or "", started=study.get("started_at", "?")))
    pairs = _seed_zero(study, run_set)
    if not pairs:
        return
    items = [[m("homework_seed_pair", row=f"`{row}`", run=f"`{run}`", study=f"{a:.4f}", diagnose=f"{b:.4f}")]
             for row, run, a, b in pairs]
    diagnose = (run_set.summary.get("machine") or {}) if run_set is not None else {}
    same = all(a == b for _, _, a, b in pairs)
    doc.p(m("homework_seed_same" if same else "homework_seed_differs", torch=machine.get("torch", "?"),
            diagnose_torch=diagnose.get("torch", "?"), threads=diagnose.get("threads", "?")))
    doc.bullets(items)


def _homework(doc: Doc, section: _Counter, studies: list[tuple[str, dict[str, Any]]],
              run_set: RunSet | None = None) -> None:
    """The homework's question answered with the studies' numbers: the ablation walk and the factors."""
    doc.h2("h_homework", n=section.next())
    doc.p(m("homework_intro"))
    for path, study in studies:
        items = []
        rows = {r["id"]: r for r in study.get("rows", [])}
        modern, student = rows.get("modernnca_f32"), rows.get("seed_ratio")
        if modern and student and modern["summary"]["accuracy"]["mean"] is not None:
            accuracy = {k: v["summary"]["accuracy"] for k, v in (("modern", modern), ("student", student))}
            items.append([m("homework_gap", modern=f"{accuracy['modern']['mean']:.4f}",
                            modern_sd=f"{accuracy['modern']['std']:.4f}",
                            student=f"{accuracy['student']['mean']:.4f}",
                            student_sd=f"{accuracy['student']['std']:.4f}")])
        for step in study.get("ablation", [])[1:]:
            paired = (step.get("paired_interval") or {}).get("accuracy")
            if paired and paired.get("low") is not None:
                items.append([m("homework_step", id=step["id"], label=f"`{step['label']}`", **_interval_parts(paired))])
        for factor in study.get("factors", []):
            paired = factor["paired"]["accuracy"]
            if paired.get("low") is not None:
                items.append([m("homework_factor", id=factor["id"], change=f"`{factor['change']}`",
                                **_interval_parts(paired))])
        if items:
            doc.p(m("homework_source", path=f"[`{path}`]({path})", n_seeds=len(study.get("seeds", []))))
            doc.bullets(items)
            _provenance(doc, study, run_set)
    doc.p(m("homework_caveat"))


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
    doc.p(m("ratio_formula"), m("ratio_logit"))
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
    return {"dtype": dtype, "normal": f"{normal:.2f}", "zero": f"{zero:.2f}",
            "ln_max": f"{math.log(facts(dtype).max):.2f}"}


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
                               root_op=_code(root.get("op") or "?"), detail=Prose(root.get("detail") or ""))]
        pattern = first.get("pattern")
        inputs = [s for s in (first.get("inputs") or (run.finding or {}).get("inputs") or []) if isinstance(s, dict)]
        if pattern == "overflow" and phase == "backward":
            loss = num(record.get("loss")) if record else math.nan
            if len(inputs) >= 2:
                parts.append(m("explain_backward_overflow", loss=loss, big=num(inputs[0].get("max")),
                               small=num(inputs[1].get("min")), dtype=run.dtype, fmax=facts(run.dtype).max,
                               ln_max=f"{math.log(facts(run.dtype).max):.2f}"))
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
        verification = first.get("verification") or (run.finding or {}).get("verification")
        if isinstance(verification, dict) and verification.get("statement"):
            parts.append(m("failure_verified", statement=Prose(verification["statement"])))
        kind = root.get("kind")
        if kind in ("underflow", "empty_set", "cancellation", "nonfinite_input", "domain", "division_by_zero"):
            parts.append(m(f"root_{kind}", root_op=_code(root.get("op") or "?")))
        doc.p(*parts)
        chain = run.chain_text()
        if chain:
            doc.p(m("chain_intro"))
            doc.code(Prose(chain))
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
            # P_diff gets eps twice (the student's divisor), P_same once.
            smallest, added = min((v, eps * (1 if key == "p_same_min" else 2)) for r in run.records
                                  for key in ("p_same_min", "p_diff_min") for v in [num(r.get(key))]
                                  if math.isfinite(v) and v > 0)
            parts.append(m("eps_bias", p=smallest, factor=smallest / (smallest + added)))
        exact = sum(1 for r in run.records if num(r.get("p_same_min")) == 0 or num(r.get("p_diff_min")) == 0)
        if exact:
            parts.append(m("eps_exact_zero", n_zero=exact))
    dead = sum(1 for r in run.records if num(r.get("grad_norm")) == 0)
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
            row["breakdown_scale"]) else ("cell_none", {}), Prose(row["breakdown_reason"]) if row["breakdown_reason"] else "—",
            fmt(row["finite_fraction"]), f"{fmt(row['loss_bits_median'])} / {fmt(row['loss_bits_max'])}"])
    doc.p(m("check_intro"))
    sweep = check.get("sweep") or {}
    if all(k in sweep for k in ("scale_min", "scale_max", "points_per_decade")):
        doc.p(m("check_scale", low=fmt(sweep["scale_min"]), high=fmt(sweep["scale_max"]),
                per_decade=sweep["points_per_decade"], **_limits_params("float32")))
    doc.p(m("check_metric"))
    doc.p(m("check_reference", dps=sweep.get("dps", "50")))
    for row in check_curves(check):
        bias = _unpatched_breakdown(row)
        if bias is not None:
            own = row["breakdown_scale"]
            doc.p(m("check_unpatched" if math.isfinite(own) else "check_unpatched_never", loss=row["loss"],
                    unpatched=row["unpatched"], dtype=row["dtype"], threshold=fmt(row["threshold_bits"]),
                    scale=fmt(bias[0]), bits=fmt(bias[1]), own=fmt(own), high=fmt(sweep.get("scale_max"))))
    doc.table(["col_loss", "col_dtype", "col_breakdown", "col_reason", "col_finite", "col_bits"], rows)


def _unpatched_breakdown(row: dict[str, Any]) -> tuple[float, float] | None:
    """The first scale where a patched loss is more than the threshold away from the exact unpatched loss,
    and its median bits there (None when it was not measured or never is)."""
    if not row.get("unpatched"):
        return None
    for point in row["curve"]:
        bits = num(point.get("unpatched_loss_bits"))
        if math.isfinite(bits) and bits > row["threshold_bits"]:
            return point["scale"], bits
    return None


_FIGURE_CAPTIONS = {"timeline": "fig_timeline", "gradients": "fig_gradients", "chain": "fig_chain",
                    "domain": "fig_domain", "check": "fig_check", "sweep": "fig_sweep",
                    "comparison": "fig_comparison", "validation": "fig_validation"}
#: Figures the text does not lean on: drawn in an appendix after the others.
_APPENDIX = ("gradients", "chain")


def _figures(doc: Doc, section: _Counter, figures: list[Figure], runs: list[RunData], problems: list[str]) -> None:
    doc.h2("h_figures", n=section.next())
    if not figures:
        doc.p(m("no_figures"))
    else:
        doc.p(m("figure_labels"))
    by_name = {r.name: r for r in runs}
    order = {"sweep": 0, "domain": 1, "comparison": 2, "validation": 3, "check": 4, "timeline": 5}
    ordered = sorted(figures, key=lambda f: (f.kind in _APPENDIX, order.get(f.kind, 6),
                                             [r.name for r in runs].index(f.run) if f.run in by_name else 0))
    appendix_started = False
    for k, figure in enumerate(ordered, start=1):
        if figure.kind in _APPENDIX and not appendix_started:
            appendix_started = True
            doc.h2("h_appendix")
        run = by_name.get(figure.run) if figure.run else None
        params: dict[str, Any] = {"k": k, "run": figure.run or ""}
        if run is not None:
            params.update(_limits_params(run.dtype))
        relative = f"{FIGURES_DIR}/{figure.path.name}"
        doc.image(relative, m(_FIGURE_CAPTIONS[figure.kind], **params))
    if problems:
        doc.p(m("figure_problems"))
        doc.code("\n".join(problems))
