"""Figures that teach the mechanism: the scale sweep, validation curves, the ModernNCA comparison.

Drawn from data alone (a :class:`~stablenca.scale_sweep.Sweep`, run directories'
``epochs.jsonl`` and ``records.jsonl``); nothing here trains.

* :func:`scale_sweep_figure`: loss and ``|dL/ds|`` against the distance scale ``s`` for
  every formulation on one real batch (the ratio loss falls linearly, its push stays;
  NCA's push changes sign at a finite optimum);
* :func:`validation_figure`: validation accuracy by epoch for several runs, the kept
  (best-validation) epoch marked;
* :func:`comparison_figure`: the ModernNCA runs side by side, the median distance per
  step against fractional epochs (so runs that stop mid-epoch end where they stopped)
  and validation accuracy per epoch.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from ..artifacts import read_records
from ..scale_sweep import Sweep
from .figures import _figure, save_figure
from .validation import ValidationCurve, validation_curve

__all__ = ["comparison_figure", "fractional_epochs", "plot_teaching", "save_figure", "scale_sweep_figure",
           "teaching_jobs", "validation_figure"]

#: One colour per formulation, the same in every figure (Okabe-Ito, colour-blind safe).
COLOURS = {"ratio": "#d55e00", "ratio_eps": "#e69f00", "difference": "#cc79a7", "nca_logspace": "#0072b2",
           "modernnca": "#009e73"}
_OTHER = "#555555"


def _colour(name: str) -> str:
    for loss, colour in COLOURS.items():
        if name == loss or name.endswith(f"-{loss}-float32") or name.endswith(f"-{loss}-float64"):
            return colour
    return _OTHER


def scale_sweep_figure(sweep: Sweep, title: str = ""):
    """Two panels over ``s``: the loss (symlog: the difference loss is a sum) and ``|dL/ds|`` (log).

    In the right panel a filled marker is a push towards larger scales (dL/ds < 0), an open
    one a push back (dL/ds > 0).
    """
    fig = _figure(10.0, 4.0)
    loss_ax, push_ax = fig.subplots(1, 2)
    scales = np.asarray(sweep.scales)
    for name, curve in sweep.curves.items():
        colour = _colour(name)
        loss_ax.plot(scales, curve.loss, color=colour, label=name)
        slope = np.asarray(curve.dloss_dscale)
        push_ax.plot(scales, np.abs(slope), color=colour, label=name)
        down = slope < 0
        push_ax.scatter(scales[down], np.abs(slope[down]), color=colour, s=14, zorder=3)
        push_ax.scatter(scales[~down], np.abs(slope[~down]), facecolors="white", edgecolors=colour, s=14, zorder=3)
    loss_ax.set_xscale("log")
    loss_ax.set_yscale("symlog", linthresh=1.0)
    loss_ax.set(xlabel="distance scale s (1 = the batch's median distance)", ylabel="loss L(s)",
                title="loss against the scale")
    loss_ax.legend(fontsize=8)
    push_ax.set_xscale("log")
    push_ax.set_yscale("log")
    push_ax.set(xlabel="distance scale s", ylabel="|dL/ds|",
                title="push on the scale\nfilled: towards larger s (dL/ds < 0); open: back")
    if title:
        fig.suptitle(title)
    return fig


def validation_figure(curves: Mapping[str, ValidationCurve], title: str = "validation accuracy by epoch"):
    """Validation accuracy per epoch, one line per run; the kept epoch is a large dot with its value.

    Colour is the loss (as in every figure); the line style tells the models apart, so the
    student's and ModernNCA's ratio runs differ. The legend sits beside the axes, off the data.
    """
    fig = _figure(10.0, 4.0)
    ax = fig.subplots()
    for name, curve in curves.items():
        colour = _colour(name)
        label = name if curve.best_epoch is None else f"{name}: best {curve.best:.4f} at epoch {curve.best_epoch}"
        ratio = name.endswith("-ratio-float32")  # short and hidden under ratio_eps otherwise
        ax.plot(curve.epochs, curve.accuracy, color=colour, label=label, lw=2.2 if ratio else 1.2,
                linestyle="--" if name.startswith("seed-") else "-", zorder=4 if ratio else 2)
        if curve.best_epoch is not None:
            ax.scatter([curve.best_epoch], [curve.best], color=colour, s=50, zorder=5, edgecolors="black")
    ax.set(xlabel="epoch (counted from 0, as in the records and the text)", ylabel="validation accuracy", title=title)
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0.0,
              title="dot: kept checkpoint (best validation)\ndashed: the student's SeedNCA", title_fontsize=7)
    return fig


def fractional_epochs(records: Sequence[Mapping]) -> np.ndarray:
    """``epoch + step_in_epoch / steps in that epoch`` per record: a run that stops mid-epoch ends mid-epoch.

    The steps of an epoch are counted from the records themselves (an interrupted last epoch
    takes the step count of the epoch before it, when there is one).

    >>> fractional_epochs([{"epoch": 0, "step_in_epoch": 0}, {"epoch": 0, "step_in_epoch": 1},
    ...                    {"epoch": 1, "step_in_epoch": 0}]).tolist()
    [0.0, 0.5, 1.0]
    """
    per_epoch: dict[int, int] = {}
    for record in records:
        per_epoch[record["epoch"]] = max(per_epoch.get(record["epoch"], 0), record["step_in_epoch"] + 1)
    complete = sorted(per_epoch)
    if len(complete) > 1:  # the last epoch may be cut short: use the previous epoch's length
        per_epoch[complete[-1]] = max(per_epoch[complete[-1]], per_epoch[complete[-2]])
    return np.array([r["epoch"] + r["step_in_epoch"] / per_epoch[r["epoch"]] for r in records], dtype=float)


def comparison_figure(run_dirs: Sequence[str | Path], title: str = "ModernNCA protocol, one run per loss"):
    """The runs side by side: median distance per step (log) and validation accuracy per epoch."""
    fig = _figure(11.0, 4.0)
    distance_ax, accuracy_ax = fig.subplots(1, 2)
    for run_dir in map(Path, run_dirs):
        records = read_records(run_dir)
        name = run_dir.name
        colour = _colour(name)
        x = fractional_epochs(records)
        d_p50 = np.array([np.nan if r.get("d_p50") is None else r["d_p50"] for r in records], dtype=float)
        ratio = name.endswith("-ratio-float32")  # short and hidden under ratio_eps otherwise: on top
        distance_ax.plot(x, d_p50, color=colour, label=name, lw=2.2 if ratio else 1.2, zorder=4 if ratio else 2)
        failed = [i for i, r in enumerate(records) if not r.get("finite", True)]
        if failed:
            distance_ax.scatter(x[failed[:1]], d_p50[failed[:1]], marker="x", color="black", s=40, zorder=4)
        curve = validation_curve(run_dir)
        accuracy_ax.plot(np.asarray(curve.epochs) + 1, curve.accuracy, color=colour, label=name,
                         lw=2.2 if ratio else 1.2, zorder=4 if ratio else 2)
        if curve.best_epoch is not None:
            accuracy_ax.scatter([curve.best_epoch + 1], [curve.best], color=colour, s=40, zorder=5,
                                edgecolors="black")
    distance_ax.set_yscale("log")
    distance_ax.set(xlabel="epoch (fractional: steps within the epoch)", ylabel="median distance d_p50",
                    title="distance scale per step (x: first non-finite step)")
    distance_ax.legend(fontsize=7)
    # Validation runs at the end of an epoch: epoch e's value is drawn at e + 1, where it was measured.
    accuracy_ax.set(xlabel="epochs completed (the validation after epoch e, counted from 0, is drawn at e + 1)",
                    ylabel="validation accuracy",
                    title="validation accuracy (dot: kept checkpoint)")
    fig.suptitle(title)
    return fig


def teaching_jobs(out: str | Path, runs) -> list:
    """The teaching figures of a diagnose output, still to be drawn (:class:`.figures.FigureJob` items).

    * ``loss-against-scale``: the sweep on the batch of the first failing ratio run with a
      capsule (rebuilt from the capsule: a forward pass, nothing is trained);
    * ``modernnca-comparison``: every ModernNCA classification run;
    * ``validation-accuracy``: every run with validation accuracy per epoch.

    The sweep's job is drawn in the process that draws the jobs (``here``): its replayed forward
    pass sums in an order that follows that process's torch threads.
    """
    from ..artifacts import CAPSULE
    from .figures import FigureJob

    out = Path(out)
    jobs: list[FigureJob] = []
    failing = [r for r in runs if r.loss == "ratio" and (out / r.name / CAPSULE).is_file()]
    if failing:
        jobs.append(FigureJob("sweep", "loss-against-scale", _sweep_drawing(out / failing[0].name), here=True))
    classified = [r for r in runs if r.config.get("task", "multiclass") == "multiclass"
                  and (out / r.name / "epochs.jsonl").is_file()]
    modern = [out / r.name for r in classified if r.config.get("model") == "modernnca"]
    if len(modern) > 1:
        jobs.append(FigureJob("comparison", "modernnca-comparison", lambda: comparison_figure(modern)))
    if classified:
        jobs.append(FigureJob("validation", "validation-accuracy",
                              lambda: validation_figure({r.name: validation_curve(out / r.name) for r in classified})))
    return jobs


def _sweep_drawing(run_dir: Path):
    """The function that computes the sweep of ``run_dir``'s capsule and draws it (or raises its error).

    The sweep is computed when the job is drawn, so the job must be drawn in the process whose
    threads it is to follow (``FigureJob(here=True)``).
    """
    from ..artifacts import CAPSULE
    from ..scale_sweep import FLOAT64_EXP_BOUND, batch_from_capsule, log_grid, sweep_scale

    def draw():
        batch = batch_from_capsule(run_dir / CAPSULE)
        sweep = sweep_scale(batch, log_grid(0.01, FLOAT64_EXP_BOUND / float(batch.unit.max()), 25))
        return scale_sweep_figure(sweep, f"{run_dir.name}: the failing step's batch, float64")
    return draw


def plot_teaching(out: str | Path, runs, *, problems: list[str] | None = None) -> list:
    """Draw the teaching figures (:func:`teaching_jobs`) into ``out/figures``; returns :class:`.figures.Figure` items.

    A figure that cannot be drawn is skipped and its error appended to ``problems``.
    """
    from .figures import FIGURES_DIR, Figure, draw_figures, problems_of

    outcomes = draw_figures(teaching_jobs(out, runs), Path(out) / FIGURES_DIR, strict=False)
    if problems is not None:
        problems += problems_of(outcomes)
    return [o for o in outcomes if isinstance(o, Figure)]
