"""Cost of NaN/Inf detection on a real training step: plain vs sentinel vs full tracer vs the alternatives.

The step is the Trainer's own: ``trainer.run_step(StepContext(...))`` with the
variant's hooks (forward, backward, gradient-norm check, optimizer step), on
successive real batches of the embedded Abalone:

* ``plain``: no hooks (the trainer's own finiteness check only);
* ``sentinel``: ``Sentinel(mode="sentinel")``, the default of ``stablenca diagnose``
  (a pre-step snapshot per step);
* ``sentinel + recorder``: what diagnose actually attaches (the recorder's per-batch
  probes included), for information;
* ``full``: ``Sentinel(mode="full")``, the tracer (:class:`stablenca.trace.Tracer`) around
  forward + backward of every step;
* ``detect_anomaly``: ``torch.autograd.detect_anomaly()`` around forward + backward;
* ``naive isfinite``: a dispatch mode that checks ``torch.isfinite(out).all()`` on every
  floating output (``bench/naive_checker.py``), around forward + backward.

Each variant has its own Trainer (same config and seed); the variants are interleaved
round by round (order rotated each round), ``--repeats`` rounds (≥ 30 by default), each
sample is ``k`` steps (1 for ModernNCA, 10 for the tiny SeedNCA step). Reported: the
median per step, and the ratio to plain as the median of the per-round ratios.

Targets: sentinel ≤ 1.10× and full ≤ 1.5× the plain step.

``python bench/bench_tracer.py [--quick] [--repeats N]``
"""

from __future__ import annotations

import contextlib
import sys
import warnings
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch  # noqa: E402

import _common as C  # noqa: E402
from naive_checker import NaiveFiniteChecker  # noqa: E402
from stablenca.runtime.recorder import Recorder  # noqa: E402
from stablenca.runtime.sentinel import Sentinel  # noqa: E402
from stablenca.training.trainer import Hook, StepContext, Trainer, TrainConfig, load_data  # noqa: E402

TARGETS = {"sentinel": 1.10, "full": 1.5}


class ContextHook(Hook):
    """Wrap forward + backward (the same region the full tracer wraps) in a context manager."""

    def __init__(self, factory) -> None:
        self.factory = factory

    def step_context(self, trainer, ctx):
        return self.factory()


def anomaly():
    stack = contextlib.ExitStack()
    stack.enter_context(warnings.catch_warnings())
    warnings.simplefilter("ignore")  # "Anomaly Detection has been enabled..." on every entry
    stack.enter_context(torch.autograd.detect_anomaly(check_nan=True))
    return stack


VARIANTS = {
    "plain": lambda tmp: [],
    "sentinel": lambda tmp: [Sentinel(mode="sentinel")],
    "sentinel + recorder": lambda tmp: [Sentinel(mode="sentinel"), Recorder(tmp)],
    "full": lambda tmp: [Sentinel(mode="full")],
    "detect_anomaly": lambda tmp: [ContextHook(anomaly)],
    "naive isfinite": lambda tmp: [ContextHook(NaiveFiniteChecker)],
}


class Stepper:
    """Successive real training steps of one trainer.

    With ``restart`` the trainer goes back (untimed, in place, so the sentinel's
    buffers stay valid) to its state after its first step whenever an epoch is used
    up: the student's ratio loss diverges after about 215 steps, and a benchmark that
    runs into that would time NaN handling (and ``detect_anomaly`` raises).
    """

    def __init__(self, config: TrainConfig, data, hooks, restart: bool) -> None:
        self.trainer = Trainer(config, data=data, hooks=hooks)
        for hook in hooks:
            hook.on_fit_start(self.trainer)
        self.batches: list = []
        self.epoch = -1
        self.nonfinite = 0
        self.restarts = 0
        self.restart = restart
        self.prepare(1)
        self.step()  # creates the optimizer's state, so the saved state below has it
        t = self.trainer
        self._live = [v for v in t.model.state_dict().values()] + \
            [v for st in t.optimizer.state.values() for v in st.values() if isinstance(v, torch.Tensor)]
        self._saved = [v.detach().clone() for v in self._live]
        self._generator = t.generator.get_state()

    def prepare(self, k: int) -> None:
        """Make sure the current epoch has ``k`` batches left (untimed)."""
        if len(self.batches) >= k:
            return
        t = self.trainer
        if self.restart and self.epoch >= 0:
            with torch.no_grad():
                torch._foreach_copy_(self._live, self._saved)
            t.generator.set_state(self._generator)
            self.restarts += 1
        self.epoch += 1
        self.batches = list(enumerate(t.epoch_batches()))

    def step(self) -> None:
        t = self.trainer
        i, batch = self.batches.pop(0)
        ctx = t.run_step(StepContext(self.epoch, t.global_step, i, batch))
        t.global_step += 1
        self.nonfinite += not ctx.finite


def measure(model: str, data, repeats: int, k: int, tmp: Path, restart: bool) -> dict:
    config = TrainConfig(model=model)
    steppers = {}
    for name, make in VARIANTS.items():
        run_dir = tmp / f"{model}-{name.replace(' ', '_').replace('+', '')}"
        run_dir.mkdir(parents=True, exist_ok=True)
        steppers[name] = Stepper(config, data, make(run_dir), restart)

    def block(stepper):
        def go():
            for _ in range(k):
                stepper.step()
        return go

    times = C.interleaved({name: block(s) for name, s in steppers.items()}, repeats, warmup=2,
                          before={name: (lambda s=s: s.prepare(k)) for name, s in steppers.items()})
    times = {name: [t / k for t in v] for name, v in times.items()}
    for name, s in steppers.items():
        for hook in s.trainer.hooks:
            if isinstance(hook, Recorder):
                hook.close()
    nonfinite = {name: s.nonfinite for name, s in steppers.items()}
    return {"times": times, "ratios": C.paired_ratios(times, "plain"), "nonfinite": nonfinite,
            "steps": {name: s.trainer.global_step for name, s in steppers.items()},
            "restarts": {name: s.restarts for name, s in steppers.items()}}


def table(result: dict) -> str:
    rows = []
    base = C.median(result["times"]["plain"])
    for name, values in result["times"].items():
        ratio = C.median(result["ratios"][name])
        q1, q3 = C.quartiles(result["ratios"][name])
        target = TARGETS.get(name)
        verdict = "" if target is None else (f"≤ {target:.2f}×: **{'met' if ratio <= target else 'missed'}**")
        rows.append([name, C.fmt_seconds(C.median(values)), f"{ratio:.2f}×", f"{q1:.2f} – {q3:.2f}",
                     f"{C.median(values) / base:.2f}×", verdict])
    return C.md_table(["variant", "median per step", "vs plain (median of paired rounds)", "IQR of the ratio",
                       "ratio of medians", "target"], rows)


def main(argv=None) -> int:
    import tempfile

    p = C.parser(__doc__.splitlines()[0])
    p.add_argument("--repeats", type=int, default=None, help="interleaved rounds (default 30, quick 5)")
    args = C.parse(p, argv)
    info = C.machine_info()
    repeats = args.repeats or (5 if args.quick else 30)
    data = load_data(TrainConfig().resolved())
    results = {}
    with tempfile.TemporaryDirectory(prefix="stablenca-bench-tracer-") as tmp:
        for model, k, restart, label in (
                ("modernnca", 1, False, "ModernNCA (batch 1024, 1848 candidates, loss modernnca)"),
                ("seed", 10, True, "SeedNCA (batch 32, in-batch pairs, loss ratio; restarted from its state after "
                                   "step 1 at every epoch's end, before the ratio loss can diverge)")):
            C.stderr(f"bench_tracer: {model}")
            results[model] = measure(model, data, repeats, k, Path(tmp), restart)
            results[model]["label"] = label
            results[model]["k"] = k
    body = (f"{repeats} interleaved rounds after 2 warm-up rounds; each variant trains its own model on "
            f"successive batches (`Trainer.run_step` with the variant's hooks).\n\n")
    for model, result in results.items():
        bad = {n: c for n, c in result["nonfinite"].items() if c}
        body += (f"### {result['label']}, {result['k']} step(s) per sample\n\n" + table(result)
                 + (f"\nNon-finite steps during the benchmark: {bad}\n" if bad else "") + "\n")
    md = C.section("Tracer overhead on a training step", C.command_line("bench_tracer.py", args), info, body)
    C.emit(md, results, args)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
