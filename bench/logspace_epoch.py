"""The nca_logspace loss on ModernNCA: the fused kernel against autograd through the eager formulation.

``python bench/logspace_epoch.py [--rounds 7] [--threads 2] [--states 0,26] [--against REV]``

One Trainer (ModernNCA, TALENT's defaults, the ``nca_logspace`` loss, float32) is trained
``--states`` epochs (untimed). From each of those saved states, one epoch of training steps
(3 steps of 1024 queries x 1848 candidates; no validation) runs with each kernel, the
state restored before every sample, the kernels interleaved round by round:

* ``eager``: :func:`stablenca.losses.builtin.nca_logspace` through autograd: masked_fill
  then ``torch.logsumexp`` (the formulation the docs teach);
* ``fused``: :class:`stablenca.models.fused._NCALogspaceObjective`: the same published
  tensors, masks built from class rows, no exp given an argument below log(tiny) + 16;
* with ``--against REV``, also ``fused at REV``: the fused kernel of ``stablenca/models/fused.py``
  as committed at git revision REV (loaded from ``git show``, run in the same Trainer).

On a CPU build with MKL, ``torch.exp`` of -inf (a masked entry) costs about 7x a normal
argument, and an underflowing one 25-80x (``bench/underflow_cost.py``); ``masked_fill`` on a
(1024 x 1848) matrix costs several elementwise passes. The ratio is per state, so the
underflow of a late state shows apart from an early one. The kernels train the same model
within rounding (tests/test_fused_logspace.py), so each state's loss is printed for both.
"""

from __future__ import annotations

import copy
import subprocess
import sys
import types
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch  # noqa: E402

import _common as C  # noqa: E402
from stablenca.training import StepContext, Trainer, TrainConfig  # noqa: E402

KERNELS = ("eager", "fused")
ROOT = Path(__file__).resolve().parent.parent


def objective_at(revision: str):
    """``nca_logspace_objective`` of ``stablenca/models/fused.py`` as committed at ``revision``."""
    source = subprocess.run(["git", "show", f"{revision}:stablenca/models/fused.py"], cwd=ROOT, check=True,
                            capture_output=True, text=True).stdout
    module = types.ModuleType("stablenca.models._fused_at_revision")
    module.__package__ = "stablenca.models"  # its relative imports resolve to today's package
    exec(compile(source, f"{revision}:stablenca/models/fused.py", "exec"), module.__dict__)
    return module.nca_logspace_objective


def main(argv=None) -> None:
    parser = C.parser(__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--states", default="0,26", help="epochs trained (untimed) before each timed state")
    parser.add_argument("--against", metavar="REV", default=None,
                        help="also time the fused kernel as committed at this git revision")
    args = C.parse(parser, argv, default_threads=2)
    rounds = 2 if args.quick else args.rounds
    states = sorted({int(s) for s in args.states.split(",") if s.strip()})
    info = C.machine_info()
    kernels = KERNELS + ((f"fused at {args.against}",) if args.against else ())
    trainers = {kernel: Trainer(TrainConfig(model="modernnca", loss="nca_logspace", kernel=kernel.split()[0], seed=0))
                for kernel in kernels}
    if args.against:
        trainers[kernels[-1]].fused_objective = objective_at(args.against)
    driver = trainers["fused"]  # trains the states; both kernels start each sample from its weights
    rows, data, trained = [], {}, 0
    for state in states:
        for _ in range(state - trained):
            for step_in_epoch, batch in enumerate(driver.epoch_batches()):
                driver.run_step(StepContext(0, 0, step_in_epoch, batch))
        trained = state
        weights = copy.deepcopy(driver.model.state_dict())
        optimizer = copy.deepcopy(driver.optimizer.state_dict())
        generator = driver.generator.get_state()  # the same batches and candidates for both kernels
        losses = {}

        def restore(kernel):
            trainer = trainers[kernel]
            trainer.model.load_state_dict(weights)
            # a copy: the optimizer takes the saved tensors themselves as its state and updates them in place
            trainer.optimizer.load_state_dict(copy.deepcopy(optimizer))
            trainer.generator.set_state(generator)

        def epoch(kernel):
            trainer = trainers[kernel]
            for step_in_epoch, batch in enumerate(trainer.epoch_batches()):
                context = trainer.run_step(StepContext(0, 0, step_in_epoch, batch))
                losses.setdefault(kernel, float(context.loss.detach()))

        times = C.interleaved({k: (lambda k=k: epoch(k)) for k in kernels}, rounds,
                              before={k: (lambda k=k: restore(k)) for k in kernels})
        ratios = C.paired_ratios(times, "fused")
        steps = len(driver.epoch_batches())
        rows.append([state] + [C.fmt_seconds(C.median(times[k]) / steps) for k in kernels]
                    + [f"{C.median(ratios[k]):.2f}×" for k in kernels if k != "fused"]
                    + [" / ".join(f"{losses[k]:.6g}" for k in kernels)])
        data[state] = {"seconds": times, "steps": steps, "first_loss": losses}
    body = (f"{rounds} interleaved rounds, float32, {torch.get_num_threads()} torch threads, Abalone, TALENT's "
            "defaults, the nca_logspace loss; one sample = one epoch of training steps from the state's saved "
            "weights and optimizer. Ratio: median of the per-round time over the fused kernel's.\n\n"
            + C.md_table(["state (epochs trained)"] + [f"{k}, per step" for k in kernels]
                         + [f"{k} / fused" for k in kernels if k != "fused"]
                         + ["first step's loss, " + " / ".join(kernels)], rows))
    against = f" --against {args.against}" if args.against else ""
    command = C.command_line("logspace_epoch.py", args, f" --rounds {rounds} --states {args.states}{against}")
    C.emit(C.section("nca_logspace: fused kernel against autograd", command, info, body), data, args)


if __name__ == "__main__":
    main()
