"""Where the time goes: pyinstrument profiles of a ModernNCA training step and of ``stablenca diagnose``.

Three profiles, each summarised as tables (the full pyinstrument text trees are
written next to the JSON output with ``--trees DIR``):

1. ``step``: ModernNCA training steps (loss ``modernnca``) with diagnose's hooks
   (sentinel + recorder), run through ``Trainer.run_step``; pyinstrument plus
   ``torch.profiler``'s per-ATen-op table.
2. ``diagnose``: ``stablenca.runtime.diagnose.diagnose`` with its defaults, in process
   (``--quick``: ``--epochs 3``), figures and report included.
3. ``report``: the report stage alone (``stablenca.report.build_report``) on the
   output of (2).

For each: the stablenca functions with the most *inclusive* time (where in
the library time is spent) and the functions with the most *self* time (what the
CPU actually runs, torch and matplotlib internals included).

``python bench/profile_hotspots.py [--quick] [--trees DIR]``
"""

from __future__ import annotations

import shutil
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _common as C  # noqa: E402


def _frames(frame):
    stack = [frame]
    while stack:
        f = stack.pop()
        yield f
        stack.extend(f.children)


def _name(f) -> str:
    if f.function == "[self]" and f.parent is not None:  # pyinstrument's synthetic self-time frame
        f = f.parent
    where = f.file_path_short or f.file_path or ""
    cls = f"{f.class_name}." if getattr(f, "class_name", None) else ""
    return f"{cls}{f.function} ({Path(where).name}:{f.line_no})" if where else f"{cls}{f.function}"


def _is_app(f) -> bool:
    path = f.file_path or ""
    return "/stablenca/" in path


def hotspots(session, top: int = 15) -> dict:
    """Top functions by self time (everything) and by inclusive time (stablenca/bench code only)."""
    root = session.root_frame()
    total = root.time if root is not None else 0.0
    self_time: dict[str, float] = defaultdict(float)
    inclusive: dict[str, float] = defaultdict(float)
    for f in _frames(root) if root is not None else ():
        if not f.is_synthetic:  # a frame's total_self_time already includes its synthetic [self] children
            self_time[_name(f)] += f.total_self_time
        if _is_app(f):
            # count a function once per call chain: skip frames with the same function above them
            parent, seen = f.parent, False
            while parent is not None:
                if parent.function == f.function and parent.file_path == f.file_path:
                    seen = True
                    break
                parent = parent.parent
            if not seen:
                inclusive[_name(f)] += f.time
    by_self = sorted(self_time.items(), key=lambda kv: -kv[1])[:top]
    by_incl = sorted(inclusive.items(), key=lambda kv: -kv[1])[:top + 5]
    return {"total": total, "cpu": getattr(session, "cpu_time", None), "self": by_self, "inclusive": by_incl}


def hotspot_tables(h: dict) -> str:
    total = h["total"] or float("nan")
    incl = C.md_table(["stablenca function (inclusive)", "seconds", "share"],
                      [[f"`{n}`", f"{t:.2f}", f"{100 * t / total:.0f} %"] for n, t in h["inclusive"]])
    own = C.md_table(["function (self time)", "seconds", "share"],
                     [[f"`{n}`", f"{t:.2f}", f"{100 * t / total:.0f} %"] for n, t in h["self"]])
    cpu = f", CPU time {h['cpu']:.1f} s" if h.get("cpu") else ""
    return f"Profiled wall time {total:.1f} s{cpu}.\n\n{incl}\n{own}"


def profile(fn, interval: float = 0.002):
    from pyinstrument import Profiler

    profiler = Profiler(interval=interval)
    profiler.start()
    try:
        fn()
    finally:
        profiler.stop()
    return profiler


def step_profile(steps: int):
    from torch.profiler import ProfilerActivity, profile as torch_profile

    from stablenca.runtime.recorder import Recorder
    from stablenca.runtime.sentinel import Sentinel
    from stablenca.training.trainer import StepContext, Trainer, TrainConfig, load_data

    data = load_data(TrainConfig().resolved())
    tmp = Path(tempfile.mkdtemp(prefix="stablenca-bench-profile-"))
    hooks = [Sentinel(mode="sentinel"), Recorder(tmp)]
    trainer = Trainer(TrainConfig(), data=data, hooks=hooks)
    for hook in hooks:
        hook.on_fit_start(trainer)
    state = {"epoch": -1, "batches": []}

    def step():
        if not state["batches"]:
            state["epoch"] += 1
            state["batches"] = list(enumerate(trainer.epoch_batches()))
        i, batch = state["batches"].pop(0)
        trainer.run_step(StepContext(state["epoch"], trainer.global_step, i, batch))
        trainer.global_step += 1

    for _ in range(3):
        step()
    prof = profile(lambda: [step() for _ in range(steps)], interval=0.001)
    with torch_profile(activities=[ProfilerActivity.CPU]) as tp:
        for _ in range(max(3, steps // 3)):
            step()
    n = max(3, steps // 3)
    ops = sorted(tp.key_averages(), key=lambda e: -e.self_cpu_time_total)[:15]
    total_us = sum(e.self_cpu_time_total for e in tp.key_averages())
    op_rows = [[f"`{e.key}`", e.count // n, f"{e.self_cpu_time_total / n / 1e3:.1f}",
                f"{100 * e.self_cpu_time_total / total_us:.0f} %"] for e in ops]
    hooks[1].close()
    shutil.rmtree(tmp, ignore_errors=True)
    return prof, op_rows, total_us / n / 1e6


def main(argv=None) -> int:
    p = C.parser(__doc__.splitlines()[0])
    p.add_argument("--trees", default=None, metavar="DIR", help="write the pyinstrument text trees here")
    p.add_argument("--steps", type=int, default=None, help="profiled training steps (default 30, quick 6)")
    args = C.parse(p, argv)
    info = C.machine_info()
    steps = args.steps or (6 if args.quick else 30)
    trees = Path(args.trees) if args.trees else None
    if trees:
        trees.mkdir(parents=True, exist_ok=True)

    C.stderr("profile_hotspots: training steps")
    step_prof, op_rows, op_step_seconds = step_profile(steps)
    step_h = hotspots(step_prof.last_session)

    from stablenca.runtime.diagnose import diagnose
    from stablenca.training.trainer import TrainConfig

    out = Path(tempfile.mkdtemp(prefix="stablenca-bench-profile-diagnose-")) / "out"
    base = TrainConfig(epochs=3) if args.quick else TrainConfig()
    C.stderr("profile_hotspots: diagnose")
    started = time.perf_counter()
    diag_prof = profile(lambda: diagnose(out=out, base=base, force=True), interval=0.005)
    diag_wall = time.perf_counter() - started
    diag_h = hotspots(diag_prof.last_session)

    from stablenca import report

    C.stderr("profile_hotspots: report")
    rep_prof = profile(lambda: report.build_report(out), interval=0.005)
    rep_h = hotspots(rep_prof.last_session)
    shutil.rmtree(out.parent, ignore_errors=True)
    if trees:
        for name, prof in (("step", step_prof), ("diagnose", diag_prof), ("report", rep_prof)):
            (trees / f"profile-{name}.txt").write_text(prof.output_text(unicode=True, color=False))

    cmd_extra = " (diagnose with --epochs 3)" if args.quick else ""
    body = (
        f"pyinstrument (wall-clock sampling) and torch.profiler; the numbers are shares of the profiled time"
        f"{cmd_extra}. Profiling adds overhead; read shares, not absolute times.\n\n"
        f"### ModernNCA training step with diagnose's hooks (sentinel + recorder), {steps} steps\n\n"
        + hotspot_tables(step_h)
        + f"\nATen ops by self CPU time (torch.profiler, per step; {op_step_seconds * 1e3:.0f} ms of op time per "
          f"step):\n\n" + C.md_table(["op", "calls per step", "ms per step", "share"], op_rows)
        + f"\n### `stablenca diagnose` (in process, wall {diag_wall:.1f} s under the profiler)\n\n"
        + hotspot_tables(diag_h)
        + "\n### The report stage alone (`build_report` on that output)\n\n" + hotspot_tables(rep_h)
    )
    data = {"step": step_h, "step_ops": op_rows, "diagnose": diag_h, "report": rep_h, "diagnose_wall": diag_wall}
    md = C.section("Profiles: where the time goes", C.command_line("profile_hotspots.py", args), info, body)
    C.emit(md, data, args)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
