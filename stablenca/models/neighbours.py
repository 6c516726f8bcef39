"""Who the neighbours are: training candidates and prediction readouts.

Training schemes (they return the inputs every loss formulation takes):

* :func:`in_batch_pairs` — the student's: candidates are the batch itself,
  ``distances = cdist(E, E)``, self-pairs masked.
* :func:`sampled_pool_pairs` — TALENT's: the batch is removed from the training
  pool, ``sample_rate`` of the rest is sampled, the batch is prepended and the
  self-pairs (the leading diagonal) are masked.

Readouts (predictions for query rows given the training split):

* :func:`soft_neighbour_readout` — ModernNCA's ``softmax(-d/T) @ y_candidates``
  over the whole training split, streamed over candidate chunks so memory is
  O(queries × chunk), not O(queries × N).
* :func:`knn_readout` — the student's k-nearest neighbours (scikit-learn).
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import torch
import torch.nn.functional as F
from torch.autograd.function import once_differentiable
from torch.utils._python_dispatch import is_in_torch_dispatch_mode

from ..errors import ConfigError


@dataclasses.dataclass
class Pairs:
    """What a loss formulation needs for one training step."""

    distances: torch.Tensor  # (B, C), already divided by T
    labels: torch.Tensor  # (B,)
    candidate_labels: torch.Tensor  # (C,)
    self_mask: torch.Tensor  # (B, C) bool
    n_candidates_sampled: int = 0


def divided_by(distances: torch.Tensor, temperature: float) -> torch.Tensor:
    """``distances / temperature``, skipped at T = 1 (TALENT's default).

    ``x / 1.0 == x`` exactly in IEEE arithmetic, so the result is the same bits; the
    skip saves one pass over the (B, C) matrix forward and one backward.
    """
    return distances if temperature == 1.0 else distances / temperature


def ops_observed() -> bool:
    """Whether a tracer or a compiler sees every tensor op now (a dispatch or function mode, dynamo):
    then stablenca's shortcuts step aside and torch's own ops run."""
    return is_in_torch_dispatch_mode() or torch._C._is_torch_function_mode_enabled() or torch.compiler.is_compiling()


#: The scale at which :class:`_Distances`' backward works: it lifts every float32 and float64 subnormal
#: (down to 2^-149 and 2^-1074) above the smallest normal number.
_BACKWARD_SCALE = 2.0 ** 64


class _Distances(torch.autograd.Function):
    """``torch.cdist(x1, x2)`` (its bits), whose backward is torch's own for it, evaluated 2^64 higher.

    torch's backward (``_euclidean_dist_backward``) divides the incoming gradient by the distances
    and multiplies the result by both inputs. When the loss above has underflowed (the student's
    ``exp(-d)``), much of that (B, C) matrix is subnormal, and a CPU multiplies subnormal operands
    on a slow path: for a step's 1024 x 1848 distances, about 30x the time of a normal gradient
    (``python bench/underflow_cost.py``), most of a late ``ratio_eps`` step. Here the matrix is
    multiplied by 2^64 before the products and the two gradients by 2^-64 after them. Scaling by a
    power of two is exact, so the result is torch's bit for bit wherever torch's computation holds no
    subnormal number. Where it does, this one keeps what torch rounds away below the smallest normal
    number; the two differ by those roundings and what they carry into the sums
    (tests/test_distances.py bounds it). If the scaled computation overflows, or the gradient is not
    finite, torch's is computed as it is, inf and NaN included.
    """

    @staticmethod
    def forward(ctx, x1, x2):
        distances = torch.cdist(x1, x2, p=2)
        ctx.save_for_backward(x1, x2, distances)
        return distances

    @staticmethod
    @once_differentiable
    def backward(ctx, grad):
        x1, x2, distances = ctx.saved_tensors
        needs = ctx.needs_input_grad
        return lifted_gradients(lambda scale: _euclidean_backward(grad, x1, x2, distances, needs, scale))


def lifted_gradients(compute):
    """``compute(scale)``'s gradients (a tuple, None for an input that needs none), computed from a
    (B, C) matrix ``scale`` times the true one, brought back by 1 / scale: with ``_BACKWARD_SCALE``,
    and with no scale where those are not finite (an overflow, or a non-finite gradient: then the
    unscaled computation's own numbers, inf and NaN included). See :class:`_Distances`."""
    grads = tuple(None if g is None else g.mul_(1.0 / _BACKWARD_SCALE) for g in compute(_BACKWARD_SCALE))
    if all(g is None or bool(torch.isfinite(g).all()) for g in grads):
        return grads
    return compute(1.0)


def _euclidean_backward(grad, x1, x2, distances, needs, scale: float):
    """torch's gradients of ``cdist(x1, x2)`` on its matrix-product path, with the (B, C) matrix times ``scale``."""
    if scale != 1.0:
        # scale * grad / distances in one pass (the kernel computes self + value * t1 / t2, and adding
        # -0.0 changes no value, -0.0 included): no pass more than torch's
        ratio = torch.addcdiv(grad.new_full((), -0.0), grad, distances, value=scale)
    else:
        ratio = grad / distances
    ratio.masked_fill_(distances == 0, 0)  # the subgradient 0 at a zero distance, as torch takes it
    grad_x1 = x1 * ratio.sum(-1, True) - ratio.matmul(x2) if needs[0] else None
    grad_x2 = x2 * ratio.sum(-2, False).unsqueeze(-1) - ratio.mT.matmul(x1) if needs[1] else None
    return grad_x1, grad_x2


def euclidean_distances(x1: torch.Tensor, x2: torch.Tensor) -> torch.Tensor:
    """``torch.cdist(x1, x2, p=2)``: the same values, and on the CPU a backward that stays fast when the
    gradient has underflowed (:class:`_Distances`).

    Where torch would not take its matrix-product path (25 rows or fewer on both sides), under
    autocast, and while a tracer or a compiler watches (:func:`ops_observed`), this is torch.cdist itself.

    >>> x = torch.tensor([[0.0, 0.0], [3.0, 4.0]])
    >>> euclidean_distances(x, x)
    tensor([[0., 5.],
            [5., 0.]])
    """
    if (x1.device.type == "cpu" and x1.dtype in (torch.float32, torch.float64) and x1.dim() == x2.dim() == 2
            and (x1.shape[0] > 25 or x2.shape[0] > 25) and (x1.requires_grad or x2.requires_grad)
            and torch.is_grad_enabled() and not torch.is_autocast_enabled("cpu") and not ops_observed()):
        return _Distances.apply(x1, x2)
    return torch.cdist(x1, x2, p=2)


def exp_floor(dtype: torch.dtype) -> float:
    """The smallest argument stablenca's own kernels pass to exp (float32: -71.3): exp of it is the
    smallest normal number times e^16, so neither the exp, nor a division of its result by a distance
    below 8.8e6, nor its product with a target of magnitude 1.2e-7 or more underflows. Arguments
    below it are raised to it (the fused ``nca_logspace`` kernel, the evaluation readout): torch's
    CPU exp takes a slow path for each result that underflows, and a matrix product with subnormal
    operands is slower still (``bench/underflow_cost.py``). -inf (nothing raised) where that is not
    far below 0: float16's normal range ends at e^-9.7, so raising there would change results, not
    only an underflowing tail.

    >>> round(exp_floor(torch.float32), 2), exp_floor(torch.float16)
    (-71.34, -inf)
    """
    floor = math.log(torch.finfo(dtype).tiny) + 16
    return floor if floor < -32 else -math.inf


#: The self-pair masks handed out, one per (batch, width, device), with the version they were made at.
#: Every step of one shape gets the same read-only (B, C) mask instead of a new 1.9 MB one; an
#: in-place write to it (or to any view: views share the version counter) retires it, and the next
#: call builds a fresh one. Writes through numpy bypass the counter: do not write into it.
_SELF_MASKS: dict[tuple, tuple[torch.Tensor, int]] = {}
_SELF_MASKS_KEPT = 8


def leading_self_mask(batch: int, width: int, device: torch.device | str = "cpu") -> torch.Tensor:
    """The (batch, width) bool mask of the self pairs (i, i), i < batch: the queries are the candidates'
    leading rows (both training schemes). Shared between calls: treat it as read-only.

    >>> leading_self_mask(2, 3).int().tolist()
    [[1, 0, 0], [0, 1, 0]]
    >>> leading_self_mask(2, 3) is leading_self_mask(2, 3)
    True
    """
    key = (batch, width, str(device))
    kept = _SELF_MASKS.get(key)
    if kept is not None and kept[0]._version == kept[1]:
        return kept[0]
    mask = torch.zeros((batch, width), dtype=torch.bool, device=device)
    mask[:, :batch].fill_diagonal_(True)
    if key not in _SELF_MASKS and len(_SELF_MASKS) >= _SELF_MASKS_KEPT:
        _SELF_MASKS.pop(next(iter(_SELF_MASKS)))  # the oldest shape
    _SELF_MASKS[key] = (mask, mask._version)
    return mask


def is_leading_self_mask(mask: torch.Tensor) -> bool:
    """Whether ``mask`` is, or views in full, a :func:`leading_self_mask` that nobody has written to
    (so the probes need not read it to know where the self pairs are)."""
    if mask.dim() != 2:
        return False
    kept = _SELF_MASKS.get((*mask.shape, str(mask.device)))
    return (kept is not None and mask.data_ptr() == kept[0].data_ptr() and mask.stride() == kept[0].stride()
            and mask.dtype == torch.bool and mask._version == kept[1])


def in_batch_pairs(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> Pairs:
    """The student's pairs: every row of the batch against every other row."""
    embeddings = model(x)
    distances = divided_by(torch.cdist(embeddings, embeddings, p=2), getattr(model, "temperature", 1.0))
    self_mask = torch.eye(len(x), dtype=torch.bool, device=x.device)
    return Pairs(distances, y, y, self_mask)


@dataclasses.dataclass
class Rows:
    """One step's embedded rows: the batch first, then the sampled candidates."""

    embeddings: torch.Tensor  # (C, dim); rows [0, B) are the batch
    labels: torch.Tensor  # (B,)
    candidate_labels: torch.Tensor  # (C,)
    n_candidates_sampled: int = 0


def sampled_pool_rows(
    model: torch.nn.Module,
    x_train: torch.Tensor,
    y_train: torch.Tensor,
    batch_indices: torch.Tensor,
    *,
    sample_rate: float,
    generator: torch.Generator,
) -> Rows:
    """TALENT's training candidates for one batch, embedded (``ModernNCAMethod.train_epoch`` + ``forward``)."""
    pool_mask = torch.ones(len(x_train), dtype=torch.bool, device=x_train.device)
    pool_mask[batch_indices] = False
    pool = pool_mask.nonzero().squeeze(1)
    n_sampled = int(len(pool) * sample_rate)
    # NOTE[DIFF]: TALENT draws with the global RNG (torch.randperm); an explicit
    # generator makes a failing step replayable from its saved state. The Trainer starts it
    # where the initialisation left the global stream, so the numbers have TALENT's order
    # except one draw per epoch that TALENT's validation DataLoader takes for its seed.
    order = torch.randperm(len(pool), generator=generator, device="cpu").to(pool.device)
    candidates = pool[order[:n_sampled]]
    # NOTE[DIFF]: TALENT embeds the batch and the candidates in two calls; one call
    # gives the same rows (no batch statistics are involved with n_blocks=0) and
    # halves the Python overhead. With n_blocks>0 BatchNorm sees the union, which
    # differs slightly from TALENT's two separate batches. Measured effect with n_blocks=0
    # (bench/talent_lockstep.py, same start and random stream): float64 weights agree to
    # <= 1e-8 relative after 16 epochs; float32 differs by rounding from the first step
    # (the shared layers' gradient is summed in a different order), which Adam's
    # normalised update amplifies, so float32 runs match TALENT's in distribution
    # (bench/talent_side_by_side.py), not bit for bit.
    embeddings = model(torch.cat([x_train[batch_indices], x_train[candidates]]))
    candidate_labels = torch.cat([y_train[batch_indices], y_train[candidates]])
    return Rows(embeddings, y_train[batch_indices], candidate_labels, n_sampled)


def sampled_pool_pairs(
    model: torch.nn.Module,
    x_train: torch.Tensor,
    y_train: torch.Tensor,
    batch_indices: torch.Tensor,
    *,
    sample_rate: float,
    generator: torch.Generator,
) -> Pairs:
    """TALENT's training candidates for one batch, as distances (:func:`sampled_pool_rows`)."""
    rows = sampled_pool_rows(model, x_train, y_train, batch_indices, sample_rate=sample_rate, generator=generator)
    batch_size = len(batch_indices)
    distances = divided_by(euclidean_distances(rows.embeddings[:batch_size], rows.embeddings), model.temperature)
    self_mask = leading_self_mask(batch_size, distances.shape[1], distances.device)
    return Pairs(distances, rows.labels, rows.candidate_labels, self_mask, rows.n_candidates_sampled)


def soft_neighbour_readout(
    queries: torch.Tensor,
    candidates: torch.Tensor,
    targets: torch.Tensor,
    *,
    temperature: float = 1.0,
    chunk_size: int = 4096,
) -> torch.Tensor:
    """``softmax(-cdist(queries, candidates) / T) @ targets``, streamed over candidate chunks.

    ``targets`` is (N, K) (one-hot classes or a column of regression targets). The
    softmax is accumulated online (running row maximum, rescaled sums), so only a
    (Q, chunk) block of distances exists at a time and the result equals the
    one-shot softmax up to rounding. Without autograd (evaluation), a weight below
    e^floor times the row's largest (:func:`exp_floor`; float32: 1e-31) is raised to
    that instead of underflowing: each adds at most e^floor to a row sum of at least 1.

    >>> q, c = torch.randn(5, 3, dtype=torch.float64), torch.randn(50, 3, dtype=torch.float64)
    >>> t = F.one_hot(torch.arange(50) % 3).double()
    >>> full = F.softmax(-torch.cdist(q, c), dim=1) @ t
    >>> torch.allclose(soft_neighbour_readout(q, c, t, chunk_size=7), full)
    True
    """
    if chunk_size < 1:
        raise ConfigError(f"{chunk_size=} must be >= 1", fix="use a chunk size such as 4096")
    if len(candidates) == 0:
        raise ConfigError("the candidate set is empty", fix="train on a split with at least one row")
    row_max = torch.full((len(queries),), -math.inf, dtype=queries.dtype, device=queries.device)
    row_sum = torch.zeros(len(queries), dtype=queries.dtype, device=queries.device)
    # Accumulated transposed, (K, Q) = targets^T @ weights^T: MKL runs (Q, chunk) @ (chunk, K) with
    # few columns 2-5x slower than this orientation (losses.builtin.per_class); rounding only differs.
    targets_t = targets.mT.contiguous()
    weighted = torch.zeros(targets.shape[1], len(queries), dtype=queries.dtype, device=queries.device)
    if torch.is_grad_enabled() and (queries.requires_grad or candidates.requires_grad):
        for start in range(0, len(candidates), chunk_size):
            logits = -divided_by(torch.cdist(queries, candidates[start:start + chunk_size], p=2), temperature)
            new_max = torch.maximum(row_max, logits.max(dim=1).values)
            rescale = torch.exp(row_max - new_max)  # exp(-inf) = 0 on the first chunk
            weights = torch.exp(logits - new_max[:, None])
            row_sum = row_sum * rescale + weights.sum(dim=1)
            weighted = weighted * rescale + targets_t[:, start:start + chunk_size] @ weights.mT
            row_max = new_max
        return weighted.mT / row_sum[:, None]
    # Evaluation (no autograd): the same arithmetic in place, so each chunk allocates one
    # (Q, chunk) block instead of four; about 1.5x faster (bench/proposals.py). With the row
    # minimum m of the distances d (m = -max of the logits -d): logits - max = (-d) + m = m - d,
    # the same rounding, without the negation pass.
    # Arguments below exp_floor are raised to it: no weight underflows, so neither the exp nor the
    # product below takes its slow path (bench/underflow_cost.py: the evaluation after a student's
    # loss has spread the embeddings). Each raised weight adds at most e^floor (float32: 1e-31) to
    # a row sum of at least 1, far below a float32 rounding; the weights above the floor keep their
    # bits.
    floor = exp_floor(queries.dtype)
    row_min = row_max.neg_()  # +inf
    for start in range(0, len(candidates), chunk_size):
        chunk = divided_by(torch.cdist(queries, candidates[start:start + chunk_size], p=2), temperature)
        new_min = torch.minimum(row_min, chunk.amin(dim=1))
        rescale = torch.exp(new_min - row_min)  # exp(-inf) = 0 on the first chunk
        weights = torch.sub(new_min[:, None], chunk, out=chunk).clamp_min_(floor).exp_()
        row_sum.mul_(rescale).add_(weights.sum(dim=1))
        weighted.mul_(rescale).addmm_(targets_t[:, start:start + chunk_size], weights.mT)
        row_min = new_min
    return weighted.mT / row_sum[:, None]


def knn_readout(train_embeddings: np.ndarray, train_targets: np.ndarray, query_embeddings: np.ndarray,
                *, task: str, n_classes: int | None, k: int = 3) -> np.ndarray:
    """k-nearest-neighbour prediction (scikit-learn): class probabilities (Q, K) or values (Q,)."""
    from sklearn.neighbors import KNeighborsClassifier, KNeighborsRegressor

    k = min(k, len(train_embeddings))
    if task == "regression":
        return KNeighborsRegressor(n_neighbors=k).fit(train_embeddings, train_targets).predict(query_embeddings)
    knn = KNeighborsClassifier(n_neighbors=k).fit(train_embeddings, train_targets)
    probabilities = np.zeros((len(query_embeddings), n_classes))
    probabilities[:, knn.classes_] = knn.predict_proba(query_embeddings)
    return probabilities


def onehot_targets(y: torch.Tensor, task: str, n_classes: int | None, dtype: torch.dtype) -> torch.Tensor:
    """Candidate targets as TALENT feeds them to the readout: one-hot, or a column."""
    if task == "regression":
        return y.to(dtype)[:, None]
    return F.one_hot(y, n_classes).to(dtype)
