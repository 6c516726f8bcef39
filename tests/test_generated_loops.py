"""bench/generated_loops.py times a compiled objective against the fused kernel: it must be the same function."""

import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))

import generated_loops  # noqa: E402
from stablenca.models.fused import modernnca_objective  # noqa: E402


@pytest.mark.parametrize("scale", [0.1, 1.0, 10.0])
def test_the_benchmarked_objective_is_the_fused_one(scale):
    """Loss and gradient agree in float64 with the fused kernel (whose gradient tests/test_fused.py checks
    against autograd), run as the bench's loops run before compiling (main() compiles the same functions).

    Where they differ: the distances here come from ||q||^2 + ||c||^2 - 2 q.c, torch.cdist's from one
    product of padded rows: each rounds the same cancelling sum, off by about u (||q||^2 + ||c||^2) / (2 d)
    in d, with u = 2^-53. These rows have ||x||^2 < 2200 and no pair closer than d = 0.99 * scale (at scale
    10: d moves by < 1e-13), so exp(-d) moves by that relatively, H = .../d by that over d, and the sums
    of 40 terms add 40 u: 1e-10 relative is over 100x what both can reach."""
    generator = torch.Generator().manual_seed(0)
    embeddings = torch.randn(40, 6, dtype=torch.float64, generator=generator) * scale
    labels = torch.randint(0, 3, (40,), generator=generator)
    rows = 16

    def run(objective):
        candidates = embeddings.clone().requires_grad_()
        out = objective(candidates[:rows], candidates, labels[:rows], labels, task="multiclass", n_classes=3)
        out.per_sample.mean().backward()
        return out.per_sample.detach(), candidates.grad

    (loss, grad), (fused_loss, fused_grad) = run(generated_loops.compiled_objective), run(modernnca_objective)
    assert torch.allclose(loss, fused_loss, rtol=1e-10, atol=0)
    assert torch.allclose(grad, fused_grad, rtol=1e-10, atol=1e-10 * float(fused_grad.abs().max()))


def test_it_refuses_what_it_does_not_measure():
    embeddings = torch.randn(8, 3)
    with pytest.raises(SystemExit, match="multiclass"):
        generated_loops.compiled_objective(embeddings[:4], embeddings, torch.zeros(4, dtype=torch.long),
                                           torch.zeros(8, dtype=torch.long), task="regression", n_classes=None)
