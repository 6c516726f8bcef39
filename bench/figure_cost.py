"""What drawing diagnose's figures costs: every figure of a diagnose output, made and rendered alone; one run.

``python bench/figure_cost.py [--out DIR] [--rounds 3]``

``DIR`` defaults to the committed run (``reports/abalone/diagnose``). Every figure that diagnose
and ``stablenca report`` draw from it is made and rendered to PNG bytes in this process, one torch
thread, in ``--rounds`` interleaved rounds after one untimed round (fonts, glyph and mathtext
caches warm, as in diagnose's forked workers): each run's timeline, gradient heatmap and (for a
failed run) chain, the failure domain, the check's error against scale, and the report's teaching
figures. The loss-against-scale figure computes a sweep of the loss over distance scales before it
draws; its time includes that. Reported: the median CPU time (``time.process_time``) per figure,
and per kind of figure the count and total. Nothing is written.

This is the work diagnosis adds on top of training that ``bench/bench_diagnose.py`` can only see
as a whole (its floor has no figures): the sum here against diagnose's CPU minus the floor's.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch  # noqa: E402

import _common as C  # noqa: E402
from stablenca.report.figures import figure_jobs, load_fonts, png_bytes  # noqa: E402
from stablenca.report.runs import load_run_set  # noqa: E402
from stablenca.report.teaching_figures import teaching_jobs  # noqa: E402

COMMITTED_RUN = C.REPO / "reports" / "abalone" / "diagnose"


def main(argv=None) -> None:
    parser = C.parser(__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=COMMITTED_RUN, help="a diagnose output directory")
    parser.add_argument("--rounds", type=int, default=3)
    args = C.parse(parser, argv)
    rounds = 1 if args.quick else args.rounds
    torch.set_num_threads(1)  # what each of diagnose's workers has
    info = C.machine_info()
    load_fonts()
    run_set = load_run_set(args.out)
    jobs, _ = figure_jobs(args.out, run_set=run_set, strict=False)
    jobs += teaching_jobs(args.out, run_set.runs)
    seconds: dict[str, list[float]] = {job.name: [] for job in jobs}
    for round_index in range(rounds + 1):
        order = jobs if round_index % 2 else jobs[::-1]
        for job in order:
            started = time.process_time()
            png_bytes(job.make())
            if round_index:  # the first round warms the caches
                seconds[job.name].append(time.process_time() - started)
    per_figure = {job.name: C.median(seconds[job.name]) for job in jobs}
    kinds: dict[str, list[float]] = {}
    for job in jobs:
        kinds.setdefault(job.kind, []).append(per_figure[job.name])
    total = sum(per_figure.values())
    rows = [[job.name, job.kind, C.fmt_seconds(per_figure[job.name])] for job in jobs]
    kind_rows = [[kind, str(len(values)), C.fmt_seconds(sum(values)), f"{100 * sum(values) / total:.0f} %"]
                 for kind, values in sorted(kinds.items(), key=lambda item: -sum(item[1]))]
    kind_rows.append(["**all**", str(len(jobs)), f"**{C.fmt_seconds(total)}**", "100 %"])
    shown = args.out.resolve().relative_to(C.REPO) if args.out.resolve().is_relative_to(C.REPO) else args.out
    body = (f"The figures of `{shown}`, "
            f"each made and rendered to PNG bytes in this process, 1 torch thread, {rounds} interleaved "
            "round(s) after one untimed round; CPU time (process_time), median per figure.\n\n"
            + C.md_table(["kind", "figures", "CPU", "share"], kind_rows) + "\n"
            + C.md_table(["figure", "kind", "CPU (median)"], rows))
    out_option = "" if args.out.resolve() == COMMITTED_RUN else f" --out {args.out}"
    command = C.command_line("figure_cost.py", args, f" --rounds {args.rounds}{out_option}")
    C.emit(C.section("What drawing diagnose's figures costs", command, info, body),
           {"per_figure": per_figure, "total": total}, args)


if __name__ == "__main__":
    main()
