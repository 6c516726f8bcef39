"""The scale sweep on the committed failing batch, and the validation curves of the committed runs."""

import json
from pathlib import Path

import pytest
import torch

from stablenca import scale_sweep
from stablenca.errors import ConfigError, OutputError
from stablenca.report.validation import from_records, validation_curve

DIAGNOSE = Path(__file__).resolve().parents[1] / "reports" / "abalone" / "diagnose"


@pytest.fixture(scope="module")
def seed_batch():
    return scale_sweep.batch_from_capsule(DIAGNOSE / "seed-ratio-float32" / "capsule.pt")


@pytest.fixture(scope="module")
def sweep(seed_batch):
    high = scale_sweep.FLOAT64_EXP_BOUND / float(seed_batch.unit.max())
    return scale_sweep.sweep_scale(seed_batch, scale_sweep.log_grid(0.01, high, 15))


def test_capsule_batch_is_the_failing_step(seed_batch):
    # The student's in-batch step: 32 rows against themselves, the self pairs masked.
    assert seed_batch.distances.shape == (32, 32)
    assert seed_batch.distances.dtype == torch.float64
    assert bool(seed_batch.self_mask.diagonal().all())
    # The capsule's batch is the recorded failing step: its largest distance is the record's d_max,
    # up to the rounding of recomputing the float32 forward with other threads or another CPU path.
    # Per evaluation: Linear(10 -> 3) gamma_10, BatchNorm over 32 rows (mean and variance gamma_32
    # each, sqrt and divide ~4u), Linear(3 -> 3) gamma_3, cdist in 3 dims gamma_5 -- about 90u for the
    # largest distance (its points are far apart: no cancellation); two evaluations differ by <= 180u.
    failing = json.loads((DIAGNOSE / "seed-ratio-float32" / "records.jsonl").read_text().splitlines()[-1])
    assert float(seed_batch.distances.max()) == pytest.approx(failing["d_max"], rel=180 * 2 ** -24)


def test_ratio_pushes_the_scale_up_at_every_scale(sweep, seed_batch):
    slopes = sweep.curves["ratio"].dloss_dscale
    assert all(v < 0 for v in slopes)
    assert scale_sweep.ratio_slope(seed_batch) < 0
    # The loss keeps falling to the end of the grid: no finite optimum.
    assert sweep.argmin("ratio") == sweep.scales[-1]


def test_nca_has_a_finite_optimum(sweep):
    slopes = sweep.curves["nca_logspace"].dloss_dscale
    assert slopes[0] < 0 < slopes[-1]
    assert sweep.scales[0] < sweep.argmin("nca_logspace") < sweep.scales[-1]


def test_every_point_is_finite(sweep):
    for curve in sweep.curves.values():
        assert all(torch.isfinite(torch.tensor(curve.loss + curve.dloss_dscale + curve.grad_norm)))


def test_scales_beyond_float64_exp_are_refused(seed_batch):
    with pytest.raises(ConfigError, match="float64 exp"):
        scale_sweep.sweep_scale(seed_batch, [1e6])
    with pytest.raises(ConfigError, match="unknown formulation"):
        scale_sweep.sweep_scale(seed_batch, [1.0], ["nope"])


def test_ratio_eps_curve_is_the_patched_loss(seed_batch):
    # The log-space evaluation equals the direct float64 patch where the direct form is finite
    # (s = 1: sums are O(1), no overflow anywhere). Both are a handful of float64 ops on values
    # of size <= ~|log 1e-10| = 23: 16 ops x 2^-53 x 23 < 1e-13.
    from stablenca import losses

    d = seed_batch.unit * 1.0
    direct = losses.ratio_eps(d, seed_batch.labels, seed_batch.candidate_labels, seed_batch.self_mask).loss
    assert abs(float(direct) - float(scale_sweep.exact_loss("ratio_eps", d, seed_batch))) < 1e-13


def test_validation_curves_match_the_recorded_checkpoints():
    curve = validation_curve(DIAGNOSE / "modernnca-ratio_eps-float32")
    result = json.loads((DIAGNOSE / "modernnca-ratio_eps-float32" / "result.json").read_text())
    assert curve.best_epoch == result["best_epoch"]
    assert curve.epochs == list(range(result["epochs_run"]))
    low, high = curve.after_best()
    assert high < curve.best


def test_ties_keep_the_later_epoch_and_a_mismatch_is_an_error(tmp_path):
    assert from_records([{"epoch": 0, "val_accuracy": 0.5}, {"epoch": 1, "val_accuracy": 0.5}]).best_epoch == 1
    (tmp_path / "epochs.jsonl").write_text('{"epoch": 0, "val_accuracy": 0.5}\n{"epoch": 1, "val_accuracy": 0.7}\n')
    (tmp_path / "result.json").write_text('{"best_epoch": 0}')
    with pytest.raises(OutputError, match="keeps epoch 0"):
        validation_curve(tmp_path)
    with pytest.raises(OutputError, match="does not exist"):
        validation_curve(tmp_path / "missing")


def test_teaching_figures_draw_the_recorded_data(tmp_path, sweep):
    from stablenca.report import teaching_figures as story_figures

    runs = sorted(DIAGNOSE.glob("modernnca-*-float32"))
    curves = {run.name: validation_curve(run) for run in runs}
    figure = story_figures.validation_figure(curves)
    # One kept-checkpoint dot per run, at the recorded best epoch and its accuracy.
    dots = sorted(tuple(c.get_offsets()[0]) for c in figure.axes[0].collections)
    assert dots == sorted((c.best_epoch, c.best) for c in curves.values())
    for name, fig in (("validation", figure), ("comparison", story_figures.comparison_figure(runs)),
                      ("sweep", story_figures.scale_sweep_figure(sweep))):
        path = story_figures.save_figure(fig, tmp_path / f"{name}.png")
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_the_two_ratio_runs_are_told_apart_and_the_legend_is_off_the_data():
    from stablenca.report import teaching_figures as story_figures

    runs = [DIAGNOSE / "seed-ratio-float32", DIAGNOSE / "modernnca-ratio-float32"]
    figure = story_figures.validation_figure({run.name: validation_curve(run) for run in runs})
    seed_line, modernnca_line = figure.axes[0].get_lines()
    # Same loss, same colour; the model is the line style.
    assert seed_line.get_color() == modernnca_line.get_color()
    assert seed_line.get_linestyle() != modernnca_line.get_linestyle()
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    FigureCanvasAgg(figure).draw()
    legend = figure.axes[0].get_legend().get_window_extent()
    axes = figure.axes[0].get_window_extent()
    assert legend.x0 >= axes.x1  # beside the axes, so it covers no curve


def test_fractional_epochs_end_where_a_run_stopped():
    from stablenca.report.teaching_figures import fractional_epochs

    records = [json.loads(line) for line in (DIAGNOSE / "modernnca-ratio-float32" / "records.jsonl").open()]
    x = fractional_epochs(records)
    last = records[-1]
    assert x[-1] < last["epoch"] + 1  # stopped inside its last epoch, drawn inside it
    assert (x[1:] > x[:-1]).all()
