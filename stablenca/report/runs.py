"""What a diagnose run set recorded, as the report and the figures read it.

Everything comes through :mod:`stablenca.artifacts` (the schema); this module adds the
views both consumers need: per-step series, the chain as link dicts, the check JSON's
per-formulation curves, and one spelling of a number.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np

from .. import artifacts, floats
from ..errors import DataError


def num(value: Any) -> float:
    """A recorded value as a float: NaN for missing, JSON-safe strings ('NaN', 'Infinity') decoded."""
    if value is None or isinstance(value, bool):
        return math.nan if value is None else float(value)
    if isinstance(value, (int, float)):
        return float(value)
    if isinstance(value, str):
        try:
            return float(value.replace("Infinity", "inf"))
        except ValueError:
            return math.nan
    return math.nan


# --------------------------------------------------------------------------- recorded data


@dataclasses.dataclass
class RunData:
    """One run of a diagnose output, as recorded (nothing recomputed)."""

    name: str
    path: Path
    entry: dict[str, Any]  # the run's summary.json entry (synthesised when the summary lacks it)
    config: dict[str, Any]
    records: list[dict[str, Any]]
    epochs: list[dict[str, Any]]
    result: dict[str, Any] | None
    finding: dict[str, Any] | None
    in_summary: bool = True

    @property
    def model(self) -> str:
        return str(self.entry.get("model") or self.config.get("model") or "?")

    @property
    def loss(self) -> str:
        return str(self.entry.get("loss") or self.config.get("loss") or "?")

    @property
    def dtype(self) -> str:
        return floats.dtype_name(self.entry.get("dtype") or self.config.get("dtype") or "float32")

    @property
    def status(self) -> str:
        return str(self.entry.get("status") or "interrupted")

    @property
    def interrupted(self) -> bool:
        return self.status == "interrupted"

    @property
    def first_nonfinite(self) -> dict[str, Any] | None:
        return self.entry.get("first_nonfinite")

    @property
    def failure_step(self) -> int | None:
        first = self.first_nonfinite
        if first and first.get("step") is not None:
            return int(first["step"])
        at = self.entry.get("diverged_at")
        return int(at["step"]) if at and at.get("step") is not None else None

    def has(self, key: str) -> bool:
        return any(key in r for r in self.records)

    def steps(self) -> np.ndarray:
        return np.array([num(r.get("step", i)) for i, r in enumerate(self.records)], dtype=float)

    def series(self, key: str) -> np.ndarray:
        """One recorded key per step (NaN where a record lacks it; NaN/inf values kept)."""
        return np.array([num(r.get(key)) for r in self.records], dtype=float)

    def grad_keys(self) -> list[str]:
        keys: list[str] = []
        for record in self.records:
            for key in record:
                if key.startswith("grad_2.0_norm/") and key not in keys:
                    keys.append(key)
        return keys

    def chain_links(self) -> list[dict[str, Any]]:
        """The root-cause chain as link dicts, first non-finite op first (finding.json, else the summary)."""
        for source in (self.finding or {}, self.first_nonfinite or {}):
            chain = source.get("chain")
            if isinstance(chain, list) and chain:
                return [link for link in chain if isinstance(link, dict)]
        return []

    def chain_text(self) -> str | None:
        """The same chain as the tracer's one display line."""
        return (self.first_nonfinite or {}).get("chain_text") or (self.finding or {}).get("chain_text")


@dataclasses.dataclass
class RunSet:
    """A diagnose output directory: its summary and its runs in summary order."""

    out: Path
    summary: dict[str, Any]
    runs: list[RunData]

    @property
    def interrupted(self) -> bool:
        return bool(self.summary.get("interrupted")) or any(r.interrupted for r in self.runs)

    def run(self, loss: str, model: str | None = None) -> RunData | None:
        for run in self.runs:
            if run.loss == loss and (model is None or run.model == model):
                return run
        return None


def load_run_set(out: str | Path) -> RunSet:
    """Read a diagnose output directory through :mod:`stablenca.artifacts` (one-line errors)."""
    out = Path(out)
    summary = artifacts.read_summary(out)
    entries, extra = artifacts.run_names(out, summary)
    runs = [load_run(out / str(entry["run"]), entry) for entry in entries]
    for name in extra:  # a run that was cut before its summary entry was written
        files = artifacts.read_run(out / name)
        runs.append(RunData(name=name, path=files.path, entry=artifacts.entry_from_files(name, files),
                            config=files.config, records=files.records, epochs=files.epochs,
                            result=files.result, finding=files.finding, in_summary=False))
    return RunSet(out, summary, runs)


def load_run(run_dir: str | Path, entry: dict[str, Any]) -> RunData:
    """One run directory with its summary entry (as read back from ``summary.json``)."""
    files = artifacts.read_run(run_dir)
    return RunData(name=str(entry["run"]), path=files.path, entry=entry, config=files.config,
                   records=files.records, epochs=files.epochs, result=files.result, finding=files.finding)


def format_number(value: float | None, *, small_digits: int = 2) -> str:
    """Compact text for a number: NaN/inf spelled out, 4 significant digits, ``.Ng`` when tiny or huge."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "NaN"
    value = float(value)
    if math.isinf(value):
        return "inf" if value > 0 else "-inf"
    if value == 0:
        return "0"
    if abs(value) >= 1e5 or abs(value) < 1e-3:
        return f"{value:.{small_digits}g}"
    return f"{value:.4g}"



# --------------------------------------------------------------------------- the check JSON


_CURVE_KEYS = ("per_scale", "curve", "curves", "by_scale", "sweep")
_SCALE_KEYS = ("scale", "s")
_LOSS_BITS_KEYS = ("loss_bits_median", "loss_bits", "bits", "loss_bits_max")
_GRAD_BITS_KEYS = ("grad_bits_median", "grad_bits", "grad_bits_max")
_FINITE_KEYS = ("finite_fraction", "finite")
_LOSS_FINITE_KEYS = ("loss_finite_fraction", "loss_finite")


def _first(mapping: dict[str, Any], keys: Iterable[str]) -> Any:
    for key in keys:
        if key in mapping:
            return mapping[key]
    return None


def _points(raw: Any) -> list[dict[str, Any]]:
    """Per-scale points from a list of dicts or a dict of parallel lists."""
    if isinstance(raw, dict):
        scales = _first(raw, _SCALE_KEYS + ("scales",))
        if not isinstance(scales, list):
            return []
        return [{k: (v[i] if isinstance(v, list) and i < len(v) else None) for k, v in raw.items()} | {"scale": s}
                for i, s in enumerate(scales)]
    if isinstance(raw, list):
        return [p for p in raw if isinstance(p, dict)]
    return []


def check_curves(data: dict[str, Any]) -> list[dict[str, Any]]:
    """Normalise ``stablenca check --json`` output for figure 3 (the schema adapter).

    Input: ``{"sweep": {...}, "results": [row, ...]}`` with, per row, ``loss``, ``dtype``,
    ``breakdown_scale``, ``breakdown_reason``, ``threshold_bits`` and ``populations``
    (``paired``/``singleton``: ``finite_fraction``, ``loss_bits_median``/``_max``, ...).
    Per-scale curves are read when a row carries them under ``per_scale`` (or ``curve``,
    ``by_scale``): a list of ``{"scale", "loss_bits_median", "grad_bits_median",
    "finite_fraction"}`` or a dict of parallel lists; a population-keyed dict of such
    (``{"paired": [...]}``) is accepted too, the ``paired`` population is drawn.

    Output, one dict per (loss, dtype): ``loss``, ``dtype``, ``threshold_bits``,
    ``breakdown_scale``, ``breakdown_reason``, ``loss_bits_median``, ``loss_bits_max``,
    ``finite_fraction`` (population a), ``unpatched`` (the loss a patched formulation is
    also measured against, or None) and ``curve`` (sorted points with ``scale``,
    ``loss_bits``, ``grad_bits``, ``finite`` (loss and gradient), ``loss_finite``,
    ``unpatched_loss_bits`` (NaN where not measured); empty when the JSON has no
    per-scale data).
    """
    if not isinstance(data, dict) or not isinstance(data.get("results"), list):
        raise DataError("the check JSON has no 'results' list",
                        fix="pass the output of `stablenca check --json`")
    rows = []
    for row in data["results"]:
        if not isinstance(row, dict) or "loss" not in row or "dtype" not in row:
            continue
        raw = _first(row, _CURVE_KEYS)
        if isinstance(raw, dict) and "paired" in raw:
            raw = raw["paired"]
        curve = []
        for point in _points(raw):
            scale = num(_first(point, _SCALE_KEYS))
            if not (math.isfinite(scale) and scale > 0):
                continue
            finite = num(_first(point, _FINITE_KEYS))
            loss_finite = _first(point, _LOSS_FINITE_KEYS)
            curve.append({"scale": scale, "loss_bits": num(_first(point, _LOSS_BITS_KEYS)),
                          "grad_bits": num(_first(point, _GRAD_BITS_KEYS)), "finite": finite,
                          # older check JSONs lack it: then "finite" (loss and gradient) stands in
                          "loss_finite": finite if loss_finite is None else num(loss_finite),
                          "unpatched_loss_bits": num(point.get("unpatched_loss_bits_median"))})
        curve.sort(key=lambda p: p["scale"])
        paired = (row.get("populations") or {}).get("paired") or {}
        rows.append({"loss": str(row["loss"]), "dtype": str(row["dtype"]),
                     "threshold_bits": num(row.get("threshold_bits")),
                     "breakdown_scale": num(row.get("breakdown_scale")),
                     "breakdown_reason": str(row.get("breakdown_reason") or ""),
                     "loss_bits_median": num(paired.get("loss_bits_median")),
                     "loss_bits_max": num(paired.get("loss_bits_max")),
                     "finite_fraction": num(paired.get("finite_fraction")),
                     "unpatched": row.get("unpatched"),
                     "curve": curve})
    return rows


def load_check(path: str | Path) -> dict[str, Any]:
    """Read a ``stablenca check --json`` file (one-line error when it is not one)."""
    data = artifacts.read_check(path)
    check_curves(data)  # validates the shape
    return data


