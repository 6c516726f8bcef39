"""Cost of the watch where users train: DDP (2 ranks, gloo), the Lightning callback, a compiled model.

Every comparison is the same loop with and without stablenca, on healthy steps,
interleaved round by round (order rotated each round) in one process (per rank for
DDP), reported as the median time per step and the median of the per-round ratios:

* **DDP**: 2 processes (``torch.multiprocessing.spawn``, gloo on CPU), a
  DistributedDataParallel MLP (64 → 256 → 256 → 10, batch 128 per rank, cross-entropy,
  SGD); ``plain`` vs ``watch`` (``stablenca.watch(..., out=DIR)``: snapshot, probes, one
  JSONL line per step and the one flag all-reduce); a sample is ``--steps`` steps. Rank 0's
  times are reported (the ranks wait for each other in every gradient all-reduce).
* **Lightning**: ``Trainer.fit`` of the same MLP for ``--steps`` steps without and with
  :class:`~stablenca.integrations.lightning.StableNCACallback` (``out=DIR``); each sample is a
  whole fit (a fresh Trainer), so Lightning's own set-up is in both.
* **torch.compile**: the first step of ``torch.compile(MLP)`` (inductor) is timed alone
  (the compile); then plain compiled steps vs the same under the watch.

``python bench/bench_integrations.py [--quick] [--repeats N] [--steps K]``
"""

from __future__ import annotations

import json
import os
import socket
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch  # noqa: E402

import _common as C  # noqa: E402


def mlp() -> torch.nn.Module:
    return torch.nn.Sequential(torch.nn.Linear(64, 256), torch.nn.ReLU(), torch.nn.Linear(256, 256),
                               torch.nn.ReLU(), torch.nn.Linear(256, 10))


def batch(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(128, 64, generator=generator), torch.randint(0, 10, (128,), generator=generator)


def _loops(model, optimizer, x, y, out: Path, steps: int):
    """The plain loop and the watched loop (one Watch for every round, as in a real run)."""
    import stablenca

    watch = stablenca.watch(model, optimizer, out=out)

    def closure():
        optimizer.zero_grad()
        loss = torch.nn.functional.cross_entropy(model(x), y)
        loss.backward()
        return loss

    def plain():
        for _ in range(steps):
            closure()
            optimizer.step()

    def watched():
        for _ in range(steps):
            watch.step(closure)
            optimizer.step()

    return {"plain": plain, "watch": watched}, watch


# --------------------------------------------------------------------------- DDP


def _ddp_rank(rank: int, world: int, port: int, out: str, repeats: int, steps: int, threads: int) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(threads)
    torch.distributed.init_process_group("gloo", rank=rank, world_size=world)
    torch.manual_seed(0)
    model = torch.nn.parallel.DistributedDataParallel(mlp())
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    x, y = batch(rank)
    variants, watch = _loops(model, optimizer, x, y, Path(out) / "runs", steps)
    times = C.interleaved(variants, repeats, warmup=2)
    watch.close()
    if rank == 0:
        Path(out, "times.json").write_text(json.dumps(times))
    torch.distributed.destroy_process_group()


def measure_ddp(repeats: int, steps: int, threads: int) -> dict:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    with tempfile.TemporaryDirectory(prefix="stablenca-bench-ddp-") as tmp:
        torch.multiprocessing.spawn(_ddp_rank, args=(2, port, tmp, repeats, steps, threads), nprocs=2)
        times = json.loads(Path(tmp, "times.json").read_text())
    return _summary(times, steps)


# --------------------------------------------------------------------------- Lightning


def measure_lightning(repeats: int, steps: int) -> dict:
    import logging

    import lightning.pytorch as pl

    from stablenca.integrations.lightning import StableNCACallback

    logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)

    class Module(pl.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.net = mlp()

        def training_step(self, data, index):
            x, y = data
            return torch.nn.functional.cross_entropy(self.net(x), y)

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.01)

    x, y = batch()
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x.repeat(steps, 1), y.repeat(steps)),
                                         batch_size=128)

    with tempfile.TemporaryDirectory(prefix="stablenca-bench-pl-") as tmp:
        def fit(callbacks):
            torch.manual_seed(0)
            trainer = pl.Trainer(max_steps=steps, callbacks=callbacks, logger=False, enable_checkpointing=False,
                                 enable_progress_bar=False, enable_model_summary=False, accelerator="cpu")
            trainer.fit(Module(), loader)

        variants = {"plain": lambda: fit([]),
                    "callback": lambda: fit([StableNCACallback(out=Path(tmp) / "pl", force=True)])}
        times = C.interleaved(variants, repeats, warmup=1)
    return _summary(times, steps)


# --------------------------------------------------------------------------- torch.compile


def measure_compile(repeats: int, steps: int) -> dict:
    torch.manual_seed(0)
    model = torch.compile(mlp())
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    x, y = batch()
    started = time.perf_counter()
    loss = torch.nn.functional.cross_entropy(model(x), y)
    loss.backward()  # the first call compiles the forward, the first backward the backward graph
    compile_seconds = time.perf_counter() - started
    with tempfile.TemporaryDirectory(prefix="stablenca-bench-compile-") as tmp:
        variants, watch = _loops(model, optimizer, x, y, Path(tmp) / "runs", steps)
        times = C.interleaved(variants, repeats, warmup=2)
        watch.close()
    result = _summary(times, steps)
    result["compile_seconds"] = compile_seconds
    return result


# --------------------------------------------------------------------------- report


def _summary(times: dict[str, list[float]], steps: int) -> dict:
    baseline = next(iter(times))
    ratios = C.paired_ratios(times, baseline)
    return {"steps_per_sample": steps, "times": times, "ratios": ratios,
            "per_step": {name: C.median(values) / steps for name, values in times.items()},
            "ratio": {name: C.median(values) for name, values in ratios.items()}}


def _table(result: dict) -> str:
    rows = []
    for name, per_step in result["per_step"].items():
        low, high = C.quartiles(result["ratios"][name])
        rows.append([name, C.fmt_seconds(per_step), f"{result['ratio'][name]:.3f}×",
                     f"{low:.3f}–{high:.3f}"])
    return C.md_table(["variant", "median per step", "ratio to plain (median of rounds)", "ratio quartiles"], rows)


def main(argv=None) -> int:
    p = C.parser(__doc__.splitlines()[0])
    p.add_argument("--repeats", type=int, default=None, help="interleaved rounds (default 20, quick 3)")
    p.add_argument("--steps", type=int, default=None, help="steps per sample (default 20, quick 5)")
    args = C.parse(p, argv)
    info = C.machine_info()
    repeats = args.repeats or (3 if args.quick else 20)
    steps = args.steps or (5 if args.quick else 20)
    threads = args.threads or 1  # two ranks on a small machine: one thread each
    C.stderr("bench_integrations: DDP")
    ddp = measure_ddp(repeats, steps, threads)
    C.stderr("bench_integrations: Lightning")
    lightning = measure_lightning(repeats, steps)
    C.stderr("bench_integrations: torch.compile")
    compiled = measure_compile(repeats, steps)
    body = (f"{repeats} interleaved rounds after warm-up; a sample is {steps} healthy steps; the model is an MLP "
            "64 → 256 → 256 → 10, batch 128, cross-entropy, SGD. The watch writes its records to a temporary "
            "directory (`out=`), as in a real run.\n\n"
            f"### DDP, 2 ranks over gloo (one torch thread per rank), rank 0's times\n\n{_table(ddp)}\n"
            "The watch's only collective on a healthy step is one all-reduce of a 2-integer flag.\n\n"
            f"### Lightning `Trainer.fit`, {steps} steps per fit, without and with `StableNCACallback`\n\n"
            f"{_table(lightning)}\n"
            f"### `torch.compile` (inductor), plain compiled steps vs the same under the watch\n\n"
            f"First step, compiling the forward and backward graphs: {compiled['compile_seconds']:.1f} s.\n\n"
            f"{_table(compiled)}")
    md = C.section("Where users train: DDP watch, Lightning callback, compiled model",
                   C.command_line("bench_integrations.py", args), info, body)
    C.emit(md, {"ddp": ddp, "lightning": lightning, "compile": compiled}, args)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
