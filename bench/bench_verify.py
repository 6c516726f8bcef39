"""Cost of the counterfactual verification against one traced replay of the failing ModernNCA step.

The step is the committed ``modernnca-ratio-float32`` capsule (``reports/abalone/diagnose``):

* ``traced replay``: ``traced_step`` (restore the capsule, forward + backward under the
  :class:`~stablenca.trace.Tracer`), what ``stablenca replay`` and the sentinel run once;
* ``verification``: ``verify_capsule`` (a float64 Trainer is built, then the plain replays:
  working dtype, float64 reference, injection and promotion per candidate, and the promotion
  search, which stops at the first candidate whose promotion suffices);
* ``ddmin search``: the promotion search without that shortcut (delta debugging over every
  unit of the step, capped at 32 replays), the cost when no candidate alone suffices.

Interleaved rounds (order rotated each round); reported: medians and the median of the
per-round ratios to the traced replay. Target: verification ≤ 3× one traced replay.

``python bench/bench_verify.py [--quick] [--repeats N]``
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch  # noqa: E402

import _common as C  # noqa: E402
from stablenca.runtime.sentinel import load_capsule, traced_step, verify_capsule  # noqa: E402
from stablenca.trace.verify import _promotion_search, _replay  # noqa: E402
from stablenca.training.trainer import Trainer, TrainConfig, load_data  # noqa: E402

CAPSULE = Path(__file__).resolve().parents[1] / "reports" / "abalone" / "diagnose" / "modernnca-ratio-float32" \
    / "capsule.pt"
TARGET = 3.0


def main(argv=None) -> int:
    p = C.parser(__doc__.splitlines()[0])
    p.add_argument("--repeats", type=int, default=None, help="interleaved rounds (default 7, quick 2)")
    args = C.parse(p, argv)
    info = C.machine_info()
    repeats = args.repeats or (2 if args.quick else 7)
    capsule = load_capsule(CAPSULE)
    config = TrainConfig(**capsule["config"])
    trainer = Trainer(config, data=load_data(config.resolved()))
    finding, _ = traced_step(trainer, capsule)
    counts = {}

    def traced():
        traced_step(trainer, capsule)

    def verification():
        verify_capsule(trainer, capsule, finding)
        counts["replays"] = finding.verification["replays"]

    def ddmin():
        def forward(dtype):
            trainer.model.load_state_dict(capsule["model_state"])
            trainer.generator.set_state(capsule["generator_state"])
            torch.set_rng_state(capsule["rng_state"])
            trainer.model.train()
            trainer.optimizer.zero_grad(set_to_none=True)
            return trainer.compute_loss(capsule["batch_indices"])[0].loss, list(trainer.model.parameters())

        base = _replay(forward, trainer.dtype, trainer.dtype, None)
        tests = {"n": 0}

        def fixes(units):
            tests["n"] += 1
            return _replay(forward, trainer.dtype, trainer.dtype, None, "promote", units).finite

        found, minimal, _ = _promotion_search(fixes, [], base.seen, 32)
        counts.update(ddmin_replays=tests["n"] + 1, ddmin_units=len(base.seen),
                      ddmin_found=[list(u) for u in found] if found else None, ddmin_minimal=minimal)

    times = C.interleaved({"traced replay": traced, "verification": verification, "ddmin search": ddmin},
                          repeats, warmup=1)
    ratios = C.paired_ratios(times, "traced replay")
    rows = []
    for name, values in times.items():
        ratio = C.median(ratios[name])
        verdict = f"≤ {TARGET:.0f}×: **{'met' if ratio <= TARGET else 'missed'}**" if name == "verification" else ""
        rows.append([name, C.fmt_seconds(C.median(values)), f"{ratio:.2f}×", verdict])
    body = (f"{repeats} interleaved rounds after 1 warm-up round, on `{CAPSULE.relative_to(CAPSULE.parents[4])}`.\n\n"
            + C.md_table(["variant", "median", "vs traced replay (median of paired rounds)", "target"], rows)
            + f"\n\nThe verification ran {counts.get('replays')} plain replays of the step; the ddmin search "
              f"ran {counts.get('ddmin_replays')} over {counts.get('ddmin_units')} units and found "
              f"{counts.get('ddmin_found')} (1-minimal: {counts.get('ddmin_minimal')}).\n")
    md = C.section("Counterfactual verification cost", C.command_line("bench_verify.py", args), info, body)
    C.emit(md, {"times": times, "ratios": ratios, "counts": counts}, args)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
