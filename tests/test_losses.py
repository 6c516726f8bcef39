"""Each formulation against a hand computation on a tiny batch, in every dtype."""

import math

import pytest
import torch

from stablenca import losses
from stablenca.errors import ConfigError
from stablenca.publish import capture

# Relative tolerance per dtype (pytorch-metric-learning style).
TOLERANCE = {torch.float32: 1e-5, torch.float64: 1e-12}

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


@pytest.mark.parametrize("dtype", list(TOLERANCE))
def test_ratio_matches_hand_computation(dtype):
    same, diff = hand_sums()
    expected = sum(-math.log(s / d) for s, d in zip(same, diff)) / 4
    out = losses.ratio(*tiny(dtype))
    assert out.loss.dtype == dtype
    assert out.loss.item() == pytest.approx(expected, rel=TOLERANCE[dtype])


@pytest.mark.parametrize("dtype", list(TOLERANCE))
def test_ratio_eps_matches_hand_computation(dtype):
    same, diff = hand_sums()
    expected = sum(-math.log((s + 1e-10) / (d + 1e-10)) for s, d in zip(same, diff)) / 4
    assert losses.ratio_eps(*tiny(dtype)).loss.item() == pytest.approx(expected, rel=TOLERANCE[dtype])


@pytest.mark.parametrize("dtype", list(TOLERANCE))
def test_difference_matches_hand_computation(dtype):
    same, diff = hand_sums()
    out = losses.difference(*tiny(dtype))
    assert out.reduction == "sum"
    assert out.loss.item() == pytest.approx(sum(diff) - sum(same), rel=TOLERANCE[dtype])


@pytest.mark.parametrize("dtype", list(TOLERANCE))
def test_nca_logspace_matches_hand_computation(dtype):
    same, diff = hand_sums()
    expected = sum(-math.log(s / (s + d)) for s, d in zip(same, diff)) / 4
    assert losses.nca_logspace(*tiny(dtype)).loss.item() == pytest.approx(expected, rel=TOLERANCE[dtype])


@pytest.mark.parametrize("dtype", list(TOLERANCE))
def test_modernnca_classification_matches_hand_computation(dtype):
    same, diff = hand_sums()
    expected = sum(-math.log(s / (s + d) + 1e-7) for s, d in zip(same, diff)) / 4
    out = losses.modernnca(*tiny(dtype), n_classes=2)
    assert out.loss.item() == pytest.approx(expected, rel=TOLERANCE[dtype])


@pytest.mark.parametrize("dtype", list(TOLERANCE))
def test_modernnca_regression_matches_hand_computation(dtype):
    distances, _, _, self_mask = tiny(dtype)
    targets = torch.tensor([0.5, -1.0, 2.0, 0.0], dtype=dtype)
    expected = 0.0
    for i in range(4):
        weights = [math.exp(-DISTANCES[i][j]) if j != i else 0.0 for j in range(4)]
        prediction = sum(w * t for w, t in zip(weights, targets.tolist())) / sum(weights)
        expected += (prediction - targets[i].item()) ** 2 / 4
    out = losses.modernnca(distances, targets, targets, self_mask, task="regression")
    assert out.loss.item() == pytest.approx(expected, rel=TOLERANCE[dtype])


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
