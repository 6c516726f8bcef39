"""``stablenca diagnose`` with its defaults, end to end (figures and report included).

Runs the real command in a subprocess, ``--repeats`` times, each into a fresh output
directory, and measures its wall time and the CPU time of the command and all its worker
processes (user + system; unlike the wall time, it hardly depends on what else runs). From
each run's ``summary.json`` it takes the per-run ``train_seconds`` (training, evaluations, the
sentinel and the recorder) and from ``check.json`` the seconds of the small check diagnose
runs for the report. A timeline of the last repeat comes from the output's file times: a run
starts when its ``config.json`` is written and has trained when its ``result.json`` is; the
report ends with ``report.md``. The import of the modules the command needs is timed once in
a fresh interpreter, and the report stage alone once with ``stablenca report OUT``.

Target: at most 30 s of wall time on a 2-core machine (issue 16; it was 90 s before). With two
torch threads diagnose trains two runs at once, one thread each (`--jobs`); each worker draws
its run's figures after training, and the check runs in a worker of its own from the start.

Each repeat also times ``bench/diagnose_floor.py`` in a subprocess, interleaved (the order
alternates): the same runs, trained the same way on the same schedule with no hook, no
figures, no check and no report. That is the floor under any diagnose on this machine with
today's kernels: the student's runs execute the student's arithmetic, which diagnose must
not change. diagnose − floor is what diagnosis itself costs.

With ``--against REV`` each repeat also runs the same command from a git worktree of revision
REV (interleaved, the order alternating), and a table compares the two: wall and CPU time, each
run's ``train_seconds``, and whether both wrote the same ``records.jsonl`` and ``epochs.jsonl``.

``python bench/bench_diagnose.py [--quick] [--repeats N] [--against REV]``; ``--quick`` adds
``--epochs 3`` to the command (a smoke run, not the target's configuration).
"""

from __future__ import annotations

import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _common as C  # noqa: E402

TARGET_SECONDS = 30.0


def stablenca_cmd() -> list[str]:
    exe = shutil.which("stablenca")
    return [exe] if exe else [sys.executable, "-m", "stablenca.cli"]


def timed(cmd: list[str], env=None) -> tuple[float, subprocess.CompletedProcess]:
    started = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=C.REPO)
    return time.perf_counter() - started, proc


def cpu_seconds_of_children() -> float:
    """User + system time of every finished, waited-for descendant (workers roll up into their parent)."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def timeline(out: Path, started: float, wall: float, run_names: list[str]) -> list[list[str]]:
    """Rows (what, from, to) in seconds since the command started, from the output's file times."""
    def at(path: Path) -> float | None:
        return path.stat().st_mtime - started if path.is_file() else None

    rows, spans = [], []
    for name in run_names:
        begin, end = at(out / name / "config.json"), at(out / name / "result.json")
        if begin is not None and end is not None:
            spans.append((begin, end))
            rows.append([f"run `{name}` (trained)", f"{begin:.1f}", f"{end:.1f}"])
    rows.sort(key=lambda row: float(row[1]))
    first = min((b for b, _ in spans), default=0.0)
    last = max((e for _, e in spans), default=0.0)
    report = at(out / "report.md")
    rows.insert(0, ["start-up (until the first run starts)", "0.0", f"{first:.1f}"])
    if report is not None:
        rows.append(["after the last run trained: its figures, the report's last figures, report.md",
                     f"{last:.1f}", f"{report:.1f}"])
        rows.append(["exit", f"{report:.1f}", f"{wall:.1f}"])
    return rows


def worktree(rev: str, where: Path) -> Path:
    """A detached git worktree of ``rev`` (removed by :func:`drop_worktree`)."""
    subprocess.run(["git", "-C", str(C.REPO), "worktree", "add", "--detach", "--quiet", str(where), rev], check=True)
    return where


def drop_worktree(where: Path) -> None:
    subprocess.run(["git", "-C", str(C.REPO), "worktree", "remove", "--force", str(where)], check=False)


def diagnose_at(tree: Path, out: Path, extra: list[str], env) -> tuple[float, float, dict]:
    """(wall, CPU, summary) of the default diagnose run with the package of ``tree`` (``python -m`` from there)."""
    cpu_before = cpu_seconds_of_children()
    started = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "stablenca.cli", "diagnose", "--out", str(out), "--force"] + extra,
                          capture_output=True, text=True, env=env, cwd=tree)
    wall = time.perf_counter() - started
    if proc.returncode != 0:
        raise SystemExit(f"diagnose at {tree} failed ({proc.returncode}): {proc.stderr[-2000:]}")
    return wall, cpu_seconds_of_children() - cpu_before, json.loads((out / "summary.json").read_text())


def same_records(a: Path, b: Path, run_names: list[str]) -> bool:
    """Whether two diagnose outputs hold byte-identical records.jsonl and epochs.jsonl for every run."""
    return all((a / name / kind).read_bytes() == (b / name / kind).read_bytes()
               for name in run_names for kind in ("records.jsonl", "epochs.jsonl"))


def against_text(rev: str, walls: list[float], cpus: list[float], summaries: list[dict], theirs: list[dict]) -> str:
    """The table comparing this tree's diagnose with REV's, repeat by repeat (interleaved)."""
    rows = [["wall", ", ".join(C.fmt_seconds(t["wall"]) for t in theirs), ", ".join(C.fmt_seconds(w) for w in walls),
             f"{C.median([t['wall'] / w for t, w in zip(theirs, walls)]):.2f}×"],
            ["CPU (command and workers)", ", ".join(C.fmt_seconds(t["cpu"]) for t in theirs),
             ", ".join(C.fmt_seconds(c) for c in cpus), f"{C.median([t['cpu'] / c for t, c in zip(theirs, cpus)]):.2f}×"]]
    for i, entry in enumerate(summaries[0]["runs"]):
        ours = [s["runs"][i]["train_seconds"] for s in summaries]
        old = [t["summary"]["runs"][i]["train_seconds"] for t in theirs]
        rows.append([f"`{entry['run']}` train_seconds", ", ".join(C.fmt_seconds(x) for x in old),
                     ", ".join(C.fmt_seconds(x) for x in ours),
                     f"{C.median([o / n for o, n in zip(old, ours)]):.2f}×"])
    same = all(t["same_records"] for t in theirs)
    return (f"\nAgainst revision `{rev}` (the same command from a git worktree of it, interleaved with the repeats "
            f"above; ratio: median of the per-repeat ratios, above 1 means this tree is faster). Records: every "
            f"run's records.jsonl and epochs.jsonl {'byte-identical in every repeat' if same else '**differ**'}.\n\n"
            + C.md_table(["", f"at {rev}", "this tree", f"{rev} / this tree"], rows))


def floor(env) -> dict:
    """One run of bench/diagnose_floor.py: its wall time as a subprocess, and what it printed."""
    cpu_before = cpu_seconds_of_children()
    wall, proc = timed([sys.executable, str(C.BENCH / "diagnose_floor.py")], env=env)
    if proc.returncode != 0:
        raise SystemExit(f"diagnose_floor.py failed ({proc.returncode}): {proc.stderr[-2000:]}")
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    result["subprocess_wall"] = wall
    result["cpu_seconds"] = cpu_seconds_of_children() - cpu_before
    C.stderr(f"  floor (no hook, no report): {wall:.1f} s wall, {result['cpu_seconds']:.1f} s CPU")
    return result


def floor_text(floors: list[dict], median_wall: float, summaries: list[dict], median_cpu: float) -> str:
    """The floor's paragraph and per-run table (beside each run's train_seconds under diagnose's hooks)."""
    if not floors:
        return ""
    walls = [f["subprocess_wall"] for f in floors]
    median_floor = C.median(walls)
    floor_cpu = C.median([f["cpu_seconds"] for f in floors])
    hooked = {}
    for summary in summaries:
        for entry in summary["runs"]:
            if entry.get("train_seconds") is not None:
                hooked.setdefault((entry["model"], entry["loss"]), []).append(entry["train_seconds"])
    rows = []
    for k, (model, loss, status, epochs, _) in enumerate(floors[0]["runs"]):
        plain = C.median([f["runs"][k][4] for f in floors])
        with_hooks = C.median(hooked[(model, loss)]) if (model, loss) in hooked else None
        rows.append([f"{model}-{loss}", status, epochs, C.fmt_seconds(plain),
                     C.fmt_seconds(with_hooks) if with_hooks is not None else "n/a",
                     f"{with_hooks / plain:.2f}×" if with_hooks is not None else "n/a"])
    return (f"\nThe floor, `python bench/diagnose_floor.py` (a subprocess, interleaved with the repeats above): the "
            f"same runs trained on the same schedule ({floors[0]['jobs']} jobs × {floors[0]['threads']} thread), "
            f"with no hook, no figures, no check and no report: {', '.join(C.fmt_seconds(w) for w in walls)}; "
            f"**median {C.fmt_seconds(median_floor)}** (target {TARGET_SECONDS:.0f} s: "
            f"{'below' if median_floor <= TARGET_SECONDS else '**above**'}). Diagnosis itself (probes, sentinel, "
            f"check, 19 figures, both reports, their imports) adds {C.fmt_seconds(median_wall - median_floor)} "
            f"of wall time (median against median). CPU time, which hardly depends on what else runs: floor "
            f"{', '.join(C.fmt_seconds(f['cpu_seconds']) for f in floors)}, median "
            f"{C.fmt_seconds(floor_cpu)}; diagnose's median {C.fmt_seconds(median_cpu)} is {median_cpu / floor_cpu:.2f}× "
            f"the floor's. The floor's start-up (imports and data, until its workers fork): "
            f"{C.fmt_seconds(C.median([f['startup'] for f in floors]))} (median), against diagnose's in the timeline "
            f"above.\n\n"
            + C.md_table(["run", "status (no hook)", "epochs", "seconds, no hook (median)",
                          "train_seconds under diagnose (median, above)", "ratio"], rows)
            + "\nA run shares the two cores with different neighbours in the two schedules (hooks and figures shift "
              "the start times), so a per-run ratio says less than the totals.\n")


def main(argv=None) -> int:
    p = C.parser(__doc__.splitlines()[0])
    p.add_argument("--repeats", type=int, default=None, help="whole-command repeats (default 3, quick 1)")
    p.add_argument("--keep", default=None, metavar="DIR", help="keep the last output directory here")
    p.add_argument("--against", default=None, metavar="REV", help="also run diagnose as committed at REV, interleaved")
    args = C.parse(p, argv)
    info = C.machine_info()
    repeats = args.repeats or (1 if args.quick else 3)
    extra = ["--epochs", "3"] if args.quick else []
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    walls, cpus, summaries, report_walls, outputs, checks = [], [], [], [], [], []
    floors: list[dict] = []
    timeline_rows: list[list[str]] = []
    workdir = Path(tempfile.mkdtemp(prefix="stablenca-bench-diagnose-"))
    theirs: list[dict] = []
    tree = worktree(args.against, workdir / "against") if args.against else None
    try:
        import_wall, proc = timed([sys.executable, "-c", "import stablenca.runtime.diagnose, stablenca.report, sklearn"],
                                  env=env)
        for r in range(repeats):
            out = workdir / f"run{r}"
            cmd = stablenca_cmd() + ["diagnose", "--out", str(out), "--force"] + extra
            C.stderr(f"bench_diagnose: repeat {r + 1}/{repeats}: {' '.join(cmd[1:])}")
            if not args.quick and r % 2 == 1:  # interleaved: the floor first in odd repeats
                floors.append(floor(env))
            if tree is not None and r % 2 == 0:  # interleaved: REV first in even repeats
                theirs.append(dict(zip(("wall", "cpu", "summary"), diagnose_at(tree, workdir / f"against{r}", extra, env))))
            cpu_before, started = cpu_seconds_of_children(), time.time()
            wall, proc = timed(cmd, env=env)
            if proc.returncode != 0:
                raise SystemExit(f"diagnose failed ({proc.returncode}): {proc.stderr[-2000:]}")
            walls.append(wall)
            cpus.append(cpu_seconds_of_children() - cpu_before)
            if not args.quick and r % 2 == 0:  # after the CPU time is read: not counted as diagnose's
                floors.append(floor(env))
            if tree is not None and r % 2 == 1:
                theirs.append(dict(zip(("wall", "cpu", "summary"), diagnose_at(tree, workdir / f"against{r}", extra, env))))
            summary = json.loads((out / "summary.json").read_text())
            summaries.append(summary)
            if tree is not None:
                theirs[-1]["same_records"] = same_records(workdir / f"against{r}", out,
                                                          [entry["run"] for entry in summary["runs"]])
                C.stderr(f"  at {args.against}: {theirs[-1]['wall']:.1f} s wall, {theirs[-1]['cpu']:.1f} s CPU, "
                         f"same records: {theirs[-1]['same_records']}")
            timeline_rows = timeline(out, started, wall, [r["run"] for r in summary["runs"]])
            check_file = out / "check.json"
            checks.append(json.loads(check_file.read_text()).get("seconds") if check_file.is_file() else None)
            figures = sorted((out / "figures").glob("*.png")) if (out / "figures").is_dir() else []
            outputs.append({"report_md": (out / "report.md").is_file(), "report_zh": (out / "report.zh.md").is_file(),
                            "figures": len(figures)})
            C.stderr(f"  {wall:.1f} s wall, {cpus[-1]:.1f} s CPU")
        # The report stage alone (figures + both reports), on the last output, in a fresh process.
        report_wall, proc = timed(stablenca_cmd() + ["report", str(workdir / f"run{repeats - 1}")], env=env)
        report_walls.append(report_wall)
        if args.keep:
            shutil.rmtree(args.keep, ignore_errors=True)
            shutil.copytree(workdir / f"run{repeats - 1}", args.keep)
    finally:
        if tree is not None:
            drop_worktree(tree)
        shutil.rmtree(workdir, ignore_errors=True)

    median_wall = C.median(walls)
    run_names = [r["run"] for r in summaries[0]["runs"]]
    rows = []
    for i, name in enumerate(run_names):
        entries = [s["runs"][i] for s in summaries]
        seconds = [e["train_seconds"] for e in entries if e.get("train_seconds") is not None]
        e = entries[-1]
        steps = e.get("steps_run") or 0
        med = C.median(seconds)
        rows.append([name, e["status"], e["epochs_run"], steps, C.fmt_seconds(med),
                     C.fmt_seconds(med / steps) if steps else "n/a",
                     f"{100 * med / median_wall:.0f} %"])
    runs_total = C.median([s.get("seconds", float("nan")) for s in summaries])
    check_seconds = [c for c in checks if c is not None]
    check_total = C.median(check_seconds) if check_seconds else None
    rows.append(["**all runs**, each with its own figures (summary `seconds`)", "", "", "",
                 C.fmt_seconds(runs_total), "", f"{100 * runs_total / median_wall:.0f} %"])
    if check_total is not None:
        rows.append(["check.json sweep (`seconds` in check.json; in a worker of its own, beside the start-up)",
                     "", "", "", C.fmt_seconds(check_total), "", ""])
    table = C.md_table(["run", "status", "epochs", "steps", "train_seconds (median)", "per step (incl. evals)",
                        "share of wall"], rows)
    met = median_wall <= TARGET_SECONDS
    median_cpu = C.median(cpus)
    cores = info.get("usable_cores") or 1
    command = " ".join(["stablenca", "diagnose", "--out", "OUT", "--force"] + extra)
    body = (
        f"Command timed: `{command}` (subprocess, wall time), {repeats} repeat(s): "
        f"{', '.join(C.fmt_seconds(w) for w in walls)}; **median {C.fmt_seconds(median_wall)}** "
        + (f"(target ≤ {TARGET_SECONDS:.0f} s: **{'met' if met else 'missed'}**)" if not args.quick
           else "(quick smoke run with --epochs 3: not the target's configuration)")
        + f".\n\nCPU time of the command and its workers (user + system): "
          f"{', '.join(C.fmt_seconds(c) for c in cpus)}; median {C.fmt_seconds(median_cpu)}, so at least "
          f"{C.fmt_seconds(median_cpu / cores)} of wall time on {cores} cores; {cores} × wall − CPU = "
          f"{C.fmt_seconds(cores * median_wall - median_cpu)} of core time left idle (or taken by other "
          "processes).\n\n"
        + f"Outputs of the last repeat: report.md {'yes' if outputs[-1]['report_md'] else 'NO'}, "
          f"report.zh.md {'yes' if outputs[-1]['report_zh'] else 'NO'}, {outputs[-1]['figures']} figures. "
          f"Runs trained {summaries[-1]['machine'].get('jobs', 1)} at a time, "
          f"{summaries[-1]['machine'].get('threads')} torch thread(s) each (so the runs' shares can add up "
          "to more than the runs' wall time).\n\n"
        + table
        + "\nTimeline of the last repeat (seconds since the command started; from the output's file times):\n\n"
        + C.md_table(["what", "from", "to"], timeline_rows)
        + floor_text(floors, median_wall, summaries, median_cpu)
        + (against_text(args.against, walls, cpus, summaries, theirs) if theirs else "")
        + f"\nSeparately: importing stablenca.runtime.diagnose + stablenca.report + sklearn in a fresh interpreter "
          f"{C.fmt_seconds(import_wall)}; `stablenca report OUT` alone (figures and both reports, fresh process) "
          f"{C.fmt_seconds(report_walls[0])}.\n"
    )
    data = {"checks": checks, "walls": walls, "cpu_seconds": cpus, "timeline": timeline_rows,
            "median_wall": median_wall, "target_met": met, "summaries": summaries, "floors": floors,
            "import_wall": import_wall, "report_wall": report_walls[0], "outputs": outputs, "command": command,
            "against": {"rev": args.against, "runs": [{k: v for k, v in t.items()} for t in theirs]} if theirs else None}
    options = (f" --repeats {args.repeats}" if args.repeats else "") + (f" --against {args.against}" if args.against else "")
    md = C.section("`stablenca diagnose`, defaults, end to end", C.command_line("bench_diagnose.py", args, options),
                   info, body)
    C.emit(md, data, args)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
