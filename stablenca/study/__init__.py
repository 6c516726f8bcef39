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
from .plan import (ABLATION_STEPS, DEFAULT_OUT, DEFAULT_SEEDS, PUBLISHED, PUBLISHED_SOURCE, Row, ablation_rows,
                   main_rows)
from .render import format_table, reading, render_markdown
from .run import (aggregate, canonical_command, consecutive_deltas, execute, paired_differences, rings_to_classes,
                  run_study, summarise, summary_json, write_study)


__all__ = ["ABLATION_STEPS", "DEFAULT_OUT", "DEFAULT_SEEDS", "format_table", "PUBLISHED", "PUBLISHED_SOURCE", "Row", "ablation_rows", "aggregate",
           "canonical_command", "consecutive_deltas", "execute", "main_rows", "paired_differences",
           "reading", "render_markdown", "rings_to_classes", "run_study", "summarise", "summary_json",
           "write_study"]
