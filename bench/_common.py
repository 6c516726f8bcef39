"""Shared helpers of the benchmark scripts: machine facts, interleaved timing, tables, output.

Every benchmark script is runnable alone (``python bench/NAME.py [--quick]``); it prints
one Markdown section and, with ``--json PATH``, writes its section and raw numbers for
``bench/run_all.py``. Nothing here is imported by the library.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import re
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
BENCH = REPO / "bench"
#: Above this 1-minute load average (on any core count) timings are flagged as measured under load.
LOAD_LIMIT = 1.5


# --------------------------------------------------------------------------- machine


def load_average() -> tuple[float, float, float] | None:
    try:
        return os.getloadavg()
    except OSError:
        return None


def machine_info() -> dict[str, Any]:
    import torch

    from stablenca.machine import cpu_model

    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:
        usable = os.cpu_count()
    return {
        "cpu": cpu_model(),
        "cores": os.cpu_count(),
        "usable_cores": usable,
        "torch": str(torch.__version__),
        "torch_threads": torch.get_num_threads(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "load_average": load_average(),
        "date": datetime.datetime.now().isoformat(timespec="seconds"),
        # what numpy was told at import (the CLI sets it on AMD Zen 4: stablenca.runtime.numpy_dispatch)
        "numpy_disabled_features": os.environ.get("NPY_DISABLE_CPU_FEATURES"),
    }


def under_load(info: dict[str, Any]) -> bool:
    load = info.get("load_average")
    return bool(load) and load[0] > LOAD_LIMIT


def settle(limit: float = 1.0, longest: float = 120.0, poll: float = 5.0) -> float:
    """Sleep until the 1-minute load average is below ``limit`` (at most ``longest`` s); the seconds waited.

    The load average is the only cheap sign of other work that the scripts record, but it
    decays with a one-minute time constant: two cores kept busy by the previous benchmark
    leave it near 2 for about 40 s after they stop, and the next script would flag itself
    as measured under load (:data:`LOAD_LIMIT`) with nothing else running. Waiting here lets
    the number mean other processes again. Off Unix (no load average) nothing is waited.
    """
    waited = 0.0
    while waited < longest:
        load = load_average()
        if load is None or load[0] < limit:
            break
        time.sleep(poll)
        waited += poll
    return waited


def machine_line(info: dict[str, Any]) -> str:
    load = info.get("load_average")
    load_text = "n/a" if not load else " / ".join(f"{x:.2f}" for x in load)
    return (f"{info['cpu']}, {info['cores']} cores ({info['usable_cores']} usable), torch {info['torch']} "
            f"({info['torch_threads']} threads), Python {info['python']}"
            + (f", numpy with `NPY_DISABLE_CPU_FEATURES={info['numpy_disabled_features']}`"
               if info.get("numpy_disabled_features") is not None else "")
            + f"; load average (1/5/15 min) at start {load_text}")


def load_warning(info: dict[str, Any]) -> str:
    if not under_load(info):
        return ""
    return (f"> **Measured under load** (1-minute load average {info['load_average'][0]:.2f} > {LOAD_LIMIT} "
            f"at the start): absolute times are inflated and ratios are noisy; re-run on a quiet machine.\n\n")


# --------------------------------------------------------------------------- timing


def median(values: Sequence[float]) -> float:
    return float(statistics.median(values)) if values else float("nan")


def quartiles(values: Sequence[float]) -> tuple[float, float]:
    if len(values) < 2:
        v = values[0] if values else float("nan")
        return v, v
    q = statistics.quantiles(values, n=4, method="inclusive")
    return float(q[0]), float(q[2])


def interleaved(variants: dict[str, Callable[[], Any]], repeats: int, warmup: int = 1,
                before: dict[str, Callable[[], Any]] | None = None) -> dict[str, list[float]]:
    """Wall time of each variant, ``repeats`` rounds, variants interleaved (ABCD, BCDA, ...).

    Rotating the order each round keeps a slow start, a cache effect or a noisy
    neighbour from always hitting the same variant. ``warmup`` untimed rounds first.
    ``before[name]``, when given, runs untimed before each call of that variant.
    """
    names = list(variants)
    before = before or {}
    for _ in range(warmup):
        for name in names:
            if name in before:
                before[name]()
            variants[name]()
    times: dict[str, list[float]] = {name: [] for name in names}
    for r in range(repeats):
        order = names[r % len(names):] + names[:r % len(names)]
        for name in order:
            if name in before:
                before[name]()
            started = time.perf_counter()
            variants[name]()
            times[name].append(time.perf_counter() - started)
    return times


def paired_ratios(times: dict[str, list[float]], baseline: str) -> dict[str, list[float]]:
    """Per-round ratio variant / baseline (the rounds are interleaved, so each pair saw similar load)."""
    base = times[baseline]
    return {name: [t / b for t, b in zip(values, base)] for name, values in times.items()}


def fmt_seconds(seconds: float) -> str:
    if seconds != seconds:  # NaN
        return "n/a"
    if seconds >= 100:
        return f"{seconds:.0f} s"
    if seconds >= 1:
        return f"{seconds:.2f} s"
    if seconds >= 1e-3:
        return f"{seconds * 1e3:.1f} ms"
    return f"{seconds * 1e6:.0f} µs"


def fmt_bytes(n: float | None) -> str:
    if n is None:
        return "n/a"
    for unit, size in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if abs(n) >= size:
            return f"{n / size:.1f} {unit}"
    return f"{n:.0f} B"


# --------------------------------------------------------------------------- memory


def _status_kib(field: str) -> int | None:
    try:
        text = Path("/proc/self/status").read_text()
    except OSError:
        return None
    match = re.search(rf"^{field}:\s+(\d+)\s+kB", text, re.M)
    return int(match.group(1)) if match else None


def rss_bytes() -> int | None:
    kib = _status_kib("VmRSS")
    return None if kib is None else kib * 1024


def peak_rss_bytes() -> int | None:
    """Peak resident set (VmHWM), falling back to ru_maxrss."""
    kib = _status_kib("VmHWM")
    if kib is None:
        import resource

        kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return kib * 1024


def reset_peak_rss() -> bool:
    """Reset VmHWM to the current RSS (Linux >= 4.0: ``echo 5 > /proc/self/clear_refs``)."""
    try:
        with open("/proc/self/clear_refs", "w") as handle:
            handle.write("5")
        return True
    except OSError:
        return False


# --------------------------------------------------------------------------- output


def md_table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    lines = ["| " + " | ".join(str(h) for h in headers) + " |",
             "|" + "|".join("---" for _ in headers) + "|"]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def parser(description: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--quick", action="store_true", help="a fast smoke version (small sizes, few repeats)")
    p.add_argument("--json", metavar="PATH", default=None,
                   help="also write {'markdown': ..., 'data': ...} to PATH (used by bench/run_all.py)")
    p.add_argument("--threads", type=int, default=None,
                   help="torch threads (default: torch's, i.e. one per core); also passed to subprocesses")
    p.add_argument("--allocator", choices=("retain", "system"), default="retain",
                   help="retain: keep freed memory for reuse, as the stablenca CLI does "
                        "(stablenca.retain_freed_memory); system: glibc's defaults (what a plain script gets)")
    return p


def parse(p: argparse.ArgumentParser, argv=None, *, default_threads: int | None = None) -> argparse.Namespace:
    """Parse, then apply ``--threads`` to torch here and to the subprocesses' environment.

    ``default_threads``: torch threads in this process when ``--threads`` is not given (the issue's
    setting, 2, for the scripts that compare against TALENT); ``args.threads`` stays None then.
    """
    args = p.parse_args(argv)
    if args.threads is None and default_threads is not None:
        import torch

        torch.set_num_threads(default_threads)
    if args.allocator == "retain":
        from stablenca.runtime.allocator import retain_freed_memory

        args.allocator_applied = retain_freed_memory()
    else:  # subprocesses (the CLI) leave glibc's defaults alone too
        os.environ["STABLENCA_ALLOCATOR"] = "system"
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
        os.environ["OMP_NUM_THREADS"] = os.environ["MKL_NUM_THREADS"] = str(args.threads)
    return args


def thread_canary(repeats: int = 15) -> dict[str, float]:
    """Median time of an elementwise op and a matmul with 1 thread and with one thread per core.

    On a quiet machine one thread per core (torch's default) is faster; on an
    oversubscribed one OpenMP threads wait for each other and it is *slower*, which
    makes every multi-threaded timing in the report unreliable.
    """
    import torch

    current = torch.get_num_threads()
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:
        cores = os.cpu_count() or 1
    m = torch.randn(1024, 2048)
    a, b = torch.randn(1024, 128), torch.randn(128, 2048)
    out: dict[str, float] = {"default_threads": cores}
    try:
        for threads in sorted({1, cores}):
            torch.set_num_threads(threads)
            t = interleaved({"exp": lambda: torch.exp(m), "mm": lambda: a @ b}, repeats, warmup=2)
            out[f"exp_{threads}"] = median(t["exp"])
            out[f"mm_{threads}"] = median(t["mm"])
    finally:
        torch.set_num_threads(current)
    return out


def canary_line(c: dict[str, float]) -> str:
    n = int(c["default_threads"])
    if n == 1:
        return "1 thread: no multi-threading to check."
    ratio_exp, ratio_mm = c[f"exp_{n}"] / c["exp_1"], c[f"mm_{n}"] / c["mm_1"]
    verdict = ("threads help as expected" if max(ratio_exp, ratio_mm) < 0.9 else
               "**the machine is oversubscribed: multi-threaded ops are no faster (or slower) than one thread**")
    return (f"thread canary: exp on 1024×2048 {fmt_seconds(c['exp_1'])} (1 thread) vs {fmt_seconds(c[f'exp_{n}'])} "
            f"({n} threads), matmul 1024×128×2048 {fmt_seconds(c['mm_1'])} vs {fmt_seconds(c[f'mm_{n}'])}: "
            f"{ratio_exp:.2f}× / {ratio_mm:.2f}×; {verdict}.")


def command_line(script: str, args: argparse.Namespace, extra: str = "") -> str:
    threads = f" --threads {args.threads}" if getattr(args, "threads", None) else ""
    allocator = " --allocator system" if getattr(args, "allocator", "retain") == "system" else ""
    return f"python bench/{script}" + (" --quick" if getattr(args, "quick", False) else "") + threads + allocator + extra


def section(title: str, command: str, info: dict[str, Any], body: str) -> str:
    end = load_average()
    end_text = "" if not end else f" (at the end of this section: {end[0]:.2f})"
    return (f"## {title}\n\n"
            f"Regenerate: `{command}`\n\n"
            f"Machine: {machine_line(info)}{end_text}.\n\n"
            f"{load_warning(info)}{body.rstrip()}\n")


def emit(markdown: str, data: dict[str, Any], args: argparse.Namespace) -> None:
    print(markdown)
    if args.json:
        emit_json({"markdown": markdown, "data": data}, args.json)


def emit_json(payload: dict[str, Any], path: str | os.PathLike) -> None:
    """Write ``payload`` atomically (temporary file, then ``os.replace``)."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(payload, indent=1, default=str))
    os.replace(tmp, path)


def stderr(*parts: Any) -> None:
    print(*parts, file=sys.stderr, flush=True)
