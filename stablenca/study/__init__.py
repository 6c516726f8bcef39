"""The homework study: ModernNCA against the student's SeedNCA on Abalone, over seeds.

The homework asks to implement ModernNCA, test it on Abalone, and explain the
performance gap to the student's model (SeedNCA trained with an NCA ratio loss).
:func:`run_study` measures that gap and decomposes it:

* a **main table**: each row is one model, loss and protocol, trained once per seed.
  It reports mean ± std over the seeds, how many runs diverged, and TALENT's
  published numbers beside the rows they correspond to. Scikit-learn NCA + KNN,
  KNN and a dummy predictor are baselines;
* an **ablation** (3-class task only): a walk from the student's setup to
  ModernNCA, with one factor changed per step (see :data:`ABLATION_STEPS`). Every
  step is measured over the same seeds and reported with its delta to the
  previous step.

Seeds are ``0..N-1``. A seed drives the model initialisation, the batch order,
and the training-candidate sampling. The baselines (scikit-learn NCA + KNN, KNN,
dummy) are deterministic and run once.
The train/val/test split is fixed: split seed 0, 64/16/20. TALENT does the same:
its 15 seeds vary the model seed on one fixed split.

Every run uses one thread (``torch.set_num_threads(1)``, BLAS limited to one
thread), both in-process and in the worker processes of ``jobs > 1``. A seed
therefore gives the same numbers whatever ``jobs`` is.

>>> aggregate([0.5, 0.75, None])
{'mean': 0.625, 'std': 0.125, 'n': 2, 'missing': 1}
"""

from __future__ import annotations

import importlib

# Names are loaded on first use, module by module: the CLI reads the defaults in .plan to
# build its parser, and should not pay for torch (.run trains) or the report (.render).
_WHERE = {
    "plan": ("ABLATION_STEPS", "CONFIDENCE", "DEFAULT_OUT", "FACTORS", "DEFAULT_SEEDS", "PUBLISHED", "PUBLISHED_SOURCE", "Row",
             "ablation_rows", "main_rows"),
    "render": ("format_table", "reading", "render_markdown"),
    "run": ("aggregate", "canonical_command", "consecutive_deltas", "execute", "factor_table", "load_study",
            "paired_differences", "paired_interval",
            "rings_to_classes", "run_study", "summarise", "summary_json", "write_study"),
}
_MODULE_OF = {name: module for module, names in _WHERE.items() for name in names}

__all__ = sorted(_MODULE_OF)


def __getattr__(name: str):
    if name in _MODULE_OF:
        value = getattr(importlib.import_module(f"{__name__}.{_MODULE_OF[name]}"), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(__all__))
