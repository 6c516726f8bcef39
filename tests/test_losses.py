"""Each formulation against a hand computation on a tiny batch, in every dtype."""

import math

import pytest
import torch

from stablenca import losses
from stablenca.errors import ConfigError
from stablenca.publish import capture

DTYPES = (torch.float32, torch.float64)


def tolerance(dtype, row_terms, per_row_ulps, per_term_ulps=2.0):
    """Derived relative tolerance for the mean of the per-row terms ``t_i`` (hand values).

    Row ``i`` is computed with an absolute error of at most ``(per_row_ulps + per_term_ulps |t_i|) u``
    (its operation count, first order; u the unit roundoff, exp and log within 1 ulp = 2u, sums
    sequential: gamma_(n-1), Higham 2nd ed. sec. 3.1); the mean of 4 rows adds gamma_3 sum|t_i| / 4
    and the division u |mean|. Relative to |mean t|: cancellation between rows (the condition
    number sum|t_i| / |sum t_i|) is included, not assumed away. The hand values are computed in
    float64 with about the same operations, so in float64 the bound is doubled (theirs + ours).
    """
    u = torch.finfo(dtype).eps / 2
    mean = sum(row_terms) / len(row_terms)
    absolute = sum(per_row_ulps + per_term_ulps * abs(t) for t in row_terms) / len(row_terms) \
        + (len(row_terms) - 1) * sum(abs(t) for t in row_terms) / len(row_terms) + abs(mean)
    return _hand(dtype) * absolute * u / abs(mean)


def _hand(dtype) -> float:
    """2 in float64, where the hand computation (math.exp, math.log in float64) errs as much; else 1."""
    return 2.0 if dtype == torch.float64 else 1.0

DISTANCES = [[0.0, 0.5, 1.5, 2.0], [0.5, 0.0, 1.0, 3.0], [1.5, 1.0, 0.0, 0.7], [2.0, 3.0, 0.7, 0.0]]
LABELS = [0, 0, 1, 1]


def tiny(dtype):
    return (torch.tensor(DISTANCES, dtype=dtype), torch.tensor(LABELS), torch.tensor(LABELS),
            torch.eye(4, dtype=torch.bool))


def hand_sums():
    """P_same and P_diff per row, by hand: P = exp(-d), self excluded."""
    same, diff = [], []
    for i in range(4):
        same.append(sum(math.exp(-DISTANCES[i][j]) for j in range(4) if j != i and LABELS[j] == LABELS[i]))
        diff.append(sum(math.exp(-DISTANCES[i][j]) for j in range(4) if LABELS[j] != LABELS[i]))
    return same, diff


@pytest.mark.parametrize("dtype", DTYPES)
def test_ratio_matches_hand_computation(dtype):
    same, diff = hand_sums()
    rows = [-math.log(s / d) for s, d in zip(same, diff)]
    out = losses.ratio(*tiny(dtype))
    assert out.loss.dtype == dtype
    # P_same: 1 exp (2u); P_diff: 2 exps and an addition (3u); the quotient u: log's argument is off
    # by 6u relative, i.e. log by 6u absolute, plus log's own 2u |t|.
    assert out.loss.item() == pytest.approx(sum(rows) / 4, rel=tolerance(dtype, rows, 6))


@pytest.mark.parametrize("dtype", DTYPES)
def test_ratio_eps_matches_hand_computation(dtype):
    same, diff = hand_sums()
    # The student's form: 1e-10 on both sums and once more in the divisor.
    rows = [-math.log((s + 1e-10) / (d + 1e-10 + 1e-10)) for s, d in zip(same, diff)]
    # As ratio, and each of the three + 1e-10 rounds once more (u each): 9u.
    assert losses.ratio_eps(*tiny(dtype)).loss.item() == pytest.approx(sum(rows) / 4, rel=tolerance(dtype, rows, 9))


@pytest.mark.parametrize("dtype", DTYPES)
def test_difference_matches_hand_computation(dtype):
    same, diff = hand_sums()
    out = losses.difference(*tiny(dtype))
    assert out.reduction == "sum"
    # 12 exps (2u each), per-row sums and the sum over rows (sequential: 8 other-class terms gamma_7, 4
    # same-class gamma_3), one subtraction u: relative error (2 + 7) u times the condition number of
    # sum(diff) - sum(same), plus u.
    u = torch.finfo(dtype).eps / 2
    condition = (sum(diff) + sum(same)) / abs(sum(diff) - sum(same))
    assert out.loss.item() == pytest.approx(sum(diff) - sum(same), rel=_hand(dtype) * (9 * condition + 1) * u)


@pytest.mark.parametrize("dtype", DTYPES)
def test_nca_logspace_matches_hand_computation(dtype):
    same, diff = hand_sums()
    rows = [-math.log(s / (s + d)) for s, d in zip(same, diff)]
    # Two logsumexps over n <= 3 terms, each off by ((n+1) + (n-1)/e + 3 ln n) u + u max d (< 14u with
    # distances <= 3; tests/error_budgets.py), the difference u |t|.
    assert losses.nca_logspace(*tiny(dtype)).loss.item() == pytest.approx(sum(rows) / 4,
                                                                         rel=tolerance(dtype, rows, 28, 1))


@pytest.mark.parametrize("dtype", DTYPES)
def test_modernnca_classification_matches_hand_computation(dtype):
    same, diff = hand_sums()
    rows = [-math.log(s / (s + d) + 1e-7) for s, d in zip(same, diff)]
    out = losses.modernnca(*tiny(dtype), n_classes=2)
    # Softmax over n = 3 candidates and the class sum: q off by ((2n+4) + (n-1)/e + max d) u < 14u
    # relative (tests/error_budgets.py); + 1e-7 one more u; log 2u |t|.
    assert out.loss.item() == pytest.approx(sum(rows) / 4, rel=tolerance(dtype, rows, 15))


@pytest.mark.parametrize("dtype", DTYPES)
def test_modernnca_regression_matches_hand_computation(dtype):
    distances, _, _, self_mask = tiny(dtype)
    targets = torch.tensor([0.5, -1.0, 2.0, 0.0], dtype=dtype)
    rows, bound = [], 0.0
    u = torch.finfo(dtype).eps / 2
    for i in range(4):
        weights = [math.exp(-DISTANCES[i][j]) if j != i else 0.0 for j in range(4)]
        p = [w / sum(weights) for w in weights]
        prediction = sum(pj * t for pj, t in zip(p, targets.tolist()))
        residual = prediction - targets[i].item()
        rows.append(residual ** 2)
        # p_j off by 10u relative (softmax over 3 candidates, as above); the weighted sum of 3 terms
        # gamma_2 on sum p |t|; the residual u (|prediction| + |t_i|); squaring doubles the relative
        # error of the residual and adds u: absolute error 2 |r| delta_r + u r^2.
        delta_r = 12 * u * sum(pj * abs(t) for pj, t in zip(p, targets.tolist())) \
            + u * (abs(prediction) + abs(targets[i].item()))
        bound += (2 * abs(residual) * delta_r + u * residual ** 2) / 4
    expected = sum(rows) / 4
    bound += 3 * u * expected + u * expected  # the mean: gamma_3 and the division
    out = losses.modernnca(distances, targets, targets, self_mask, task="regression")
    assert out.loss.item() == pytest.approx(expected, rel=_hand(dtype) * bound / expected)


def test_ratio_underflow_gives_nonfinite_and_stable_forms_stay_finite():
    distances, labels, _, self_mask = tiny(torch.float32)
    far = distances * 200  # every off-diagonal distance >= 100: exp underflows in float32 for d > 103.97
    assert not torch.isfinite(losses.ratio(far, labels, labels, self_mask).loss)
    for name in ("nca_logspace", "modernnca"):
        out = losses.evaluate(losses.get(name), far, labels, labels, self_mask, n_classes=2)
        assert torch.isfinite(out.loss)


def test_singleton_class_is_excluded_and_counted_by_nca_logspace():
    distances = torch.tensor([[0.0, 1.0, 2.0], [1.0, 0.0, 3.0], [2.0, 3.0, 0.0]])
    labels = torch.tensor([0, 0, 1])
    self_mask = torch.eye(3, dtype=torch.bool)
    out = losses.nca_logspace(distances.requires_grad_(), labels, labels, self_mask)
    assert out.n_excluded == 1 and out.included.tolist() == [True, True, False]
    out.loss.backward()
    assert torch.isfinite(distances.grad).all()
    assert torch.isinf(losses.ratio(distances.detach(), labels, labels, self_mask).per_sample[2])


def test_losses_publish_their_intermediates():
    with capture() as published:
        losses.ratio(*tiny(torch.float32))
    assert {"distances", "exp_out", "p_same", "p_diff", "same_class_mask", "self_mask"} <= set(published)


@pytest.mark.parametrize("name", ["ratio", "ratio_eps", "difference", "nca_logspace"])
def test_ratio_family_rejects_regression(name):
    with pytest.raises(ConfigError, match="does not fit task 'regression'"):
        losses.get(name, "regression")


def test_unknown_loss_names_the_choices():
    with pytest.raises(ConfigError, match="nca_logspace"):
        losses.get("softmax_nca")
