"""``stablenca diagnose``: train with the recorder and the sentinel, then report.

By default it runs the student's setting (SeedNCA with the ratio loss) and ModernNCA
with every formulation, on the embedded Abalone, with the same seed, and writes::

    OUT/summary.json, OUT/<run>/{config.json, records.jsonl, epochs.jsonl, result.json}
    OUT/<run>/{capsule.pt, finding.json}   for runs that failed
    OUT/report.md, OUT/report.zh.md, OUT/figures/*.png

(the schema: :mod:`stablenca.artifacts`).

``summary.json`` is rewritten atomically after every run, so an interrupted
diagnose still leaves a consistent summary (``"interrupted": true``).
"""

from __future__ import annotations

import dataclasses
import json
import multiprocessing
import multiprocessing.connection
import os
import pickle
import platform
import re
import signal
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from .. import artifacts
from ..artifacts import prepare_out_dir, write_run_json, write_summary
from ..check import run_check
from ..errors import OutputError
from ..machine import cpu
from ..records import TERMINATED, deferred_interrupts, dumps
from .recorder import Recorder
from .forking import frozen_heap
from .sentinel import Sentinel
from ..report import build_report
from ..report.figures import check_figure_job, load_fonts, render_here, run_figure_jobs
from ..report.runs import load_run
from ..training import trainer as train
from ..training.trainer import TrainConfig, Trainer, check_data_fits

DEFAULT_RUNS: tuple[tuple[str, str], ...] = (
    ("seed", "ratio"),  # the student's setting, as in the story
    ("modernnca", "ratio"),
    ("modernnca", "ratio_eps"),
    ("modernnca", "difference"),
    ("modernnca", "nca_logspace"),
    ("modernnca", "modernnca"),
)


def run_name(model: str, loss: str, dtype: str) -> str:
    safe_loss = re.sub(r"[^A-Za-z0-9_]+", "_", loss).strip("_")
    return f"{model}-{safe_loss}-{dtype}"


def plan_runs(models: list[str] | None, loss_names: list[str] | None) -> list[tuple[str, str]]:
    """The (model, loss) pairs to run: the defaults, narrowed by --model and --loss."""
    if not models and not loss_names:
        return list(DEFAULT_RUNS)
    models = models or ["seed", "modernnca"]
    if loss_names:
        return [(model, loss) for model in models for loss in loss_names]
    return [pair for pair in DEFAULT_RUNS if pair[0] in models] or [(m, "ratio") for m in models]


def diagnose(
    *,
    out: str | Path = "runs/diagnose",
    models: list[str] | None = None,
    loss_names: list[str] | None = None,
    base: TrainConfig | None = None,
    mode: str = "sentinel",
    force: bool = False,
    report: bool = True,
    progress: bool = False,
    log=None,
    jobs: int | None = None,
) -> dict[str, Any]:
    """Run the planned runs into ``out`` and return the summary (also in ``out/summary.json``).

    ``jobs`` runs that many trainings at once in worker processes, with torch's threads
    shared out among them (``None``: one job per torch thread, at most one per run). A
    run's numbers depend on its thread count, not on how many runs share the machine: two
    jobs of one thread give the runs of ``OMP_NUM_THREADS=1`` with one job.
    """
    base = base or TrainConfig()
    plan = plan_runs(models, loss_names)
    configs = [dataclasses.replace(base, model=model, loss=loss) for model, loss in plan]
    for config in configs:
        config.resolved()  # reject bad combinations before anything is written
    jobs, threads = _jobs_and_threads(jobs, len(configs))
    # With workers, the check is computed (and its figure drawn) in one of them from the start, on the
    # core that is idle while this process imports what the runs need and loads the data.
    checking = (_Forked(_check_with_figure, sorted({config.loss for config in configs}), base.dtype)
                if report and jobs > 1 else None)
    try:
        return _diagnose(configs, base, out, mode, force, report, progress, log, jobs, threads, checking)
    finally:
        if checking is not None:
            checking.cancel()


def _diagnose(configs, base: TrainConfig, out, mode: str, force: bool, report: bool, progress: bool, log,
              jobs: int, threads: int, checking: _Forked | None) -> dict[str, Any]:
    # Bad data is reported before anything is written (or an earlier run set is cleared).
    data = train.load_data(configs[0].resolved())  # through the module: tests interrupt it there
    for config in configs:
        check_data_fits(config.resolved(), data)
    out = prepare_out_dir(out, force=force)
    summary = artifacts.new_summary(
        mode=mode, data=base.data or "abalone (embedded, scikit-lego)",
        task=configs[0].resolved().task, seed=base.seed, interrupted=False,
        machine={"python": platform.python_version(), "torch": str(torch.__version__),
                 "platform": platform.platform(), **cpu(), "threads": threads, "jobs": jobs},
        command=" ".join(["stablenca", *sys.argv[1:]]) if sys.argv and "stablenca" in sys.argv[0] else None,
    )
    write_summary(out, summary)
    started = time.perf_counter()
    crash: BaseException | None = None
    drawn: dict[str, bytes | str] = {}  # figures drawn by the workers, by name

    def record(entry: dict[str, Any]) -> bool:
        summary["runs"].append(entry)
        if entry["status"] == "interrupted":
            summary["interrupted"] = True
        write_summary(out, summary)
        if log is not None:
            log(summary_line(entry))
        return summary["interrupted"]

    try:
        if jobs > 1:
            _import_what_every_run_imports(report)
            _parallel_runs(configs, data, out, mode, jobs, threads, record, summary["runs"].append,
                           drawn if report else None)
        for config in configs if jobs == 1 else ():
            try:
                entry = _one_run(config, data, out, mode, progress)
            except BaseException as exc:  # Ctrl-C or a crash inside a run: keep what it recorded
                summary["runs"].append(_unfinished_entry(config, out, exc))
                raise
            if record(entry):
                break
    except KeyboardInterrupt:
        summary["interrupted"] = True
    except BaseException as exc:
        summary["interrupted"] = True
        summary["error"] = _one_line(exc)
        crash = exc
    with deferred_interrupts():  # a second Ctrl-C must not leave a summary that hides the first
        summary["seconds"] = round(time.perf_counter() - started, 2)
        if summary["interrupted"] and TERMINATED.is_set():
            summary["signal"] = "SIGTERM"  # preempted (torchrun, SLURM, Kubernetes), not Ctrl-C
        write_summary(out, summary)
    if report and crash is None and not summary["interrupted"]:
        if checking is not None:
            document, figure = checking.result()
            artifacts.write_check(out, document)
            drawn.update(figure)
        else:
            artifacts.write_check(out, _check_document(sorted({config.loss for config in configs}), base.dtype))
    if report:  # built from what was recorded, also after Ctrl-C or a crash
        try:
            _build_report(out, log, drawn)
        except Exception:
            if crash is None:
                raise
    if crash is not None:
        raise crash
    return summary


def _jobs_and_threads(jobs: int | None, n_runs: int) -> tuple[int, int]:
    """How many runs train at once, and torch threads per run."""
    threads = torch.get_num_threads()
    if jobs is None:
        jobs = threads if "fork" in multiprocessing.get_all_start_methods() else 1
    jobs = max(1, min(jobs, n_runs))
    return jobs, max(1, threads // jobs)


def _start_forked(process) -> None:
    """Start a forked ``process`` whose collector never walks what it inherits (:func:`.forking.frozen_heap`)."""
    with frozen_heap():
        process.start()


class _Forked:
    """``function(*args)`` in a forked process with one torch thread; :meth:`result` returns its value or raises its error."""

    def __init__(self, function: Callable[..., Any], *args: Any) -> None:
        context = multiprocessing.get_context("fork")
        self._receive, send = context.Pipe(duplex=False)
        self._process = context.Process(target=_call_forked, args=(send, function, args), daemon=True)
        _start_forked(self._process)
        send.close()

    def result(self) -> Any:
        try:
            value, payload, line = self._receive.recv()
        except EOFError:  # the worker died without a word (killed, out of memory)
            self._process.join()
            raise RuntimeError(f"a worker process exited with code {self._process.exitcode}") from None
        self._process.join()
        if line is not None:
            raise pickle.loads(payload) if payload is not None else RuntimeError(line)
        return value

    def cancel(self) -> None:
        """Stop the worker if it still runs (its result is no longer wanted)."""
        if self._process.is_alive():
            self._process.kill()
        self._process.join()
        self._receive.close()


def _become_worker(threads: int) -> None:
    """A forked worker's set-up: its own process group, so a terminal's Ctrl-C reaches the parent only
    (which forwards it once), and its torch threads."""
    os.setpgid(0, 0)
    torch.set_num_threads(threads)


def _call_forked(connection, function: Callable[..., Any], args: tuple) -> None:
    _become_worker(1)
    try:
        connection.send((function(*args), None, None))
    except BaseException as exc:
        connection.send((None, *_pickled_error(exc)))
    finally:
        connection.close()


def _pickled_error(exc: BaseException) -> tuple[bytes | None, str]:
    try:
        payload = pickle.dumps(exc)
    except Exception:
        payload = None
    return payload, _one_line(exc)


def _import_what_every_run_imports(report: bool) -> None:
    """Import here, once, what each forked run would otherwise import on its own (seconds per run)."""
    import sklearn.neighbors  # noqa: F401 - the kNN readout of the evaluations
    import torch._dynamo  # noqa: F401 - torch.optim.Optimizer.__init__ imports it on first use (~1 s)

    if report:  # each worker draws its run's figures
        load_fonts()


def start_order(configs: list[TrainConfig]) -> list[int]:
    """The runs' indices, the longest expected first (plan order among equals), so the short runs fill the end.

    A run lasts its step's cost times its steps. The model sets the step's cost by about two orders
    of magnitude (reports/benchmarks.md: the SeedNCA step ~2 ms, ModernNCA 55-240 ms), so it ranks
    first. Then the kernel: a step through autograd costs 2.5-3x a fused one
    (:func:`stablenca.models.fused.fused_objective`, as the Trainer picks it), and more once the student's
    float32 ``exp`` underflows: torch's exp takes slow paths on such numbers on some CPUs
    (``bench/underflow_cost.py``; the distances' backward no longer does, see
    :func:`stablenca.models.neighbours.euclidean_distances`). The steps come last: a stable formulation
    (:func:`stablenca.losses.is_stable`) trains until early stopping, but so do the student's ``ratio_eps``
    and ``difference``, which are not stable formulations yet stay finite in these runs; only a run that
    does go non-finite ends early, which is not known before it runs. Measured on an Intel Xeon (round 7,
    ``bench/bench_diagnose.py``): ``ratio_eps`` and ``difference`` through autograd trained 16.7 and
    17.2 s, the fused ``nca_logspace`` and ``modernnca`` 9.4 and 6.4 s, so the previous order (stable
    first) started the two longest runs last.
    """
    from ..losses import REGISTRY, is_stable
    from ..models.fused import fused_objective

    def cost(config: TrainConfig) -> tuple[int, int, int]:  # larger: longer
        config = config.resolved()
        model = 1 if config.model == "modernnca" else 0
        formulation = REGISTRY.get(config.loss)  # None for a user loss: never fused
        fused = formulation is not None and fused_objective(formulation.fn, config.kernel) is not None
        return model, 0 if fused else 1, int(is_stable(config.loss))

    return sorted(range(len(configs)), key=lambda index: tuple(-c for c in cost(configs[index])))


def _worker(connection, config, data, out: Path, mode: str, threads: int, draw: bool) -> None:
    """One run in a forked process; sends (entry, its figures, pickled error or None, error line)."""
    _become_worker(threads)
    try:
        entry = _one_run(config, data, out, mode, False)
    except BaseException as exc:
        connection.send((_unfinished_entry(config, out, exc), {}, *_pickled_error(exc)))
        connection.close()
        return
    figures: dict[str, bytes | str] = {}
    if draw and entry["status"] != "interrupted":
        try:
            figures = _run_figures(out, entry)
        except KeyboardInterrupt:  # the run is done: Ctrl-C only skips its figures (the report draws them)
            figures = {}
    connection.send((entry, figures, None, None))
    connection.close()


def _run_figures(out: Path, entry: dict[str, Any]) -> dict[str, bytes | str]:
    """The run's own figures, from its files and its summary entry as the report will read them back."""
    run = load_run(out / entry["run"], json.loads(dumps(entry)))
    return render_here(run_figure_jobs(run))


def _parallel_runs(configs, data, out: Path, mode: str, jobs: int, threads: int,
                   record: Callable[[dict], bool], record_unfinished: Callable[[dict], None],
                   drawn: dict[str, bytes | str] | None = None) -> None:
    """Train ``jobs`` runs at a time in forked processes, the longest expected first; record them in plan order.

    ``record`` returns True once the run set is interrupted: no further run starts (as one
    after the other). A crash in a run is recorded with ``record_unfinished`` and re-raised
    at once, after the runs that finished. Ctrl-C or SIGTERM in this process is forwarded once
    to the running workers as Ctrl-C; each stops between steps and returns its interrupted run,
    recorded before this re-raises. With ``drawn``, each worker draws its run's figures after
    training and they are added to ``drawn``.
    """
    context = multiprocessing.get_context("fork")
    waiting = [(index, configs[index]) for index in start_order(configs)]
    running: dict[Any, tuple[int, Any]] = {}  # connection -> (index, process)
    finished: dict[int, tuple[dict, BaseException | None]] = {}
    state = {"next": 0, "stop": False}

    def start(index: int, config) -> None:
        receive, send = context.Pipe(duplex=False)
        process = context.Process(target=_worker, args=(send, config, data, out, mode, threads, drawn is not None),
                                  daemon=True)
        _start_forked(process)
        send.close()
        running[receive] = (index, process)

    def collect_ready() -> None:
        for connection in multiprocessing.connection.wait(list(running)):
            index, process = running.pop(connection)
            try:
                entry, figures, payload, line = connection.recv()
            except EOFError:  # the worker died without a word (killed, out of memory)
                entry, figures, payload = _unfinished_entry(configs[index], out, RuntimeError()), {}, None
                process.join()
                line = f"RuntimeError: the worker of run {index} exited with code {process.exitcode}"
            process.join()
            error = None
            if line is not None:
                error = pickle.loads(payload) if payload is not None else RuntimeError(line)
            finished[index] = entry, error
            if drawn is not None:
                drawn.update(figures)

    def hand_over(*, every_finished: bool = False) -> None:
        """Record the finished runs in plan order: up to the first still missing, or (``every_finished``) all."""
        while finished and (every_finished or state["next"] in finished):
            index = min(finished)
            if index != state["next"] and not every_finished:
                break
            entry, error = finished.pop(index)
            state["next"] = index + 1
            if error is not None:
                record_unfinished(entry)
            else:
                state["stop"] = record(entry) or state["stop"]

    try:
        while running or (waiting and not state["stop"]):
            while waiting and not state["stop"] and len(running) < jobs:
                start(*waiting.pop(0))
            collect_ready()
            crashed = sorted(index for index, (_, error) in finished.items() if error is not None)
            if crashed:
                error = finished[crashed[0]][1]
                hand_over(every_finished=True)
                raise error
            hand_over()
    except KeyboardInterrupt:
        for _, process in running.values():
            if process.is_alive():
                os.kill(process.pid, signal.SIGINT)
        while running:
            collect_ready()
        hand_over(every_finished=True)
        raise
    finally:
        for _, process in running.values():  # a crash ended the loop: no orphan keeps training
            process.kill()
            process.join()


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def _unfinished_entry(config: TrainConfig, out: Path, exc: BaseException) -> dict[str, Any]:
    """The summary entry of a run that ended by Ctrl-C or a crash before it returned a result."""
    config = config.resolved()
    name = run_name(config.model, config.loss, config.dtype)
    records = artifacts.read_records(out / name)
    epochs = artifacts.read_epochs(out / name)
    entry: dict[str, Any] = {
        "run": name, "model": config.model, "loss": config.loss, "dtype": config.dtype, "task": config.task,
        "status": "interrupted", "diverged": False, "diverged_at": None, "epochs_run": len(epochs),
        "steps_run": len(records), "best_epoch": None, "first_nonfinite": None, "capsule": None,
        "test": {}, "val": {}, "train_seconds": None, "excluded_rows": None,
    }
    if not isinstance(exc, KeyboardInterrupt):
        entry["error"] = _one_line(exc)
    return entry


def _one_run(config: TrainConfig, data, out: Path, mode: str, progress: bool) -> dict[str, Any]:
    config = config.resolved()
    name = run_name(config.model, config.loss, config.dtype)
    run_dir = out / name
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OutputError(f"cannot create the run directory {run_dir}: {exc.strerror}",
                          fix="remove what is in the way, or choose another --out directory") from None
    write_run_json(run_dir, artifacts.CONFIG, config.to_dict())
    recorder = Recorder(run_dir)
    sentinel = Sentinel(mode=mode, run_dir=run_dir)
    try:
        trainer = Trainer(config, data=data, hooks=[sentinel, recorder], progress=progress)
        result = trainer.fit()
    finally:
        recorder.close()
    write_run_json(run_dir, artifacts.RESULT, result.to_dict())
    return {
        "run": name, "model": config.model, "loss": config.loss, "dtype": config.dtype, "task": config.task,
        "status": result.status, "diverged": result.diverged, "diverged_at": result.diverged_at,
        "epochs_run": result.epochs_run, "steps_run": result.steps_run, "best_epoch": result.best_epoch,
        "first_nonfinite": artifacts.first_nonfinite(
            result.diverged_at if result.diverged else None,
            sentinel.finding.to_dict() if sentinel.finding is not None else None),
        "capsule": str(Path(name) / artifacts.CAPSULE) if sentinel.capsule is not None else None,
        "test": result.test, "val": result.val, "train_seconds": result.train_seconds,
        "excluded_rows": result.excluded_rows,
    }


def summary_line(entry: dict[str, Any]) -> str:
    metrics = " ".join(f"{k}={v:.4f}" for k, v in entry["test"].items())
    if not entry["diverged"]:
        return f"{entry['run']}: {entry['status']} after {entry['epochs_run']} epochs; test {metrics}"
    first = entry["first_nonfinite"] or {}
    root = first.get("root_cause") or {}
    return (f"{entry['run']}: DIVERGED at epoch {first.get('epoch')} step {first.get('step')}; first bad op "
            f"{first.get('op')} ({first.get('phase')}); root cause {root.get('kind')} at {root.get('op')}: "
            f"{root.get('detail')}; test (before the failing step) {metrics}")


def _check_document(loss_names: list[str], dtype: str) -> dict[str, Any]:
    """A small ``stablenca check`` of the formulations that were run (figure 3 of the report)."""
    dtypes = sorted({dtype, "float32", "float64"})
    document = run_check(loss_names, dtypes, batches=1).to_dict()
    document["command"] = (f"stablenca check --loss {' '.join(loss_names)} --dtype {' '.join(dtypes)} "
                           "--batches 1 --json")
    return document


def _check_with_figure(loss_names: list[str], dtype: str) -> tuple[dict[str, Any], dict[str, bytes | str]]:
    """The check's document and its figure, drawn from the document as it will be read back from check.json.

    One torch thread computes the same check as several: its batches have at most 16 rows
    (:data:`stablenca.check.batches.ROWS`), so no reduction is large enough to be split
    among threads (tests/test_diagnose_parallel.py compares the two).
    """
    document = _check_document(loss_names, dtype)
    return document, render_here([check_figure_job(json.loads(dumps(document)))])


def _build_report(out: Path, log, drawn: dict[str, bytes | str] | None = None) -> None:
    paths = build_report(out, drawn=drawn)
    if log is not None and paths:
        log("report: " + ", ".join(str(p) for p in paths))
