"""The case library: naive forms caught with the right root cause, fixed forms within their bits."""

import json
import math

import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from hypothesis import given
from hypothesis import strategies as st
from mpmath import mp

from stablenca import floats
from stablenca import reference as ref
from stablenca.cases import (
    CASES,
    check_loss_inputs,
    detect_probability_inputs,
    detect_saturated_probabilities,
    get_case,
    reference_name,
    run_case,
)
from stablenca.cases import bce_sigmoid, ce_on_probabilities, log_softmax, one_minus_exp
from stablenca.cases._base import bits_for_ulps
from stablenca.check.bounds import lse_error_ulps
from stablenca.cases.check import check_case, format_case_table
from stablenca.commands.check import run_cases
from stablenca.cases.plots import plot_one_minus_exp
from stablenca.errors import ConfigError
from stablenca.trace import Tracer, find_nonfinite, trace_call

DTYPES = (torch.float32, torch.float64)


def _within_budget(run) -> bool:
    """The fixed form's value and gradient bits over the sweep are within the case's derived budget."""
    budget = run.case.budgets[run.dtype]
    fixed = run.forms["fixed"]
    return fixed.value_bits.max() <= budget.value_bits and fixed.grad_bits.max() <= budget.grad_bits


# --------------------------------------------------------------------------- the registry


def test_registry_has_every_case_with_its_parts():
    assert list(CASES) == ["one_minus_exp", "log_softmax", "bce_sigmoid", "ce_on_probabilities"]
    for case in CASES.values():
        assert callable(case.naive) and callable(case.fixed) and case.description and case.title
        assert callable(case.reference_mp) and callable(case.gradient_mp) and callable(case.reference_f64)
        assert len(case.domain.points()) > 50
        assert case.expected_root_cause in (None, "cancellation", "underflow")
        assert case.expected_root_cause is not None or case.expected_warning is not None
        assert {"float32", "float64"} <= set(case.budgets)
    assert CASES["one_minus_exp"].patched is one_minus_exp.patched
    assert list(CASES["one_minus_exp"].forms) == ["naive", "patched", "expm1", "fixed"]
    with pytest.raises(ConfigError, match="unknown case"):
        get_case("no_such_case")


def test_domain_points_are_exact_in_float32():
    points = CASES["one_minus_exp"].domain.points()
    assert np.array_equal(points, points.astype(np.float32).astype(np.float64))
    assert points.min() == -100.0 and points.max() == 100.0 and (points != 0).all()
    # 1e-12 (float64 pow, correctly rounded) rounded once more to float32: within u = 2**-24.
    assert np.abs(points).min() == pytest.approx(1e-12, rel=2.0 ** -24 + 2.0 ** -52)


def test_references_are_registered_in_the_reference_module():
    value = ref.evaluate_reference(reference_name("one_minus_exp"), mp.mpf(1e-8))  # at 50 digits
    with mp.workdps(50):
        x = mp.mpf(1e-8)
        assert abs(value - (mp.mpf(1) / 2 + x / 12 - x ** 3 / 720)) < mp.mpf(10) ** -40
    grad = ref.evaluate_reference(reference_name("log_softmax", gradient=True), mp.mpf(0))
    assert grad == mp.mpf(-1) / 2


# --------------------------------------------------------------------------- mpmath references (>= 50 digits)

_POINTS = [-1000.0, -100.0, -30.0, -2.0, -0.5, -1e-6, -1e-12, 1e-12, 1e-6, 0.5, 2.0, 30.0, 100.0, 1000.0]


@pytest.mark.parametrize("name", list(CASES))
def test_mp_references_are_good_to_50_digits(name):
    case = CASES[name]
    for x in _POINTS:
        if not case.domain.lo <= abs(x) <= case.domain.hi:
            continue
        for fn in (case.reference_mp, case.gradient_mp):
            with mp.workdps(50):
                at50 = fn(mp.mpf(x))
            with mp.workdps(90):
                at90 = fn(mp.mpf(x))
            assert abs(at50 - at90) <= mp.mpf(10) ** -49 * abs(at90), (name, fn.__name__, x)


@pytest.mark.parametrize("name", list(CASES))
def test_mp_gradient_is_the_derivative_of_the_mp_value(name):
    case = CASES[name]
    with mp.workdps(50):
        for x in (-30.0, -2.0, -0.5, 1e-3, 0.5, 2.0, 7.0):
            numeric = mp.diff(case.reference_mp, mp.mpf(x))
            exact = case.gradient_mp(mp.mpf(x))
            assert abs(numeric - exact) <= mp.mpf(10) ** -30 * max(abs(exact), mp.mpf(10) ** -20), (name, x)


def test_one_minus_exp_references_at_zero_and_symmetry():
    with mp.workdps(50):
        assert one_minus_exp.reference_mp(mp.mpf(0)) == mp.mpf(1) / 2
        assert one_minus_exp.gradient_mp(mp.mpf(0)) == mp.mpf(1) / 12
        for x in (1e-12, 1e-3, 3.0, 80.0):
            total = one_minus_exp.reference_mp(mp.mpf(x)) + one_minus_exp.reference_mp(mp.mpf(-x))
            assert abs(total - 1) < mp.mpf(10) ** -49


# --------------------------------------------------------------------------- case 1: 1/(1-exp(-x)) - 1/x


def _x(value, dtype=torch.float32):
    return torch.tensor([value], dtype=dtype, requires_grad=True)


@pytest.mark.parametrize("dtype, x", [(torch.float32, 1e-8), (torch.float32, 0.0), (torch.float64, 1e-17)])
def test_naive_one_minus_exp_root_cause_is_cancellation(dtype, x):
    finding = find_nonfinite(one_minus_exp.naive, _x(x, dtype))
    assert finding.phase == "forward"
    assert finding.op == "aten.reciprocal.default" and finding.pattern.startswith("1/0")
    # Not "division by zero": the zero is 1 - exp(-x) cancelled to exactly 0.0.
    assert finding.root_cause["kind"] == "cancellation"
    assert finding.root_cause["op"] == "aten.rsub.Scalar"
    assert "cancelled to exactly 0.0" in finding.root_cause["detail"]
    assert "rsub cancellation" in finding.chain_text()


@pytest.mark.parametrize("dtype, x", [(torch.float32, 1e-3), (torch.float64, 1e-7)])
def test_naive_one_minus_exp_precursors_name_both_cancellations(dtype, x):
    # Finite but wrong: 1 - exp(-x) cancels, and then the two large terms 1/(1-e^-x) and 1/x cancel.
    result = trace_call(one_minus_exp.naive, _x(x, dtype), cancellation_bits=8)
    assert result.finding is None
    ops = {p.op for p in result.precursors if p.kind == "cancellation"}
    assert ops == {"aten.rsub.Scalar", "aten.sub.Tensor"}
    (outer,) = [p for p in result.precursors if p.op == "aten.sub.Tensor"]
    assert "−" in outer.detail and float(outer.detail.split("max ")[1].split(",")[0]) > 10


@pytest.mark.parametrize("dtype, x", [(torch.float32, 1e-8), (torch.float32, 0.0), (torch.float64, 0.0)])
def test_where_patch_value_is_finite_but_its_gradient_is_nan(dtype, x):
    t = _x(x, dtype)
    y = one_minus_exp.patched(t)
    assert y.item() == 0.5  # exact: 0.5 + x/12 with |x/12| below half an ulp of 0.5 rounds to 0.5
    (grad,) = torch.autograd.grad(y.sum(), t)
    assert torch.isnan(grad).all()  # where backpropagates through the unselected branch: 0 * inf
    # The forward result is finite; the tracer follows the gradient NaN back to the naive branch.
    result = trace_call(one_minus_exp.patched, _x(x, dtype))
    assert torch.isfinite(result.value).all()
    assert result.finding.root_cause["kind"] == "cancellation"
    assert "one_minus_exp.py" in result.finding.source


def test_case_runner_reports_the_where_patch_nan_in_backward():
    run = run_case("one_minus_exp", "float32")
    patched = run.traces["patched"]
    assert patched["value_finite"] and math.isnan(patched["grad"])
    assert patched["nan_surfaces_in"] == "backward" and patched["root_cause"] == "cancellation"
    assert run.traces["naive"]["nan_surfaces_in"] == "forward"
    assert run.traces["fixed"]["finding"] is None


def test_expm1_rearrangement_is_silently_wrong_near_zero():
    t = _x(1e-8)
    y = one_minus_exp.expm1_form(t)
    assert y.item() == 0.0  # exact: 0.5; no NaN, no finding: the outer subtraction cancelled completely
    assert find_nonfinite(one_minus_exp.expm1_form, _x(1e-8)) is None


def test_naive_one_minus_exp_gradient_is_nan_where_exp_overflows():
    t = _x(-100.0)
    y = one_minus_exp.naive(t)
    assert y.item() == float(np.float32(0.01))  # 1/(1 - inf) = -0, then -(1/-100): one rounding of 0.01
    (grad,) = torch.autograd.grad(y.sum(), t)
    assert torch.isnan(grad).all()  # exp's backward: 0 * inf
    assert torch.isfinite(torch.autograd.grad(one_minus_exp.fixed(t).sum(), t)[0]).all()


def test_one_minus_exp_measured_sweep():
    run = run_case("one_minus_exp", "float32")
    assert run.ok and run.root_cause == "cancellation"
    naive, fixed = run.forms["naive"], run.forms["fixed"]
    assert naive.value_bits.max() == 32 and not np.isfinite(naive.values).all()
    assert _within_budget(run) and fixed.finite.all()  # on the sweep
    float64 = run_case("one_minus_exp", "float64")
    assert float64.ok and float64.forms["naive"].value_bits.max() > 60
    assert _within_budget(float64)


@pytest.mark.parametrize("dtype", DTYPES)
def test_one_minus_exp_fixed_across_the_series_boundary(dtype):
    # Dense scan where the fixed form switches from the series to the closed form (|x| = 2).
    case = CASES["one_minus_exp"]
    xs = np.unique(np.float32(np.concatenate([np.linspace(1.8, 2.6, 300), -np.linspace(1.8, 2.6, 300)])))
    xs = xs.astype(np.float64)
    values, grads = case.evaluate("fixed", xs, dtype)
    budget = case.budgets[floats.dtype_name(dtype)]
    assert ref.bits_of_error(values, case.reference_values(xs), dtype).max() <= budget.value_bits
    assert ref.bits_of_error(grads, case.reference_gradients(xs), dtype).max() <= budget.grad_bits


# --------------------------------------------------------------------------- case 2: log(softmax)


def test_naive_log_softmax_root_cause_is_softmax_underflow():
    finding = find_nonfinite(log_softmax.naive, _x(200.0))
    assert finding.op == "aten.log.default" and finding.pattern.startswith("log(0)")
    assert finding.root_cause["kind"] == "underflow" and finding.root_cause["op"] == "aten._softmax.default"
    assert find_nonfinite(log_softmax.fixed, _x(200.0)) is None


def test_naive_log_softmax_gradient_is_nan_even_for_the_top_class():
    # log's backward divides by every entry, also the underflowed one that was not selected: 0/0.
    t = _x(-200.0)
    y = log_softmax.naive(t)
    assert y.item() == 0.0
    assert torch.isnan(torch.autograd.grad(y.sum(), t)[0]).all()


def test_log_softmax_measured_sweep():
    run = run_case("log_softmax", "float32")
    assert run.ok
    nonfinite = run.to_dict()["forms"]["naive"]["nonfinite_value"]
    assert nonfinite and 103.97 < nonfinite[0][0] <= 134  # first swept gap past float32's exp limit
    assert _within_budget(run)
    float64 = run_case("log_softmax", "float64")
    assert not np.isfinite(float64.forms["naive"].values).all()
    assert float64.forms["fixed"].finite.all() and _within_budget(float64)


# --------------------------------------------------------------------------- case 3: BCELoss(sigmoid)


@pytest.mark.parametrize("dtype, x", [(torch.float32, 20.0), (torch.float32, 1000.0), (torch.float64, 50.0)])
def test_naive_bce_is_silently_clamped(dtype, x):
    t = _x(x, dtype)
    loss = bce_sigmoid.naive(t)
    assert loss.item() == 100.0  # exact: x
    assert torch.autograd.grad(loss.sum(), t)[0].item() == 0.0  # exact: 1
    assert find_nonfinite(bce_sigmoid.naive, _x(x, dtype)) is None  # nothing non-finite to trace
    with check_loss_inputs() as warnings:
        bce_sigmoid.naive(_x(x, dtype))
    assert [w.kind for w in warnings] == ["saturated_probabilities"]
    fixed = _x(x, dtype)
    value = bce_sigmoid.fixed(fixed)
    # Exact: the loss is x + log1p(exp(-x)) and exp(-x) is below half an ulp of x (e**-20 < 2**-21).
    assert value.item() == x and torch.autograd.grad(value.sum(), fixed)[0].item() == 1.0


def test_sigmoid_saturation_thresholds():
    for dtype, limit in ((torch.float32, 16.6356), (torch.float64, 36.7368)):
        below = torch.tensor(limit - 0.01, dtype=dtype)
        above = torch.tensor(limit + 0.01, dtype=dtype)
        assert torch.sigmoid(below).item() < 1.0 and torch.sigmoid(above).item() == 1.0


def test_bce_measured_sweep():
    run = run_case("bce_sigmoid", "float32")
    assert run.ok and run.root_cause is None
    summary = run.to_dict()["forms"]["naive"]
    assert summary["finite_fraction"] == 1.0 and summary["vanished_fraction"] > 0.1
    # The gradient vanishes once sigmoid(x) rounds to 1: 1 + exp(-x) rounds to 1 for exp(-x) < 2**-24,
    # x > 24 ln 2 = 16.6 (up to 25 ln 2 = 17.3 for other evaluation orders); no sweep point lies in
    # [16.6, 17.3], so the first vanished point is the first one above, on every CPU path.
    points = CASES["bce_sigmoid"].domain.points()
    assert not ((points > 24 * math.log(2)) & (points < 25 * math.log(2))).any()
    assert summary["vanished_grad"][0][0] == points[points > 24 * math.log(2)].min()
    assert _within_budget(run)


# --------------------------------------------------------------------------- case 4: CE on probabilities


def test_ce_on_probabilities_is_bounded_below():
    loss = ce_on_probabilities.naive(torch.tensor([50.0, 1000.0]))
    # float32 softmax of (x, 0, ..., 0) for x >= 50 is exactly (1, 0, ..., 0); CrossEntropyLoss then
    # takes a logsumexp of K = 10 terms (lse_error_ulps(K) u plus u |lse|, |lse| = log(e + 9) < 2.5)
    # and subtracts 1 (u |L|, L < 1.5).
    bound = (lse_error_ulps(10) + 2.5 + 1.5) * 2.0 ** -24
    assert loss.tolist() == pytest.approx([ce_on_probabilities.minimum_naive_loss()] * 2, abs=bound)
    # The literals are rounded to 4 decimals: half a unit.
    assert ce_on_probabilities.minimum_naive_loss(10) == pytest.approx(1.4612, abs=5e-5)
    assert ce_on_probabilities.minimum_naive_loss(2) == pytest.approx(0.3133, abs=5e-5)
    sweep = ce_on_probabilities.naive(torch.as_tensor(CASES["ce_on_probabilities"].domain.points()))
    assert sweep.min().item() >= ce_on_probabilities.minimum_naive_loss() - bound  # float32 rounding, as above


def test_ce_on_probabilities_gradient_shrinks():
    x = torch.tensor([0.0, 2.0, 5.0], dtype=torch.float64, requires_grad=True)
    (naive,) = torch.autograd.grad(ce_on_probabilities.naive(x).sum(), x)
    (fixed,) = torch.autograd.grad(ce_on_probabilities.fixed(x).sum(), x)
    assert (naive.abs() < fixed.abs()).all()


def test_detect_probability_inputs():
    torch.manual_seed(0)
    logits = torch.randn(16, 5) * 3
    assert detect_probability_inputs(logits) is None
    warning = detect_probability_inputs(torch.softmax(logits, 1))
    assert warning.kind == "probability_inputs" and warning.count == 16
    assert "pass raw logits to CrossEntropyLoss" in warning.fix and "NLLLoss" in warning.fix
    assert detect_probability_inputs(torch.log_softmax(logits, 1), loss="nll_loss") is None
    assert detect_probability_inputs(torch.sigmoid(logits)) is None  # in [0, 1] but rows do not sum to 1
    assert detect_probability_inputs(torch.tensor([0.2, 0.8])) is not None  # a single row, 1-d
    assert detect_probability_inputs(torch.softmax(logits, 1).T, dim=0) is not None


def test_loss_input_check_sees_modules_and_functions():
    torch.manual_seed(0)
    logits = torch.randn(8, 4, requires_grad=True)
    target = torch.randint(0, 4, (8,))
    with check_loss_inputs() as warnings:
        nn.CrossEntropyLoss()(logits, target)
        nn.NLLLoss()(torch.log_softmax(logits, 1), target)
        nn.BCEWithLogitsLoss()(logits, torch.zeros(8, 4))
    assert warnings == []
    with check_loss_inputs() as warnings:
        nn.CrossEntropyLoss()(torch.softmax(logits, 1), target).backward()
        nn.NLLLoss()(torch.softmax(logits, 1), target)
        nn.BCELoss()(torch.sigmoid(logits * 100), torch.zeros(8, 4))
    assert [(w.loss, w.kind) for w in warnings] == [("cross_entropy", "probability_inputs"),
                                                    ("nll_loss", "probability_inputs"),
                                                    ("binary_cross_entropy", "saturated_probabilities")]
    assert detect_saturated_probabilities(torch.tensor([1.0, 0.0]), torch.tensor([1.0, 0.0])) is None


def test_ce_case_runner_reports_the_warning():
    run = run_case("ce_on_probabilities", "float32")
    assert run.ok and run.root_cause is None and run.finding is None
    (warning,) = run.naive_warnings
    assert warning.kind == "probability_inputs" and "log(e + K - 1) - 1 = 1.4612" in warning.message
    assert run.forms["fixed"].warnings == []
    assert run.forms["naive"].value_bits.min() > 10  # wrong almost everywhere, never NaN


# --------------------------------------------------------------------------- property tests of the fixed forms


def _magnitudes(case, lo=None, hi=None):
    domain = case.domain
    lo = math.log10(lo or domain.lo)
    hi = math.log10(hi or domain.hi)
    return st.floats(lo, hi).map(lambda e: 10.0 ** e)


def _points(case):
    signed = st.tuples(st.sampled_from(case.domain.signs), _magnitudes(case)).map(lambda p: p[0] * p[1])
    extra = [signed]
    if case.name == "one_minus_exp":  # the series boundary and zero
        extra += [st.floats(-2.1, 2.1), st.just(0.0), st.sampled_from([2.0, -2.0, 1.9999999, -1.9999999])]
    return st.lists(st.one_of(*extra).map(lambda v: float(np.float32(v))), min_size=1, max_size=8)


def _check_fixed(case, xs):
    x64 = torch.tensor(xs, dtype=torch.float64)
    g_ref64 = case.gradient_f64(x64).numpy()
    values_mp = case.reference_values(xs)
    grads_mp = case.reference_gradients(xs)
    for dtype in DTYPES:
        budget = case.budgets[floats.dtype_name(dtype)]
        values, grads = case.evaluate("fixed", xs, dtype)
        assert torch.isfinite(values).all() and torch.isfinite(grads).all(), (case.name, dtype, xs)
        value_bits = ref.bits_of_error(values, values_mp, dtype, floor=case.floor)
        grad_bits = ref.bits_of_error(grads, grads_mp, dtype, floor=case.grad_floor)
        assert np.max(value_bits) <= budget.value_bits, (case.name, dtype, xs, value_bits)
        assert np.max(grad_bits) <= budget.grad_bits, (case.name, dtype, xs, grad_bits)
        # The gradient agrees with the float64 reference (autograd of reference_f64). In float32 that
        # reference is exact to far below an ulp; in float64 it has the same bound N ulps as the form,
        # so the two differ by <= 2N ulps: log2(1 + 2N) < log2(1 + N) + 1 bits.
        against64 = ref.bits_of_error(grads, g_ref64, dtype, floor=case.grad_floor)
        assert np.max(against64) <= budget.grad_bits + (1 if dtype == torch.float64 else 0), (case.name, dtype, xs)


@given(_points(CASES["one_minus_exp"]))
def test_property_one_minus_exp_fixed(xs):
    _check_fixed(CASES["one_minus_exp"], xs)


@given(_points(CASES["log_softmax"]))
def test_property_log_softmax_fixed(xs):
    _check_fixed(CASES["log_softmax"], xs)


@given(_points(CASES["bce_sigmoid"]))
def test_property_bce_fixed(xs):
    _check_fixed(CASES["bce_sigmoid"], xs)


@given(_points(CASES["ce_on_probabilities"]))
def test_property_ce_fixed(xs):
    _check_fixed(CASES["ce_on_probabilities"], xs)


@given(st.floats(1e-6, 80.0).map(lambda v: float(np.float32(v))))
def test_property_one_minus_exp_fixed_is_symmetric(x):
    t = torch.tensor([x, -x], dtype=torch.float64)
    y = one_minus_exp.fixed(t)
    assert abs(float(y[0] + y[1]) - 1.0) <= 4 * 2.0 ** -53


_logits = st.lists(st.floats(-1e3, 1e3).map(lambda v: float(np.float32(v))), min_size=2, max_size=6)


def _logit_floor(z):
    # torch's log_softmax (and cross_entropy) compute z_i - (max + log(sum exp(z - max))): the error is an
    # ulp of the largest |logit|, as for any perturbation of the logits themselves (backward stable).
    return max(1.0, max(abs(v) for v in z))


def _log_softmax_vector_bits(classes: int) -> float:
    """The derived bound for log_softmax(z)[i] (and cross_entropy) on ``classes`` logits, floor max(1, max|z|).

    Conventions of stablenca.cases._base.Budget (u the unit roundoff, exp/log within 2u, sums
    sequential). With Z = max|z| and d_k = z_k - max z (rounded: u |d_k|, |d_k| <= 2Z):
    exp(d_k) is off by 2u + u |d_k| relative, and exp(d_k) |d_k| <= 1/e, so with the K-term sum
    (gamma_(K-1)) S = sum exp(d_k) >= 1 is off by (K+1) u + (K-1) u/e relative; log S adds 2u log K;
    d_i adds 2u Z, the last subtraction u |out|. In ulps of M = max(|out|, Z, 1) > all of those
    (spacing(M) > u M): 2 + (K+1) + (K-1)/e + 2 log K + 1, + 1/2 for rounding the reference.
    K = 6: 15.9 ulps, 4.08 bits.
    """
    ulps = 2 + (classes + 1) + (classes - 1) / math.e + 2 * math.log(classes) + 1 + 0.5
    return bits_for_ulps(ulps)


@given(_logits)
def test_property_log_softmax_on_vectors(z):
    exact = log_softmax.mp_log_softmax(z)
    for dtype in DTYPES:
        got = log_softmax.fixed_log_softmax(torch.tensor(z, dtype=dtype))
        assert np.max(ref.bits_of_error(got, exact, dtype, floor=_logit_floor(z))) <= _log_softmax_vector_bits(len(z))
    gap = max(z) - min(z)
    naive = log_softmax.naive_log_softmax(torch.tensor(z))
    if gap > 104:  # float32 exp(-gap) rounds to 0.0: log(0), traced to the softmax underflow
        assert torch.isinf(naive).any()
        finding = find_nonfinite(log_softmax.naive_log_softmax, torch.tensor(z, requires_grad=True))
        assert finding.root_cause["kind"] == "underflow"
    elif gap < 87:
        assert torch.isfinite(naive).all()


@given(_logits, st.data())
def test_property_cross_entropy_on_logits_and_probabilities(z, data):
    target = data.draw(st.integers(0, len(z) - 1))
    exact = -log_softmax.mp_log_softmax(z)[target]
    logits = torch.tensor([z])
    y = torch.tensor([target])
    for dtype in DTYPES:
        got = F.cross_entropy(logits.to(dtype), y)
        assert ref.bits_of_error(got, exact, dtype, floor=_logit_floor(z)) <= _log_softmax_vector_bits(len(z))
    probabilities = torch.softmax(logits, 1)
    assert detect_probability_inputs(probabilities) is not None  # softmax outputs are always caught
    assert detect_probability_inputs(torch.log_softmax(logits, 1), loss="nll_loss") is None
    # The bound holds for exact probabilities; float32 (u = 2**-24) moves it by the logsumexp over K terms
    # of values in [0, 1] (lse_error_ulps(K) + |lse| <= 1 + log K), the subtraction (|L| <= 1 + log K) and the
    # softmax's own error (probabilities off by K u in all, each moving the loss by at most 2 of it).
    k = len(z)
    rounding = (lse_error_ulps(k) + 2 * (1 + math.log(k)) + 2 * k) * 2.0 ** -24
    assert F.cross_entropy(probabilities, y).item() >= ce_on_probabilities.minimum_naive_loss(k) - rounding


#: The derived bound for BCEWithLogits at targets 0, 1/4, 1 (floor 1), in ulps. L = (1-y) x - logsigmoid(x):
#: y = 0 is the bce_sigmoid case (its budget); y = 1: L = -logsigmoid(x), (2.39 + L)/M < 3.39 ulps; y = 1/4:
#: 0.75 x adds 0.75 u |x|, logsigmoid 2.39u + u |logsigmoid| (<= |x| + 0.69), the subtraction u L, and
#: L >= |x|/4 for x < 0 (L >= 0.75 x for x > 0), so in ulps of M = max(L, 1): 3 + 4 + 3.08 + 1 = 11.08,
#: + 1/2 for the reference: 11.58 ulps (3.65 bits). The case's float64 bound (17 ulps) is larger.
BCE_ANY_TARGET_BITS = {torch.float32: max(bits_for_ulps(11.58), CASES["bce_sigmoid"].budgets["float32"].value_bits),
                       torch.float64: max(bits_for_ulps(11.58), CASES["bce_sigmoid"].budgets["float64"].value_bits)}


@given(st.floats(-1e3, 1e3).map(lambda v: float(np.float32(v))), st.sampled_from([0.0, 0.25, 1.0]))
def test_property_bce_with_logits_any_target(x, y):
    exact = bce_sigmoid.mp_bce_with_logits(x, y)
    for dtype in DTYPES:
        got = F.binary_cross_entropy_with_logits(torch.tensor(x, dtype=dtype), torch.tensor(y, dtype=dtype))
        assert ref.bits_of_error(got, exact, dtype, floor=1.0) <= BCE_ANY_TARGET_BITS[dtype]


# --------------------------------------------------------------------------- check --case and the figure


def test_check_case_json_and_table(capsys):
    assert run_cases(["ce_on_probabilities"], ["float32"], as_json=True) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["case"] == "ce_on_probabilities" and data["ok"] is True
    (result,) = data["results"]
    assert result["dtype"] == "float32" and result["reference"] == "mpmath (50 digits)"
    assert result["warnings"][0]["kind"] == "probability_inputs"
    text = format_case_table(check_case("one_minus_exp", ["float32"]))
    assert text.startswith("stablenca check --case one_minus_exp")
    assert "root cause cancellation (expected cancellation: OK)" in text
    assert "patched: value finite (0.5) but gradient NaN" in text
    assert "fixed form, float32: max 1.0 bits (value)" in text and text.rstrip().split("\n")[-1].startswith("OK")


def test_check_case_rejects_an_unknown_case():
    with pytest.raises(ConfigError, match="unknown case 'softmax'"):
        run_cases(["softmax"])


def test_figure_is_written_atomically(tmp_path):
    path = plot_one_minus_exp(tmp_path / "figures" / "one_minus_exp.png", dtypes=("float32",))
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 20_000
    assert sorted(p.name for p in path.parent.iterdir()) == ["one_minus_exp.png"]  # no temporary left
    result = check_case("ce_on_probabilities", ["float32"], figures=tmp_path / "figs")
    assert result["figure"].endswith("case-ce_on_probabilities.png")
    assert (tmp_path / "figs" / "case-ce_on_probabilities.png").read_bytes()[:4] == b"\x89PNG"


def test_tracer_without_backward_sees_nothing_in_the_where_patch_value():
    # Documented behaviour: the where-patch's value is finite, its NaN lives only in the gradient.
    x = _x(0.5)
    with Tracer() as tracer:
        one_minus_exp.patched(x)
    assert tracer.finding is None


def test_check_subcommand_through_the_real_cli(capsys):
    """``stablenca check --case``, parsed by the real CLI parser (no option added by the test)."""
    from stablenca import cli

    assert cli.main(["check", "--case", "ce_on_probabilities", "--dtype", "float32", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["case"] == "ce_on_probabilities" and data["ok"] is True
    assert [r["dtype"] for r in data["results"]] == ["float32"]
    # --case and --loss together: one line naming the problem, exit code 2.
    assert cli.main(["check", "--case", "log_softmax", "--loss", "ratio"]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "cannot be combined" in err
    # The parser itself knows both options (a subcommand that stopped registering them fails here).
    args = cli.build_parser().parse_args(["check", "--case", "one_minus_exp", "log_softmax", "--figures", "figs"])
    assert args.case == ["one_minus_exp", "log_softmax"] and args.figures == "figs"
