"""The homework study: ModernNCA against the student's SeedNCA on Abalone, over seeds.

The homework asks to implement ModernNCA, test it on Abalone, and explain the
performance gap to the student's model (SeedNCA trained with an NCA ratio loss).
:func:`run_study` measures that gap and decomposes it:

* a **main table**: each row is one model, loss and protocol, trained once per seed.
  It reports mean ± std over the seeds, how many runs diverged, and TALENT's
  published numbers beside the rows they correspond to. Scikit-learn NCA + KNN,
  KNN and a dummy predictor are baselines;
* an **ablation** (3-class task only): a walk from the student's setup to
  ModernNCA, with one factor changed per step (see :data:`ABLATION_STEPS`). Every
  step is measured over the same seeds and reported with its delta to the
  previous step.

Seeds are ``0..N-1``. A seed drives the model initialisation, the batch order,
and the training-candidate sampling. The baselines (scikit-learn NCA + KNN, KNN,
dummy) are deterministic and run once.
The train/val/test split is fixed: split seed 0, 64/16/20. TALENT does the same:
its 15 seeds vary the model seed on one fixed split.

Every run uses one thread (``torch.set_num_threads(1)``, BLAS limited to one
thread), both in-process and in the worker processes of ``jobs > 1``. A seed
therefore gives the same numbers whatever ``jobs`` is.

>>> aggregate([0.5, 0.75, None])
{'mean': 0.625, 'std': 0.125, 'n': 2, 'missing': 1}
"""

from __future__ import annotations

import contextlib
import dataclasses
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

from .errors import ConfigError, OutputError
from .records import atomic_write_json, atomic_write_text, finite_or_none
from .report.markdown import table

#: The split is the same for every seed (TALENT's protocol: model seeds on a fixed split).
SPLIT_SEED = 0
DEFAULT_SEEDS = 15
DEFAULT_OUT = "reports/abalone"
TASKS = ("multiclass", "regression")
#: Predicted rings are cut at the midpoints between the classes' integer ring counts:
#: rings 1-8 -> class 0, 9-10 -> class 1, 11-29 -> class 2.
RING_THRESHOLDS = (8.5, 10.5)
#: k of every KNN that copies the student's readout.
STUDENT_K = 3
#: The k searched by the "KNN, k tuned on val" baseline.
TUNED_K_GRID = tuple(range(1, 51))
#: scikit-learn NCA: as many components as the student's embedding has dimensions.
SKLEARN_NCA_COMPONENTS = 3

METRICS = {"multiclass": ("accuracy", "macro_f1"), "regression": ("rmse", "mae")}
METRIC_LABELS = {"accuracy": "accuracy", "macro_f1": "macro-F1", "rmse": "RMSE (rings)", "mae": "MAE (rings)"}

PUBLISHED_SOURCE = "TALENT leaderboard (results/cls_multi.md, results/regression.md), mean over 15 seeds"
#: TALENT's published numbers: (name, mean, std or None), on TALENT's own fixed split.
PUBLISHED: dict[str, dict[str, Any]] = {
    "multiclass": {
        "dataset": "abalone", "metric": "accuracy", "file": "results/cls_multi.md",
        "rows": [("ModernNCA", 0.6304, 0.0043), ("MLP", 0.6315, None), ("KNN", 0.5957, None),
                 ("Dummy", 0.3469, None)],
    },
    "regression": {
        "dataset": "Abalone_reg", "metric": "rmse", "file": "results/regression.md",
        "rows": [("ModernNCA", 2.0968, 0.0081), ("MLP", 2.1186, None), ("KNN", 2.2570, None),
                 ("Dummy", 3.2427, None)],
    },
}

STUDENT = "student protocol: in-batch neighbours, batch 32, Adam lr 0.01, 30 epochs, last epoch kept, KNN-3 readout"
TALENT = ("TALENT protocol: sampled candidates (50 %), batch 1024, AdamW lr 0.01 wd 2e-4, <=200 epochs, "
          "patience 20, best-val checkpoint, soft-neighbour readout")

#: Seeded kinds run once per seed; the others are deterministic and run once. scikit-learn's NCA
#: is deterministic here: its init "auto" resolves to PCA (3 components > 3 classes - 1), PCA on
#: this small table uses an exact solver, and random_state only matters for init="random".
SEEDED_KINDS = ("train", "train_threshold")
#: scikit-learn's default number of NCA iterations.
SKLEARN_NCA_MAX_ITER = 50


@dataclasses.dataclass(frozen=True)
class Row:
    """One measured line of a table.

    ``kind`` is ``train`` (a :class:`~stablenca.train.TrainConfig`), ``train_threshold``
    (trained as regression on rings, evaluated as the 3 classes), ``sklearn_nca``,
    ``knn``, ``knn_tuned`` or ``dummy``. ``config`` holds TrainConfig fields
    (without the seed) as sorted ``(name, value)`` pairs, so that rows hash.
    ``published`` names the TALENT row printed beside this one.
    """

    id: str
    label: str
    kind: str
    task: str
    protocol: str = ""
    config: tuple[tuple[str, Any], ...] = ()
    published: str | None = None
    change: str = ""  # ablation steps: the single factor changed from the previous step

    @property
    def options(self) -> dict[str, Any]:
        return dict(self.config)

    @property
    def seeded(self) -> bool:
        return self.kind in SEEDED_KINDS


def _cfg(**options: Any) -> tuple[tuple[str, Any], ...]:
    return tuple(sorted(options.items()))


def main_rows(task: str) -> list[Row]:
    """The main table's rows for ``task`` (ids are what ``--rows`` accepts)."""
    _check_task(task)
    if task == "multiclass":
        return [
            Row("modernnca_f32", "ModernNCA, modernnca loss, float32", "train", task, "TALENT²",
                _cfg(model="modernnca"), published="ModernNCA"),
            Row("modernnca_f64", "ModernNCA, modernnca loss, float64", "train", task, "TALENT²",
                _cfg(model="modernnca", dtype="float64")),
            Row("modernnca_logspace", "ModernNCA, nca_logspace loss, float32", "train", task, "TALENT²",
                _cfg(model="modernnca", loss="nca_logspace")),
            Row("seed_difference", "SeedNCA, difference loss", "train", task, "student³",
                _cfg(model="seed", loss="difference")),
            Row("seed_ratio_eps", "SeedNCA, ratio_eps loss (+1e-10)", "train", task, "student³",
                _cfg(model="seed", loss="ratio_eps")),
            Row("seed_ratio", "SeedNCA, ratio loss (the student's)", "train", task, "student³",
                _cfg(model="seed", loss="ratio")),
            Row("sklearn_nca_knn3", "scikit-learn NCA (3 components) + KNN-3", "sklearn_nca", task,
                "linear NCA⁴, then KNN-3"),
            Row("knn3", "KNN-3 on standardised + one-hot features", "knn", task, "k = 3, Euclidean"),
            Row("knn_tuned", "KNN, k tuned on val", "knn_tuned", task, "k in 1..50 chosen on val accuracy",
                published="KNN"),
            Row("dummy", "Dummy (most frequent train class)", "dummy", task, "", published="Dummy"),
        ]
    return [
        Row("modernnca_f32", "ModernNCA, modernnca (MSE) loss, float32", "train", task, "TALENT²",
            _cfg(model="modernnca", task="regression"), published="ModernNCA"),
        Row("modernnca_f64", "ModernNCA, modernnca (MSE) loss, float64", "train", task, "TALENT²",
            _cfg(model="modernnca", task="regression", dtype="float64")),
        Row("seed_mse", "SeedNCA, modernnca (MSE) loss", "train", task,
            "student³ (KNN-3 regressor readout)",
            _cfg(model="seed", loss="modernnca", task="regression")),
        Row("knn3", "KNN-3 regressor on standardised + one-hot features", "knn", task, "k = 3, Euclidean"),
        Row("knn_tuned", "KNN regressor, k tuned on val", "knn_tuned", task, "k in 1..50 chosen on val RMSE",
            published="KNN"),
        Row("dummy", "Dummy (train mean)", "dummy", task, "", published="Dummy"),
    ]


_STUDENT_CONFIG = dict(model="seed", loss="ratio", candidates="in_batch", batch_size=32, optimizer="adam",
                       lr=0.01, weight_decay=0.0, epochs=30, patience=None, readout="knn", dtype="float32")

#: The ablation walk: (id, label, change, the fields changed from the previous step).
#: Each step changes one factor; the encoder comes last (see docs/study.md for why).
ABLATION_STEPS: list[tuple[str, str, str, dict[str, Any]]] = [
    ("A0", "student", "SeedNCA, ratio loss, in-batch neighbours, batch 32, Adam lr 0.01, 30 epochs "
     "(last epoch kept), KNN-3 readout", {}),
    ("A1", "loss -> nca_logspace", "loss ratio -> nca_logspace (the NCA probability, in log space)",
     {"loss": "nca_logspace"}),
    ("A2", "loss -> modernnca", "loss nca_logspace -> modernnca (TALENT: log(p + 1e-7) + NLL)",
     {"loss": "modernnca"}),
    ("A3", "sampled candidates", "training candidates: the batch itself -> the batch + 50 % of the rest "
     "of the train split (batch still 32)", {"candidates": "sampled"}),
    ("A4", "batch 1024", "batch size 32 -> 1024", {"batch_size": 1024}),
    ("A5", "soft readout", "readout KNN-3 in the embedding -> soft neighbours over the whole train split",
     {"readout": "soft"}),
    ("A6", "AdamW wd 2e-4", "optimiser Adam -> AdamW with decoupled weight decay 2e-4 (lr 0.01 kept; "
     "AdamW with wd 0 is Adam, so this step is the weight decay)", {"optimizer": "adamw", "weight_decay": 2e-4}),
    ("A7", "early stopping", "schedule: 30 epochs, last epoch kept -> <=200 epochs, patience 20, "
     "best-val-accuracy checkpoint", {"epochs": 200, "patience": 20}),
    ("A8", "ModernNCA encoder", "encoder SeedNCA (Linear-BN-ReLU-Linear, 3-d) -> ModernNCA (PLR-lite + "
     "Linear 128): this is full ModernNCA", {"model": "modernnca"}),
    ("A9", "regression, thresholded", "task framing: the same model trained as regression on rings (MSE, "
     "selection on val MAE), predictions cut at 8.5 / 10.5 rings into the 3 classes", {"task": "regression"}),
]


def ablation_rows() -> list[Row]:
    """The ablation walk as rows, each the previous one with one factor changed."""
    rows, config = [], dict(_STUDENT_CONFIG)
    for step_id, label, change, fields in ABLATION_STEPS:
        config = {**config, **fields}
        kind = "train_threshold" if config.get("task") == "regression" else "train"
        rows.append(Row(step_id, label, kind, "multiclass", "", _cfg(**config), change=change))
    return rows


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

_DATA: dict[str, Any] = {}


def _data(task: str):
    """The prepared Abalone for ``task`` on the fixed split (cached per process)."""
    if task not in _DATA:
        from .data import load_abalone, prepare

        _DATA[task] = prepare(load_abalone(task=task, split_seed=SPLIT_SEED))
    return _DATA[task]


@contextlib.contextmanager
def _single_thread():
    """One torch thread and one BLAS thread: the same numbers whatever ``jobs`` is."""
    import torch
    from threadpoolctl import threadpool_limits

    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with threadpool_limits(limits=1):
            yield
    finally:
        torch.set_num_threads(previous)


def _classification(truth: np.ndarray, labels: np.ndarray, n_classes: int) -> dict[str, float]:
    from sklearn.metrics import f1_score

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


def _run_train(options: dict[str, Any], seed: int, thresholded: bool) -> dict[str, Any]:
    from .train import Trainer, TrainConfig

    config = TrainConfig(**{**options, "seed": seed})
    data = _data(config.task)
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
    from sklearn.neighbors import KNeighborsClassifier, KNeighborsRegressor, NeighborhoodComponentsAnalysis

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
            record = _run_train(job["options"], job["seed"], thresholded=job["kind"] == "train_threshold")
        else:
            record = _run_sklearn(job["kind"], job["task"], job["options"])
    record["seed"] = job["seed"]
    record["seconds"] = round(time.perf_counter() - started, 3)
    return record


def _worker_init() -> None:
    import torch

    torch.set_num_threads(1)


# ----------------------------------------------------------------------------- the study


def _check_task(task: str) -> None:
    if task not in TASKS:
        raise ConfigError(f"unknown task {task!r}", fix="use multiclass or regression")


def _job_options(row: Row, max_epochs: int | None) -> dict[str, Any]:
    """The row's resolved TrainConfig fields (without the seed), epochs capped by ``max_epochs``."""
    from .train import TrainConfig

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
    return json.dumps({"kind": row.kind, "task": options.get("task", row.task), "options": options},
                      sort_keys=True)


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
    import sklearn
    import torch

    return {"cpu_count": os.cpu_count(), "platform": platform.platform(), "machine": platform.machine(),
            "python": platform.python_version(), "torch": torch.__version__, "numpy": np.__version__,
            "sklearn": sklearn.__version__, "jobs": jobs, "threads_per_run": 1}


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
                                                 "options": options, "seed": seed, "row": row.id})
    results = _run_jobs(list(jobs_by_key.values()), jobs, say)
    wall = time.perf_counter() - started

    def runs_of(row: Row) -> list[dict[str, Any]]:
        key = row_keys[_row_ref(row)]
        return [results[(key, seed)] for seed in (seed_list if row.seeded else [None])]

    def entry(row: Row) -> dict[str, Any]:
        runs = runs_of(row)
        return {"id": row.id, "label": row.label, "kind": row.kind, "task": row.task, "protocol": row.protocol,
                "change": row.change, "config": jobs_by_key[(row_keys[_row_ref(row)], runs[0]["seed"])]["options"],
                "deterministic": not row.seeded, "published": row.published,
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
        "rows": main, "ablation": steps,
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
    import concurrent.futures
    import multiprocessing

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
              "rows": [brief(e) for e in study["rows"]], "ablation": [brief(e) for e in study["ablation"]]}
    if out is not None:
        result["files"] = {"markdown": str(Path(out) / "study.md"), "json": str(Path(out) / "study.json")}
    return result


def _fmt(value: float | None, digits: int = 4) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"


def _fmt_signed(value: float | None, digits: int = 4) -> str:
    return "n/a" if value is None else f"{value:+.{digits}f}"


def _mean_std(stats: dict[str, Any], runs: int, deterministic: bool = False) -> str:
    if stats["mean"] is None:
        return "n/a"
    if deterministic:
        return f"{stats['mean']:.4f} (deterministic)"
    text = f"{stats['mean']:.4f} ± {stats['std']:.4f}"
    if stats["n"] < runs:
        text += f" (n={stats['n']})"
    return text


def _published_for(study: dict[str, Any], name: str | None) -> str:
    for row in study["published"]["rows"]:
        if row["name"] == name:
            return f"{row['mean']:.4f}" + (f" ± {row['std']:.4f}" if row["std"] is not None else "")
    return ""


def _diverged(summary: dict[str, Any]) -> str:
    return f"{summary['diverged']}/{summary['runs']}" if "diverged" in summary else "—"


def _epochs(summary: dict[str, Any]) -> str:
    stats = summary.get("epochs_run")
    return "—" if not stats or stats["mean"] is None else f"{stats['mean']:.1f}"


def _seconds(summary: dict[str, Any]) -> str:
    stats = summary.get("seconds")
    return "—" if not stats or stats["mean"] is None else f"{stats['mean']:.1f}"


def render_markdown(study: dict[str, Any]) -> str:
    """``study.md``: the command, the setup, the tables and what they say."""
    task = study["task"]
    n = len(study["seeds"])
    machine = study["machine"]
    metric_a, metric_b = METRICS[task]
    lines = [
        "# Abalone study: ModernNCA vs the student's SeedNCA",
        "",
        "Regenerate with:",
        "",
        "```",
        study["command"],
        "```",
        "",
        f"- task: **{task}** ({'3 classes: rings 1-8 / 9-10 / 11-29' if task == 'multiclass' else 'rings'}), "
        "metrics on the test split",
        f"- seeds: {_seed_text(study['seeds'])} ({n} seed{'s' if n != 1 else ''}); a seed drives model "
        "initialisation, batch order and candidate sampling",
        f"- split: fixed, split seed {study['split_seed']} (64/16/20 = 2672/669/836 rows) for every seed, as "
        "TALENT's 15 seeds vary the model seed on one fixed split",
        f"- machine: {machine['cpu_count']} CPUs, {machine['platform']}, Python {machine['python']}, "
        f"torch {machine['torch']}, numpy {machine['numpy']}, scikit-learn {machine['sklearn']}; "
        f"{machine['jobs']} parallel job(s), {machine['threads_per_run']} thread per run",
        f"- wall time: {study['wall_seconds']:.1f} s for {study['runs']} runs "
        f"(sum of run times {study['run_seconds_total']:.1f} s); started {study['started_at']}",
        "- mean ± std over seeds; std is the population std (ddof=0, as TALENT's np.std)",
    ]
    if study["max_epochs"] is not None:
        lines += ["", f"> **Smoke run**: every trained row was capped at {study['max_epochs']} epoch(s), and "
                      "scikit-learn NCA at as many iterations (`--max-epochs`). These numbers are not "
                      "comparable with TALENT's or with a full study."]
    lines += ["", "## Main table", ""]
    published_header = f"Published {METRIC_LABELS[study['published']['metric']]} (TALENT¹)"
    headers = ["Row", "Protocol", f"Test {METRIC_LABELS[metric_a]}", f"Test {METRIC_LABELS[metric_b]}", "Diverged",
               "Epochs run", "s/run", published_header]
    rows = []
    shown = set()
    for entry in study["rows"]:
        summary = entry["summary"]
        published = _published_for(study, entry["published"])
        if published:
            shown.add(entry["published"])
        rows.append([entry["label"], entry["protocol"],
                     _mean_std(summary[metric_a], summary["runs"], entry["deterministic"]),
                     _mean_std(summary[metric_b], summary["runs"], entry["deterministic"]),
                     _diverged(summary), _epochs(summary), _seconds(summary), published])
    for row in study["published"]["rows"]:
        if row["name"] not in shown:
            rows.append([f"{row['name']} (published only, not run here)", "TALENT defaults", "—", "—", "—", "—",
                         "—", _published_for(study, row["name"])])
    lines += table(headers, rows).split("\n")
    tuned = next((e for e in study["rows"] if e["kind"] == "knn_tuned"), None)
    selection = "accuracy" if task == "multiclass" else "MAE"
    lines += ["", "Notes:", "",
              f"1. Published numbers: {study['published']['source']}; dataset `{study['published']['dataset']}`. "
              "They are measured on TALENT's own fixed split, not on this one, so they are a reference point, "
              "not a paired comparison. TALENT's KNN tunes k, hence its place beside the tuned-k row.",
              f"2. {TALENT}; the checkpoint is the one with the best validation {selection}.",
              f"3. {STUDENT}.",
              f"4. scikit-learn `NeighborhoodComponentsAnalysis(n_components={SKLEARN_NCA_COMPONENTS})` (the width "
              f"of the student's embedding; init 'auto', which is PCA here; max_iter={SKLEARN_NCA_MAX_ITER}, "
              f"scikit-learn's default), fitted on the train split, then KNN with k={STUDENT_K} like the student's "
              "readout. The fit is deterministic, so it is run once.",
              "5. Every row uses the same features: standardised numerical columns + one-hot sex, fitted on the "
              "train split. Deterministic rows (baselines) are run once and show no std.",
              "6. Diverged = runs stopped at a non-finite loss or gradient. The trainer never applies a "
              "non-finite step, so a diverged run's metrics are those of the parameters before the failing "
              "step (the student protocol has no best-epoch checkpoint, so these are the last finite "
              "parameters). Where a metric is missing for some seeds (non-finite parameters), n= shows how "
              "many seeds the mean uses.",
              ]
    if tuned is not None:
        lines.append(f"7. Tuned KNN: k = {tuned['summary'].get('k')} (grid 1..50, best validation "
                     f"{'accuracy' if task == 'multiclass' else 'RMSE'}, smallest k on ties).")
    if study["ablation"]:
        lines += _ablation_markdown(study)
    lines += ["", "## Reading the table", ""]
    lines += [f"- {sentence}" for sentence in reading(study)]
    lines += ["", "Per-seed raw results (status, epochs, val and test metrics, divergence step) are in "
                  "`study.json`.", ""]
    return "\n".join(lines)


def _seed_text(seeds: list[int]) -> str:
    if len(seeds) > 2 and seeds == list(range(seeds[0], seeds[-1] + 1)):
        return f"{seeds[0]}..{seeds[-1]}"
    return ", ".join(map(str, seeds))


def _ablation_markdown(study: dict[str, Any]) -> list[str]:
    lines = ["", "## Ablation: from the student's setup to ModernNCA, one factor per step", "",
             "Each step is the previous one with the single change shown, over the same seeds. "
             "Δ = this step's mean minus the previous step's mean; in brackets the std of the paired "
             "per-seed differences.", ""]
    rows = []
    for step in study["ablation"]:
        summary = step["summary"]
        cells = []
        for metric in METRICS["multiclass"]:
            paired = step.get("paired_delta", {}).get(metric)
            delta = _fmt_signed(step["delta"][metric])
            if paired and paired["std"] is not None and step["delta"][metric] is not None:
                delta += f" (sd {paired['std']:.4f})"
            cells += [_mean_std(summary[metric], summary["runs"]), delta if step["delta"][metric] is not None
                      else ("—" if step["id"] == "A0" else "n/a")]
        rows.append([step["id"], step["change"], *cells, _diverged(summary), _epochs(summary)])
    lines += table(["Step", "Change", "Test accuracy", "Δ accuracy", "Test macro-F1", "Δ macro-F1", "Diverged",
                    "Epochs run"], rows).split("\n")
    last = study["ablation"][-1]
    regression = last["summary"].get("regression")
    if regression and regression["rmse"]["mean"] is not None:
        runs = last["summary"]["runs"]
        lines += ["", f"A9's regression model itself: test RMSE {_mean_std(regression['rmse'], runs)}, "
                      f"MAE {_mean_std(regression['mae'], runs)} rings."]
    lines += ["", "Why this order: the loss goes first, because with the ratio loss the later steps would be "
                  "measured on diverging runs; the encoder goes last, so that every earlier step is measured on "
                  "the small 3-d model the student wrote and the last step lands exactly on TALENT's ModernNCA "
                  "configuration. A8 is exactly "
                  "the ModernNCA float32 row of the main table (same configuration, same runs)."]
    return lines


def reading(study: dict[str, Any]) -> list[str]:
    """Sentences that say what the measured numbers show (only for rows that were run)."""
    task = study["task"]
    metric = METRICS[task][0]
    rows = {entry["id"]: entry for entry in study["rows"]}
    steps = study["ablation"]
    name = METRIC_LABELS[metric]

    def mean(entry):
        return entry["summary"][metric]["mean"] if entry else None

    def describe(entry):
        return _mean_std(entry["summary"][metric], entry["summary"]["runs"], entry["deterministic"])

    sentences: list[str] = []
    if study["max_epochs"] is not None:
        sentences.append(f"Smoke run (epochs capped at {study['max_epochs']}): the sentences below describe these "
                         "numbers only.")
    modern = rows.get("modernnca_f32") or next((s for s in steps if s["id"] == "A8"), None)
    student = rows.get("seed_ratio") or next((s for s in steps if s["id"] == "A0"), None)
    if task == "multiclass" and modern and student and mean(modern) is not None and mean(student) is not None:
        gap = mean(modern) - mean(student)
        summary = student["summary"]
        text = (f"The gap: ModernNCA reaches {describe(modern)} test accuracy, the student's SeedNCA with the ratio "
                f"loss {describe(student)}, a difference of {gap:+.4f}.")
        if summary.get("diverged"):
            where = summary.get("diverged_at_epoch")
            text += (f" {summary['diverged']}/{summary['runs']} ratio runs hit a non-finite loss or gradient"
                     + (_epoch_range(where) if where else "")
                     + "; their accuracy is that of the last finite parameters.")
        else:
            text += f" No ratio run diverged within {_epochs(summary)} epochs on average."
        sentences.append(text)
    for other, what in (("seed_ratio_eps", "ratio_eps (the +1e-10 patch)"), ("seed_difference", "difference")):
        if other in rows and mean(rows[other]) is not None:
            sentences.append(f"SeedNCA with {what} under the same student protocol: {describe(rows[other])}, "
                             f"{_diverged(rows[other]['summary'])} diverged.")
    if steps:
        deltas = [(s, s["delta"][metric]) for s in steps[1:] if s["delta"][metric] is not None]
        if deltas:
            a8 = next((s for s in steps if s["id"] == "A8"), None)
            total = (mean(a8) - mean(steps[0])) if a8 and mean(a8) is not None and mean(steps[0]) is not None \
                else None
            ranked = sorted(deltas, key=lambda item: -abs(item[1]))
            noise = []
            parts = []
            for step, delta in ranked:
                paired = step.get("paired_delta", {}).get(metric, {})
                se = paired.get("se")
                within = se is not None and abs(delta) < 2 * se
                if within:
                    noise.append(step["id"])
                parts.append(f"{step['id']} ({step['label']}) {delta:+.4f}")
            text = "Ablation, steps ordered by the size of their accuracy change: " + "; ".join(parts) + "."
            if total is not None:
                text += (f" A0 -> A8 totals {total:+.4f} (the deltas add up to it by construction; each depends "
                         "on the steps before it, so the order matters).")
            if noise:
                text += (f" Within seed noise (|Δ| < 2 standard errors of the paired per-seed differences): "
                         f"{', '.join(noise)}.")
            elif len(study["seeds"]) < 2:
                text += " With one seed there is no estimate of seed noise."
            sentences.append(text)
        a8 = next((s for s in steps if s["id"] == "A8"), None)
        a9 = next((s for s in steps if s["id"] == "A9"), None)
        if a8 and a9 and a9["delta"][metric] is not None:
            sentences.append(f"Task framing: training on rings and thresholding (A9, {describe(a9)}) instead of "
                             f"classifying directly (A8, {describe(a8)}) changes accuracy by "
                             f"{a9['delta'][metric]:+.4f}.")
    f32, f64 = rows.get("modernnca_f32"), rows.get("modernnca_f64")
    if f32 and f64 and mean(f32) is not None and mean(f64) is not None:
        sentences.append(f"Precision: ModernNCA in float64 gives {describe(f64)} vs {describe(f32)} in float32 "
                         f"({mean(f64) - mean(f32):+.4f}); {_diverged(f32['summary'])} float32 runs diverged.")
    logspace = rows.get("modernnca_logspace")
    if f32 and logspace and mean(f32) is not None and mean(logspace) is not None:
        sentences.append(f"Loss formulation inside ModernNCA: nca_logspace gives {describe(logspace)} vs "
                         f"{describe(f32)} with TALENT's modernnca loss ({mean(logspace) - mean(f32):+.4f}).")
    seed_mse = rows.get("seed_mse")
    if f32 and seed_mse and mean(f32) is not None and mean(seed_mse) is not None:
        sentences.append(f"The student's encoder and protocol on rings (SeedNCA, MSE loss): {describe(seed_mse)} "
                         f"{name} vs ModernNCA {describe(f32)} ({mean(seed_mse) - mean(f32):+.4f}).")
    knn3, nca, tuned, dummy = (rows.get(k) for k in ("knn3", "sklearn_nca_knn3", "knn_tuned", "dummy"))
    baseline = []
    for entry in (nca, knn3, tuned, dummy):
        if entry and mean(entry) is not None:
            baseline.append(f"{entry['label']} {describe(entry)}")
    if baseline:
        text = "Baselines: " + "; ".join(baseline) + "."
        if nca and knn3 and mean(nca) is not None and mean(knn3) is not None:
            text += (f" A linear {SKLEARN_NCA_COMPONENTS}-d NCA projection changes KNN-3 {name} by "
                     f"{mean(nca) - mean(knn3):+.4f}.")
        if modern and tuned and mean(modern) is not None and mean(tuned) is not None:
            text += f" ModernNCA minus tuned KNN: {mean(modern) - mean(tuned):+.4f} {name}."
        sentences.append(text)
    published = {row["name"]: row for row in study["published"]["rows"]}
    if modern and mean(modern) is not None and "ModernNCA" in published:
        reference = published["ModernNCA"]
        difference = mean(modern) - reference["mean"]
        sentences.append(f"Against TALENT's published ModernNCA ({reference['mean']:.4f} ± {reference['std']:.4f}, "
                         f"on TALENT's split): measured here {describe(modern)}, a difference of {difference:+.4f}"
                         f" ({abs(difference) / reference['std']:.1f} published std).")
    return sentences


def _epoch_range(where: dict[str, Any]) -> str:
    if where["min"] == where["max"]:
        return f" (all in epoch {where['min']})"
    return f" (epochs {where['min']}-{where['max']}, median {where['median']:g})"


def format_table(study: dict[str, Any]) -> str:
    """A short plain-text summary for the terminal."""
    lines = []
    for entry in study["rows"] + study["ablation"]:
        metric = METRICS[entry["task"]][0]
        value = _mean_std(entry["summary"][metric], entry["summary"]["runs"], entry["deterministic"])
        lines.append(f"{entry['id']:<20} {value:<28} {entry['label']}")
    return "\n".join(lines)


__all__ = ["ABLATION_STEPS", "PUBLISHED", "PUBLISHED_SOURCE", "Row", "ablation_rows", "aggregate",
           "canonical_command", "consecutive_deltas", "execute", "main_rows", "paired_differences",
           "reading", "render_markdown", "rings_to_classes", "run_study", "summarise", "summary_json",
           "write_study"]
