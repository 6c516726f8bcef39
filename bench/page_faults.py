"""Minor page faults and wall time per ModernNCA epoch, with glibc's defaults and with the CLI's setting.

``python bench/page_faults.py [--epochs 10] [--threads 2]``

Each setting runs in a fresh interpreter (the allocator's thresholds are process state):
three warm-up epochs of the fused default ``Trainer`` (training steps only), then
``--epochs`` epochs between two ``resource.getrusage`` readings. The faults are the memory
that glibc returned to the kernel and the next step touched again (zero-filled pages).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _common as C  # noqa: E402

EPOCHS = """
import json, resource, sys, time, torch
from stablenca.runtime.allocator import retain_freed_memory
from stablenca.training import StepContext, Trainer, TrainConfig
applied = retain_freed_memory() if sys.argv[1] == "retain" else False
torch.set_num_threads(int(sys.argv[3]))
trainer = Trainer(TrainConfig(seed=0, epochs=1, patience=None))
def epoch():
    for i, batch in enumerate(trainer.epoch_batches()):
        trainer.run_step(StepContext(0, i, i, batch))
for _ in range(3):
    epoch()
before, started = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
for _ in range(int(sys.argv[2])):
    epoch()
after, wall = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter() - started
n = int(sys.argv[2])
print(json.dumps({"applied": applied, "faults": (after.ru_minflt - before.ru_minflt) / n, "wall": wall / n,
                  "system": (after.ru_stime - before.ru_stime) / n, "user": (after.ru_utime - before.ru_utime) / n}))
"""


def main(argv=None) -> None:
    parser = C.parser(__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=10)
    args = C.parse(parser, argv)
    threads = args.threads or 2
    info = C.machine_info()
    env = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_") and k != "STABLENCA_ALLOCATOR"}
    results = {}
    for setting in ("system", "retain"):
        out = subprocess.run([sys.executable, "-c", EPOCHS, setting, str(args.epochs), str(threads)],
                             capture_output=True, text=True, check=True, env=env).stdout
        results[setting] = json.loads(out.strip().splitlines()[-1])
    rows = [[setting, f"{r['faults']:,.0f}", C.fmt_seconds(r["wall"]), C.fmt_seconds(r["system"]),
             C.fmt_seconds(r["user"])] for setting, r in results.items()]
    body = (f"{args.epochs} epochs of training steps (fused default, float32, {threads} torch threads, Abalone) "
            "after three warm-up epochs, each setting in a fresh interpreter; per epoch:\n\n"
            + C.md_table(["allocator", "minor page faults", "wall", "system CPU", "user CPU"], rows)
            + f"\nWall time, retained / glibc's defaults: {results['retain']['wall'] / results['system']['wall']:.2f}×.\n")
    command = C.command_line("page_faults.py", args, f" --epochs {args.epochs}")
    C.emit(C.section("Page faults per epoch: glibc's defaults and the CLI's setting", command, info, body),
           results, args)


if __name__ == "__main__":
    main()
