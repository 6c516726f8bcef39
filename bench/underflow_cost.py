"""What float32 underflow costs in time: exp and a matrix product on tiny numbers, and the student's epochs.

``python bench/underflow_cost.py [--rounds 7] [--epochs 12]``

Underflow is usually taught as a loss of accuracy. On some CPUs it is also a loss of speed,
and that is part of why ``stablenca diagnose`` takes as long as it does: its ``ratio_eps``
and ``difference`` runs inflate the distance scale until most of ``exp(-d)`` underflows.

* **Kernels** (one thread, so that the flush setting below reaches every thread that computes):
  ``torch.exp`` and ``numpy.exp`` over 2^20 float32 arguments whose results are normal, subnormal
  (arguments in (-103.97, -87.34)) or zero (below -103.97, or -inf: a masked entry); a (1848 x 1024) @ (1024 x 128)
  product, the shape of one gradient product of a ModernNCA step, whose left operand holds
  normal or subnormal numbers. Each also with ``torch.set_flush_denormal(True)`` (the CPU's
  flush-to-zero and denormals-are-zero modes): if that makes it fast, the time went to the
  CPU's handling of subnormal operands; if not, to the library's own path for such arguments.
* **The distance backward** (forward and backward of the 1024 x 1848 distances of a ModernNCA step,
  1848 x 128 embeddings), with a gradient that is normal or half subnormal (what the student's
  underflowed ``exp(-d)`` sends back): torch.cdist's own backward against the package's
  :func:`stablenca.models.neighbours.euclidean_distances`, which runs torch's formula 2^64 higher.
* **Epochs**: ModernNCA with the student's ``difference`` (or ``ratio_eps``) loss, TALENT's candidates,
  float32, trained ``--epochs`` epochs (untimed), then one more epoch (training steps and
  validation) from that same saved state, timed with the default IEEE modes and with
  flushing, interleaved. Flushing changes the numbers (subnormals become zero), so it is
  never an option for a diagnosis, which must compute what the student's code computes;
  here it only measures what the subnormals cost. A third variant trains the epoch with torch.cdist's
  backward instead of the package's, and the table says whether both left the same weights.
  The epoch's exp zero and subnormal counts come from what the loss published.
* **Validation** from the same state: ``Trainer.evaluate("val")`` as the package runs it, whose
  readout raises exp arguments below :func:`stablenca.models.neighbours.exp_floor` to it (no
  weight underflows), against the same readout with the floor at -inf (IEEE: the weights
  underflow as they fall), interleaved. The count is of the (validation row, training row)
  pairs whose argument lies below the floor. Both give the same metrics here: each raised
  weight adds at most e^floor (1e-31) to a row sum of at least 1.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
import copy
import math
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import numpy as np  # noqa: E402
import torch  # noqa: E402

import _common as C  # noqa: E402
import stablenca.models.neighbours as neighbours  # noqa: E402
from stablenca.models.neighbours import euclidean_distances  # noqa: E402
from stablenca.publish import capture  # noqa: E402
from stablenca.training import StepContext, Trainer, TrainConfig  # noqa: E402

#: Argument ranges of exp(x) in float32 by what the result is (ln of the smallest normal, -87.34;
#: below -103.97 even the smallest subnormal rounds to 0).
EXP_RANGES = {"normal result": (-80.0, -1.0), "subnormal result": (-103.9, -87.4), "zero result": (-200.0, -104.0)}


@contextlib.contextmanager
def flushing(enabled: bool):
    """The calling thread's flush-to-zero / denormals-are-zero modes for the block."""
    if enabled:
        torch.set_flush_denormal(True)
    try:
        yield
    finally:
        if enabled:
            torch.set_flush_denormal(False)


def kernel_variants() -> dict:
    generator = torch.Generator().manual_seed(0)
    arguments = {name: torch.empty(1 << 20).uniform_(low, high, generator=generator)
                 for name, (low, high) in EXP_RANGES.items()}
    # exp(-inf) = 0: what a masked entry of a logsumexp costs (the fused nca_logspace kernel raises them)
    arguments["-inf argument"] = torch.full((1 << 20,), -math.inf)
    operands = {"normal": torch.rand(1848, 1024, generator=generator) * 1e-3 + 1e-6,
                "subnormal": torch.rand(1848, 1024, generator=generator) * 1e-39}
    right = torch.randn(1024, 128, generator=generator)
    variants = {}
    for flush in (False, True):
        suffix = ", flushed" if flush else ""
        for name, x in arguments.items():
            variants[f"torch.exp, {name}{suffix}"] = lambda x=x, flush=flush: _flushed(flush, torch.exp, x)
            values = x.numpy()
            variants[f"numpy.exp, {name}{suffix}"] = lambda v=values, flush=flush: _flushed(flush, np.exp, v)
        for name, left in operands.items():
            variants[f"product, {name} operand{suffix}"] = lambda a=left, flush=flush: _flushed(flush, torch.mm, a, right)
    embeddings = torch.randn(1848, 128, generator=generator) * 3
    weights = torch.randn(1024, 1848, generator=generator)
    gradients = {"normal": weights * 1e-3,
                 "half subnormal": torch.where(torch.rand(weights.shape, generator=generator) < 0.5, weights * 1e-39,
                                               weights * 1e-3)}
    for name, gradient in gradients.items():
        for label, distances in (("torch.cdist", _torch_cdist), ("package", euclidean_distances)):
            variants[f"distances, {label}, {name} gradient"] = \
                lambda e=embeddings, g=gradient, f=distances: _distance_step(f, e, g)
    return variants


def _torch_cdist(x1, x2):
    return torch.cdist(x1, x2, p=2)


def _distance_step(distances_fn, embeddings, gradient):
    """Forward and backward of a step's distances (the batch is the leading rows), with ``gradient`` sent back."""
    leaf = embeddings.detach().requires_grad_()
    distances_fn(leaf[:gradient.shape[0]], leaf).backward(gradient)
    return leaf.grad


def _flushed(flush: bool, function, *args):
    with flushing(flush):
        return function(*args)


def trained(loss: str, epochs: int) -> tuple[Trainer, Callable[[], None]]:
    """A Trainer of ModernNCA with ``loss`` after ``epochs`` epochs (training and validation), and a
    function that puts it back in that state."""
    trainer = Trainer(TrainConfig(seed=0, epochs=1, loss=loss, patience=None))
    for _ in range(epochs):
        for i, batch in enumerate(trainer.epoch_batches()):
            trainer.run_step(StepContext(0, i, i, batch))
        trainer.evaluate("val")
    saved = (copy.deepcopy(trainer.model.state_dict()), copy.deepcopy(trainer.optimizer.state_dict()),
             trainer.generator.get_state())

    def restore():
        trainer.model.load_state_dict(saved[0])
        # a copy: the optimizer takes the saved tensors themselves as its state and updates them in place
        trainer.optimizer.load_state_dict(copy.deepcopy(saved[1]))
        trainer.generator.set_state(saved[2])

    return trainer, restore


def epoch_variants(trainer: Trainer, restore) -> tuple[dict, dict, dict]:
    """(variants, before, counts): one epoch from the saved state, with and without flushing."""

    def epoch(counts=None):
        for i, batch in enumerate(trainer.epoch_batches()):
            if counts is None:
                trainer.run_step(StepContext(0, i, i, batch))
                continue
            with capture() as published:
                trainer.run_step(StepContext(0, i, i, batch))
            exp_out = published["exp_out"][~published["self_mask"]]
            counts["exp outputs"] += exp_out.numel()
            counts["zero"] += int((exp_out == 0).sum())
            counts["subnormal"] += int(((exp_out > 0) & (exp_out < torch.finfo(exp_out.dtype).tiny)).sum())
        trainer.evaluate("val")

    counts = {"exp outputs": 0, "zero": 0, "subnormal": 0}
    restore()
    epoch(counts)
    loss = trainer.config.loss
    variants = {f"{loss} epoch": epoch, f"{loss} epoch, flushed": lambda: _flushed(True, epoch),
                f"{loss} epoch, torch.cdist's backward": lambda: _with_torch_cdist(epoch)}
    return variants, {name: restore for name in variants}, counts


def _with_torch_cdist(function):
    """``function()`` with the Trainer's distances from torch.cdist itself (its own backward)."""
    kept = neighbours.euclidean_distances
    neighbours.euclidean_distances = _torch_cdist
    try:
        return function()
    finally:
        neighbours.euclidean_distances = kept


def same_weights_either_way(trainer: Trainer, restore, epoch) -> bool:
    """Whether one epoch from the saved state leaves the same weights, bit for bit, with the package's
    distance backward and with torch.cdist's."""
    states = []
    for run in (epoch, lambda: _with_torch_cdist(epoch)):
        restore()
        run()
        states.append({k: v.clone() for k, v in trainer.model.state_dict().items()})
    return all(torch.equal(states[0][k], states[1][k]) for k in states[0])


def validation_variants(trainer: Trainer, restore) -> tuple[dict, dict]:
    """(variants, facts): the validation from the saved state, with the package's exp floor and without."""
    restore()
    floor = neighbours.exp_floor(trainer.dtype)
    with torch.no_grad():  # the readout's arguments: row minimum minus distance
        distances = torch.cdist(trainer.embed(trainer.data.tensors("val", trainer.dtype)[0]),
                                trainer.embed(trainer.x_train))
        below = int(((distances.amin(dim=1, keepdim=True) - distances) < floor).sum())

    def unraised():
        package_floor = neighbours.exp_floor
        neighbours.exp_floor = lambda dtype: -math.inf
        try:
            return trainer.evaluate("val")
        finally:
            neighbours.exp_floor = package_floor

    metrics = {"raised": trainer.evaluate("val"), "unraised": unraised()}
    loss = trainer.config.loss
    variants = {f"{loss} validation, floor raised (package)": lambda: trainer.evaluate("val"),
                f"{loss} validation, IEEE underflow": unraised}
    return variants, {"pairs": distances.numel(), "below_floor": below, "metrics": metrics}


def main(argv=None) -> None:
    parser = C.parser(__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--epochs", type=int, default=12, help="untimed epochs before the timed one")
    parser.add_argument("--losses", default="difference,ratio_eps")
    args = C.parse(parser, argv)
    torch.set_num_threads(1)  # the flush modes are per thread: one thread computes everything
    info = C.machine_info()
    kernels = C.interleaved(kernel_variants(), args.rounds)
    rows = []
    base = {"torch.exp": "torch.exp, normal result", "numpy.exp": "numpy.exp, normal result",
            "product": "product, normal operand", "distances": "distances, torch.cdist, normal gradient"}
    for name, times in kernels.items():
        reference = kernels[base[name.split(",")[0]]]
        ratio = C.median([t / r for t, r in zip(times, reference)])
        rows.append([name, C.fmt_seconds(C.median(times)), f"{ratio:.1f}×"])
    body = (f"{args.rounds} interleaved rounds, 1 torch thread, float32; exp over 2^20 arguments, the product "
            "(1848 × 1024) @ (1024 × 128), the distances of a step (1024 × 1848 from 1848 × 128 embeddings, "
            "forward and backward). Ratio: median per-round time over the same kernel's normal case without "
            "flushing (for the distances: torch.cdist's, normal gradient).\n\n"
            + C.md_table(["kernel, inputs", "median", "vs normal"], rows))
    data = {"kernels": kernels, "epochs": {}, "validation": {}}
    epoch_rows, validation_rows = [], []
    for loss in [name for name in args.losses.split(",") if name]:
        trainer, restore = trained(loss, args.epochs)
        variants, before, counts = epoch_variants(trainer, restore)
        times = C.interleaved(variants, args.rounds, before=before)
        plain, flushed = times[f"{loss} epoch"], times[f"{loss} epoch, flushed"]
        torch_backward = times[f"{loss} epoch, torch.cdist's backward"]
        share = (counts["zero"] + counts["subnormal"]) / max(counts["exp outputs"], 1)
        same = same_weights_either_way(trainer, restore, variants[f"{loss} epoch"])
        epoch_rows.append([loss, f"{counts['zero']:,} + {counts['subnormal']:,} of {counts['exp outputs']:,} "
                           f"({share:.0%})", C.fmt_seconds(C.median(plain)), C.fmt_seconds(C.median(flushed)),
                           f"{C.median([p / f for p, f in zip(plain, flushed)]):.2f}×",
                           C.fmt_seconds(C.median(torch_backward)),
                           f"{C.median([t / p for t, p in zip(torch_backward, plain)]):.2f}×", "yes" if same else "no"])
        data["epochs"][loss] = {"times": times, "counts": counts, "same_weights": same}
        variants, facts = validation_variants(trainer, restore)
        times = C.interleaved(variants, args.rounds)
        raised, unraised = times.values()
        validation_rows.append([loss, f"{facts['below_floor']:,} of {facts['pairs']:,} "
                                f"({facts['below_floor'] / facts['pairs']:.0%})", C.fmt_seconds(C.median(unraised)),
                                C.fmt_seconds(C.median(raised)),
                                f"{C.median([u / r for u, r in zip(unraised, raised)]):.2f}×",
                                "yes" if facts["metrics"]["raised"] == facts["metrics"]["unraised"] else "no"])
        data["validation"][loss] = {"times": times, **facts}
    if epoch_rows:
        body += (f"\n\nModernNCA with the student's loss, TALENT's candidates, after {args.epochs} untimed epochs; "
                 "one epoch (training steps and validation) from the same saved state, interleaved:\n\n"
                 + C.md_table(["loss", "exp outputs zero + subnormal (that epoch)", "epoch, IEEE default",
                               "epoch, flushed (other numbers)", "default / flushed", "epoch, torch.cdist's backward",
                               "torch.cdist's / package's", "same weights"], epoch_rows))
    if validation_rows:
        body += (f"\n\nThe validation after {args.epochs} epochs of the same run (`Trainer.evaluate`), interleaved: "
                 "the package's readout raises exp arguments below the floor (float32: −71.34) to it; the other "
                 "lets the weights underflow:\n\n"
                 + C.md_table(["loss", "pairs below the floor", "IEEE underflow", "floor raised (package)",
                               "underflow / raised", "same metrics"], validation_rows))
    command = C.command_line("underflow_cost.py", args, f" --rounds {args.rounds} --epochs {args.epochs}")
    C.emit(C.section("What float32 underflow costs in time", command, info, body), data, args)


if __name__ == "__main__":
    main()
