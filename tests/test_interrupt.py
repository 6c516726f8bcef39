"""Nothing lost: Ctrl-C, SIGTERM and crashes keep every completed batch; writes are atomic; runs never mix.

The SIGINT and SIGTERM tests start real ``stablenca`` processes and interrupt them mid-run;
SIGTERM (how torchrun, SLURM and Kubernetes stop a job) is handled like Ctrl-C, exit 143.
"""

from __future__ import annotations

import importlib
import importlib.util
import json
import os
import re
import select
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

from stablenca.cli import main
from stablenca.errors import EXIT_INTERRUPTED, EXIT_TERMINATED, EXIT_USAGE, OutputError
from stablenca.records import atomic_write_json, deferred_interrupts, read_jsonl
from stablenca.training.trainer import Hook, TrainConfig, Trainer

CLI = [sys.executable, "-m", "stablenca.cli"]
INTERRUPTED_LINE = "stablenca: interrupted; what was recorded is kept"
TERMINATED_LINE = "stablenca: terminated (SIGTERM); what was recorded is kept"
REPO = Path(__file__).resolve().parents[1]

def _lines(path: Path) -> int:
    try:
        return path.read_bytes().count(b"\n")
    except FileNotFoundError:
        return 0


def _talent_dir(root: Path, n_train: int) -> Path:
    """A TALENT directory with ``n_train`` training rows of 2 classes."""
    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for split, n in (("train", n_train), ("val", 8), ("test", 8)):
        np.save(root / f"N_{split}.npy", rng.normal(size=(n, 3)))
        np.save(root / f"y_{split}.npy", np.arange(n) % 2)
    (root / "info.json").write_text(json.dumps({"task_type": "multiclass"}))
    return root


def _interrupt_mid_run(root: Path, *, report: bool, sig: int = signal.SIGINT) -> dict:
    """Start ``stablenca diagnose`` (ModernNCA, a long run) and send ``sig`` once batches are recorded.

    ``report`` builds the report (and its figures) after the interrupt, which takes a while.
    """
    data = _talent_dir(root / "data", 200)
    out = root / "diag"
    argv = [*CLI, "diagnose", "--out", str(out), "--data", str(data), "--model", "modernnca", "--loss", "modernnca",
            "--batch-size", "8", "--epochs", "5000", "--patience", "5000", *([] if report else ["--no-report"])]
    records = out / "modernnca-modernnca-float32" / "records.jsonl"
    with open(root / "stdout", "w+") as stdout, open(root / "stderr", "w+") as stderr:
        proc = subprocess.Popen(argv, cwd=root, stdout=stdout, stderr=stderr)
        try:
            deadline = time.monotonic() + 240
            while _lines(records) < 4:  # wait until some batches are recorded; the run goes on for long
                if proc.poll() is not None:
                    pytest.fail(f"diagnose ended before it was interrupted: {Path(stderr.name).read_text()[-2000:]}")
                if time.monotonic() > deadline:
                    pytest.fail("diagnose did not start training within 240 s")
                time.sleep(0.05)
            proc.send_signal(sig)
            proc.wait(timeout=240)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        stdout.seek(0)
        stderr.seek(0)
        return {"out": out, "rc": proc.returncode, "stdout": stdout.read(), "stderr": stderr.read(), "sig": sig}


@pytest.fixture(scope="module")
def sigint_run(tmp_path_factory):
    return _interrupt_mid_run(tmp_path_factory.mktemp("sigint"), report=False)


def test_sigint_mid_diagnose_keeps_every_recorded_batch(sigint_run):
    _check_interrupted_diagnose(sigint_run)


def test_sigterm_mid_diagnose_is_handled_like_ctrl_c_with_exit_143(tmp_path):
    runs = _interrupt_mid_run(tmp_path, report=True, sig=signal.SIGTERM)
    _check_interrupted_diagnose(runs)
    summary = json.loads((runs["out"] / "summary.json").read_text())
    assert summary["signal"] == "SIGTERM"
    if importlib.util.find_spec("stablenca.report") is not None:  # and the report is written
        assert (runs["out"] / "report.md").stat().st_size > 0


@pytest.mark.slow
def test_sigint_mid_diagnose_builds_the_report_from_what_was_recorded(tmp_path):
    runs = _interrupt_mid_run(tmp_path, report=True)
    _check_interrupted_diagnose(runs)
    if importlib.util.find_spec("stablenca.report") is not None:
        assert (runs["out"] / "report.md").stat().st_size > 0


def _check_interrupted_diagnose(runs: dict) -> None:
    rc, stdout, stderr, out = runs["rc"], runs["stdout"], runs["stderr"], runs["out"]
    terminated = runs["sig"] == signal.SIGTERM
    assert rc == (EXIT_TERMINATED if terminated else EXIT_INTERRUPTED), stderr
    last_line = TERMINATED_LINE if terminated else INTERRUPTED_LINE
    assert "Traceback" not in stderr and stderr.strip().splitlines()[-1] == last_line, stderr
    summary = json.loads((out / "summary.json").read_text())
    assert summary["interrupted"] is True
    (run,) = summary["runs"]
    assert run["status"] == "interrupted" and run["run"] == "modernnca-modernnca-float32"
    run_dir = out / run["run"]
    lines = (run_dir / "records.jsonl").read_text().splitlines()
    records = [json.loads(line) for line in lines]  # every line parses: no cut line
    assert [r["step"] for r in records] == list(range(len(records)))
    assert len(records) == run["steps_run"] >= 4  # every completed batch, and only those
    assert all(r["applied"] for r in records)
    epochs = [json.loads(line) for line in (run_dir / "epochs.jsonl").read_text().splitlines()]
    assert [e["epoch"] for e in epochs] == list(range(len(epochs)))
    result = json.loads((run_dir / "result.json").read_text())
    assert result["status"] == "interrupted" and result["steps_run"] == len(records)
    assert not list(out.rglob(".*.tmp"))  # no temporary file left behind
    assert "modernnca-modernnca-float32: interrupted" in stdout
    if (out / "report.md").exists():  # the report (when its module exists) is built from what was recorded
        assert (out / "report.md").stat().st_size > 0


# --------------------------------------------------------------------------- the trainer's paths, in-process


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    """A TALENT directory: 24 training rows of 2 classes (6 batches of 4)."""
    root = _talent_dir(tmp_path_factory.mktemp("small"), 24)
    from stablenca.training.trainer import load_data

    config = TrainConfig(model="seed", loss="nca_logspace", batch_size=4, epochs=3, data=str(root))
    return root, config, load_data(config.resolved())


class _SignalAt(Hook):
    """Sends itself SIGINT (``times`` times) inside step ``step``, as Ctrl-C would."""

    def __init__(self, step: int, times: int = 1) -> None:
        self.step, self.times = step, times

    def after_backward(self, trainer, ctx) -> None:
        if ctx.step == self.step:
            for _ in range(self.times):
                os.kill(os.getpid(), signal.SIGINT)
                time.sleep(0.01)  # let the handler run


def test_ctrl_c_lands_between_steps(small):
    _, config, data = small
    result = Trainer(config, data=data, hooks=[_SignalAt(step=3)]).fit()
    assert result.status == "interrupted"
    assert result.steps_run == 4  # the step Ctrl-C arrived in was finished, then the run stopped
    assert result.test  # and evaluated


def test_a_second_ctrl_c_stops_the_step_at_once(small):
    _, config, data = small
    result = Trainer(config, data=data, hooks=[_SignalAt(step=3, times=2)]).fit()
    assert result.status == "interrupted" and result.steps_run == 3


def test_sigint_mid_train_cli_prints_an_interrupted_run(small, monkeypatch, capsys):
    root, _, _ = small
    train_module = importlib.import_module("stablenca.training.trainer")  # the module (stablenca.training.trainer may be shadowed)
    run_step = train_module.Trainer.run_step

    def signalled(self, ctx):
        if ctx.step == 5:
            os.kill(os.getpid(), signal.SIGINT)  # Ctrl-C in the middle of step 5
        return run_step(self, ctx)

    monkeypatch.setattr(train_module.Trainer, "run_step", signalled)
    rc = main(["train", "--data", str(root), "--model", "seed", "--loss", "nca_logspace", "--batch-size", "4",
               "--epochs", "50", "--json"])
    captured = capsys.readouterr()
    assert rc == EXIT_INTERRUPTED and captured.err.strip() == INTERRUPTED_LINE
    result = json.loads(captured.out)
    assert result["status"] == "interrupted" and result["steps_run"] == 6
    assert all(np.isfinite(v) for v in result["test"].values())


def test_ctrl_c_during_evaluation_ends_cleanly(small, monkeypatch):
    _, config, data = small
    trainer = Trainer(config, data=data)

    def interrupted(split):
        raise KeyboardInterrupt

    monkeypatch.setattr(trainer, "evaluate", interrupted)
    result = trainer.fit()  # interrupted in the epoch-end evaluation, and again in the final one
    assert result.status == "interrupted" and result.steps_run == 6
    assert result.val == {} and result.test == {}


@pytest.mark.parametrize("command", ["train", "diagnose"])
def test_ctrl_c_during_data_loading_ends_cleanly(command, tmp_path, monkeypatch, capsys):
    train_module = importlib.import_module("stablenca.training.trainer")  # the module (stablenca.training.trainer may be shadowed)

    def interrupted(config):
        raise KeyboardInterrupt

    monkeypatch.setattr(train_module, "load_data", interrupted)
    out = ["--out", str(tmp_path / "out")] if command == "diagnose" else []
    assert main([command, "--epochs", "1", *out]) == EXIT_INTERRUPTED
    assert capsys.readouterr().err.strip() == INTERRUPTED_LINE
    assert not (tmp_path / "out").exists()  # nothing was started, so nothing half-written


def test_a_crash_mid_diagnose_keeps_the_records_and_marks_the_summary(small, tmp_path, capsys):
    root, _, _ = small
    loss = tmp_path / "crashing_loss.py"
    loss.write_text(textwrap.dedent("""
        from stablenca.losses import nca_logspace
        calls = 0

        def crashes_at_step_3(distances, labels, candidate_labels, self_mask):
            global calls
            calls += 1
            if calls == 4:
                raise ValueError("the user's loss broke")
            return nca_logspace(distances, labels, candidate_labels, self_mask)
    """))
    out = tmp_path / "out"
    rc = main(["diagnose", "--out", str(out), "--data", str(root), "--model", "seed", "--batch-size", "4",
               "--loss", f"{loss}:crashes_at_step_3", "--epochs", "3", "--no-report"])
    err = capsys.readouterr().err
    assert rc == EXIT_USAGE and len(err.strip().splitlines()) == 1, err
    assert "raised ValueError: the user's loss broke" in err and "fix:" in err
    summary = json.loads((out / "summary.json").read_text())
    assert summary["interrupted"] is True and "the user's loss broke" in summary["error"]
    (run,) = summary["runs"]
    assert run["status"] == "interrupted" and run["steps_run"] == 3 and "ValueError" in run["error"]
    records = [json.loads(line) for line in (out / run["run"] / "records.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [0, 1, 2]
    assert not list(out.rglob(".*.tmp"))


# --------------------------------------------------------------------------- atomic writes, no mixing


def test_an_interrupted_atomic_write_keeps_the_old_file(tmp_path, monkeypatch):
    path = tmp_path / "summary.json"
    atomic_write_json(path, {"runs": ["old"]})

    def interrupted(src, dst):
        raise KeyboardInterrupt

    monkeypatch.setattr(os, "replace", interrupted)
    with pytest.raises(KeyboardInterrupt):
        atomic_write_json(path, {"runs": ["new"]})
    assert json.loads(path.read_text()) == {"runs": ["old"]}
    assert [p.name for p in tmp_path.iterdir()] == ["summary.json"]


def test_a_failed_atomic_write_is_an_output_error(tmp_path, monkeypatch):
    def disk_full(fd):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "fsync", disk_full)
    with pytest.raises(OutputError, match="No space left on device"):
        atomic_write_json(tmp_path / "summary.json", {"runs": []})
    assert list(tmp_path.iterdir()) == []


def test_deferred_interrupts_raise_at_the_end_of_the_block():
    done = []
    with pytest.raises(KeyboardInterrupt):
        with deferred_interrupts():
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(0.01)
            done.append("the block finished")
    assert done == ["the block finished"]
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


#: Modules that write run files; each write must be atomic (JSONL streams are the documented exception).
WRITERS = ["runtime/diagnose.py", "training/trainer.py", "records.py", "artifacts.py", "runtime/sentinel.py",
           "runtime/recorder.py", "runtime/watcher.py", "commands/train.py", "commands/diagnose.py",
           "commands/replay.py"]


@pytest.mark.parametrize("module", WRITERS)
def test_writers_have_no_plain_writes(module):
    source = (REPO / "stablenca" / module).read_text()
    # os.fdopen(fd, "wb") is the atomic writer's own temporary file.
    plain = re.compile(r"""(?<!fd)open\([^)]*["'][rab+]*[wx][^"']*["']|\.write_text\(|\.write_bytes\("""
                       r"""|np\.save\(|torch\.save\((?!capsule, buffer)""")
    offenders = [line.strip() for line in source.splitlines() if plain.search(line)]
    assert offenders == [], f"plain (non-atomic) writes in stablenca/{module}: {offenders}"


def test_rerun_refuses_to_mix_runs_and_force_replaces_them(small, tmp_path, capsys):
    root, _, _ = small
    out = tmp_path / "out"
    common = ["diagnose", "--out", str(out), "--data", str(root), "--epochs", "1", "--batch-size", "4",
              "--no-report"]
    assert main([*common, "--model", "seed", "--loss", "nca_logspace"]) == 0
    old_summary = (out / "summary.json").read_bytes()
    capsys.readouterr()

    assert main([*common, "--model", "seed", "--loss", "difference"]) == EXIT_USAGE
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "already holds a stablenca run" in err and "--force" in err
    assert (out / "summary.json").read_bytes() == old_summary  # refused: nothing touched
    assert not (out / "seed-difference-float32").exists()

    (out / "check.json").write_text("{}")  # as a run with the report writes it
    assert main([*common, "--model", "seed", "--loss", "difference", "--force"]) == 0
    assert not (out / "check.json").exists()
    summary = json.loads((out / "summary.json").read_text())
    assert [r["run"] for r in summary["runs"]] == ["seed-difference-float32"]
    assert not any((out / "seed-nca_logspace-float32").iterdir())  # the old run set was cleared first
    assert [r["step"] for r in read_jsonl(out / "seed-difference-float32" / "records.jsonl")] == list(range(6))
