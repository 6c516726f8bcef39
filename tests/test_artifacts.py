"""The run-directory schema: versioned summaries, one shape of a finding."""

from __future__ import annotations

import json

import pytest

from stablenca import artifacts, cli
from stablenca.errors import DataError


def test_a_new_summary_carries_the_schema_version(tmp_path):
    summary = artifacts.new_summary(seed=3)
    artifacts.write_summary(tmp_path, summary)
    assert artifacts.read_summary(tmp_path) == summary
    assert json.loads((tmp_path / artifacts.SUMMARY).read_text())["schema"] == artifacts.SCHEMA_VERSION


@pytest.mark.parametrize("version, words", [(None, "older stablenca"), (999, "schema 999"), ("1", "schema '1'")])
def test_older_or_unknown_schema_is_one_clear_error(tmp_path, version, words):
    summary = {"stablenca": "diagnose", "runs": []}
    if version is not None:
        summary["schema"] = version
    (tmp_path / artifacts.SUMMARY).write_text(json.dumps(summary))
    with pytest.raises(DataError, match=words) as caught:
        artifacts.read_summary(tmp_path)
    assert "\n" not in str(caught.value) and "fix: re-run `stablenca diagnose`" in str(caught.value)


def test_report_of_an_unversioned_run_dir_exits_2(tmp_path, capsys):
    (tmp_path / artifacts.SUMMARY).write_text(json.dumps({"stablenca": "diagnose", "runs": []}))
    assert cli.main(["report", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "older stablenca" in err


def test_first_nonfinite_is_the_finding_shape_not_a_second_spelling():
    finding = {"op": "aten.div.Tensor", "phase": "backward", "backward_node": "DivBackward0", "module": None,
               "source": "x.py:1", "pattern": "overflow", "index": 4, "detail": "d",
               "chain": [{"op": "aten.div.Tensor", "phase": "backward", "detail": "overflow"}],
               "chain_text": "div (overflow)", "root_cause": {"op": "aten.exp.default", "kind": "underflow"},
               "inputs": [], "output": {}, "precursors": []}
    entry = artifacts.first_nonfinite({"epoch": 1, "step": 2}, finding)
    assert entry["chain"] == finding["chain"] and entry["chain_text"] == finding["chain_text"]
    assert "chain_str" not in entry
    assert {k: v for k, v in entry.items() if k not in ("epoch", "step")} == \
        {k: finding.get(k) for k in artifacts.FINDING_KEYS}
    assert artifacts.first_nonfinite(None, finding) is None


def test_a_run_missing_from_the_summary_is_read_from_its_files(tmp_path):
    artifacts.write_summary(tmp_path, artifacts.new_summary())
    run_dir = tmp_path / "cut-run"
    artifacts.write_run_json(run_dir, artifacts.CONFIG, {"model": "seed", "loss": "ratio", "dtype": "float32"})
    (run_dir / artifacts.RECORDS).write_text('{"epoch": 0, "step": 0, "finite": true}\n{"epoch": 0, "step": 1, "fin')
    entries, extra = artifacts.run_names(tmp_path, artifacts.read_summary(tmp_path))
    assert entries == [] and extra == ["cut-run"]
    files = artifacts.read_run(run_dir)
    assert len(files.records) == 1  # the cut last line is ignored
    entry = artifacts.entry_from_files("cut-run", files)
    assert entry["status"] == "interrupted" and entry["loss"] == "ratio" and entry["first_nonfinite"] is None
