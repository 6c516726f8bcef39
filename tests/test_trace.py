"""Tests of the dispatch-mode tracer: each builds a NaN/Inf origin on purpose and checks
the first non-finite op, its root-cause chain and the precursors."""

from __future__ import annotations

import json
import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from stablenca import losses
from stablenca.trace import (
    PRECURSOR_KINDS,
    ROOT_CAUSE_KINDS,
    Finding,
    Tracer,
    find_nonfinite,
    tensor_stats,
    trace_call,
)

EXP_ZERO_F32 = 103.972  # float32 exp(-d) is exactly 0.0 beyond this


def _batch(n_per_class=(3, 3), seed=0, dim=3):
    gen = torch.Generator().manual_seed(seed)
    labels = torch.cat([torch.full((n,), c, dtype=torch.long) for c, n in enumerate(n_per_class)])
    embeddings = torch.randn(len(labels), dim, generator=gen)
    return embeddings, labels


def _loss(name, scale, labels):
    eye = torch.eye(len(labels), dtype=torch.bool)
    formulation = losses.get(name)

    def fn(embeddings):
        distances = torch.cdist(embeddings, embeddings) * scale
        return losses.evaluate(formulation, distances, labels, labels, eye).loss

    return fn


# -- the flagship: the student's ratio loss -----------------------------------------------


def test_ratio_loss_blames_exp_underflow_not_the_division():
    embeddings, labels = _batch()
    scale = 1000.0
    finding = find_nonfinite(_loss("ratio", scale, labels), embeddings.clone().requires_grad_())
    assert isinstance(finding, Finding)
    assert finding.op == "aten.div.Tensor" and finding.short == "div"
    assert finding.phase == "forward" and finding.backward_node is None
    assert finding.pattern == "0/0"
    assert "p_same / p_diff" in finding.source  # the user's line, in losses.py
    # root cause: exp mapped finite distances to exact zeros
    rc = finding.root_cause
    assert rc["kind"] == "underflow" and rc["op"] == "aten.exp.default"
    distances = torch.cdist(embeddings, embeddings) * scale
    n_underflowed = int((distances > EXP_ZERO_F32).sum())
    assert n_underflowed > 0
    assert f"{n_underflowed} finite inputs → 0.0" in rc["detail"]
    assert "103.97" in rc["detail"]
    smallest = float(distances[distances > EXP_ZERO_F32].min())
    assert f"x ≤ -{smallest:.4g}" in rc["detail"]
    # the chain, built from what happened: div ← sum ← mul (mask) ← exp
    assert [link.short for link in finding.chain] == ["div", "sum", "mul", "exp"]
    assert finding.chain[1].kind == "empty_set" and "underflow upstream" in finding.chain[1].detail
    assert finding.chain[3].kind == "underflow"
    text = finding.chain_text()
    assert text.startswith(f"div (0/0 in {len(labels)} of {len(labels)} elements, forward) ← sum")
    assert str(finding).splitlines()[0] == text
    assert finding.inputs[0]["zeros"] == len(labels) and finding.inputs[1]["zeros"] == len(labels)
    assert finding.output["nan"] == len(labels)
    assert {p.kind for p in finding.precursors} == {"underflow", "empty_set"}


@settings(max_examples=12, deadline=None)
@given(scale=st.floats(min_value=20.0, max_value=3000.0))
def test_ratio_root_cause_tracks_the_distance_scale(scale):
    embeddings, labels = _batch()
    distances = torch.cdist(embeddings, embeddings) * scale
    kernel = torch.exp(-distances)
    same = (labels[:, None] == labels[None, :]) & ~torch.eye(len(labels), dtype=torch.bool)
    p_same, p_diff = (kernel * same).sum(1), (kernel * ~same.logical_or(torch.eye(len(labels), dtype=torch.bool))).sum(1)
    finding = find_nonfinite(_loss("ratio", scale, labels), embeddings.clone().requires_grad_())
    if bool((p_same > 0).all() and (p_diff > 0).all()):
        assert finding is None or finding.phase == "backward"
    else:
        assert finding is not None and finding.phase == "forward"
        assert finding.root_cause["kind"] == "underflow", str(finding)
        n_zero = int(((kernel == 0) & torch.isfinite(distances)).sum())
        assert f"{n_zero} finite input" in finding.root_cause["detail"]


def test_singleton_class_is_an_empty_set_not_an_underflow():
    embeddings, labels = _batch(n_per_class=(3, 2, 1))  # class 2 has one member
    finding = find_nonfinite(_loss("ratio", 1.0, labels), embeddings.clone().requires_grad_())
    assert finding.op == "aten.log.default" and finding.pattern == "log(0)"
    assert finding.root_cause["kind"] == "empty_set"
    assert finding.root_cause["op"] == "aten.sum.dim_IntList"
    assert "the mask selected nothing" in finding.root_cause["detail"]
    assert "exact 0 in 1 of 6 rows" in finding.root_cause["detail"]
    assert [link.short for link in finding.chain] == ["log", "div", "sum"]
    assert not any(p.kind == "underflow" for p in finding.precursors)


def test_empty_set_through_a_float_mask_and_where():
    p = torch.tensor([[0.5, 0.2, 0.1], [0.3, 0.3, 0.3]])
    selected = torch.tensor([[True, False, False], [False, False, False]])  # row 1 selects nothing
    for select in (lambda p, m: p * m.float(), lambda p, m: torch.where(m, p, 0.0)):
        finding = find_nonfinite(lambda p: -torch.log(select(p, selected).sum(dim=1)), p)
        assert finding.pattern == "log(0)"
        assert finding.root_cause["kind"] == "empty_set", finding
        assert "mask selected nothing" in finding.root_cause["detail"]


def test_empty_selection_reduces_to_zero():
    x = torch.tensor([1.0, 2.0, 3.0])
    finding = find_nonfinite(lambda x: torch.log(x[x > 10].sum()), x)
    assert finding.pattern == "log(0)"
    assert finding.root_cause["kind"] == "empty_set"
    assert "0 elements" in finding.root_cause["detail"]


def test_underflow_of_a_product():
    x = torch.tensor([1e-30, 1.0])
    finding = find_nonfinite(lambda x: torch.log(x * x), x)
    assert finding.pattern == "log(0)"
    assert finding.root_cause["kind"] == "underflow" and finding.root_cause["op"] == "aten.mul.Tensor"
    assert "1 result of finite non-zero operands → 0.0" in finding.root_cause["detail"]


def test_stable_losses_are_clean_at_the_same_huge_scale():
    embeddings, labels = _batch()
    for name in ("nca_logspace", "modernnca"):
        assert find_nonfinite(_loss(name, 1000.0, labels), embeddings.clone().requires_grad_()) is None, name
    result = trace_call(_loss("modernnca", 1000.0, labels), embeddings.clone().requires_grad_())
    assert not result and result.finding is None
    # the softmax did underflow (finite, so not a finding): it is recorded as a precursor
    assert any(p.kind == "underflow" and p.op == "aten._softmax.default" for p in result.precursors)


# -- overflow, cancellation ---------------------------------------------------------------


def test_overflow_then_inf_minus_inf():
    x = torch.tensor([100.0, 1.0])
    finding = find_nonfinite(lambda x: torch.exp(x) - torch.exp(x), x)
    assert finding.op == "aten.exp.default" and finding.pattern == "overflow"
    assert finding.root_cause["kind"] == "overflow"
    assert "88.72" in finding.root_cause["detail"] and "largest input 100" in finding.root_cause["detail"]
    assert any(p.kind == "overflow" for p in finding.precursors)


def _f(x):
    return 1 / (1 - torch.exp(-x)) - 1 / x


def test_cancellation_to_zero_then_division_by_it():
    finding = find_nonfinite(_f, torch.tensor([1e-8]))
    assert finding.pattern == "1/0" and finding.op == "aten.reciprocal.default"
    assert finding.root_cause["kind"] == "cancellation"
    assert finding.root_cause["op"] == "aten.rsub.Scalar"
    assert "cancelled to exactly 0.0" in finding.root_cause["detail"]
    assert "all 24 significand bits lost" in finding.root_cause["detail"]
    assert [link.short for link in finding.chain] == ["reciprocal", "rsub"]


def test_pure_cancellation_is_a_precursor_of_a_finite_result():
    result = trace_call(_f, torch.tensor([1e-5]))
    assert not result and result.finding is None
    (precursor,) = [p for p in result.precursors if p.kind == "cancellation"]
    assert precursor.op == "aten.rsub.Scalar" and precursor.phase == "forward"
    assert "lost ≥ 12 of 24 significand bits" in precursor.detail
    bits = float(precursor.detail.split("(max ")[1].split(",")[0])
    # 1 - exp(-x) is about 168 float32 ulps of 1 (2**-24 each); exp within 1 ulp moves log2 of it by at
    # most log2(168/167) < 0.01, and the detail prints one decimal (0.05).
    assert bits == pytest.approx(math.log2(1 / (1 - math.exp(-1e-5))), abs=0.06)
    # sub with alpha is the same subtraction
    result = trace_call(lambda x: torch.add(torch.ones(1), torch.exp(-x), alpha=-1), torch.tensor([1e-5]))
    assert [p.kind for p in result.precursors] == ["cancellation"]


# -- backward -----------------------------------------------------------------------------


def _root(x):
    y = torch.sqrt(x)  # finite at 0, but its derivative is 1 / (2 * 0)
    return y.sum()


def test_nan_only_in_backward_names_the_node_and_the_forward_line():
    x = torch.tensor([0.0, 4.0], requires_grad=True)
    finding = find_nonfinite(_root, x)
    assert finding.phase == "backward"
    assert finding.backward_node == "SqrtBackward0"
    assert finding.op == "aten.div.Tensor" and finding.pattern == "x/0"
    assert finding.root_cause["kind"] == "division_by_zero"
    assert "test_trace.py" in finding.source and "y = torch.sqrt(x)" in finding.source
    assert find_nonfinite(_root, x, backward=False) is None


def test_where_trap_is_traced_to_the_forward_nan():
    x = torch.tensor([-1.0, 4.0], requires_grad=True)
    fn = lambda x: torch.where(x > 0, torch.sqrt(x), 0.0).sum()  # noqa: E731
    finding = find_nonfinite(fn, x)  # the NaN comes back in backward (0 * NaN)
    assert finding.op == "aten.sqrt.default" and finding.phase == "forward"
    assert finding.root_cause["kind"] == "domain" and finding.pattern == "sqrt(negative)"
    with Tracer() as tracer:  # forward only: the NaN is masked out, never used
        fn(x)
    assert tracer.finding is None
    assert [d.op for d in tracer.discarded] == ["aten.sqrt.default"]


def test_pytorch_internal_masked_nan_is_not_reported():
    # cdist's backward computes grad / dist and then masks dist == 0: a NaN that never escapes
    embeddings, labels = _batch(n_per_class=(20, 20))
    both = torch.cat([embeddings, embeddings])  # duplicates: exact zero distances
    labels = torch.cat([labels, labels])
    eye = torch.eye(len(labels), dtype=torch.bool)

    def fn(e):
        x = torch.cat([e, e])
        return losses.modernnca(torch.cdist(x, x), labels, labels, eye, n_classes=2).loss

    e = embeddings.clone().requires_grad_()
    result = trace_call(fn, e)
    assert result.finding is None
    assert torch.isfinite(e.grad).all()
    assert both.shape[0] == 80


# -- overflow from a tiny divisor --------------------------------------------------------


def _flagship_distances(far=(60.0, 100.0, 110.0)):
    """Row 0: one same-class neighbour at 1, three other-class ones at ``far``.

    In float32 exp(-60) = 8.8e-27 (tiny but normal), exp(-100) is subnormal and exp(-110)
    is 0.0, so P_diff of row 0 is about 8.8e-27: P_same / P_diff = 4.2e25 is finite in the
    forward pass, but DivBackward0 computes (P_same / P_diff) / P_diff, which overflows.
    """
    labels = torch.tensor([0, 0, 1, 1, 1])
    distances = torch.full((5, 5), 3.0)
    distances.fill_diagonal_(0.0)
    distances[0, 1] = 1.0
    distances[0, 2:] = torch.tensor(far)
    return distances, labels


def _ratio_of_distances(labels):
    eye = torch.eye(len(labels), dtype=torch.bool)
    return lambda d: losses.ratio(d, labels, labels, eye).loss


def test_backward_overflow_from_a_tiny_p_diff_is_traced_through_the_divisor_to_exp():
    distances, labels = _flagship_distances()
    kernel = torch.exp(-distances)
    assert kernel[0, 4] == 0 and 0 < kernel[0, 3] < torch.finfo(torch.float32).tiny  # zero, subnormal
    d = distances.clone().requires_grad_()
    finding = find_nonfinite(_ratio_of_distances(labels), d)
    assert finding.phase == "backward" and finding.backward_node == "DivBackward0"
    assert finding.op == "aten.div.Tensor" and finding.pattern == "overflow"
    assert "p_same / p_diff" in finding.source
    p_diff = float(kernel[0, 2:].sum())
    assert f"divisor as small as {p_diff:.3g}" in finding.chain[0].detail
    # the chain goes through the divisor, P_diff: sum ← mask multiply ← exp underflow
    assert [link.short for link in finding.chain] == ["div", "sum", "mul", "exp"]
    assert "p_diff = " in finding.chain[1].source
    assert f"divisor values as small as {p_diff:.3g}: 1 of 5 below 5.42e-20" in finding.chain[1].detail
    assert finding.chain[1].phase == "forward" and finding.chain[2].kind == "mask"
    assert finding.chain[3].kind == "underflow"
    rc = finding.root_cause
    assert rc["kind"] == "underflow" and rc["op"] == "aten.exp.default"
    assert "1 finite input → 0.0" in rc["detail"] and "1 subnormal outputs" in rc["detail"]
    assert finding.chain_text().startswith(
        f"div (overflow in 1 of 5 elements, backward DivBackward0: divisor as small as {p_diff:.3g}) ← sum (")
    assert [p.kind for p in finding.precursors] == ["underflow", "overflow"]
    runs = [find_nonfinite(_ratio_of_distances(labels), distances.clone().requires_grad_()).to_dict()
            for _ in range(2)]
    assert runs[0] == runs[1] == finding.to_dict()


def test_tiny_divisor_without_underflow_keeps_overflow_and_names_the_divisor():
    distances, labels = _flagship_distances(far=(60.0, 61.0, 62.0))  # all normal: no underflow
    finding = find_nonfinite(_ratio_of_distances(labels), distances.clone().requires_grad_())
    assert finding.phase == "backward" and finding.pattern == "overflow"
    assert finding.root_cause["kind"] == "overflow" and finding.root_cause["op"] == "aten.div.Tensor"
    assert "divisor as small as" in finding.root_cause["detail"]
    assert "traces back to aten.exp.default" in finding.root_cause["detail"]
    assert [link.short for link in finding.chain] == ["div", "sum", "mul", "exp"]
    assert finding.chain[3].kind is None and "no zero or subnormal output" in finding.chain[3].detail
    assert not any(p.kind == "underflow" for p in finding.precursors)


def test_log_backward_of_a_tiny_sum():
    x = torch.tensor([100.0, 101.0], requires_grad=True)  # exp(-x) both subnormal, log finite
    finding = find_nonfinite(lambda x: torch.log(torch.exp(-x).sum()), x)
    assert finding.backward_node == "LogBackward0" and finding.pattern == "overflow"
    assert "divisor as small as 5.18e-44" in finding.chain[0].detail
    assert [link.short for link in finding.chain] == ["div", "sum", "exp"]
    assert finding.root_cause["kind"] == "underflow" and finding.root_cause["op"] == "aten.exp.default"
    assert "2 subnormal outputs" in finding.root_cause["detail"]


def test_forward_division_and_reciprocal_of_a_tiny_value():
    x = torch.tensor([95.0, 120.0])
    finding = find_nonfinite(lambda x: torch.ones(2) / torch.exp(-x).sum(), x)
    assert finding.phase == "forward" and finding.pattern == "overflow"
    assert [link.short for link in finding.chain] == ["div", "sum", "exp"]
    assert finding.root_cause["kind"] == "underflow"
    finding = find_nonfinite(lambda x: torch.reciprocal(torch.exp(-x)), torch.tensor([95.0, 1.0]))
    assert finding.op == "aten.reciprocal.default" and finding.root_cause["kind"] == "underflow"
    assert [link.short for link in finding.chain] == ["reciprocal", "exp"]
    # a tiny *input* (not produced under the tracer): overflow, the divisor noted, no chain
    finding = find_nonfinite(lambda b: torch.ones(2) / b, torch.tensor([1e-39, 1.0]))
    assert finding.root_cause["kind"] == "overflow" and len(finding.chain) == 1
    assert "divisor as small as 1e-39" in finding.chain[0].detail
    # a huge numerator over a divisor that is not tiny: not blamed on the divisor
    finding = find_nonfinite(lambda a: a / torch.tensor([0.5, 1.0]), torch.tensor([3e38, 1.0]))
    assert finding.pattern == "overflow" and "divisor" not in finding.detail


def test_tiny_base_to_a_negative_power():
    finding = find_nonfinite(lambda x: torch.exp(-x) ** -2, torch.tensor([50.0, 1.0]))
    assert finding.short == "pow" and finding.root_cause["kind"] == "overflow"
    assert "base as small as 1.93e-22 to a negative power" in finding.chain[0].detail
    assert [link.short for link in finding.chain] == ["pow", "exp"]


def test_tiny_divisor_found_by_storage_when_the_object_differs():
    x = torch.tensor([95.0, 1.0])
    with Tracer() as tracer:
        small = torch.exp(-x)
        # another tensor object on the same storage, as an engine that rewraps would hand over
        alias = torch.empty(0).set_(small.untyped_storage(), small.storage_offset(), small.shape,
                                    small.stride())
        result = torch.ones(2) / alias
        result.sum().item()
    assert alias is not small and alias._base is None and tracer._lookup(alias) is None
    finding = tracer.finding
    assert finding.pattern == "overflow" and finding.root_cause["kind"] == "underflow"
    assert [link.short for link in finding.chain] == ["div", "exp"]


# -- intentional infinities ---------------------------------------------------------------


def test_talent_style_inf_diagonal_is_allowed():
    embeddings, labels = _batch(n_per_class=(4, 4))
    onehot = nn.functional.one_hot(labels, 2).float()

    def talent(e):
        distances = torch.cdist(e, e) / 1.0
        distances.fill_diagonal_(torch.inf)  # TALENT masks self-pairs this way
        probabilities = torch.softmax(-distances, dim=-1)
        log_p = torch.log(probabilities @ onehot + 1e-7)
        return nn.functional.nll_loss(log_p, labels)

    result = trace_call(talent, embeddings.clone().requires_grad_())
    assert not result and result.findings == []
    assert result.precursors == []  # the mask is neither a finding nor a precursor


def test_user_allow_list():
    mask = torch.tensor([1.0, 0.0, 1.0])
    fn = lambda x: torch.softmax(x + torch.log(mask), dim=0)  # noqa: E731  log(0) = -inf on purpose
    x = torch.zeros(3)
    assert find_nonfinite(fn, x).pattern == "log(0)"
    assert find_nonfinite(fn, x, allow=("aten.log",)) is None
    assert find_nonfinite(fn, x, allow=(lambda func, args, kwargs: "log" in str(func),)) is None
    # an allow-listed inf that makes a NaN is still reported
    nan_fn = lambda x: (x.masked_fill(mask == 0, -math.inf) - x.masked_fill(mask == 0, -math.inf))  # noqa: E731
    assert find_nonfinite(nan_fn, x).pattern == "inf-inf"


def test_softmax_of_a_fully_masked_row_is_an_empty_set():
    logits = torch.zeros(2, 3)
    mask = torch.tensor([[True, False, True], [False, False, False]])
    finding = find_nonfinite(lambda z: torch.softmax(z.masked_fill(~mask, -math.inf), dim=1), logits)
    assert finding.root_cause["kind"] == "empty_set"
    assert finding.op == "aten._softmax.default"


# -- inputs, modules ----------------------------------------------------------------------


def test_parameter_already_nan():
    layer = nn.Linear(3, 2)
    with torch.no_grad():
        layer.weight[1, 0] = float("nan")
    finding = find_nonfinite(lambda x: layer(x).sum(), torch.ones(4, 3), model=layer)
    assert finding.root_cause["kind"] == "nonfinite_input"
    assert finding.root_cause["op"] == "input"
    assert "parameter weight" in finding.root_cause["detail"] and "1 NaN" in finding.root_cause["detail"]
    assert finding.pattern == "NaN input"
    assert finding.chain[-1].kind == "input"


class _Log(nn.Module):
    def forward(self, x):
        return torch.log(x)


class _Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.encoder = nn.Sequential(nn.Linear(3, 4), _Log())
        self.head = nn.Linear(4, 1)

    def forward(self, x):
        return self.head(self.encoder(x))


def test_module_path_names_the_submodule():
    torch.manual_seed(0)
    net = _Net()
    x = torch.randn(5, 3)
    hooks_before = len(torch.nn.modules.module._global_forward_hooks)
    finding = find_nonfinite(lambda x: net(x).sum(), x, model=net)
    assert finding.module == "encoder.1"
    assert finding.pattern == "log(negative)" and finding.root_cause["kind"] == "domain"
    assert "return torch.log(x)" in finding.source
    # without model= the outermost module called names its children
    assert find_nonfinite(lambda x: net(x).sum(), x).module == "encoder.1"
    assert len(torch.nn.modules.module._global_forward_hooks) == hooks_before


# -- records ------------------------------------------------------------------------------


def test_to_dict_is_json_safe_and_deterministic():
    embeddings, labels = _batch()
    runs = [find_nonfinite(_loss("ratio", 1000.0, labels), embeddings.clone().requires_grad_()).to_dict()
            for _ in range(2)]
    assert runs[0] == runs[1]
    text = json.dumps(runs[0], allow_nan=False)  # non-finite floats are strings
    assert json.loads(text) == runs[0]
    assert runs[0]["root_cause"]["kind"] in ROOT_CAUSE_KINDS
    assert all(p["kind"] in PRECURSOR_KINDS for p in runs[0]["precursors"])
    assert runs[0]["chain_text"].startswith("div (0/0")


def test_tensor_stats_survive_nan():
    stats = tensor_stats(torch.tensor([0.0, -2.0, float("nan"), float("inf"), -float("inf"), 3.0]))
    assert stats["min"] == -2.0 and stats["max"] == 3.0
    assert (stats["zeros"], stats["negative"], stats["nan"], stats["posinf"], stats["neginf"]) == (1, 1, 1, 1, 1)
    assert tensor_stats(torch.tensor([True, False]))["zeros"] == 1


def test_tracer_context_manager_and_stop_at_first():
    x = torch.tensor([0.0, 1.0])
    with Tracer(stop_at_first=False) as tracer:
        a = torch.log(x)  # -inf, used below
        b = torch.log(x - 1)  # log(-1) = NaN and log(0) = -inf, used below
        (a + b).sum()
    assert [f.pattern for f in tracer.findings] == ["log(0)", "log(0)"]
    assert tracer.finding is tracer.findings[0]
    with Tracer() as tracer:
        torch.exp(x).sum()
    assert tracer.finding is None and tracer.findings == []
