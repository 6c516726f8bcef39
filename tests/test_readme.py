"""The README's Python code blocks are executed, so they stay true."""

import re
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[1] / "README.md"
BLOCKS = re.findall(r"```python\n(.*?)```", README.read_text(encoding="utf-8"), flags=re.S)


def test_readme_has_python_examples():
    assert len(BLOCKS) >= 2


@pytest.mark.parametrize("index", range(len(BLOCKS)))
def test_readme_block_runs(index, capsys):
    namespace: dict = {}
    exec(compile(BLOCKS[index], f"README.md[python block {index}]", "exec"), namespace)
    printed = capsys.readouterr().out
    assert printed.strip(), "every README example prints what it shows"
    if "watch" in namespace:
        assert namespace["watch"].failed_at == {"epoch": 0, "step": 2}
        assert namespace["watch"].finding is not None


def test_readme_commands_are_the_ci_commands():
    """.ci/run installs what the README's test command installs and runs its pytest command."""
    text = README.read_text(encoding="utf-8")
    ci = (README.parent / ".ci" / "run").read_text()
    (test_command,) = [line for line in re.findall(r"```bash\n(.*?)```", text, flags=re.S)
                       if "pytest" in line]
    installs, run = test_command.strip().rsplit(" && ", 1)
    assert run == "python -m pytest -q" and '"$venv/bin/python" -m pytest -q' in ci
    for install in installs.split(" && "):  # pip install torch==2.13.0, pip install -e ".[test]"
        assert install.startswith("pip install ")
        assert f'"$venv/bin/python" -m {install}' in ci, install
    assert "python3 -m venv" in ci  # a fresh virtual environment, not the machine's packages
    assert "stablenca diagnose" in text
