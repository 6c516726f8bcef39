"""Chinese tracer text: every phrase of the committed findings is translated, every number kept."""

import json
import re
from collections import Counter
from pathlib import Path

import pytest
import torch

from stablenca.report import Doc, Prose, render
from stablenca.report.markdown import m
from stablenca.report.tracer_zh import translate, untranslated
from stablenca.trace import find_nonfinite
from stablenca.trace.verify import verify_call

DIAGNOSE = Path(__file__).resolve().parents[1] / "reports" / "abalone" / "diagnose"
NUMBER = re.compile(r"[-+]?\d+(?:\.\d+)?(?:e[-+]?\d+)?")


def _texts(run):
    finding = json.loads((DIAGNOSE / run / "finding.json").read_text())
    root = finding["root_cause"]
    return [finding["chain_text"], finding["detail"], root["detail"], root.get("traced", {}).get("detail", ""),
            finding["verification"]["statement"]]


@pytest.mark.parametrize("run", ["seed-ratio-float32", "modernnca-ratio-float32"])
def test_committed_findings_translate_completely_and_keep_their_numbers(run):
    for text in _texts(run):
        assert untranslated(text), "the English text should count as untranslated"  # the check can fail
        chinese = translate(text)
        assert untranslated(chinese) == [], chinese
        # Every number survives (the order changes: "6 of 624" reads "624 个…中有 6 个"; the
        # Chinese may add the 0 of 恰为 0).
        assert not Counter(NUMBER.findall(text)) - Counter(NUMBER.findall(chinese))


def test_an_unknown_phrase_is_reported():
    left = untranslated(translate("div (a brand new tracer phrase in 3 of 4 rows)"))
    assert {"brand", "phrase", "rows"} <= set(left)


# -- findings beyond the committed run: the mpmath decisions, poles, exact zeros, verification --------


def _pole_with_verification():
    x = torch.tensor([0.0, 800.0], requires_grad=True)  # lgamma(0) is a pole; lgamma(800) is finite
    finding, _ = verify_call(lambda x: torch.lgamma(x).sum(), x)
    return finding


def _constant_column_standardised():
    x = torch.tensor([[1.0, 2.0], [1.0, 3.0], [1.0, 5.0]])  # column 0 is constant: its std is exactly 0
    return find_nonfinite(lambda x: ((x - x.mean(0)) / x.std(0)).sum(), x)


FINDINGS = {
    # 700 ** 200 = 1.05e569: finite, decided by mpmath beyond float64's range
    "overflow beyond float64 (mpmath)": lambda: find_nonfinite(lambda x: torch.pow(x, 200.0).sum(),
                                                               torch.tensor([700.0, 1.5])),
    "exp overflow beyond float64 (mpmath)": lambda: find_nonfinite(lambda x: torch.exp(x).sum(),
                                                                   torch.tensor([1000.0, 1.0])),
    "pole (float64 and mpmath recompute), float64 fails too": _pole_with_verification,
    "zero std": _constant_column_standardised,
    "cancellation 1 - 1": lambda: find_nonfinite(lambda x: torch.reciprocal(1.0 - x).sum(), torch.tensor([1.0])),
}


def _render_zh(finding) -> tuple[list[str], str]:
    """The finding's English prose, and the Chinese report text rendered from it (as the report does)."""
    root = finding.root_cause
    english = [finding.chain_text(), finding.detail, root["detail"]]
    doc = Doc()
    doc.p(m("failure_head", run="run", step=1, epoch=0, op=finding.op, phase_word="@phase_" + finding.phase,
            node="", source="?", pattern=finding.pattern, kind=root["kind"], root_op=root["op"],
            detail=Prose(root["detail"])))
    if finding.verification:
        english.append(finding.verification["statement"])
        doc.p(m("failure_verified", statement=Prose(finding.verification["statement"])))
    doc.p(m("chain_intro"))
    doc.code(Prose(finding.chain_text()))
    doc.code(Prose(finding.detail))
    return english, render(doc, "zh")


@pytest.mark.parametrize("name", sorted(FINDINGS))
def test_tracer_findings_render_in_the_chinese_report_with_no_english_left(name):
    finding = FINDINGS[name]()
    english, chinese = _render_zh(finding)
    assert all(untranslated(text) for text in english if text)  # English before: the check can fail
    assert untranslated(chinese) == [], chinese
    for text in english:  # every number survives
        assert not Counter(NUMBER.findall(text)) - Counter(NUMBER.findall(chinese)), text


def test_the_mpmath_phrases_are_in_the_rendered_findings_and_in_chinese():
    english, chinese = _render_zh(FINDINGS["overflow beyond float64 (mpmath)"]())
    assert "is beyond float64 too" in " ".join(english)
    assert "精确值(mpmath)高达 1.05e+569,同样超出 float64 的范围" in chinese
    english, chinese = _render_zh(_pole_with_verification())
    assert "float64 and mpmath recompute" in " ".join(english) and "float64 fails too" not in chinese
    assert "float64 与 mpmath 重算" in chinese and "极点" in chinese
    assert "float64 重放同样失败" in chinese
