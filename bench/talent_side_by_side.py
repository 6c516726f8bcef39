"""TALENT's ModernNCA and stablenca, seed by seed, on the same TALENT-format files.

``python bench/talent_side_by_side.py --seeds 15 [--talent /work/talent] [--mode independent|lockstep|both]
[--tasks multiclass,regression,binclass] [--missing 0.05]``

TALENT is not part of this repository: its checkout (qile2000/LAMDA-TALENT, MIT) is
imported from ``--talent`` (default ``$STABLENCA_TALENT`` or ``/work/talent``). TALENT
runs as its own driver (``test/train_model_deep.py``) runs it: ``get_deep_args`` with
``--model_type modernNCA --cat_policy tabr_ohe --use_float`` and the default config,
``set_seeds(seed)``, ``method.fit``, ``method.predict(..., 'best-val')``. Its per-epoch
time is the ``Epoch: N, Time cost: S`` it prints (training and validation; TALENT also
saves its checkpoint and log inside that time, as it always does). stablenca runs
:class:`stablenca.training.Trainer` with its defaults in float32 on the same directory; its
epoch time is the wall time from one epoch's end to the next (training and validation).

Both read the files :mod:`talent_split` writes (a seeded permutation of the embedded
Abalone; written into a temporary directory unless ``--data`` names one; ``--missing F`` blanks a
fraction F of their feature cells, which each library fills by its own code; binclass is rings >= 10). For each seed
the two run back to back, alternating which goes first, with ``--threads`` torch threads.

Modes:

* ``independent``: each library seeds itself (TALENT's ``set_seeds(seed)``; stablenca's
  ``--seed``). The paired differences answer "is the port as accurate" over seeds.
* ``lockstep``: stablenca starts from TALENT's initial weights and TALENT's random stream
  (the global torch generator right after TALENT built its model; one extra draw per
  epoch stands for the seed TALENT's validation DataLoader takes). Both then see the
  same batches and the same sampled candidates, so any difference in the trajectory is a
  difference in arithmetic: a divergence detector, not a benchmark.

``category_encoders``, which TALENT imports at module level but ModernNCA never uses, is
replaced by an empty module when it is not installed.
"""

from __future__ import annotations

import contextlib
import io
import json
import math
import os
import re
import statistics
import sys
import tempfile
import time
import types
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import numpy as np  # noqa: E402
import torch  # noqa: E402

import _common as C  # noqa: E402
from talent_split import write_split  # noqa: E402
from stablenca.training import Hook, Trainer, TrainConfig, load_data  # noqa: E402

TASK_DIRS = {"multiclass": "abalone", "regression": "abalone_reg", "binclass": "abalone_bin"}
EPOCH_LINE = re.compile(r"^Epoch: (\d+), Time cost: ([0-9.eE+-]+)$", re.M)
VAL_LINE = re.compile(r"^epoch (\d+), val, loss=\S+ \w+ result=([0-9.eE+-]+|nan)$", re.M)


# --------------------------------------------------------------------------- TALENT


def add_talent_option(parser) -> None:
    """``--talent DIR``: where TALENT's checkout is (default ``$STABLENCA_TALENT`` or /work/talent)."""
    parser.add_argument("--talent", type=Path, default=Path(os.environ.get("STABLENCA_TALENT", "/work/talent")))


def parse_per_epoch_args(parser, argv):
    """The per-epoch benchmarks' set-up: ``--talent``, two torch threads unless ``--threads``; (args, TALENT)."""
    import torch

    add_talent_option(parser)
    args = C.parse(parser, argv, default_threads=2)  # the setting
    return args, import_talent(args.talent)


def import_talent(path: Path):
    """TALENT's modules from a checkout at ``path``; a clear exit when it is not there."""
    if not (path / "TALENT" / "model" / "methods" / "modernNCA.py").is_file():
        raise SystemExit(f"TALENT is not at {path}: clone qile2000/LAMDA-TALENT there, or pass --talent DIR "
                         "(or set STABLENCA_TALENT)")
    sys.path.insert(0, str(path))
    try:
        import category_encoders  # noqa: F401
    except ImportError:  # imported by TALENT's data module, used only by cat policies ModernNCA refuses
        sys.modules["category_encoders"] = types.ModuleType("category_encoders")
    from TALENT.model.lib.data import get_dataset
    from TALENT.model.methods.modernNCA import ModernNCAMethod
    from TALENT.model import utils as talent_utils
    from TALENT.model.utils import get_deep_args, set_seeds

    # TALENT prints its arguments through a PrettyPrinter bound to stdout at import time,
    # which redirect_stdout cannot catch: give it a discarded stream instead.
    import pprint

    talent_utils._utils_pp = pprint.PrettyPrinter(stream=io.StringIO())

    class RecordingMethod(ModernNCAMethod):
        """TALENT's ModernNCA, unchanged, keeping its initial weights and the RNG state after building them."""

        def construct_model(self, model_config=None):
            super().construct_model(model_config)
            self.initial_state = {k: v.detach().clone() for k, v in self.model.state_dict().items()}
            self.rng_after_init = torch.get_rng_state()

    return types.SimpleNamespace(get_dataset=get_dataset, Method=RecordingMethod, get_deep_args=get_deep_args,
                                 set_seeds=set_seeds)


def talent_args(talent, data_root: Path, name: str, model_path: Path, use_float: bool = True):
    """TALENT's own argument parsing, as its driver is called for ModernNCA in float32."""
    argv = ["train_model_deep.py", "--model_type", "modernNCA", "--dataset", name, "--dataset_path",
            str(data_root), "--model_path", str(model_path), "--cat_policy", "tabr_ohe", "--seed_num", "1",
            "--gpu", "", *(["--use_float"] if use_float else [])]
    saved = sys.argv
    sys.argv = argv
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            args, _, _ = talent.get_deep_args()
    finally:
        sys.argv = saved
    return args


def run_talent(talent, args, data_root: Path, name: str, seed: int) -> dict:
    train_val, test, info = talent.get_dataset(name, str(data_root))
    regression = info["task_type"] == "regression"
    args.seed = seed
    talent.set_seeds(seed)
    out, err = io.StringIO(), io.StringIO()
    started = time.perf_counter()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        method = talent.Method(args, regression)
        method.fit(train_val, info)
        _, vres, names, _ = method.predict(test, info, model_name=args.evaluate_option)
    wall = time.perf_counter() - started
    text = out.getvalue()
    epochs = [float(t) for _, t in EPOCH_LINE.findall(text)]
    metrics = dict(zip(names, (float(v) for v in vres)))
    return {
        "epoch_seconds": epochs, "epochs": len(epochs), "best_epoch": int(method.trlog["best_epoch"]),
        "val_curve": [float(v) for _, v in VAL_LINE.findall(text)],
        "accuracy": metrics.get("Accuracy"), "rmse": metrics.get("RMSE"), "mae": metrics.get("MAE"),
        "wall_seconds": wall, "initial_state": method.initial_state, "rng_after_init": method.rng_after_init,
    }


# --------------------------------------------------------------------------- stablenca


class EpochLog(Hook):
    """Per-epoch wall time (steps and validation) and the validation metric TALENT selects on."""

    def __init__(self) -> None:
        self.seconds: list[float] = []
        self.val_curve: list[float] = []
        self._last = 0.0

    def on_fit_start(self, trainer) -> None:
        self._last = time.perf_counter()

    def on_epoch_end(self, trainer, epoch, val_metrics) -> None:
        now = time.perf_counter()
        self.seconds.append(now - self._last)
        self.val_curve.append(val_metrics["accuracy"] if trainer.task != "regression" else val_metrics["mae"])
        self._last = time.perf_counter()


class TalentStream(Hook):
    """Lockstep: one draw per epoch from the batch generator, as TALENT's validation DataLoader takes one."""

    def on_epoch_end(self, trainer, epoch, val_metrics) -> None:
        torch.empty((), dtype=torch.int64).random_(generator=trainer.generator)


def run_stablenca(prepared, data_dir: Path, seed: int, *, dtype: str, lockstep_from: dict | None) -> dict:
    log = EpochLog()
    hooks: list[Hook] = [log]
    config = TrainConfig(data=str(data_dir), seed=seed, dtype=dtype)
    started = time.perf_counter()
    if lockstep_from is not None:
        hooks.append(TalentStream())
    trainer = Trainer(config, data=prepared, hooks=hooks)
    if lockstep_from is not None:
        trainer.model.load_state_dict(lockstep_from["initial_state"])
        trainer.generator.set_state(lockstep_from["rng_after_init"])
    result = trainer.fit()
    return {
        "epoch_seconds": log.seconds, "epochs": result.epochs_run, "best_epoch": result.best_epoch,
        "val_curve": log.val_curve, "accuracy": result.test.get("accuracy"), "rmse": result.test.get("rmse"),
        "mae": result.test.get("mae"), "wall_seconds": time.perf_counter() - started,
    }


# --------------------------------------------------------------------------- statistics


def mean_ci(values: list[float], level: float = 0.95) -> tuple[float, float, float]:
    """Mean and a Student-t confidence interval (the seeds are independent draws)."""
    from scipy import stats

    n = len(values)
    mean = float(np.mean(values))
    if n < 2:
        return mean, float("nan"), float("nan")
    half = float(stats.t.ppf(0.5 + level / 2, n - 1) * np.std(values, ddof=1) / math.sqrt(n))
    return mean, mean - half, mean + half


def fmt_ci(values: list[float], digits: int = 4) -> str:
    mean, low, high = mean_ci(values)
    return f"{mean:+.{digits}f} [{low:+.{digits}f}, {high:+.{digits}f}]"


def fmt_mean_sd(values: list[float], digits: int = 4) -> str:
    sd = statistics.stdev(values) if len(values) > 1 else float("nan")
    return f"{np.mean(values):.{digits}f} ± {sd:.{digits}f}"


def ratio_ci(talent: list[float], ours: list[float]) -> str:
    """Geometric mean of per-seed time ratios TALENT/stablenca, with a t interval on the log scale."""
    logs = [math.log(t / o) for t, o in zip(talent, ours)]
    mean, low, high = mean_ci(logs)
    if len(logs) < 2:
        return f"{math.exp(mean):.2f}×"
    return f"{math.exp(mean):.2f}× [{math.exp(low):.2f}, {math.exp(high):.2f}]"


def task_table(task: str, mode: str, rows: list[dict]) -> str:
    metric = "rmse" if task == "regression" else "accuracy"
    arrow = "↑" if metric == "accuracy" else "↓"
    talent = [r["talent"] for r in rows]
    ours = [r["stablenca"] for r in rows]
    med = lambda runs: [C.median(r["epoch_seconds"]) for r in runs]  # noqa: E731
    lines = [C.md_table(
        ["", "TALENT", "stablenca", "stablenca − TALENT (paired mean, 95% CI)"],
        [
            [f"test {metric} {arrow}", fmt_mean_sd([r[metric] for r in talent]),
             fmt_mean_sd([r[metric] for r in ours]), fmt_ci([o[metric] - t[metric] for t, o in zip(talent, ours)])],
            ["epochs run", fmt_mean_sd([r["epochs"] for r in talent], 1), fmt_mean_sd([r["epochs"] for r in ours], 1),
             fmt_ci([o["epochs"] - t["epochs"] for t, o in zip(talent, ours)], 1)],
            ["best epoch", fmt_mean_sd([r["best_epoch"] for r in talent], 1),
             fmt_mean_sd([r["best_epoch"] for r in ours], 1),
             fmt_ci([o["best_epoch"] - t["best_epoch"] for t, o in zip(talent, ours)], 1)],
            ["median s / epoch (validation included)", f"{C.median(med(talent)):.4f}", f"{C.median(med(ours)):.4f}",
             "TALENT / stablenca: " + ratio_ci(med(talent), med(ours))],
        ])]
    lines.append("")
    lines.append(C.md_table(
        ["seed", f"TALENT {metric}", f"stablenca {metric}", "TALENT epochs", "stablenca epochs",
         "TALENT s/epoch", "stablenca s/epoch"],
        [[r["seed"], f"{r['talent'][metric]:.4f}", f"{r['stablenca'][metric]:.4f}", r["talent"]["epochs"],
          r["stablenca"]["epochs"], f"{C.median(r['talent']['epoch_seconds']):.4f}",
          f"{C.median(r['stablenca']['epoch_seconds']):.4f}"] for r in rows]))
    if mode == "lockstep":
        same = [_same_prefix(r["talent"]["val_curve"], r["stablenca"]["val_curve"]) for r in rows]
        lines.append("")
        lines.append(f"Validation curves identical (to 4 decimals, TALENT's printed precision) for the first "
                     f"{min(same)}–{max(same)} epochs (median {C.median(same):.0f}) of each seed's run.")
    return "\n".join(lines)


def _same_prefix(a: list[float], b: list[float]) -> int:
    n = 0
    for x, y in zip(a, b):
        if round(x, 4) != round(y, 4):
            break
        n += 1
    return n


# --------------------------------------------------------------------------- main


def _blanked(options: dict) -> str:
    fraction = options.get("missing", 0.0)
    return f"; {fraction:.0%} of the feature cells blanked, `--missing {fraction}`" if fraction else ""


def render(saved: dict) -> str:
    """The Markdown section from the saved results (complete or not)."""
    options, info = saved["options"], saved["machine"]
    body = [f"{options['seeds']} seeds asked, {options['dtype']} on both sides, {info['torch_threads']} torch "
            f"threads; files: `bench/talent_split.py` (RandomState({options['split_seed']}) permutation, "
            f"2672/669/836{_blanked(options)}); run time {saved['elapsed_seconds'] / 60:.1f} min"
            + ("" if saved.get("complete") else " (stopped before the end: the seeds below are all that ran)")
            + f"; load average at the end {' / '.join(f'{x:.2f}' for x in saved.get('load_average_end') or ())}.",
            ""]
    for mode, by_task in saved["results"].items():
        for task, rows in by_task.items():
            if rows:
                body += [f"### {task}, {mode}, {options['dtype']} ({len(rows)} seeds)", "",
                         task_table(task, mode, rows), ""]
    return C.section("TALENT side by side (ModernNCA)", saved["command"], info, "\n".join(body))


def main(argv=None) -> None:
    parser = C.parser(__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=15, help="seeds 0..N-1 (default 15, as TALENT reports)")
    add_talent_option(parser)
    parser.add_argument("--data", type=Path, default=None, help="directory from bench/talent_split.py")
    parser.add_argument("--split-seed", type=int, default=0)
    parser.add_argument("--missing", type=float, default=0.0,
                        help="fraction of feature cells blanked in the files (talent_split.py --missing)")
    parser.add_argument("--tasks", default="multiclass,regression")
    parser.add_argument("--mode", choices=("independent", "lockstep", "both"), default="independent")
    parser.add_argument("--dtype", choices=("float32", "float64"), default="float32",
                        help="both sides: float64 runs TALENT without --use_float (its own default)")
    parser.add_argument("--out", type=Path, default=None, help="also write the Markdown here")
    parser.add_argument("--render", type=Path, default=None, metavar="JSON",
                        help="only print the section from a --json file (also one an interrupted run left)")
    args = C.parse(parser, argv, default_threads=2)
    if args.render:
        saved = json.loads(args.render.read_text())["data"]
        markdown = render(saved)
        if args.out:
            args.out.write_text(markdown)
        print(markdown)
        return
    if args.quick:
        args.seeds, args.tasks = min(args.seeds, 2), "multiclass"
    talent = import_talent(args.talent)
    tasks = [t for t in args.tasks.split(",") if t]
    modes = ["independent", "lockstep"] if args.mode == "both" else [args.mode]
    command = C.command_line("talent_side_by_side.py", args,
                             f" --seeds {args.seeds} --mode {args.mode} --tasks {args.tasks}"
                             + (f" --dtype {args.dtype}" if args.dtype != "float32" else "")
                             + (f" --split-seed {args.split_seed}" if args.split_seed else "")
                             + (f" --missing {args.missing}" if args.missing else ""))
    saved = {"options": {"seeds": args.seeds, "dtype": args.dtype, "split_seed": args.split_seed,
                         "missing": args.missing},
             "machine": C.machine_info(), "command": command, "results": {}, "complete": False}
    started = time.perf_counter()

    def save() -> None:  # after every seed, so a run stopped early still leaves its results
        saved["elapsed_seconds"] = time.perf_counter() - started
        saved["load_average_end"] = C.load_average()
        if args.json:
            C.emit_json({"markdown": None, "data": saved}, args.json)

    with tempfile.TemporaryDirectory(prefix="talent_side_by_side_") as tmp:
        data_root = args.data or Path(tmp) / "data"
        if args.data is None:
            write_split(data_root, split_seed=args.split_seed, missing=args.missing)
        for mode in modes:
            for task in tasks:
                name = TASK_DIRS[task]
                t_args = talent_args(talent, data_root, name, Path(tmp) / "talent_models",
                                     use_float=args.dtype == "float32")
                prepared = load_data(TrainConfig(data=str(data_root / name), dtype=args.dtype).resolved())
                rows = saved["results"].setdefault(mode, {}).setdefault(task, [])
                for seed in range(args.seeds):
                    if mode == "lockstep" or seed % 2 == 0:  # lockstep needs TALENT's start first
                        t = run_talent(talent, t_args, data_root, name, seed)
                        s = run_stablenca(prepared, data_root / name, seed, dtype=args.dtype,
                                          lockstep_from=t if mode == "lockstep" else None)
                    else:
                        s = run_stablenca(prepared, data_root / name, seed, dtype=args.dtype, lockstep_from=None)
                        t = run_talent(talent, t_args, data_root, name, seed)
                    for key in ("initial_state", "rng_after_init"):
                        t.pop(key)
                    rows.append({"seed": seed, "talent": t, "stablenca": s})
                    save()
                    metric = "rmse" if task == "regression" else "accuracy"
                    C.stderr(f"[{mode} {task} seed {seed}] TALENT {metric}={t[metric]:.4f} epochs={t['epochs']} "
                             f"{C.median(t['epoch_seconds']):.3f}s/ep | stablenca {metric}={s[metric]:.4f} "
                             f"epochs={s['epochs']} {C.median(s['epoch_seconds']):.3f}s/ep")
    saved["complete"] = True
    save()
    markdown = render(saved)
    if args.out:
        args.out.write_text(markdown)
    C.emit(markdown, saved, args)


if __name__ == "__main__":
    main()
