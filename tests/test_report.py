"""report.md / report.zh.md from a synthetic diagnose directory: its own numbers, both languages alike."""

from __future__ import annotations

import json
import re
from collections import Counter

import pytest

from stablenca import report
from stablenca.cli import main
from test_plots import CHECK_SUMMARY, FINDING, built_run_dir, synthetic_records, write_run_dir

NUMBER = re.compile(r"(?<![A-Za-z_])-?\d+(?:\.\d+)?(?:e[+-]?\d+)?")


def numbers(text: str) -> Counter:
    return Counter(NUMBER.findall(text))


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """build_report on the synthetic directory (with check.json), with training made impossible."""
    shared = built_run_dir(tmp_path_factory)
    out, paths = shared["out"], shared["paths"]
    en = (out / "report.md").read_text(encoding="utf-8")
    zh = (out / "report.zh.md").read_text(encoding="utf-8")
    return out, paths, en, zh


def test_returns_the_written_paths(built):
    out, paths, _, _ = built
    assert out / "report.md" in paths and out / "report.zh.md" in paths
    assert all(p.is_file() for p in paths)
    assert any(p.name == "seed-ratio-float32-timeline.png" for p in paths)


def test_report_names_the_runs_first_bad_op_and_step(built):
    _, _, en, zh = built
    for text in (en, zh):
        assert "`seed-ratio-float32`" in text
        assert "aten.div.Tensor" in text and "DivBackward0" in text
        assert "`underflow` at `aten.exp.default`" in text or "`aten.exp.default` 处的 `underflow`" in text
    assert "step 11 (epoch 2)" in en and "第 11 步（第 2 轮）" in zh


def test_report_numbers_come_from_the_records(built):
    _, _, en, _ = built
    records = synthetic_records(12, True)
    d_max = max(r["d_max"] for r in records)
    assert report.fmt(d_max) in en  # the largest distance of the run
    first_zero = next(r for r in records if r["exp_zero"] > 0)
    assert f"first exact 0.0 appeared at step {first_zero['step']}" in en
    assert f"{first_zero['exp_zero']} `exp_zero` entries" in en
    assert report.fmt(FINDING["inputs"][1]["min"]) in en  # the divisor from the finding
    assert "0.6123" in en  # test accuracy from the summary


def test_both_languages_have_the_same_numbers(built):
    _, _, en, zh = built
    assert numbers(en) == numbers(zh)
    assert len(numbers(en)) > 30


def test_templates_match():
    assert set(report.EN) == set(report.ZH)
    for key in report.EN:
        assert report.placeholders(report.EN[key]) == report.placeholders(report.ZH[key]), key
        assert numbers(report.EN[key]) == numbers(report.ZH[key]), key


def test_sections_for_absent_runs_say_not_run(built):
    _, _, en, zh = built
    assert "`difference`: not run." in en and "`difference`：未运行。" in zh
    assert "`nca_logspace`: not run." in en


def test_epsilon_section_uses_its_run(built):
    _, _, en, _ = built
    assert "`modernnca-ratio_eps-float32` (completed, 12 recorded steps)" in en
    assert "exactly 0.0 in some row" in en  # P_same_min == 0 in the synthetic eps records


def test_singleton_not_seen_is_said(built):
    _, _, en, _ = built
    assert "Not seen in this run" in en


def test_no_temp_files_left(built):
    out, _, _, _ = built
    leftovers = [p for p in out.rglob("*") if p.name.startswith(".") or p.suffix == ".tmp"]
    assert leftovers == []


def test_interrupted_run_dir_still_gets_a_report(tmp_path, monkeypatch):
    from stablenca.report import figures as plots

    # The figures are tested on their own; here only the interrupted run's timeline is drawn.
    def some_figures(out, check_path=None, *, run_set, strict=True):
        return plots.run_figure_jobs(run_set.runs[-1])[:1], []

    monkeypatch.setattr(report, "figure_jobs", some_figures)
    monkeypatch.setattr(report, "teaching_jobs", lambda out, runs: [])
    write_run_dir(tmp_path, steps=6, interrupted=True)
    # records cut mid-line by the interruption, no result.json
    run_dir = tmp_path / "modernnca-modernnca-float32"
    text = (run_dir / "records.jsonl").read_text()
    (run_dir / "records.jsonl").write_text(text + '{"epoch": 1, "step": 6, "loss": 0.')
    paths = report.build_report(tmp_path)
    en = (tmp_path / "report.md").read_text(encoding="utf-8")
    zh = (tmp_path / "report.zh.md").read_text(encoding="utf-8")
    assert "This diagnose was interrupted" in en and "本次诊断被中断" in zh
    assert "`modernnca-modernnca-float32` was interrupted after 6 recorded steps" in en
    assert numbers(en) == numbers(zh)
    assert any(p.name == "modernnca-modernnca-float32-timeline.png" for p in paths)


def test_check_json_in_the_run_dir_adds_its_section(built):
    _, paths, en, zh = built
    assert "Error versus distance scale" in en and "| `ratio` | float32 | 79.4 |" in en
    assert any(p.name == "error-vs-scale.png" for p in paths)


def test_check_file_elsewhere(tmp_path):
    write_run_dir(tmp_path, steps=4)
    check = tmp_path / "elsewhere.json"
    check.write_text(json.dumps(CHECK_SUMMARY))
    run_set = report.load_run_set(tmp_path)
    doc = report.extract(run_set, [], report.load_check(check))
    en, zh = report.render(doc, "en"), report.render(doc, "zh")
    assert "Error versus distance scale" in en and "79.4" in en
    assert numbers(en) == numbers(zh)


def test_cli_on_a_dir_without_summary_exits_2_with_one_line(tmp_path, capsys):
    (tmp_path / "some-run").mkdir()
    assert main(["report", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "summary.json" in err and "fix:" in err
    assert main(["plot", str(tmp_path / "missing")]) == 2
    assert capsys.readouterr().err.count("\n") == 1


def test_cli_report_with_check_file(tmp_path, capsys):
    write_run_dir(tmp_path, steps=4)
    assert main(["report", str(tmp_path), "--check", str(tmp_path / "nope.json")]) == 2
    assert "nope.json" in capsys.readouterr().err
