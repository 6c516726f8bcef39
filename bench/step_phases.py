"""Where a ModernNCA training step spends its time, phase by phase, and how much of it is matrix products.

``python bench/step_phases.py [--steps 30] [--threads 2]``

The default Trainer (fused kernel, float32, TALENT's defaults, Abalone) runs ``--steps`` training
steps of 1024 queries (the epochs' full batches; 1024 + 824 = 1848 candidates embedded). Each
step's phases are timed by wall clock (median over the steps):

* embed: the encoder (PLR embedding, Linear) on the 1848 rows;
* objective: the fused ModernNCA objective's forward;
* backward: ``loss.backward()`` (the objective's closed-form backward, then the encoder's);
* optimizer: AdamW and the gradient and parameter norms the Trainer checks.

A second pass under ``torch.profiler`` splits the backward between the objective's and the
encoder's autograd nodes and gives, per phase, the share of self CPU time spent in matrix
products (``mm``, ``addmm``, ``mv``...: the kernels any implementation must run) against
everything else (elementwise passes, reductions, copies, dispatch). The profiler adds its own
overhead to every op, so its milliseconds are above the wall clock's; its shares are what it is for.
"""

from __future__ import annotations

import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch  # noqa: E402
from torch.profiler import profile  # noqa: E402

import _common as C  # noqa: E402
from stablenca.models.neighbours import sampled_pool_rows  # noqa: E402
from stablenca.training import Trainer, TrainConfig  # noqa: E402

PRODUCTS = {"aten::mm", "aten::addmm", "aten::addmm_", "aten::mv", "aten::addmv", "aten::addmv_", "aten::bmm",
            "aten::baddbmm"}
PHASES = ("embed", "objective", "backward", "optimizer")


def main(argv=None) -> None:
    parser = C.parser(__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=30)
    args = C.parse(parser, argv, default_threads=2)
    steps = 4 if args.quick else args.steps
    info = C.machine_info()
    trainer = Trainer(TrainConfig(seed=0))
    config = trainer.config

    def full_batches():
        while True:
            for batch in trainer.epoch_batches():
                if len(batch) == config.batch_size:
                    yield batch

    batches = full_batches()
    seconds: dict[str, list[float]] = {phase: [] for phase in PHASES}

    def step(timed: bool, label=lambda name: torch.autograd.profiler.record_function(name)):
        batch = next(batches)
        marks = [time.perf_counter()]
        with label("embed"):
            trainer.model.train()
            trainer.optimizer.zero_grad(set_to_none=True)
            rows = sampled_pool_rows(trainer.model, trainer.x_train, trainer.y_train, batch,
                                     sample_rate=config.sample_rate, generator=trainer.generator)
        marks.append(time.perf_counter())
        with label("objective"):
            output = trainer.fused_objective(rows.embeddings[:len(rows.labels)], rows.embeddings, rows.labels,
                                             rows.candidate_labels, task=trainer.task, n_classes=trainer.n_classes,
                                             temperature=trainer.model.temperature)
            loss = output.loss
        marks.append(time.perf_counter())
        with label("backward"):
            loss.backward()
        marks.append(time.perf_counter())
        with label("optimizer"):
            parameters = list(trainer.model.parameters())
            norms = torch._foreach_norm([p.grad for p in parameters], 2, dtype=torch.float64)
            bool(torch.isfinite(torch.stack(norms)).all())
            trainer.optimizer.step()
            torch._foreach_norm([p.detach() for p in parameters], 2, dtype=torch.float64)
        marks.append(time.perf_counter())
        if timed:
            for phase, start, end in zip(PHASES, marks, marks[1:]):
                seconds[phase].append(end - start)

    for _ in range(3):
        step(False)
    for _ in range(steps):
        step(True)
    wall = {phase: statistics.median(values) for phase, values in seconds.items()}

    profiled = max(3, steps // 3)
    with profile() as prof:
        for _ in range(profiled):
            step(False)
    self_us: dict[str, dict[str, float]] = {}
    for event in prof.events():
        if not event.name.startswith("aten::") or event.self_cpu_time_total <= 0:
            continue
        phase, node = None, None
        parent = event.cpu_parent
        while parent is not None:
            if parent.name in PHASES:
                phase = parent.name
            elif "Backward" in parent.name and node is None:
                node = parent.name
            parent = parent.cpu_parent
        if phase is None:
            continue
        if phase == "backward":
            phase = "backward: objective" if node is not None and "Objective" in node else "backward: encoder"
        kind = "products" if event.name in PRODUCTS else "other"
        self_us.setdefault(phase, {"products": 0.0, "other": 0.0})[kind] += event.self_cpu_time_total

    total = sum(wall.values())
    rows = [[phase, C.fmt_seconds(wall[phase]), f"{100 * wall[phase] / total:.0f} %"] for phase in PHASES]
    rows.append(["**step**", f"**{C.fmt_seconds(total)}**", "100 %"])
    profile_rows = []
    for phase in ("embed", "objective", "backward: objective", "backward: encoder", "optimizer"):
        split = self_us.get(phase, {"products": 0.0, "other": 0.0})
        both = split["products"] + split["other"]
        profile_rows.append([phase, C.fmt_seconds(both / 1e6 / profiled), C.fmt_seconds(split["products"] / 1e6 / profiled),
                             f"{100 * split['products'] / both:.0f} %" if both else "n/a"])
    body = (f"{steps} training steps of {config.batch_size} queries × "
            f"{config.batch_size + round(config.sample_rate * (len(trainer.x_train) - config.batch_size))} candidates "
            f"(fused kernel, float32, {torch.get_num_threads()} torch threads, TALENT's defaults, Abalone), "
            "after 3 untimed ones. Wall clock per phase (median over the steps):\n\n"
            + C.md_table(["phase", "per step", "share"], rows)
            + f"\nUnder torch.profiler ({profiled} more steps; self CPU time of the aten ops, per step; the "
              "backward split by the autograd node that ran each op):\n\n"
            + C.md_table(["phase", "aten ops", "of which matrix products", "products' share"], profile_rows))
    command = C.command_line("step_phases.py", args, f" --steps {steps}")
    C.emit(C.section("A ModernNCA training step, phase by phase", command, info, body),
           {"wall": wall, "profile": self_us, "profiled_steps": profiled}, args)


if __name__ == "__main__":
    main()
