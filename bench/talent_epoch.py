"""Time per epoch against TALENT's ModernNCA, and what the recorder's probes add to a step; one run.

``python bench/talent_epoch.py [--rounds 15] [--threads 2] [--talent /work/talent]``

Interleaved rounds (the order rotates each round), one process, the TALENT-format
Abalone of ``talent_split.py``, float32, TALENT's default configuration:

* **epoch**: TALENT's ``train_epoch`` + ``validate`` (what its ``Time cost`` covers, less
  the checkpoint it saves) vs stablenca's steps + ``evaluate("val")``, with the eager
  kernel (autograd through cdist → softmax → readout) and the fused one
  (:mod:`stablenca.models.fused`); and each half alone;
* **probes**: one stablenca training step (``Trainer.run_step``) with no hook, with the
  sentinel, with the recorder, and with both (what ``diagnose`` attaches), for ModernNCA
  and for the student's SeedNCA.

Both libraries keep training between rounds (every call is a real epoch or step on the
current weights); TALENT's printing goes to a discarded buffer.
"""

from __future__ import annotations

import contextlib
import io
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from stablenca.runtime.numpy_dispatch import prefer_avx2_sorting  # noqa: E402

prefer_avx2_sorting()  # as the CLI does on AMD Zen 4, before torch imports numpy

import torch  # noqa: E402

import _common as C  # noqa: E402
from talent_side_by_side import TASK_DIRS, parse_per_epoch_args, talent_args  # noqa: E402
from talent_split import write_split  # noqa: E402
from stablenca.runtime.recorder import Recorder  # noqa: E402
from stablenca.runtime.sentinel import Sentinel  # noqa: E402
from stablenca.training import StepContext, Trainer, TrainConfig  # noqa: E402
from stablenca.training.trainer import KERNELS  # noqa: E402


def epoch_variants(talent, data_root: Path, model_path: Path, task: str) -> dict:
    name = TASK_DIRS[task]
    args = talent_args(talent, data_root, name, model_path)
    args.max_epoch = 1
    train_val, _, info = talent.get_dataset(name, str(data_root))
    talent.set_seeds(0)
    sink = io.StringIO()
    with contextlib.redirect_stdout(sink), contextlib.redirect_stderr(sink):
        method = talent.Method(args, info["task_type"] == "regression")
        method.fit(train_val, info)  # builds the data and model, runs one epoch
    trainers = {kernel: Trainer(TrainConfig(data=str(data_root / name), seed=0, epochs=1, patience=None,
                                            kernel=kernel))
                for kernel in KERNELS}

    def quiet(call):
        def run():
            sink.seek(0)
            sink.truncate()
            with contextlib.redirect_stdout(sink), contextlib.redirect_stderr(sink):
                call()
        return run

    def steps(trainer):
        for batch in trainer.epoch_batches():
            trainer.run_step(StepContext(0, 0, 0, batch))

    variants = {
        "TALENT epoch": quiet(lambda: (method.train_epoch(1), method.validate(1))),
        "TALENT training steps": quiet(lambda: method.train_epoch(1)),
        "TALENT validation": quiet(lambda: method.validate(1)),
    }
    for kernel, trainer in trainers.items():
        variants[f"{kernel} epoch"] = lambda t=trainer: (steps(t), t.evaluate("val"))
        variants[f"{kernel} training steps"] = lambda t=trainer: steps(t)
    variants["stablenca validation"] = lambda: trainers["fused"].evaluate("val")
    return variants


def step_variants(tmp: Path, model: str) -> dict:
    variants = {}
    hook_sets = {
        "no hook": lambda d: [],
        "sentinel": lambda d: [Sentinel(mode="sentinel")],
        "recorder": lambda d: [Recorder(d)],
        "sentinel + recorder": lambda d: [Sentinel(mode="sentinel"), Recorder(d)],
    }
    for label, make in hook_sets.items():
        run_dir = tmp / f"{model}_{label.replace(' ', '_')}"
        run_dir.mkdir(parents=True, exist_ok=True)
        # The student's model with its finite loss: a run that went NaN would time skipped steps.
        loss = "difference" if model == "seed" else None
        trainer = Trainer(TrainConfig(model=model, loss=loss, seed=0, epochs=1), hooks=make(run_dir))
        for hook in trainer.hooks:
            hook.on_fit_start(trainer)
        batches = {"batches": [], "step": 0}

        def step(trainer=trainer, batches=batches):
            if not batches["batches"]:
                batches["batches"] = trainer.epoch_batches()[:-1]  # full-size batches only
            ctx = trainer.run_step(StepContext(0, batches["step"], 0, batches["batches"].pop()))
            batches["step"] += 1
            return ctx

        variants[f"{model} step, {label}"] = step
    return variants


def main(argv=None) -> None:
    parser = C.parser(__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=15)
    args, talent = parse_per_epoch_args(parser, argv)
    rounds = 3 if args.quick else args.rounds
    info = C.machine_info()
    with tempfile.TemporaryDirectory(prefix="talent_epoch_") as tmp_name:
        tmp = Path(tmp_name)
        write_split(tmp / "data")
        epochs = C.interleaved(epoch_variants(talent, tmp / "data", tmp / "models", "multiclass"), rounds)
        steps = {}
        for model in ("modernnca", "seed"):
            steps.update(C.interleaved(step_variants(tmp, model), rounds * 4))
    pairs = [("epoch", "TALENT epoch", "eager epoch", "fused epoch"),
             ("training steps", "TALENT training steps", "eager training steps", "fused training steps"),
             ("validation", "TALENT validation", "stablenca validation", "stablenca validation")]
    rows = []
    for label, theirs, eager, fused in pairs:
        ratios = [C.median([t / o for t, o in zip(epochs[theirs], epochs[ours])]) for ours in (eager, fused)]
        rows.append([label, C.fmt_seconds(C.median(epochs[theirs])), C.fmt_seconds(C.median(epochs[eager])),
                     C.fmt_seconds(C.median(epochs[fused])), f"{ratios[0]:.2f}×", f"{ratios[1]:.2f}×"])
    allocator = ("glibc keeping freed memory for reuse (`--allocator retain`, what the stablenca CLI sets), for "
                 "both libraries in this one process" if getattr(args, "allocator_applied", False) else
                 "glibc's default allocator settings (`--allocator system`), for both libraries")
    body = [f"{rounds} interleaved rounds, float32, {torch.get_num_threads()} torch threads, Abalone "
            "(TALENT-format split of `talent_split.py`), TALENT's default ModernNCA configuration; "
            f"{allocator}.", "",
            "**Per epoch** (median; ratio = median of per-round TALENT / stablenca, above 1 means stablenca "
            "is faster):", "",
            C.md_table(["", "TALENT", "stablenca eager", "stablenca fused", "TALENT / eager",
                        "TALENT / fused"], rows), "",
            "(Validation is the same code for both kernels.)", "",
            "**What diagnosis adds to one training step** (median; ratio to the same model's step with "
            "no hook, per round):", ""]
    step_rows = []
    for model in ("modernnca", "seed"):
        base = steps[f"{model} step, no hook"]
        for label in ("no hook", "sentinel", "recorder", "sentinel + recorder"):
            times = steps[f"{model} step, {label}"]
            ratio = C.median([t / b for t, b in zip(times, base)])
            step_rows.append([model, label, C.fmt_seconds(C.median(times)), f"{ratio:.2f}×"])
    body.append(C.md_table(["model", "hooks", "step", "vs no hook"], step_rows))
    command = C.command_line("talent_epoch.py", args, f" --rounds {args.rounds}")
    markdown = C.section("Per epoch against TALENT, and the cost of the probes", command, info, "\n".join(body))
    C.emit(markdown, {"epochs": epochs, "steps": steps}, args)


if __name__ == "__main__":
    main()
