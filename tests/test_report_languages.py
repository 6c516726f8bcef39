"""The Chinese report has no English tracer text (tests/test_report.py checks that both carry the same numbers)."""

import re
import shutil
from pathlib import Path

import pytest

from stablenca.report import Prose, build_report, extract
from stablenca.report.runs import load_run_set
from stablenca.report.tracer_zh import translate, untranslated

DIAGNOSE = Path(__file__).resolve().parents[1] / "reports" / "abalone" / "diagnose"
#: Proper names, loss and run names, and words of file paths that stay as they are in Chinese.
NAMES = {"IEEE", "Herbie", "mpmath", "ModernNCA", "NCA", "TALENT", "abalone", "scikit", "lego", "embedded", "modernnca", "nca_logspace",
         "ratio", "ratio_eps", "difference", "seed"}


@pytest.fixture(scope="module")
def reports(tmp_path_factory):
    out = tmp_path_factory.mktemp("diagnose")
    for item in DIAGNOSE.iterdir():
        if item.name != "figures" and not item.name.startswith("report"):
            (shutil.copytree if item.is_dir() else shutil.copy)(item, out / item.name)
    build_report(out)
    return out, (out / "report.md").read_text(encoding="utf-8"), (out / "report.zh.md").read_text(encoding="utf-8")


def test_chinese_report_has_no_untranslated_text(reports):
    _, _, chinese = reports
    prose = re.sub(r"\]\(figures/[^)]*\)", "]", chinese).replace("```", "\n")
    left = [word for word in untranslated(prose) if word not in NAMES]
    assert left == []


def test_every_tracer_phrase_of_the_report_is_translated(reports):
    out, _, _ = reports
    doc = extract(load_run_set(out), [], None, [])
    found = []
    for block in doc.blocks:
        found += [block.text] if isinstance(block.text, Prose) else []
        for part in block.parts:
            if isinstance(part, tuple) and len(part) == 2 and isinstance(part[1], dict):
                found += [v for v in part[1].values() if isinstance(v, Prose)]
    assert found, "the committed runs have a chain, details and a verification statement"
    for text in found:
        assert untranslated(text)  # English before
        assert untranslated(translate(text)) == [], text


def test_study_seed_zero_is_compared_with_the_same_training():
    # A study row and a diagnose run pair up only when every training field agrees; the numbers shown are
    # the study's seed-0 test accuracy and the run's own result.
    import json

    from stablenca.report.sections import _SAME_TRAINING, _seed_zero

    run_set = load_run_set(DIAGNOSE)
    study = json.loads((DIAGNOSE.parent / "factors_modernnca" / "study.json").read_text())
    pairs = {(row, run): (a, b) for row, run, a, b in _seed_zero(study, run_set)}
    run = run_set.run("modernnca", "modernnca")
    row = next(r for r in study["rows"] if r["id"] == "modernnca_f32")
    expected = (next(s for s in row["per_seed"] if s["seed"] == 0)["test"]["accuracy"], run.result["test"]["accuracy"])
    assert pairs[("modernnca_f32", run.name)] == expected
    assert all(run_set.runs[[r.name for r in run_set.runs].index(name)].config["loss"] ==
               next(r for r in study["rows"] if r["id"] == row_id)["config"]["loss"] for row_id, name in pairs)
    changed = json.loads(json.dumps(study))
    for r in changed["rows"]:
        r["config"]["lr"] = 0.5  # a different training: no pair
    assert "lr" in _SAME_TRAINING and _seed_zero(changed, run_set) == []
