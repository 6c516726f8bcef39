"""How fast could an epoch be? The products and transcendental maps each epoch must compute, replayed alone; one run.

``python bench/epoch_floor.py [--rounds 7] [--threads 2] [--talent /work/talent]``

Any implementation of ModernNCA's epoch, TALENT's or ours, has to compute the same matrix
products (the encoder's layers, the (batch × candidates × dim) distance product and the two
of its gradient, the readout) and the same transcendental maps (the softmax's ``exp``, the
PLR embedding's ``sin``/``cos``, the distances' ``sqrt``). This script records every such op
that one training epoch + one validation of each side calls (``TorchDispatchMode``, with a
copy of its inputs), replays each alone on those copies (warm caches, nothing between
calls: an optimistic lower bound), and sums the medians. The same run times the whole
epochs, interleaved.

The ratio TALENT epoch / stablenca floor is the largest speed-up over TALENT that any
implementation using these kernels (torch's MKL products and vectorised maps) could reach
on this machine, even if every other op (masks, subtractions, sums, copies, Python) were free.
"""

from __future__ import annotations

import contextlib
import io
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch  # noqa: E402
from torch.utils._python_dispatch import TorchDispatchMode  # noqa: E402

import _common as C  # noqa: E402
from talent_epoch import epoch_variants  # noqa: E402
from talent_side_by_side import parse_per_epoch_args  # noqa: E402
from talent_split import write_split  # noqa: E402

#: Matrix products; in-place forms are replayed out of place (same work, inputs unchanged).
PRODUCTS = {"mm": torch.mm, "addmm": torch.addmm, "addmm_": torch.addmm, "bmm": torch.bmm,
            "baddbmm": torch.baddbmm, "mv": torch.mv, "addmv": torch.addmv, "addmv_": torch.addmv}
#: Maps no implementation can skip: the softmax (its exp), the PLR's sin and cos, the distances' sqrt.
MAPS = {"_softmax": lambda x, dim, half: torch._softmax(x, dim, half), "exp": torch.exp, "exp_": torch.exp,
        "sin": torch.sin, "cos": torch.cos, "sqrt": torch.sqrt, "sqrt_": torch.sqrt}


def _copy(value):
    if isinstance(value, torch.Tensor):
        return torch.empty_strided(value.shape, value.stride(), dtype=value.dtype).copy_(value)
    return value


class _Recorder(TorchDispatchMode):
    """Keeps (kind, name, replay function, copied args, kwargs) of every product and map called."""

    def __init__(self) -> None:
        super().__init__()
        self.calls: list[tuple[str, str, object, tuple, dict]] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        name = func.__name__.split(".")[0]
        for kind, table in (("products", PRODUCTS), ("maps", MAPS)):
            if name in table and "out" not in kwargs:
                self.calls.append((kind, name, table[name], tuple(_copy(a) for a in args),
                                   {k: _copy(v) for k, v in kwargs.items()}))
        return func(*args, **kwargs)


def replay_seconds(calls, repeats: int) -> dict[str, float]:
    """Median seconds of each recorded call replayed alone, summed per kind."""
    totals = {"products": 0.0, "maps": 0.0}
    for kind, _name, fn, args, kwargs in calls:
        fn(*args, **kwargs)  # warm
        samples = []
        for _ in range(repeats):
            started = time.perf_counter()
            fn(*args, **kwargs)
            samples.append(time.perf_counter() - started)
        totals[kind] += C.median(samples)
    return totals


def main(argv=None) -> None:
    parser = C.parser(__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=7)
    args, talent = parse_per_epoch_args(parser, argv)
    info = C.machine_info()
    rounds = 3 if args.quick else args.rounds
    with tempfile.TemporaryDirectory(prefix="epoch_floor_") as tmp_name:
        tmp = Path(tmp_name)
        write_split(tmp / "data")
        variants = epoch_variants(talent, tmp / "data", tmp / "models", "multiclass")
        epochs = {name: variants[name] for name in ("TALENT epoch", "fused epoch")}
        measured = C.interleaved(epochs, rounds)
        floors, counts = {}, {}
        for name, call in epochs.items():
            recorder = _Recorder()
            with recorder, contextlib.redirect_stdout(io.StringIO()):
                call()
            counts[name] = len(recorder.calls)
            floors[name] = replay_seconds(recorder.calls, 5 if args.quick else 15)
    rows = []
    for name in epochs:
        floor = floors[name]["products"] + floors[name]["maps"]
        epoch = C.median(measured[name])
        rows.append([name.replace(" epoch", "").replace("fused", "stablenca (fused)"), C.fmt_seconds(epoch),
                     C.fmt_seconds(floors[name]["products"]), C.fmt_seconds(floors[name]["maps"]),
                     C.fmt_seconds(floor), f"{100 * floor / epoch:.0f} %", str(counts[name])])
    talent_epoch = C.median(measured["TALENT epoch"])
    ours = floors["fused epoch"]
    bound = talent_epoch / (ours["products"] + ours["maps"])
    products_bound = talent_epoch / ours["products"]
    ratio = C.median([t / o for t, o in zip(measured["TALENT epoch"], measured["fused epoch"])])
    body = (f"One training epoch + validation of each side, float32, {torch.get_num_threads()} torch threads, "
            f"TALENT's default configuration on the TALENT-format Abalone; epochs: median of {rounds} interleaved "
            "rounds; floor: each recorded product and map replayed alone on copies of its inputs "
            "(median of 15), summed.\n\n"
            + C.md_table(["", "epoch (measured)", "products alone", "softmax/exp/sin/cos/sqrt alone",
                          "floor", "floor / epoch", "ops recorded"], rows)
            + f"\n\nMeasured TALENT / stablenca per epoch: **{ratio:.2f}×**. Largest ratio any implementation "
            f"with these kernels could reach, TALENT's epoch over stablenca's floor: **{bound:.2f}×** "
            f"(over the products alone: {products_bound:.2f}×).")
    command = C.command_line("epoch_floor.py", args, f" --rounds {args.rounds}")
    C.emit(C.section("How fast an epoch could be: the products and maps it must compute", command, info, body),
           {"epochs": measured, "floors": floors, "bound": bound, "ratio": ratio}, args)


if __name__ == "__main__":
    main()
