"""Measured evidence for the library changes proposed in ``reports/benchmarks.md``.

Nothing here is used by the library: each item times the current library code path
against a small prototype of the proposed change, on the shapes the profiles show,
interleaved, and checks that the results agree.

1. ``readout``: :func:`stablenca.models.neighbours.soft_neighbour_readout` vs an in-place
   variant (temperature folded into the (Q × D) and (chunk × D) inputs, ``neg_``,
   ``sub_``, ``exp_`` and ``addmm_`` into the accumulators: no (Q × chunk) temporaries
   beyond cdist's output), at Abalone's size (one chunk) and at 1e5 candidates.
2. ``probe counts``: the recorder's underflow counts (``(mask).sum()`` on a bool
   (1024 × 1848) matrix, which first converts it to int64) vs ``torch.count_nonzero``
   (and no ``abs()``: exp and softmax outputs are never negative).
3. ``embed``: ``Trainer.embed`` (a list of batch outputs, then ``torch.cat``: twice the
   output's memory at the peak) vs writing each batch into a preallocated output.
4. ``png``: saving one figure shaped like the report's timeline (4 panels, 13 × 11 in,
   100 dpi) the way :func:`stablenca.report.figures.save_figure` does (zlib level 6) vs
   ``pil_kwargs={"compress_level": 1}``; and saving the same figures one after the
   other vs in a pool of one process per core.

``python bench/proposals.py [--quick]``
"""

from __future__ import annotations

import math
import sys
from pathlib import Path
from types import SimpleNamespace

sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

import _common as C  # noqa: E402
from stablenca.models.neighbours import soft_neighbour_readout  # noqa: E402


def readout_inplace(queries, candidates, targets, *, temperature: float = 1.0, chunk_size: int = 4096):
    """The streamed softmax readout with in-place chunk arithmetic (prototype of the proposal)."""
    scale = 1.0 / temperature
    q = queries * scale if scale != 1.0 else queries
    n_q = len(q)
    row_max = torch.full((n_q,), -math.inf, dtype=q.dtype)
    row_sum = torch.zeros(n_q, dtype=q.dtype)
    weighted = torch.zeros(n_q, targets.shape[1], dtype=q.dtype)
    for start in range(0, len(candidates), chunk_size):
        c = candidates[start:start + chunk_size]
        if scale != 1.0:
            c = c * scale
        logits = torch.cdist(q, c, p=2)  # d / T, (Q, chunk): the only (Q, chunk) allocation
        new_max = torch.maximum(row_max, logits.amin(dim=1).neg_())
        rescale = torch.exp(row_max - new_max)
        weights = logits.neg_().sub_(new_max[:, None]).exp_()
        row_sum.mul_(rescale).add_(weights.sum(dim=1))
        weighted.mul_(rescale[:, None]).addmm_(weights, targets[start:start + chunk_size])
        row_max = new_max
    return weighted / row_sum[:, None]


def bench_readout(n: int, repeats: int) -> dict:
    torch.manual_seed(0)
    q, c = torch.randn(1024, 128), torch.randn(n, 128)
    t = F.one_hot(torch.randint(0, 3, (n,)), 3).float()
    a, b = soft_neighbour_readout(q, c, t), readout_inplace(q, c, t)
    assert torch.allclose(a, b, rtol=1e-4, atol=1e-6), float((a - b).abs().max())
    times = C.interleaved({"library": lambda: soft_neighbour_readout(q, c, t),
                           "in-place prototype": lambda: readout_inplace(q, c, t)}, repeats, warmup=1)
    return {"n": n, "times": times, "max_diff": float((a - b).abs().max())}


def bench_probe_counts(repeats: int) -> dict:
    torch.manual_seed(0)
    d = torch.rand(1024, 1848) * 200
    self_mask = torch.zeros(1024, 1848, dtype=torch.bool)
    self_mask[:, :1024].fill_diagonal_(True)
    finite = ~self_mask & torch.isfinite(d)
    values = torch.exp(-d)
    tiny = torch.finfo(d.dtype).tiny

    def counts_sum():
        zero = (values == 0) & finite
        return zero.sum(), ((values.abs() < tiny) & finite).sum()

    def counts_nonzero():
        zero = (values == 0) & finite
        return torch.count_nonzero(zero), torch.count_nonzero((values < tiny) & finite)

    assert [int(x) for x in counts_sum()] == [int(x) for x in counts_nonzero()]
    times = C.interleaved({"counts: bool.sum() (library)": counts_sum,
                           "counts: count_nonzero": counts_nonzero}, repeats, warmup=2)
    return {"times": times}


def bench_embed(n: int, repeats: int) -> dict:
    from stablenca.models import ModernNCA
    from stablenca.training.trainer import Trainer

    torch.manual_seed(0)
    model = ModernNCA(d_num=7, d_cat=3).eval()
    x = torch.cat([torch.randn(n, 7), F.one_hot(torch.randint(0, 3, (n,)), 3).float()], dim=1)
    owner = SimpleNamespace(model=model)

    @torch.no_grad()
    def prealloc(batch_size: int = 8192):
        out = torch.empty(len(x), model.dim)
        for i in range(0, len(x), batch_size):
            out[i:i + batch_size] = model(x[i:i + batch_size])
        return out

    assert torch.equal(Trainer.embed(owner, x), prealloc())
    times = C.interleaved({"Trainer.embed (list + cat)": lambda: Trainer.embed(owner, x),
                           "preallocated output": prealloc}, repeats, warmup=1)
    return {"n": n, "times": times, "output_bytes": n * model.dim * 4}


def _timeline_like(seed: int = 0):
    import numpy as np
    from matplotlib.figure import Figure

    rng = np.random.default_rng(seed)
    fig = Figure(figsize=(13, 11), dpi=100, layout="constrained")
    axes = fig.subplots(4, 1, sharex=True)
    steps = np.arange(300)
    for k, ax in enumerate(axes):
        for j in range(4):
            ax.plot(steps, np.cumsum(rng.normal(size=300)) + 10 * j, label=f"series {j}")
        ax.set_yscale("symlog")
        ax.set_ylabel(f"panel {k}")
        ax.legend(loc="upper left", fontsize=8)
        ax.axvline(150, color="red", ls="--")
        ax.annotate("first non-finite step", (150, 0), fontsize=8)
    fig.suptitle("a timeline-like figure")
    return fig


def _save(seed: int, level: int | None = None) -> int:
    import io

    buffer = io.BytesIO()
    kwargs = {} if level is None else {"pil_kwargs": {"compress_level": level}}
    _timeline_like(seed).savefig(buffer, format="png", **kwargs)
    return len(buffer.getvalue())


def bench_png(repeats: int, figures: int) -> dict:
    import os
    from concurrent.futures import ProcessPoolExecutor

    sizes = {"default": _save(0), "level 1": _save(0, 1)}
    one = C.interleaved({"savefig (default zlib level)": lambda: _save(0),
                         "savefig compress_level=1": lambda: _save(0, 1)}, repeats, warmup=1)
    try:
        workers = len(os.sched_getaffinity(0))
    except AttributeError:
        workers = os.cpu_count() or 1
    with ProcessPoolExecutor(max_workers=workers) as pool:
        list(pool.map(_save, range(workers)))  # start the workers and import matplotlib there
        many = C.interleaved({f"{figures} figures, one after the other": lambda: [_save(i) for i in range(figures)],
                              f"{figures} figures, {workers} processes": lambda: list(pool.map(_save, range(figures)))},
                             max(2, repeats // 5), warmup=0)
    return {"one": one, "many": many, "bytes": sizes, "workers": workers}


def rows_of(times: dict, base: str) -> list[list]:
    ratios = C.paired_ratios(times, base)
    return [[name, C.fmt_seconds(C.median(v)), f"{C.median(ratios[name]):.2f}×"] for name, v in times.items()]


def main(argv=None) -> int:
    p = C.parser(__doc__.splitlines()[0])
    args = C.parse(p, argv)
    info = C.machine_info()
    repeats = 5 if args.quick else 30
    sizes = [2672, 20000] if args.quick else [2672, 100_000]
    readouts = [bench_readout(n, repeats if n < 50_000 else max(3, repeats // 6)) for n in sizes]
    probes = bench_probe_counts(repeats)
    embed = bench_embed(20000 if args.quick else 200_000, max(3, repeats // 6))
    png = bench_png(3 if args.quick else 10, 4 if args.quick else 16)
    body = "Prototypes of the proposed changes against the current library code, interleaved.\n\n"
    for r in readouts:
        body += (f"### Readout of 1024 queries against {r['n']:,} candidates (chunk 4096)\n\n"
                 + C.md_table(["variant", "median", "vs library"], rows_of(r["times"], "library"))
                 + f"\nmax |Δ| {r['max_diff']:.2g}.\n\n")
    body += ("### Recorder probes on one ModernNCA step's (1024 × 1848) matrix\n\n"
             + C.md_table(["variant", "median", "vs first row"], rows_of(probes["times"], "counts: bool.sum() (library)"))
             + "\n")
    body += (f"### Embedding {embed['n']:,} rows (output {C.fmt_bytes(embed['output_bytes'])})\n\n"
             + C.md_table(["variant", "median", "vs library"], rows_of(embed["times"], "Trainer.embed (list + cat)"))
             + "\nThe list + cat version holds every batch's output and the concatenated copy at once: twice the "
               "output's memory at the peak (see the scale section's embed column).\n")
    first_one, first_many = list(png["one"])[0], list(png["many"])[0]
    body += ("\n### Saving report figures (a 13 × 11 in, 4-panel figure like the timelines)\n\n"
             + C.md_table(["variant", "median", "vs first row"], rows_of(png["one"], first_one))
             + f"\nPNG size: {C.fmt_bytes(png['bytes']['default'])} at the default level, "
               f"{C.fmt_bytes(png['bytes']['level 1'])} at level 1.\n\n"
             + C.md_table(["variant", "median", "vs first row"], rows_of(png["many"], first_many))
             + "\n(The pool's workers are started and warm before timing; building each figure is included.)\n")
    md = C.section("Evidence for the proposed library changes", C.command_line("proposals.py", args), info, body)
    C.emit(md, {"readout": readouts, "probes": probes, "embed": embed, "png": png}, args)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
