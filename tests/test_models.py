import math

import torch
import pytest

from stablenca.errors import ConfigError
from stablenca.models import ModernNCA, PLREmbeddings, SeedNCA
from stablenca.models.neighbours import exp_floor, in_batch_pairs, sampled_pool_pairs, soft_neighbour_readout


def test_plr_lite_shapes_and_shared_linear():
    plr = PLREmbeddings(n_features=7, n_frequencies=77, frequency_scale=0.04431, d_embedding=34)
    assert plr(torch.randn(5, 7)).shape == (5, 7, 34)
    assert plr[0].frequencies.shape == (7, 77)
    assert plr[1].weight.shape == (34, 2 * 77)  # one Linear shared by all features
    assert (plr(torch.randn(5, 7)) >= 0).all()  # ReLU


def test_modernnca_default_shapes_match_talent():
    model = ModernNCA(d_num=7, d_cat=3)
    assert model.encoder.in_features == 7 * 34 + 3
    assert model.encoder.out_features == 128
    assert model.post_encoder is None  # n_blocks = 0: no BatchNorm, no dropout
    assert model(torch.randn(6, 10)).shape == (6, 128)


def test_modernnca_blocks():
    model = ModernNCA(d_num=7, d_cat=3, n_blocks=2)
    assert sum(isinstance(m, torch.nn.BatchNorm1d) for m in model.modules()) == 3
    assert model(torch.randn(6, 10)).shape == (6, 128)


@pytest.mark.parametrize("kwargs", [dict(dim=0), dict(n_blocks=-1), dict(dropout=1.0), dict(temperature=0.0),
                                    dict(sample_rate=0.0)])
def test_modernnca_rejects_bad_arguments(kwargs):
    with pytest.raises(ConfigError, match="fix:"):
        ModernNCA(d_num=7, d_cat=3, **kwargs)


def test_seed_model_is_the_students():
    model = SeedNCA(d_in=10)
    kinds = [type(m).__name__ for m in model.layers]
    assert kinds == ["Linear", "BatchNorm1d", "ReLU", "Linear"]
    assert model(torch.randn(4, 10)).shape == (4, 3)


def test_in_batch_pairs_mask_self():
    pairs = in_batch_pairs(SeedNCA(d_in=10), torch.randn(8, 10), torch.arange(8) % 3)
    assert pairs.distances.shape == (8, 8)
    assert pairs.self_mask.equal(torch.eye(8, dtype=torch.bool))


def test_sampled_pool_pairs_follow_talent():
    torch.manual_seed(0)
    model = ModernNCA(d_num=7, d_cat=3)
    x, y = torch.randn(100, 10), torch.arange(100) % 3
    batch = torch.tensor([3, 50, 7, 99])
    pairs = sampled_pool_pairs(model, x, y, batch, sample_rate=0.5, generator=torch.Generator().manual_seed(0))
    # The batch is removed from the pool, half of the remaining 96 rows sampled, the batch prepended.
    assert pairs.n_candidates_sampled == 48
    assert pairs.distances.shape == (4, 4 + 48)
    assert pairs.candidate_labels[:4].equal(y[batch])
    assert pairs.self_mask[:, :4].equal(torch.eye(4, dtype=torch.bool)) and not pairs.self_mask[:, 4:].any()


def readout_tolerance(queries: torch.Tensor, candidates: torch.Tensor) -> torch.Tensor:
    """Per query: a worst-case bound on |streamed - one-shot| of a class probability, from the inputs.

    First order in u, sums taken sequentially (Higham 2nd ed. sec. 4.2). cdist may go through a
    matmul (|x|^2 + |y|^2 - 2 x.y, dot products of `dims` terms) in one call and not in the
    other: d^2 off by (dims + 2) u (|x| + |y|)^2, so d by that / (2d), plus u d for the sqrt.
    A weight exp(m - d_j) is then off by w = 2 E_d + u D + 2u relative (d_j and the row minimum m,
    the subtraction over the row's spread D, exp 1 ulp); the class sum (a matmul with a one-hot:
    exact products) and the row sum by (N-1) u more; the streamed sums also pass through up to
    N rescalings by a rounded exp(old max - new max), 3u each plus u times the moves, at most u D.
    A class probability (<= 1) is a ratio of two sums: off by 2 (w + (N-1) u) + u one-shot,
    2 (w + (N-1) u + 3 N u + u D) + u streamed; their difference by the sum. Without autograd the
    streamed readout raises weights below e^floor (:func:`exp_floor`) to it: at most N of them add
    at most N e^floor to a row sum of at least 1 and to a class sum, moving a probability by at
    most 2 N e^floor.
    """
    u = torch.finfo(queries.dtype).eps / 2
    n, dims = candidates.shape
    x, y = queries.double(), candidates.double()
    d = torch.cdist(x, y)
    spread = d.max(dim=1).values - d.min(dim=1).values
    norms = x.norm(dim=1)[:, None] + y.norm(dim=1)[None, :]
    error_d = ((dims + 2) * u * norms ** 2 / (2 * d) + u * d).max(dim=1).values
    weight = 2 * error_d + u * spread + 2 * u
    one_shot = 2 * (weight + (n - 1) * u) + u
    streamed = 2 * (weight + (n - 1) * u + 3 * n * u + u * spread) + u
    raised = 2 * n * math.exp(exp_floor(queries.dtype))
    return one_shot + streamed + raised


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_streamed_readout_equals_one_shot_softmax(dtype):
    queries, candidates = torch.randn(20, 5, dtype=dtype), torch.randn(1000, 5, dtype=dtype) * 10
    targets = torch.nn.functional.one_hot(torch.arange(1000) % 3).to(dtype)
    full = torch.softmax(-torch.cdist(queries, candidates), dim=1) @ targets
    tolerance = readout_tolerance(queries, candidates)[:, None]
    for chunk in (1, 33, 1000, 5000):
        streamed = soft_neighbour_readout(queries, candidates, targets, chunk_size=chunk)
        assert ((streamed.double() - full.double()).abs() <= tolerance).all(), chunk


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_evaluation_readout_never_underflows_and_keeps_its_bound(dtype, monkeypatch):
    """Candidates spread over distances far past exp's underflow (float32: 87.3 subnormal, 104.0
    zero; float64: 708, 745): the evaluation readout passes exp no argument below the floor, so
    no weight underflows, and it stays within the bound of the one-shot softmax in float64."""
    generator = torch.Generator().manual_seed(2)
    scale = 40.0 if dtype == torch.float32 else 300.0
    queries = torch.randn(12, 4, generator=generator, dtype=dtype) * scale
    candidates = torch.randn(900, 4, generator=generator, dtype=dtype) * scale
    targets = torch.nn.functional.one_hot(torch.arange(900) % 3).to(dtype)
    floor = exp_floor(dtype)
    distances = torch.cdist(queries, candidates)
    spread = distances.max(dim=1).values - distances.min(dim=1).values
    assert (spread > -floor + 40).all()  # every row has weights far below the floor
    smallest = []
    exp_ = torch.Tensor.exp_

    def spied(tensor):
        smallest.append(float(tensor.min()))
        return exp_(tensor)

    monkeypatch.setattr(torch.Tensor, "exp_", spied)
    with torch.no_grad():
        readouts = [soft_neighbour_readout(queries, candidates, targets, chunk_size=chunk) for chunk in (1, 77, 900)]
    monkeypatch.undo()
    assert smallest and min(smallest) >= torch.tensor(floor, dtype=dtype).item()  # the floor as clamp rounds it
    reference = torch.softmax(-torch.cdist(queries.double(), candidates.double()), dim=1) @ targets.double()
    tolerance = readout_tolerance(queries, candidates)[:, None]
    for readout in readouts:
        assert torch.isfinite(readout).all()
        assert ((readout.double() - reference).abs() <= tolerance).all()
        assert torch.equal(readout.argmax(dim=1), reference.argmax(dim=1))


@pytest.mark.parametrize("temperature", [1.0, 0.37])
def test_readout_without_negation_keeps_the_bits(temperature):
    """The evaluation path takes exp(m - d) with the row minimum m instead of exp(-d - max(-d)):
    (-d) - (-m) = m - d in IEEE arithmetic (negation is exact, addition commutes), so the
    readout is the same bits as with the negated logits."""
    generator = torch.Generator().manual_seed(1)
    queries, candidates = torch.randn(30, 6, generator=generator), torch.randn(500, 6, generator=generator) * 4
    targets = torch.nn.functional.one_hot(torch.arange(500) % 3).float()
    for chunk in (1, 77, 500):
        row_max = torch.full((30,), -float("inf"))
        row_sum, weighted = torch.zeros(30), torch.zeros(3, 30)  # accumulated class-major, as the readout does
        for start in range(0, 500, chunk):  # the negated-logits formulation
            distances = torch.cdist(queries, candidates[start:start + chunk])
            logits = (distances if temperature == 1.0 else distances / temperature).neg_()
            new_max = torch.maximum(row_max, logits.amax(dim=1))
            rescale = torch.exp(row_max - new_max)
            weights = logits.sub_(new_max[:, None]).exp_()
            row_sum.mul_(rescale).add_(weights.sum(dim=1))
            weighted.mul_(rescale).addmm_(targets.mT.contiguous()[:, start:start + chunk], weights.mT)
            row_max = new_max
        with torch.no_grad():
            readout = soft_neighbour_readout(queries, candidates, targets, temperature=temperature, chunk_size=chunk)
        assert torch.equal(readout, weighted.mT / row_sum[:, None]), chunk


def test_plr_and_modernnca_run_under_autocast():
    """Under torch.autocast the PLR embedding runs its modules (autocast decides each op's dtype)."""
    torch.manual_seed(0)
    model = ModernNCA(d_num=7, d_cat=3)
    x = torch.randn(16, 10)
    plr = model.num_embeddings
    with torch.autocast("cpu", dtype=torch.bfloat16):
        embedded = plr(x[:, :7])
        expected = torch.relu(plr[1](plr[0](x[:, :7])))
        out = model(x)
    assert embedded.dtype == torch.bfloat16 and torch.equal(embedded, expected)
    out.float().sum().backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())
