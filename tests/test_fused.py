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


def both(queries, candidates, labels, candidate_labels, task, n_classes, temperature=1.0):
    """(loss, published, grad_q, grad_c) of the eager path and of the fused one."""
    results = []
    for path in (eager, modernnca_objective):
        q, c = queries.clone().requires_grad_(), candidates.clone().requires_grad_()
        with capture() as published:
            if path is eager:
                out = eager(q, c, labels, candidate_labels, task, n_classes, temperature)
            else:
                out = modernnca_objective(q, c, labels, candidate_labels, task=task, n_classes=n_classes,
                                          temperature=temperature)
        out.loss.backward()
        results.append((out.loss.detach(), published, q.grad, c.grad))
    return results


def gradient_bound(queries, candidates, labels, candidate_labels, task, n_classes, temperature):
    """Componentwise bound on |grad_fused - grad_eager| in float64 (both from the same forward).

    Both paths take the same distances d, softmax s and prediction u (same bits). They differ
    in how dL/dd_ij = a_i s_ij r_ij / T is rounded: the eager path forms the row sum
    sum_k s_ik dL/ds_ik in the softmax backward (C terms: gamma_C relative, Higham 3.1), the
    fused one uses u from the forward's product (also C terms). With
    A_ij = |a_i s_ij / (T d_ij)| and R_ij bounding |r_ij| and the scale of that row sum
    (1 for classification, where 0 <= u_iy <= 1 and r = m - u_iy; sum_k s_ik |t_k| + |t_j| +
    |u_i| for regression), each path's dL/dd_ij / d_ij is within (gamma_C + 4u) A_ij R_ij of
    the exact value (the row sum, then a subtraction, two products, one division). The
    products with the coordinates add gamma_(C+2) per path (C terms and the q_i * rowsum
    term, Higham 3.5). Two paths, so

        |Delta grad_q_ik| <= 2 (2 gamma_(C+2) + 4u) sum_j A_ij R_ij (|q_ik| + |c_jk|),

    and the same with the roles of i and j exchanged for the candidates.
    """
    n = candidates.shape[0] + 2
    gamma = n * U64 / (1 - n * U64)
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
    factor = 2 * (2 * gamma + 4 * U64)
    bound_q = factor * (weights.sum(1)[:, None] * queries.abs() + weights @ candidates.abs())
    bound_c = factor * (weights.sum(0)[:, None] * candidates.abs() + weights.mT @ queries.abs())
    return bound_q, bound_c


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
    assert sorted(pub_e) == sorted(pub_f)
    for name in pub_e:
        assert torch.equal(pub_e[name], pub_f[name]), name
    bound_q, bound_c = gradient_bound(queries, candidates, labels, candidate_labels, task, n_classes, temperature)
    assert torch.all((gq_f - gq_e).abs() <= bound_q)
    assert torch.all((gc_f - gc_e).abs() <= bound_c)


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


def test_fused_nonfinite_input_is_not_hidden():
    # A NaN embedding must reach the gradients (the sentinel looks for it), not be zeroed
    # by the d = 0 rule.
    queries = torch.tensor([[0.0, 0.0], [1.0, float("nan")], [3.0, 1.0]], requires_grad=True)
    out = modernnca_objective(queries, queries, torch.tensor([0, 0, 1]), torch.tensor([0, 0, 1]),
                              task="multiclass", n_classes=2)
    out.loss.backward()
    assert not torch.isfinite(queries.grad).all()


@pytest.mark.parametrize("options", [dict(), dict(task="regression"), dict(model="seed", loss="modernnca")])
def test_trainer_kernels_take_the_same_forward(options):
    """Eager and fused Trainers: the same loss and published tensors, bit for bit, on a step."""
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
    assert list(eager_ctx.published) == list(fused_ctx.published)
    for name, value in eager_ctx.published.items():
        if isinstance(value, torch.Tensor):
            assert torch.equal(value, fused_ctx.published[name]), name
        else:
            assert value == fused_ctx.published[name]


def test_fused_kernel_leaves_other_losses_eager():
    trainer = Trainer(TrainConfig(model="seed", loss="ratio", epochs=1, kernel="fused"))
    assert not trainer.fused


def test_unknown_kernel_is_a_config_error():
    from stablenca.errors import ConfigError

    with pytest.raises(ConfigError, match="unknown kernel"):
        TrainConfig(kernel="compiled").resolved()


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("rows", [1, 37, 1848])
def test_periodic_embedding_backward_is_autograds_bit_for_bit(dtype, rows):
    """The PLR cos/sin backward reuses the forward's values; it must give autograd's exact bits."""
    from stablenca.models.embeddings import _Periodic

    generator = torch.Generator().manual_seed(rows)
    x = torch.randn(rows, 7, generator=generator, dtype=dtype) * 3
    frequencies = torch.randn(7, 77, generator=generator, dtype=dtype) * 0.0443
    upstream = torch.randn(rows, 7, 154, generator=generator, dtype=dtype)

    def eager_periodic(x, frequencies):
        angles = 2 * math.pi * frequencies[None] * x[..., None]
        return torch.cat([torch.cos(angles), torch.sin(angles)], dim=-1)

    results = []
    for function in (eager_periodic, _Periodic.apply):
        xx, ff = x.clone().requires_grad_(), frequencies.clone().requires_grad_()
        out = function(xx, ff)
        out.backward(upstream)
        results.append((out, xx.grad, ff.grad))
    for eager_value, fused_value in zip(*results):
        assert torch.equal(eager_value, fused_value)
