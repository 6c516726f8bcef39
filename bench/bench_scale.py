"""Candidates at scale: one evaluation batch against 1e4, 1e5 and 1e6 candidate rows.

For each candidate count N (embedding dimension 128, float32, 3 classes) three
measurements, each in a **fresh subprocess** so that peak memory is its own:

* ``stream``: :func:`stablenca.models.neighbours.soft_neighbour_readout` for one batch of 1024
  queries (chunk 4096, the Trainer's default) — what ``Trainer.predict`` does per batch;
* ``oneshot``: ``softmax(-cdist(queries, candidates)) @ onehot`` in one shot (what a
  straightforward port does), only where its (1024 × N) matrices fit comfortably; at
  1e6 its matrix alone is 1024 × 1e6 × 4 B = 3.8 GiB and it is *not run*: the table
  gives that theoretical figure instead;
* ``embed``: embedding N raw rows (Abalone-shaped: 7 numerical + 3 one-hot columns)
  with ModernNCA's encoder through ``Trainer.embed`` (batches of 8192).

Peak memory is the resident set's high-water mark (VmHWM, reset through
``/proc/self/clear_refs`` just before the measured call, falling back to ru_maxrss)
minus the resident set just before it; the inputs (candidates, targets, queries) are
allocated before that baseline. Times are medians of ``--repeats`` calls.

``python bench/bench_scale.py [--quick] [--sizes 1e4 1e5 1e6]``
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _common as C  # noqa: E402

QUERIES = 1024
DIM = 128
CLASSES = 3
CHUNK = 4096
#: The one-shot readout holds about three (Q × N) float32 matrices at once; run it only below this.
ONESHOT_LIMIT_BYTES = 4 << 30


def oneshot_bytes(n: int, queries: int = QUERIES) -> int:
    return queries * n * 4


def worker(mode: str, n: int, repeats: int, chunk: int) -> dict:
    import torch
    import torch.nn.functional as F

    torch.manual_seed(0)
    result: dict = {"mode": mode, "n": n}
    if mode == "embed":
        from stablenca.models import ModernNCA
        from stablenca.training.trainer import Trainer

        model = ModernNCA(d_num=7, d_cat=3).eval()
        x = torch.cat([torch.randn(n, 7), F.one_hot(torch.randint(0, 3, (n,)), 3).float()], dim=1)
        owner = SimpleNamespace(model=model)
        call = lambda: Trainer.embed(owner, x)  # noqa: E731 - the library's own embedding loop
        result["output_bytes"] = n * DIM * 4
    else:
        from stablenca.models.neighbours import soft_neighbour_readout

        candidates = torch.randn(n, DIM)
        queries = torch.randn(QUERIES, DIM)
        targets = F.one_hot(torch.randint(0, CLASSES, (n,)), CLASSES).float()
        if mode == "stream":
            call = lambda: soft_neighbour_readout(queries, candidates, targets, chunk_size=chunk)  # noqa: E731
        else:
            def call():
                with torch.no_grad():
                    return F.softmax(-torch.cdist(queries, candidates, p=2), dim=1) @ targets
    times = []
    peaks = []
    for r in range(repeats):
        baseline = C.rss_bytes()
        reset = C.reset_peak_rss()
        started = time.perf_counter()
        out = call()
        times.append(time.perf_counter() - started)
        peak = C.peak_rss_bytes()
        del out
        if reset and baseline is not None and peak is not None:
            peaks.append(peak - baseline)
    result["times"] = times
    result["median"] = C.median(times)
    # The first call's peak counts too (allocator caches may make later calls look cheaper).
    result["peak_delta"] = max(peaks) if peaks else None
    result["peak_reset"] = bool(peaks)
    return result


def run_worker(mode: str, n: int, repeats: int, chunk: int, threads: int | None, fixed_mmap: bool = False) -> dict:
    cmd = [sys.executable, __file__, "--worker", mode, "--n", str(n), "--repeats", str(repeats),
           "--chunk", str(chunk)]
    if threads:
        cmd += ["--threads", str(threads)]
    env = dict(os.environ)
    if fixed_mmap:
        # A fixed threshold turns glibc's dynamic one off: every block of 1 MiB or more is mmap'ed and
        # returned on free, so the peak is the live memory, not what the allocator kept for reuse.
        env["MALLOC_MMAP_THRESHOLD_"] = str(1 << 20)
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=C.REPO, env=env)
    if proc.returncode != 0:
        return {"mode": mode, "n": n, "error": proc.stderr.strip().splitlines()[-1] if proc.stderr.strip()
                else f"exit {proc.returncode}"}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def slope(ns: list[int], ts: list[float]) -> float:
    """Least-squares exponent b of t ≈ a · N^b."""
    xs, ys = [math.log(n) for n in ns], [math.log(t) for t in ts]
    mx, my = sum(xs) / len(xs), sum(ys) / len(ys)
    den = sum((x - mx) ** 2 for x in xs)
    return sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / den if den else float("nan")


def main(argv=None) -> int:
    p = C.parser(__doc__.splitlines()[0])
    p.add_argument("--sizes", nargs="+", type=float, default=None, help="candidate counts (default 1e4 1e5 1e6)")
    p.add_argument("--repeats", type=int, default=None, help="calls per measurement (default 3, quick 2)")
    p.add_argument("--chunk", type=int, default=CHUNK)
    p.add_argument("--worker", choices=("stream", "oneshot", "embed"), default=None, help=argparse_hidden())
    p.add_argument("--n", type=int, default=None, help=argparse_hidden())
    args = C.parse(p, argv)
    if args.worker:
        print(json.dumps(worker(args.worker, args.n, args.repeats or 3, args.chunk)))
        return 0
    info = C.machine_info()
    sizes = [int(s) for s in (args.sizes or ([1e3, 1e4, 3e4] if args.quick else [1e4, 1e5, 1e6]))]
    repeats = args.repeats or (2 if args.quick else 3)
    rows, data = [], []
    for n in sizes:
        C.stderr(f"bench_scale: N={n}")
        stream = run_worker("stream", n, repeats, args.chunk, args.threads)
        live = run_worker("stream", n, 1, args.chunk, args.threads, fixed_mmap=True)
        fits = 3 * oneshot_bytes(n) <= ONESHOT_LIMIT_BYTES
        oneshot = run_worker("oneshot", n, repeats, args.chunk, args.threads) if fits else None
        embed = run_worker("embed", n, repeats, args.chunk, args.threads)
        data.append({"n": n, "stream": stream, "stream_live": live, "oneshot": oneshot, "embed": embed})

        def t(r):
            return "error: " + r["error"] if r and "error" in r else (C.fmt_seconds(r["median"]) if r else "not run")

        def m(r):
            return "" if not r or "error" in r else C.fmt_bytes(r.get("peak_delta"))

        per_row = stream["median"] / n * 1e9 if "median" in stream else float("nan")
        rows.append([f"{n:,}", t(stream), f"{per_row:.0f} ns", m(stream), m(live),
                     t(oneshot), m(oneshot) if oneshot else "—", C.fmt_bytes(oneshot_bytes(n)),
                     t(embed), m(embed), C.fmt_bytes(n * DIM * 4)])
    ok = [d for d in data if "median" in d["stream"]]
    exponent = slope([d["n"] for d in ok], [d["stream"]["median"] for d in ok]) if len(ok) > 1 else float("nan")
    ok_embed = [d for d in data if "median" in d["embed"]]
    exponent_embed = slope([d["n"] for d in ok_embed], [d["embed"]["median"] for d in ok_embed]) \
        if len(ok_embed) > 1 else float("nan")
    block = QUERIES * args.chunk * 4
    table = C.md_table(
        ["candidates N", "stream: time per eval batch", "per candidate row", "stream: peak Δ RSS",
         "stream: peak Δ RSS, live memory only¹",
         "one-shot: time", "one-shot: peak Δ RSS", "one (1024 × N) float32 matrix", "embed N rows: time",
         "embed: peak Δ RSS", "N × 128 float32 (the embeddings)"], rows)
    reset_note = "" if all(d["stream"].get("peak_reset", True) for d in ok) else \
        "\n(VmHWM could not be reset here: peaks are whole-process maxima.)\n"
    body = (
        f"One evaluation batch of {QUERIES} queries, dimension {DIM}, {CLASSES} classes, float32, chunk "
        f"{args.chunk}; medians of {repeats} calls, each size and method in a fresh process.\n\n" + table
        + reset_note
        + "\n¹ Same call with `MALLOC_MMAP_THRESHOLD_=1048576` (glibc then returns every freed block of 1 MiB or "
          "more at once), so the peak is what is live, not what the allocator keeps for reuse; with the default "
          "dynamic threshold, freed 16 MiB blocks may be kept in the heap and the peak creeps up with the number "
          "of chunks.\n"
        + f"\nTime of the streamed readout grows as N^{exponent:.2f} (least-squares exponent over the sizes; 1 = "
          f"linear); embedding grows as N^{exponent_embed:.2f}. The streamed readout's peak memory is bounded by "
          f"batch × chunk: one (1024 × {args.chunk}) float32 block is {C.fmt_bytes(block)} and a few such blocks "
          f"are live at once, whatever N; the one-shot readout needs several (1024 × N) matrices (at N = 1e6 one "
          f"alone is {C.fmt_bytes(oneshot_bytes(1_000_000))}, so it is not run there: theoretical figure only).\n"
    )
    md = C.section("Candidates at scale: streamed readout vs one-shot", C.command_line("bench_scale.py", args),
                   info, body)
    C.emit(md, {"sizes": sizes, "results": data, "exponent": exponent, "exponent_embed": exponent_embed}, args)
    return 0


def argparse_hidden():
    import argparse

    return argparse.SUPPRESS


if __name__ == "__main__":
    raise SystemExit(main())
