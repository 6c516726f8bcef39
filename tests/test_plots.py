"""Every figure renders from a small synthetic run directory (NaN/Inf in the records included)."""

from __future__ import annotations

import json
import math

import pytest

from stablenca import artifacts, floats
from stablenca.report import figures as plots
from stablenca.records import dumps

PNG = b"\x89PNG\r\n\x1a\n"


def synthetic_records(steps: int = 12, fail: bool = True, *, eps: bool = False) -> list[dict]:
    """Distances that grow 1.6x per step, exp underflow from step 8, NaN gradient at the last step."""
    records = []
    for step in range(steps):
        d_max = 2.0 * 1.6 ** step
        last = fail and step == steps - 1
        p_diff = math.exp(-min(d_max * 0.6, 120.0))
        records.append({
            "epoch": step // 4, "step": step, "step_in_epoch": step % 4, "batch_size": 8,
            "applied": not last, "finite": not last,
            "loss": 0.7 - 0.3 * step, "grad_norm": math.nan if last else 0.5 * 1.4 ** step,
            "grad_nonfinite": 2 if last else 0,
            "d_min": 0.0, "d_max": d_max, "d_p50": d_max / 4, "d_p99": d_max * 0.9, "max_d_over_T": d_max,
            "d_same_min": 0.1 * step, "d_other_min": 0.05 * step,
            "d_other_p50": d_max / 3,
            "exp_zero": max(0, (step - 7) * 40), "exp_subnormal": max(0, (step - 6) * 10),
            "p_same_min": 0.0 if (eps and step > 9) else math.exp(-d_max * 0.2),
            "p_diff_min": p_diff,
            "rows_without_same_class": 0,
            # (a, b) of real rows; a < 0 at the first steps (P_same > 1)
            "ab_backward_a": d_max * 0.2 - 1.0, "ab_backward_b": min(d_max * 0.6, 120.0),
            "ab_same_a": d_max * 0.3, "ab_same_b": 1.0, "ab_diff_a": 0.5, "ab_diff_b": min(d_max * 0.7, 130.0),
            "grad_2.0_norm/layer.weight": math.inf if last else 0.3 * 1.5 ** step,
            "grad_2.0_norm/layer.bias": math.nan if last else (0.0 if step == 2 else 1e-3 * 1.2 ** step),
            "param_norm/layer.weight": 1.0 + step,
        })
    return records


FINDING = {
    "op": "aten.div.Tensor", "short": "div", "phase": "backward", "backward_node": "DivBackward0", "module": None,
    "source": "stablenca/losses.py:131  per_sample = -torch.log(p_same / p_diff)", "index": 3,
    "pattern": "overflow", "detail": "overflow in 1 of 8 elements",
    "inputs": [{"shape": [8], "dtype": "float32", "numel": 8, "min": 0.5, "max": 7.7e17, "zeros": 0, "nan": 0,
                "posinf": 0, "neginf": 0, "subnormal": 0, "negative": 0, "arg": "self"},
               {"shape": [8], "dtype": "float32", "numel": 8, "min": 3.3e-26, "max": 2.0, "zeros": 0, "nan": 0,
                "posinf": 0, "neginf": 0, "subnormal": 0, "negative": 0, "arg": "other"}],
    "output": {"shape": [8], "dtype": "float32", "min": 0.1, "max": 1e30, "posinf": 1},
    "chain": [
        {"op": "aten.div.Tensor", "phase": "backward", "detail": "overflow in 1 of 8 elements",
         "stats": {"shape": [8], "dtype": "float32", "min": 0.1, "max": 1e30, "zeros": 0, "posinf": 1, "nan": 0},
         "kind": "source", "backward_node": "DivBackward0"},
        {"op": "aten.sum.dim_IntList", "phase": "forward", "detail": "exact 0 in 2 of 8 rows", "kind": "empty_set",
         "stats": {"shape": [8], "dtype": "float32", "min": None, "max": None, "zeros": 2, "nan": "NaN"}},
        {"op": "aten.exp.default", "phase": "forward", "detail": "6 finite inputs → 0.0", "kind": "underflow"},
    ],
    "chain_text": "div (overflow in 1 of 8 elements) ← sum empty_set (exact 0 in 2 of 8 rows) ← exp underflow",
    "root_cause": {"op": "aten.exp.default", "kind": "underflow", "detail": "6 finite inputs → 0.0 (x < -103.97)"},
    "precursors": [],
}


def write_run_dir(out, *, steps: int = 12, interrupted: bool = False) -> None:
    """A diagnose-shaped directory: a failed ratio run, a finite ratio_eps run, a modernnca run."""
    runs = []
    specs = [("seed-ratio-float32", "seed", "ratio", True), ("modernnca-ratio_eps-float32", "modernnca",
                                                             "ratio_eps", False),
             ("modernnca-modernnca-float32", "modernnca", "modernnca", False)]
    for name, model, loss, fail in specs:
        run_dir = out / name
        run_dir.mkdir(parents=True)
        records = synthetic_records(steps, fail, eps=loss == "ratio_eps")
        if loss == "modernnca":
            for r in records:
                r.pop("exp_zero"), r.pop("exp_subnormal"), r.pop("p_same_min"), r.pop("p_diff_min")
                r["softmax_zero"] = max(0, r["step"] - 9)
        (run_dir / "config.json").write_text(json.dumps({"model": model, "loss": loss, "dtype": "float32",
                                                         "batch_size": 8}))
        (run_dir / "records.jsonl").write_text("".join(dumps(r) + "\n" for r in records))
        entry = {"run": name, "model": model, "loss": loss, "dtype": "float32", "task": "multiclass",
                 "status": "diverged" if fail else "completed", "diverged": fail, "epochs_run": 3,
                 "steps_run": steps, "test": {"accuracy": 0.6123}, "val": {}, "excluded_rows": 0,
                 "first_nonfinite": None, "capsule": None}
        if fail:
            entry["diverged_at"] = {"epoch": records[-1]["epoch"], "step": steps - 1}
            entry["first_nonfinite"] = artifacts.first_nonfinite(entry["diverged_at"], FINDING)
            entry["capsule"] = f"{name}/capsule.pt"
            (run_dir / "finding.json").write_text(json.dumps(FINDING))
        if not (interrupted and loss == "modernnca"):
            (run_dir / "result.json").write_text(json.dumps(entry))
            runs.append(entry)
    summary = artifacts.new_summary(data="synthetic", seed=0, interrupted=interrupted, runs=runs,
                                    command="stablenca diagnose --out synthetic")
    (out / "summary.json").write_text(dumps(summary, indent=2))


_BUILT: dict = {}


def built_run_dir(tmp_path_factory):
    """The synthetic directory (check.json included) after one build_report, with training made impossible.

    Shared by test_plots and test_report: drawing the figures is the slow part, so it happens once.
    """
    if not _BUILT:
        from stablenca import report

        out = tmp_path_factory.mktemp("built")
        write_run_dir(out)
        (out / "check.json").write_text(json.dumps(CHECK_SUMMARY))
        with pytest.MonkeyPatch.context() as patch:
            import stablenca.training.trainer

            class NoTraining:
                def __init__(self, *args, **kwargs):
                    raise AssertionError("figures and report must come from the records alone")

            patch.setattr(stablenca.training.trainer, "Trainer", NoTraining)
            patch.setattr(stablenca.training.trainer, "train", NoTraining)
            figures: list = []
            real_draw_figures = plots.draw_figures

            def recording_draw_figures(*args, **kwargs):
                outcomes = real_draw_figures(*args, **kwargs)
                figures.extend(o for o in outcomes if isinstance(o, plots.Figure))
                return outcomes

            patch.setattr("stablenca.report.draw_figures", recording_draw_figures)
            paths = report.build_report(out)
        _BUILT.update(out=out, paths=paths, figures={f.path.name: f for f in figures})
    return _BUILT


@pytest.fixture(scope="module")
def drawn(tmp_path_factory):
    """Every figure of the synthetic directory, drawn once (by build_report)."""
    built = built_run_dir(tmp_path_factory)
    return built["out"], built["figures"]


@pytest.fixture
def run_set(tmp_path):
    write_run_dir(tmp_path)
    return plots.load_run_set(tmp_path)


def assert_png(path):
    data = path.read_bytes()
    assert data.startswith(PNG) and len(data) > 5000


def test_exp_limits_are_the_ieee_constants():
    normal, zero = floats.exp_limits("float32")
    assert round(normal, 2) == 87.34 and round(zero, 2) == 103.97
    assert math.exp(-(zero + 0.01)) > 0  # in float64 still representable ...
    import numpy as np

    assert np.exp(np.float32(-(zero + 0.01))) == 0 and np.exp(np.float32(-(zero - 0.05))) > 0
    assert np.exp(np.float32(-(normal + 0.01))) < np.finfo(np.float32).tiny
    assert [round(x, 1) for x in floats.exp_limits("float64")] == [708.4, 745.1]


def test_loader_reads_nan_and_inf_and_the_finding(run_set):
    run = run_set.runs[0]
    assert run.name == "seed-ratio-float32" and run.failure_step == 11
    assert math.isnan(run.series("grad_norm")[-1])
    assert math.isinf(run.series("grad_2.0_norm/layer.weight")[-1])
    assert [link["op"] for link in run.chain_links()][-1] == "aten.exp.default"
    assert run.grad_keys() == ["grad_2.0_norm/layer.weight", "grad_2.0_norm/layer.bias"]


def test_timeline_figure_for_every_run(drawn):
    out, figures = drawn
    for name in ("seed-ratio-float32", "modernnca-ratio_eps-float32", "modernnca-modernnca-float32"):
        assert figures[f"{name}-timeline.png"].kind == "timeline"
        assert_png(out / "figures" / f"{name}-timeline.png")


def test_gradient_flow_figure(drawn):
    out, figures = drawn
    assert_png(figures["seed-ratio-float32-gradients.png"].path)


def test_chain_figure_from_finding_and_from_summary_text(drawn, run_set, tmp_path):
    assert_png(drawn[1]["seed-ratio-float32-chain.png"].path)
    run = run_set.runs[0]
    run.finding = None  # only the summary's one-line chain
    assert len(run.chain_links()) == 3
    assert_png(plots.save_figure(plots.chain_figure(run), tmp_path / "c2.png"))
    run.entry["first_nonfinite"]["chain"] = None  # nothing traced: still a figure that says so
    assert_png(plots.save_figure(plots.chain_figure(run), tmp_path / "c3.png"))


def test_ratio_domain_categories():
    axis, codes = plots.ratio_domain("float32", 160.0, n=33)
    at = {round(v): k for k, v in enumerate(axis)}
    assert codes[at[10], at[10]] == 0  # finite
    assert codes[at[10], at[120]] == 2  # P_same = 0: +inf
    assert codes[at[120], at[10]] == 3  # P_diff = 0: -inf
    assert codes[at[120], at[120]] == 4  # 0/0
    assert codes[at[60], at[10]] == 1  # finite loss, backward overflow (exp(2*60 - 10) > float32 max)
    assert plots.ratio_domain("float64", 160.0, n=33)[1].max() == 0


def test_failure_domain_figure(drawn):
    assert_png(drawn[1]["ratio-failure-domain.png"].path)


def test_failure_domain_draws_real_rows_unclipped(run_set):
    import numpy as np

    fig = plots.failure_domain_figure(run_set.runs)
    ax = fig.axes[0]  # float32: the ratio runs are float32
    records = synthetic_records()
    ok = [r for r in records if math.isfinite(r["ab_backward_a"])]
    expected = {(r["ab_backward_a"], r["ab_backward_b"]) for r in ok}
    drawn = [{tuple(p) for p in c.get_offsets().tolist()} for c in ax.collections]
    # The same row's a and b are drawn together, negative a included (not clipped to 0).
    assert any(expected <= points for points in drawn)
    assert min(a for a, _ in expected) < 0 and ax.get_xlim()[0] <= min(a for a, _ in expected)
    # The legend's marker colours are those of the points they name: the fixed-colour rows' edge colour,
    # and the progress-coloured row's colour map.
    from matplotlib.colors import to_rgba

    handles = dict(zip((t.get_text() for t in fig.legends[0].get_texts()), fig.legends[0].legend_handles))
    edges = {tuple(np.round(c.get_edgecolor()[0], 6)) for c in ax.collections if len(c.get_edgecolor())}
    for label, handle in handles.items():
        if "smallest P_same" in label or "smallest P_diff" in label:
            assert tuple(np.round(to_rgba(handle.get_markeredgecolor()), 6)) in edges, label
        if "largest 2b − a" in label:
            cmap = next(c.get_cmap() for c in ax.collections if c.get_array() is not None and c.get_cmap().name
                        == "viridis")
            assert to_rgba(handle.get_color()) == pytest.approx(cmap(0.5)), label


def test_timeline_margin_panel_draws_2b_minus_a(run_set):
    run = next(r for r in run_set.runs if r.loss == "ratio")
    fig = plots.timeline_figure(run)
    margin = fig.axes[4]
    lines = [line for line in margin.get_lines() if len(line.get_xdata()) == len(run.records)]
    expected = [2 * r["ab_backward_b"] - r["ab_backward_a"] for r in run.records]
    assert any(list(line.get_ydata()) == pytest.approx(expected, rel=1e-15) for line in lines)
    assert any(line.get_ydata()[0] == pytest.approx(math.log(floats.facts("float32").max))
               for line in margin.get_lines() if len(line.get_ydata()) == 2)  # the 88.72 line


CHECK_SUMMARY = {
    "command": "check", "sweep": {"scale_min": 1e-3, "scale_max": 1e4, "n_scales": 71},
    "results": [
        {"loss": "ratio", "dtype": "float32", "threshold_bits": 12.0, "breakdown_scale": 79.4,
         "breakdown_reason": "non-finite loss", "populations": {"paired": {"finite_fraction": 0.7,
                                                                            "loss_bits_median": 0.5,
                                                                            "loss_bits_max": math.inf}}},
        {"loss": "nca_logspace", "dtype": "float32", "threshold_bits": 12.0, "breakdown_scale": None,
         "breakdown_reason": "", "populations": {"paired": {"finite_fraction": 1.0, "loss_bits_median": 0.2,
                                                            "loss_bits_max": 2.0}}},
        {"loss": "ratio", "dtype": "float64", "threshold_bits": 26.5, "breakdown_scale": 631.0,
         "breakdown_reason": "non-finite loss", "populations": {}},
    ],
}


def test_error_vs_scale_from_summary_rows(drawn):
    rows = plots.check_curves(CHECK_SUMMARY)
    assert [r["curve"] for r in rows] == [[], [], []]
    assert math.isnan(rows[1]["breakdown_scale"]) and rows[0]["breakdown_scale"] == 79.4
    assert_png(drawn[1]["error-vs-scale.png"].path)


def test_error_vs_scale_from_per_scale_curves(tmp_path):
    check = json.loads(json.dumps(CHECK_SUMMARY))
    scales = [10 ** (k / 4) for k in range(-12, 17)]
    check["results"][0]["per_scale"] = [{"scale": s, "loss_bits_median": 0.5 if s < 80 else None,
                                         "finite_fraction": 1.0 if s < 80 else 0.0} for s in scales]
    check["results"][1]["per_scale"] = {"scale": scales, "loss_bits_median": [0.3] * len(scales)}
    rows = plots.check_curves(check)
    assert len(rows[0]["curve"]) == len(scales) and rows[1]["curve"][0]["loss_bits"] == 0.3
    assert_png(plots.save_figure(plots.error_vs_scale_figure(check), tmp_path / "e.png"))


def test_plot_all_writes_every_figure_atomically(drawn):
    out, figures = drawn
    names = sorted(figures)
    assert "seed-ratio-float32-chain.png" in names and "ratio-failure-domain.png" in names
    assert "modernnca-modernnca-float32-chain.png" not in names  # finite runs have no chain
    assert sorted(p.name for p in (out / "figures").iterdir()) == names  # no temp files left behind
    assert all(f.path.parent == out / "figures" for f in figures.values())


def test_a_bad_check_file_is_one_line_error(tmp_path):
    from stablenca.errors import DataError

    (tmp_path / "c.json").write_text("{}")
    with pytest.raises(DataError, match="no 'results' list"):
        plots.load_check(tmp_path / "c.json")
    with pytest.raises(DataError, match="does not exist"):
        plots.load_check(tmp_path / "missing.json")
