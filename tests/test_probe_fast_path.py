"""The probes' fast path (every distance finite) gives the same numbers as the general path."""

from __future__ import annotations

import math

import pytest
import torch

from stablenca.runtime import probes


def _case(seed: int):
    """A (B, C) distance matrix with TALENT's self-pair layout, and what a loss publishes from it."""
    generator = torch.Generator().manual_seed(seed)
    batch, extra = torch.randint(1, 40, (2,), generator=generator).tolist()
    distances = torch.rand(batch, batch + extra, generator=generator) * 30
    self_mask = torch.zeros_like(distances, dtype=torch.bool)
    if seed % 4:
        self_mask[:, :batch].fill_diagonal_(True)
    if seed % 5 == 0:
        distances[self_mask] = 0.0  # cdist gives exactly 0 on self pairs: the minimum is attained there
    if seed % 7 == 0:
        distances.view(-1)[torch.randint(0, distances.numel(), (2,), generator=generator)] = math.inf
    if seed % 11 == 0:
        distances.view(-1)[torch.randint(0, distances.numel(), (1,), generator=generator)] = math.nan
    softmax = torch.softmax((-distances).masked_fill(self_mask, -math.inf), dim=1)
    exp_out = torch.exp(-4 * distances)  # large arguments: zeros and subnormals occur
    return distances, self_mask, {"softmax": softmax, "exp_out": exp_out}


@pytest.mark.parametrize("seed", range(120))
def test_fast_path_equals_general_path(seed):
    distances, self_mask, published = _case(seed)
    for exact_range in (True, False):
        fast = probes._overall_statistics(distances, self_mask, published, exact_range=exact_range)
        general = probes._overall_statistics(distances, self_mask, published, exact_range=exact_range, fast=False)
        assert fast.keys() == general.keys()
        for key in fast:
            a, b = fast[key].double().item(), general[key].double().item()
            assert a == b or (math.isnan(a) and math.isnan(b)), (key, a, b)


def test_counts_exclude_self_pairs_and_count_underflow():
    distances = torch.tensor([[0.0, 200.0, 1.0], [3.0, 0.0, 2.0]])
    self_mask = torch.tensor([[True, False, False], [False, True, False]])
    exp_out = torch.exp(-distances)  # exp(-200) underflows to 0 in float32; the self pairs are exp(0) = 1
    out = probes._overall_statistics(distances, self_mask, {"exp_out": exp_out}, exact_range=True)
    assert (out["d_min"].item(), out["d_max"].item()) == (1.0, 200.0)
    assert out["exp_zero"].item() == 1 and out["exp_subnormal"].item() == 0


def test_rows_without_same_class():
    distances = torch.rand(3, 5)
    same = torch.tensor([[False, True, False, False, False], [False] * 5, [True] * 5])
    out = probes.distance_statistics({"distances": distances, "same_class_mask": same})
    assert out["rows_without_same_class"].item() == 1


@pytest.mark.parametrize("seed", range(20))
def test_rows_without_same_class_from_published_counts_equal_the_masks(seed):
    """The fused kernels publish each row's same-class count (from the class table); the probe's count
    from it equals the one from the mask. Small batches of many classes leave rows without one."""
    from stablenca.models.fused import modernnca_objective
    from stablenca.publish import capture

    generator = torch.Generator().manual_seed(seed)
    batch = int(torch.randint(2, 12, (1,), generator=generator))
    embeddings = torch.randn(batch + int(torch.randint(0, 6, (1,), generator=generator)), 3, generator=generator)
    labels = torch.randint(0, 6, (len(embeddings),), generator=generator)
    with capture() as published:
        modernnca_objective(embeddings[:batch], embeddings, labels[:batch], labels, task="multiclass", n_classes=6)
    from_counts = probes.distance_statistics(published)["rows_without_same_class"]
    del published["same_class_counts"]
    from_mask = probes.distance_statistics(published)["rows_without_same_class"]
    assert int(from_counts) == int(from_mask)
    assert int(from_mask) == int((~published["same_class_mask"].any(dim=1)).sum())


@pytest.mark.parametrize("seed", range(60))
def test_range_quantiles_are_order_statistics(seed):
    # Reference: a full sort (NaN last, as torch.sort and numpy's partition place it).
    generator = torch.Generator().manual_seed(seed)
    n = int(torch.randint(1, 300, (1,), generator=generator))
    distances = torch.rand(n, generator=generator) * 10
    if seed % 3 == 0:
        distances[torch.randint(0, n, (max(1, n // 7),), generator=generator)] = math.nan
    if seed % 5 == 0:
        distances = distances.round()  # ties
    mask = torch.rand(n, generator=generator) < 0.7
    out: dict = {}
    probes._range(distances[mask].numpy(), "d_", out)
    values = distances[mask].double()
    if not values.numel():
        assert math.isnan(out["d_p50"])
        return
    ordered = torch.sort(values).values
    for q, key in ((0.5, "p50"), (0.99, "p99")):
        expected = ordered[max(1, math.ceil(q * values.numel())) - 1].item()
        got = out[f"d_{key}"]
        assert got == expected or (math.isnan(got) and math.isnan(expected))
    low, high = out["d_min"], out["d_max"]
    if torch.isnan(values).any():
        assert math.isnan(low) and math.isnan(high)
    else:
        assert (low, high) == (ordered[0].item(), ordered[-1].item())


@pytest.mark.parametrize("seed", range(60))
@pytest.mark.parametrize("sample", [probes.QUANTILE_SAMPLE, 50])
def test_distance_statistics_are_those_of_the_general_path(seed, sample, monkeypatch):
    # With the self pairs on the leading diagonal and every distance finite, the sampled ranges
    # skip the self and finiteness masks; the record must be the one the masks give (same keys
    # in the same order). sample=50 forces a strided sample of rows, with its own self pairs.
    distances, self_mask, published = _case(seed)
    generator = torch.Generator().manual_seed(seed)
    published = {**published, "distances": distances, "self_mask": self_mask,
                 "same_class_mask": (torch.rand(distances.shape, generator=generator) < 0.3) & ~self_mask}
    monkeypatch.setattr(probes, "QUANTILE_SAMPLE", sample)
    fast = probes.distance_statistics(published)
    monkeypatch.setattr(probes, "_is_leading_diagonal", lambda mask: False)
    general = probes.distance_statistics(published)
    assert list(fast) == list(general)
    for key in fast:
        a, b = float(fast[key]), float(general[key])
        assert a == b or (math.isnan(a) and math.isnan(b)), (key, a, b)


def test_a_nan_in_the_last_row_is_not_lost_between_the_two_views():
    # The off-diagonal pairs are two views (the body, then the last row after its diagonal entry);
    # a NaN distance or softmax value in the second one must still send the step down the general path.
    distances = torch.tensor([[0.0, 1.0, 2.0], [1.0, 0.0, math.nan]])
    self_mask = torch.tensor([[True, False, False], [False, True, False]])
    softmax = torch.tensor([[0.0, 0.5, 0.5], [1e-40, 0.0, 1e-40]])  # subnormal at the NaN distance too
    for exact_range in (True, False):
        fast = probes._overall_statistics(distances, self_mask, {"softmax": softmax}, exact_range=exact_range)
        general = probes._overall_statistics(distances, self_mask, {"softmax": softmax}, exact_range=exact_range,
                                             fast=False)
        assert {k: float(v) for k, v in fast.items()} == {k: float(v) for k, v in general.items()}
        assert int(fast["softmax_subnormal"]) == 1  # the 1e-40 at (1, 0); the NaN-distance pair is not counted


@pytest.mark.parametrize("seed", range(20))
def test_the_published_matrices_are_left_as_they_were(seed):
    # The one-read extremes overwrite the diagonal for a moment: it must come back bit for bit
    # (NaN payloads and -0.0 included), and autograd's version counter must not move.
    distances, self_mask, published = _case(seed)
    diagonal = distances.diagonal()
    diagonal.copy_(torch.tensor([-0.0, math.nan, 1e-40, 5.0])[torch.arange(len(diagonal)) % 4])
    leaf = torch.zeros(distances.shape, requires_grad=True)
    tracked = (leaf + distances).detach()  # shares the version counter of a tensor autograd saw
    published = {**published, "distances": tracked, "self_mask": self_mask}
    before = {name: value.clone() for name, value in published.items()}
    versions = {name: value._version for name, value in published.items()}
    for exact_range in (True, False):
        probes._overall_statistics(tracked, self_mask, published, exact_range=exact_range)
    probes.distance_statistics(published)
    for name, value in published.items():
        assert value._version == versions[name], name
        assert torch.equal(value.view(torch.uint8), before[name].view(torch.uint8)), name


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
def test_one_read_extremes_are_those_of_the_off_diagonal_views(dtype):
    generator = torch.Generator().manual_seed(0)
    for batch, width in ((1, 2), (2, 2), (5, 9), (64, 100)):
        matrix = (torch.rand(batch, width, generator=generator) * 10).to(dtype)
        matrix.diagonal().fill_(-1.0)  # smaller than every pair: it must not be the minimum
        matrix[batch - 1, width - 1] = 20.0  # the largest, in the last row's view
        views = probes._off_diagonal(matrix)
        expected = (min(float(v.amin()) for v in views if v.numel()), max(float(v.amax()) for v in views if v.numel()))
        got = probes._off_diagonal_reduction(matrix, torch.aminmax)
        if dtype == torch.bfloat16:  # numpy has no bfloat16: the caller falls back to the views
            assert got is None
            continue
        assert (float(got[0]), float(got[1])) == expected
        assert float(matrix[0, 0]) == -1.0


def test_one_read_extremes_refuse_a_strided_matrix():
    # A transposed (C, B) view seen as (B, C): numpy's reshape of it is a copy, so overwriting its
    # diagonal there would leave the real diagonal (the smallest values) in the reduction.
    matrix = (torch.rand(9, 5, generator=torch.Generator().manual_seed(0)) + 1).mT
    matrix.diagonal().fill_(-1.0)
    assert not matrix.is_contiguous() and probes._off_diagonal_reduction(matrix, torch.aminmax) is None


@pytest.mark.parametrize("seed", range(30))
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16])
def test_underflow_counts_are_those_of_each_value_classified_alone(seed, dtype):
    # float32/float64 are counted by numpy, float16 by torch: both must classify every entry as
    # Python's floats do (NaN is neither 0 nor tiny; -0.0 is 0; |v| < tiny below tiny, both signs).
    generator = torch.Generator().manual_seed(seed)
    tiny = torch.finfo(dtype).tiny
    pool = torch.tensor([0.0, -0.0, tiny / 4, -tiny / 4, tiny, -tiny, 1.0, -3.0, math.nan, math.inf], dtype=dtype)
    values = pool[torch.randint(0, len(pool), (7, 11), generator=generator)]
    self_values = values.diagonal()
    counted = probes._underflow_counts(values, self_values, tiny)

    def alone(tensor):
        entries = [float(v) for v in tensor.reshape(-1).tolist()]
        zero = sum(v == 0 for v in entries)
        return zero, sum(abs(v) < tiny for v in entries) - zero

    (zero_all, sub_all), (zero_own, sub_own) = alone(values), alone(self_values)
    assert (int(counted[0]), int(counted[1])) == (zero_all - zero_own, sub_all - sub_own)
    if seed % 2 == 0:  # for values known to be >= 0 the abs pass is skipped: the same counts
        positive = values.abs()
        counted = probes._underflow_counts(positive, positive.diagonal(), tiny, nonnegative=True)
        assert (int(counted[0]), int(counted[1])) == (zero_all - zero_own, sub_all - sub_own)


@pytest.mark.parametrize("seed", range(20))
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_off_diagonal_underflow_counts_each_value_alone(seed, dtype):
    """The published-matrix counts (exp or softmax outputs, >= 0; the self pairs on the diagonal are 0)
    against each off-diagonal value classified alone, with and without zeros off the diagonal: with
    none, the zero-count pass is skipped, and the counts must not move."""
    generator = torch.Generator().manual_seed(seed)
    tiny = torch.finfo(dtype).tiny
    pool = torch.tensor([tiny / 4, tiny / 2**20, tiny, 0.5, 1.0] + ([0.0] if seed % 2 else []), dtype=dtype)
    values = pool[torch.randint(0, len(pool), (9, 13), generator=generator)].contiguous()
    values.fill_diagonal_(0.0)
    off_diagonal = ~torch.eye(9, 13, dtype=torch.bool)
    off = [float(v) for v in values[off_diagonal].tolist()]
    zero = sum(v == 0 for v in off)
    counted = probes._off_diagonal_underflow(values)
    assert (int(counted[0]), int(counted[1])) == (zero, sum(v < tiny for v in off) - zero)


def _large_case(seed: int, *, spread: float):
    """What the fused ModernNCA objective publishes for a batch above DEFERRED_PAIRS (reduced as published)."""
    from stablenca.models.fused import modernnca_objective
    from stablenca.publish import capture

    generator = torch.Generator().manual_seed(seed)
    batch, width = 72, 130
    assert batch * width > probes.DEFERRED_PAIRS
    candidates = torch.randn(width, 8, generator=generator) * spread
    labels = torch.randint(0, 3, (width,), generator=generator)
    reductions = probes.PublishedReductions()
    with capture(into=reductions), capture() as published:
        output = modernnca_objective(candidates[:batch], candidates, labels[:batch], labels, task="multiclass",
                                     n_classes=3)
    return output, published, reductions


def _same_record(a: dict, b: dict) -> None:
    assert list(a) == list(b)
    for key in a:
        x, y = float(a[key]), float(b[key])
        assert x == y or (math.isnan(x) and math.isnan(y)), (key, x, y)


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("spread", [0.5, 40.0])  # 40: most of the softmax underflows, so the counts run
def test_reductions_taken_when_published_give_the_same_record(seed, spread, monkeypatch):
    monkeypatch.setattr(probes, "QUANTILE_SAMPLE", 1024)  # a sampled step: d_min and d_max are the reductions'
    output, published, reductions = _large_case(seed, spread=spread)
    for name in ("distances", "softmax"):
        assert reductions.get(name, published[name]) is not None, name  # taken, and still valid
    early = probes.batch_statistics(loss=output.loss, per_sample=output.per_sample, rows_excluded=0,
                                    published=published, named_parameters=[], reductions=reductions)
    late = probes.batch_statistics(loss=output.loss, per_sample=output.per_sample, rows_excluded=0,
                                   published=published, named_parameters=[])
    _same_record(early, late)
    assert early["probe_sampled"]
    if spread > 1:
        assert early["softmax_zero"] + early["softmax_subnormal"] > 0


def test_a_matrix_written_after_it_was_published_is_reduced_again():
    output, published, reductions = _large_case(0, spread=0.5)
    before = probes.distance_statistics(published, reductions)
    assert before["softmax_zero"] == 0
    published["softmax"].zero_()  # an in-place write after publishing: autograd's version counter moves
    assert reductions.get("softmax", published["softmax"]) is None
    after = probes.distance_statistics(published, reductions)
    pairs = published["softmax"].numel() - len(published["softmax"])  # every pair but the self pairs
    assert int(after["softmax_zero"]) == pairs
    _same_record(after, probes.distance_statistics(published))


def test_another_tensor_is_not_given_a_reduction_taken_of_the_published_one():
    output, published, reductions = _large_case(1, spread=0.5)
    copy = published["distances"].clone()
    copy[0, 1] = -5.0
    assert reductions.get("distances", copy) is None
    assert reductions.get("distances", published["distances"].detach()) is not None  # an alias is the same tensor


def test_nothing_is_reduced_under_a_tracer_or_for_small_or_held_matrices():
    from torch.utils._python_dispatch import TorchDispatchMode

    class Counting(TorchDispatchMode):
        ops = 0

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            Counting.ops += 1
            return func(*args, **(kwargs or {}))

    large = torch.rand(80, 120)
    reductions = probes.PublishedReductions()
    with Counting():
        reductions["distances"] = large
    assert Counting.ops == 0 and reductions.get("distances", large) is None  # the traced step saw no probe op
    reductions["distances"] = torch.rand(32, 32)  # a held step's size: summarised with its stack instead
    assert reductions.get("distances", large) is None
    reductions["distances"] = large
    assert reductions.get("distances", large) is not None
    reductions.clear()
    assert reductions.get("distances", large) is None
