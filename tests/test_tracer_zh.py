"""Chinese tracer text: every phrase of the committed findings is translated, every number kept."""

import json
import re
from collections import Counter
from pathlib import Path

import pytest

from stablenca.report.tracer_zh import translate, untranslated

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
