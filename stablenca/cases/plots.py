"""Herbie-style error plots of a case: bits of error against |x| for every form, per dtype.

One column per dtype, one row for the value and one for the gradient; x > 0 solid,
x < 0 dashed; a cross marks a non-finite result (plotted at the dtype's bit width, the
maximum error); curves are a 3-point running mean over the sweep (as Herbie smooths its
plots; the crosses and ``stablenca check`` use the raw points); the dotted line is half
the significand bits, where ``stablenca check``
calls a result broken. Matplotlib is imported lazily with the Agg canvas (no pyplot
state) and the PNG is written atomically.

>>> import tempfile, pathlib
>>> path = plot_case("one_minus_exp", pathlib.Path(tempfile.mkdtemp()) / "f.png", dtypes=["float32"])
>>> path.suffix
'.png'
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from .. import floats
from .. import reference as ref
from ..records import atomic_write_bytes
from .runner import run_case

#: One colour per form (colour-blind safe), the fixed form in the darkest.
COLOURS = {"naive": "#d55e00", "patched": "#e69f00", "expm1": "#56b4e9", "fixed": "#000000"}
_OTHER = ("#009e73", "#cc79a7", "#0072b2")


def smooth(bits: np.ndarray, window: int = 3) -> np.ndarray:
    """Centred running mean over ``window`` neighbouring sweep points (ends: the points available);
    NaN entries stay NaN (gaps) and are left out of their neighbours' means.

    >>> smooth(np.array([0.0, 3.0, 0.0, 3.0])).tolist()
    [1.5, 1.0, 2.0, 1.5]
    >>> smooth(np.array([0.0, 3.0, np.nan])).tolist()
    [1.5, 1.5, nan]
    """
    bits = np.asarray(bits, dtype=np.float64)
    if len(bits) < 2 or window < 2:
        return bits
    half = window // 2
    out = np.full_like(bits, np.nan)
    for i in range(len(bits)):
        if np.isnan(bits[i]):
            continue  # NaN marks a point not to draw (a non-finite result): it stays a gap
        near = bits[max(0, i - half):i + half + 1]
        out[i] = near[~np.isnan(near)].mean()
    return out


def _runs(case_or_runs, dtypes: Sequence[str] | None):
    if isinstance(case_or_runs, str):
        return [run_case(case_or_runs, d) for d in (dtypes or ("float32", "float64"))]
    runs = list(case_or_runs)
    if dtypes is not None:
        wanted = [floats.dtype_name(d) for d in dtypes]
        runs = [r for r in runs if r.dtype in wanted]
    return runs


def case_figure(case_or_runs, dtypes: Sequence[str] | None = None, forms: Sequence[str] | None = None):
    """The figure (a matplotlib ``Figure``) for a case name or a list of :class:`CaseRun`."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.lines import Line2D

    runs = _runs(case_or_runs, dtypes)
    if not runs:
        raise ValueError("no runs to plot")
    case = runs[0].case
    forms = [f for f in (forms or list(case.forms)) if f in case.forms]
    fig = Figure(figsize=(6.2 * len(runs) + 0.6, 8.4), dpi=110, layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(2, len(runs), squeeze=False, sharex=True)
    has_negative = bool((runs[0].x < 0).any())
    for col, run in enumerate(runs):
        width = floats.bit_width(run.dtype)
        limit = 0.5 * floats.significand_bits(run.dtype)
        x = run.x
        for row, (what, label) in enumerate((("value", "value"), ("grad", "gradient"))):
            ax = axes[row][col]
            for k, name in enumerate(forms):
                form = run.forms[name]
                bits = form.value_bits if what == "value" else form.grad_bits
                finite = np.isfinite(form.values if what == "value" else form.grads)
                colour = COLOURS.get(name, _OTHER[k % len(_OTHER)])
                for sign, style, lw in ((1, "-", 2.0), (-1, "--", 1.3)):
                    pick = (x > 0) if sign > 0 else (x < 0)
                    if not pick.any():
                        continue
                    mags, b, fin = np.abs(x[pick]), bits[pick], finite[pick]
                    order = np.argsort(mags)
                    mags, b, fin = mags[order], b[order], fin[order]
                    thick = 3.4 if name == "naive" else lw  # drawn first and wider: visible under a patch
                    curve = smooth(np.where(fin, b, np.nan))  # non-finite points: a gap and a cross
                    ax.plot(mags, curve, style, color=colour, lw=thick if sign > 0 else lw,
                            alpha=0.95 if sign > 0 else 0.8, zorder=3 if name == "fixed" else 2)
                    if (~fin).any():
                        ax.plot(mags[~fin], np.full(int((~fin).sum()), width), "x", color=colour,
                                ms=8 if name == "naive" else 5, mew=1.4, zorder=4, clip_on=False)
            ax.axhline(limit, color="#7f7f7f", ls=":", lw=1)
            ax.text(x=np.abs(x).max(), y=limit + width * 0.015, s=f"half the bits ({limit:g}) ", color="#7f7f7f",
                    fontsize=8, va="bottom", ha="right")
            ax.set_xscale("log")
            ax.set_ylim(-width * 0.02, width * 1.06)
            ax.set_yticks(np.linspace(0, width, 5))
            ax.grid(True, which="major", alpha=0.25)
            ax.set_title(f"{run.dtype}: bits of error of the {label}", fontsize=11)
            if col == 0:
                ax.set_ylabel(f"bits of error ({label})")
            if row == 1:
                ax.set_xlabel("|x|")
    handles = [Line2D([], [], color=COLOURS.get(n, _OTHER[k % len(_OTHER)]), lw=2,
                      label=f"{n}: {case.form_notes.get(n, n)}") for k, n in enumerate(forms)]
    if has_negative:
        handles += [Line2D([], [], color="#444444", lw=2, ls="-", label="x > 0"),
                    Line2D([], [], color="#444444", lw=1.3, ls="--", label="x < 0")]
    handles.append(Line2D([], [], color="#444444", ls="", marker="x", label="NaN/inf (plotted at max)"))
    fig.legend(handles=handles, loc="outside lower center", ncol=min(3, len(handles)), fontsize=9, frameon=False)
    floor = f"; values below {case.floor:g} in ulps of {case.floor:g}" if case.floor else ""
    fig.suptitle(f"{case.title}\nbits of error against mpmath ({runs[0].dps} digits), log2(1 + ulps), "
                 f"3-point running mean{floor}", fontsize=12)
    return fig


def plot_case(case_or_runs, path: str | Path, *, dtypes: Sequence[str] | None = None,
              forms: Sequence[str] | None = None) -> Path:
    """Draw :func:`case_figure` and write it to ``path`` (PNG) atomically; returns the path."""
    fig = case_figure(case_or_runs, dtypes, forms)
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    atomic_write_bytes(path, buffer.getvalue())
    return Path(path)


def plot_one_minus_exp(path: str | Path, *, dtypes: Sequence[str] = ("float32", "float64"),
                       forms: Sequence[str] = ("naive", "patched", "expm1", "fixed")) -> Path:
    """The error plot of ``f(x) = 1/(1-exp(-x)) - 1/x`` in its forms, float32 and float64."""
    return plot_case("one_minus_exp", path, dtypes=dtypes, forms=forms)
