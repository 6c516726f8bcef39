"""The run directory: its one schema, and the only code that reads or writes it.

Layout of ``stablenca diagnose --out DIR`` (schema :data:`SCHEMA_VERSION`)::

    DIR/summary.json            {"schema": 1, ...} and one entry per run (atomic, updated as runs end)
    DIR/check.json              a small ``stablenca check --json`` of the formulations that ran
    DIR/<run>/config.json       the TrainConfig
    DIR/<run>/records.jsonl     one line per training batch, flushed per batch
    DIR/<run>/epochs.jsonl      one line per epoch (validation metrics)
    DIR/<run>/result.json       the FitResult (status, test metrics)
    DIR/<run>/finding.json      the traced first non-finite op: ``Finding.to_dict()`` (failed runs)
    DIR/<run>/capsule.pt        the failing step's pre-state (failed runs; built by :mod:`stablenca.runtime.sentinel`)

A capsule is ``torch.save`` of a dict (:data:`CAPSULE_FORMAT`, :data:`CAPSULE_VERSION`); it is
written atomically by :func:`save_capsule` and read back by :func:`load_capsule` with
``torch.load(weights_only=True)``, so reading one cannot execute code. torch is imported only
there, so the rest of this module (the report, ``stablenca --help``) stays free of it.

A finding has one shape everywhere: ``Finding.to_dict()``. Its ``chain`` is a list of link
dicts and ``chain_text`` the same chain as one display line, both written by the tracer; a
summary entry's ``first_nonfinite`` is the step (``epoch``, ``step``) plus a subset of those
keys (:data:`FINDING_KEYS`), never a second spelling, and nothing reads display text back.

Reading a summary without a schema version (written before it had one) or with another
version is a :class:`stablenca.errors.DataError` that says so and how to fix it.
"""

from __future__ import annotations

import dataclasses
import io
import pickle
import re
import shutil
import tempfile
import warnings
from pathlib import Path
from typing import Any

from .errors import CapsuleError, DataError, OutputError
from .records import atomic_write_bytes, atomic_write_json, read_json, read_jsonl

#: The version of the run-directory schema this stablenca writes and reads.
SCHEMA_VERSION = 1

SUMMARY = "summary.json"
CHECK = "check.json"
CONFIG = "config.json"
RECORDS = "records.jsonl"
EPOCHS = "epochs.jsonl"
RESULT = "result.json"
FINDING = "finding.json"
CAPSULE = "capsule.pt"
#: The files of one run directory (what ``--force`` removes before a new run set).
RUN_FILES = (CONFIG, RECORDS, EPOCHS, RESULT, FINDING, CAPSULE)
#: The files of the run set itself.
SET_FILES = (SUMMARY, "report.md", "report.zh.md", CHECK)

#: The keys of ``Finding.to_dict()`` a summary's ``first_nonfinite`` carries.
FINDING_KEYS = ("phase", "op", "backward_node", "module", "source", "pattern", "chain", "chain_text",
                "root_cause", "inputs", "verification")

CAPSULE_FORMAT = "stablenca-capsule"
CAPSULE_VERSION = 1
#: The keys a capsule must hold to be replayed.
REQUIRED_KEYS = ("config", "epoch", "step", "step_in_epoch", "batch_indices", "model_state", "optimizer_state",
                 "rng_state")

_REDIAGNOSE = "re-run `stablenca diagnose` with this stablenca to write the run again"


# --------------------------------------------------------------------------- writing


def new_summary(kind: str = "diagnose", **fields: Any) -> dict[str, Any]:
    """A run set's summary: who wrote it (``diagnose`` or ``watch``) and the schema version first,
    then ``fields`` (``runs`` starts empty unless given)."""
    return {"stablenca": kind, "schema": SCHEMA_VERSION, **fields, "runs": list(fields.get("runs", []))}


def write_summary(out: str | Path, summary: dict[str, Any]) -> None:
    atomic_write_json(Path(out) / SUMMARY, summary)


def write_run_json(run_dir: str | Path, name: str, value: Any) -> None:
    """``config.json``, ``result.json`` or ``finding.json`` of one run, atomically."""
    if name not in (CONFIG, RESULT, FINDING):
        raise ValueError(f"{name} is not a JSON file of a run directory")
    atomic_write_json(Path(run_dir) / name, value)


def write_check(out: str | Path, document: dict[str, Any]) -> None:
    """``check.json`` of a run set (a ``stablenca check --json`` document), atomically."""
    atomic_write_json(Path(out) / CHECK, document)


def save_capsule(path: str | Path, capsule: dict[str, Any]) -> None:
    """``torch.save`` a capsule dict to ``path`` atomically (a cut write never leaves half a capsule)."""
    import torch  # lazy: only capsules need torch

    buffer = io.BytesIO()
    torch.save(capsule, buffer)
    atomic_write_bytes(path, buffer.getvalue())


def first_nonfinite(diverged_at: dict[str, Any] | None, finding: dict[str, Any] | None) -> dict[str, Any] | None:
    """A summary entry's ``first_nonfinite``: the failing step and its finding (a ``Finding.to_dict()``).

    >>> first_nonfinite({"epoch": 2, "step": 8}, None)["root_cause"]["kind"]
    'unknown'
    """
    if diverged_at is None:
        return None
    entry: dict[str, Any] = {"epoch": diverged_at.get("epoch"), "step": diverged_at.get("step")}
    if finding is None:
        entry.update({key: None for key in FINDING_KEYS})
        entry.update(chain=[], chain_text=None,
                     root_cause={"op": None, "kind": "unknown",
                                 "detail": "the replayed step was finite (non-deterministic step?)"})
        return entry
    entry.update({key: finding.get(key) for key in FINDING_KEYS})
    return entry


# --------------------------------------------------------------------------- the output directory


def prepare_out_dir(out: str | Path, *, force: bool) -> Path:
    """An output directory for a new run set; refuse to mix with an earlier one unless ``force``.

    With ``force`` the earlier run set's files that stablenca wrote are removed first,
    so old and new runs never mix.
    """
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise OutputError(f"--out {out} exists and is not a directory", fix="choose another --out path")
    if (out / SUMMARY).exists() or any(out.glob(f"*/{RECORDS}")):
        if not force:
            raise OutputError(f"{out} already holds a stablenca run",
                              fix="pass --force to replace it, or choose another --out directory")
        _remove_run_set(out)
    try:
        out.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=out):  # can we create files there? (removed on close)
            pass
    except OSError as exc:
        raise OutputError(f"cannot write to {out}: {exc.strerror}",
                          fix="choose a writable --out directory") from None
    return out


def _remove_run_set(out: Path) -> None:
    for run_dir in sorted({p.parent for pattern in (f"*/{RECORDS}", f"*/{CONFIG}") for p in out.glob(pattern)}):
        for name in RUN_FILES:
            (run_dir / name).unlink(missing_ok=True)
        figures = run_dir / "figures"
        if figures.is_dir():
            shutil.rmtree(figures)
    for name in SET_FILES:
        (out / name).unlink(missing_ok=True)
    for folder in ("figures", "tensorboard"):  # tensorboard: written by stablenca export-tensorboard
        if (out / folder).is_dir():
            shutil.rmtree(out / folder)


# --------------------------------------------------------------------------- reading


def read_summary(out: str | Path) -> dict[str, Any]:
    """The summary of a run set, checked against :data:`SCHEMA_VERSION` (one-line errors)."""
    out = Path(out)
    fix = "pass the --out directory of a `stablenca diagnose` run"
    if not out.is_dir():
        raise DataError(f"{out} is not a directory", fix=fix)
    path = out / SUMMARY
    try:
        summary = read_json(path)
    except (OSError, ValueError) as exc:
        raise DataError(f"{path} is not readable JSON ({type(exc).__name__})",
                        fix="re-run stablenca diagnose, or pass another directory") from None
    if summary is None:
        raise DataError(f"{out} has no {SUMMARY}, so it is not a stablenca diagnose output", fix=fix)
    if not isinstance(summary, dict) or not isinstance(summary.get("runs", []), list):
        raise DataError(f"{path} is not a stablenca diagnose summary", fix=fix)
    version = summary.get("schema")
    if version is None:
        raise DataError(f"{path} was written by an older stablenca (no schema version; this one reads "
                        f"schema {SCHEMA_VERSION})", fix=_REDIAGNOSE)
    if version != SCHEMA_VERSION:
        raise DataError(f"{path} has schema {version!r}; this stablenca reads schema {SCHEMA_VERSION}",
                        fix=_REDIAGNOSE + " (or use the stablenca that wrote it)")
    return summary


def check_path(out: str | Path) -> Path | None:
    """``out/check.json`` when the run set has one, else None."""
    path = Path(out) / CHECK
    return path if path.is_file() else None


def read_check(path: str | Path) -> Any:
    """The JSON of a ``stablenca check --json`` file (one-line error when it is missing or not JSON);
    its shape is checked by :func:`stablenca.report.runs.load_check`."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"check file {path} does not exist",
                        fix="write it with `stablenca check --json > FILE`, or drop --check")
    try:
        return read_json(path)
    except (OSError, ValueError):
        raise DataError(f"check file {path} is not JSON",
                        fix="write it with `stablenca check --json > FILE`") from None


def load_capsule(path: str | Path) -> dict[str, Any]:
    """Load and validate a capsule; anything else raises :class:`CapsuleError` (one line)."""
    import torch  # lazy: only capsules need torch

    path = Path(path)
    if path.is_dir():
        raise CapsuleError(f"capsule {path} is a directory, not a capsule file",
                           fix=f"pass {path}/<run>/capsule.pt, written by stablenca diagnose for a failed run")
    if not path.is_file():
        raise CapsuleError(f"capsule {path} does not exist",
                           fix="pass the capsule.pt that stablenca diagnose wrote for a failed run")
    try:
        with open(path, "rb") as handle:
            magic = handle.read(4)
    except OSError as exc:
        raise CapsuleError(f"capsule {path} cannot be read ({exc.strerror})", fix="check the path and its permissions"
                           ) from None
    try:
        # weights_only=True: tensors and plain containers only, so a crafted pickle cannot run code.
        with warnings.catch_warnings():  # torch warns about odd pickle protocols in garbage files
            warnings.simplefilter("ignore")
            capsule = torch.load(path, weights_only=True, map_location="cpu")
    except Exception as exc:  # a refused pickle, a truncated zip, garbage bytes, ...
        blocked = re.search(r"GLOBAL (\S+)", str(exc)) if isinstance(exc, pickle.UnpicklingError) else None
        if blocked is not None:  # the pickle asks for a Python object: it could run code
            raise CapsuleError(f"{path} asks to load the Python object {blocked.group(1)}, which is refused for "
                               "safety (torch.load weights_only=True)",
                               fix="pass a capsule.pt written by stablenca diagnose; never load an untrusted pickle"
                               ) from None
        what = "is truncated or damaged" if magic == b"PK\x03\x04" else "is not a torch.save file"
        raise CapsuleError(f"{path} {what}, so it is not a readable capsule ({type(exc).__name__})",
                           fix="pass an untruncated capsule.pt written by stablenca diagnose") from None
    if not isinstance(capsule, dict) or capsule.get("format") != CAPSULE_FORMAT:
        raise CapsuleError(f"{path} is not a stablenca capsule",
                           fix="pass the capsule.pt that stablenca diagnose wrote for a failed run")
    missing = [key for key in REQUIRED_KEYS if key not in capsule]
    if missing:
        raise CapsuleError(f"capsule {path} lacks {', '.join(missing)}",
                           fix="re-run stablenca diagnose to write a complete capsule")
    if capsule.get("version") != CAPSULE_VERSION:
        raise CapsuleError(f"capsule {path} has version {capsule.get('version')}, expected {CAPSULE_VERSION}",
                           fix="re-run stablenca diagnose with this version of stablenca")
    return capsule


@dataclasses.dataclass
class RunFiles:
    """What one run directory holds, as written (missing or cut files read as empty)."""

    path: Path
    config: dict[str, Any]
    records: list[dict[str, Any]]
    epochs: list[dict[str, Any]]
    result: dict[str, Any] | None
    finding: dict[str, Any] | None


def read_run(run_dir: str | Path) -> RunFiles:
    run_dir = Path(run_dir)
    return RunFiles(path=run_dir, config=_json_or(run_dir / CONFIG, {}) or {},
                    records=_jsonl_or(run_dir / RECORDS), epochs=_jsonl_or(run_dir / EPOCHS),
                    result=_json_or(run_dir / RESULT, None), finding=_json_or(run_dir / FINDING, None))


def run_names(out: str | Path, summary: dict[str, Any]) -> tuple[list[dict[str, Any]], list[str]]:
    """The summary's run entries, and the run directories it lacks (a run cut before its entry)."""
    entries = [e for e in summary.get("runs", []) if isinstance(e, dict) and e.get("run")]
    named = {str(e["run"]) for e in entries}
    extra = [p.name for p in iter_run_dirs(out) if p.name not in named]
    return entries, extra


def entry_from_files(name: str, files: RunFiles) -> dict[str, Any]:
    """A summary entry for a run the summary lacks (cut before it ended), from its own files."""
    result = files.result if isinstance(files.result, dict) else {}
    config = files.config
    entry: dict[str, Any] = {"run": name, "model": config.get("model"), "loss": config.get("loss"),
                             "dtype": config.get("dtype"), "status": result.get("status") or "interrupted",
                             "diverged": bool(result.get("diverged")), "first_nonfinite": None,
                             "test": result.get("test") or {}, "excluded_rows": result.get("excluded_rows")}
    bad = next((r for r in files.records if r.get("finite") is False), None)
    if isinstance(files.finding, dict) and bad is not None:
        entry["first_nonfinite"] = first_nonfinite({"epoch": bad.get("epoch"), "step": bad.get("step")},
                                                   files.finding)
    return entry


def iter_run_dirs(out: str | Path) -> list[Path]:
    """The run directories of a run set (those with a ``config.json``), sorted."""
    return sorted(p.parent for p in Path(out).glob(f"*/{CONFIG}"))


def read_records(run_dir: str | Path) -> list[dict[str, Any]]:
    return _jsonl_or(Path(run_dir) / RECORDS)


def read_epochs(run_dir: str | Path) -> list[dict[str, Any]]:
    return _jsonl_or(Path(run_dir) / EPOCHS)


def read_result(run_dir: str | Path) -> Any:
    """``result.json`` of one run, or None when there is none (a cut file raises, as it is evidence)."""
    return read_json(Path(run_dir) / RESULT)


def _json_or(path: Path, default: Any) -> Any:
    try:
        return read_json(path, default)
    except (OSError, ValueError):  # a file cut by an interruption
        return default


def _jsonl_or(path: Path) -> list[dict[str, Any]]:
    try:
        return [r for r in read_jsonl(path) if isinstance(r, dict)]
    except OSError:
        return []
