"""Ways to compute parts of the fused ModernNCA step, timed against each other; one run.

``python bench/talent_alternatives.py [--repeats 30] [--threads 2]``

Each group computes one thing several ways on tensors of one default training step
(batch B = 1024, C = 1848 candidates, 128 dimensions, 3 classes, PLR 7 × 77 → 34), float32,
interleaved rounds. The first way of each group is the reference; "kept" says which one
the library uses. These are the measurements behind the choices in
``stablenca/models/fused.py``, ``embeddings.py``, ``neighbours.py`` and the probes, including the
ones that did not pay.
"""

from __future__ import annotations

import copy
import math
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch  # noqa: E402

import _common as C  # noqa: E402
from stablenca.models import ModernNCA, PLREmbeddings  # noqa: E402

B, N_CANDIDATES, DIM, K = 1024, 1848, 128, 3


def backward_products(g: torch.Generator) -> dict:
    """The backward's two (B × C × dim) products, or the self block's two halves merged first.

    With G = [G1 | G2] (B × B | B × S) and the embeddings E = [Q; S], the batch rows' gradient
    needs G1 Q + G1ᵀ Q: adding G1 + G1ᵀ first saves a (B × B × dim) product but costs a
    transposed pass over the B × B block.
    """
    ratio = torch.randn(B, N_CANDIDATES, generator=g)
    embeddings = torch.randn(N_CANDIDATES, DIM, generator=g)
    queries, sampled = embeddings[:B], embeddings[B:]
    row_factor = torch.rand(B, generator=g)

    def two_products():
        return ratio @ embeddings, ratio.mT @ (row_factor[:, None] * queries)

    def merged():
        scaled = ratio[:, :B] * row_factor[:, None]
        symmetric = scaled.mT.contiguous().add_(scaled)
        top = (ratio[:, B:] @ sampled).mul_(row_factor[:, None]).addmm_(symmetric, queries)
        return top, ratio[:, B:].mT @ (row_factor[:, None] * queries)

    return {"two (B × C × dim) products [kept]": two_products, "self block merged (G1 + G1ᵀ) first": merged}


def masks(g: torch.Generator) -> tuple[dict, dict]:
    """The published bool same-class mask, and the float m - u the backward starts from."""
    labels_all = torch.randint(0, K, (N_CANDIDATES,), generator=g)
    labels = labels_all[:B]
    picked = torch.rand(B, generator=g)
    table = torch.arange(K)[:, None] == labels_all[None, :]
    same = labels[:, None] == labels_all[None, :]
    published = {
        "same-class mask: pairwise ==": lambda: labels[:, None] == labels_all[None, :],
        "same-class mask: class-table rows [kept]": lambda: table.index_select(0, labels),
    }
    backward = {
        "m − u: bool → uint8 → float, sub":
            lambda: same.view(torch.uint8).to(torch.float32).sub_(picked[:, None]),
        "m − u: float class-table rows, sub [kept]":
            lambda: table.to(torch.float32).index_select(0, labels).sub_(picked[:, None]),
        "m − u: torch.where(m, 1 − u, −u)": lambda: torch.where(same, (1 - picked)[:, None], (-picked)[:, None]),
    }
    return published, backward


def readout(g: torch.Generator) -> dict:
    queries = torch.randn(669, DIM, generator=g)
    candidates = torch.randn(2672, DIM, generator=g)

    def negated():
        logits = torch.cdist(queries, candidates).neg_()
        return logits.sub_(logits.amax(dim=1)[:, None]).exp_()

    def minimum():
        distances = torch.cdist(queries, candidates)
        return torch.sub(distances.amin(dim=1)[:, None], distances, out=distances).exp_()

    return {"readout weights: −d, amax, sub, exp": negated, "readout weights: amin, m − d, exp [kept]": minimum}


def class_sums(g: torch.Generator) -> dict:
    """The readout's probability per class, ``softmax @ one_hot`` (B × C × K, K = 3): a product with
    three columns, or its transpose from the class-major (K × C) table (losses.builtin.per_class)."""
    from stablenca.losses.builtin import class_table, per_class

    probabilities = torch.softmax(torch.randn(B, N_CANDIDATES, generator=g) * 3, dim=1)
    labels = torch.randint(0, K, (N_CANDIDATES,), generator=g)
    onehot = torch.nn.functional.one_hot(labels, K).float()
    table = class_table(labels, K)
    return {"class sums: softmax @ one_hot (TALENT's)": lambda: probabilities @ onehot,
            "class sums: (table @ softmaxᵀ)ᵀ [kept]": lambda: per_class(probabilities, table)}


def plr(g: torch.Generator) -> dict:
    torch.manual_seed(0)
    module = PLREmbeddings(n_features=7, n_frequencies=77, frequency_scale=0.04431360576139521, d_embedding=34)
    x = torch.randn(N_CANDIDATES, 7, generator=g)
    upstream = torch.randn(N_CANDIDATES, 7, 34, generator=g)

    def modules():
        torch.relu(module[1](module[0](x))).backward(upstream)

    def function():
        module(x).backward(upstream)

    return {"PLR forward + backward: autograd through the modules": modules,
            "PLR forward + backward: one Function, two products [kept]": function}


def underflow_counts(g: torch.Generator) -> dict:
    """The recorder's zero and subnormal counts of an underflowed (B, C) softmax (stablenca/runtime/probes.py)."""
    import numpy as np

    values = torch.softmax(torch.rand(B, N_CANDIDATES, generator=g) * -150, dim=1)  # most rows underflow
    array, tiny = values.numpy(), torch.finfo(values.dtype).tiny
    return {
        "zero / subnormal counts: torch, bool tensors and count_nonzero":
            lambda: (torch.count_nonzero(values == 0), torch.count_nonzero(values < tiny)),
        "zero / subnormal counts: numpy, one thread [kept]":
            lambda: (np.count_nonzero(array == 0), np.count_nonzero(array < tiny)),
    }


def adamw(g: torch.Generator) -> tuple[dict, dict]:
    """AdamW steps on the default model's parameters (TALENT's default: no foreach on CPU)."""
    torch.manual_seed(0)
    model = ModernNCA(d_num=7, d_cat=3)
    variants, finals = {}, {}
    for label, options in (("AdamW step: default (per tensor, TALENT's) [kept]", {}),
                           ("AdamW step: foreach=True", dict(foreach=True)),
                           ("AdamW step: fused=True", dict(fused=True))):
        copy_ = copy.deepcopy(model)
        optimizer = torch.optim.AdamW(copy_.parameters(), lr=0.01, weight_decay=2e-4, **options)
        grads = torch.Generator().manual_seed(1)
        for p in copy_.parameters():
            p.grad = torch.randn(p.shape, generator=grads)
        variants[label] = optimizer.step
        finals[label] = copy_
    return variants, finals


def main(argv=None) -> None:
    parser = C.parser(__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=30)
    args = C.parse(parser, argv, default_threads=2)
    repeats = 5 if args.quick else args.repeats
    info = C.machine_info()
    g = torch.Generator().manual_seed(0)
    groups = [backward_products(g), *masks(g), class_sums(g), readout(g), plr(g), underflow_counts(g)]
    optimizer_steps, models = adamw(g)
    groups.append(optimizer_steps)
    rows = []
    for group in groups:
        times = C.interleaved(group, repeats)
        reference = next(iter(times))
        for name, values in times.items():
            ratio = C.median([v / r for v, r in zip(values, times[reference])])
            rows.append([name, C.fmt_seconds(C.median(values)), f"{ratio:.2f}×"])
    # the same number of steps with each optimizer from the same start: how far apart
    parameters = {label: [p.detach() for p in model.parameters()] for label, model in models.items()}
    reference = next(iter(parameters))
    differences = []
    for label, values in parameters.items():
        gap = max(float((a - b).abs().max() / b.abs().max()) for a, b in zip(values, parameters[reference]))
        differences.append([label, "identical" if gap == 0 else f"{gap:.1e}"])
    steps = repeats + 1  # each optimizer's step ran once per round and once to warm up
    body = "\n".join([
        f"{repeats} interleaved rounds per group, float32, {torch.get_num_threads()} torch threads; tensors of "
        f"one default step (B = {B}, C = {N_CANDIDATES}, dim = {DIM}, {K} classes). Median time, and the median "
        "per-round ratio to the first way of its group (below 1: faster).", "",
        C.md_table(["way", "median", "vs first of its group"], rows), "",
        f"AdamW after {steps} steps on the same gradients from the same start, max relative weight difference "
        "to the default:", "",
        C.md_table(["optimizer", "max abs Δw / max abs w"], differences)])
    command = C.command_line("talent_alternatives.py", args, f" --repeats {args.repeats}")
    C.emit(C.section("Ways to compute parts of the fused ModernNCA step", command, info, body), {"rows": rows}, args)


if __name__ == "__main__":
    main()
