"""Running the study: one job per row × seed, in processes when asked; statistics over the seeds."""

from __future__ import annotations

import concurrent.futures
import contextlib
import dataclasses
import multiprocessing
import json
import math
import os
import platform
import shlex
import sys
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from scipy.stats import t as student_t
from threadpoolctl import threadpool_limits


from ..data import load_abalone, prepare
from ..errors import ConfigError, OutputError
from ..machine import cpu
from ..records import atomic_write_json, atomic_write_text
from ..training.trainer import TrainConfig, Trainer
from .plan import (CONFIDENCE, DEFAULT_OUT, DEFAULT_SEEDS, FACTORS, METRICS, PUBLISHED, PUBLISHED_SOURCE,
                   RING_THRESHOLDS,
                   SKLEARN_NCA_COMPONENTS, SKLEARN_NCA_MAX_ITER, SPLIT_SEED, STUDENT_K, TUNED_K_GRID, Row, _check_task,
                   ablation_rows, main_rows)
from .render import render_markdown


# ----------------------------------------------------------------------------- statistics


def aggregate(values: Iterable[float | None]) -> dict[str, Any]:
    """Mean and std over seeds of the finite values; ``n`` used and ``missing`` skipped.

    The std is the population std (``ddof=0``, numpy's default, which TALENT's
    ``show_results`` uses), so one seed gives std 0.

    >>> aggregate([1.0, 2.0, 3.0, 4.0])
    {'mean': 2.5, 'std': 1.118033988749895, 'n': 4, 'missing': 0}
    >>> aggregate([float("nan")])
    {'mean': None, 'std': None, 'n': 0, 'missing': 1}
    """
    values = list(values)
    finite = [float(v) for v in values if v is not None and math.isfinite(v)]
    if not finite:
        return {"mean": None, "std": None, "n": 0, "missing": len(values)}
    array = np.asarray(finite, dtype=np.float64)
    return {"mean": float(array.mean()), "std": float(array.std()), "n": len(finite),
            "missing": len(values) - len(finite)}


def consecutive_deltas(means: Sequence[float | None]) -> list[float | None]:
    """``means[i] - means[i-1]`` (None for the first row or where a mean is missing).

    >>> consecutive_deltas([0.5, 0.6, None, 0.7])
    [None, 0.09999999999999998, None, None]
    """
    deltas: list[float | None] = [None]
    for previous, current in zip(means, means[1:]):
        deltas.append(None if previous is None or current is None else current - previous)
    return deltas


def paired_differences(previous: Mapping[int, float | None], current: Mapping[int, float | None]) -> dict[str, Any]:
    """Per-seed differences ``current - previous`` over the seeds both have; mean, std and standard error."""
    diffs = [current[s] - previous[s] for s in sorted(set(previous) & set(current))
             if previous[s] is not None and current[s] is not None
             and math.isfinite(previous[s]) and math.isfinite(current[s])]
    summary = aggregate(diffs)
    summary["se"] = None if summary["n"] < 2 else summary["std"] / math.sqrt(summary["n"] - 1)
    return summary


def paired_interval(base: Mapping[int, float | None], changed: Mapping[int, float | None],
                    confidence: float = CONFIDENCE) -> dict[str, Any]:
    """Mean per-seed difference ``changed - base`` with a Student-t confidence interval.

    The interval is ``mean ± t(1 - (1 - confidence)/2, n - 1) · s / sqrt(n)`` with ``s`` the
    sample std (ddof 1) of the paired differences: the seeds are the pairing unit.

    >>> out = paired_interval({0: 0.5, 1: 0.6, 2: 0.7}, {0: 0.6, 1: 0.6, 2: 0.9})
    >>> round(out["mean"], 4), out["n"], round(out["low"], 4), round(out["high"], 4)
    (0.1, 3, -0.1484, 0.3484)
    """
    summary = paired_differences(base, changed)
    summary["confidence"] = confidence
    summary["low"] = summary["high"] = None
    if summary["se"] is not None:
        half = float(student_t.ppf(0.5 + confidence / 2, summary["n"] - 1)) * summary["se"]
        summary["low"], summary["high"] = summary["mean"] - half, summary["mean"] + half
    return summary


def factor_table(rows: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """The :data:`FACTORS` whose two rows were both run, with their paired intervals per metric."""
    by_id = {entry["id"]: entry for entry in rows}
    table = []
    for factor_id, change, base_id, changed_id in FACTORS:
        if base_id not in by_id or changed_id not in by_id:
            continue
        base, changed = by_id[base_id], by_id[changed_id]
        intervals = {}
        for metric in METRICS[base["task"]]:
            intervals[metric] = paired_interval({r["seed"]: r["test"].get(metric) for r in base["per_seed"]},
                                                {r["seed"]: r["test"].get(metric) for r in changed["per_seed"]})
        table.append({"id": factor_id, "change": change, "base": base_id, "changed": changed_id,
                      "paired": intervals})
    return table


def summarise(row: Row, runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Aggregate one row's per-seed runs into its table entry."""
    metrics = METRICS[row.task]
    summary: dict[str, Any] = {m: aggregate(run["test"].get(m) for run in runs) for m in metrics}
    summary["runs"] = len(runs)
    if row.kind in ("train", "train_threshold"):
        summary["diverged"] = sum(bool(run.get("diverged")) for run in runs)
        summary["epochs_run"] = aggregate(run.get("epochs_run") for run in runs)
        epochs = [run["diverged_at"]["epoch"] for run in runs if run.get("diverged_at")]
        summary["diverged_at_epoch"] = ({"median": float(np.median(epochs)), "min": min(epochs), "max": max(epochs)}
                                        if epochs else None)
    summary["seconds"] = aggregate(run.get("seconds") for run in runs)
    if row.kind == "knn_tuned" and runs:
        summary["k"] = runs[0].get("k")
    if row.kind == "train_threshold":
        summary["regression"] = {m: aggregate(run.get("regression_test", {}).get(m) for run in runs)
                                 for m in METRICS["regression"]}
    return summary


# ----------------------------------------------------------------------------- one run

_DATA: dict[tuple[str, str], Any] = {}


def _data(task: str, features: str = "all"):
    """The prepared Abalone for ``task`` on the fixed split (cached per process).

    ``features="numerical"`` keeps only the numerical columns, as the student's code,
    which loads ``N_*.npy`` and never the categorical ``C_*.npy`` (the sex column).
    """
    if (task, features) not in _DATA:
        if features not in ("all", "numerical"):
            raise ConfigError(f"unknown feature set {features!r}", fix="use 'all' or 'numerical'")
        data = prepare(load_abalone(task=task, split_seed=SPLIT_SEED))
        if features == "numerical":
            data = dataclasses.replace(data, n_onehot=0, x={s: v[:, :data.n_num].copy() for s, v in data.x.items()},
                                       feature_names=data.feature_names[:data.n_num])
        _DATA[(task, features)] = data
    return _DATA[(task, features)]


@contextlib.contextmanager
def _single_thread():
    """One torch thread and one BLAS thread: the same numbers whatever ``jobs`` is."""

    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with threadpool_limits(limits=1):
            yield
    finally:
        torch.set_num_threads(previous)


def _classification(truth: np.ndarray, labels: np.ndarray, n_classes: int) -> dict[str, float]:
    from sklearn.metrics import f1_score  # lazy: scikit-learn is heavy

    return {"accuracy": float(np.mean(labels == truth)),
            "macro_f1": float(f1_score(truth, labels, average="macro", labels=list(range(n_classes)),
                                       zero_division=0))}


def _regression(truth: np.ndarray, prediction: np.ndarray) -> dict[str, float]:
    error = prediction - truth
    return {"rmse": float(np.sqrt(np.mean(error ** 2))), "mae": float(np.mean(np.abs(error)))}


def _metrics(task: str, data, split: str, prediction: np.ndarray) -> dict[str, float]:
    """Metrics of predicted labels (classification) or rings (regression)."""
    if task == "regression":
        return _regression(data.y_raw[split], prediction)
    return _classification(data.y_raw[split], prediction, data.n_classes)


def rings_to_classes(rings: np.ndarray) -> np.ndarray:
    """Predicted rings -> the 3 Abalone classes (cut at :data:`RING_THRESHOLDS`).

    >>> rings_to_classes(np.array([1.0, 8.49, 8.5, 10.49, 10.5, 29.0])).tolist()
    [0, 0, 1, 1, 2, 2]
    """
    return np.digitize(rings, RING_THRESHOLDS).astype(np.int64)


def _train_record(result) -> dict[str, Any]:
    return {"status": result.status, "diverged": result.diverged, "diverged_at": result.diverged_at,
            "epochs_run": result.epochs_run, "steps_run": result.steps_run, "best_epoch": result.best_epoch,
            "val": result.val, "test": result.test, "train_seconds": result.train_seconds,
            "excluded_rows": result.excluded_rows}


def _run_train(options: dict[str, Any], seed: int, thresholded: bool, features: str = "all") -> dict[str, Any]:

    config = TrainConfig(**{**options, "seed": seed})
    data = _data(config.task, features)
    trainer = Trainer(config, data=data)
    result = trainer.fit()
    record = _train_record(result)
    if thresholded:
        classes = _data("multiclass")
        # Both tasks use the same split seed, so the test rows are the same rows.
        if not np.array_equal(rings_to_classes(data.y_raw["test"]), classes.y_raw["test"]):
            raise RuntimeError("the regression and multiclass splits do not hold the same rows")
        record["regression_test"], record["regression_val"] = record["test"], record["val"]
        record["test"], record["val"] = {}, {}
        if result.test:  # empty when the parameters are not finite
            for split in ("val", "test"):
                rings = trainer.predict(split)
                if np.all(np.isfinite(rings)):
                    record[split] = _classification(classes.y_raw[split], rings_to_classes(rings),
                                                    classes.n_classes)
    return record


def _run_sklearn(kind: str, task: str, options: dict[str, Any]) -> dict[str, Any]:
    from sklearn.neighbors import KNeighborsClassifier, KNeighborsRegressor, NeighborhoodComponentsAnalysis  # lazy

    data = _data(task)
    x_train, y_train = data.x["train"], data.y_raw["train"]
    record: dict[str, Any] = {"status": "completed"}
    if kind == "dummy":
        if task == "regression":
            predict = lambda x: np.full(len(x), float(np.mean(y_train)))  # noqa: E731
        else:
            majority = int(np.bincount(y_train.astype(np.int64)).argmax())
            predict = lambda x: np.full(len(x), majority)  # noqa: E731
    else:
        knn_type = KNeighborsRegressor if task == "regression" else KNeighborsClassifier
        transform = lambda x: x  # noqa: E731
        k = STUDENT_K
        if kind == "sklearn_nca":
            nca = NeighborhoodComponentsAnalysis(n_components=SKLEARN_NCA_COMPONENTS, max_iter=options["max_iter"],
                                                 random_state=0)
            nca.fit(x_train, y_train)
            transform = nca.transform
        elif kind == "knn_tuned":
            scores = []
            for candidate in TUNED_K_GRID:
                prediction = knn_type(n_neighbors=candidate).fit(x_train, y_train).predict(data.x["val"])
                metrics = _metrics(task, data, "val", prediction)
                scores.append(metrics["accuracy"] if task != "regression" else -metrics["rmse"])
            k = TUNED_K_GRID[int(np.argmax(scores))]  # the first (smallest) k on ties
            record["k"] = k
        knn = knn_type(n_neighbors=k).fit(transform(x_train), y_train)
        predict = lambda x: knn.predict(transform(x))  # noqa: E731
    for split in ("val", "test"):
        record[split] = _metrics(task, data, split, predict(data.x[split]))
    return record


def execute(job: dict[str, Any]) -> dict[str, Any]:
    """Run one job (one row, one seed) on one thread; picklable, for worker processes."""
    started = time.perf_counter()
    with _single_thread():
        if job["kind"] in ("train", "train_threshold"):
            record = _run_train(job["options"], job["seed"], thresholded=job["kind"] == "train_threshold",
                                features=job.get("features", "all"))
        else:
            record = _run_sklearn(job["kind"], job["task"], job["options"])
    record["seed"] = job["seed"]
    record["seconds"] = round(time.perf_counter() - started, 3)
    return record


def _worker_init() -> None:
    torch.set_num_threads(1)


# ----------------------------------------------------------------------------- the study


def _job_options(row: Row, max_epochs: int | None) -> dict[str, Any]:
    """The row's resolved TrainConfig fields (without the seed), epochs capped by ``max_epochs``."""

    if row.kind == "sklearn_nca":  # the smoke cap also caps NCA's iterations
        return {"max_iter": SKLEARN_NCA_MAX_ITER if max_epochs is None else min(SKLEARN_NCA_MAX_ITER, max_epochs)}
    if row.kind not in ("train", "train_threshold"):
        return {}
    options = row.options
    if "patience" in options and options["patience"] is None:
        options["patience"] = "default"  # None asks for the model's default (the seed model's is None)
    resolved = TrainConfig(**options).resolved().to_dict()
    resolved.pop("seed")
    if max_epochs is not None:
        resolved["epochs"] = min(resolved["epochs"], max_epochs)
    return resolved


def _job_key(row: Row, options: dict[str, Any]) -> str:
    """Rows whose runs are identical share one key (and so one set of runs)."""
    return json.dumps({"kind": row.kind, "task": options.get("task", row.task), "options": options,
                       "features": row.features}, sort_keys=True)


def _cost(job: dict[str, Any]) -> float:
    """A rough relative cost, to start the longest jobs first when running in parallel."""
    options = job["options"]
    if "epochs" not in options:
        return 200.0 if job["kind"] == "sklearn_nca" else 1.0
    cost = float(options["epochs"])
    cost *= 8 if options["model"] == "modernnca" else 1
    cost *= 2 if options["dtype"] == "float64" else 1
    cost *= 3 if options["candidates"] == "sampled" and options["batch_size"] < 1024 else 1
    return cost


def canonical_command(*, seeds: int, task: str, out: str | os.PathLike, jobs: int, rows: Sequence[str] | None,
                      ablation: bool, max_epochs: int | None) -> str:
    """The command line that regenerates a study (every option spelled out)."""
    argv = ["stablenca", "study", "--seeds", str(seeds), "--task", task, "--out", str(out), "--jobs", str(jobs)]
    if rows is not None:
        argv += ["--rows", *rows]
    argv.append("--ablation" if ablation else "--no-ablation")
    if max_epochs is not None:
        argv += ["--max-epochs", str(max_epochs)]
    return shlex.join(argv)


def machine_info(jobs: int) -> dict[str, Any]:
    import sklearn  # lazy: scikit-learn is heavy and only the baselines and this record need it

    return {"cpu_count": os.cpu_count(), "platform": platform.platform(), "machine": platform.machine(), **cpu(),
            "python": platform.python_version(), "torch": torch.__version__, "numpy": np.__version__,
            "sklearn": sklearn.__version__, "jobs": jobs, "threads_per_run": 1, "code": code_version()}


def code_version() -> str | None:
    """The git commit of the stablenca source that runs (``+ local changes`` when the tree is dirty),
    or None outside a git checkout: a study's numbers depend on the code as much as on the machine."""
    import subprocess

    root = Path(__file__).resolve().parents[2]
    try:
        commit = subprocess.run(["git", "rev-parse", "--short=12", "HEAD"], cwd=root, capture_output=True,
                                text=True, timeout=10, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no", "--", "stablenca"],
                               cwd=root, capture_output=True, text=True, timeout=10, check=True).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return f"{commit} + local changes" if dirty else commit


def _select_rows(task: str, rows: Sequence[str] | None) -> list[Row]:
    available = main_rows(task)
    if rows is None:
        return available
    names = [r.id for r in available]
    unknown = [name for name in rows if name not in names]
    if unknown:
        raise ConfigError(f"unknown --rows {', '.join(unknown)} for --task {task}",
                          fix=f"use some of {', '.join(names)}")
    if not rows:
        raise ConfigError("--rows names no row", fix=f"use some of {', '.join(names)}")
    wanted = set(rows)
    return [row for row in available if row.id in wanted]


def _prepare_out(out: Path) -> None:
    """Fail before hours of training, not after, when ``out`` cannot be written."""
    if out.exists() and not out.is_dir():
        raise OutputError(f"--out {out} exists and is not a directory", fix="choose another --out path")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OutputError(f"cannot create {out}: {exc.strerror}", fix="choose a writable --out directory") from None
    if not os.access(out, os.W_OK | os.X_OK):
        raise OutputError(f"cannot write to {out}", fix="choose a writable --out directory")


def run_study(
    *,
    seeds: int = DEFAULT_SEEDS,
    task: str = "multiclass",
    out: str | os.PathLike | None = DEFAULT_OUT,
    jobs: int = 1,
    rows: Sequence[str] | None = None,
    ablation: bool | None = None,
    max_epochs: int | None = None,
    progress: bool | Callable[[str], None] = False,
) -> dict[str, Any]:
    """Run the study and return its results (what ``study.json`` holds).

    ``seeds`` runs seeds ``0..seeds-1``; ``rows`` picks main-table rows by id
    (default all, see :func:`main_rows`); ``ablation`` defaults to on for the
    3-class task and is not defined for regression. ``max_epochs`` caps the
    epochs of every trained row (and scikit-learn NCA's iterations): a
    smoke-test option whose numbers are not comparable with TALENT's. ``jobs > 1`` runs jobs in that many worker
    processes. With ``out`` set, ``study.md`` and ``study.json`` are written there
    atomically. ``progress`` is True (one line per finished run on stderr) or a
    callable that takes each line.
    """
    _check_task(task)
    if isinstance(seeds, bool) or not isinstance(seeds, int) or seeds < 1:
        raise ConfigError(f"seeds={seeds!r} must be an integer >= 1", fix="use --seeds 15 (TALENT) or more than 0")
    if isinstance(jobs, bool) or not isinstance(jobs, int) or jobs < 1:
        raise ConfigError(f"jobs={jobs!r} must be an integer >= 1", fix="use --jobs 1 or the number of cores")
    if max_epochs is not None and (isinstance(max_epochs, bool) or not isinstance(max_epochs, int) or max_epochs < 1):
        raise ConfigError(f"max_epochs={max_epochs!r} must be an integer >= 1", fix="use --max-epochs 1 or more")
    if ablation is None:
        ablation = task == "multiclass"
    if ablation and task != "multiclass":
        raise ConfigError("the ablation is defined on the 3-class task", fix="drop --ablation or use --task multiclass")
    selected = _select_rows(task, rows)
    if rows is not None:
        rows = [row.id for row in selected]
    out_path = None if out is None else Path(out)
    if out_path is not None:
        _prepare_out(out_path)
    say = _progress(progress)
    started_at = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    started = time.perf_counter()
    seed_list = list(range(seeds))
    all_rows = selected + (ablation_rows() if ablation else [])

    # One job per distinct run and seed; rows with identical configurations share runs.
    row_keys: dict[str, str] = {}
    jobs_by_key: dict[tuple[str, int | None], dict[str, Any]] = {}
    for row in all_rows:
        options = _job_options(row, max_epochs)
        key = _job_key(row, options)
        row_keys[_row_ref(row)] = key
        for seed in (seed_list if row.seeded else [None]):
            jobs_by_key.setdefault((key, seed), {"key": key, "kind": row.kind, "task": row.task,
                                                 "options": options, "seed": seed, "row": row.id,
                                                 "features": row.features})
    results = _run_jobs(list(jobs_by_key.values()), jobs, say)
    wall = time.perf_counter() - started

    def runs_of(row: Row) -> list[dict[str, Any]]:
        key = row_keys[_row_ref(row)]
        return [results[(key, seed)] for seed in (seed_list if row.seeded else [None])]

    def entry(row: Row) -> dict[str, Any]:
        runs = runs_of(row)
        return {"id": row.id, "label": row.label, "kind": row.kind, "task": row.task, "protocol": row.protocol,
                "change": row.change, "config": jobs_by_key[(row_keys[_row_ref(row)], runs[0]["seed"])]["options"],
                "deterministic": not row.seeded, "published": row.published, "features": row.features,
                "summary": summarise(row, runs), "per_seed": runs}

    main = [entry(row) for row in selected]
    steps = [entry(row) for row in ablation_rows()] if ablation else []
    _add_deltas(steps)
    published = PUBLISHED[task]
    study = {
        "study": "stablenca abalone study",
        "command": canonical_command(seeds=seeds, task=task, out=out if out is not None else DEFAULT_OUT,
                                     jobs=jobs, rows=rows, ablation=ablation, max_epochs=max_epochs),
        "task": task, "seeds": seed_list, "split_seed": SPLIT_SEED, "max_epochs": max_epochs,
        "std": "population std over seeds (ddof=0, as TALENT's np.std)",
        "started_at": started_at, "wall_seconds": round(wall, 3),
        "run_seconds_total": round(sum(r["seconds"] for r in results.values()), 3), "runs": len(results),
        "machine": machine_info(jobs),
        "published": {"source": PUBLISHED_SOURCE, "dataset": published["dataset"], "metric": published["metric"],
                      "file": published["file"],
                      "rows": [{"name": n, "mean": m, "std": s} for n, m, s in published["rows"]]},
        "rows": main, "ablation": steps, "factors": factor_table(main),
    }
    if out_path is not None:
        write_study(study, out_path)
    return study


def _row_ref(row: Row) -> str:
    return f"{'ablation' if row.change else 'main'}:{row.id}"


def _add_deltas(steps: list[dict[str, Any]]) -> None:
    """Each step's delta to the previous step: difference of means, and the paired per-seed view."""
    for metric in METRICS["multiclass"]:
        means = [step["summary"][metric]["mean"] for step in steps]
        for i, (step, delta) in enumerate(zip(steps, consecutive_deltas(means))):
            step.setdefault("delta", {})[metric] = delta
            if i:
                previous = {r["seed"]: r["test"].get(metric) for r in steps[i - 1]["per_seed"]}
                current = {r["seed"]: r["test"].get(metric) for r in step["per_seed"]}
                step.setdefault("paired_delta", {})[metric] = paired_differences(previous, current)
                step.setdefault("paired_interval", {})[metric] = paired_interval(previous, current)


def _progress(progress: bool | Callable[[str], None]) -> Callable[[str], None]:
    if callable(progress):
        return progress
    if progress:
        return lambda line: print(line, file=sys.stderr, flush=True)
    return lambda line: None


def _describe(job: dict[str, Any], record: dict[str, Any]) -> str:
    seed = "" if job["seed"] is None else f" seed={job['seed']}"
    metrics = " ".join(f"{k}={v:.4f}" for k, v in record["test"].items()
                       if isinstance(v, float) and math.isfinite(v))
    status = record.get("status", "completed")
    if record.get("diverged_at"):
        status += f" at epoch {record['diverged_at']['epoch']}"
    return f"{job['row']}{seed}: {metrics or 'no finite metrics'} ({status}, {record['seconds']:.1f}s)"


def _run_jobs(jobs: list[dict[str, Any]], n_processes: int, say: Callable[[str], None]):
    results: dict[tuple[str, int | None], dict[str, Any]] = {}
    total = len(jobs)
    if n_processes == 1 or total <= 1:
        for done, job in enumerate(jobs, 1):
            results[(job["key"], job["seed"])] = record = execute(job)
            say(f"[{done}/{total}] {_describe(job, record)}")
        return results

    ordered = sorted(jobs, key=_cost, reverse=True)
    context = multiprocessing.get_context("spawn")  # fork after torch started its threads can hang
    with concurrent.futures.ProcessPoolExecutor(max_workers=min(n_processes, total), mp_context=context,
                                                initializer=_worker_init) as pool:
        futures = {pool.submit(execute, job): job for job in ordered}
        try:
            for done, future in enumerate(concurrent.futures.as_completed(futures), 1):
                job = futures[future]
                results[(job["key"], job["seed"])] = record = future.result()
                say(f"[{done}/{total}] {_describe(job, record)}")
        except BaseException:
            pool.shutdown(wait=False, cancel_futures=True)
            raise
    return results


# ----------------------------------------------------------------------------- output


def write_study(study: dict[str, Any], out: str | os.PathLike) -> tuple[Path, Path]:
    """Write ``study.md`` and ``study.json`` into ``out``, each atomically."""
    out = Path(out)
    json_path, md_path = out / "study.json", out / "study.md"
    atomic_write_json(json_path, study)
    atomic_write_text(md_path, render_markdown(study))
    return md_path, json_path


def load_study(path: str | os.PathLike) -> dict[str, Any]:
    """A saved ``study.json``, checked enough to render; factors are recomputed from its rows."""
    path = Path(path)
    try:
        study = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise ConfigError(f"cannot read study {path}: {exc}", fix="pass a study.json written by stablenca study") \
            from None
    if not isinstance(study, dict) or study.get("study") != "stablenca abalone study":
        raise ConfigError(f"{path} is not a study.json", fix="pass a study.json written by stablenca study")
    study["factors"] = factor_table(study["rows"])
    _add_deltas(study["ablation"])  # recomputed from the per-seed results, with the paired intervals
    study["rendered_from"] = f"stablenca study --from-json {path}"
    return study


def summary_json(study: dict[str, Any], out: str | os.PathLike | None = None) -> dict[str, Any]:
    """The compact summary ``stablenca study --json`` prints."""
    def brief(entry):
        summary = entry["summary"]
        metrics = {m: {k: summary[m][k] for k in ("mean", "std", "n")} for m in METRICS[entry["task"]]}
        item = {"id": entry["id"], "label": entry["label"], "metrics": metrics, "runs": summary["runs"]}
        if "diverged" in summary:
            item["diverged"] = summary["diverged"]
        if entry.get("change"):
            item["change"] = entry["change"]
            item["delta"] = entry.get("delta", {})
        return item

    result = {"command": study["command"], "task": study["task"], "seeds": study["seeds"],
              "split_seed": study["split_seed"], "max_epochs": study["max_epochs"],
              "wall_seconds": study["wall_seconds"], "published": study["published"],
              "rows": [brief(e) for e in study["rows"]], "ablation": [brief(e) for e in study["ablation"]],
              "factors": [{k: f[k] for k in ("id", "change", "base", "changed", "paired")}
                          for f in study.get("factors", [])]}
    if out is not None:
        result["files"] = {"markdown": str(Path(out) / "study.md"), "json": str(Path(out) / "study.json")}
    return result
