"""The nca_logspace loss on ModernNCA: the fused kernel against autograd through the eager formulation.

``python bench/logspace_epoch.py [--rounds 7] [--threads 2] [--states 0,26]``

One Trainer (ModernNCA, TALENT's defaults, the ``nca_logspace`` loss, float32) is trained
``--states`` epochs (untimed). From each of those saved states, one epoch of training steps
(3 steps of 1024 queries x 1848 candidates; no validation) runs with each kernel, the
state restored before every sample, the kernels interleaved round by round:

* ``eager``: :func:`stablenca.losses.builtin.nca_logspace` through autograd: masked_fill
  then ``torch.logsumexp`` (the formulation the docs teach);
* ``fused``: :class:`stablenca.models.fused._NCALogspaceObjective`: the same published
  tensors, masks built from class rows, no exp given an argument below log(tiny) + 16.

On a CPU build with MKL, ``torch.exp`` of -inf (a masked entry) costs about 7x a normal
argument, and an underflowing one 25-80x (``bench/underflow_cost.py``); ``masked_fill`` on a
(1024 x 1848) matrix costs several elementwise passes. The ratio is per state, so the
underflow of a late state shows apart from an early one. The kernels train the same model
within rounding (tests/test_fused_logspace.py), so each state's loss is printed for both.
"""

from __future__ import annotations

import copy
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch  # noqa: E402

import _common as C  # noqa: E402
from stablenca.training import StepContext, Trainer, TrainConfig  # noqa: E402

KERNELS = ("eager", "fused")


def main(argv=None) -> None:
    parser = C.parser(__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--states", default="0,26", help="epochs trained (untimed) before each timed state")
    args = C.parse(parser, argv)
    if args.threads is None:
        torch.set_num_threads(2)
    rounds = 2 if args.quick else args.rounds
    states = sorted({int(s) for s in args.states.split(",") if s.strip()})
    info = C.machine_info()
    trainers = {kernel: Trainer(TrainConfig(model="modernnca", loss="nca_logspace", kernel=kernel, seed=0))
                for kernel in KERNELS}
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
            trainer.optimizer.load_state_dict(optimizer)
            trainer.generator.set_state(generator)

        def epoch(kernel):
            trainer = trainers[kernel]
            for step_in_epoch, batch in enumerate(trainer.epoch_batches()):
                context = trainer.run_step(StepContext(0, 0, step_in_epoch, batch))
                losses.setdefault(kernel, float(context.loss.detach()))

        times = C.interleaved({k: (lambda k=k: epoch(k)) for k in KERNELS}, rounds,
                              before={k: (lambda k=k: restore(k)) for k in KERNELS})
        ratio = C.median(C.paired_ratios(times, "fused")["eager"])
        steps = len(driver.epoch_batches())
        rows.append([state, C.fmt_seconds(C.median(times["eager"]) / steps),
                     C.fmt_seconds(C.median(times["fused"]) / steps), f"{ratio:.2f}×",
                     f"{losses['eager']:.6g} / {losses['fused']:.6g}"])
        data[state] = {"seconds": times, "steps": steps, "first_loss": losses}
    body = (f"{rounds} interleaved rounds, float32, {torch.get_num_threads()} torch threads, Abalone, TALENT's "
            "defaults, the nca_logspace loss; one sample = one epoch of training steps from the state's saved "
            "weights and optimizer. Ratio: median of the per-round eager / fused.\n\n"
            + C.md_table(["state (epochs trained)", "eager, per step", "fused, per step", "eager / fused",
                          "first step's loss, eager / fused"], rows))
    command = C.command_line("logspace_epoch.py", args, f" --rounds {rounds} --states {args.states}")
    C.emit(C.section("nca_logspace: fused kernel against autograd", command, info, body), data, args)


if __name__ == "__main__":
    main()
