"""What TALENT's and stablenca's ModernNCA training epochs are made of (torch.profiler); one run.

``python bench/talent_profile.py [--epochs 3] [--threads 2] [--talent /work/talent]``

Both train on the TALENT-format Abalone of ``talent_split.py`` (float32, TALENT's default
configuration): TALENT's ``train_epoch``, and stablenca's training steps with each kernel.
The table gives each side's self CPU time by op, and the share of the matrix products
(``aten::mm``, ``aten::addmm`` and its in-place form): the three (batch × candidates × dim) products an exact
gradient of this objective needs, and the layers'. With every other op free, an epoch could
not be faster than its products: that bounds the per-epoch ratio against TALENT.
"""

from __future__ import annotations

import contextlib
import io
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch  # noqa: E402
from torch.profiler import profile  # noqa: E402

import _common as C  # noqa: E402
from talent_side_by_side import TASK_DIRS, parse_per_epoch_args, talent_args  # noqa: E402
from talent_split import write_split  # noqa: E402
from stablenca.training import StepContext, Trainer, TrainConfig  # noqa: E402

PRODUCTS = ("aten::mm", "aten::addmm", "aten::addmm_")


def self_times(call, epochs: int) -> dict[str, float]:
    """Self CPU seconds per op name over ``epochs`` calls (after one untimed call)."""
    call()
    with profile() as prof:
        for _ in range(epochs):
            call()
    return {event.key: event.self_cpu_time_total / 1e6 for event in prof.key_averages()}


def main(argv=None) -> None:
    parser = C.parser(__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=3)
    args, talent = parse_per_epoch_args(parser, argv)
    info = C.machine_info()
    sink = io.StringIO()
    with tempfile.TemporaryDirectory(prefix="talent_profile_") as tmp_name:
        tmp = Path(tmp_name)
        write_split(tmp / "data")
        name = TASK_DIRS["multiclass"]
        t_args = talent_args(talent, tmp / "data", name, tmp / "models")
        t_args.max_epoch = 1
        train_val, _, data_info = talent.get_dataset(name, str(tmp / "data"))
        talent.set_seeds(0)
        with contextlib.redirect_stdout(sink), contextlib.redirect_stderr(sink):
            method = talent.Method(t_args, False)
            method.fit(train_val, data_info)

        def talent_epoch():
            with contextlib.redirect_stdout(sink), contextlib.redirect_stderr(sink):
                method.train_epoch(1)

        sides = {"TALENT": talent_epoch}
        for kernel in ("eager", "fused"):
            trainer = Trainer(TrainConfig(data=str(tmp / "data" / name), seed=0, epochs=1, patience=None,
                                          kernel=kernel))
            sides[f"stablenca {kernel}"] = lambda t=trainer: [t.run_step(StepContext(0, 0, 0, b))
                                                              for b in t.epoch_batches()]
        times = {side: self_times(call, args.epochs) for side, call in sides.items()}
    rows = []
    for side, by_op in times.items():
        total = sum(by_op.values())
        products = sum(by_op.get(op, 0.0) for op in PRODUCTS)
        top = sorted(((v, k) for k, v in by_op.items() if k not in PRODUCTS), reverse=True)[:4]
        rows.append([side, C.fmt_seconds(total / args.epochs), C.fmt_seconds(products / args.epochs),
                     f"{100 * products / total:.0f} %",
                     ", ".join(f"`{k}` {100 * v / total:.0f} %" for v, k in top)])
    body = (f"{args.epochs} training epochs of each side under torch.profiler (self CPU time, profiler "
            f"overhead included), float32, {torch.get_num_threads()} torch threads, TALENT's default "
            "configuration on the TALENT-format Abalone.\n\n"
            + C.md_table(["", "per epoch", "matrix products per epoch", "products' share",
                          "largest other ops"], rows))
    command = C.command_line("talent_profile.py", args, f" --epochs {args.epochs}")
    C.emit(C.section("What a training epoch is made of, TALENT and stablenca", command, info, body),
           {"self_seconds": times}, args)


if __name__ == "__main__":
    main()
