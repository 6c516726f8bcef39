"""The README's Python code blocks are executed, so they stay true."""

import gc
import os
import re
import socket
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[1] / "README.md"
BLOCKS = re.findall(r"```python\n(.*?)```", README.read_text(encoding="utf-8"), flags=re.S)


def test_readme_has_python_examples():
    assert len(BLOCKS) >= 2


@pytest.mark.parametrize("index", range(len(BLOCKS)))
def test_readme_block_runs(index, capsys, monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)  # examples write runs/...: keep them out of the checkout
    environ = dict(os.environ)  # the DDP example sets torchrun's variables when they are missing
    if "MASTER_PORT" in BLOCKS[index]:  # a free port, not the example's fixed one: runs may overlap
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            os.environ["MASTER_PORT"] = str(sock.getsockname()[1])
    namespace: dict = {}
    try:
        exec(compile(BLOCKS[index], f"README.md[python block {index}]", "exec"), namespace)
    finally:
        os.environ.clear()
        os.environ.update(environ)
    try:
        _check_block(BLOCKS[index], namespace, capsys.readouterr().out, tmp_path)
    finally:
        namespace.clear()
        gc.collect()  # the examples' garbage (DDP's reducer sits in a cycle) is finalised here, by its creator


def _check_block(block, namespace, printed, tmp_path):
    assert printed.strip(), "every README example prints what it shows"
    if "print(watch.failed_at)" in block:  # "Use it on your own loop"
        assert namespace["watch"].failed_at == {"epoch": 0, "step": 2}
        assert namespace["watch"].finding is not None
    if "scaler=scaler" in block:  # mixed precision: the scaler's skips do not stop the loop
        watch = namespace["watch"]
        assert watch.records[0]["status"] == "skipped" and not watch.failed and len(watch.records) == 10
        assert watch.records[0]["finding"]["float32"]["finite"] is True
    if "torch.compile(" in block:
        assert namespace["watch"].failed_at == {"epoch": None, "step": 2}
    if "StableNCACallback(" in block:
        assert namespace["callback"].watch.failed_at == {"epoch": 0, "step": 2}
        assert (tmp_path / "runs" / "lightning" / "summary.json").exists()
    if "dist.init_process_group" in block:  # a world of one: rank 0 fails at step 3 and names itself
        assert namespace["watch"].failed_at == {"epoch": None, "step": 3}
        assert namespace["watch"].first_failing_rank == 0
        assert (tmp_path / "runs" / "ddp" / "watch-rank0" / "records.jsonl").exists()


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
