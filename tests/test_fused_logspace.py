"""The fused nca_logspace objective (stablenca.models.fused) against autograd through the eager loss.

As for ModernNCA's (tests/test_fused.py): the forward runs the eager path's ops, so the included
rows and every published tensor are the same bits; the loss is the same within the bound of
:func:`logsumexp_gap` (the fused kernel raises each logsumexp's terms below e^floor of the row's
largest to e^floor, so that no exp underflows); the closed-form backward must agree with autograd
in float64 within the bound of :func:`gradient_bound`, pass gradcheck, and stay finite at distance
scales where the probability of the own class underflows.
"""

import math

import torch
from hypothesis import example, given, settings, strategies as st

from stablenca.losses.builtin import nca_logspace
from stablenca.models import fused as fused_module
from stablenca.models.fused import nca_logspace_objective
from stablenca.models.neighbours import exp_floor
from stablenca.publish import capture
from test_fused import assert_same_published, make_batch as modernnca_batch

U64 = 2.0 ** -53


def eager(queries, candidates, labels, candidate_labels, temperature=1.0):
    distances = torch.cdist(queries, candidates)
    distances = distances if temperature == 1.0 else distances / temperature
    self_mask = torch.zeros(distances.shape, dtype=torch.bool)
    self_mask.fill_diagonal_(True)
    return nca_logspace(distances, labels, candidate_labels, self_mask)


def both(queries, candidates, labels, candidate_labels, n_classes, temperature=1.0, shared=False):
    """(output, published, grad_q, grad_c) of the eager path and of the fused one (grad_q None when
    ``shared``: the queries are the candidates' leading rows, one gradient for both roles)."""
    results = []
    for fused in (False, True):
        c = candidates.clone().requires_grad_()
        q = c[:len(queries)] if shared else queries.clone().requires_grad_()
        with capture() as published:
            if fused:
                out = nca_logspace_objective(q, c, labels, candidate_labels, n_classes=n_classes,
                                             temperature=temperature)
            else:
                out = eager(q, c, labels, candidate_labels, temperature)
        out.loss.backward()
        results.append((out, published, None if shared else q.grad, c.grad))
    return results


def eager_logsumexps(d, self_mask, same):
    """(l_all, l_same): each row's logsumexp of -d over all but self, and over the same class."""
    return (torch.logsumexp((-d).masked_fill(self_mask, -math.inf), dim=1),
            torch.logsumexp((-d).masked_fill(~same, -math.inf), dim=1))


def logsumexp_gap(logsumexps, n_terms):
    """Bound on |fused - eager| for each of a row's logsumexps L = m + log S (float64), with S >= 1
    the sum of the C = ``n_terms`` terms exp(z_j - m), whose largest is 1.

    The fused kernel's terms are the eager ones, except that a term below e^floor is e^floor
    (within 1 + 2u). Each computed sum is within gamma_(C-1) of the exact sum of its own terms
    (Higham 4.3, terms >= 0), and the exact sums differ by at most C e^floor (1 + 2u), so
    |log S_f - log S_e| <= |S_f - S_e| / min S <= 2 gamma_C (1 + gamma_C) + C e^floor (1 + 2u).
    Then each path rounds log S (torch's log: within 1 ulp, counted as 2 roundings of |log S| <=
    log C) and the sum with m (one rounding of |L|): 2 (2u log C + u |L|), both paths.
    """
    u = U64
    gamma = n_terms * u / (1 - n_terms * u)
    tails = n_terms * math.exp(exp_floor(torch.float64)) * (1 + 2 * u)
    return 2 * gamma * (1 + gamma) + tails + 4 * u * math.log(max(n_terms, 1)) + 2 * u * logsumexps.abs()


def gradient_bound(queries, candidates, labels, candidate_labels, temperature):
    """Componentwise bound on |grad_fused - grad_eager| in float64 (both from the same forward).

    Both paths take the same distances d_ij (cdist's) and two logsumexps l_all, l_same of the logits
    -d_ij / T. dL/dd_ij = g_i (q_ij - s_ij) / T with s_ij = exp(-d_ij / T - l_all_i) (all but self) and
    q_ij = exp(-d_ij / T - l_same_i) (same class): each path forms the argument with one rounding (the
    same value: negation is exact, addition commutes), exp within 1 ulp (torch's vectorised exp is
    within 1 ulp; counted as 2 roundings), then a difference, a product with g_i / T and a division
    by d_ij (cdist's backward): every G_ij = dL/dd_ij / d_ij is within gamma_8 of its exact value
    relative to A_ij = |g_i| (s_ij + q_ij) / (T d_ij). (Until this was written down, the bound
    divided by d_ij / T instead of d_ij: T times too small for T < 1.) A coordinate of the gradient is then a sum of
    at most 2C + 4 such terms times one coordinate (as in tests/test_fused.py), so, two paths,

        |Delta grad_q_ik| <= 2 gamma_(2C+12) sum_j A_ij (|q_ik| + |c_jk|),

    and the same with the roles exchanged for the candidates (their sum for a shared row).

    The fused kernel's l_all and l_same are within delta_i = :func:`logsumexp_gap` of the eager
    ones, so its s_ij and q_ij carry a further relative error of at most e^delta_i - 1: the
    factor 2 gamma becomes 2 gamma + expm1(delta_all_i + delta_same_i) for row i. And an argument
    of exp below the floor is raised to it: s_ij or q_ij is then e^floor (1 + 2u) instead of a
    value in [0, e^floor), an absolute error of at most that, scaled by |g_i| / (T d_ij) (below).

    Far apart rows (the 3e3 scale) make s, q and G subnormal, where a rounding has an absolute
    error of up to one subnormal ulp, 2^-1074, instead of a relative one (Higham, 2.1: the
    underflow term of the model fl(x op y) = (x op y)(1 + delta) + eta). Each G_ij takes at most 4
    such roundings per path (exp of s and of q, the product with g_i/T, the division by d_ij; the
    first two scaled afterwards by |g_i| / (T d_ij)), so the bound adds, two paths,

        2 * 4 * 2^-1074 * sum_j (1 + |g_i| / (T d_ij)) (|q_ik| + |c_jk|)  (1 + gamma_(2C+12)).
    """
    n = 2 * candidates.shape[0] + 12
    gamma = n * U64 / (1 - n * U64)
    raw = torch.cdist(queries, candidates)
    d = raw / temperature  # the kernel's distances; cdist's backward divides by the raw ones
    self_mask = torch.zeros(d.shape, dtype=torch.bool)
    self_mask.fill_diagonal_(True)
    same = (labels[:, None] == candidate_labels[None, :]) & ~self_mask
    included = same.any(dim=1)
    log_all, log_same = eager_logsumexps(d, self_mask, same)
    s = torch.exp(-d - log_all[:, None]).masked_fill(self_mask, 0)
    q = torch.exp(-d - log_same[:, None]).masked_fill(~same, 0)
    g = included.double() / max(int(included.sum()), 1)
    gap = torch.where(included, logsumexp_gap(log_all, d.shape[1]) + logsumexp_gap(log_same, d.shape[1]), 0.0)
    relative = 2 * gamma + torch.expm1(gap)
    weights = (g[:, None] * (s + q) / (temperature * raw)).nan_to_num(nan=0.0, posinf=0.0)
    weights = weights.masked_fill(raw == 0, 0.0) * relative[:, None]
    # the underflow term, per pair: 8 subnormal ulps, those of s and q scaled by |g_i| / (T d_ij),
    # and the raised tails of s and q, scaled the same way
    smallest = math.ldexp(1.0, -1074)  # the smallest subnormal
    raised = 2 * math.exp(exp_floor(torch.float64)) * (1 + 2 * U64)
    underflow = (8 * smallest + (8 * smallest + raised) * g[:, None] / (temperature * raw)).nan_to_num(posinf=0.0)
    underflow = underflow.masked_fill(raw == 0, 0.0) * (1 + gamma)
    bound_q = weights.sum(1)[:, None] * queries.abs() + weights @ candidates.abs() + \
        underflow.sum(1)[:, None] * queries.abs() + underflow @ candidates.abs()
    bound_c = weights.sum(0)[:, None] * candidates.abs() + weights.mT @ queries.abs() + \
        underflow.sum(0)[:, None] * candidates.abs() + underflow.mT @ queries.abs()
    return bound_q, bound_c


def make_batch(seed, n_queries, n_extra, dim, n_classes, duplicates, scale):
    """tests/test_fused.py's batches, with class labels."""
    return modernnca_batch(seed, n_queries, n_extra, dim, n_classes, "multiclass", duplicates, scale)


def assert_same_forward(eager_result, fused_result):
    """The same published bits and included rows; the losses within :func:`logsumexp_gap` of each other."""
    (out_e, pub_e, *_), (out_f, pub_f, *_) = eager_result, fused_result
    assert torch.equal(out_e.included, out_f.included)
    assert_same_published(pub_e, pub_f)
    d, same, self_mask = (pub_e[name].detach()[out_e.included] for name in ("distances", "same_class_mask", "self_mask"))
    n_terms = d.shape[1]
    log_all, log_same = eager_logsumexps(d, self_mask, same)
    # per_sample = l_all - l_same, one more rounding of each path: u |per_sample| twice
    bound = logsumexp_gap(log_all, n_terms) + logsumexp_gap(log_same, n_terms) + \
        2 * U64 * out_e.per_sample.detach().abs()
    assert torch.all((out_f.per_sample - out_e.per_sample).abs() <= bound)
    if not len(bound):  # no row included: the same (empty) mean
        assert torch.equal(out_e.loss.isnan(), out_f.loss.isnan())
        return
    # the mean over the B rows: within gamma_B of its exact value on each path, plus the largest gap
    gamma = len(bound) * U64 / (1 - len(bound) * U64)
    loss_bound = float(bound.max()) * (1 + gamma) + 2 * gamma * float(out_e.per_sample.detach().abs().max())
    assert abs(float(out_f.loss.detach()) - float(out_e.loss.detach())) <= loss_bound


@settings(max_examples=60, deadline=None)
# found by Hypothesis: subnormal gradient entries differing by 2,400 subnormal ulps (the underflow term)
@example(seed=0, n_queries=2, n_extra=11, dim=1, n_classes=3, duplicates=False, scale=3000.0, temperature=1.0,
         shared=True)
@given(seed=st.integers(0, 2 ** 31), n_queries=st.integers(2, 9), n_extra=st.integers(0, 12),
       dim=st.integers(1, 6), n_classes=st.integers(1, 4), duplicates=st.booleans(),
       scale=st.sampled_from([1e-3, 1.0, 30.0, 3e3]), temperature=st.sampled_from([1.0, 0.3]),
       shared=st.booleans())
def test_fused_logspace_equals_autograd_on_random_batches(seed, n_queries, n_extra, dim, n_classes, duplicates,
                                                          scale, temperature, shared):
    # scale 3e3: distances in the thousands, where P_same underflows to 0 (the ratio of probabilities
    # would be 0/0); both paths stay finite and agree.
    queries, candidates, labels, candidate_labels = make_batch(seed, n_queries, n_extra, dim, n_classes,
                                                               duplicates, scale)
    eager_result, fused_result = both(queries, candidates, labels, candidate_labels, n_classes, temperature,
                                      shared)
    assert_same_forward(eager_result, fused_result)
    (_, _, gq_e, gc_e), (_, _, gq_f, gc_f) = eager_result, fused_result
    bound_q, bound_c = gradient_bound(queries, candidates, labels, candidate_labels, temperature)
    if shared:
        bound = bound_c.clone()
        bound[:n_queries] += bound_q
        assert torch.all((gc_f - gc_e).abs() <= bound)
    else:
        assert torch.all((gq_f - gq_e).abs() <= bound_q)
        assert torch.all((gc_f - gc_e).abs() <= bound_c)
    if not duplicates:
        assert torch.isfinite(gc_f).all()


def test_fused_logspace_passes_gradcheck():
    # Separate candidates (d > 0 everywhere); one row without a same-class candidate (excluded).
    queries, candidates, labels, candidate_labels = make_batch(4, 5, 7, 4, 3, False, 1.0)
    candidates = candidates + 0.1
    labels = labels.clone()
    labels[0] = 3  # no candidate has class 3
    candidate_labels = candidate_labels.clone()
    candidate_labels[0] = 3  # the self pair only: still excluded

    def loss(q, c):
        return nca_logspace_objective(q, c, labels, candidate_labels, temperature=0.7).per_sample

    assert torch.autograd.gradcheck(loss, (queries.requires_grad_(), candidates.requires_grad_()))

    def shared_loss(embeddings):
        return nca_logspace_objective(embeddings[:5], embeddings, labels, candidate_labels,
                                      temperature=0.7).per_sample

    assert torch.autograd.gradcheck(shared_loss, (candidates.detach().clone().requires_grad_(),))


def test_fused_logspace_excluded_rows_get_no_gradient():
    # Row 0's class has no other member: it is excluded from the loss and, through the loss,
    # its only gradient is as a candidate of the others.
    queries = torch.tensor([[0.0, 0.0], [1.0, 0.0], [1.0, 1.0]], dtype=torch.float64)
    labels = torch.tensor([2, 0, 0])
    eager_result, fused_result = both(queries, queries, labels, labels, 3, shared=True)
    (_, _, _, grad_e), (out_f, _, _, grad_f) = eager_result, fused_result
    assert out_f.n_excluded == 1
    assert_same_forward(eager_result, fused_result)
    bound_q, bound_c = gradient_bound(queries, queries, labels, labels, 1.0)
    assert torch.all((grad_f - grad_e).abs() <= bound_q + bound_c)


def test_fused_logspace_exponentiates_no_argument_below_the_floor():
    # float32 rows thousands apart: most terms of both logsumexps, and most of the backward's exps,
    # would underflow (torch's slow path); the kernel raises them to the floor, and the loss stays
    # the eager one's within logsumexp_gap.
    from torch.utils._python_dispatch import TorchDispatchMode

    queries, candidates, labels, candidate_labels = make_batch(3, 6, 20, 3, 3, False, 3000.0)
    queries, candidates = queries.float(), candidates.float()
    floor = exp_floor(torch.float32)
    lowest = {}

    class Arguments(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            name = func.__name__.split(".")[0]
            if name == "logsumexp":  # the argument of exp is x - the row's largest
                x = args[0]
                lowest[name] = min(lowest.get(name, 0.0), float((x - x.amax(dim=1, keepdim=True)).amin()))
            elif name in ("exp", "exp_"):
                lowest[name] = min(lowest.get(name, 0.0), float(args[0].amin()))
            return func(*args, **(kwargs or {}))

    c = candidates.clone().requires_grad_()
    with Arguments():
        out = nca_logspace_objective(c[:6], c, labels, candidate_labels, n_classes=3)
        out.loss.backward()
    # the floor up to the roundings of m + floor and x - m (ulps of |m| ~ 1e4 here: ~1e-3), far from
    # log(tiny) = floor - 16, where exp starts to underflow
    assert set(lowest) == {"logsumexp", "exp_"} and min(lowest.values()) >= floor - 1
    # the same rows through torch.logsumexp do underflow: the case is a real one
    d = torch.cdist(queries, candidates)
    assert float((-d).amin()) - float((-d).amax()) < floor
    assert torch.isfinite(out.loss) and torch.isfinite(c.grad).all()


def test_the_exp_floor_is_far_below_zero_or_absent():
    # float32 and float64 raise their underflowing tails; float16's normal range is too short to
    # raise anything without changing the loss itself, so nothing is raised there.
    assert exp_floor(torch.float32) < -71 and exp_floor(torch.float64) < -692
    assert math.exp(exp_floor(torch.float32)) >= torch.finfo(torch.float32).tiny * 8e6
    assert exp_floor(torch.float16) == -math.inf
    logits = torch.tensor([[0.0, -5.0, -math.inf]], dtype=torch.float16)
    assert torch.equal(fused_module._raised_tails(logits.clone()), logits)


def test_fused_logspace_under_autocast_runs_the_eager_ops():
    queries, candidates, labels, candidate_labels = make_batch(0, 6, 10, 5, 3, False, 1.0)
    candidates = candidates.float()
    weight = torch.randn(5, 5)
    results = []
    for fused in (False, True):
        c = candidates.clone().requires_grad_()
        with torch.autocast("cpu", dtype=torch.bfloat16), capture() as published:
            embedded = c @ weight
            if fused:
                out = nca_logspace_objective(embedded[:6], embedded, labels, candidate_labels, n_classes=3)
            else:
                out = eager(embedded[:6], embedded, labels, candidate_labels)
        out.loss.backward()
        results.append((out.loss.detach(), published, c.grad))
    (loss_e, pub_e, grad_e), (loss_f, pub_f, grad_f) = results
    assert torch.equal(loss_e, loss_f) and torch.equal(grad_e, grad_f)
    assert list(pub_e) == list(pub_f) and all(torch.equal(pub_e[k], pub_f[k]) for k in pub_e)
