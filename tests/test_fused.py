"""The fused ModernNCA objective (stablenca.models.fused) against autograd through the eager path.

The forward runs the eager path's ops, so the loss and every published tensor must be the
same bits. The backward is the closed form; in float64 it must agree with autograd within
the bound derived in :func:`gradient_bound`, and with finite differences (gradcheck).
"""

import math

import pytest
import torch
from hypothesis import given, settings, strategies as st

from stablenca.losses.builtin import modernnca
from stablenca.models import neighbours
from stablenca.models.fused import modernnca_objective
from stablenca.publish import capture
from stablenca.training import StepContext, TrainConfig, Trainer

U64 = 2.0 ** -53


def eager(queries, candidates, labels, candidate_labels, task, n_classes, temperature=1.0):
    distances = torch.cdist(queries, candidates)
    distances = distances if temperature == 1.0 else distances / temperature
    self_mask = torch.zeros(distances.shape, dtype=torch.bool)
    self_mask.fill_diagonal_(True)
    return modernnca(distances, labels, candidate_labels, self_mask, n_classes=n_classes, task=task)


def both(queries, candidates, labels, candidate_labels, task, n_classes, temperature=1.0, shared=False):
    """(loss, published, grad_q, grad_c) of the eager path and of the fused one.

    ``shared``: the queries are a slice of the candidates' leading rows (as in the Trainer), and
    grad_c is the gradient of the candidates for both roles (grad_q is None).
    """
    results = []
    for path in (eager, modernnca_objective):
        c = candidates.clone().requires_grad_()
        q = c[:len(queries)] if shared else queries.clone().requires_grad_()
        with capture() as published:
            if path is eager:
                out = eager(q, c, labels, candidate_labels, task, n_classes, temperature)
            else:
                out = modernnca_objective(q, c, labels, candidate_labels, task=task, n_classes=n_classes,
                                          temperature=temperature)
        out.loss.backward()
        results.append((out.loss.detach(), published, None if shared else q.grad, c.grad))
    return results


def gradient_bound(queries, candidates, labels, candidate_labels, task, n_classes, temperature, unit=U64):
    """Componentwise bound on |grad_fused - grad_eager| in float64 (both from the same forward).

    Both paths take the same distances d, softmax s and prediction u (same bits). They differ
    in how G_ij = dL/dd_ij / d_ij = a_i s_ij r_ij / (T d_ij) is rounded and summed. The eager
    path forms the row sum sum_k s_ik dL/ds_ik in the softmax backward (C terms), the fused one
    takes u from the forward's product (also C terms); each then takes a subtraction, two
    products and a division, and the fused one the row factor a_i: every G_ij is within
    gamma_(C+8) of its exact value relative to A_ij R_ij, with A_ij = |a_i s_ij / (T d_ij)| and
    R_ij bounding |r_ij| and the scale of that row sum (1 for classification, where
    0 <= u_iy <= 1 and r = m - u_iy; sum_k s_ik |t_k| + |t_j| + |u_i| for regression). A
    coordinate of the gradient, e_ik sum_j G_ij - sum_j G_ij c_jk and its transpose for the
    candidates (both roles summed when they are one tensor), is then a sum of at most 2C + 4
    such terms, each times one coordinate: relative error gamma_(C+8) gamma_(2C+4)-combined
    into gamma_(3C+12) (Higham 3.1, 3.4: (1 + theta_k)(1 + theta_j) = 1 + theta_(k+j)) of
    sum_j A_ij R_ij (|q_ik| + |c_jk|). Two paths, so

        |Delta grad_q_ik| <= 2 gamma_(3C+12) sum_j A_ij R_ij (|q_ik| + |c_jk|),

    the same with the roles of i and j exchanged for the candidates, and the sum of both for
    a row that is both (``shared``).
    """
    n = 3 * candidates.shape[0] + 12
    gamma = n * unit / (1 - n * unit)
    d = torch.cdist(queries, candidates)
    logits = (-d / temperature)
    logits.fill_diagonal_(-math.inf)
    s = torch.softmax(logits, dim=1)
    if task == "regression":
        t = candidate_labels.double()
        u = s @ t
        a = 2 * (u - labels.double()).abs() / len(labels)
        r = (s @ t.abs())[:, None] + t.abs()[None, :] + u.abs()[:, None]
    else:
        onehot = torch.nn.functional.one_hot(candidate_labels, n_classes).double()
        picked = (s @ onehot).gather(1, labels[:, None]).squeeze(1)
        a = 1 / (len(labels) * (picked + 1e-7))
        r = torch.ones_like(s)
    weights = (a[:, None] * s / (temperature * d)).nan_to_num(nan=0.0, posinf=0.0) * r
    weights = weights.masked_fill(d == 0, 0.0)
    factor = 2 * gamma
    bound_q = factor * (weights.sum(1)[:, None] * queries.abs() + weights @ candidates.abs())
    bound_c = factor * (weights.sum(0)[:, None] * candidates.abs() + weights.mT @ queries.abs())
    return bound_q, bound_c


def assert_same_published(pub_e, pub_f):
    """The eager path's published values, bit for bit and in its order. The fused kernels also publish
    ``same_class_counts`` (from the class table, so that the probes skip a pass over the mask), which
    must be the mask's row counts."""
    extra = [name for name in pub_f if name not in pub_e]
    assert extra in ([], ["same_class_counts"])
    assert [name for name in pub_f if name in pub_e] == list(pub_e)
    for name, value in pub_e.items():
        if isinstance(value, torch.Tensor):
            assert torch.equal(value, pub_f[name]), name
        else:
            assert value == pub_f[name], name
    if extra:
        assert torch.equal(pub_f["same_class_counts"], pub_e["same_class_mask"].sum(dim=1))


def make_batch(seed, n_queries, n_extra, dim, n_classes, task, duplicates, scale):
    generator = torch.Generator().manual_seed(seed)
    queries = torch.randn(n_queries, dim, generator=generator, dtype=torch.float64) * scale
    extra = torch.randn(n_extra, dim, generator=generator, dtype=torch.float64) * scale
    if duplicates and n_extra:
        extra[0] = queries[-1]  # a duplicate row: d = 0 off the diagonal
    candidates = torch.cat([queries, extra])
    if task == "regression":
        candidate_labels = torch.randn(len(candidates), generator=generator, dtype=torch.float64)
    else:
        candidate_labels = torch.randint(0, n_classes, (len(candidates),), generator=generator)
    return queries, candidates, candidate_labels[:n_queries], candidate_labels


@settings(max_examples=60, deadline=None)
@given(seed=st.integers(0, 2 ** 31), n_queries=st.integers(2, 9), n_extra=st.integers(0, 12),
       dim=st.integers(1, 6), n_classes=st.integers(1, 4), task=st.sampled_from(["multiclass", "regression"]),
       duplicates=st.booleans(), scale=st.sampled_from([1e-3, 1.0, 30.0]),
       temperature=st.sampled_from([1.0, 0.3]))
def test_fused_equals_autograd_on_random_batches(seed, n_queries, n_extra, dim, n_classes, task, duplicates,
                                                  scale, temperature):
    queries, candidates, labels, candidate_labels = make_batch(seed, n_queries, n_extra, dim, n_classes, task,
                                                               duplicates, scale)
    (loss_e, pub_e, gq_e, gc_e), (loss_f, pub_f, gq_f, gc_f) = both(
        queries, candidates, labels, candidate_labels, task, n_classes, temperature)
    # The same forward ops: the same bits, and the same published tensors.
    assert torch.equal(loss_e, loss_f)
    assert_same_published(pub_e, pub_f)
    bound_q, bound_c = gradient_bound(queries, candidates, labels, candidate_labels, task, n_classes, temperature)
    assert torch.all((gq_f - gq_e).abs() <= bound_q)
    assert torch.all((gc_f - gc_e).abs() <= bound_c)


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 2 ** 31), n_queries=st.integers(2, 9), n_extra=st.integers(0, 12),
       dim=st.integers(1, 6), n_classes=st.integers(1, 4), task=st.sampled_from(["multiclass", "regression"]),
       duplicates=st.booleans(), scale=st.sampled_from([1e-3, 1.0, 30.0]),
       temperature=st.sampled_from([1.0, 0.3]))
def test_fused_shared_rows_equal_autograd(seed, n_queries, n_extra, dim, n_classes, task, duplicates, scale,
                                          temperature):
    """The Trainer's case: queries = embeddings[:B], candidates = embeddings; one gradient for both roles."""
    queries, candidates, labels, candidate_labels = make_batch(seed, n_queries, n_extra, dim, n_classes, task,
                                                               duplicates, scale)
    (loss_e, pub_e, _, grad_e), (loss_f, pub_f, _, grad_f) = both(
        queries, candidates, labels, candidate_labels, task, n_classes, temperature, shared=True)
    assert torch.equal(loss_e, loss_f)
    assert_same_published(pub_e, pub_f)
    bound_q, bound_c = gradient_bound(queries, candidates, labels, candidate_labels, task, n_classes, temperature)
    bound = bound_c.clone()
    bound[:n_queries] += bound_q
    assert torch.all((grad_f - grad_e).abs() <= bound)


def test_fused_takes_a_slice_of_the_candidates_as_one_input():
    embeddings = torch.randn(6, 3, requires_grad=True)
    labels, candidate_labels = torch.tensor([0, 1, 0, 1]), torch.tensor([0, 1, 0, 1, 1, 0])
    shared = modernnca_objective(embeddings[:4], embeddings, labels, candidate_labels, task="multiclass",
                                 n_classes=2).per_sample.grad_fn.next_functions
    apart = modernnca_objective(embeddings.detach()[:4], embeddings, labels, candidate_labels, task="multiclass",
                                n_classes=2).per_sample.grad_fn.next_functions
    # the slice is not an input of its own (one tensor input fewer); a detached copy of the rows is
    assert len(shared) == len(apart) - 1
    for edges in (shared, apart):
        assert [type(f).__name__ for f, _ in edges if f is not None] == ["AccumulateGrad"]


@pytest.mark.parametrize("task", ["multiclass", "regression"])
def test_fused_gradient_passes_gradcheck(task):
    # Finite differences in float64 (torch.autograd.gradcheck's own tolerances); the
    # candidates are separate points, so no distance is 0 and the loss is smooth there.
    queries, candidates, labels, candidate_labels = make_batch(3, 5, 7, 4, 3, task, False, 1.0)
    candidates = candidates + 0.1  # the candidates are not the queries: d > 0 everywhere

    def loss(q, c):
        return modernnca_objective(q, c, labels, candidate_labels, task=task, n_classes=3,
                                   temperature=0.7).per_sample

    assert torch.autograd.gradcheck(loss, (queries.requires_grad_(), candidates.requires_grad_()))

    def shared_loss(embeddings):
        return modernnca_objective(embeddings[:5], embeddings, labels, candidate_labels, task=task, n_classes=3,
                                   temperature=0.7).per_sample

    assert torch.autograd.gradcheck(shared_loss, (candidates.detach().clone().requires_grad_(),))


def test_fused_zero_distance_follows_cdist():
    # Exact duplicates: d = 0 off the diagonal (the mm path clamps to 0 exactly here). cdist's
    # backward gives those pairs no gradient; so does the fused backward.
    queries = torch.tensor([[1.0, 2.0], [1.0, 2.0], [0.0, 0.0]], dtype=torch.float64)
    labels = torch.tensor([0, 1, 0])
    (loss_e, _, gq_e, gc_e), (loss_f, _, gq_f, gc_f) = both(queries, queries, labels, labels, "multiclass", 2)
    assert torch.cdist(queries, queries)[0, 1] == 0
    assert torch.isfinite(gq_f).all() and torch.isfinite(gc_f).all()
    bound_q, bound_c = gradient_bound(queries, queries, labels, labels, "multiclass", 2, 1.0)
    assert torch.all((gq_f - gq_e).abs() <= bound_q) and torch.all((gc_f - gc_e).abs() <= bound_c)


@pytest.mark.parametrize("task", ["multiclass", "regression"])
@pytest.mark.parametrize("shared", [False, True])
def test_fused_under_autocast_runs_the_eager_ops(task, shared):
    # Under torch.autocast the embeddings are bfloat16 and the readout product runs in bfloat16;
    # the closed-form backward is float32-only (it raised a dtype error before). The objective
    # then runs the eager path's ops: the same loss, published tensors and gradients, bit for bit.
    queries, candidates, labels, candidate_labels = make_batch(0, 6, 10, 5, 3, task, False, 1.0)
    queries, candidates = queries.float(), candidates.float()
    if task == "regression":
        labels, candidate_labels = labels.float(), candidate_labels.float()
    weight = torch.randn(5, 5)
    results = []
    for path in (eager, modernnca_objective):
        c = candidates.clone().requires_grad_()
        q = c[:len(queries)] if shared else queries.clone().requires_grad_()
        with torch.autocast("cpu", dtype=torch.bfloat16), capture() as published:
            ce = c @ weight  # a half-precision layer, as an encoder under autocast
            qe = ce[:len(queries)] if shared else q @ weight
            if path is eager:
                out = eager(qe, ce, labels, candidate_labels, task, 3)
            else:
                out = modernnca_objective(qe, ce, labels, candidate_labels, task=task, n_classes=3)
        out.loss.backward()
        results.append((out.loss.detach(), published, c.grad))
    (loss_e, pub_e, grad_e), (loss_f, pub_f, grad_f) = results
    assert pub_f["distances"].dtype == torch.float32 and torch.equal(loss_e, loss_f)
    assert list(pub_e) == list(pub_f) and all(torch.equal(pub_e[k], pub_f[k]) for k in pub_e)
    assert torch.isfinite(grad_f).all() and torch.equal(grad_e, grad_f)


def test_fused_nonfinite_input_is_not_hidden():
    # A NaN embedding must reach the gradients (the sentinel looks for it), not be zeroed
    # by the d = 0 rule.
    queries = torch.tensor([[0.0, 0.0], [1.0, float("nan")], [3.0, 1.0]], requires_grad=True)
    out = modernnca_objective(queries, queries, torch.tensor([0, 0, 1]), torch.tensor([0, 0, 1]),
                              task="multiclass", n_classes=2)
    out.loss.backward()
    assert not torch.isfinite(queries.grad).all()


@pytest.mark.parametrize("options", [dict(), dict(task="regression"), dict(model="seed", loss="modernnca"),
                                     dict(loss="nca_logspace"), dict(model="seed", loss="nca_logspace")])
def test_trainer_kernels_take_the_same_forward(options):
    """Eager and fused Trainers: the same loss and published tensors, bit for bit, on a step
    (both built-in losses with a fused kernel: ModernNCA's and nca_logspace)."""
    trainers = [Trainer(TrainConfig(seed=0, epochs=1, kernel=kernel, **options)) for kernel in ("eager", "fused")]
    assert [t.fused for t in trainers] == [False, True]
    contexts = []
    for trainer in trainers:
        batch = trainer.epoch_batches()[0]
        ctx = StepContext(0, 0, 0, batch)
        trainer.forward_backward(ctx)
        contexts.append(ctx)
    eager_ctx, fused_ctx = contexts
    assert torch.equal(eager_ctx.loss, fused_ctx.loss)
    assert_same_published(eager_ctx.published, fused_ctx.published)


def test_fused_kernel_leaves_other_losses_eager():
    trainer = Trainer(TrainConfig(model="seed", loss="ratio", epochs=1, kernel="fused"))
    assert not trainer.fused


def test_unknown_kernel_is_a_config_error():
    from stablenca.errors import ConfigError

    with pytest.raises(ConfigError, match="unknown kernel"):
        TrainConfig(kernel="compiled").resolved()


def gamma(n):
    """Higham's gamma_n = n u / (1 - n u) in float64: a sum of n terms, or n roundings, is within it."""
    return n * U64 / (1 - n * U64)


@pytest.mark.parametrize("rows", [1, 37, 400])
def test_plr_lite_function_equals_autograd_through_the_modules(rows):
    """PLR embeddings in one Function (no [cos, sin] concatenation) against autograd through
    Periodic -> Linear -> ReLU, float64, within the bounds derived below.

    Both take the same angles, cos and sin (the same ops). They differ only in the order of the
    sums: the Linear's 2K + 1 terms (one product, or two and an addition), the gradient's
    products and reductions. A sum of n terms is within gamma_n sum|terms| of the exact value
    (Higham, Accuracy and Stability of Numerical Algorithms, 3.1); two paths, a factor 2.
    """
    from stablenca.models.embeddings import PLREmbeddings

    torch.manual_seed(rows)
    plr = PLREmbeddings(n_features=7, n_frequencies=77, frequency_scale=0.5, d_embedding=34).double()
    periodic, linear = plr[0], plr[1]
    x = torch.randn(rows, 7, dtype=torch.float64) * 3
    upstream = torch.randn(rows, 7, 34, dtype=torch.float64)
    results = []
    for fused in (False, True):
        plr.zero_grad()
        xx = x.clone().requires_grad_()
        out = plr(xx) if fused else torch.relu(linear(periodic(xx)))
        out.backward(upstream)
        results.append((out.detach(), xx.grad, periodic.frequencies.grad, linear.weight.grad, linear.bias.grad))
    (out_e, gx_e, gf_e, gw_e, gb_e), (out_f, gx_f, gf_f, gw_f, gb_f) = results
    n_frequencies = 77
    features = periodic(x).detach()  # [cos, sin], |entries| <= 1
    w = linear.weight.detach()
    # forward: b + sum of 2K products
    terms = linear.bias.detach().abs() + features.abs() @ w.abs().mT
    forward_bound = 2 * gamma(2 * n_frequencies + 1) * terms
    assert torch.all((out_f - out_e).abs() <= forward_bound)
    # The ReLU masks agree where the pre-activation is beyond the forward's rounding (every
    # entry of this data): then both backward passes start from the same gradient g.
    pre = linear(features).detach()
    assert torch.all(pre.abs() > forward_bound)
    g = upstream * (pre > 0)
    g_flat, f_flat = g.reshape(-1, 34), features.reshape(-1, 2 * n_frequencies)
    assert torch.all((gw_f - gw_e).abs() <= 2 * gamma(len(g_flat)) * (g_flat.abs().mT @ f_flat.abs()))
    assert torch.all((gb_f - gb_e).abs() <= 2 * gamma(len(g_flat)) * g_flat.abs().sum(0))
    # d/d angle: g W (d terms) times cos or sin (|.| <= 1), a difference: within gamma_(d+2) M with
    # M = sum_e |g_e| (|Wcos_e| + |Wsin_e|); then the K-term (x) or n-term (frequencies) reduction.
    m = g.abs() @ (w[:, :n_frequencies].abs() + w[:, n_frequencies:].abs())
    two_pi_f = (2 * math.pi * periodic.frequencies.detach()).abs()
    bound_x = 2 * (gamma(34 + 2) + 2 * gamma(n_frequencies + 1)) * (m * two_pi_f).sum(-1)
    bound_f = 2 * (gamma(34 + 2) + 2 * gamma(rows + 2)) * 2 * math.pi * (m * x.abs()[..., None]).sum(0)
    assert torch.all((gx_f - gx_e).abs() <= bound_x)
    assert torch.all((gf_f - gf_e).abs() <= bound_f)


def test_plr_lite_function_passes_gradcheck():
    from stablenca.models.embeddings import _PLRLite

    generator = torch.Generator().manual_seed(0)
    x = torch.randn(4, 3, generator=generator, dtype=torch.float64)
    frequencies = torch.randn(3, 5, generator=generator, dtype=torch.float64)
    weight = torch.randn(6, 10, generator=generator, dtype=torch.float64)
    bias = torch.randn(6, generator=generator, dtype=torch.float64)
    inputs = tuple(t.requires_grad_() for t in (x, frequencies, weight, bias))
    assert torch.autograd.gradcheck(_PLRLite.apply, inputs)


def fused_gradients(embeddings, labels, candidate_labels, task, n_classes):
    """The fused objective's gradient of the shared embeddings (the Trainer's case)."""
    e = embeddings.clone().requires_grad_()
    out = modernnca_objective(e[:len(labels)], e, labels, candidate_labels, task=task, n_classes=n_classes)
    out.loss.backward()
    return e.grad


@pytest.mark.parametrize("task", ["multiclass", "regression"])
@pytest.mark.parametrize("spread", [1.0, 8.0])
def test_fused_backward_scale_changes_no_bit_without_subnormals(task, spread, monkeypatch):
    """H is built 2^64 higher and the gradients brought back (a power of two: exact). Where no value of
    the backward is subnormal the gradients are those of the unscaled computation, bit for bit (spread
    8 puts the far pairs' softmax near e^-50: small, but normal)."""
    queries, candidates, labels, candidate_labels = make_batch(5, 30, 40, 6, 3, task, False, spread)
    embeddings = candidates.float()
    if task == "regression":
        labels, candidate_labels = labels.float(), candidate_labels.float()
    with capture() as published:
        scaled = fused_gradients(embeddings, labels, candidate_labels, task, 3)
    assert float(published["softmax"][published["softmax"] > 0].min()) > torch.finfo(torch.float32).tiny * 2 ** 24
    monkeypatch.setattr(neighbours, "_BACKWARD_SCALE", 1.0)
    assert torch.equal(scaled, fused_gradients(embeddings, labels, candidate_labels, task, 3))


@pytest.mark.parametrize("task", ["multiclass", "regression"])
def test_fused_backward_with_an_underflowed_softmax(task, monkeypatch):
    """Far pairs whose softmax is subnormal (spread 400): the scaled and the unscaled backward are the
    same float32 operations in the same order, so each is within gradient_bound's gamma of the exact
    gradient (float32's unit roundoff), and the unscaled one also carries the roundings it makes below
    the smallest normal number: at most 2^-150 each (half the subnormal spacing), at most 3C + 12 of
    them per coordinate (gradient_bound's count), each times at most the largest row factor
    a = 1 / (B (u + 1e-7)) <= 1e7 / B (classification) or 2 |u - y| / B (regression) and the largest
    embedding coordinate."""
    queries, candidates, labels, candidate_labels = make_batch(6, 30, 40, 6, 3, task, False, 400.0)
    embeddings = candidates.float()
    if task == "regression":
        labels, candidate_labels = labels.float(), candidate_labels.float()
    with capture() as published:
        scaled = fused_gradients(embeddings, labels, candidate_labels, task, 3)
    softmax = published["softmax"]
    assert bool(((softmax > 0) & (softmax < torch.finfo(torch.float32).tiny)).any())
    monkeypatch.setattr(neighbours, "_BACKWARD_SCALE", 1.0)
    unscaled = fused_gradients(embeddings, labels, candidate_labels, task, 3)
    points = embeddings.double()
    bound_q, bound_c = gradient_bound(points[:30], points, labels.double() if task == "regression" else labels,
                                      candidate_labels.double() if task == "regression" else candidate_labels,
                                      task, 3, 1.0, unit=2.0 ** -24)
    bound = bound_c.clone()
    bound[:30] += bound_q
    n = 3 * len(points) + 12
    spread = float(candidate_labels.abs().max() + labels.abs().max()) if task == "regression" else 0.0
    row_factor = 2 * spread / 30 if task == "regression" else 1e7 / 30
    bound += n * 2.0 ** -150 * max(1.0, row_factor) * max(1.0, float(points.abs().max()))
    assert torch.isfinite(scaled).all()
    assert torch.all((scaled.double() - unscaled.double()).abs() <= bound)


def test_fused_backward_falls_back_when_the_scale_overflows(monkeypatch):
    queries, candidates, labels, candidate_labels = make_batch(7, 20, 30, 5, 3, "multiclass", False, 1.0)
    embeddings = candidates.float()
    monkeypatch.setattr(neighbours, "_BACKWARD_SCALE", 1.0)
    unscaled = fused_gradients(embeddings, labels, candidate_labels, "multiclass", 3)
    monkeypatch.setattr(neighbours, "_BACKWARD_SCALE", 2.0 ** 200)  # every scaled product overflows
    assert torch.equal(fused_gradients(embeddings, labels, candidate_labels, "multiclass", 3), unscaled)
