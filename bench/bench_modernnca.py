"""ModernNCA on Abalone: float32 vs float64 vs a straightforward (TALENT-style) port.

Measures, variants interleaved round by round:

1. **Fit time per epoch, validation included** (TALENT's defaults, fixed epochs, no
   early stopping): stablenca float32, stablenca float64, and the straightforward
   port in float32 (the same Trainer, whose evaluation re-embeds the whole training
   split for every batch of 1024 queries and builds the full distance matrix:
   ``bench/naive_port.py``). The port trains the same weights, so its accuracy must
   equal float32's: asserted.
2. **One training step** (``Trainer.run_step``, no hooks): float32 vs float64.
3. **Evaluation alone** (``Trainer.predict``) vs the port's, on Abalone's validation
   split (836 rows: a single query batch, so the port embeds the candidates once too)
   and on a scaled copy of Abalone (training split tiled with jitter, several query
   batches). Predictions are asserted equal within rounding.

``python bench/bench_modernnca.py [--quick]``
"""

from __future__ import annotations

import dataclasses
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import numpy as np  # noqa: E402

import _common as C  # noqa: E402
from naive_port import NaivePortTrainer, assert_same_predictions, naive_predict  # noqa: E402
from stablenca.training.trainer import Hook, StepContext, Trainer, TrainConfig, load_data  # noqa: E402


class EpochClock(Hook):
    """Wall time of every epoch (its steps and its validation)."""

    def __init__(self) -> None:
        self.epochs: list[float] = []
        self._last = None

    def on_fit_start(self, trainer) -> None:
        self._last = time.perf_counter()

    def on_epoch_end(self, trainer, epoch, val_metrics) -> None:
        now = time.perf_counter()
        self.epochs.append(now - self._last)
        self._last = now


def scaled_data(data, factor: int, eval_factor: int, seed: int = 0):
    """Abalone with the training split tiled ``factor`` times (and val/test ``eval_factor`` times), jittered."""
    rng = np.random.default_rng(seed)

    def tile(split, k):
        x = np.tile(data.x[split], (k, 1))
        x[:, :data.n_num] += rng.normal(0, 0.01, size=(len(x), data.n_num))
        return x, np.tile(data.y[split], k), np.tile(data.y_raw[split], k)

    xs, ys, raws = {}, {}, {}
    for split, k in (("train", factor), ("val", eval_factor), ("test", eval_factor)):
        xs[split], ys[split], raws[split] = tile(split, k)
    return dataclasses.replace(data, x=xs, y=ys, y_raw=raws)


def fit_rounds(data, epochs: int, repeats: int):
    configs = {
        "stablenca float32": (Trainer, TrainConfig(dtype="float32", epochs=epochs, patience=None)),
        "stablenca float64": (Trainer, TrainConfig(dtype="float64", epochs=epochs, patience=None)),
        "straightforward port float32": (NaivePortTrainer, TrainConfig(dtype="float32", epochs=epochs, patience=None)),
    }
    epoch_times: dict[str, list[float]] = {name: [] for name in configs}
    round_medians: dict[str, list[float]] = {name: [] for name in configs}
    results = {}

    def run(name):
        cls, config = configs[name]
        clock = EpochClock()
        trainer = cls(config, data=data, hooks=[clock])
        result = trainer.fit()
        return clock.epochs, result

    names = list(configs)
    for name in names:  # warm-up (imports, allocator, lazy optimizer state)
        run(name)
    for r in range(repeats):
        order = names[r % len(names):] + names[:r % len(names)]
        for name in order:
            epochs_seen, result = run(name)
            epoch_times[name] += epochs_seen
            round_medians[name].append(C.median(epochs_seen))
            results[name] = result
        C.stderr(f"  fit round {r + 1}/{repeats}")
    a, b = results["stablenca float32"], results["straightforward port float32"]
    if a.test != b.test or a.val != b.val:
        raise AssertionError(f"the port's accuracy differs: {a.test} vs {b.test}")
    return epoch_times, round_medians, results


def step_rounds(data, repeats: int):
    trainers = {dtype: Trainer(TrainConfig(dtype=dtype), data=data) for dtype in ("float32", "float64")}
    batch = trainers["float32"].epoch_batches()[0]

    def step(trainer):
        def go():
            trainer.run_step(StepContext(0, trainer.global_step, 0, batch))
            trainer.global_step += 1
        return go

    return C.interleaved({f"step {d}": step(t) for d, t in trainers.items()}, repeats, warmup=2)


def eval_rounds(data, repeats: int, split: str = "val"):
    trainer = Trainer(TrainConfig(dtype="float32"), data=data)
    # A few steps so the weights are not the initial ones.
    for batch in trainer.epoch_batches()[:2]:
        trainer.run_step(StepContext(0, 0, 0, batch))
    max_diff = assert_same_predictions(trainer, split)
    times = C.interleaved({"stablenca predict": lambda: trainer.predict(split),
                           "straightforward port": lambda: naive_predict(trainer, split)}, repeats, warmup=1)
    return times, max_diff, len(trainer.x_train), len(data.y[split])


def main(argv=None) -> int:
    p = C.parser(__doc__.splitlines()[0])
    p.add_argument("--epochs", type=int, default=None, help="epochs per fit (default 5, quick 2)")
    p.add_argument("--repeats", type=int, default=None, help="interleaved rounds (default 5 fits / 30 steps)")
    args = C.parse(p, argv)
    info = C.machine_info()
    epochs = args.epochs or (2 if args.quick else 5)
    fit_repeats = args.repeats or (2 if args.quick else 5)
    step_repeats = 6 if args.quick else 30
    eval_repeats = 3 if args.quick else 15
    factor, eval_factor = (4, 3) if args.quick else (16, 10)

    data = load_data(TrainConfig().resolved())
    C.stderr("bench_modernnca: fits")
    epoch_times, round_medians, results = fit_rounds(data, epochs, fit_repeats)
    C.stderr("bench_modernnca: steps")
    step_times = step_rounds(data, step_repeats)
    C.stderr("bench_modernnca: evaluation")
    eval_small, diff_small, n_train, n_val = eval_rounds(data, eval_repeats)
    big = scaled_data(data, factor, eval_factor)
    eval_big, diff_big, n_train_big, n_val_big = eval_rounds(big, max(2, eval_repeats // 3))

    base = "stablenca float32"
    ratios = C.paired_ratios(round_medians, base)
    rows = []
    for name, values in epoch_times.items():
        q1, q3 = C.quartiles(values)
        r = results[name]
        rows.append([name, C.fmt_seconds(C.median(values)), f"{C.fmt_seconds(q1)} – {C.fmt_seconds(q3)}",
                     f"{C.median(ratios[name]):.2f}×", f"{C.median(round_medians[name]) / C.median(round_medians[base]):.2f}×",
                     f"{r.test.get('accuracy', float('nan')):.4f}"])
    fit_table = C.md_table(["variant", "median epoch", "IQR", "vs float32 (median of paired rounds)",
                            "vs float32 (ratio of medians)", f"test accuracy after {epochs} epochs"], rows)
    port = C.median(ratios["straightforward port float32"])
    fp64 = C.median(ratios["stablenca float64"])

    step_ratio = C.paired_ratios(step_times, "step float32")["step float64"]
    step_table = C.md_table(["variant", "median step", "IQR", "vs float32"], [
        [name, C.fmt_seconds(C.median(v)), " – ".join(C.fmt_seconds(x) for x in C.quartiles(v)),
         f"{C.median(C.paired_ratios(step_times, 'step float32')[name]):.2f}×"] for name, v in step_times.items()])

    def eval_table(times, n_tr, n_q, diff):
        speed = C.paired_ratios(times, "stablenca predict")["straightforward port"]
        return C.md_table(["variant", "median", "IQR", "port / stablenca"], [
            [name, C.fmt_seconds(C.median(v)), " – ".join(C.fmt_seconds(x) for x in C.quartiles(v)),
             f"{C.median(C.paired_ratios(times, 'stablenca predict')[name]):.2f}×"] for name, v in times.items()]) + \
            f"\n{n_q} queries ({-(-n_q // 1024)} batches of 1024) against {n_tr} candidates; max |Δ prediction| " \
            f"{diff:.2g} (asserted within rounding). Speed-up {C.median(speed):.2f}×.\n"

    body = (
        f"Fit: TALENT's defaults (batch 1024, AdamW lr 0.01, sample rate 0.5), {epochs} epochs per fit without early "
        f"stopping, {fit_repeats} interleaved rounds after a warm-up fit; an epoch is its training steps plus the "
        f"validation evaluation. The straightforward port is the same Trainer with TALENT-style evaluation "
        f"(`bench/naive_port.py`); equal test accuracy is asserted.\n\n"
        + fit_table
        + f"\nstablenca float32 is **{port:.2f}×** faster per epoch than the straightforward port (target ≥ 2×) "
          f"and {fp64:.2f}× faster than float64.\n\n"
        f"### One training step (`Trainer.run_step`, no hooks), {step_repeats} interleaved repeats\n\n" + step_table
        + f"\nfloat64 / float32 per step: {C.median(step_ratio):.2f}×.\n\n"
        "### Evaluation alone (`Trainer.predict` vs the port), Abalone validation split\n\n"
        + eval_table(eval_small, n_train, n_val, diff_small)
        + f"\n### Evaluation alone, scaled Abalone (train ×{factor}, val ×{eval_factor}, jittered)\n\n"
        + eval_table(eval_big, n_train_big, n_val_big, diff_big)
    )
    data_out = {"epoch_times": epoch_times, "round_medians": round_medians, "step_times": step_times,
                "eval_abalone": eval_small, "eval_scaled": eval_big, "speedup_vs_port": port,
                "float64_over_float32": fp64, "float64_step_ratio": C.median(step_ratio),
                "eval_speedup_abalone": C.median(C.paired_ratios(eval_small, "stablenca predict")["straightforward port"]),
                "eval_speedup_scaled": C.median(C.paired_ratios(eval_big, "stablenca predict")["straightforward port"]),
                "results": {k: v.to_dict() for k, v in results.items()}}
    md = C.section("ModernNCA training: float32, float64 and a straightforward port",
                   C.command_line("bench_modernnca.py", args), info, body)
    C.emit(md, data_out, args)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
