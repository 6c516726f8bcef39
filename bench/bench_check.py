"""``stablenca check`` with its defaults, and how its time grows with the number of batches.

Runs the real command (``stablenca check --json``) in a subprocess: with its defaults
(five built-in losses × four dtypes, 71 scales, 3 batches per scale and population),
``--repeats`` times, then once for each ``--batches`` value of the growth sweep. Wall
time of the command, and the sweep's own ``seconds`` from its JSON (the rest is
start-up: imports, building the references).

The number of evaluated examples is scales × populations × batches × losses × dtypes;
time should grow linearly with it.

``python bench/bench_check.py [--quick] [--repeats N] [--batches 1 2 3 6]``
"""

from __future__ import annotations

import json
import math
import shutil
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _common as C  # noqa: E402


def stablenca_cmd() -> list[str]:
    exe = shutil.which("stablenca")
    return [exe] if exe else [sys.executable, "-m", "stablenca.cli"]


def run_check(extra: list[str]) -> tuple[float, dict]:
    cmd = stablenca_cmd() + ["check", "--json"] + extra
    started = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=C.REPO)
    wall = time.perf_counter() - started
    if proc.returncode not in (0, 1):  # 1: a contract violation, still a measurement
        raise SystemExit(f"{' '.join(cmd)} failed ({proc.returncode}): {proc.stderr[-2000:]}")
    return wall, json.loads(proc.stdout)


def examples(report: dict) -> int:
    sweep = report["sweep"]
    n_losses = len({r["loss"] for r in report["results"]})
    n_dtypes = len({r["dtype"] for r in report["results"]})
    populations = len(report.get("populations", {})) or 2
    return sweep["n_scales"] * populations * sweep["batches"] * n_losses * n_dtypes


def main(argv=None) -> int:
    p = C.parser(__doc__.splitlines()[0])
    p.add_argument("--repeats", type=int, default=None, help="repeats of the default command (default 3, quick 1)")
    p.add_argument("--batches", type=int, nargs="+", default=None, help="growth sweep (default 1 2 3 6)")
    args = C.parse(p, argv)
    info = C.machine_info()
    repeats = args.repeats or (1 if args.quick else 3)
    sweep = args.batches or ([1, 2] if args.quick else [1, 2, 3, 6])
    quick_extra = ["--loss", "ratio", "modernnca", "--dtype", "float32", "float64"] if args.quick else []

    C.stderr("bench_check: defaults")
    defaults = [run_check(quick_extra) for _ in range(repeats)]
    walls = [w for w, _ in defaults]
    inner = [r["seconds"] for _, r in defaults]
    n_default = examples(defaults[0][1])

    rows, growth = [], []
    for b in sweep:
        C.stderr(f"bench_check: --batches {b}")
        wall, report = run_check(quick_extra + ["--batches", str(b)])
        n = examples(report)
        growth.append((b, n, wall, report["seconds"]))
        rows.append([b, f"{n:,}", C.fmt_seconds(wall), C.fmt_seconds(report["seconds"]),
                     f"{report['seconds'] / n * 1e3:.2f} ms", C.fmt_seconds(wall - report["seconds"])])
    # Linear fit of the sweep's seconds against examples: seconds ≈ a + b · n.
    ns, ts = [g[1] for g in growth], [g[3] for g in growth]
    if len(ns) > 1:
        mn, mt = sum(ns) / len(ns), sum(ts) / len(ts)
        b = sum((n - mn) * (t - mt) for n, t in zip(ns, ts)) / sum((n - mn) ** 2 for n in ns)
        a = mt - b * mn
        xs, ys = [math.log(n) for n in ns], [math.log(t) for t in ts]
        mx, my = sum(xs) / len(xs), sum(ys) / len(ys)
        exponent = sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / sum((x - mx) ** 2 for x in xs)
        fit = (f"Least squares over the sweep: seconds ≈ {a:.2f} + {b * 1e3:.3f} ms × examples; growth exponent "
               f"{exponent:.2f} (1 = linear).")
    else:
        fit, exponent, a, b = "", float("nan"), float("nan"), float("nan")
    command = "stablenca check --json" + (" " + " ".join(quick_extra) if quick_extra else "")
    body = (
        f"`{command}` (subprocess), {repeats} repeat(s): wall {', '.join(C.fmt_seconds(w) for w in walls)}, "
        f"**median {C.fmt_seconds(C.median(walls))}**; the sweep itself (`seconds` in its JSON) median "
        f"{C.fmt_seconds(C.median(inner))}, for {n_default:,} evaluations (scales × populations × batches × "
        f"losses × dtypes), i.e. {C.median(inner) / n_default * 1e3:.2f} ms each (reference included). "
        f"`stablenca check` runs with one torch thread by design.\n\n"
        "Growth with `--batches`:\n\n"
        + C.md_table(["--batches", "evaluations", "wall", "sweep seconds", "per evaluation", "start-up (wall − sweep)"],
                     rows)
        + f"\n{fit}\n"
    )
    md = C.section("`stablenca check`", C.command_line("bench_check.py", args), info, body)
    C.emit(md, {"walls": walls, "inner": inner, "examples_default": n_default, "growth": growth,
                "exponent": exponent, "intercept": a, "slope": b}, args)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
