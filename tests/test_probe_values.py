"""The probes' values on a batch small enough to compute by hand (not just their keys).

Four points, classes (0, 0, 1, 1), float32 distances (self-distances 0 on the diagonal)::

        0    1   90  200
        1    0   50  120
       90   50    0    2
      200  120    2    0

float32 ``exp(-d)`` is normal below d = 87.34, subnormal up to 103.97 and exactly 0.0 beyond,
so of the 12 non-self pairs, 90 (twice) is subnormal and 120, 200 (twice each) are 0.0.
"""

import math

import pytest
import torch

from stablenca import losses
from stablenca.runtime.probes import batch_statistics, distance_statistics
from stablenca.publish import capture

D = torch.tensor([[0.0, 1.0, 90.0, 200.0],
                  [1.0, 0.0, 50.0, 120.0],
                  [90.0, 50.0, 0.0, 2.0],
                  [200.0, 120.0, 2.0, 0.0]])
LABELS = torch.tensor([0, 0, 1, 1])
SELF = torch.eye(4, dtype=torch.bool)


def _published(name, labels=LABELS):
    with capture() as published:
        out = losses.evaluate(losses.get(name), D, labels, labels, SELF, n_classes=int(labels.max()) + 1)
    return out, published


def _stats(name, labels=LABELS):
    return {k: float(v) for k, v in distance_statistics(_published(name, labels)[1]).items()}


def test_distance_ranges_over_non_self_pairs():
    stats = _stats("ratio")
    # all 12 non-self pairs: 1 1 2 2 50 50 90 90 120 120 200 200 (p50 = 6th, p99 = 12th value)
    assert (stats["d_min"], stats["d_p50"], stats["d_p99"], stats["d_max"]) == (1, 50, 200, 200)
    # same class: 1 1 2 2 (p50 = 2nd, p99 = 4th); other class: 50 50 90 90 120 120 200 200
    assert (stats["d_same_min"], stats["d_same_p50"], stats["d_same_p99"], stats["d_same_max"]) == (1, 1, 2, 2)
    assert (stats["d_other_min"], stats["d_other_p50"], stats["d_other_p99"], stats["d_other_max"]) == (50, 90, 200, 200)
    assert stats["max_d_over_T"] == 200 and stats["rows_without_same_class"] == 0
    assert stats["probe_sampled"] == 0.0


def test_exp_zero_and_subnormal_counts_of_the_ratio_loss():
    stats = _stats("ratio")
    assert stats["exp_zero"] == 4  # 120, 200 twice each; the diagonal exp(-0) = 1 is no zero
    assert stats["exp_subnormal"] == 2  # 90 twice
    # P_same per row: e^-1, e^-1, e^-2, e^-2; P_diff: e^-90 (subnormal), e^-50, e^-90 + e^-50, 0.0
    # One float32 exp (within 1 ulp: 2u = 2**-23 relative) plus exact zeros from the mask.
    assert stats["p_same_min"] == pytest.approx(math.exp(-2), rel=2.0 ** -23 + 2.0 ** -52) and stats["p_same_zero"] == 0
    assert stats["p_diff_min"] == 0.0 and stats["p_diff_zero"] == 1


def test_softmax_zeros_do_not_count_the_masked_self_pairs():
    # ModernNCA's softmax over candidates, self masked with +inf, max-shifted per row:
    # row 0: d - 1 = 0, 89, 199 -> 1, subnormal, 0      row 1: 0, 49, 119 -> 1, normal, 0
    # row 2: 88, 48, 0 -> subnormal, normal, 1          row 3: 198, 118, 0 -> 0, 0, 1
    # The four diagonal entries are exactly 0.0 too, by the mask, not by underflow: not counted.
    stats = _stats("modernnca")
    assert stats["softmax_zero"] == 4
    assert stats["softmax_subnormal"] == 2
    assert "exp_zero" not in stats


def test_softmax_zeros_do_not_count_self_pairs_off_the_leading_diagonal():
    # The same batch with the candidates in reverse order: self pairs at (i, 3 - i), so the probes
    # take their general path (not the diagonal views); the counts are those of the test above.
    order = torch.tensor([3, 2, 1, 0])
    with capture() as published:
        losses.evaluate(losses.get("modernnca"), D[:, order], LABELS, LABELS[order], SELF[:, order], n_classes=2)
    stats = {k: float(v) for k, v in distance_statistics(published).items()}
    assert stats["softmax_zero"] == 4 and stats["softmax_subnormal"] == 2
    assert (stats["d_min"], stats["d_max"]) == (1, 200)


def test_rows_without_a_same_class_candidate():
    stats = _stats("ratio", labels=torch.tensor([0, 0, 1, 2]))
    assert stats["rows_without_same_class"] == 2


def test_batch_record_carries_the_loss_and_the_counts():
    out, published = _published("modernnca")
    record = batch_statistics(loss=out.loss, per_sample=out.per_sample, rows_excluded=out.n_excluded,
                              published=published, named_parameters=[])
    assert record["loss"] == float(out.loss) and math.isfinite(record["loss"])  # float32 -> float64 is exact
    assert record["softmax_zero"] == 4 and isinstance(record["softmax_zero"], int)
    assert record["loss_nan"] == 0 and record["loss_inf"] == 0 and record["rows_excluded"] == 0
    assert record["d_max"] == 200.0 and record["probe_sampled"] is False


def test_row_coordinates_come_from_one_real_row():
    # Row 0 has the smallest P_same, row 1 the smallest P_diff, row 2 the largest 2b - a; the
    # batch minima (P_same from row 0, P_diff from row 1) would pair numbers of two rows.
    from stablenca.runtime.probes import row_coordinates

    p_same = torch.tensor([1e-30, 1.0, 3.0, 0.0], dtype=torch.float32)  # row 3: a singleton, P_same = 0
    p_diff = torch.tensor([1.0, 1e-20, 1e-19, 0.0], dtype=torch.float32)  # row 3: both 0 -> 2b - a is NaN
    ab = {k: float(v) for k, v in row_coordinates(p_same, p_diff).items()}
    a = [-math.log(float(v)) if v > 0 else math.inf for v in p_same.tolist()]
    b = [-math.log(float(v)) if v > 0 else math.inf for v in p_diff.tolist()]
    # 2b - a: row 1 = 2 * 46.05 - 0 = 92.1; row 2 = 2 * 43.7 - (-1.10) = 88.5; row 0 = 0 - 69 < 0.
    # Row 3's NaN never wins. torch's and math's float64 log are each within 1 ulp, so they agree to
    # 2 ulps: rel 2 * 2**-52 (0.0 stays 0.0 exactly, inf stays inf).
    def same_row(key, i):
        return (ab[f"ab_{key}_a"], ab[f"ab_{key}_b"]) == (pytest.approx(a[i], rel=2 * 2**-52, abs=0),
                                                          pytest.approx(b[i], rel=2 * 2**-52, abs=0))

    assert same_row("backward", 1)
    assert same_row("same", 3)  # P_same = 0.0: a = +inf, a real row
    assert same_row("diff", 3)
    assert row_coordinates(None, p_diff) == {}
