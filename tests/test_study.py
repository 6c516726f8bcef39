"""``stablenca study``: aggregation, tables, ablation deltas, files and the CLI (smoke-sized runs)."""

import json
import math

import numpy as np
import pytest

from stablenca.study import run as study_module
from stablenca.cli import main
from stablenca.study import (
    ABLATION_STEPS,
    PUBLISHED_SOURCE,
    Row,
    aggregate,
    ablation_rows,
    consecutive_deltas,
    paired_differences,
    rings_to_classes,
    run_study,
    summarise,
)

SMOKE_ROWS = ["modernnca_f32", "seed_ratio", "sklearn_nca_knn3", "knn3", "knn_tuned", "dummy"]


# ----------------------------------------------------------------------------- statistics on hand-made numbers

#: Means, stds and differences of at most 5 numbers in [0, 1] (and the decimal literals they are
#: compared with): at most 16 float64 roundings, each within u = 2**-53 of a magnitude <= 1 (a std's
#: error is its variance's error over 2 std, and the deviations are of the size of the std).
HAND = {"rel": 0.0, "abs": 16 * 2.0 ** -53}


def test_aggregate_mean_and_population_std():
    stats = aggregate([0.60, 0.62, 0.64])
    assert stats["mean"] == pytest.approx(0.62, **HAND)
    assert stats["std"] == pytest.approx(math.sqrt((0.02 ** 2 + 0 + 0.02 ** 2) / 3), **HAND)  # ddof=0, as TALENT
    assert (stats["n"], stats["missing"]) == (3, 0)


def test_aggregate_skips_missing_and_non_finite_values():
    stats = aggregate([0.5, None, float("nan"), 0.7, float("inf")])
    assert stats["mean"] == pytest.approx(0.6, **HAND) and stats["std"] == pytest.approx(0.1, **HAND)
    assert (stats["n"], stats["missing"]) == (2, 3)
    assert aggregate([]) == {"mean": None, "std": None, "n": 0, "missing": 0}
    assert aggregate([7.0])["std"] == 0.0


def test_consecutive_deltas_are_differences_of_neighbours():
    assert consecutive_deltas([0.50, 0.55, 0.53]) == [None, pytest.approx(0.05, **HAND), pytest.approx(-0.02, **HAND)]
    assert consecutive_deltas([0.5, None, 0.6]) == [None, None, None]


def test_paired_differences_use_common_seeds():
    previous = {0: 0.50, 1: 0.60, 2: 0.70}
    current = {0: 0.55, 1: 0.60, 3: 0.90}  # seed 2 and 3 are not paired
    stats = paired_differences(previous, current)
    assert stats["n"] == 2 and stats["mean"] == pytest.approx(0.025, **HAND)
    assert stats["std"] == pytest.approx(0.025, **HAND) and stats["se"] == pytest.approx(0.025, **HAND)


def test_summarise_counts_divergence_and_missing_metrics():
    row = Row("r", "r", "train", "multiclass")
    runs = [
        {"seed": 0, "test": {"accuracy": 0.6, "macro_f1": 0.5}, "diverged": False, "epochs_run": 30, "seconds": 1.0},
        {"seed": 1, "test": {"accuracy": 0.4, "macro_f1": 0.3}, "diverged": True, "epochs_run": 3,
         "diverged_at": {"epoch": 2, "step": 200, "step_in_epoch": 32}, "seconds": 1.0},
        {"seed": 2, "test": {}, "diverged": True, "epochs_run": 5,  # non-finite parameters: no metrics
         "diverged_at": {"epoch": 4, "step": 400, "step_in_epoch": 64}, "seconds": 1.0},
    ]
    summary = summarise(row, runs)
    assert summary["accuracy"]["mean"] == pytest.approx(0.5, **HAND) and summary["accuracy"]["std"] == pytest.approx(0.1, **HAND)
    assert summary["accuracy"]["n"] == 2 and summary["accuracy"]["missing"] == 1
    assert summary["diverged"] == 2 and summary["runs"] == 3
    assert summary["diverged_at_epoch"] == {"median": 3.0, "min": 2, "max": 4}


# ----------------------------------------------------------------------------- the ablation walk


def test_each_ablation_step_changes_exactly_its_factor():
    rows = ablation_rows()
    assert [r.id for r in rows] == [f"A{i}" for i in range(10)]
    options = [study_module._job_options(r, None) for r in rows]
    for i in range(1, len(rows)):
        changed = {k for k in options[i] if options[i][k] != options[i - 1][k]}
        assert changed == set(ABLATION_STEPS[i][3]), rows[i].id
    # The student at the start, full ModernNCA (TALENT's defaults) before the task-framing step.
    from stablenca.training.trainer import TrainConfig

    assert options[0] == study_module._job_options(Row("x", "x", "train", "multiclass",
                                                        config=(("loss", "ratio"), ("model", "seed"))), None)
    full = TrainConfig(model="modernnca").resolved().to_dict()
    full.pop("seed")
    assert options[8] == full
    assert options[9]["task"] == "regression" and rows[9].kind == "train_threshold"


def test_ring_thresholds_reproduce_the_class_bins(abalone_multiclass, abalone_regression):
    for split in ("train", "val", "test"):
        assert np.array_equal(rings_to_classes(abalone_regression.y_raw[split]), abalone_multiclass.y_raw[split])


# ----------------------------------------------------------------------------- one smoke study through the API


@pytest.fixture(scope="module")
def smoke(tmp_path_factory):
    out = tmp_path_factory.mktemp("study")
    written, lines = [], []
    original_text, original_json = study_module.atomic_write_text, study_module.atomic_write_json
    study_module.atomic_write_text = lambda path, text: (written.append(str(path)), original_text(path, text))[1]
    study_module.atomic_write_json = lambda path, value: (written.append(str(path)), original_json(path, value))[1]
    try:
        study = run_study(seeds=1, rows=SMOKE_ROWS, ablation=True, max_epochs=1, out=out, progress=lines.append)
    finally:
        study_module.atomic_write_text, study_module.atomic_write_json = original_text, original_json
    return {"study": study, "out": out, "written": written, "lines": lines,
            "md": (out / "study.md").read_text(encoding="utf-8")}


def test_smoke_study_has_the_rows_asked_for(smoke):
    study, md = smoke["study"], smoke["md"]
    assert [row["id"] for row in study["rows"]] == SMOKE_ROWS
    assert [step["id"] for step in study["ablation"]] == [f"A{i}" for i in range(10)]
    for row in study["rows"] + study["ablation"]:
        assert row["label"] in md
    assert study["seeds"] == [0] and study["split_seed"] == 0 and study["max_epochs"] == 1
    assert len(smoke["lines"]) == study["runs"]  # one progress line per finished run
    # Every trained run was capped at one epoch.
    trained = [r for row in study["rows"] + study["ablation"] if row["kind"].startswith("train")
               for r in row["per_seed"]]
    assert trained and all(r["epochs_run"] == 1 for r in trained)


def test_smoke_summaries_are_computed_from_per_seed_values(smoke):
    for row in smoke["study"]["rows"] + smoke["study"]["ablation"]:
        for metric in ("accuracy", "macro_f1"):
            values = [r["test"][metric] for r in row["per_seed"]]
            # The same numpy reductions of the same floats (JSON round-trips them exactly): equal.
            assert row["summary"][metric]["mean"] == float(np.mean(values))
            assert row["summary"][metric]["std"] == float(np.std(values))
        assert 0.0 <= row["summary"]["accuracy"]["mean"] <= 1.0


def test_smoke_published_numbers_are_present_and_labelled(smoke):
    study, md = smoke["study"], smoke["md"]
    assert study["published"]["source"] == PUBLISHED_SOURCE
    published = {row["name"]: (row["mean"], row["std"]) for row in study["published"]["rows"]}
    assert published == {"ModernNCA": (0.6304, 0.0043), "MLP": (0.6315, None), "KNN": (0.5957, None),
                         "Dummy": (0.3469, None)}
    assert PUBLISHED_SOURCE in md and "Published accuracy (TALENT¹)" in md
    assert "0.6304 ± 0.0043" in md and "MLP (published only, not run here)" in md
    modern_line = next(line for line in md.splitlines() if line.startswith("| ModernNCA, modernnca loss, float32"))
    assert modern_line.rstrip().endswith("0.6304 ± 0.0043 |")


def test_smoke_ablation_deltas_are_differences_of_consecutive_rows(smoke):
    steps = smoke["study"]["ablation"]
    assert steps[0]["delta"] == {"accuracy": None, "macro_f1": None}
    for previous, step in zip(steps, steps[1:]):
        for metric in ("accuracy", "macro_f1"):
            expected = step["summary"][metric]["mean"] - previous["summary"][metric]["mean"]
            assert step["delta"][metric] == expected  # the same subtraction of the same floats
            assert f"{expected:+.4f}" in smoke["md"]
    # A8 is full ModernNCA: the same runs as the main table's float32 row.
    main = next(row for row in smoke["study"]["rows"] if row["id"] == "modernnca_f32")
    assert steps[8]["per_seed"] == main["per_seed"] and steps[8]["config"] == main["config"]
    assert steps[0]["per_seed"] == next(r for r in smoke["study"]["rows"] if r["id"] == "seed_ratio")["per_seed"]
    assert set(steps[9]["per_seed"][0]["regression_test"]) == {"rmse", "mae"}


def test_smoke_files_are_written_atomically(smoke):
    out = smoke["out"]
    assert sorted(smoke["written"]) == sorted([str(out / "study.json"), str(out / "study.md")])
    assert sorted(p.name for p in out.iterdir()) == ["study.json", "study.md"]  # no temporary file left
    saved = json.loads((out / "study.json").read_text(encoding="utf-8"))
    assert saved["rows"][0]["per_seed"] == json.loads(json.dumps(smoke["study"]["rows"][0]["per_seed"]))
    assert saved["machine"]["cpu_count"] and saved["machine"]["torch"] and saved["machine"]["cpu"]


def test_smoke_markdown_starts_with_the_command(smoke):
    study, md = smoke["study"], smoke["md"]
    assert study["command"] == (f"stablenca study --seeds 1 --task multiclass --out {smoke['out']} --jobs 1 "
                                f"--rows {' '.join(SMOKE_ROWS)} --ablation --max-epochs 1")
    assert md.index(study["command"]) < md.index("## Main table")
    for section in ("## Ablation", "## Reading the table", "Smoke run", "wall time", "CPUs", "torch"):
        assert section in md


# ----------------------------------------------------------------------------- other paths


def test_regression_study_without_files():
    study = run_study(task="regression", seeds=1, rows=["seed_mse", "knn3", "dummy"], max_epochs=1, out=None)
    assert study["ablation"] == [] and [r["id"] for r in study["rows"]] == ["seed_mse", "knn3", "dummy"]
    for row in study["rows"]:
        assert set(row["summary"]) >= {"rmse", "mae"} and row["summary"]["rmse"]["mean"] > 0
    md = study_module.render_markdown(study)
    assert "2.0968 ± 0.0081" in md and "Published RMSE (rings) (TALENT¹)" in md


def test_runs_use_one_thread_whatever_the_caller_set():
    import torch

    kwargs = dict(seeds=1, rows=["seed_difference"], ablation=False, max_epochs=1, out=None)
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        first = run_study(**kwargs)
        assert torch.get_num_threads() == 2  # restored after the runs
        torch.set_num_threads(1)
        second = run_study(**kwargs)
    finally:
        torch.set_num_threads(before)
    assert first["rows"][0]["per_seed"][0]["test"] == second["rows"][0]["per_seed"][0]["test"]


@pytest.mark.slow  # starts two worker processes (each imports torch): ~30 s on 2 shared cores
def test_results_do_not_depend_on_jobs():
    kwargs = dict(seeds=2, rows=["seed_difference"], ablation=False, max_epochs=1, out=None)
    serial, parallel = run_study(jobs=1, **kwargs), run_study(jobs=2, **kwargs)
    assert [r["test"] for r in serial["rows"][0]["per_seed"]] == [r["test"] for r in parallel["rows"][0]["per_seed"]]
    assert [r["seed"] for r in parallel["rows"][0]["per_seed"]] == [0, 1]


# ----------------------------------------------------------------------------- the CLI


def test_cli_json_and_exit_code(tmp_path, capsys):
    out = tmp_path / "report"
    code = main(["study", "--seeds", "1", "--max-epochs", "1", "--rows", "knn3", "dummy", "--no-ablation",
                 "--out", str(out), "--json"])
    captured = capsys.readouterr()
    assert code == 0
    summary = json.loads(captured.out)
    assert [row["id"] for row in summary["rows"]] == ["knn3", "dummy"] and summary["ablation"] == []
    assert summary["files"]["markdown"] == str(out / "study.md") and (out / "study.json").exists()
    assert "knn3" in captured.err  # progress on stderr


@pytest.mark.parametrize("argv", [["--seeds", "0"], ["--seeds", "abc"], ["--jobs", "0"]])
def test_cli_rejects_bad_numbers_with_one_line(argv, capsys):
    with pytest.raises(SystemExit) as exc:
        main(["study", *argv])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("stablenca: error:") and err.count("\n") == 1


@pytest.mark.parametrize("argv,match", [
    (["--rows", "resnet"], "unknown --rows resnet"),
    (["--task", "regression", "--ablation"], "ablation is defined on the 3-class task"),
])
def test_cli_rejects_bad_combinations_before_training(argv, match, tmp_path, capsys):
    code = main(["study", "--out", str(tmp_path / "o"), *argv])
    err = capsys.readouterr().err
    assert code == 2 and match in err and err.count("\n") == 1


def test_factor_intervals_pair_seed_by_seed():
    from stablenca.study import factor_table

    def entry(row_id, values):
        return {"id": row_id, "task": "multiclass",
                "per_seed": [{"seed": s, "test": {"accuracy": v, "macro_f1": v}} for s, v in enumerate(values)]}

    # Paired differences 0.1, 0.1, 0.1: zero spread, so the interval collapses onto the mean,
    # although the rows' own spreads (0.1 apart) are large.
    table = factor_table([entry("seed_difference", [0.5, 0.6, 0.7]), entry("seed_difference_10_epochs", [0.6, 0.7, 0.8])])
    assert [f["id"] for f in table] == ["F5"]
    paired = table[0]["paired"]["accuracy"]
    # The differences are exact (Sterbenz) differences of rounded literals, each within 1.5u of 0.1: the
    # mean within 4.5u, the spread s <= 3u, the interval 2 t(0.975, 2) s / sqrt(3) < 15u wide: HAND.
    assert paired["n"] == 3 and paired["mean"] == pytest.approx(0.1, **HAND)
    assert paired["high"] - paired["low"] == pytest.approx(0.0, **HAND)


def test_numerical_features_drop_the_sex_one_hot():
    from stablenca.study.run import _data

    full, numerical = _data("multiclass"), _data("multiclass", "numerical")
    assert full.n_onehot == 3 and numerical.n_onehot == 0
    assert numerical.d_in == full.n_num
    assert (numerical.x["train"] == full.x["train"][:, :full.n_num]).all()
