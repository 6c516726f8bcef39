"""diagnose with several runs at once (worker processes): the same runs, in plan order; Ctrl-C and crashes."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from stablenca.errors import EXIT_INTERRUPTED, EXIT_USAGE
from stablenca.check import run_check
from stablenca.report import build_report
from stablenca.runtime.diagnose import DEFAULT_RUNS, _jobs_and_threads, diagnose, plan_runs, start_order
from stablenca.training.trainer import TrainConfig

CLI = [sys.executable, "-m", "stablenca.cli"]
TIMING = {"train_seconds"}


def _runs(summary: dict) -> list[dict]:
    return [{k: v for k, v in run.items() if k not in TIMING} for run in summary["runs"]]


def test_parallel_runs_equal_one_after_the_other(tmp_path):
    # One torch thread per run either way: a run's numbers depend on its thread count only. The
    # in-process (serial) runs really use one thread (with two, reductions split differently and
    # the trajectories differ; CI's default is one thread per core).
    options = dict(models=["seed", "modernnca"], loss_names=["ratio", "modernnca"],
                   base=TrainConfig(epochs=3), report=False)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        serial = diagnose(out=tmp_path / "serial", jobs=1, **options)
        parallel = diagnose(out=tmp_path / "parallel", jobs=2, **options)
    finally:
        torch.set_num_threads(threads)
    assert parallel["machine"]["jobs"] == 2 and serial["machine"]["jobs"] == 1
    # the numbers depend on the CPU's kernels: the record names them
    assert parallel["machine"]["cpu_capability"] == torch.backends.cpu.get_cpu_capability()
    assert [r["run"] for r in parallel["runs"]] == [r["run"] for r in serial["runs"]]  # plan order
    assert _runs(parallel) == _runs(serial)
    assert any(r["diverged"] for r in parallel["runs"])  # the capsule path ran in a worker too
    for run in serial["runs"]:
        for name in ("records.jsonl", "epochs.jsonl", "result.json"):
            a = (tmp_path / "serial" / run["run"] / name).read_text()
            b = (tmp_path / "parallel" / run["run"] / name).read_text()
            if name == "result.json":
                a, b = ({k: v for k, v in json.loads(t).items() if k not in TIMING} for t in (a, b))
            assert a == b, (run["run"], name)


def test_jobs_share_the_threads():
    threads = torch.get_num_threads()
    assert _jobs_and_threads(1, 6) == (1, threads)
    assert _jobs_and_threads(8, 2)[0] == 2  # never more jobs than runs
    jobs, per_run = _jobs_and_threads(2, 6)
    assert jobs == 2 and per_run == max(1, threads // 2)


def test_the_longest_runs_start_first():
    configs = [TrainConfig(model=model, loss=loss) for model, loss in plan_runs(None, None)]
    order = [DEFAULT_RUNS[index] for index in start_order(configs)]
    # ModernNCA before SeedNCA; within it the runs through autograd (a costlier step) before the fused
    # ones; then the stable formulations; plan order among equals.
    assert order == [("modernnca", "ratio"), ("modernnca", "ratio_eps"), ("modernnca", "difference"),
                     ("modernnca", "nca_logspace"), ("modernnca", "modernnca"), ("seed", "ratio")]
    for loss in ("modernnca", "nca_logspace"):  # both have a fused objective
        fused, eager = (TrainConfig(model="modernnca", loss=loss, kernel=kernel) for kernel in ("fused", "eager"))
        assert start_order([fused, eager]) == [1, 0]
    # A stable SeedNCA run still waits for an unstable ModernNCA run (the step's cost ranks first).
    seed_stable = TrainConfig(model="seed", loss="nca_logspace")
    assert start_order([seed_stable, configs[1]]) == [1, 0]
    # Of two runs through autograd, the stable one first.
    stable, unstable = (TrainConfig(model="modernnca", loss=loss, kernel="eager") for loss in ("nca_logspace", "ratio"))
    assert start_order([unstable, stable]) == [1, 0]


def test_the_check_is_the_same_on_one_thread(monkeypatch):
    # diagnose computes check.json in a one-thread worker; the parent has torch's default threads.
    threads = torch.get_num_threads()
    documents = []
    try:
        for count in (max(2, threads), 1):
            torch.set_num_threads(count)
            document = run_check(["ratio", "nca_logspace"], ["float32", "float64"], batches=1).to_dict()
            document.pop("seconds")
            documents.append(document)
    finally:
        torch.set_num_threads(threads)
    assert documents[0] == documents[1]


def test_figures_drawn_by_the_workers_are_the_report_s_own(tmp_path, monkeypatch):
    # Each worker draws its run's figures and the check's; the report of the same directory, drawn
    # afresh in this process, must give the same bytes (and the same report).
    import stablenca.runtime.diagnose as module

    handed_over = {}

    def spying_build_report(out, drawn=None):
        handed_over.update(drawn or {})
        return build_report(out, drawn=drawn)

    monkeypatch.setattr(module, "build_report", spying_build_report)
    out = tmp_path / "diag"
    diagnose(out=out, models=["seed", "modernnca"], loss_names=["ratio", "modernnca"],
             base=TrainConfig(epochs=3), jobs=2)
    assert {"seed-ratio-float32-chain", "modernnca-modernnca-float32-timeline", "error-vs-scale"} <= set(handed_over)
    assert all(isinstance(png, bytes) for png in handed_over.values())
    first = {p.name: p.read_bytes() for p in (out / "figures").iterdir()}
    reports = [(out / name).read_text(encoding="utf-8") for name in ("report.md", "report.zh.md")]
    assert "seed-ratio-float32-chain.png" in first and "error-vs-scale.png" in first
    for path in (out / "figures").iterdir():
        path.unlink()
    build_report(out)
    assert {p.name: p.read_bytes() for p in (out / "figures").iterdir()} == first
    assert [(out / name).read_text(encoding="utf-8") for name in ("report.md", "report.zh.md")] == reports


def _freeze_count_in_a_worker() -> int:
    import gc
    import multiprocessing

    from stablenca.runtime.diagnose import _start_forked

    receive, send = multiprocessing.Pipe(duplex=False)
    process = multiprocessing.get_context("fork").Process(target=lambda: send.send(gc.get_freeze_count()))
    _start_forked(process)
    count = receive.recv()
    process.join()
    return count


def test_workers_start_with_the_heap_frozen_and_this_process_does_not_stay_frozen():
    import gc

    assert gc.get_freeze_count() == 0
    assert _freeze_count_in_a_worker() > 0  # the worker's collector skips what it inherited
    assert gc.get_freeze_count() == 0
    gc.freeze()  # a process that froze its heap itself keeps it frozen
    try:
        assert _freeze_count_in_a_worker() > 0
        assert gc.get_freeze_count() > 0
    finally:
        gc.unfreeze()


def test_ctrl_c_before_the_runs_stops_the_check_s_worker(tmp_path, monkeypatch):
    import multiprocessing

    import stablenca.training.trainer as train_module

    def interrupted(config):
        raise KeyboardInterrupt

    monkeypatch.setattr(train_module, "load_data", interrupted)
    with pytest.raises(KeyboardInterrupt):
        diagnose(out=tmp_path / "diag", jobs=2)  # the check's worker started before the data were loaded
    assert multiprocessing.active_children() == []
    assert not (tmp_path / "diag").exists()


def test_a_crash_in_a_worker_is_the_usual_one_line_error(tmp_path):
    module = tmp_path / "badloss.py"
    module.write_text("def broken(distances, labels, candidate_labels, self_mask):\n"
                      "    raise ValueError('no loss here')\n")
    out = tmp_path / "diag"
    proc = subprocess.run([*CLI, "diagnose", "--out", str(out), "--jobs", "2", "--epochs", "1", "--no-report",
                           "--model", "modernnca", "--loss", "badloss:broken", "modernnca"],
                          cwd=tmp_path, capture_output=True, text=True, timeout=600,
                          env={**__import__("os").environ, "PYTHONPATH": str(tmp_path)})
    assert proc.returncode == EXIT_USAGE, proc.stderr
    assert "Traceback" not in proc.stderr
    assert "no loss here" in proc.stderr.strip().splitlines()[-1]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["interrupted"] is True and "no loss here" in summary["error"]
    # the crash is in the first run: it is recorded, and the other worker is stopped
    assert [r["run"] for r in summary["runs"]] == ["modernnca-badloss_broken-float32"]


def _talent_dir(root: Path) -> Path:
    import numpy as np

    root.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for split, n in (("train", 200), ("val", 8), ("test", 8)):
        np.save(root / f"N_{split}.npy", rng.normal(size=(n, 3)))
        np.save(root / f"y_{split}.npy", np.arange(n) % 2)
    (root / "info.json").write_text(json.dumps({"task_type": "multiclass"}))
    return root


def test_ctrl_c_reaches_every_worker_and_keeps_their_records(tmp_path):
    data = _talent_dir(tmp_path / "data")
    out = tmp_path / "diag"
    names = ["modernnca-modernnca-float32", "modernnca-nca_logspace-float32"]
    argv = [*CLI, "diagnose", "--out", str(out), "--data", str(data), "--jobs", "2", "--no-report",
            "--model", "modernnca", "--loss", "modernnca", "nca_logspace", "--batch-size", "8",
            "--epochs", "5000", "--patience", "5000"]
    proc = subprocess.Popen(argv, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 240
        records = [out / name / "records.jsonl" for name in names]
        while not all(p.exists() and p.read_bytes().count(b"\n") >= 4 for p in records):
            assert proc.poll() is None, proc.communicate()[1][-2000:]
            assert time.monotonic() < deadline, "the workers did not start training within 240 s"
            time.sleep(0.05)
        proc.send_signal(signal.SIGINT)  # the parent only: it forwards Ctrl-C to its workers
        _, stderr = proc.communicate(timeout=240)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == EXIT_INTERRUPTED, stderr
    assert "Traceback" not in stderr
    summary = json.loads((out / "summary.json").read_text())
    assert summary["interrupted"] is True
    assert [r["run"] for r in summary["runs"]] == names
    for run in summary["runs"]:
        assert run["status"] == "interrupted"
        lines = (out / run["run"] / "records.jsonl").read_text().splitlines()
        steps = [json.loads(line)["step"] for line in lines]
        assert steps == list(range(len(steps))) and len(steps) == run["steps_run"] >= 4
