"""What generated loops would buy: the ModernNCA objective's (B, C) passes compiled, per epoch against TALENT; one run.

``python bench/generated_loops.py [--rounds 10] [--threads 2] [--talent /work/talent]``

The per-epoch target (issue 16: at least 2x TALENT's epoch, float32, 2 threads) is missed with
ATen's kernels, and earlier rounds named generated fused loops as the way that could close it
(``torch.compile`` of the whole step: 8 % off the steps for 8-30 s of compile in round 3, no gain
in round 5). This bench measures loops for the objective's passes alone, with the products kept
in ATen, and bounds what perfect ones would give, before anyone builds them. One more stablenca
Trainer runs the objective (multiclass, T = 1, the Trainer's shared queries) with its matrix
products left to ATen and every pass over the (1024 x 1848) matrix compiled by ``torch.compile``
(inductor, C++ loops):

* forward: one compiled function from the Gram product and the squared norms to the
  distances, the softmax (self pairs masked) and the loss;
* backward: one from the softmax and distances to the closed-form gradient matrix H
  (as in :mod:`stablenca.models.fused`), its row sums and its column sums weighted by the
  row coefficients; then the same two products as the fused kernel.

Interleaved rounds (the order rotates) time TALENT's epoch (``train_epoch`` + ``validate``),
stablenca's fused kernel and this compiled objective, in one process on the same TALENT-format
split. Also reported: the objective alone over one epoch's batch shapes, fused, compiled and as
its three matrix products only, the floor any loops could reach for it, whence the epoch's bound
with the objective's other passes free; the first compiled call with an empty kernel cache (what a
user's first run would pay); and how far each float32 objective's loss and gradient are from the float64
fused kernel on one step (the compiled one is the same function in other roundings: the distances
from the norms and the Gram product, the class sum in another order). This is a measurement, not a
kernel for the package: the compiled path is not bit-for-bit the eager one, and a C++ compiler
is needed at run time.
"""

from __future__ import annotations

import math
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from stablenca.runtime.numpy_dispatch import prefer_avx2_sorting  # noqa: E402

prefer_avx2_sorting()  # as the CLI does on AMD Zen 4, before torch imports numpy

import torch  # noqa: E402

import _common as C  # noqa: E402
from talent_epoch import epoch_variants  # noqa: E402
from talent_side_by_side import TASK_DIRS, parse_per_epoch_args  # noqa: E402
from talent_split import write_split  # noqa: E402
from stablenca.losses.base import LossOutput  # noqa: E402
from stablenca.losses.builtin import MODERNNCA_EPS  # noqa: E402
from stablenca.models.fused import modernnca_objective  # noqa: E402
from stablenca.training import StepContext, Trainer, TrainConfig  # noqa: E402


def _forward_loops(gram, norms, labels, candidate_labels):
    """Distances, softmax over -d with the self pairs masked, each row's same-class mass and loss."""
    rows = gram.shape[0]
    raw = (norms[:rows, None] + norms[None, :] - 2 * gram).clamp_min(0).sqrt()
    columns = torch.arange(gram.shape[1], device=gram.device)
    self_pair = torch.arange(rows, device=gram.device)[:, None] == columns[None, :]
    probabilities = torch.softmax(torch.where(self_pair, -math.inf, -raw), dim=1)
    same = labels[:, None] == candidate_labels[None, :]
    picked = torch.where(same, probabilities, 0.0).sum(dim=1)  # the self pair's softmax is 0
    return raw, probabilities, picked, -torch.log(picked + MODERNNCA_EPS)


def _backward_loops(probabilities, raw, labels, candidate_labels, picked, coefficient):
    """H_ij = (m_ij - u_i) s_ij / d_ij (0 on the self pairs and where d = 0), its row sums, and
    sum_i coefficient_i H_ij."""
    rows = probabilities.shape[0]
    columns = torch.arange(probabilities.shape[1], device=raw.device)
    self_pair = torch.arange(rows, device=raw.device)[:, None] == columns[None, :]
    same = (labels[:, None] == candidate_labels[None, :]).to(raw.dtype)
    ratio = torch.where(self_pair | (raw == 0), 0.0, (same - picked[:, None]) * probabilities / raw)
    return ratio, ratio.sum(dim=1), (coefficient[:, None] * ratio).sum(dim=0)


#: The loops as the objective calls them: eager here (tests/test_generated_loops.py checks the function),
#: compiled by main().
FORWARD, BACKWARD = _forward_loops, _backward_loops


class _CompiledObjective(torch.autograd.Function):
    """TALENT's multiclass objective (T = 1) of the candidates' leading rows against all candidates."""

    @staticmethod
    def forward(ctx, candidates, labels, candidate_labels):
        queries = candidates[:len(labels)]
        gram = queries @ candidates.mT
        norms = candidates.square().sum(dim=1)
        raw, probabilities, picked, per_sample = FORWARD(gram, norms, labels, candidate_labels)
        ctx.save_for_backward(candidates, labels, candidate_labels, raw, probabilities, picked)
        return per_sample

    @staticmethod
    def backward(ctx, grad_per_sample):
        candidates, labels, candidate_labels, raw, probabilities, picked = ctx.saved_tensors
        queries = candidates[:len(labels)]
        coefficient = grad_per_sample / (picked + MODERNNCA_EPS)
        ratio, row_sums, weights = BACKWARD(probabilities, raw, labels, candidate_labels, picked, coefficient)
        # the fused kernel's shared-role gradient (stablenca.models.fused._embedding_gradients)
        weights[:len(queries)] += coefficient * row_sums
        grad = candidates * weights[:, None]
        grad[:len(queries)] -= (ratio @ candidates).mul_(coefficient[:, None])
        grad.addmm_(ratio.mT, coefficient[:, None] * queries, alpha=-1)
        return grad, None, None


def compiled_objective(queries, candidates, labels, candidate_labels, *, task, n_classes, temperature=1.0):
    """A drop-in for ``Trainer.fused_objective`` (multiclass, T = 1, queries = the leading candidates)."""
    if task == "regression" or temperature != 1.0 or queries.data_ptr() != candidates.data_ptr():
        raise SystemExit("generated_loops.py measures the multiclass objective at T = 1 only")
    per_sample = _CompiledObjective.apply(candidates, labels, candidate_labels)
    return LossOutput(per_sample, "mean", torch.ones(len(per_sample), dtype=torch.bool))


def agreement(trainer: Trainer) -> tuple[list[list[str]], dict]:
    """Each float32 objective's loss and gradient on one step's embeddings against the float64 fused kernel:
    the largest relative difference of the mean loss, and of the gradient in the max norm."""
    with torch.no_grad():
        rows = trainer.rows(trainer.epoch_batches()[0])
    embeddings, labels, candidate_labels = rows.embeddings.detach(), rows.labels, rows.candidate_labels

    def run(objective, dtype):
        candidates = embeddings.to(dtype, copy=True).requires_grad_()  # a leaf of its own: no shared .grad
        out = objective(candidates[:len(labels)], candidates, labels, candidate_labels, task="multiclass",
                        n_classes=trainer.n_classes)
        loss = out.per_sample.mean()
        loss.backward()
        return loss.detach().double(), candidates.grad.double()

    reference_loss, reference_grad = run(modernnca_objective, torch.float64)
    rows_out, data = [], {}
    for label, objective in (("fused (ATen)", modernnca_objective), ("compiled loops", compiled_objective)):
        loss, grad = run(objective, torch.float32)
        loss_error = float((loss - reference_loss).abs() / reference_loss.abs())
        grad_error = float((grad - reference_grad).abs().max() / reference_grad.abs().max())
        data[label] = {"loss_relative": loss_error, "gradient_relative_max_norm": grad_error}
        rows_out.append([label, f"{loss_error:.1e}", f"{grad_error:.1e}"])
    return rows_out, data


def objective_epoch(trainer: Trainer) -> dict:
    """One epoch's objective calls (forward and backward, every batch shape) on fixed embeddings, three ways:
    the fused kernel, the compiled loops, and the objective's three matrix products alone (the Gram
    product and the two gradient products): what no implementation of this objective avoids."""
    with torch.no_grad():
        inputs = [trainer.rows(batch) for batch in trainer.epoch_batches()]
    inputs = [(rows.embeddings.detach(), rows.labels, rows.candidate_labels) for rows in inputs]

    def objective(function):
        def run():
            for embeddings, labels, candidate_labels in inputs:
                candidates = embeddings.clone().requires_grad_()
                function(candidates[:len(labels)], candidates, labels, candidate_labels, task="multiclass",
                         n_classes=trainer.n_classes).per_sample.mean().backward()
        return run

    def products():
        for embeddings, labels, _ in inputs:
            queries = embeddings[:len(labels)]
            gram = queries @ embeddings.mT
            gram @ embeddings, gram.mT @ queries

    return {"fused objective": objective(modernnca_objective), "compiled objective": objective(compiled_objective),
            "its products alone": products}


def main(argv=None) -> None:
    global FORWARD, BACKWARD
    FORWARD, BACKWARD = (torch.compile(loops, dynamic=False) for loops in (_forward_loops, _backward_loops))
    parser = C.parser(__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=10)
    args, talent = parse_per_epoch_args(parser, argv)
    rounds = 3 if args.quick else args.rounds
    info = C.machine_info()
    with tempfile.TemporaryDirectory(prefix="generated_loops_") as tmp_name:
        # An empty kernel cache of our own, so that the first call's compile time is what a user's first run
        # pays (inductor reads the variable when it compiles).
        os.environ["TORCHINDUCTOR_CACHE_DIR"] = str(Path(tmp_name) / "inductor")
        tmp = Path(tmp_name)
        write_split(tmp / "data")
        variants = epoch_variants(talent, tmp / "data", tmp / "models", "multiclass")
        variants = {name: variants[name] for name in ("TALENT epoch", "fused epoch")}
        compiled = Trainer(TrainConfig(data=str(tmp / "data" / TASK_DIRS["multiclass"]), seed=0, epochs=1, patience=None,
                                       kernel="fused"))
        compiled.fused_objective = compiled_objective

        def steps(trainer=compiled):
            for batch in trainer.epoch_batches():
                trainer.run_step(StepContext(0, 0, 0, batch))

        started = time.perf_counter()
        compiled.run_step(StepContext(0, 0, 0, compiled.epoch_batches()[0]))  # compiles forward and backward
        first_call = time.perf_counter() - started
        # the last batch of an epoch is shorter: a second shape, compiled on its first epoch (dynamic=False)
        started = time.perf_counter()
        steps()
        first_epoch = time.perf_counter() - started
        variants["compiled-loops epoch"] = lambda: (steps(), compiled.evaluate("val"))
        epochs = C.interleaved(variants, rounds)
        objectives = C.interleaved(objective_epoch(compiled), rounds * 3)
        agreement_rows, agreement_data = agreement(compiled)

    talent_epoch = epochs["TALENT epoch"]
    rows = []
    for label, name in (("TALENT", "TALENT epoch"), ("stablenca fused (ATen loops)", "fused epoch"),
                        ("stablenca, objective's loops compiled", "compiled-loops epoch")):
        ratio = C.median([t / o for t, o in zip(talent_epoch, epochs[name])])
        rows.append([label, C.fmt_seconds(C.median(epochs[name])), f"{ratio:.2f}×"])
    objective_rows = [[name, C.fmt_seconds(C.median(times))] for name, times in objectives.items()]
    # What the epoch would take if every op of the fused objective but its three products were free.
    saving = C.median(objectives["fused objective"]) - C.median(objectives["its products alone"])
    bound = C.median(epochs["fused epoch"]) - saving
    body = [f"{rounds} interleaved rounds, float32, {torch.get_num_threads()} torch threads, the TALENT-format "
            "Abalone of `talent_split.py` (multiclass), TALENT's default ModernNCA configuration; one epoch = "
            "training steps + validation (validation is the fused kernel's in both stablenca rows).", "",
            C.md_table(["epoch", "median", "TALENT / this (median per round)"], rows), "",
            f"The objective alone, one epoch's calls (forward and backward for each of the epoch's batch shapes, on "
            f"fixed embeddings), {rounds * 3} interleaved rounds:", "",
            C.md_table(["objective", "median per epoch"], objective_rows), "",
            f"If every op of the fused objective but its three products were free (the best any generated loop "
            f"could do for it), the fused epoch would take {C.fmt_seconds(C.median(epochs['fused epoch']))} − "
            f"{C.fmt_seconds(saving)} = **{C.fmt_seconds(bound)}**, and TALENT's median epoch over that "
            f"would be **{C.median(talent_epoch) / bound:.2f}×** (medians, not a per-round ratio).", "",
            f"First compiled step, empty kernel cache: {first_call:.1f} s; the first epoch after it (the short "
            f"last batch compiles its own shape): {first_epoch:.1f} s.", "",
            "One step's objective, float32 against the float64 fused kernel (relative difference of the mean "
            "loss; of the gradient, in the max norm):", "",
            C.md_table(["objective", "loss", "gradient"], agreement_rows)]
    command = C.command_line("generated_loops.py", args, f" --rounds {args.rounds}")
    markdown = C.section("What generated loops would buy: the objective's passes compiled", command, info,
                         "\n".join(body))
    C.emit(markdown, {"epochs": epochs, "objective_per_epoch": objectives, "bound_s": bound, "first_call_s": first_call, "first_epoch_s": first_epoch,
                      "agreement": agreement_data}, args)


if __name__ == "__main__":
    main()
