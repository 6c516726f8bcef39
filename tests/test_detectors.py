"""The tracer's parts on their own: detectors give a verdict for a handcrafted op call (no Tracer
runs), the op registry answers per overload packet, module names come from ModuleTracker."""

from __future__ import annotations

import math

import pytest
import torch

from stablenca.trace import find_nonfinite
from stablenca.trace import zeros
from stablenca.trace.detectors import OpCall, cancellation, carried, underflow, underflow_any_op
from stablenca.trace.ops import op_info
from stablenca.trace.patterns import analyse
from stablenca.trace.provenance import _SMALL, _SMALL_HOPS, _ZERO, _Event
from stablenca.trace.registry import aten, facts_for, register

OPS = torch.ops.aten


def _call(func, args, out=None, kwargs=None, tainted=()):
    kwargs = kwargs or {}
    if out is None:
        out = func(*args, **kwargs)
    return OpCall(op_info(func), func, tuple(args), kwargs, out, (out,), tuple(tainted))


def _nan_verdict(func, *args):
    call = _call(func, args)
    return analyse(call, torch.isnan(call.out), torch.isinf(call.out))


# -- finite outputs ---------------------------------------------------------------------------


def test_exp_underflow_verdict_counts_the_zeros_from_finite_inputs():
    x = torch.tensor([-200.0, -110.0, 0.0, -math.inf])  # the -inf is a mask: its zero is explained
    v = underflow(_call(OPS.exp.default, (x,)), lo=0.0)
    assert (v.kind, v.precursor) == ("underflow", 2)
    assert v.taint & _ZERO and v.taint & _SMALL


def test_a_product_of_two_tiny_numbers_is_an_underflow():
    a = torch.tensor([1e-30, 2.0])
    v = underflow(_call(OPS.mul.Tensor, (a, a)), lo=0.0)  # 1e-60 is below float32's subnormals
    assert (v.kind, v.precursor) == ("underflow", 1)
    assert "1e-30 × 1e-30" in v.detail


def test_a_product_with_an_exact_zero_operand_is_no_underflow():
    a = torch.tensor([0.0, 2.0])
    assert underflow(_call(OPS.mul.Tensor, (a, a)), lo=0.0) is None


def test_an_unlisted_op_whose_float64_value_is_not_zero_underflows():
    x = torch.full((4,), 1e-12)  # prod = 1e-48: 0.0 in float32, not in float64
    v = underflow_any_op(_call(OPS.prod.default, (x,)))
    assert (v.kind, v.precursor) == ("underflow", 1)


def test_cancellation_verdict_names_the_bits_lost():
    a = torch.tensor([1.0, 3.0])
    b = torch.tensor([1.0 - 2.0 ** -20, 1.0])  # 1 - (1 - 2^-20) = 2^-20: 20 of 24 bits gone
    v = cancellation(_call(OPS.sub.Tensor, (a, b)), bits=12)
    assert (v.kind, v.precursor) == ("cancellation", 1)
    assert "lost ≥ 12 of 24 significand bits (max 20.0" in v.detail


def test_exact_difference_is_a_mask_not_a_cancellation():
    same = torch.tensor([1.0, 1.0, 0.0])
    v = zeros.exact_difference(_call(OPS.sub.Tensor, (same, torch.tensor([1.0, 0.0, 0.0]))))
    assert v.kind == "mask" and v.precursor is None


def test_std_of_a_constant_column_is_a_zero_spread():
    x = torch.tensor([[1.0, 2.0], [1.0, 5.0]])
    v = zeros.zero_spread(_call(OPS.std.correction, (x, [0])))
    assert v.kind == "zero_reduction"
    assert v.detail == "std is exactly 0 in 1 of 2 outputs (every reduced value is equal)"


def test_sum_over_zero_elements_is_an_empty_set():
    v = zeros.empty_reduction(_call(OPS.sum.dim_IntList, (torch.ones(3, 0), [1])))
    assert (v.kind, v.precursor) == ("empty_set", 3)


def test_a_detector_leaves_the_provenance_it_reads_alone():
    upstream = _Event(1, "aten.exp.default", "forward", None, None, None, "underflow", "", _ZERO | _SMALL, (),
                      None, True)
    upstream.extra = {"small": _SMALL_HOPS}
    x = torch.tensor([0.0, 1.0])
    v = carried(_call(OPS.mul.Tensor, (x, torch.tensor(2.0)), tainted=[(0, upstream)]))
    assert v.taint == _ZERO | _SMALL and v.extra == {"small": _SMALL_HOPS - 1}
    assert v.inputs == ((0, upstream),)
    assert upstream.extra == {"small": _SMALL_HOPS} and upstream.taint == _ZERO | _SMALL


# -- non-finite outputs -----------------------------------------------------------------------


def test_log_of_zero_is_a_division_by_zero_on_its_input():
    v = _nan_verdict(OPS.log.default, torch.tensor([0.0, 2.0]))
    assert (v.pattern, v.kind) == ("log(0)", "division_by_zero")
    assert v.explain[0].positions.tolist() == [True, False]


def test_zero_over_zero_follows_both_operands():
    v = _nan_verdict(OPS.div.Tensor, torch.tensor([0.0, 1.0]), torch.tensor([0.0, 2.0]))
    assert (v.pattern, v.kind) == ("0/0", "division_by_zero")
    assert [lead.arg for lead in v.explain] == [0, 1]


def test_an_unlisted_op_at_its_pole_is_a_pole_not_an_overflow():
    v = _nan_verdict(OPS.lgamma.default, torch.tensor([0.0, 3.0]))
    assert (v.pattern, v.kind, v.precursor.kind) == ("pole", "pole", "pole")


def test_an_unlisted_op_beyond_the_range_is_an_overflow():
    v = _nan_verdict(OPS.cosh.default, torch.tensor([100.0]))  # cosh(100) = 1.3e43: finite in float64
    assert (v.pattern, v.kind) == ("overflow", "overflow")


def test_mean_of_nothing_is_an_empty_set():
    v = _nan_verdict(OPS.mean.default, torch.ones(0))
    assert (v.pattern, v.kind) == ("mean of an empty set", "empty_set")


# -- the registry and module names -------------------------------------------------------------


def test_in_place_variants_share_value_facts_not_checks():
    functional, in_place = facts_for(OPS.exp.default), facts_for(OPS.exp_.default)
    assert functional.elementwise and in_place.elementwise
    assert functional.underflow == "positive" and in_place.underflow is None
    assert facts_for(OPS.log1p.default).pole == -1.0


def test_register_takes_op_packets_only():
    with pytest.raises(TypeError, match="op packets"):
        register("aten.exp", elementwise=True)
    with pytest.raises(TypeError, match="op packets"):
        register(aten.exp.default, elementwise=True)  # an overload, not its packet


def test_module_names_come_from_the_module_tracker_and_restore_the_hooks():
    class Head(torch.nn.Module):
        def forward(self, x):
            return torch.log(x)

    net = torch.nn.Sequential(torch.nn.Identity(), torch.nn.Sequential(torch.nn.ReLU(), Head()))
    hooks = len(torch.nn.modules.module._global_forward_pre_hooks)
    finding = find_nonfinite(lambda x: net(x).sum(), torch.tensor([0.0, 1.0]))
    assert finding.module == "1.1"  # the innermost running module, by its name in the model
    assert len(torch.nn.modules.module._global_forward_pre_hooks) == hooks


def test_the_innermost_module_is_the_one_entered_last():
    # p runs, q runs, then p runs again and calls q inside: the module named is q, the one
    # entered last among those still running
    class Q(torch.nn.Module):
        def forward(self, x):
            return torch.log(x) if self.pole else x

    class P(torch.nn.Module):
        def forward(self, x, q=None):
            return q(x) if q is not None else x

    class Net(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.p, self.q = P(), Q()

        def forward(self, x):
            self.q.pole = False
            x = self.q(self.p(x))
            self.q.pole = True
            return self.p(x, self.q)

    finding = find_nonfinite(lambda x: Net()(x).sum(), torch.tensor([0.0, 1.0]))
    assert finding.module == "q"
