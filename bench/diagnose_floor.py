"""The floor under ``stablenca diagnose``: its runs trained with no hook, nothing else; one JSON line.

``python bench/diagnose_floor.py`` (``bench/bench_diagnose.py`` runs it as a subprocess,
interleaved with the command it bounds)

It does what diagnose must do to train its default runs, and nothing that diagnosis adds:
the same imports a training needs (torch, ``torch._dynamo`` for the optimizer, scikit-learn
for the scaling and the kNN readout), the embedded Abalone, the same configurations, the
same allocator setting as the CLI, and the same schedule: ``jobs`` forked workers with
``threads`` torch threads each, started longest first (``runtime.diagnose``'s own
``_jobs_and_threads`` and ``start_order``). No recorder, no sentinel, no figures, no
check, no report. The student's three runs execute the student's arithmetic as written,
and the ModernNCA runs use today's kernels, so no diagnose on this machine, with these
kernels, can finish faster than this process (its start-up included).

Prints ``{"wall": s, "startup": s, "runs": [[model, loss, status, epochs, seconds], ...], "jobs": j, "threads": t}``
(``startup``: from the interpreter's first import here until the workers fork).
"""

from __future__ import annotations

import dataclasses
import json
import multiprocessing
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

STARTED = time.perf_counter()

from stablenca.runtime.numpy_dispatch import prefer_avx2_sorting  # noqa: E402

prefer_avx2_sorting()  # as the CLI does on AMD Zen 4, before anything imports numpy

import sklearn.neighbors  # noqa: E402,F401 - what a run imports (diagnose imports it before forking too)
import torch  # noqa: E402
import torch._dynamo  # noqa: E402,F401 - torch.optim imports it on first use

from stablenca.runtime.allocator import retain_freed_memory  # noqa: E402
from stablenca.runtime.diagnose import DEFAULT_RUNS, _jobs_and_threads, start_order  # noqa: E402
from stablenca.training import trainer as train  # noqa: E402
from stablenca.training.trainer import TrainConfig, Trainer  # noqa: E402

CONFIGS = [dataclasses.replace(TrainConfig(), model=model, loss=loss) for model, loss in DEFAULT_RUNS]
DATA = None  # loaded in the parent before forking, as diagnose does


def _train(index: int) -> list:
    config = CONFIGS[index].resolved()
    started = time.perf_counter()
    result = Trainer(config, data=DATA, hooks=[]).fit()
    return [config.model, config.loss, result.status, result.epochs_run, time.perf_counter() - started]


def main() -> int:
    global DATA
    retain_freed_memory()  # what the stablenca CLI does at start-up
    DATA = train.load_data(CONFIGS[0].resolved())
    jobs, threads = _jobs_and_threads(None, len(CONFIGS))
    order = start_order(CONFIGS)
    context = multiprocessing.get_context("fork")
    startup = time.perf_counter() - STARTED  # imports and data, until the workers fork
    with context.Pool(jobs, initializer=torch.set_num_threads, initargs=(threads,)) as pool:
        # imap with chunks of one hands the next run to whichever worker is free: diagnose's schedule
        runs = dict(zip(order, pool.imap(_train, order, chunksize=1)))
    print(json.dumps({"wall": time.perf_counter() - STARTED, "startup": startup, "jobs": jobs, "threads": threads,
                      "runs": [runs[k] for k in range(len(CONFIGS))]}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
