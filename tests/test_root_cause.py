"""A root cause you can trust: each test builds one situation on purpose and asserts the verdict.

Exact arithmetic is never blamed, detectors work from properties of the values (not op-name
lists), and the counterfactual replays (stablenca.trace.verify) confirm or overturn a cause.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

import stablenca
from stablenca import losses
from stablenca.trace import find_nonfinite, trace_call
from stablenca.trace.verify import VERDICTS, verify_call
from stablenca.runtime.watcher import watch

REPORT = Path(__file__).resolve().parents[1] / "reports" / "abalone" / "diagnose"


def _kinds(finding):
    return [link.kind for link in finding.chain] + [p.kind for p in finding.precursors]


def _student_ratio(embedded, targets):
    """The homework's loss, as written (seeds/000): the mask is ``same.float() - eye``."""
    b = embedded.size(0)
    distances = torch.cdist(embedded, embedded)
    same = targets.unsqueeze(1) == targets.unsqueeze(0)
    diff_mask = 1 - same.float()
    same_mask = same.float() - torch.eye(b)
    p = torch.exp(-distances)
    return -torch.mean(torch.log(torch.sum(p * same_mask, dim=1) / torch.sum(p * diff_mask, dim=1)))


# -- exactness -----------------------------------------------------------------------------


def test_student_mask_on_a_singleton_class_is_an_empty_set_not_a_cancellation():
    embedded = torch.randn(5, 3, generator=torch.Generator().manual_seed(0)).requires_grad_()
    targets = torch.tensor([0, 0, 1, 1, 2])  # class 2 has one member: its P_same sums nothing
    finding = find_nonfinite(_student_ratio, embedded, targets)
    assert finding.pattern == "log(0)"
    assert finding.root_cause["kind"] == "empty_set"
    assert finding.root_cause["op"].startswith("aten.sum")
    assert "the mask selected nothing" in finding.root_cause["detail"]
    assert "cancellation" not in _kinds(finding)  # 1 - 1 = 0 of exact mask values lost nothing


def test_one_minus_binary_labels_is_exact():
    labels = torch.tensor([0.0, 1.0, 1.0, 0.0])  # float 0/1 labels: inputs, so exact values

    def loss(x, y):
        weights = 1 - y  # exact zeros where y == 1
        return torch.log((x * weights)[1:3].sum()).sum()

    finding = find_nonfinite(loss, torch.rand(4).requires_grad_(), labels)
    assert finding.pattern == "log(0)"
    assert "cancellation" not in _kinds(finding)
    assert finding.root_cause["kind"] != "cancellation"


def test_constant_column_standardised_follows_the_zero_std():
    x = torch.randn(6, 3, generator=torch.Generator().manual_seed(1))
    x[:, 1] = 2.5  # a constant feature

    def loss(w, x):
        z = (x - x.mean(0)) / x.std(0)
        return (z @ w).pow(2).mean()

    finding = find_nonfinite(loss, torch.randn(3, 1).requires_grad_(), x)
    assert finding.pattern == "0/0"
    assert finding.root_cause["op"] == "aten.std.correction"
    assert finding.root_cause["kind"] == "division_by_zero"
    assert "std is exactly 0 in 1 of 3" in finding.root_cause["detail"]


@pytest.mark.parametrize("reduce", [lambda v: v.var(0), lambda v: torch.linalg.vector_norm(v, dim=0)])
def test_var_and_norm_divisors_get_an_event(reduce):
    x = torch.zeros(4, 2)
    x[:, 0] = torch.arange(4.0)  # column 1 is all zero: var 0 and norm 0, and x - mean is 0

    def loss(x):
        return ((x - x.mean(0)) / reduce(x)).sum()

    finding = find_nonfinite(loss, x.requires_grad_())
    assert finding.pattern == "0/0"
    assert finding.root_cause["kind"] == "division_by_zero"
    assert "exactly 0 in 1 of 2" in finding.root_cause["detail"]


def test_real_cancellation_is_still_blamed():
    x = torch.tensor([1e-9, 0.5], requires_grad=True)
    # float32 exp(-1e-9) rounds to 1: 1 - exp(-x) is 0 though its exact value is 1e-9
    finding = find_nonfinite(lambda x: torch.log(1 - torch.exp(-x)).sum(), x)
    assert finding.pattern == "log(0)"
    assert finding.root_cause["kind"] == "cancellation"
    assert finding.root_cause["op"] == "aten.rsub.Scalar"


# -- detectors from properties ----------------------------------------------------------------


def test_underflow_from_an_op_in_no_list():
    # the product of 40 values of 1e-2 is 1e-80: float32 gives 0.0, float64 does not
    finding = find_nonfinite(lambda x: torch.prod(x).log(), torch.full((40,), 1e-2))
    assert finding.pattern == "log(0)"
    assert finding.root_cause["kind"] == "underflow"
    assert finding.root_cause["op"] == "aten.prod.default"
    assert "1e-80" in finding.root_cause["detail"]


def test_underflow_of_a_determinant():
    a = (torch.eye(12) * 1e-4).requires_grad_()  # det = 1e-48: below float32's smallest subnormal
    finding = find_nonfinite(lambda a: torch.log(torch.linalg.det(a)), a)
    assert finding.root_cause["kind"] == "underflow"
    assert "det" in finding.root_cause["op"]


def test_empty_fused_reduction():
    logits = torch.randn(4, 3, requires_grad=True)
    labels = torch.tensor([0, 1, 2, 0])
    keep = torch.zeros(4, dtype=torch.bool)  # the selection is empty
    finding = find_nonfinite(lambda z: F.cross_entropy(z[keep], labels[keep]), logits)
    assert finding.root_cause["kind"] == "empty_set"
    assert "0 elements" in finding.root_cause["detail"]


def test_a_pole_is_not_an_overflow():
    x = torch.tensor([0.0, 1.5, 3.0], requires_grad=True)  # lgamma has a pole at 0; the largest input is 3
    finding = find_nonfinite(lambda x: torch.lgamma(x).sum(), x)
    assert finding.pattern == "pole"
    assert finding.root_cause["kind"] == "pole"
    assert "infinite in exact arithmetic too" in finding.root_cause["detail"]


@pytest.mark.parametrize("result", [
    lambda x: torch.log(x[0]),  # the non-finite forward value is the traced result itself
    lambda x: torch.log(x[0] * 2.0),
])
def test_a_forward_log0_result_is_the_forward_op_not_its_backward(result):
    # log(0) = -inf in the forward; its backward then computes grad / x = 1/0 too. The first
    # non-finite value is the forward one, so the finding names the forward op.
    x = torch.tensor([0.0, 1.0], requires_grad=True)
    finding = find_nonfinite(result, x)
    assert (finding.op, finding.phase, finding.pattern) == ("aten.log.default", "forward", "log(0)")


def test_a_forward_log0_result_is_the_forward_op_when_the_caller_runs_backward():
    x = torch.tensor([0.0, 1.0], requires_grad=True)
    with stablenca.trace.Tracer() as tracer:
        torch.log(x[0]).backward()
    assert (tracer.finding.op, tracer.finding.phase) == ("aten.log.default", "forward")
    assert x.grad[0] == math.inf  # the backward still ran, as the caller asked


def test_exp_beyond_float64_range_is_still_an_overflow():
    # exp(1000) is finite mathematically though float64 cannot hold it either
    finding = find_nonfinite(lambda x: torch.exp(x).sum(), torch.tensor([1000.0, 1.0]))
    assert finding.root_cause["kind"] == "overflow"


def test_an_overflow_beyond_float64_is_decided_by_mpmath_not_called_a_pole():
    # 700 ** 200 = 1.05e569: float64 overflows too although every input is below 709.78, so the
    # float64 recompute alone would call it a pole; mpmath's exact value is finite
    finding = find_nonfinite(lambda x: torch.pow(x, 200.0).sum(), torch.tensor([700.0, 1.5]))
    assert (finding.pattern, finding.root_cause["kind"]) == ("overflow", "overflow")
    assert "up to 1.05e+569 (mpmath), is beyond float64 too" in finding.root_cause["detail"]


def test_a_pole_next_to_a_large_input_is_still_a_pole():
    # lgamma(0) is a pole; lgamma(800) = 4.55e3 is finite. An input above float64's exp limit
    # used to make the float64 recompute untrusted (an "overflow"); mpmath decides per element.
    finding = find_nonfinite(lambda x: torch.lgamma(x).sum(), torch.tensor([0.0, 800.0]))
    assert (finding.pattern, finding.root_cause["kind"]) == ("pole", "pole")
    assert "float64 and mpmath recompute" in finding.root_cause["detail"]


def _in_place(method, *args):
    def step(x):
        y = x * 1.0  # a fresh tensor the in-place op overwrites
        getattr(y, method)(*args)
        return y.sum()
    return step


@pytest.mark.parametrize("method, args, x, pattern, kind, says", [
    # exp_(100) overwrites 100 with inf: recomputed from the overwritten inf it read as a pole
    ("exp_", (), [100.0, 1.0], "overflow", "overflow", "largest input 100; float32 exp(x) overflows above 88.72"),
    ("pow_", (200.0,), [700.0, 1.0], "overflow", "overflow", "up to 1.05e+569 (mpmath), is beyond float64 too"),
    ("lgamma_", (), [0.0, 1.0], "pole", "pole", "inputs from 0 to 1"),
    ("log_", (), [0.0, 1.0], "log(0)", "division_by_zero", "log(0) in 1 of 2 elements"),
])
def test_an_in_place_op_is_analysed_from_the_values_it_overwrote(method, args, x, pattern, kind, says):
    finding = find_nonfinite(_in_place(method, *args), torch.tensor(x))
    assert finding.op.startswith(f"aten.{method}")
    assert (finding.pattern, finding.root_cause["kind"]) == (pattern, kind)
    assert says in finding.root_cause["detail"]


def test_only_in_place_ops_that_can_create_nonfinite_values_keep_their_inputs():
    from stablenca.trace.ops import copy_before, op_info

    aten = torch.ops.aten
    assert op_info(aten.exp_.default).keep_before == (0,)
    assert op_info(aten.div_.Tensor).keep_before == (0,)
    # cannot turn finite values into ±inf (no_overflow), or not in place: nothing is copied
    assert op_info(aten.relu_.default).keep_before == op_info(aten.clamp_.default).keep_before == ()
    assert op_info(aten.exp.default).keep_before == ()
    x = torch.ones(3)
    kept = copy_before((0,), (x,))
    assert kept[0][1] is not x and torch.equal(kept[0][1], x)
    assert copy_before((0,), (x.double(),)) == ()  # float64 is never recomputed in a wider dtype


# -- counterfactual verification ------------------------------------------------------------


def _ratio(labels):
    eye = torch.eye(len(labels), dtype=torch.bool)
    return lambda d: losses.ratio(d, labels, labels, eye).loss


def test_backward_evaluation_order_overflow_is_confirmed_and_the_exp_is_not_causal():
    labels = torch.tensor([0, 0, 1, 1])
    # row 0: a same-class neighbour at 0.5, other classes at 55 (exp = 1.3e-24, normal) and at
    # 150 (exp underflows to 0.0). DivBackward0 computes -g * (a / b) / b: 1e24 / 1.3e-24 overflows.
    d = torch.tensor([[0., 0.5, 55., 150.], [0.5, 0., 2., 3.], [55., 2., 0., 1.], [150., 3., 1., 0.]],
                     requires_grad=True)
    finding, verification = verify_call(_ratio(labels), d)
    assert finding.phase == "backward" and finding.backward_node == "DivBackward0"
    assert verification.verdict(["backward", "DivBackward0", 0]) == "confirmed"
    assert verification.verdict(["forward", "aten.exp", 0]) == "present, not causal"
    assert verification.reference_finite and verification.representable
    # The exact gradient of mean(-log(a/b)) with respect to b is 1 / (N b), with b = P_diff of
    # row 0 in float64. Either side sums the row's n exps (sequential: (n-1) u, each exp 2u) and
    # divides (2 roundings; the replay's -g * (a/b) / b: 4), u = 2^-53: within 2 (n + 4) u.
    d64 = d.detach().double()
    p_diff = (torch.exp(-d64[0]) * (labels != labels[0])).sum()
    expected = 1.0 / (len(labels) * float(p_diff))
    assert verification.exact_value == pytest.approx(expected, rel=2 * (len(labels) + 4) * 2.0 ** -53)
    assert verification.promotion_set == ["DivBackward0 (backward)"] and verification.promotion_minimal
    assert finding.root_cause["kind"] == "evaluation_order" and finding.root_cause["verdict"] == "confirmed"
    assert finding.root_cause["traced"]["kind"] == "underflow"
    assert "present, not causal" in finding.root_cause["detail"]
    assert "promoting exp (forward) is not" in verification.statement
    json.dumps(finding.to_dict(), allow_nan=False)


def test_forward_underflow_of_every_term_is_confirmed():
    labels = torch.tensor([0, 0, 1, 1])
    d = torch.tensor([[0., 150., 160., 170.], [150., 0., 170., 180.], [160., 170., 0., 150.],
                      [170., 180., 150., 0.]], requires_grad=True)  # every exp(-d) off the diagonal is 0.0
    finding, verification = verify_call(_ratio(labels), d)
    assert finding.pattern == "0/0"
    assert verification.verdict(["forward", "aten.exp", 0]) == "confirmed"
    assert verification.verdict(["forward", "aten.div", 0]) == "present, not causal"
    assert finding.root_cause["kind"] == "underflow" and finding.root_cause["verdict"] == "confirmed"
    assert verification.promotion_set is None  # exp in float64 cast back to float32 is still 0.0
    assert {c["verdict"] for c in verification.candidates} <= set(VERDICTS)


def test_a_failure_that_float64_shares_is_not_blamed_on_rounding():
    x = torch.tensor([0.0, 1.0], requires_grad=True)
    finding, verification = verify_call(lambda x: torch.lgamma(x).sum(), x)
    assert not verification.reference_finite
    assert all(c["verdict"] == "float64 fails too" for c in verification.candidates)
    assert "not an artifact of float32 rounding" in verification.statement


@pytest.mark.parametrize("run", ["modernnca-ratio-float32", "seed-ratio-float32"])
def test_committed_ratio_capsules_verdicts(run):
    from stablenca.runtime.sentinel import replay

    finding, _ = replay(REPORT / run / "capsule.pt")
    v = finding.verification
    assert finding.op == "aten.div.Tensor" and finding.backward_node == "DivBackward0"
    first = next(c for c in v["candidates"] if c["role"] == "first non-finite op")
    assert first["label"] == "DivBackward0 (backward)" and first["verdict"] == "confirmed"
    # d/dP_diff of mean(-log(P_same / P_diff)) is 1 / (N P_diff): largest at the smallest P_diff,
    # which the finding records (float32). The float32 P_diff is a sum of about 1.8k rounded exp
    # terms: relative error at most about n * 2^-24 = 1e-4 (sequential summation bound), so 2e-4.
    divisor = finding.inputs[1]
    assert v["representable"]
    assert v["exact_value"] == pytest.approx(1.0 / (divisor["numel"] * divisor["min"]), rel=2e-4)
    assert v["promotion_set"] == ["DivBackward0 (backward)"]
    assert finding.root_cause["kind"] == "evaluation_order"
    if run.startswith("modernnca"):
        exp = next(c for c in v["candidates"] if c["label"] == "exp (forward)")
        assert exp["verdict"] == "present, not causal"
        assert finding.root_cause["traced"]["kind"] == "underflow"


def test_committed_summary_carries_the_verdicts():
    summary = json.loads((REPORT / "summary.json").read_text())
    for entry in summary["runs"]:
        if entry["loss"] == "ratio":
            verification = entry["first_nonfinite"]["verification"]
            assert verification["representable"] is True
            assert verification["promotion_set"] == ["DivBackward0 (backward)"]
            assert entry["first_nonfinite"]["root_cause"]["kind"] == "evaluation_order"


# -- watch: never flag a finite step ----------------------------------------------------------


def test_watch_does_not_fail_a_finite_step_whose_float32_norm_overflows():
    model = torch.nn.Linear(1000, 1, bias=False)
    with watch(model, None) as w:
        def closure():
            loss = model.weight.sum()
            # a finite gradient: its norm sqrt(1000) * 1e35 = 3.2e36 is finite too, but a float32
            # sum of squares overflows at the first square (1e70 > 3.4e38)
            model.weight.grad = torch.full_like(model.weight, 1e35)
            return loss.detach()
        w.step(closure)
    assert not w.failed and w.finding is None
    # Each entry is float32(1e35) (within 2^-24 of 1e35); the norm is taken in float64: 1000 squares
    # summed sequentially and a sqrt, within 1001 * 2^-53 more.
    assert w.records[0]["grad_norm"] == pytest.approx(math.sqrt(1000) * 1e35, rel=2.0 ** -24 + 1001 * 2.0 ** -53)


def test_watch_names_the_optimizer_step_that_writes_a_non_finite_parameter():
    torch.manual_seed(0)
    model = torch.nn.Linear(3, 1)
    optimizer = torch.optim.SGD(model.parameters(), lr=1e38)  # p - lr * g leaves float32's range
    x = torch.randn(8, 3)
    with watch(model, optimizer) as w:
        def closure():
            optimizer.zero_grad()
            loss = (model(x) * 100).pow(2).mean()  # finite loss, finite gradients
            loss.backward()
            return loss
        w.step(closure)
        assert not w.failed  # the step itself was finite
        optimizer.step()
    assert w.failed_at == {"epoch": None, "step": 0, "phase": "optimizer"}
    # SGD's in-place update p.add_(g, alpha=-lr) is the op that wrote the infinities
    assert w.finding is not None and w.finding.op == "aten.add_.Tensor"
    assert w.finding.pattern == "overflow" and w.finding.root_cause["kind"] == "overflow"
    assert not all(bool(torch.isfinite(p).all()) for p in model.parameters())  # as the real update left them


def test_promotion_search_by_delta_debugging_finds_the_backward_node():
    from stablenca.trace.verify import _promotion_search, _replay

    labels = torch.tensor([0, 0, 1, 1])
    d = torch.tensor([[0., 0.5, 55., 150.], [0.5, 0., 2., 3.], [55., 2., 0., 1.], [150., 3., 1., 0.]])

    def forward(dtype):
        leaf = d.to(dtype).requires_grad_()
        return _ratio(labels)(leaf), [leaf]

    base = _replay(forward, torch.float32, torch.float32, None)
    assert not base.finite and ("backward", "DivBackward0", 0) in base.seen
    tests = []

    def fixes(units):
        tests.append(units)
        return _replay(forward, torch.float32, torch.float32, None, "promote", units).finite

    # no candidate given: ddmin over every unit of the step must isolate the node on its own
    found, minimal, n = _promotion_search(fixes, [], base.seen, 64)
    assert found == [("backward", "DivBackward0", 0)] and minimal and n == len(tests)
