"""Figures of a ``stablenca diagnose`` output directory, from the recorded data alone.

Nothing here trains or replays: every figure is drawn from ``summary.json``,
``<run>/records.jsonl``, ``<run>/finding.json`` (and ``check.json`` for figure 3).
Matplotlib is imported lazily, with the Agg canvas and no pyplot state, and every
PNG is rendered into memory and written atomically.

The figures (``OUT/figures/``):

1. ``<run>-timeline.png``: loss, gradient norm, the largest distance against the
   dtype's ``exp`` limits, and the count of ``exp``/softmax outputs that underflowed
   to 0.0, per step; the first non-finite step labelled with its root cause.
2. ``ratio-failure-domain.png``: where the ratio loss (and its gradient) is finite,
   +inf, -inf or NaN, as a function of the same-class and other-class distance, in
   float32 and float64, with the ratio runs' trajectories drawn over it.
3. ``error-vs-scale.png``: bits of error against the distance scale per formulation
   and dtype, from ``stablenca check --json`` (see :func:`check_curves`).
4. ``<run>-gradients.png``: per-parameter gradient norms over steps (log colour).
5. ``<run>-chain.png``: the root-cause chain of a failed run as boxes and arrows.

The dtype limits drawn come from :mod:`stablenca.floats`.
"""

from __future__ import annotations

import dataclasses
import io
import math
import multiprocessing
import os
import textwrap
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .. import artifacts, floats
from ..losses import ratio
from ..errors import DataError
from ..floats import exp_limits
from ..records import atomic_write_bytes
from ..runtime.forking import frozen_heap
from .runs import RunData, RunSet, check_curves, format_number, load_check, load_run_set, num

FIGURES_DIR = "figures"
#: Loss names of the ratio family (the failure-domain figure overlays their runs).
RATIO_FAMILY = ("ratio", "ratio_eps")

# Colours shared by the figures (colour-blind safe where it matters).
_RED = "#c0392b"
_BLUE = "#1f77b4"
_ORANGE = "#e67e22"
_GREY = "#7f7f7f"


# --------------------------------------------------------------------------- matplotlib plumbing


def _figure(width: float, height: float, layout: str | None = "constrained"):
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), dpi=100, layout=layout)


#: One mathtext parser for every figure this process renders. Agg gives each new renderer (one per
#: figure) a parser of its own, and matplotlib's parse cache is keyed by the parser, so every figure
#: parsed its log axes' ``10^{k}`` labels again (about 10 ms each, 0.2 s a timeline). A parse depends
#: only on the text, the dpi and the font, which the cache key holds: the pixels are the same.
_MATH_PARSER = None


def png_bytes(fig) -> bytes:
    """``fig`` rendered to PNG in memory (its mathtext parsed by this process's shared parser)."""
    global _MATH_PARSER
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.mathtext import MathTextParser

    if _MATH_PARSER is None:
        _MATH_PARSER = MathTextParser("path")  # what RendererAgg makes for itself
        # A parse holds its fonts, and a forked child shares their files' offsets with this process:
        # two processes reading glyphs through them garble each other's (FreeType "invalid outline").
        # Children parse afresh, with fonts of their own (matplotlib empties its font cache at fork too).
        os.register_at_fork(after_in_child=MathTextParser._parse_cached.cache_clear)
    canvas = FigureCanvasAgg(fig)
    # savefig at the figure's own dpi draws with this renderer (Agg keeps it while size and dpi match).
    canvas.get_renderer().mathtext_parser = _MATH_PARSER
    for ax in fig.axes:
        if _title_stays(ax):
            ax._autotitlepos = False  # what set_title(y=1.0) sets; the title is at y = 1.0 already
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    return buffer.getvalue()


def _title_stays(ax) -> bool:
    """Whether matplotlib's automatic title placement would leave ``ax``'s titles where they are (y = 1).

    It lifts a title only above what reaches over the axes' top: x ticks or an x label on top (its own,
    a twin's, a child's such as a secondary axis, an aligned title's neighbour) or the y axis' offset
    text ("1e6"). To find out, it lays out every y tick label of the axes once more before the draw
    lays them out again (a fifth of a timeline's drawing time). Where none of these can exist, it is skipped.
    """
    from matplotlib.ticker import ScalarFormatter

    if ax.child_axes or getattr(ax, "_autotitlepos", None) is not True:
        return False  # a child may have top ticks; a title placed by hand is left alone
    try:  # matplotlib's private groups: in a version without them, matplotlib places the titles
        twins = ax._twinned_axes.get_siblings(ax)
        aligned = ax.get_figure(root=True)._align_label_groups["title"].get_siblings(ax)
    except (AttributeError, KeyError, TypeError):
        return False
    if len(twins) > 1 or len(aligned) > 1:
        return False
    if ax.xaxis.get_label_position() != "bottom" or not _x_ticks_below(ax):
        return False
    formatter = ax.yaxis.get_major_formatter()
    if isinstance(formatter, ScalarFormatter):
        # Its offset text depends on the ticks, and their number on the axes' size: known now only
        # when no layout engine or aspect moves the axes before the draw. Then the ticks found here
        # are the draw's.
        if ax.get_figure(root=True).get_layout_engine() is not None or ax.get_aspect() != "auto":
            return False
        formatter.set_locs(ax.yaxis.get_majorticklocs())
    return not formatter.get_offset()


def _x_ticks_below(ax) -> bool:
    """Whether nothing of ``ax``'s x ticks reaches over its top.

    matplotlib measures the x axis for a position of "top" or "unknown". The upper panels of a
    ``sharex`` column are "unknown" (their tick labels are hidden, only the marks are left), and
    measuring them lays out their ticks once more before the draw. With no top mark or label and
    the bottom marks pointing out, nothing can reach over the top.
    """
    position = ax.xaxis.get_ticks_position()
    if position == "bottom":
        return True
    if position != "unknown":
        return False
    ticks = ax.xaxis.majorTicks[:1] + ax.xaxis.minorTicks[:1]  # matplotlib's own representatives
    return all(not tick.tick2line.get_visible() and not tick.label2.get_visible()
               and getattr(tick, "_tickdir", None) == "out" for tick in ticks)


def load_fonts() -> None:
    """Draw one small figure here, so this process has found and loaded matplotlib's fonts.

    The first text a process draws costs about 0.3 s (font list, glyph cache), and its first mathtext
    (a log axis' tick label) about 0.3 s more (the parser's grammar); processes forked afterwards
    inherit both (not the parses themselves: see :func:`png_bytes`).
    """
    fig = _figure(1, 1)
    ax = fig.add_subplot()
    ax.set_title("0")
    ax.set_yscale("log")
    png_bytes(fig)


def save_figure(fig, path: str | Path) -> Path:
    """Render ``fig`` to PNG in memory, then write it atomically."""
    atomic_write_bytes(path, png_bytes(fig))
    return Path(path)


_fmt = format_number


def _mark_nonfinite(ax, x: np.ndarray, y: np.ndarray, label: str = "NaN / ±inf recorded") -> bool:
    """Red crosses on the top edge of ``ax`` where ``y`` is NaN or ±inf (True when any)."""
    bad = ~np.isfinite(y)
    if not bad.any():
        return False
    ax.plot(x[bad], np.full(bad.sum(), 0.97), "x", color=_RED, ms=9, mew=2, label=label,
            transform=ax.get_xaxis_transform(), clip_on=False, zorder=5)
    return True


def _smoothed(ax, x: np.ndarray, y: np.ndarray, colour: str) -> None:
    """A running median over about 4% of the steps, drawn when there are more than 200 points."""
    if len(y) <= 200:
        return
    window = max(5, len(y) // 25) | 1
    medians = np.median(np.lib.stride_tricks.sliding_window_view(y, window), axis=1)
    half = window // 2
    ax.plot(x[half:len(x) - half], medians, color=colour, lw=1.6, label=f"running median ({window} steps)")


def _root_label(run: RunData) -> str:
    """'overflow at div (backward, DivBackward0)' from the summary entry."""
    first = run.first_nonfinite or {}
    root = first.get("root_cause") or {}
    op = root.get("op") or first.get("op") or "?"
    short = op.split(".")[1] if op.startswith("aten.") and "." in op else op
    phase = first.get("phase")
    node = first.get("backward_node")
    where = ", ".join(x for x in (phase, node) if x)
    first_op = first.get("op") or "?"
    first_short = first_op.split(".")[1] if first_op.startswith("aten.") and "." in first_op else first_op
    text = f"{root.get('kind', 'unknown')} at {short}"
    if first_short != short:
        text += f" → first non-finite op {first_short}"
    return text + (f" ({where})" if where else "")


def _interp(x, xp: np.ndarray, fp: np.ndarray) -> np.ndarray:
    """Piecewise-linear like ``np.interp``, but extended linearly beyond both ends (no clamping)."""
    x = np.asarray(x, dtype=float)
    y = np.interp(x, xp, fp)
    for outside, (i, j) in ((x < xp[0], (0, 1)), (x > xp[-1], (-2, -1))):
        if np.any(outside):
            slope = (fp[j] - fp[i]) / (xp[j] - xp[i])
            y = np.where(outside, fp[j] + (x - xp[j]) * slope, y)
    return y


def _epoch_axis(ax, run: RunData) -> None:
    """A secondary x axis on top with the epoch number."""
    steps = run.steps()
    epochs = run.series("epoch")
    ok = np.isfinite(steps) & np.isfinite(epochs)
    if ok.sum() < 2 or np.nanmax(epochs) == np.nanmin(epochs):
        return
    starts_step, starts_epoch = [], []
    for s, e in zip(steps[ok], epochs[ok]):
        if not starts_epoch or e != starts_epoch[-1]:
            starts_step.append(s)
            starts_epoch.append(e)
    # A run that stops early in its last epoch: that epoch still ends where an epoch of the
    # previous epoch's length would, so the axis is not squeezed into its few recorded steps.
    own = steps[ok][-1] + 1 - starts_step[-1]
    previous = starts_step[-1] - starts_step[-2] if len(starts_step) > 1 else own
    starts_step.append(starts_step[-1] + max(own, previous))
    starts_epoch.append(starts_epoch[-1] + 1)
    xs, es = np.array(starts_step, dtype=float), np.array(starts_epoch, dtype=float)
    secondary = ax.secondary_xaxis("top", functions=(lambda s: _interp(s, xs, es), lambda e: _interp(e, es, xs)))
    secondary.set_xlabel("epoch")
    from matplotlib.ticker import MaxNLocator

    secondary.xaxis.set_major_locator(MaxNLocator(integer=True))


# --------------------------------------------------------------------------- figure 1: timeline


def timeline_figure(run: RunData):
    """Loss, gradient norm, distance scale against the exp limits, underflow counts; failure marked."""
    # A fixed layout (legends in the right margin): constrained layout would double the drawing time.
    fig = _figure(13, 15.5, layout=None)
    fig.subplots_adjust(left=0.085, right=0.755, top=0.915, bottom=0.04, hspace=0.32)
    axes = fig.subplots(6, 1, sharex=True)
    steps = run.steps()
    status = run.status
    fail = run.failure_step
    headline = f"{run.name}: training timeline ({run.model} model, {run.loss} loss, {run.dtype})"
    if fail is not None:
        sub = f"diverged at step {fail}: {_root_label(run)}"
    elif run.interrupted:
        sub = f"interrupted after {len(run.records)} recorded steps"
    else:
        sub = f"{status}: all {len(run.records)} recorded steps finite" if all(
            r.get("finite", True) for r in run.records) else status
    fig.suptitle(f"{headline}\n{sub}", fontsize=12)
    if not run.records:
        for ax in axes:
            ax.text(0.5, 0.5, "no records were written for this run", ha="center", va="center",
                    transform=ax.transAxes)
        return fig

    # (a) loss
    ax = axes[0]
    loss = run.series("loss")
    ok = np.isfinite(loss)
    summed = run.loss == "difference"  # a sum over the batch, not a mean
    ax.plot(steps[ok], loss[ok], lw=0.9, color=_BLUE, label="loss (batch sum)" if summed else "loss (batch mean)",
            alpha=0.55 if ok.sum() > 200 else 1)
    _smoothed(ax, steps[ok], loss[ok], "navy")
    _mark_nonfinite(ax, steps, loss, "loss NaN / ±inf")
    if np.nanmin(np.where(ok, loss, np.nan), initial=np.inf) < 0 < np.nanmax(np.where(ok, loss, np.nan),
                                                                             initial=-np.inf):
        ax.axhline(0, color=_GREY, lw=0.8, ls=":")
    ax.set_ylabel("training loss\n(per batch)")
    if summed:  # it grows with the batch and spans decades: symlog keeps both ends readable
        ax.set_yscale("symlog", linthresh=1.0)
    ax.set_title("(a) loss", loc="left", fontsize=10)

    # (b) gradient norm
    ax = axes[1]
    grad = run.series("grad_norm")
    ok = np.isfinite(grad) & (grad > 0)
    ax.plot(steps[ok], grad[ok], lw=0.9, color=_ORANGE, label="‖gradient‖₂ over all parameters",
            alpha=0.55 if ok.sum() > 200 else 1)
    _smoothed(ax, steps[ok], grad[ok], "saddlebrown")
    _mark_nonfinite(ax, steps, grad, "gradient NaN / ±inf")
    if ok.any():
        ax.set_yscale("log")
    ax.set_ylabel("total gradient\nL2 norm (log)")
    ax.set_title("(b) gradient norm", loc="left", fontsize=10)

    # (c) distance scale against the exp limits
    ax = axes[2]
    normal, zero = exp_limits(run.dtype)
    key = "max_d_over_T" if run.has("max_d_over_T") else "d_max"
    dmax = run.series(key)
    drawn = []
    for name, values, style in ((f"largest d/T ({key})", dmax, dict(color="black", lw=1.1)),
                                ("99th percentile d_p99", run.series("d_p99"), dict(color=_BLUE, lw=0.8)),
                                ("median d_p50", run.series("d_p50"), dict(color=_GREY, lw=0.8))):
        good = np.isfinite(values) & (values > 0)
        if good.any():
            ax.plot(steps[good], values[good], label=name, **style)
            drawn.append(values[good])
    _mark_nonfinite(ax, steps, dmax, "distance NaN / inf")
    ax.axhline(normal, color=_ORANGE, ls="--", lw=1.2, label=f"{normal:.2f}: exp(-d) becomes subnormal ({run.dtype})")
    ax.axhline(zero, color=_RED, ls="-", lw=1.4, label=f"{zero:.2f}: exp(-d) = 0.0 exactly ({run.dtype})")
    ax.set_yscale("log")
    low = min((np.min(v) for v in drawn), default=0.1)
    ax.set_ylim(max(low * 0.5, 1e-3), max(zero * 1.6, max((np.max(v) for v in drawn), default=1.0) * 1.3))
    if fail is not None and np.isfinite(dmax[steps == fail]).any():
        # The value goes in the legend (a text box beside the curve would cover it).
        at = float(dmax[steps == fail][0])
        ax.plot([fail], [at], "o", mfc="none", color="black", ms=7, label=f"{key} {at:.4g} at step {fail}")
    ax.set_ylabel("distance d/T\n(dimensionless, log)")
    ax.set_title("(c) distance scale vs the exp underflow limits", loc="left", fontsize=10)

    # (d) underflow counts
    ax = axes[3]
    any_count = False
    for key, label, colour in (("exp_zero", "exp(-d) outputs exactly 0.0", _RED),
                               ("exp_subnormal", "exp(-d) outputs subnormal", _ORANGE),
                               ("softmax_zero", "softmax outputs exactly 0.0", "purple")):
        if not run.has(key):
            continue
        values = run.series(key)
        good = np.isfinite(values)
        ax.step(steps[good], values[good], where="mid", lw=1.0, color=colour, label=label)
        any_count = True
        first = np.argmax(values > 0) if (values > 0).any() else None
        if first is not None and key != "exp_subnormal":
            ax.plot([steps[first]], [values[first]], "o", mfc="none", color=colour, ms=7,
                    label=f"first {label.split(' outputs')[0]} = 0.0 at step {int(steps[first])}")
    ax.set_yscale("symlog", linthresh=1)
    peak = max((np.nanmax(run.series(k), initial=0) for k in ("exp_zero", "exp_subnormal", "softmax_zero")
                if run.has(k)), default=0)
    ax.set_ylim(0, max(10.0, float(peak) * 3 if math.isfinite(peak) else 10.0))
    if not any_count:
        ax.text(0.5, 0.5, "this loss published no exp / softmax outputs", ha="center", va="center",
                transform=ax.transAxes, color=_GREY)
    else:
        totals = [np.nansum(run.series(k)) for k in ("exp_zero", "softmax_zero") if run.has(k)]
        if not any(t > 0 for t in totals):
            ax.text(0.5, 0.55, "no exp / softmax output underflowed to 0.0 in this run",
                    ha="center", va="center", transform=ax.transAxes, color=_GREY)
    ax.set_ylabel("entries per batch\n(symlog)")
    ax.set_title("(d) underflowed outputs", loc="left", fontsize=10)

    _margin_panel(axes[4], run, steps)
    _sums_panel(axes[5], run, steps)
    axes[5].set_xlabel("training step (batch index)")

    for ax in axes:
        if fail is not None:
            ax.axvline(fail, color=_RED, lw=1.2, ls="-.", label=f"first non-finite step {fail}")
        elif run.interrupted and len(steps):
            ax.axvline(steps[-1], color=_GREY, lw=1.0, ls="-.", label=f"interrupted after step {int(steps[-1])}")
        ax.grid(True, alpha=0.25)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8, frameon=False)
    _epoch_axis(axes[0], run)
    return fig


def _margin_panel(ax, run: RunData, steps: np.ndarray) -> None:
    """(e) 2b − a of the row with the largest 2b − a, against ln(max float) where e^(2b − a) overflows."""
    ln_max = math.log(floats.facts(run.dtype).max)
    aside = "" if run.loss == "ratio" else f" ({run.loss} never forms it: drawn for comparison)"
    ax.set_title(f"(e) 2b − a against ln(max {run.dtype}) = {ln_max:.2f}: DivBackward0 of log(P_same / P_diff) "
                 f"forms e^(2b − a){aside}", loc="left", fontsize=9.5)
    ax.set_ylabel("2b − a\n(a = −ln P_same, b = −ln P_diff)")
    if not (run.has("ab_backward_a") and run.has("ab_backward_b")):
        why = ("these records carry no per-row (a, b): recorded before the probes kept them" if run.has("p_same_min")
               else "this loss published no P_same / P_diff")
        ax.text(0.5, 0.5, why, ha="center", va="center", transform=ax.transAxes, color=_GREY)
        return
    a, b = run.series("ab_backward_a"), run.series("ab_backward_b")
    with np.errstate(invalid="ignore"):
        exponent = 2 * b - a
    good = np.isfinite(exponent)
    ax.plot(steps[good], exponent[good], lw=0.9, color="#5e3c99",
            label="2b − a of the batch's row where it is largest")
    ax.axhline(ln_max, color=_RED, lw=1.4, label=f"{ln_max:.2f} = ln(max {run.dtype}): e^(2b − a) overflows above")
    _mark_nonfinite(ax, steps, exponent, "a sum was 0.0 (2b − a = ±inf / NaN)")
    if good.any():
        worst = int(np.flatnonzero(good)[np.argmax(exponent[good])])
        ax.plot([steps[worst]], [exponent[worst]], "o", mfc="none", color="black", ms=7,
                label=f"largest {exponent[worst]:.2f} at step {int(steps[worst])} "
                      f"(margin {ln_max - exponent[worst]:+.2f})")
        top = max(float(np.max(exponent[good])), ln_max)
        ax.set_ylim(min(float(np.min(exponent[good])), 0.0) - 0.05 * top, top * 1.15)


def _sums_panel(ax, run: RunData, steps: np.ndarray) -> None:
    """(f) the smallest P_same and P_diff of each batch (log), against the dtype's smallest normal and subnormal."""
    ax.set_title("(f) smallest P_same and P_diff of each batch (may come from different rows)", loc="left",
                 fontsize=10)
    ax.set_ylabel("sum of exp(−d)\n(log)")
    drawn = False
    for key, colour, label in (("p_same_min", _BLUE, "smallest P_same"), ("p_diff_min", _ORANGE, "smallest P_diff")):
        if not run.has(key):
            continue
        values = run.series(key)
        good = np.isfinite(values) & (values > 0)
        ax.plot(steps[good], values[good], lw=0.9, color=colour, label=label)
        zero = np.isfinite(values) & (values == 0)
        if zero.any():  # 0.0 has no place on a log axis: crosses on the bottom edge
            ax.plot(steps[zero], np.full(zero.sum(), 0.03), "x", color=colour, ms=7, mew=1.5,
                    transform=ax.get_xaxis_transform(), clip_on=False, label=f"{label} exactly 0.0")
        drawn = drawn or good.any()
    if not drawn:
        ax.text(0.5, 0.5, "this loss published no P_same / P_diff", ha="center", va="center",
                transform=ax.transAxes, color=_GREY)
        return
    info = torch.finfo(getattr(torch, run.dtype))
    ax.axhline(info.tiny, color=_ORANGE, ls="--", lw=1.0, label=f"{info.tiny:.3g}: smallest normal {run.dtype}")
    ax.axhline(info.smallest_normal * info.eps, color=_RED, lw=1.2,
               label=f"{info.smallest_normal * info.eps:.3g}: smallest subnormal")
    ax.set_yscale("log")
    positive = [v[np.isfinite(v) & (v > 0)] for v in (run.series("p_same_min"), run.series("p_diff_min"))]
    high = max((float(v.max()) for v in positive if v.size), default=1.0)
    ax.set_ylim(info.smallest_normal * info.eps / 100, high * 100)  # the limits always in view


# --------------------------------------------------------------------------- figure 2: failure domain

#: Category codes of the failure-domain grid, in legend order.
DOMAIN_CATEGORIES = (
    ("finite loss and gradient", "#d9f0d3"),
    ("finite loss, non-finite gradient (backward overflow)", "#fdb863"),
    ("loss = +inf  (P_same = 0: log 0)", "#9e9ac8"),
    ("loss = -inf  (P_diff = 0: x/0)", "#4a1486"),
    ("loss = NaN  (0/0)", "#d7191c"),
)


def ratio_domain(dtype: str, d_max: float, n: int = 241, d_min: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
    """Evaluate :func:`stablenca.losses.ratio` and its gradient on an ``n × n`` grid in ``dtype``.

    Each grid point is one query with one same-class candidate at distance ``d_same``
    (x) and one other-class candidate at ``d_other`` (y), so x = a = −ln P_same and
    y = b = −ln P_diff (``d_min < 0`` stands for sums above 1). Returns the axis values and
    an ``(n, n)`` array of category codes (rows: d_other, columns: d_same; see
    :data:`DOMAIN_CATEGORIES`). A cheap analytic evaluation, no training.
    """
    axis = np.linspace(d_min, d_max, n)
    grid_same, grid_other = np.meshgrid(axis, axis, indexing="xy")
    torch_dtype = getattr(torch, dtype)
    distances = torch.tensor(np.stack([grid_same.ravel(), grid_other.ravel()], axis=1), dtype=torch_dtype)
    distances.requires_grad_(True)
    queries = torch.zeros(len(distances), dtype=torch.long)
    candidates = torch.tensor([0, 1])
    self_mask = torch.zeros(distances.shape, dtype=torch.bool)
    with torch.enable_grad():
        per_row = ratio(distances, queries, candidates, self_mask).per_sample
        (grad,) = torch.autograd.grad(per_row.sum(), distances)
    loss = per_row.detach().double().numpy()
    grad_ok = torch.isfinite(grad).all(dim=1).numpy()
    codes = np.zeros(loss.shape, dtype=int)
    codes[~grad_ok] = 1
    codes[loss == np.inf] = 2
    codes[loss == -np.inf] = 3
    codes[np.isnan(loss)] = 4
    return axis, codes.reshape(n, n)


#: Real rows recorded by the probes (:func:`stablenca.runtime.probes.row_coordinates`): key,
#: legend text, marker colour (None: coloured by progress through the run), marker size.
DOMAIN_ROWS = (
    ("backward", "row with the largest 2b − a (decides the backward overflow)", None, 16),
    ("same", "row with the smallest P_same (largest a)", "#e7298a", 9),
    ("diff", "row with the smallest P_diff (largest b)", "#000000", 9),
)


def _row_paths(run: RunData) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """(a, b) per step of each recorded real row; empty for records made before the probes kept them."""
    return {key: (run.series(f"ab_{key}_a"), run.series(f"ab_{key}_b"))
            for key, *_ in DOMAIN_ROWS if run.has(f"ab_{key}_a") and run.has(f"ab_{key}_b")}


def failure_domain_figure(runs: Iterable[RunData] = ()):
    """Figure 2: the ratio loss's failure domain in float32 and float64, real rows' (a, b) overlaid."""
    from matplotlib import colormaps
    from matplotlib.colors import ListedColormap
    from matplotlib.lines import Line2D
    from matplotlib.patches import Patch

    runs = [r for r in runs if r.records]
    overlay = next((chosen for chosen in ([r for r in runs if r.loss == name] for name in RATIO_FAMILY) if chosen),
                   runs)
    fig = _figure(14, 7.6)
    axes = fig.subplots(1, 2)
    cmap = ListedColormap([colour for _, colour in DOMAIN_CATEGORIES])
    fig.suptitle("Failure domain of the ratio loss  −log(P_same / P_diff)  in a = −ln P_same, b = −ln P_diff\n"
                 "(grid: one query with one same-class and one other-class neighbour, so a and b are the distances; "
                 "loss and gradient in the panel's dtype; points: real rows of the ratio runs' batches)", fontsize=11)
    present: set[int] = set()
    progress_source = None
    edge_drawn = False
    markers = ("o", "s", "^", "D")
    legend_runs = []
    viridis = colormaps["viridis"]
    for ax, dtype in zip(axes, ("float32", "float64")):
        normal, zero = exp_limits(dtype)
        mine = [r for r in overlay if r.dtype == dtype]
        paths = {r.name: _row_paths(r) for r in mine}
        values = np.concatenate([v[np.isfinite(v)] for p in paths.values() for pair in p.values() for v in pair]
                                or [np.zeros(0)])
        # Sums above 1 give negative a or b: the axes reach them instead of clipping them to 0.
        low = min(0.0, float(values.min()) * 1.08 if values.size else 0.0)
        extent = max(zero * 1.55, float(values.max()) * 1.05 if values.size else 0.0)
        axis, codes = ratio_domain(dtype, extent, d_min=low)
        present.update(int(c) for c in np.unique(codes))
        ax.imshow(codes, origin="lower", extent=(low, extent, low, extent), cmap=cmap, vmin=-0.5,
                  vmax=len(DOMAIN_CATEGORIES) - 0.5, interpolation="nearest", aspect="equal")
        for value, style, text in ((zero, dict(color="black", lw=1.0, ls="-"), f"{zero:.2f}: exp(−d) = 0.0"),
                                   (normal, dict(color="black", lw=0.8, ls=":"), f"{normal:.2f}: subnormal")):
            ax.axvline(value, **style)
            ax.axhline(value, **style)
            ax.text(value, extent * 0.985, f" {text}", rotation=90, va="top", ha="right", fontsize=8)
        ln_max = math.log(floats.facts(dtype).max)
        a = np.array([low, extent])
        for b, x0, label in (((a + ln_max) / 2, 0.45, f"2b − a = {ln_max:.2f}: DivBackward0's (x/y)/y overflows"),
                             (a + ln_max, 0.02, f"b − a = {ln_max:.2f}: P_same / P_diff overflows")):
            ax.plot(a, b, color="#08306b", lw=1.2, ls="--")
            x = low + x0 * (extent - low)
            ax.text(x, np.interp(x, a, b) + extent * 0.012, label, fontsize=7.5, color="#08306b", va="bottom",
                    bbox=dict(fc="white", ec="none", alpha=0.7, pad=1))
        ax.axvline(ln_max, color="#08306b", lw=1.2, ls="--")
        ax.text(ln_max, low + (extent - low) * 0.02, f" a = {ln_max:.2f}: 1/P_same overflows", rotation=90,
                fontsize=7.5, color="#08306b", va="bottom", ha="right")
        if low < 0:
            ax.axvline(0, color=_GREY, lw=0.6)
            ax.axhline(0, color=_GREY, lw=0.6)
        ax.set_xlim(low, extent)
        ax.set_ylim(low, extent)
        ax.set_xlabel("a = −ln P_same  (grid: the same-class distance d/T; < 0 where P_same > 1)")
        ax.set_ylabel("b = −ln P_diff  (grid: the other-class distance d/T; < 0 where P_diff > 1)")
        ax.set_title(f"{dtype}: exp underflows at d > {zero:.2f}", fontsize=10)
        if not any(paths.values()):
            why = f"no {dtype} ratio run recorded" if not mine else "these records carry no per-row (a, b)"
            ax.text(0.03, 0.03, f"{why}: grid only", transform=ax.transAxes, fontsize=9,
                    color=_GREY, bbox=dict(fc="white", ec=_GREY, alpha=0.8))
        for k, run in enumerate(mine):
            marker = markers[k % len(markers)]
            rows = paths[run.name]
            steps = run.steps()
            span = max(1.0, float(np.nanmax(steps) - np.nanmin(steps))) if len(steps) else 1.0
            progress = (steps - np.nanmin(steps)) / span if len(steps) else steps
            for key, text, colour, size in DOMAIN_ROWS:
                if key not in rows:
                    continue
                xs, ys = rows[key]
                # +inf (a sum that is exactly 0.0) is drawn on the edge, with the marker filled white.
                at_edge = np.isposinf(xs) | np.isposinf(ys)
                xs, ys = np.where(np.isposinf(xs), extent, xs), np.where(np.isposinf(ys), extent, ys)
                good = np.isfinite(xs) & np.isfinite(ys)
                if colour is None:
                    points = ax.scatter(xs[good], ys[good], c=progress[good], cmap=viridis, vmin=0, vmax=1, s=size,
                                        marker=marker, edgecolors="none", zorder=3)
                    progress_source = points
                    handle = Line2D([], [], marker=marker, ls="", color=viridis(0.5), mec="none",
                                    label=f"{run.name}: {text}; colour: progress (bar)")
                else:
                    ax.scatter(xs[good], ys[good], s=size, marker=marker, facecolors="none", edgecolors=colour,
                               linewidths=0.7, zorder=3)
                    handle = Line2D([], [], marker=marker, ls="", color=colour, mfc="none",
                                    label=f"{run.name}: {text}")
                if (good & at_edge).any():
                    edge_drawn = True
                    ax.scatter(xs[good & at_edge], ys[good & at_edge], s=size * 2, marker=marker, facecolors="white",
                               edgecolors=colour or "black", zorder=3)
                legend_runs.append(handle)
            if "backward" in rows:
                xs, ys = rows["backward"]
                good = np.flatnonzero(np.isfinite(xs) & np.isfinite(ys))
                if good.size:
                    last = good[-1]
                    label = f"last recorded step {int(steps[last])}"
                    if run.failure_step is not None and int(steps[last]) == run.failure_step:
                        label = f"step {run.failure_step}: first non-finite"
                    ax.plot(xs[last], ys[last], "X", color=_RED, ms=12, mec="white", zorder=4)
                    # Labels sit in the upper left (loss = −inf for one neighbour each: no row goes there),
                    # clear of the points, the boundary lines and their labels.
                    ax.annotate(f"{run.name}, {label}\na = {xs[last]:.2f}, b = {ys[last]:.2f}, "
                                f"2b − a = {2 * ys[last] - xs[last]:.2f}", (xs[last], ys[last]),
                                xytext=(0.03, 0.97 - 0.1 * k), textcoords="axes fraction", ha="left", va="top",
                                fontsize=7.5, color=_RED, arrowprops=dict(arrowstyle="->", color=_RED, lw=0.7,
                                                                          alpha=0.7),
                                bbox=dict(fc="white", ec=_RED, alpha=0.9))
    if progress_source is not None:
        cbar = fig.colorbar(progress_source, ax=list(axes), shrink=0.6, pad=0.01)
        cbar.set_label("progress through the run (0 = first recorded step, 1 = last)")
    handles = [Patch(color=colour, label=label) for k, (label, colour) in enumerate(DOMAIN_CATEGORIES)
               if k in present or k == 0]
    if edge_drawn:
        handles.append(Line2D([], [], marker="o", ls="", mfc="white", mec="black",
                              label="white fill: a sum exactly 0.0 (a or b = +inf), drawn on the edge"))
    fig.legend(handles=handles + legend_runs, loc="outside lower center", ncol=2, fontsize=8.5, frameon=False)
    return fig


# --------------------------------------------------------------------------- figure 3: error vs scale

def error_vs_scale_figure(check: dict[str, Any]):
    """Figure 3: bits of error of each formulation against the distance scale, per dtype."""
    rows = check_curves(check)
    sweep = check.get("sweep") or {}
    scale_min = num(sweep.get("scale_min"))
    scale_max = num(sweep.get("scale_max"))
    # An unknown dtype in the check JSON is an error (floats.dtype_name), never drawn as float32.
    dtypes = sorted({floats.dtype_name(r["dtype"]) for r in rows}, key=floats.DTYPE_NAMES.index)
    losses = list(dict.fromkeys(r["loss"] for r in rows))
    colours = dict(zip(losses, ("#d62728", "#ff7f0e", "#8c564b", "#1f77b4", "#2ca02c", "#9467bd", "#17becf")))
    has_curves = any(r["curve"] for r in rows)
    n = max(1, len(dtypes))
    cols = 2 if n > 1 else 1
    fig = _figure(7 * cols, 4.6 * math.ceil(n / cols) + 0.8)
    axes = np.atleast_1d(fig.subplots(math.ceil(n / cols), cols)).ravel()
    title = ("Bits of error of the loss against the distance scale (stablenca check, Herbie-style; "
             "batches where every class has ≥ 2 members)")
    if not has_curves:
        title += ("\nthis check JSON has no per-scale curves: each bar shows where the formulation stays within "
                  "the error threshold (green) and where it breaks (red), with its median / max bits of error")
    fig.suptitle(title, fontsize=11)
    if not rows:
        axes[0].text(0.5, 0.5, "the check JSON has no results", ha="center", va="center",
                     transform=axes[0].transAxes)
    for ax, dtype in zip(axes, dtypes):
        mine = [r for r in rows if r["dtype"] == dtype]
        precision = floats.significand_bits(dtype)
        normal, zero = exp_limits(dtype)
        if has_curves:
            _curve_panel(ax, mine, colours, precision, dtype)
        else:
            _bar_panel(ax, mine, colours, scale_min, scale_max)
        for value, style in ((normal, ":"), (zero, "-")):
            if math.isfinite(value):
                ax.axvline(value, color="black", ls=style, lw=0.9)
        ax.set_xscale("log")
        if math.isfinite(scale_min) and math.isfinite(scale_max):
            ax.set_xlim(scale_min, scale_max)
        ax.set_xlabel("distance scale s  (nearest neighbours at d/T ∈ [s, 1.25 s]; log)")
        ax.set_title(dtype, fontsize=10)
        ax.grid(True, alpha=0.25)
    for ax in axes[len(dtypes):]:
        ax.set_visible(False)
    from matplotlib.lines import Line2D
    from matplotlib.patches import Patch

    # The limits' values go in the legend, not as text in the panels, where they would cover points.
    at = {k: "; ".join(f"{d}: s = {exp_limits(d)[k]:.2f}" for d in dtypes) for k in (0, 1)}
    limits = [Line2D([], [], color="black", ls=":", lw=0.9, label=f"exp(−s) becomes subnormal ({at[0]})"),
              Line2D([], [], color="black", ls="-", lw=0.9, label=f"exp(−s) = 0.0 ({at[1]})")]
    if has_curves:
        handles = []
        for name in losses:
            patched = next((r["unpatched"] for r in rows if r["loss"] == name and r.get("unpatched")), None)
            if patched and any(math.isfinite(p.get("unpatched_loss_bits", math.nan))
                               for r in rows if r["loss"] == name for p in r["curve"]):
                handles.append(Line2D([], [], color=colours[name], lw=2.0,
                                      label=f"{name} against the exact {patched} (no ε): its bias"))
                handles.append(Line2D([], [], color=colours[name], lw=1.0, ls=(0, (1, 1.5)),
                                      label=f"{name} against its own formula: rounding only"))
            else:
                handles.append(Line2D([], [], color=colours[name], lw=1.6, label=name))
        handles.append(Line2D([], [], color="black", marker="x", ls="", label="non-finite loss"))
        handles.append(Line2D([], [], color="black", marker="o", mfc="none", ls="",
                              label="finite loss, non-finite gradient"))
        handles.append(Line2D([], [], color=_GREY, ls="--", label="threshold: half the significand bits"))
    else:
        handles = [Patch(color="#a1d99b", label="finite, at most half of the significand bits wrong"),
                   Patch(color="#fc9272", label="broken from here on: non-finite, or more than half the bits wrong")]
    fig.legend(handles=handles + limits, loc="outside lower center", ncol=min(4, len(handles) + 2), fontsize=9,
               frameon=False)
    return fig


def _curve_panel(ax, rows, colours, precision, dtype) -> None:
    width = floats.bit_width(dtype)  # log2(ulps + 1) reaches the storage width, not the significand bits
    top = width + 4  # the non-finite row, above every finite value
    for row in rows:
        xs = np.array([p["scale"] for p in row["curve"]])
        bits = np.array([p["loss_bits"] for p in row["curve"]])
        finite = np.array([p["finite"] for p in row["curve"]])
        loss_finite = np.array([p["loss_finite"] for p in row["curve"]])
        colour = colours[row["loss"]]
        # Only a non-finite loss goes on the non-finite row; a finite loss with a non-finite
        # gradient keeps its measured bits and gets an open marker there.
        loss_broken = ~np.isfinite(bits) | (np.isfinite(loss_finite) & (loss_finite < 1))
        grad_broken = ~loss_broken & np.isfinite(finite) & (finite < 1)
        shown = np.where(~loss_broken, bits, np.nan)
        unpatched = np.array([p.get("unpatched_loss_bits", math.nan) for p in row["curve"]], dtype=float)
        if row.get("unpatched") and np.isfinite(unpatched).any():
            # The patched loss against the exact unpatched one (its bias), and thin: against its own formula.
            ax.plot(xs, np.where(~loss_broken, unpatched, np.nan), lw=2.0, color=colour)
            ax.plot(xs, shown, lw=1.0, ls=(0, (1, 1.5)), color=colour)
        else:
            ax.plot(xs, shown, lw=1.5, color=colour)
        ax.plot(xs[loss_broken], np.full(loss_broken.sum(), top), "x", color=colour, ms=6)
        ax.plot(xs[grad_broken], bits[grad_broken], "o", mfc="none", color=colour, ms=6)
    threshold = next((r["threshold_bits"] for r in rows if math.isfinite(r["threshold_bits"])), precision / 2)
    ax.axhline(threshold, color=_GREY, ls="--", lw=1)
    ax.axhline(width, color=_GREY, lw=0.5)
    ax.text(0.01, width, f" {width} = every bit of a {dtype} wrong", transform=ax.get_yaxis_transform(), fontsize=7,
            va="bottom")
    ax.text(0.01, top, " non-finite loss (some row NaN/±inf)", transform=ax.get_yaxis_transform(), fontsize=7,
            va="bottom")
    ax.set_ylim(-0.5, top + 3)
    ax.set_ylabel(f"bits of error of the loss, log2(ulps + 1)\n(0 = correctly rounded, at most {width})")


def _bar_panel(ax, rows, colours, scale_min, scale_max) -> None:
    lo = scale_min if math.isfinite(scale_min) else 1e-3
    hi = scale_max if math.isfinite(scale_max) else 1e4
    for y, row in enumerate(rows):
        breakdown = row["breakdown_scale"]
        end = breakdown if math.isfinite(breakdown) else hi
        ax.barh(y, end - lo, left=lo, height=0.6, color="#a1d99b", edgecolor="none")
        if math.isfinite(breakdown):
            ax.barh(y, hi - breakdown, left=breakdown, height=0.6, color="#fc9272", edgecolor="none")
            reason = textwrap.shorten(row["breakdown_reason"], 38, placeholder="…")
            ax.text(breakdown * 1.15, y, f"breaks at {breakdown:.3g}: {reason}", va="center", fontsize=7)
        else:
            ax.text(hi / 1.2, y, "no breakdown", va="center", ha="right", fontsize=7)
        bits = f"loss bits of error: median {_fmt(row['loss_bits_median'])}, max {_fmt(row['loss_bits_max'])}"
        ax.text(lo * 1.15, y + 0.36, bits, va="center", fontsize=6.5, color="#333333")
    ax.set_yticks(range(len(rows)), [r["loss"] for r in rows])
    ax.set_ylim(-0.6, len(rows) - 0.2)
    ax.invert_yaxis()
    ax.set_ylabel("formulation")


# --------------------------------------------------------------------------- figure 4: gradient flow


def gradient_flow_figure(run: RunData):
    """Figure 4: per-parameter gradient norms over steps as a heatmap (log colour)."""
    import matplotlib
    from matplotlib.colors import LogNorm
    from matplotlib.patches import Patch

    keys = run.grad_keys()
    steps = run.steps()
    fig = _figure(11, max(3.6, 1.6 + 0.42 * len(keys)))
    ax = fig.subplots()
    fail = run.failure_step
    title = f"{run.name}: gradient flow, L2 norm of each parameter's gradient per step"
    if fail is not None:
        title += f"\n(first non-finite step {fail}: {_root_label(run)})"
    fig.suptitle(title, fontsize=11)
    if not keys or not len(steps):
        ax.text(0.5, 0.5, "no per-parameter gradient norms were recorded", ha="center", va="center",
                transform=ax.transAxes)
        ax.set_axis_off()
        return fig
    matrix = np.array([run.series(k) for k in keys])
    positive = matrix[np.isfinite(matrix) & (matrix > 0)]
    vmin, vmax = (np.min(positive), np.max(positive)) if positive.size else (1e-8, 1.0)
    if vmax <= vmin:
        vmax = vmin * 10
    shown = np.where(matrix == 0, vmin / 10, matrix)
    cmap = matplotlib.colormaps["viridis"].with_extremes(bad=_RED, under="white")
    image = ax.imshow(np.ma.masked_invalid(shown), aspect="auto", interpolation="nearest", cmap=cmap,
                      norm=LogNorm(vmin=vmin, vmax=vmax),
                      extent=(steps[0] - 0.5, steps[-1] + 0.5, len(keys) - 0.5, -0.5))
    cbar = fig.colorbar(image, ax=ax, extend="min", pad=0.01)
    cbar.set_label("‖∂loss/∂θ‖₂ (log colour)")  # longer labels overrun the figure's top
    ax.set_yticks(range(len(keys)), [k.split("/", 1)[1] for k in keys], fontsize=8)
    ax.set_ylabel("parameter tensor")
    ax.set_xlabel("training step (batch index)")
    handles = [Patch(color=_RED, label="NaN / inf gradient"), Patch(fc="white", ec="black", label="exactly 0")]
    if fail is not None:
        ax.axvline(fail, color=_RED, lw=1.5, ls="-.")
        handles.append(matplotlib.lines.Line2D([], [], color=_RED, ls="-.", label=f"first non-finite step {fail}"))
    ax.legend(handles=handles, loc="upper left", bbox_to_anchor=(0, -0.16), ncol=3, fontsize=8, frameon=False)
    # Growth before the failure: the largest finite per-parameter norm, early vs late.
    finite = np.where(np.isfinite(matrix), matrix, -np.inf)
    finite_max = finite.max(axis=0) if matrix.size else np.array([])
    ok = np.isfinite(finite_max)
    if ok.sum() >= 4:
        tenth = max(1, ok.sum() // 10)
        early, late = np.median(finite_max[ok][:tenth]), np.median(finite_max[ok][-tenth:])
        ax.text(0.99, 1.01, f"largest per-parameter norm (median): {_fmt(early)} in the first {tenth} step(s), "
                            f"{_fmt(late)} in the last {tenth} finite step(s)", transform=ax.transAxes,
                ha="right", va="bottom", fontsize=8)
    return fig


# --------------------------------------------------------------------------- figure 5: chain


def _stats_text(stats: dict[str, Any] | None) -> str:
    if not isinstance(stats, dict) or "min" not in stats:
        return ""
    if stats.get("min") is None and stats.get("max") is None:
        parts = ["no finite value"]
    else:
        parts = [f"min {_fmt(num(stats.get('min')))}, max {_fmt(num(stats.get('max')))}"]
    counts = [f"{label} {stats[key]}" for key, label in (("zeros", "zeros"), ("nan", "NaN"), ("posinf", "+inf"),
                                                         ("neginf", "-inf"), ("subnormal", "subnormal"))
              if stats.get(key)]
    if counts:
        parts.append(", ".join(counts))
    shape = stats.get("shape")
    if shape is not None:
        parts.append(f"{stats.get('dtype', '')} {list(shape)}")
    return "\n".join(parts)


def _short(op: str | None) -> str:
    if not op:
        return "?"
    if op == "input":
        return "input"
    parts = op.split(".")
    return parts[1] if len(parts) > 1 and parts[0] == "aten" else op


def chain_figure(run: RunData):
    """Figure 5: the root-cause chain as boxes (op, phase, statistics) joined by arrows, cause first."""
    first = run.first_nonfinite or {}
    links = run.chain_links()
    causal = list(reversed(links))  # earliest cause first
    boxes: list[tuple[str, str]] = []
    for k, link in enumerate(causal):
        kind = link.get("kind")
        head = _short(link.get("op"))
        if kind and kind not in ("source", None):
            head += f"  [{kind}]"
        phase = link.get("phase") or ""
        if link.get("backward_node"):
            phase = f"{phase}, {link['backward_node']}" if phase else link["backward_node"]
        detail = textwrap.fill(str(link.get("detail") or ""), 30)
        stats = _stats_text(link.get("stats"))
        body = "\n".join(x for x in (phase, detail, stats) if x)
        colour = "#fde0dd" if k == len(causal) - 1 else ("#fff2cc" if kind in ("underflow", "overflow",
                                                                                "cancellation", "empty_set")
                                                          else "#eeeeee")
        boxes.append((f"{head}\n{body}", colour))
    root = first.get("root_cause") or {}
    step = run.failure_step
    at_step = next((r for r in reversed(run.records) if step is not None and r.get("step") == step), None)
    at_step = at_step or (run.records[-1] if run.records else None)
    outcome = f"step {step} not applied:\nloss or gradient non-finite" if step is not None else "non-finite result"
    if at_step is not None:
        extra = [f"loss {_fmt(num(at_step.get('loss')))}", f"grad_norm {_fmt(num(at_step.get('grad_norm')))}"]
        if at_step.get("grad_nonfinite"):
            extra.append(f"{at_step['grad_nonfinite']} non-finite gradient tensors")
        outcome += "\n" + "\n".join(extra)
    context = None
    if at_step is not None:
        lines = [f"recorded at step {at_step.get('step')}", "(records.jsonl, context)"]
        for key, label in (("d_max", "largest d/T"), ("exp_zero", "exp outputs = 0.0"),
                           ("exp_subnormal", "exp outputs subnormal"), ("softmax_zero", "softmax outputs = 0.0"),
                           ("p_same_min", "smallest P_same"), ("p_diff_min", "smallest P_diff"),
                           ("rows_without_same_class", "rows without own class")):
            if key in at_step:
                lines.append(f"{label}: {_fmt(num(at_step[key]))}")
        context = "\n".join(lines)
    entries = ([(context, "white")] if context else []) + boxes + [(outcome, "#f4cccc")]
    n = len(entries)
    fig = _figure(min(18, max(11, 3.4 * n)), 5.4, layout=None)
    ax = fig.add_axes((0, 0, 1, 1))
    ax.set_axis_off()
    where = f" (epoch {first.get('epoch')}, step {step})" if step is not None else ""
    fig.text(0.5, 0.975, f"{run.name}: root-cause chain of the first non-finite value{where}", ha="center",
             va="top", fontsize=12, weight="bold")
    fig.text(0.5, 0.905, textwrap.fill(f"root cause: {root.get('kind', 'unknown')} at {_short(root.get('op'))}: "
                                       f"{root.get('detail', '')}", 130), ha="center", va="top", fontsize=9)
    footer = "arrows: cause → effect.  Solid boxes: the traced chain (finding.json); dashed: recorded context."
    if first.get("source"):
        footer = f"source: {first['source']}\n{footer}"
    fig.text(0.5, 0.03, footer, ha="center", va="bottom", fontsize=8, family="monospace")
    if not boxes:
        ax.text(0.5, 0.5, "no traced chain was recorded for this run\n(the replayed step was finite, or the "
                          "finding was not written)", ha="center", va="center", fontsize=10)
        return fig
    y = 0.6
    xs = np.linspace(0.5 / n, 1 - 0.5 / n, n)
    artists = []
    for k, (x, (text, colour)) in enumerate(zip(xs, entries)):
        dashed = context is not None and k == 0
        artists.append(ax.text(x, y, text, ha="center", va="center", fontsize=8.5,
                               bbox=dict(boxstyle="round,pad=0.6", fc=colour, ec=_GREY if dashed else "black",
                                         lw=1.0, ls="--" if dashed else "-")))
    for k, (a, b) in enumerate(zip(artists[:-1], artists[1:])):
        dashed = context is not None and k == 0
        ax.annotate("", xy=(0, 0.5), xycoords=b, xytext=(1, 0.5), textcoords=a,
                    arrowprops=dict(arrowstyle="-|>", color=_GREY if dashed else "black", lw=1.3, shrinkA=2,
                                    shrinkB=2, ls="--" if dashed else "-"))
    inputs = (run.finding or {}).get("inputs") or first.get("inputs") or []
    bad_index = n - 2  # the first non-finite op, just before the outcome
    if inputs:
        lines = [f"inputs of {_short(first.get('op'))} (finding.json):"]
        for stats in inputs[:4]:
            if isinstance(stats, dict):
                lines.append(f"{stats.get('arg', '?')}: " + _stats_text(stats).replace("\n", "; "))
        box = ax.text(xs[bad_index], 0.24, "\n".join(textwrap.fill(line, 60) for line in lines), ha="center",
                      va="center", fontsize=8, bbox=dict(boxstyle="round,pad=0.5", fc="white", ec="black"))
        ax.annotate("", xy=(0.5, 0), xycoords=artists[bad_index], xytext=(0.5, 1), textcoords=box,
                    arrowprops=dict(arrowstyle="-|>", color="black", lw=1.0))
    return fig


# --------------------------------------------------------------------------- all figures


@dataclasses.dataclass
class Figure:
    """A written figure: where it is and what it shows (for the report)."""

    path: Path
    kind: str  # "timeline", "gradients", "chain", "domain", "check"
    run: str | None = None


@dataclasses.dataclass(frozen=True)
class FigureJob:
    """A figure still to be drawn: ``make()`` returns the matplotlib figure written to ``name``.png.

    ``make`` only draws: whatever depends on torch's thread count (the scale sweep's replay) is
    computed before the job is made, in the process that owns the threads, so a single-threaded
    worker draws the same figure.
    """

    kind: str
    name: str
    make: Callable[[], Any]
    run: str | None = None
    #: ``make`` computes with this process's torch threads as well (the scale sweep's replay):
    #: :func:`draw_figures` runs it here, while its pool draws the other figures.
    here: bool = False


#: The jobs of the running pool. Forked workers inherit them, so the ``make`` closures are never pickled.
_POOL_JOBS: list[FigureJob] = []


def _single_threaded() -> None:
    # Forked after the parent ran OpenMP: a worker must not start an OpenMP team of its own.
    torch.set_num_threads(1)


def _png_or_problem(index: int) -> bytes | str:
    return _rendered(_POOL_JOBS[index])


def _rendered(job: FigureJob) -> bytes | str:
    """The PNG of ``job``, or the problem text when it cannot be drawn."""
    try:
        return png_bytes(job.make())
    except Exception as exc:  # noqa: BLE001 - a report with one figure missing beats no report
        return f"{job.name}.png: {type(exc).__name__}: {exc}"


def render_here(jobs: Iterable[FigureJob]) -> dict[str, bytes | str]:
    """Each job's PNG (or problem text) by name, drawn in this process one after the other; nothing is written.

    For a worker that draws its share (``drawn`` of :func:`draw_figures`, where the files are written).
    """
    return {job.name: _rendered(job) for job in jobs}


def _pool_size(n_jobs: int) -> int:
    """Worker processes for ``n_jobs`` figures: one per available core; 0 (no pool) without ``fork``."""
    if n_jobs < 2 or "fork" not in multiprocessing.get_all_start_methods():
        return 0
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    return min(n_jobs, cores) if cores > 1 else 0


def draw_figures(jobs: Sequence[FigureJob], figures_dir: Path, *, strict: bool = True,
                 drawn: Mapping[str, bytes | str] | None = None) -> list[Figure | str]:
    """Draw ``jobs`` into ``figures_dir``, in a pool of forked processes when more than one core is available.

    Returns, per job in order, the written :class:`Figure` or the problem text of a figure that could not
    be drawn. With ``strict`` a failing figure is drawn again here, so its own exception is raised.
    Agg renders the same PNG bytes in a worker as here; files are written here, in the jobs' order.
    Jobs marked ``here`` are drawn in this process, while the pool draws the others.
    ``drawn``: jobs rendered elsewhere (:func:`render_here`), by name, written as they are; ``stablenca
    diagnose`` draws each run's figures in the worker that trained it.
    """
    global _POOL_JOBS
    results: dict[int, bytes | str] = {k: drawn[job.name] for k, job in enumerate(jobs) if job.name in (drawn or {})}
    todo = [k for k in range(len(jobs)) if k not in results]
    pooled = [k for k in todo if not jobs[k].here]
    workers = _pool_size(len(pooled))
    _POOL_JOBS = list(jobs)
    try:
        if workers:
            import matplotlib.backends.backend_agg  # noqa: F401 - imported once here, inherited by the workers
            import matplotlib.figure  # noqa: F401

            with frozen_heap(), ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("fork"),
                                                    initializer=_single_threaded) as pool:
                futures = {k: pool.submit(_png_or_problem, k) for k in pooled}
                # A fork pool starts all its workers at the first submit: this process's own jobs (and
                # their torch threads) run after every fork, beside the workers instead of before them.
                results.update((k, _png_or_problem(k)) for k in todo if jobs[k].here)
                results.update((k, future.result()) for k, future in futures.items())
        else:
            results.update((k, _png_or_problem(k)) for k in todo)
    finally:
        _POOL_JOBS = []
    outcomes: list[Figure | str] = []
    for k, job in enumerate(jobs):
        result = results[k]
        if isinstance(result, str) and strict:
            result = png_bytes(job.make())  # raises the figure's own exception, with its traceback
        if isinstance(result, str):
            outcomes.append(result)
        else:
            path = figures_dir / f"{job.name}.png"
            atomic_write_bytes(path, result)
            outcomes.append(Figure(path, job.kind, job.run))
    return outcomes


def run_figure_jobs(run: RunData) -> list[FigureJob]:
    """The figures of one run: its timeline, its gradient flow, and its root-cause chain when it failed."""
    jobs = [FigureJob("timeline", f"{run.name}-timeline", lambda: timeline_figure(run), run.name)]
    if run.grad_keys():
        jobs.append(FigureJob("gradients", f"{run.name}-gradients", lambda: gradient_flow_figure(run), run.name))
    if run.first_nonfinite is not None:
        jobs.append(FigureJob("chain", f"{run.name}-chain", lambda: chain_figure(run), run.name))
    return jobs


def figure_jobs(out: str | Path, check_path: str | Path | None = None, *, run_set: RunSet,
                strict: bool = True) -> tuple[list[FigureJob], list[str]]:
    """The figures of :func:`plot_all`, still to be drawn, and (``strict=False``) why the check file was left out."""
    out = Path(out)
    jobs = [job for run in run_set.runs for job in run_figure_jobs(run)]
    jobs.append(FigureJob("domain", "ratio-failure-domain", lambda: failure_domain_figure(run_set.runs)))
    check_problems: list[str] = []
    if check_path is None:
        check_path = artifacts.check_path(out)
    if check_path is not None:
        if strict:
            check = load_check(check_path)
        else:
            try:
                check = load_check(check_path)
            except DataError as exc:
                check = None
                check_problems.append(str(exc))
        if check is not None:
            jobs.append(check_figure_job(check))
    return jobs, check_problems


def check_figure_job(check: dict[str, Any]) -> FigureJob:
    """Figure 3 of a ``stablenca check --json`` document (as read back from ``check.json``)."""
    return FigureJob("check", "error-vs-scale", lambda: error_vs_scale_figure(check))


def problems_of(outcomes: Iterable[Figure | str]) -> list[str]:
    """The problem texts among :func:`draw_figures`' outcomes."""
    return [o for o in outcomes if isinstance(o, str)]


def plot_all(out: str | Path, check_path: str | Path | None = None, *, run_set: RunSet | None = None,
             strict: bool = True, problems: list[str] | None = None) -> list[Figure]:
    """Draw every figure of a diagnose output into ``out/figures`` (from recorded data only).

    ``check_path`` defaults to ``out/check.json`` when that exists. With ``strict=False``
    a figure that cannot be drawn is skipped and its error appended to ``problems``.
    """
    run_set = run_set or load_run_set(out)
    jobs, check_problems = figure_jobs(out, check_path, run_set=run_set, strict=strict)
    outcomes = draw_figures(jobs, Path(out) / FIGURES_DIR, strict=strict)
    if problems is not None:
        problems += problems_of(outcomes) + check_problems
    return [o for o in outcomes if isinstance(o, Figure)]
