"""What diagnosis adds to a training step: no hook, the sentinel, the recorder, both; one run.

``python bench/probe_cost.py [--rounds 20] [--threads 2] [--clock cpu]``

For each model (ModernNCA with TALENT's defaults, 1024 queries x 1848 candidates; the
student's SeedNCA, batch 32, in-batch pairs, its finite ``difference`` loss) four Trainers
with the same config and seed train, interleaved round by round with the order rotated.
One sample is one epoch of training steps as ``Trainer.fit`` runs them (every batch,
the short last one included, through ``Trainer.run_step``), then the hooks'
``on_epoch_end``, where the recorder writes what it held; validation is left out (the
hooks add nothing to it). So the SeedNCA recorder's summaries of held steps (at most
``probes.DEFERRED_STEPS`` at a time, and at each epoch's end) are inside the samples:
amortised, not hidden in a median. An epoch is 3 ModernNCA steps or 84 SeedNCA steps.

Reported: the median time per step (sample / steps per epoch) and the ratio to the same
model with no hook (median of the per-round ratios); and, independent of load, the tensor
ops that each variant adds per step (torch.profiler's aten op count over one sample,
minus no hook's).
Target (issue 16): sentinel + recorder <= 1.10x for both models.

The last variant is diagnose's hooks with the probes' full-matrix reductions taken after the
optimizer step instead of as the loss publishes each matrix (what the recorder did before round
13); its ratio to sentinel + recorder, per round, shows what taking them early saves. Its records
are compared with the recorder's: they must be the same bytes.

For ModernNCA the ratio is also split by what the probes had to do: in epochs whose softmax
underflowed (a zero or subnormal entry in any step, read back from the recorder's own records)
they count the underflow over the whole (1024 x 1848) matrix; in the others one minimum shows
there is nothing to count. The split shows where the overhead is, so its median depends on how
many late, underflowing epochs ``--rounds`` reaches.

``--clock cpu`` times with the process's CPU time instead of the wall clock: on a busy
machine, with ``--threads 1``, it is much less disturbed by other processes (with more
threads it would count OpenMP's spinning).
"""

from __future__ import annotations

import contextlib
import json
import math
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from stablenca.runtime.numpy_dispatch import prefer_avx2_sorting  # noqa: E402

prefer_avx2_sorting()  # as the CLI does on AMD Zen 4, before torch imports numpy

import torch  # noqa: E402

import _common as C  # noqa: E402
from stablenca.runtime.recorder import Recorder  # noqa: E402
from stablenca.runtime.sentinel import Sentinel  # noqa: E402
from stablenca.training import StepContext, Trainer, TrainConfig  # noqa: E402

class _ReducingAfterTheStep(Recorder):
    """The recorder with every reduction taken after the optimizer step, as before round 13 (no
    :class:`stablenca.runtime.probes.PublishedReductions` sink around forward and backward): the same records."""

    @contextlib.contextmanager
    def step_context(self, trainer, ctx):
        try:
            yield
        except BaseException:
            self.flush()
            raise


LATE = "sentinel + recorder, reduced after the step"
HOOKS = {
    "no hook": lambda d: [],
    "sentinel": lambda d: [Sentinel(mode="sentinel")],
    "recorder": lambda d: [Recorder(d)],
    "sentinel + recorder": lambda d: [Sentinel(mode="sentinel"), Recorder(d)],
    LATE: lambda d: [Sentinel(mode="sentinel"), _ReducingAfterTheStep(d)],
}
MODELS = ("modernnca", "seed")
TARGET = 1.10


def epochs(tmp: Path, model: str) -> tuple[dict, int]:
    """One callable per hook set, each training one epoch of its own Trainer; and the steps per epoch."""
    variants = {}
    for label, make in HOOKS.items():
        run_dir = tmp / f"{model}_{label.replace(' ', '_')}"
        run_dir.mkdir(parents=True, exist_ok=True)
        loss = "difference" if model == "seed" else None  # the student's model with its finite loss
        trainer = Trainer(TrainConfig(model=model, loss=loss, seed=0, epochs=1), hooks=make(run_dir))
        for hook in trainer.hooks:
            hook.on_fit_start(trainer)

        def run(trainer=trainer):
            for step_in_epoch, batch in enumerate(trainer.epoch_batches()):
                trainer.run_step(StepContext(trainer.epoch, trainer.global_step, step_in_epoch, batch))
                trainer.global_step += 1
            for hook in trainer.hooks:
                hook.on_epoch_end(trainer, trainer.epoch, {})
            trainer.epoch += 1

        variants[label] = run
    # Counted without drawing a batch order: epoch_batches() would advance the last variant's generator, and
    # that variant would then train on other batches than the rest (it did until round 13).
    return variants, math.ceil(len(trainer.x_train) / min(trainer.config.batch_size, len(trainer.x_train)))


def underflowed_epochs(run_dir: Path) -> set[int]:
    """The epochs in which a recorded step's softmax had a zero or subnormal entry."""
    epochs = set()
    with open(run_dir / "records.jsonl") as lines:
        for line in lines:
            record = json.loads(line)
            if record.get("softmax_zero", 0) or record.get("softmax_subnormal", 0):
                epochs.add(record["epoch"])
    return epochs


def ops_per_step(variants: dict, steps: int) -> dict[str, float]:
    counts = {}
    for label, run in variants.items():
        with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as profile:
            run()
        counts[label] = sum(e.count for e in profile.key_averages() if e.key.startswith("aten::")) / steps
    return counts


def interleaved(variants: dict, rounds: int, clock) -> dict[str, list[float]]:
    """C.interleaved with a choice of clock (one warm-up round, the order rotated each round)."""
    names = list(variants)
    for name in names:
        variants[name]()
    times: dict[str, list[float]] = {name: [] for name in names}
    for r in range(rounds):
        for name in names[r % len(names):] + names[:r % len(names)]:
            started = clock()
            variants[name]()
            times[name].append(clock() - started)
    return times


def main(argv=None) -> None:
    parser = C.parser(__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--clock", choices=("wall", "cpu"), default="wall",
                        help="wall: time.perf_counter (default); cpu: time.process_time (for a busy machine)")
    args = C.parse(parser, argv, default_threads=2)
    rounds = 3 if args.quick else args.rounds
    info = C.machine_info()
    rows, split_rows, early_rows, data = [], [], [], {}
    with tempfile.TemporaryDirectory(prefix="probe_cost_") as tmp:
        for model in MODELS:
            variants, steps = epochs(Path(tmp), model)
            times = interleaved(variants, rounds, time.process_time if args.clock == "cpu" else time.perf_counter)
            ops = ops_per_step(variants, steps)
            ratios = C.paired_ratios(times, "no hook")
            data[model] = {"seconds_per_sample": times, "steps_per_sample": steps, "aten_ops_per_step": ops}
            early = C.median(C.paired_ratios(times, LATE)["sentinel + recorder"])
            same = all((Path(tmp) / f"{model}_{label.replace(' ', '_')}" / "records.jsonl").read_bytes() ==
                       (Path(tmp) / f"{model}_recorder" / "records.jsonl").read_bytes()
                       for label in ("sentinel + recorder", LATE))
            data[model].update(early_over_late=early, same_records=same)
            early_rows.append([model, f"{early:.3f}×", "yes" if same else "**no**"])
            for label in HOOKS:
                ratio = C.median(ratios[label])
                rows.append([model, label, C.fmt_seconds(C.median(times[label]) / steps), f"{ratio:.2f}×",
                             f"{ops[label] - ops['no hook']:+.1f}"])
            if model == "modernnca":  # round r timed epoch r + 1 (epoch 0 was the warm-up round)
                underflowed = underflowed_epochs(Path(tmp) / "modernnca_recorder")
                rounds_by_kind = {kind: [r for r in range(rounds) if ((r + 1) in underflowed) == flag]
                                  for kind, flag in (("softmax underflowed", True), ("nothing underflowed", False))}
                data[model]["underflowed_epochs"] = sorted(underflowed)
                for kind, kept in rounds_by_kind.items():
                    split_rows.append([kind, str(len(kept))] + [
                        f"{C.median([ratios[label][r] for r in kept]):.2f}×" if kept else "n/a"
                        for label in HOOKS if label != "no hook"])
    clock = "process CPU time" if args.clock == "cpu" else "wall clock"
    steps = {model: data[model]["steps_per_sample"] for model in MODELS}
    body = [f"{rounds} interleaved rounds ({clock}), float32, {torch.get_num_threads()} torch threads, Abalone; one sample "
            f"= one epoch of training steps and the hooks' on_epoch_end, no validation ({steps['modernnca']} ModernNCA "
            f"or {steps['seed']} SeedNCA steps). Ratio: median of the per-round ratios to the same model with "
            f"no hook; target ≤ {TARGET:.2f}×. Ops: aten ops added per step (torch.profiler, one sample).", "",
            C.md_table(["model", "hooks", "per step", "vs no hook", "aten ops added per step"], rows), "",
            "ModernNCA's ratios by what the probes had to count (rounds split by whether the epoch's softmax "
            "underflowed in any step, from the recorder's records):", "",
            C.md_table(["epochs", "rounds"] + [f"{label} / no hook" for label in HOOKS if label != "no hook"],
                       split_rows), "",
            "Reductions taken as each matrix is published against after the step (median per-round ratio of "
            f"sentinel + recorder to {LATE}; below 1 means taking them early is faster), and whether the three "
            "recorders wrote the same records:", "",
            C.md_table(["model", "early / after the step", "same records.jsonl"], early_rows)]
    command = C.command_line("probe_cost.py", args, f" --rounds {args.rounds}" +
                             (" --clock cpu" if args.clock == "cpu" else ""))
    markdown = C.section("Probe cost (issue 16)", command, info, "\n".join(body))
    C.emit(markdown, data, args)


if __name__ == "__main__":
    main()
