"""JSON and JSONL that survive NaN and crashes: atomic writes, per-line appends, deferred Ctrl-C.

What goes where in a run directory is :mod:`stablenca.artifacts`' business; this module
only knows how to write and read files safely.

NaN and ±Inf are written as the JSON extensions ``NaN``/``Infinity``/``-Infinity``
(what Python's json and pandas read back), never dropped.

>>> import tempfile, json
>>> with tempfile.TemporaryDirectory() as tmp:
...     path = Path(tmp) / "r.jsonl"
...     with JsonlWriter(path) as writer:
...         writer.write({"step": 0, "loss": float("nan")})
...     read_jsonl(path)[0]["loss"]
nan
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import signal
import tempfile
import threading
from pathlib import Path
from typing import Any

from .errors import OutputError


def to_jsonable(value: Any) -> Any:
    """Tensors, numpy scalars and tuples to plain JSON types (NaN/Inf kept as floats)."""
    if type(value) in _PLAIN:  # most values of a record: skip the checks below (hasattr is slow on a miss)
        return value
    if isinstance(value, dict):
        return {str(k): to_jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [to_jsonable(v) for v in value]
    if hasattr(value, "tolist"):  # torch / numpy
        return to_jsonable(value.tolist())
    if isinstance(value, Path):
        return str(value)
    return value


_PLAIN = frozenset({float, int, bool, str, type(None)})


def json_safe(value: Any) -> Any:
    """Replace non-finite floats by the strings "NaN", "Infinity", "-Infinity" (strict-JSON safe).

    >>> json_safe({"a": [float("nan"), 1.0, float("-inf")]})
    {'a': ['NaN', 1.0, '-Infinity']}
    """
    if isinstance(value, float):
        if math.isnan(value):
            return "NaN"
        if math.isinf(value):
            return "Infinity" if value > 0 else "-Infinity"
        return value
    if isinstance(value, dict):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    return value


def dumps(value: Any, **kwargs) -> str:
    return json.dumps(to_jsonable(value), allow_nan=True, **kwargs)


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """Write ``text`` to a temporary file beside ``path``, fsync, then rename over it."""
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write ``data`` to ``.NAME.*.tmp`` beside ``path``, fsync, then rename over it.

    A reader sees the old file or the new one, never a part; the temporary file is
    removed on any failure (Ctrl-C included). An OS error is an :class:`OutputError`.
    """
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as exc:
        raise OutputError(f"cannot write {path}: {exc.strerror or type(exc).__name__}",
                          fix="choose a writable --out directory") from None
    try:
        with os.fdopen(fd, "wb") as handle:
            os.fchmod(handle.fileno(), 0o666 & ~_UMASK)  # mkstemp makes 0600; use the usual permissions
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException as exc:
        with _suppress():
            os.unlink(tmp)
        if isinstance(exc, OSError):
            raise OutputError(f"cannot write {path}: {exc.strerror or type(exc).__name__}",
                              fix="free some disk space or choose a writable --out directory") from None
        raise


def _read_umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


#: Read once at import: os.umask can only be read by setting it, which races with other threads.
_UMASK = _read_umask()


def atomic_write_json(path: str | os.PathLike, value: Any) -> None:
    atomic_write_text(path, dumps(value, indent=2) + "\n")


class _suppress:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return True


class JsonlWriter:
    """Append one JSON object per line, each line in one unbuffered write (a crash loses nothing written).

    This append-only stream is the one exception to "every file is written atomically":
    a cut last line can only come from the machine dying mid-write, and
    :func:`read_jsonl` ignores it.
    """

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._handle = open(self.path, "ab", buffering=0)
        except OSError as exc:
            raise OutputError(f"cannot write {self.path}: {exc.strerror}",
                              fix="choose a writable --out directory") from None

    def write(self, record: dict[str, Any]) -> None:
        self._write_text(dumps(record) + "\n")

    def write_plain(self, records: list[dict[str, Any]]) -> None:
        """Append records whose keys are str and whose values are plain JSON (str, int, float, bool,
        None), in one write: the text :meth:`write` gives, without :func:`to_jsonable`'s walk."""
        if records:
            self._write_text("".join(json.dumps(record, allow_nan=True) + "\n" for record in records))

    def write_lines(self, text: str) -> None:
        """Append text that is already JSON lines (each ending in a newline), in one write."""
        if text:
            self._write_text(text)

    def _write_text(self, text: str) -> None:
        data = text.encode("utf-8")
        try:
            with deferred_interrupts():  # never leave half a line behind on Ctrl-C
                written = self._handle.write(data)
                while written is not None and written < len(data):  # a short write (rare): finish the lines
                    data = data[written:]
                    written = self._handle.write(data)
        except OSError as exc:
            raise OutputError(f"cannot write {self.path}: {exc.strerror or type(exc).__name__}",
                              fix="free some disk space or choose a writable --out directory") from None

    def close(self) -> None:
        self._handle.close()

    def __enter__(self) -> JsonlWriter:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


@contextlib.contextmanager
def deferred_interrupts():
    """Hold a Ctrl-C (SIGINT) that arrives inside the block and raise it when the block ends.

    So a block (one training step and its record, one file write) is done whole or not
    at all. A second Ctrl-C inside the block raises at once, so a block that hangs can
    still be stopped. Only the main thread can install signal handlers: elsewhere, and
    when SIGINT is not Python's default handler (ignored, or the embedding program's
    own, or an enclosing ``deferred_interrupts``), this does nothing.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    try:
        previous = signal.getsignal(signal.SIGINT)
    except (ValueError, OSError):
        yield
        return
    if previous is not signal.default_int_handler:
        yield
        return
    received = []

    def hold(signum, frame):
        received.append(signum)
        if len(received) > 1:
            raise KeyboardInterrupt

    signal.signal(signal.SIGINT, hold)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
    if received:
        raise KeyboardInterrupt


#: Set once SIGTERM arrived inside :func:`sigterm_as_interrupt` (the exit code is then 143, not 130).
TERMINATED = threading.Event()


@contextlib.contextmanager
def sigterm_as_interrupt():
    """Inside the block SIGTERM does what Ctrl-C does, and :data:`TERMINATED` is set.

    torchrun, SLURM and Kubernetes stop a job with SIGTERM, whose default kills the
    process at once. Here it is handed to the current SIGINT handler, so the same
    machinery applies: :func:`deferred_interrupts` finishes the step, the run is marked
    interrupted, the summary and the report are written. Only the main thread can
    install a handler, and one that is already installed (not the default) is kept.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    try:
        previous = signal.getsignal(signal.SIGTERM)
    except (ValueError, OSError):
        yield
        return
    if previous not in (signal.SIG_DFL, None):
        yield
        return

    def as_interrupt(signum, frame):
        TERMINATED.set()
        handler = signal.getsignal(signal.SIGINT)
        if callable(handler):
            handler(signal.SIGINT, frame)
        else:  # SIGINT ignored: still stop, as SIGTERM asks
            raise KeyboardInterrupt

    TERMINATED.clear()
    signal.signal(signal.SIGTERM, as_interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def read_jsonl(path: str | os.PathLike) -> list[dict[str, Any]]:
    """Read records back; a last line cut by a crash is ignored."""
    records = []
    path = Path(path)
    if not path.exists():
        return records
    with open(path, encoding="utf-8") as handle:
        for line in handle:
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError:
                break  # a partial last line from an interrupted write
    return records


def read_json(path: str | os.PathLike, default: Any = None) -> Any:
    path = Path(path)
    if not path.exists():
        return default
    with open(path, encoding="utf-8") as handle:
        return json.load(handle)


def finite_or_none(value: float) -> float | None:
    return value if isinstance(value, float) and math.isfinite(value) else None
