"""The pytest plugin (``stablenca_check`` / ``assert_stable``), run the way a user runs it."""

import subprocess
import sys

import pytest
import torch

from stablenca.testing import strategies
from stablenca.testing.pytest_plugin import assert_stable

from error_budgets import nca_logspace_bits

#: The derived nca_logspace bounds at the generator's largest batch (12 rows): loss 6.11, gradient 6.20 bits.
LOSS_BITS, GRAD_BITS = nca_logspace_bits(12)

pytest_plugins = ["pytester"]

USER_TESTS = f"""
    from stablenca.testing import strategies


    def test_ratio_is_stable(stablenca_check):
        # Far past float32's exp limits (scale >= 1e3 > 103.97) every example breaks the ratio loss, so
        # the failure does not hang on hypothesis happening to draw a large scale from the whole sweep.
        stablenca_check("ratio", dtype="float32", max_examples=60, strategy=strategies.batches(regime="extremal"))


    def test_nca_logspace_is_stable(stablenca_check):
        stablenca_check("nca_logspace", dtype="float32", max_examples=30)


    def test_nca_logspace_float64_over_the_large_regime(stablenca_check):
        summary = stablenca_check("nca_logspace", dtype="float64", max_bits={LOSS_BITS},
                                  max_grad_bits={GRAD_BITS}, strategy=strategies.batches(regime="large"),
                                  max_examples=15)
        assert summary["examples"] == 15 and summary["max_loss_bits"] <= {LOSS_BITS}
"""


def test_plugin_fixture_fails_ratio_with_a_counterexample_and_passes_nca_logspace(pytester):
    pytester.makepyfile(test_user_losses=USER_TESTS)
    result = pytester.runpytest_inprocess("-p", "no:cacheprovider", "-q")
    result.assert_outcomes(passed=2, failed=1)
    result.stdout.fnmatch_lines([
        "*stablenca: ratio is not stable in float32: *",
        "*counterexample: scale=* labels=[[]*[]]*nearest same-class per row*",
        "*loss: computed *, reference * (mpmath (50 digits))*",
        "*FAILED test_user_losses.py::test_ratio_is_stable*",
    ])


def test_assert_stable_accepts_callables_and_reports_what_it_saw():
    def logspace(distances, labels, candidate_labels, self_mask):
        same = (labels[:, None] == candidate_labels[None, :]) & ~self_mask
        logits = -distances.masked_fill(self_mask, float("inf"))
        return torch.logsumexp(logits, 1) - torch.logsumexp(logits.masked_fill(~same, -float("inf")), 1)

    logspace.reference = "nca_logspace"
    seen = assert_stable(logspace, dtype="float32", max_bits=LOSS_BITS, max_grad_bits=GRAD_BITS, max_examples=15,
                         strategy=strategies.batches(regime="extremal"))
    assert seen["examples"] == 15 and seen["max_grad_bits"] <= GRAD_BITS


def test_assert_stable_message_for_a_silently_wrong_loss():
    # ratio_eps is finite; against the true ratio it is far off once P << 1e-10.
    with pytest.raises(AssertionError, match=r"ratio_eps is not stable in float32: the loss has .* bits of error"):
        assert_stable("ratio_eps", dtype="float32", reference="ratio", max_examples=60, check_gradient=False,
                      strategy=strategies.batches(regime="large"))


def test_assert_stable_rejects_bad_arguments():
    with pytest.raises(TypeError, match="loss must be"):
        assert_stable(42)
    with pytest.raises(ValueError, match="loss_floor"):
        assert_stable("nca_logspace", loss_floor="huge", max_examples=1)


def test_importing_the_plugin_does_not_import_hypothesis_or_mpmath():
    code = ("import sys, stablenca.testing.pytest_plugin; "
            "print(sorted(m for m in ('hypothesis', 'mpmath', 'stablenca.check', 'stablenca.reference') "
            "if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
