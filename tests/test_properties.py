"""Property tests (hypothesis): the stable losses stay accurate at every scale, the
unstable ones fail, each in its own way, and the breakdown agrees with theory.

Budgets come from the hypothesis profiles of conftest.py (HYPOTHESIS_PROFILE=dev/ci/nightly).

Accuracy is measured as in ``stablenca.testing.pytest_plugin.assert_stable``: the loss error
in ulps of ``max(|reference|, 1, s)`` and the gradient error (normwise) in ulps of
``max(max|reference|, max(1, s) / B)`` for a batch of B rows at scale s, i.e. what a
one-ulp rounding of distances of size s costs anyway. (Herbie's purely relative bits
are too strict for a loss that is tiny next to its distances: ``nca_logspace``
computes log-sum-exp differences of numbers of size s.)
"""

import json
import math

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, Phase, find, given, settings
from hypothesis import strategies as st

from stablenca import check, cli, losses
from stablenca.check import bounds
from stablenca.testing import strategies
from stablenca import reference as ref
from stablenca.testing.pytest_plugin import _floor

from error_budgets import BOUNDS

STABLE = ["nca_logspace", "modernnca"]
DTYPES = (torch.float32, torch.float64)
#: float32 gradient vs the float64 gradient of the same formula, normwise: max|g - g64| relative to
#: G = max(max|g64|, max(1, s) / B). The derived gradient bound (tests/error_budgets.py) is below 83 ulps of
#: G for every batch size (6.38 bits at 12 rows); an ulp of G is at most 2u G, so the error is below
#: 166 u G = 2^-16.6 G in float32; the float64 reference adds 2^-29 of that. Hence 2^-16 relative.
GRAD_RTOL = {torch.float32: 2.0 ** -16}
#: For hypothesis.find: search (no shrinking: only the existence of a counterexample is asserted).
SEARCH = settings(max_examples=300, deadline=None, database=None, phases=[Phase.generate],
                  suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much])


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Tiny tensors: one torch thread is several times faster than two on a busy machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def run(name, batch, dtype):
    return check.run_formulation(losses.get(name), batch, dtype)


def mp_reference(name, batch, mp_inputs=None):
    return ref.compute_reference(ref.get_reference(name), batch.distances, batch.labels, batch.labels,
                                 batch.self_mask, mp_inputs=mp_inputs)


# --------------------------------------------------------------------------- the stable formulations


@pytest.mark.parametrize("regime", ["small", "normal", "large", "extremal"])
@given(data=st.data())
def test_stable_losses_are_finite_and_accurate_in_every_regime(regime, data):
    batch = data.draw(strategies.batches(regime=regime, singletons=True), label="batch")
    mp_inputs = ref.to_mp_inputs(batch.distances, batch.labels, batch.labels, batch.self_mask)
    for name in STABLE:
        reference = mp_reference(name, batch, mp_inputs)
        float64 = ref.float64_loss(ref.get_reference(name).float64, batch.distances, batch.labels, batch.labels,
                                   batch.self_mask)
        max_loss_bits, max_grad_bits = BOUNDS[name](batch.rows)  # derived; the same in every dtype
        for dtype in DTYPES:
            loss, grad = run(name, batch, dtype)
            assert torch.isfinite(loss) and bool(torch.isfinite(grad).all()), (name, dtype)
            loss_bits = ref.bits_of_error(loss, reference.loss, dtype, floor=_floor("scale", batch, "loss_floor"))
            grad_bits = ref.gradient_bits_of_error(grad.numpy(), reference.grad, dtype,
                                                   floor=_floor("scale", batch, "grad_floor"))
            assert loss_bits <= max_loss_bits, (name, dtype, loss_bits, float(loss), float(reference.loss))
            assert grad_bits <= max_grad_bits, (name, dtype, grad_bits)
            if dtype in GRAD_RTOL:  # against the float64 reference (same formula, autograd), normwise
                scale = max(float(np.max(np.abs(float64[1]))), max(1.0, batch.scale) / batch.rows)
                error = float(np.max(np.abs(grad.numpy() - float64[1])))
                assert error <= GRAD_RTOL[dtype] * scale, (name, dtype, error / scale)


def _loss_and_grad(name, distances, labels):
    d = distances.detach().clone().requires_grad_(True)
    out = losses.evaluate(losses.get(name), d, labels, labels, torch.eye(len(labels), dtype=torch.bool),
                          n_classes=int(labels.max()) + 1)
    (grad,) = torch.autograd.grad(out.loss, d)
    return out.loss.detach(), grad


@pytest.mark.parametrize("name", STABLE)
@given(batch=strategies.batches(regime="all"), data=st.data())
def test_invariant_to_permuting_the_batch_and_relabelling_classes(name, batch, data):
    loss, grad = _loss_and_grad(name, batch.distances, batch.labels)
    # The same exact loss: each float64 evaluation is within the analysis' bound E of it.
    tolerance = dict(rtol=0.0, atol=2 * _float64_loss_error(name, batch.distances, batch.labels))
    order = torch.tensor(data.draw(st.permutations(range(batch.rows)), label="row order"))
    permuted_loss, permuted_grad = _loss_and_grad(name, batch.distances[order][:, order], batch.labels[order])
    torch.testing.assert_close(permuted_loss, loss, **tolerance)
    grad_tolerance = dict(rtol=0.0, atol=2 * _float64_gradient_error(name, batch.distances, batch.labels))
    torch.testing.assert_close(permuted_grad, grad[order][:, order], **grad_tolerance)
    classes = data.draw(st.permutations(range(batch.n_classes)), label="class relabelling")
    relabelled = torch.tensor(classes)[batch.labels]
    relabelled_loss, relabelled_grad = _loss_and_grad(name, batch.distances, relabelled)
    torch.testing.assert_close(relabelled_loss, loss, **tolerance)
    torch.testing.assert_close(relabelled_grad, grad, **grad_tolerance)


def _float64_loss_error(name, distances, labels):
    """Absolute error bound of one float64 evaluation of ``name`` from these distances.

    The stability contract's analysis (stablenca/check/bounds.py: logsumexp or softmax, sequential
    sums, exp/log 1 ulp, first order), evaluated on this batch.
    """
    batch = check.Batch(distances.detach(), labels, scale=float(distances.max()))
    if name == "nca_logspace":
        return bounds.nca_logspace_error(batch, "float64")[0]
    return bounds.modernnca_error(batch, "float64")


def _float64_gradient_error(name, distances, labels):
    """Largest absolute error of an entry of one float64 gradient of ``name`` (stablenca/check/bounds.py).

    A reordered batch sums in another order, so each evaluation may sit anywhere within this bound
    of the exact gradient: two of them within twice it. (Its terms in u |lse| ~ u s matter: a
    bound in 1/rows alone failed on the AVX2 path at s = 274.)
    """
    batch = check.Batch(distances.detach(), labels, scale=float(distances.max()))
    if name == "nca_logspace":
        return bounds.nca_logspace_error(batch, "float64")[1]
    return bounds.modernnca_gradient_error(batch, "float64")


@pytest.mark.parametrize("name", STABLE)
@given(pair=strategies.embeddings_with_labels(regime="all"), data=st.data())
def test_invariant_to_translating_the_embeddings(name, pair, data):
    embeddings, labels = pair
    size = float(embeddings.abs().max())
    shift = torch.tensor(data.draw(st.lists(st.floats(-1, 1), min_size=embeddings.shape[1],
                                            max_size=embeddings.shape[1]), label="shift"), dtype=torch.float64)
    loss, _ = _loss_and_grad(name, torch.cdist(embeddings, embeddings), labels)
    moved = embeddings + shift * size
    moved_loss, _ = _loss_and_grad(name, torch.cdist(moved, moved), labels)
    # The exact distances are equal (t = fl(shift * size) is one common vector). Each moved coordinate
    # x + t rounds by u |x + t| <= 2u size, so a coordinate difference moves by 4u size and a distance by
    # 4u size sqrt(D); cdist (<= 12 rows: no matmul) rounds each distance by (D + 2) u d in either run,
    # d <= 2 size sqrt(D). Together max|delta d| <= 4 (D + 3) u size sqrt(D). Both losses move by at most
    # sum_ij |dL/dd_ij| <= 2 times that (per row sum_j |p_all - p_same| <= 2, resp. sum_j p_j |[j in c] - q|
    # / (q + 1e-7) <= 2, averaged over rows), and each evaluation adds its own error bound E.
    dims, u = embeddings.shape[1], 2.0 ** -53
    delta_d = 4 * (dims + 3) * u * size * math.sqrt(dims)
    tolerance = 2 * delta_d + _float64_loss_error(name, torch.cdist(embeddings, embeddings), labels) \
        + _float64_loss_error(name, torch.cdist(moved, moved), labels)
    torch.testing.assert_close(moved_loss, loss, rtol=0.0, atol=tolerance)


# --------------------------------------------------------------------------- hypothesis finds the failures


def test_hypothesis_finds_that_ratio_goes_non_finite():
    def non_finite(batch):
        loss, grad = run("ratio", batch, torch.float32)
        return not (torch.isfinite(loss) and bool(torch.isfinite(grad).all()))

    batch = find(strategies.batches(regime="all"), non_finite, settings=SEARCH)
    # Theory: only when exp(-d) of a row's nearest same or other candidate leaves the normal range.
    assert batch.scale >= check.theory_window("float32")[0]


def test_hypothesis_finds_that_ratio_eps_is_finite_but_far_from_the_true_ratio():
    def silently_wrong(batch):
        loss, _ = run("ratio_eps", batch, torch.float32)
        if not torch.isfinite(loss):
            return False
        true_ratio = ref.mp_loss("ratio", batch.distances, batch.labels, batch.labels, batch.self_mask).loss
        return ref.bits_of_error(loss, true_ratio, torch.float32, floor=max(1.0, batch.scale)) > 12

    batch = find(strategies.batches(regime="all"), silently_wrong, settings=SEARCH)
    loss, grad = run("ratio_eps", batch, torch.float32)
    assert torch.isfinite(loss) and bool(torch.isfinite(grad).all())
    assert batch.scale > 10  # P >> 1e-10 below that: the epsilon changes nothing


def test_hypothesis_finds_that_ratio_eps_gradient_vanishes():
    def vanished(batch):
        _, grad = run("ratio_eps", batch, torch.float32)
        return bool((grad == 0).all()) and mp_reference("ratio", batch).grad_nonzero

    batch = find(strategies.batches(regime="all"), vanished, settings=SEARCH)
    assert batch.scale > 100  # every exp(-d) is 0.0 in float32


def test_hypothesis_finds_that_the_difference_gradient_vanishes():
    def vanished(batch):
        _, grad = run("difference", batch, torch.float32)
        return bool((grad == 0).all()) and mp_reference("difference", batch).grad_nonzero

    batch = find(strategies.batches(regime="all"), vanished, settings=SEARCH)
    loss, _ = run("difference", batch, torch.float32)
    assert torch.isfinite(loss)  # finite, and silent
    assert batch.scale > 100  # every exp(-d) is 0.0 in float32 only past 103.97


# --------------------------------------------------------------------------- theory and the contract


def test_measured_breakdown_of_ratio_agrees_with_exp_underflow_theory():
    report = check.run_check(["ratio"], ["float32", "float64"], scale_min=10, scale_max=1e4, batches=2,
                             populations=("paired",))
    step = 10 ** (1 / check.POINTS_PER_DECADE)
    for dtype in ("float32", "float64"):
        measured = report.row("ratio", dtype).breakdown_scale
        lo, hi = check.theory_window(dtype)
        assert lo <= measured <= hi * step, (dtype, measured, lo, hi)
        middle = math.sqrt(lo * hi)
        assert abs(math.log(measured / middle)) <= math.log(check.DEFAULT_TOLERANCE_FACTOR), (dtype, measured)


def test_tightened_contract_fails_with_a_readable_diff(tmp_path, capsys):
    contract = json.loads(check.SHIPPED_CONTRACT.read_text())
    contract["sweep"]["batches"] = 1
    contract["expect"]["ratio"]["float32"]["breakdown"] = 1000
    contract["expect"]["nca_logspace"]["float32"]["max_loss_bits"] = 0.01
    path = tmp_path / "tight.json"
    path.write_text(json.dumps(contract))
    code = cli.main(["check", "--contract", str(path), "--loss", "ratio", "nca_logspace", "--dtype", "float32"])
    out = capsys.readouterr().out
    assert code == 1
    assert f"contract {path}: 2 violation(s)" in out
    assert ("  - ratio x float32: breakdown scale: expected 1e+03 (tolerance factor 1.5: 667..1.5e+03), "
            "measured 79.4 (non-finite gradient)") in out
    assert "  - nca_logspace x float32: max bits of error of the loss: expected <= 0.01, measured" in out


def test_shipped_contract_holds(capsys):
    code = cli.main(["check", "--contract", str(check.SHIPPED_CONTRACT)])
    out = capsys.readouterr().out
    assert code == 0, out
    assert out.rstrip().endswith(f"contract {check.SHIPPED_CONTRACT}: OK")
