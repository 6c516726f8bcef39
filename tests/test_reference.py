"""The references (mpmath and float64), the oracle itself, rounding and bits of error."""

import math

import mpmath
import numpy as np
import pytest
import torch
from mpmath import mp

from stablenca import floats, losses
from stablenca import reference as ref
from stablenca.check import random_batch
from stablenca.errors import ConfigError

NAMES = list(losses.REGISTRY)


def batch_at(scale, population="paired", seed=0):
    return random_batch(np.random.default_rng([seed, 7]), scale, population, rows=(5, 7))


def args(batch):
    return batch.distances, batch.labels, batch.labels, batch.self_mask


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
        assert mp_rel(at50.loss, at80.loss) < mp.mpf("1e-45")
        for row50, row80 in zip(at50.grad, at80.grad):
            for g50, g80 in zip(row50, row80):
                assert mp_rel(g50, g80) < mp.mpf("1e-45")


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
    assert float(result.loss) == pytest.approx(loss64, rel=1e-12, abs=1e-14)
    analytic = np.array([[float(g) for g in row] for row in result.grad])
    np.testing.assert_allclose(analytic, grad64, rtol=1e-10, atol=1e-14)


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("scale", [0.5, 150.0])
def test_analytic_gradient_matches_mpmath_finite_differences(name, scale):
    batch = random_batch(np.random.default_rng(11), scale, "paired", rows=(4, 4))
    d, y, _, mask = ref.to_mp_inputs(*args(batch))
    step = mp.mpf("1e-20")
    with mp.workdps(60):
        analytic = ref.get_reference(name).mp(d, y, y, mask).grad
        for i in range(len(d)):
            for j in range(len(d)):
                if i == j:
                    continue
                up = [row[:] for row in d]
                down = [row[:] for row in d]
                up[i][j] += step
                down[i][j] -= step
                numeric = (ref.get_reference(name).mp(up, y, y, mask).loss
                           - ref.get_reference(name).mp(down, y, y, mask).loss) / (2 * step)
                assert abs(numeric - analytic[i][j]) <= mp.mpf("1e-25") * (abs(analytic[i][j]) + mp.mpf("1e-200")) \
                    or abs(numeric - analytic[i][j]) < mp.mpf("1e-30"), (name, i, j, numeric, analytic[i][j])


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
    assert float(result.loss) == pytest.approx(float(ref.mp_loss("nca_logspace", *args(batch)).loss), rel=1e-12)


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
    assert ref.bits_of_error(torch.tensor(-1e-45), 1e-45, torch.float32) == pytest.approx(math.log2(3))
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
    assert ref.bits_of_error(torch.tensor(-1.7e308, dtype=torch.float64), 1.7e308, torch.float64) == \
        pytest.approx(64, abs=0.01)


def test_bits_of_error_of_arrays_and_floors():
    computed = torch.tensor([1.0, 2.0, math.nan])
    bits = ref.bits_of_error(computed, [mp.mpf(1), mp.mpf(2) + mp.ldexp(1, -22), mp.mpf(3)], torch.float32)
    assert bits.tolist() == [0.0, 1.0, 32.0]
    assert ref.bits_of_error(torch.tensor(0.0), 1e-6, torch.float32) > 20
    assert ref.bits_of_error(torch.tensor(0.0), 1e-6, torch.float32, floor=100.0) < 4


def test_gradient_bits_are_normwise():
    reference = np.array([[0.0, 0.5], [-0.25, 1e-60]])
    assert ref.gradient_bits_of_error(reference.copy(), reference, torch.float32) == 0.0
    assert ref.gradient_bits_of_error(np.array([[0.0, 0.5], [-0.25, 0.0]]), reference, torch.float32) == 0.0
    assert ref.gradient_bits_of_error(np.zeros((2, 2)), reference, torch.float32) > 20  # vanished
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
        np.testing.assert_allclose(result.grad, exact.grad, rtol=1e-10, atol=1e-15)
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
