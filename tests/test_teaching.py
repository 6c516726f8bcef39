"""The teaching material runs: the exercises' doctests (every number in them) and the tutorial notebook."""

import doctest
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("name", ["exercises.md", "exercises.zh.md", "summary.md"])
def test_every_number_in_the_exercises_is_printed_by_its_code(name, monkeypatch):
    monkeypatch.chdir(ROOT)  # the examples read the committed runs by relative path
    result = doctest.testfile(str(ROOT / "docs" / name), module_relative=False,
                              optionflags=doctest.ELLIPSIS)
    assert result.attempted > 0
    assert result.failed == 0


def test_english_and_chinese_exercises_run_the_same_code():
    def examples(name):
        parser = doctest.DocTestParser()
        return [(e.source.split("#")[0].strip(), e.want) for e in
                parser.get_examples((ROOT / "docs" / name).read_text(encoding="utf-8"))]

    assert examples("exercises.md") == examples("exercises.zh.md")


def test_tutorial_notebook_executes_without_errors():
    import nbformat
    from nbclient import NotebookClient

    notebook = nbformat.read(ROOT / "docs" / "tutorial.ipynb", as_version=4)
    NotebookClient(notebook, timeout=300, kernel_name="python3",
                   resources={"metadata": {"path": str(ROOT / "docs")}}).execute()
    outputs = [o for cell in notebook.cells if cell.cell_type == "code" for o in cell.outputs]
    assert not [o for o in outputs if o.output_type == "error"]
    text = "".join(o.get("text", "") for o in outputs)
    assert "overflow at aten.div.Tensor" in text  # the trace names the backward division
    assert "DivBackward0 (backward): confirmed" in text  # and the counterfactual replay confirms it
    assert any("image/png" in o.get("data", {}) for o in outputs)  # the failure-domain figure was drawn
