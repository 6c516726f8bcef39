"""Run every benchmark and regenerate ``reports/benchmarks.md`` (atomically).

Each script runs in its own fresh interpreter (``python bench/NAME.py --json ...``)
so that imports, allocator state and peak memory do not leak between them; their
Markdown sections are assembled under a header with the machine, the load average at
the start and the end, a thread-contention canary and a table of the targets. The
report is written to a temporary file and moved into place with ``os.replace``, so an
interrupted run never leaves a half-written report. Between two scripts it waits (up to
2 minutes) until the 1-minute load average is below 1 (``_common.settle``): otherwise the
previous script's own load would flag the next as measured under load.

``python bench/run_all.py [--quick] [--threads N] [--only NAME ...] [--keep DIR] [--reuse DIR] [--out PATH]``

``--keep DIR`` keeps each script's JSON; ``--only tracer --reuse DIR`` re-runs one benchmark
and takes the other sections from DIR, so one section can be redone without the rest.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _common as C  # noqa: E402

#: (name, script, what it measures), in report order.
BENCHMARKS = (
    ("diagnose", "bench_diagnose.py", "`stablenca diagnose` end to end"),
    ("modernnca", "bench_modernnca.py", "ModernNCA float32 / float64 / straightforward port"),
    ("tracer", "bench_tracer.py", "tracer and sentinel overhead on a training step"),
    ("verify", "bench_verify.py", "counterfactual verification cost"),
    ("scale", "bench_scale.py", "candidates at scale: time and memory"),
    ("check", "bench_check.py", "`stablenca check`"),
    ("integrations", "bench_integrations.py", "DDP watch, Lightning callback, compiled model"),
    ("profile", "profile_hotspots.py", "profiles of the step, diagnose and the report"),
    ("proposals", "proposals.py", "prototypes of the proposed library changes"),
)


def run_one(script: str, quick: bool, threads: int | None, json_path: Path) -> tuple[float, int, str]:
    cmd = [sys.executable, str(C.BENCH / script), "--json", str(json_path)]
    if quick:
        cmd.append("--quick")
    if threads:
        cmd += ["--threads", str(threads)]
    C.stderr(f"run_all: {' '.join(cmd[1:])}")
    started = time.perf_counter()
    # stderr (progress) streams through; stdout (the section) is also in the JSON.
    proc = subprocess.run(cmd, stdout=subprocess.PIPE, text=True, cwd=C.REPO)
    return time.perf_counter() - started, proc.returncode, proc.stdout


def _ratio(data, model, variant):
    try:
        return C.median(data[model]["ratios"][variant])
    except (KeyError, TypeError):
        return None


def targets_table(results: dict[str, dict]) -> str:
    rows = []

    def verdict(ok):
        return "n/a" if ok is None else ("**met**" if ok else "**missed**")

    d = results.get("diagnose")
    if d:
        wall = d["median_wall"]
        rows.append(["`stablenca diagnose` defaults, end to end", "≤ 30 s", C.fmt_seconds(wall),
                     verdict(wall <= 30) if "epochs" not in d.get("command", "") else "n/a (quick run)"])
    m = results.get("modernnca")
    if m:
        rows.append(["ModernNCA fit per epoch vs straightforward port", "≥ 2×", f"{m['speedup_vs_port']:.2f}×",
                     verdict(m["speedup_vs_port"] >= 2)])
        rows.append(["ModernNCA evaluation alone vs port, Abalone val", "≥ 2×", f"{m['eval_speedup_abalone']:.2f}×",
                     verdict(m["eval_speedup_abalone"] >= 2)])
        rows.append(["ModernNCA evaluation alone vs port, scaled Abalone", "≥ 2×",
                     f"{m['eval_speedup_scaled']:.2f}×", verdict(m["eval_speedup_scaled"] >= 2)])
        rows.append(["ModernNCA epoch, float64 / float32", "(information)", f"{m['float64_over_float32']:.2f}×", ""])
    t = results.get("tracer")
    if t:
        for model, label in (("modernnca", "ModernNCA"), ("seed", "SeedNCA")):
            for variant, limit in (("sentinel", 1.10), ("full", 1.5)):
                r = _ratio(t, model, variant)
                rows.append([f"{label} step, {variant} / plain", f"≤ {limit:.2f}×",
                             "n/a" if r is None else f"{r:.2f}×", verdict(None if r is None else r <= limit)])
    v = results.get("verify")
    if v:
        r = C.median(v["ratios"]["verification"])
        rows.append(["ModernNCA failing step, verification / traced replay", "≤ 3.00×", f"{r:.2f}×", verdict(r <= 3)])
    s = results.get("scale")
    if s:
        rows.append(["streamed readout time vs N", "linear (exponent ≈ 1)", f"N^{s['exponent']:.2f}",
                     verdict(abs(s["exponent"] - 1) <= 0.2)])
        live = [(r["n"], r["stream_live"].get("peak_delta")) for r in s["results"]
                if r.get("stream_live", {}).get("peak_delta") is not None]
        if live:
            # Bounded: beyond two chunks of candidates, more candidates add no live memory.
            many = [m for n, m in live if n >= 2 * 4096]
            ok = (max(many) <= 1.25 * min(many) + (8 << 20)) if len(many) > 1 else None
            rows.append(["streamed readout live memory vs N", "bounded by batch × chunk",
                         " / ".join(f"{C.fmt_bytes(m)} at {n:,}" for n, m in live), verdict(ok)])
    c = results.get("check")
    if c:
        rows.append(["`stablenca check` defaults", "(information)", C.fmt_seconds(C.median(c["walls"])), ""])
        rows.append(["`stablenca check` time vs --batches", "linear", f"exponent {c['exponent']:.2f}", ""])
    return C.md_table(["target", "goal", "measured", "verdict"], rows)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="every script's fast smoke version")
    p.add_argument("--threads", type=int, default=None, help="torch threads for every script (default: torch's)")
    p.add_argument("--only", nargs="*", choices=[b[0] for b in BENCHMARKS], default=None,
                   help="run only these benchmarks (with --reuse and no names: run nothing, only reassemble)")
    p.add_argument("--out", default=str(C.REPO / "reports" / "benchmarks.md"))
    p.add_argument("--keep", default=None, metavar="DIR",
                   help="also keep every script's JSON output (section + raw numbers) in DIR")
    p.add_argument("--reuse", default=None, metavar="DIR",
                   help="with --only: take the other sections from the JSON files an earlier --keep left in DIR")
    args = p.parse_args(argv)
    if args.threads:
        os.environ["OMP_NUM_THREADS"] = os.environ["MKL_NUM_THREADS"] = str(args.threads)
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    info = C.machine_info()
    canary_start = C.thread_canary()
    started = time.perf_counter()
    sections, results, timings = [], {}, []
    with tempfile.TemporaryDirectory(prefix="stablenca-bench-") as tmp:
        for name, script, what in BENCHMARKS:
            if args.only is not None and name not in args.only:
                reused = Path(args.reuse) / f"{name}.json" if args.reuse else None
                if reused is not None and reused.is_file():
                    payload = json.loads(reused.read_text())
                    sections.append(payload["markdown"])
                    results[name] = payload["data"]
                    timings.append((name + " (reused)", 0.0, 0))
                continue
            json_path = Path(tmp) / f"{name}.json"
            ran = any(not n.endswith("(reused)") for n, _, _ in timings)
            if ran and not args.quick:  # after a benchmark, until the load average has decayed (C.settle)
                C.stderr(f"run_all: waited {C.settle():.0f} s for the load average to settle")
            seconds, code, stdout = run_one(script, args.quick, args.threads, json_path)
            timings.append((name, seconds, code))
            if code == 0 and json_path.is_file():
                payload = json.loads(json_path.read_text())
                sections.append(payload["markdown"])
                results[name] = payload["data"]
                if args.keep:
                    Path(args.keep).mkdir(parents=True, exist_ok=True)
                    (Path(args.keep) / f"{name}.json").write_text(json_path.read_text())
            else:
                sections.append(f"## {what}\n\nRegenerate: `python bench/{script}`\n\n**Failed** (exit {code}); "
                                f"last output:\n\n```\n{stdout[-3000:]}\n```\n")
    canary_end = C.thread_canary()
    end_load = C.load_average()
    total = time.perf_counter() - started
    flags = " ".join(filter(None, ["--quick" if args.quick else "", f"--threads {args.threads}" if args.threads else "",
                                   " ".join(["--only", *args.only]) if args.only is not None else "",
                                   "--reuse DIR" if args.reuse else ""]))
    command = "python bench/run_all.py" + (f" {flags}" if flags else "")
    end_text = "n/a" if not end_load else " / ".join(f"{x:.2f}" for x in end_load)
    reused = [n for n, _, _ in timings if n.endswith("(reused)")]
    reuse_note = ("Sections marked (reused) were measured by an earlier run and are copied as they were; each "
                  "section states its own machine line and load average. The machine line and canary below are "
                  "from this assembly. " if reused else "")
    header = (
        "# Benchmarks\n\n"
        f"Generated by `{command}` on {info['date']} in {C.fmt_seconds(total)} "
        f"({', '.join((n if n.endswith('(reused)') else f'{n} {C.fmt_seconds(s)}') + ('' if c == 0 else f' (exit {c})') for n, s, c in timings)}). "
        f"{reuse_note}Regenerate everything with `python bench/run_all.py`; every section below says how to "
        "regenerate it alone; `bench/README.md` describes the scripts.\n\n"
        f"Machine: {C.machine_line(info)}; at the end {end_text}.\n\n"
        f"At the start, {C.canary_line(canary_start)}\n\n"
        f"At the end, {C.canary_line(canary_end)}\n\n"
        + C.load_warning(info)
        + ("> **Quick smoke run**: small sizes and few repeats; the numbers only show that the scripts work.\n\n"
           if args.quick else "")
        + "All times are medians; every ratio compares variants measured interleaved in the same run. "
          "Absolute times depend on the machine and its load; compare ratios.\n\n"
        "## Targets\n\n" + targets_table(results) + "\n"
    )
    text = header + "\n" + "\n".join(sections)
    findings = C.BENCH / "findings.md"
    if findings.is_file() and not args.quick and (args.only is None or args.reuse):
        # Hand-written analysis (profile-backed findings and proposed library changes); its numbers are
        # from the run it was written after, so it says when that was.
        text += "\n" + findings.read_text()
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(dir=out.parent, prefix=f".{out.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as handle:
            handle.write(text)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp_name, 0o666 & ~umask)  # mkstemp makes it 0600; a report is for everyone to read
        os.replace(tmp_name, out)
    except BaseException:
        Path(tmp_name).unlink(missing_ok=True)
        raise
    C.stderr(f"run_all: wrote {out} ({datetime.timedelta(seconds=round(total))})")
    return 0 if all(c == 0 for _, _, c in timings) else 1


if __name__ == "__main__":
    raise SystemExit(main())
