"""The references (mpmath and float64), the oracle itself, rounding and bits of error."""

import math
import struct

import mpmath
import numpy as np
import pytest
import torch
from mpmath import mp

from stablenca import floats, losses
from stablenca import reference as ref
from stablenca.check import bounds, random_batch
from stablenca.errors import ConfigError

NAMES = list(losses.REGISTRY)


def batch_at(scale, population="paired", seed=0):
    return random_batch(np.random.default_rng([seed, 7]), scale, population, rows=(5, 7))


def args(batch):
    return batch.distances, batch.labels, batch.labels, batch.self_mask


def mp_unit(dps):
    """mpmath's unit roundoff at ``dps`` digits: ``2**-prec`` (round to nearest; prec 169 at 50 digits)."""
    return mp.mpf(2) ** -mpmath.libmp.dps_to_prec(dps)


def _logsumexp(values):
    return float(np.logaddexp.reduce(values)) if len(values) else -math.inf


def mp_loss_error_bound(name, batch, loss, dps):
    """Relative error bound of the ``dps``-digit reference loss of ``name`` on ``batch``.

    mpmath's exp/log are within 1 ulp (2u), every other operation and each ``fsum`` (an exact sum,
    rounded once) within u. Per row: ``P_same``, ``P_diff`` are off by 3u relative, a quotient of them
    by 7u, so ``log(quotient)`` by ``7u + 2u |L_i|`` absolute (ratio, nca_logspace's log1p(P_diff /
    P_same)); ModernNCA's ``q + 1e-7`` adds 2u more (``9u``); ratio_eps's ``log1p((raw_diff - raw_same) /
    P_same)`` cancels in its numerator: ``9u (1 + P_same / P_diff) + 2u |L_i|``. The mean: ``2u |L|``.
    difference is one fsum of signed kernels: ``2u sum exp(-d) + u |L|``. The per-row values come from
    float64 logsumexps (they only scale the bound), ``L`` from the 80-digit reference.
    """
    u = mp_unit(dps)
    d = batch.distances.numpy()
    labels = batch.labels.numpy()
    rows = len(labels)
    if name == "difference":
        off = ~np.eye(rows, dtype=bool)
        return (2 * u * mp.exp(_logsumexp(-d[off])) + u * abs(loss)) / abs(loss)
    eps = {"ratio_eps": 1e-10, "modernnca": 1e-7}.get(name)
    total = mp.zero
    for i in range(rows):
        same = [-d[i, j] for j in range(rows) if j != i and labels[j] == labels[i]]
        other = [-d[i, j] for j in range(rows) if labels[j] != labels[i]]
        log_same, log_other = _logsumexp(same), _logsumexp(other)
        if name == "nca_logspace" and not same:
            continue  # excluded row
        if name == "ratio":
            row, error = log_other - log_same, 7
        elif name == "ratio_eps":
            row = np.logaddexp(log_other, math.log(eps)) - np.logaddexp(log_same, math.log(eps))
            error = 9 * (1 + math.exp(-row))
        elif name == "nca_logspace":
            row, error = np.logaddexp(log_same, log_other) - log_same, 7
        else:
            row, error = -math.log(math.exp(log_same - np.logaddexp(log_same, log_other)) + eps), 9
        total += error * u + 2 * u * abs(row)
    return (total / rows + 2 * u * abs(loss)) / abs(loss)


def mp_rel(a, b):
    if a == b:
        return mp.zero
    return abs(a - b) / max(abs(a), abs(b))


# --------------------------------------------------------------------------- the oracle


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("scale", [1e-3, 1.0, 100.0, 800.0, 1e4])
def test_mpmath_reference_agrees_with_itself_at_80_digits(name, scale):
    batch = batch_at(scale)
    at50 = ref.mp_loss(name, *args(batch), dps=50)
    at80 = ref.mp_loss(name, *args(batch), dps=80)
    assert mpmath.isfinite(at50.loss)
    with mp.workdps(80):
        # The 80-digit values are exact here (their error is 2**-100 times the 50-digit one's).
        assert mp_rel(at50.loss, at80.loss) <= mp_loss_error_bound(name, batch, at80.loss, 50)
        # Every gradient entry is a kernel times a product/quotient of positive sums (no cancellation:
        # the references write 1/P_same - 1/P_all and 1 - q without subtracting): at most 14 roundings
        # of u and one exp of 2u, so 16u relative.
        for row50, row80 in zip(at50.grad, at80.grad):
            for g50, g80 in zip(row50, row80):
                assert mp_rel(g50, g80) <= 16 * mp_unit(50)


def test_mpmath_reference_is_valid_where_floats_underflow():
    batch = batch_at(1e4)  # exp(-d) is 0.0 in every float type
    result = ref.mp_loss("ratio", *args(batch))
    assert mpmath.isfinite(result.loss) and result.loss != 0
    assert all(mpmath.isfinite(g) for row in result.grad for g in row)
    assert any(g != 0 for row in result.grad for g in row)
    float32 = losses.ratio(batch.distances.float(), batch.labels, batch.labels, batch.self_mask).loss
    assert not torch.isfinite(float32)


def test_ratio_reference_of_a_singleton_class_is_infinite():
    batch = batch_at(1.0, "singleton")
    result = ref.mp_loss("ratio", *args(batch))
    assert result.loss == mp.inf
    assert all(mpmath.isnan(g) for row in result.grad for g in row)
    assert mpmath.isfinite(ref.mp_loss("ratio_eps", *args(batch)).loss)  # its own formula, with 1e-10
    assert mpmath.isfinite(ref.mp_loss("nca_logspace", *args(batch)).loss)  # the singleton row is excluded


# ratio with a singleton class has an infinite loss: covered by the test above, not here.
@pytest.mark.parametrize("name,population", [(n, p) for n in NAMES for p in ("paired", "singleton")
                                             if (n, p) != ("ratio", "singleton")])
def test_analytic_gradient_matches_float64_autograd_at_moderate_scale(name, population):
    batch = batch_at(2.0, population, seed=3)
    result = ref.mp_loss(name, *args(batch))
    assert mpmath.isfinite(result.loss)
    loss64, grad64 = ref.float64_loss(ref.get_reference(name).float64, *args(batch))
    # float64 (u = 2**-53) against the exact value: the bound of the mpmath test above, with float64's
    # sequential sums ((n-1) u more per kernel sum, n = rows - 1 candidates, twice per quotient) and the
    # mean's sequential sum over the rows ((rows + 1) u |L| in all).
    rows, u = batch.rows, 2.0 ** -53
    with mp.workdps(50):
        float64_bound = float(mp_loss_error_bound(name, batch, result.loss, 50) / mp_unit(50)) \
            + 2 * (rows - 2) * 2 + rows + 1
    assert abs(loss64 - float(result.loss)) <= float64_bound * u * abs(float(result.loss))
    # A gradient entry is a weight <= 1 (a kernel over its sum, a softmax probability, or exp(-d) for
    # difference) times 1/rows or 1, possibly minus another such term (LogsumexpBackward, SoftmaxBackward):
    # two terms of (n-1) + 10 roundings each (the kernel sum, exp, the quotient, the backward products),
    # all relative to the largest entry or 1/rows.
    analytic = np.array([[float(g) for g in row] for row in result.grad])
    gradient_bound = 2 * ((rows - 2) + 10) * u * max(float(np.abs(analytic).max()), 1.0 / rows)
    assert float(np.abs(analytic - grad64).max()) <= gradient_bound


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("scale", [0.5, 150.0])
def test_analytic_gradient_matches_mpmath_finite_differences(name, scale):
    batch = random_batch(np.random.default_rng(11), scale, "paired", rows=(4, 4))
    d, y, _, mask = ref.to_mp_inputs(*args(batch))
    step = mp.mpf("1e-20")
    # Central differences at 60 digits (u = 2**-203): truncation h**2 |f^(3)| / 6 with |f^(3)| <= 6 (a
    # third derivative of log-sum-exp or -log(q + 1e-7) in one distance: Bernoulli cumulants <= 1, resp.
    # q'/(q + 1e-7) and the like <= 1, in 1 + 3 + 2 terms), plus each loss's rounding 2u |L| over 2h.
    with mp.workdps(60):
        u60 = mp_unit(60)
        analytic = ref.get_reference(name).mp(d, y, y, mask).grad
        for i in range(len(d)):
            for j in range(len(d)):
                if i == j:
                    continue
                up = [row[:] for row in d]
                down = [row[:] for row in d]
                up[i][j] += step
                down[i][j] -= step
                loss_up = ref.get_reference(name).mp(up, y, y, mask).loss
                loss_down = ref.get_reference(name).mp(down, y, y, mask).loss
                numeric = (loss_up - loss_down) / (2 * step)
                bound = step ** 2 + 2 * u60 * (abs(loss_up) + abs(loss_down)) / (2 * step)
                assert abs(numeric - analytic[i][j]) <= bound, (name, i, j, numeric, analytic[i][j])


def test_nca_logspace_reference_keeps_tiny_losses_exact():
    """log(P_all) - log(P_same) would cancel at 50 digits; log1p(P_diff / P_same) does not."""
    d = torch.tensor([[0.0, 1.0, 300.0], [1.0, 0.0, 300.0], [300.0, 300.0, 0.0]], dtype=torch.float64)
    y = torch.tensor([0, 0, 1])
    result = ref.mp_loss("nca_logspace", d, y, y, torch.eye(3, dtype=torch.bool))
    with mp.workdps(60):
        expected = mp.log1p(mp.exp(-299))  # rows 0 and 1; row 2 is a singleton (excluded)
        assert mp_rel(result.loss, expected) < mp.mpf("1e-45")


# --------------------------------------------------------------------------- the registry


def test_registry_holds_the_five_formulations_and_accepts_cases():
    assert set(NAMES) <= set(ref.REFERENCES)
    case = ref.register_reference("test_case_expm1", lambda x: 1 / (1 - mp.exp(-x)) - 1 / x, kind="function")
    try:
        assert ref.get_reference("test_case_expm1") is case
        value = ref.evaluate_reference("test_case_expm1", mp.mpf("1e-10"))  # 50 digits: 40 survive
        assert abs(value - mp.mpf("0.5") - mp.mpf("1e-10") / 12) < mp.mpf("1e-25")
        with pytest.raises(ConfigError, match="already registered"):
            ref.register_reference("test_case_expm1", lambda x: x, kind="function")
    finally:
        ref.unregister_reference("test_case_expm1")
    with pytest.raises(ConfigError, match="no reference named"):
        ref.get_reference("test_case_expm1")


def test_user_loss_reference_is_float64_self_or_its_attribute():
    def user(distances, labels, candidate_labels, self_mask):
        return losses.nca_logspace(distances, labels, candidate_labels, self_mask).per_sample

    plain = losses.Formulation("mine", user, ("multiclass",), False, "")
    assert ref.reference_for(plain).describe() == "float64 (self)"

    def with_reference(distances, labels, candidate_labels, self_mask):
        return user(distances, labels, candidate_labels, self_mask)

    with_reference.reference = "nca_logspace"
    attached = losses.Formulation("mine2", with_reference, ("multiclass",), False, "")
    assert ref.reference_for(attached).describe() == "mpmath (50 digits)"
    with_reference.reference = user
    assert ref.reference_for(attached).describe() == "float64 (user reference)"

    batch = batch_at(3.0)
    result = ref.compute_reference(ref.reference_for(plain), *args(batch))
    assert result.label == "float64 (self)"
    # The float64 evaluation against the exact value: the analysis of stablenca/check/bounds.py.
    exact = float(ref.mp_loss("nca_logspace", *args(batch)).loss)
    assert abs(float(result.loss) - exact) <= bounds.nca_logspace_error(batch, "float64")[0]


# --------------------------------------------------------------------------- rounding


@pytest.mark.parametrize("dtype", [torch.float16, torch.float32, torch.float64])
def test_round_to_dtype_matches_a_single_hardware_rounding(dtype):
    rng = np.random.default_rng(0)
    exponents = rng.uniform(-160 if dtype != torch.float16 else -27, 18, size=400)
    values = np.sign(rng.normal(size=400)) * 2.0 ** exponents * rng.uniform(1, 2, size=400)
    for x in values.tolist():
        expected = torch.tensor(x, dtype=torch.float64).to(dtype).item()
        assert ref.round_to_dtype(x, dtype) == expected, x


def test_round_to_dtype_below_float64_range_and_ties():
    assert ref.round_to_dtype(mp.mpf("1e-400"), torch.float64) == 0.0
    tiny = mp.ldexp(1, -1074)
    assert ref.round_to_dtype(tiny * mp.mpf("0.5"), torch.float64) == 0.0  # tie → even (0)
    assert ref.round_to_dtype(tiny * mp.mpf("0.75"), torch.float64) == 5e-324
    assert ref.round_to_dtype(tiny * mp.mpf("1.5"), torch.float64) == 1e-323  # tie → even (2 ulps)
    assert ref.round_to_dtype(mp.mpf(1) + mp.ldexp(1, -24), torch.float32) == 1.0  # tie → even
    assert ref.round_to_dtype(mp.mpf(1) + mp.ldexp(3, -25), torch.float32) == 1.0 + 2 ** -23
    assert ref.round_to_dtype(mp.mpf(65504), torch.float16) == 65504.0
    assert ref.round_to_dtype(mp.mpf(65520), torch.float16) == math.inf
    assert ref.round_to_dtype(mp.mpf(-1e39), torch.float32) == -math.inf
    assert ref.round_to_dtype(mp.mpf(1) + mp.ldexp(1, -9), torch.bfloat16) == 1.0  # 8 bits: tie → even
    assert ref.round_to_dtype(mp.exp(-100), torch.bfloat16) == torch.tensor(math.exp(-100)).to(torch.bfloat16).item()


# --------------------------------------------------------------------------- bits of error


def test_bits_of_error_counts_ulps_in_the_evaluated_dtype():
    one_ulp = 2.0 ** -23
    assert ref.bits_of_error(torch.tensor(1.0), mp.mpf(1), torch.float32) == 0.0
    assert ref.bits_of_error(torch.tensor(1.0 + one_ulp), 1.0, torch.float32) == 1.0
    assert ref.bits_of_error(torch.tensor(1.0 + 3 * one_ulp), 1.0, torch.float32) == 2.0
    # the reference is rounded first: 1 + 2**-30 is 1.0 in float32, so 1.0 is exact
    assert ref.bits_of_error(torch.tensor(1.0), mp.mpf(1) + mp.ldexp(1, -30), torch.float32) == 0.0
    # across zero: -smallest subnormal to +smallest subnormal is 2 ulps
    assert ref.bits_of_error(torch.tensor(-1e-45), 1e-45, torch.float32) == math.log2(3)
    # a reference below the dtype's range rounds to 0: computing 0 is exact
    assert ref.bits_of_error(torch.tensor(0.0), mp.mpf("1e-60"), torch.float32) == 0.0
    assert ref.bits_of_error(torch.tensor(0.0, dtype=torch.float64), mp.mpf("1e-400"), torch.float64) == 0.0
    assert ref.bits_of_error(torch.tensor(0.0, dtype=torch.float64), mp.mpf("1e-300"), torch.float64) > 50
    # one ulp in bfloat16 / float16
    assert ref.bits_of_error(torch.tensor(1.0 + 2 ** -7, dtype=torch.bfloat16), 1.0, torch.bfloat16) == 1.0
    assert ref.bits_of_error(torch.tensor(1.0 + 2 ** -10, dtype=torch.float16), 1.0, torch.float16) == 1.0


def test_bits_of_error_of_non_finite_results():
    assert ref.bits_of_error(torch.tensor(math.nan), 1.0, torch.float32) == 32.0
    assert ref.bits_of_error(torch.tensor(math.inf), 1.0, torch.float32) == 32.0
    assert ref.bits_of_error(torch.tensor(math.inf, dtype=torch.float16), 1.0, torch.float16) == 16.0
    assert ref.bits_of_error(torch.tensor(math.inf, dtype=torch.float64), mp.inf, torch.float64) == 0.0
    assert ref.bits_of_error(torch.tensor(math.nan, dtype=torch.float64), mp.nan, torch.float64) == 0.0
    assert ref.bits_of_error(torch.tensor(1.0), mp.inf, torch.float32) == 32.0
    # the widest gap in float64 (from -max to +max) does not overflow
    # 2 x the ordered integer of 1.7e308 numbers apart, i.e. log2(1 + 2 * 0x7FEE42D130773B76) = 63.997
    assert ref.bits_of_error(torch.tensor(-1.7e308, dtype=torch.float64), 1.7e308, torch.float64) == \
        math.log2(1 + 2 * struct.unpack("<q", struct.pack("<d", 1.7e308))[0])


def test_bits_of_error_of_arrays_and_floors():
    computed = torch.tensor([1.0, 2.0, math.nan])
    bits = ref.bits_of_error(computed, [mp.mpf(1), mp.mpf(2) + mp.ldexp(1, -22), mp.mpf(3)], torch.float32)
    assert bits.tolist() == [0.0, 1.0, 32.0]
    # 0 against 1e-6: relative, every float32 between them counts (the ordered integer of float32(1e-6));
    # with floor 100 it is 1e-6 over spacing(100) = 2**-17, a fraction of an ulp.
    assert ref.bits_of_error(torch.tensor(0.0), 1e-6, torch.float32) == \
        math.log2(1 + struct.unpack("<i", struct.pack("<f", 1e-6))[0])
    assert ref.bits_of_error(torch.tensor(0.0), 1e-6, torch.float32, floor=100.0) == \
        math.log2(1 + float(np.float32(1e-6)) / 2.0 ** -17)


def test_gradient_bits_are_normwise():
    reference = np.array([[0.0, 0.5], [-0.25, 1e-60]])
    assert ref.gradient_bits_of_error(reference.copy(), reference, torch.float32) == 0.0
    assert ref.gradient_bits_of_error(np.array([[0.0, 0.5], [-0.25, 0.0]]), reference, torch.float32) == 0.0
    # vanished: an error of 0.5 in ulps of 0.5 (2**-24): 2**23 ulps
    assert ref.gradient_bits_of_error(np.zeros((2, 2)), reference, torch.float32) == math.log2(1 + 2 ** 23)
    assert ref.gradient_bits_of_error(np.array([[math.nan, 0.5], [0, 0]]), reference, torch.float32) == 32.0
    assert ref.gradient_bits_of_error(np.zeros(2), np.zeros(2), torch.float64) == 0.0


def test_relative_error():
    assert ref.relative_error(1.5, 1.0) == 0.5
    assert ref.relative_error(0.0, 0.0) == 0.0
    assert ref.relative_error(1.0, 0.0) == math.inf
    assert ref.relative_error(math.inf, mp.mpf(2)) == math.inf
    assert ref.relative_error(torch.tensor([1.0, 3.0]), [mp.mpf(1), mp.mpf(2)]).tolist() == [0.0, 0.5]


def test_dtype_helpers():
    assert floats.as_dtype("bfloat16") is torch.bfloat16
    assert [floats.significand_bits(d) for d in ("float16", "bfloat16", "float32", "float64")] == [11, 8, 24, 53]
    with pytest.raises(ConfigError, match="unknown dtype"):
        floats.as_dtype("float8")


def test_mpmath_loss_only_reference_takes_its_gradient_from_float64_autograd():
    def user(distances, labels, candidate_labels, self_mask):
        return losses.nca_logspace(distances, labels, candidate_labels, self_mask)

    user.reference = ref.register_reference(
        "test_user_loss_only", lambda d, y, yc, m: losses.mp.mp_nca_logspace(d, y, yc, m).loss)
    try:
        formulation = losses.Formulation("test_user_loss_only_fn", user, ("multiclass",), False, "")
        reference = ref.reference_for(formulation)
        batch = batch_at(4.0)
        result = ref.compute_reference(reference, *args(batch))
        exact = ref.compute_reference(ref.get_reference("nca_logspace"), *args(batch))
        assert result.label == "mpmath (50 digits)" and result.loss == exact.loss
        # float64 autograd against the exact gradient: the absolute bound of stablenca/check/bounds.py.
        assert np.abs(result.grad - exact.grad).max() <= bounds.nca_logspace_error(batch, "float64")[1]
    finally:
        ref.unregister_reference("test_user_loss_only")


def test_shared_mp_inputs_give_the_same_references():
    batch = batch_at(30.0, "singleton", seed=5)
    shared = ref.to_mp_inputs(*args(batch))
    for name in NAMES:
        alone = ref.compute_reference(ref.get_reference(name), *args(batch))
        together = ref.compute_reference(ref.get_reference(name), *args(batch), mp_inputs=shared)
        assert alone.loss == together.loss or (mpmath.isnan(alone.loss) and mpmath.isnan(together.loss))
        np.testing.assert_array_equal(alone.grad, together.grad)
