"""What the study runs: the rows of the main table and the ablation steps, and the published numbers."""

from __future__ import annotations

import dataclasses
from typing import Any

from ..errors import ConfigError




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


def _check_task(task: str) -> None:
    if task not in TASKS:
        raise ConfigError(f"unknown task {task!r}", fix="use multiclass or regression")


@dataclasses.dataclass(frozen=True)
class Row:
    """One measured line of a table.

    ``kind`` is ``train`` (a :class:`~stablenca.training.trainer.TrainConfig`), ``train_threshold``
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
    features: str = "all"  # "all" = numerical + one-hot sex; "numerical" drops sex, as the student's code does

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
            Row("modernnca_ratio_eps", "ModernNCA, ratio_eps loss (+1e-10), float32", "train", task, "TALENT²",
                _cfg(model="modernnca", loss="ratio_eps")),
            Row("modernnca_difference", "ModernNCA, difference loss, float32", "train", task, "TALENT²",
                _cfg(model="modernnca", loss="difference")),
            Row("modernnca_ratio", "ModernNCA, ratio loss (the student's), float32", "train", task, "TALENT²",
                _cfg(model="modernnca", loss="ratio")),
            Row("seed_difference", "SeedNCA, difference loss", "train", task, "student³",
                _cfg(model="seed", loss="difference")),
            Row("seed_difference_no_sex", "SeedNCA, difference loss, sex column dropped", "train", task,
                "student³, numerical columns only", _cfg(model="seed", loss="difference"), features="numerical"),
            Row("seed_difference_10_epochs", "SeedNCA, difference loss, 10 epochs", "train", task,
                "student³, 10 epochs", _cfg(model="seed", loss="difference", epochs=10)),
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


#: Factors measured as paired comparisons of two main-table rows over the same seeds:
#: (id, what changes, the base row, the row with the factor changed). The student's final
#: code trains the difference loss (the ratio line is commented out), loads only the
#: numerical ``N_*.npy`` columns (so the categorical sex column is dropped) and trains
#: ``num_epochs=10`` by default; the student protocol here keeps sex and trains 30 epochs.
FACTORS: list[tuple[str, str, str, str]] = [
    ("F1", "ModernNCA protocol: loss modernnca -> ratio_eps (+1e-10)", "modernnca_f32", "modernnca_ratio_eps"),
    ("F2", "ModernNCA protocol: loss modernnca -> difference", "modernnca_f32", "modernnca_difference"),
    ("F3", "ModernNCA protocol: loss modernnca -> ratio (unprotected)", "modernnca_f32", "modernnca_ratio"),
    ("F4", "student protocol, difference loss: one-hot sex -> sex dropped (numerical columns only)",
     "seed_difference", "seed_difference_no_sex"),
    ("F5", "student protocol, difference loss: 30 epochs -> 10 epochs (the student's default)",
     "seed_difference", "seed_difference_10_epochs"),
]
#: Two-sided confidence level of the paired intervals.
CONFIDENCE = 0.95


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
