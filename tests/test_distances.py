"""``euclidean_distances``: torch.cdist's values, and torch's backward for them evaluated 2^64 higher.

The claim (stablenca.models.neighbours._Distances): scaling by a power of two is exact, so the
gradients are torch's bit for bit wherever torch's computation holds no subnormal number; where it
does, they differ from torch's only by what torch rounds away below the smallest normal number; when
the scaled computation cannot be finite, torch's own numbers come back (inf and NaN included).
"""

import math

import pytest
import torch
from hypothesis import given, settings, strategies as st
from torch.utils._python_dispatch import TorchDispatchMode

from stablenca.models import ModernNCA
from stablenca.models import neighbours
from stablenca.models.neighbours import euclidean_distances, sampled_pool_pairs


def gradients(distances_fn, embeddings, weights, batch, shared=True):
    """d/d(embeddings) of sum(weights * distances(queries, candidates)), as the Trainer takes them."""
    e = embeddings.clone().requires_grad_()
    q = e[:batch] if shared else e[:batch].detach().clone().requires_grad_()
    distances = distances_fn(q, e)
    (distances * weights).sum().backward()
    return distances.detach(), e.grad, (None if shared else q.grad)


def torch_cdist(x1, x2):
    return torch.cdist(x1, x2, p=2)


def assert_same(a, b):
    assert (a is None) == (b is None)
    if a is not None:
        assert torch.equal(a.isnan(), b.isnan()) and torch.equal(a.nan_to_num(), b.nan_to_num())


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("shared", [True, False])
@pytest.mark.parametrize("rows", [(26, 40), (200, 371)])
def test_same_bits_as_torch_without_subnormals(dtype, shared, rows):
    batch, n = rows
    generator = torch.Generator().manual_seed(batch)
    embeddings = (torch.randn(n, 16, generator=generator) * 3).to(dtype)
    embeddings[batch + 1] = embeddings[0]  # a duplicate: distance 0, torch's subgradient 0 there
    weights = torch.randn(batch, n, generator=generator).to(dtype)
    ours, theirs = gradients(euclidean_distances, embeddings, weights, batch, shared), \
        gradients(torch_cdist, embeddings, weights, batch, shared)
    for a, b in zip(ours, theirs):
        assert_same(a, b)


def test_nonfinite_and_overflowing_gradients_are_torchs():
    generator = torch.Generator().manual_seed(1)
    embeddings = torch.randn(60, 8, generator=generator)
    for weights in (torch.randn(30, 60, generator=generator) * 1e30,  # finite, but 2^64 times it is not
                    torch.randn(30, 60, generator=generator).index_put_((torch.tensor([2]), torch.tensor([5])),
                                                                       torch.tensor(math.inf)),
                    torch.full((30, 60), math.nan)):
        for a, b in zip(gradients(euclidean_distances, embeddings, weights, 30),
                        gradients(torch_cdist, embeddings, weights, 30)):
            assert_same(a, b)


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 2 ** 31), exponent=st.integers(-170, 30), subnormal_share=st.floats(0.0, 1.0),
       shared=st.booleans())
def test_underflowed_gradients_differ_from_torch_by_subnormal_rounding_only(seed, exponent, subnormal_share, shared):
    """Gradients 2^exponent in size, a share of them 2^-40 smaller still (the rows a loss has underflowed).

    Both computations are torch's sequence of operations on the same inputs. Each operation is
    correctly rounded, and ours sees every value 2^64 larger, so the two can differ only through a
    rounding that torch makes below the smallest normal number (absolute error <= 2^-150, half the
    subnormal spacing) where ours rounds relatively (<= u |value|). Coordinate (i, k) of either
    gradient is x_ik sum_j r_ij - sum_j r_ij y_jk with r_ij = g_ij / d_ij: at most 3C + 2 rounded
    operations (C divisions, C - 1 additions for the row sum, C fused products, the product by x_ik
    and the subtraction; C candidates, or B queries for the candidates' coordinate). Each path is
    then within gamma_(3C+2) sum_j |r_ij| (|x_ik| + |y_jk|) of the exact value (Higham 3.1), plus, for
    torch's, (3C + 2) 2^-150 max(1, |x|, |y|) from its subnormal roundings: the difference is at most
    the sum of both. Where no value is subnormal the last term is zero and the gradients must be
    the same bits (test_same_bits_as_torch_without_subnormals).
    """
    generator = torch.Generator().manual_seed(seed)
    batch, n = 40, 90
    embeddings = torch.randn(n, 8, generator=generator) * 4
    weights = torch.randn(batch, n, generator=generator) * 2.0 ** exponent
    tiny_rows = torch.rand(batch, n, generator=generator) < subnormal_share
    weights = torch.where(tiny_rows, weights * 2.0 ** -40, weights)
    _, ours, ours_q = gradients(euclidean_distances, embeddings, weights, batch, shared)
    _, theirs, theirs_q = gradients(torch_cdist, embeddings, weights, batch, shared)
    d = torch.cdist(embeddings[:batch].double(), embeddings.double())
    r = (weights.double() / d).masked_fill(d == 0, 0).abs()
    x, y = embeddings[:batch].double().abs(), embeddings.double().abs()
    u = 2.0 ** -24
    terms = 3 * n + 2
    gamma = terms * u / (1 - terms * u)
    size = max(1.0, float(embeddings.abs().max()))
    floor = terms * 2.0 ** -150 * size
    bound_q = 2 * gamma * (r.sum(1, keepdim=True) * x + r @ y) + floor  # the queries' role
    bound_c = 2 * gamma * (r.sum(0)[:, None] * y + r.mT @ x) + floor  # the candidates' role
    if shared:
        bound_c[:batch] += bound_q
    else:
        assert bool(((ours_q.double() - theirs_q.double()).abs() <= bound_q).all())
    assert bool(((ours.double() - theirs.double()).abs() <= bound_c).all())
    assert bool(torch.isfinite(ours).all())


def test_the_trainers_distances_use_it_and_tracers_see_torchs_ops():
    torch.manual_seed(0)
    model = ModernNCA(d_num=7, d_cat=3)
    x, y = torch.randn(100, 10), torch.arange(100) % 3
    batch = torch.arange(30)

    def pairs():
        return sampled_pool_pairs(model, x, y, batch, sample_rate=0.5, generator=torch.Generator().manual_seed(0))

    plain = pairs()
    assert type(plain.distances.grad_fn).__name__ == "_DistancesBackward"

    class Watching(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            return func(*args, **(kwargs or {}))

    with Watching():
        watched = pairs()
    assert type(watched.distances.grad_fn).__name__ != "_DistancesBackward"
    assert torch.equal(plain.distances, watched.distances)  # torch.cdist's values either way
    with torch.no_grad():
        assert pairs().distances.grad_fn is None


def test_fallback_when_the_scale_overflows(monkeypatch):
    """A scale so large that the scaled gradients overflow: the backward returns torch's own."""
    generator = torch.Generator().manual_seed(2)
    embeddings, weights = torch.randn(60, 8, generator=generator), torch.randn(30, 60, generator=generator) * 1e6
    monkeypatch.setattr(neighbours, "_BACKWARD_SCALE", 2.0 ** 126)
    for a, b in zip(gradients(euclidean_distances, embeddings, weights, 30),
                    gradients(torch_cdist, embeddings, weights, 30)):
        assert_same(a, b)
