"""Per-batch statistics from what a loss published and from the gradients.

:func:`batch_statistics` turns one step into a flat dict (one JSONL line). It reads
only the published names of :mod:`stablenca.publish` (``distances``,
``same_class_mask``, ``self_mask``, ``exp_out``, ``p_same``, ``p_diff``,
``softmax``, ``temperature``); a loss that publishes nothing still gets loss,
gradient and parameter statistics. All tensor statistics are gathered first and
moved to the host in one transfer.

Keys (NaN/Inf are kept as values):

* ``loss``, ``loss_nan``, ``loss_inf`` (non-finite per-sample losses), ``rows_excluded``
* ``grad_norm`` (total L2), ``grad_2.0_norm/NAME`` per parameter, ``grad_nonfinite``
* ``param_norm`` (total), ``param_norm/NAME``
* ``d_min``, ``d_max``, ``d_p50``, ``d_p99`` over all non-self pairs; the same with
  ``d_same_`` and ``d_other_`` prefixes; ``max_d_over_T`` (the largest finite d/T, the
  argument of exp)
* ``exp_zero`` (exp outputs that underflowed to exactly 0.0 from a finite distance),
  ``exp_subnormal``, ``softmax_zero`` (the same for softmax probabilities)
* ``p_same_min``, ``p_diff_min``, ``rows_without_same_class`` (the two minima may come from
  different rows)
* ``ab_backward_a``/``_b``, ``ab_same_a``/``_b``, ``ab_diff_a``/``_b``: (a, b) = (−ln P_same,
  −ln P_diff) of one real row each (:func:`row_coordinates`)
"""

from __future__ import annotations

import contextlib
import functools
import json
import math
from typing import Any

import numpy as np
import torch

from ..models.neighbours import is_leading_self_mask, ops_observed
from ..publish import capture

#: Above this many pairs, the same/other-class ranges and the quantiles come from an
#: evenly strided sample of query rows (``probe_sampled`` is then true in the record);
#: the overall ``d_min``/``d_max`` and the exp/softmax underflow counts stay exact.
#: Exact split statistics on a 1024 x 1848 matrix cost about as much as the step.
QUANTILE_SAMPLE = 1 << 16


def _host_array(tensor: torch.Tensor) -> np.ndarray:
    """The values on the host as a numpy array, exactly (half precisions widened to float32)."""
    tensor = tensor.detach().cpu()
    if tensor.dtype in (torch.float16, torch.bfloat16):
        tensor = tensor.float()
    return tensor.numpy()


def _range(values: np.ndarray, prefix: str, out: dict[str, Any]) -> None:
    """min, max, p50, p99 of ``values`` as floats (NaN when there are none; a NaN value makes min/max NaN).

    ``values`` is reordered in place (the callers pass a selection made for this call).
    """
    if values.size == 0:
        out[f"{prefix}min"] = out[f"{prefix}max"] = out[f"{prefix}p50"] = out[f"{prefix}p99"] = math.nan
        return
    # Selection is exact (NaN sorts last, as in torch.sort), so these are the sorted array's
    # entries. Two single selections, the second over the upper part only: numpy's partition
    # with a list of ranks took 1.4 ms on a 66k sample where one rank takes 0.05 ms. In place:
    # no copy of the sample, and the extremes come from the parts that must hold them.
    low, high = (max(1, math.ceil(q * values.size)) - 1 for q in (0.5, 0.99))
    values.partition(low)
    median, smallest = float(values[low]), values[:low + 1].min()
    upper = values[low:]
    upper.partition(high - low)  # moves values[low]: read above
    largest = float(upper[high - low:].max())  # every NaN is in this top part
    out[f"{prefix}min"] = math.nan if math.isnan(largest) else float(smallest)
    out[f"{prefix}max"] = largest
    out[f"{prefix}p50"], out[f"{prefix}p99"] = median, float(upper[high - low])


def distance_statistics(published: dict[str, Any], reductions: PublishedReductions | None = None) -> dict[str, Any]:
    """Distance range overall, same-class and other-class; exp/softmax underflow counts
    (0-d tensors, and floats for what was computed on the host). ``reductions``: those taken as the
    matrices were published (:class:`PublishedReductions`), used where they still apply."""
    out: dict[str, Any] = {}
    distances = published.get("distances")
    if distances is None:
        return out
    distances = distances.detach()
    self_mask = published.get("self_mask")
    if self_mask is None:
        self_mask = torch.zeros_like(distances, dtype=torch.bool)
    same = published.get("same_class_mask")
    stride = max(1, math.ceil(distances.numel() / QUANTILE_SAMPLE))
    out["probe_sampled"] = stride > 1
    # The full-matrix statistics first: when the self pairs are the leading diagonal and every
    # other distance is finite (the Trainer's steps), the sample needs neither mask below.
    leading = distances.dim() == 2 and _is_leading_diagonal(self_mask)
    overall = (_diagonal_statistics(distances, published, exact_range=stride > 1, reductions=reductions)
               if leading else None)
    rows = slice(None, None, stride)
    # The (at most QUANTILE_SAMPLE) sampled pairs are selected on the host, flat, with
    # np.compress: torch's masked selection goes through nonzero, and numpy's boolean
    # indexing of a 2-D array took twice as long on a mixed mask (same class: 0.1 ms).
    sample = np.ascontiguousarray(_host_array(distances[rows])).ravel()
    if overall is not None:  # all the sample's pairs but its self pairs: row k at column k * stride
        sampled = np.arange(0, distances.shape[0], stride)
        sample_pairs = np.ones(sample.size, dtype=bool)
        sample_pairs[np.arange(len(sampled)) * distances.shape[1] + sampled] = False
    else:
        # +inf marks masked pairs on purpose; NaN distances are kept so they show in min/max.
        sample_pairs = ~np.isinf(sample)
        sample_pairs &= ~_host_array(self_mask[rows]).ravel()
    # Boolean indexing where the mask is nearly all True (only self pairs left out), np.compress
    # where it is mixed: each is about twice as fast as the other there.
    _range(sample[sample_pairs] if overall is not None else np.compress(sample_pairs, sample), "d_", out)
    if same is not None:
        same_sample = _host_array(same[rows]).ravel()
        _range(np.compress(sample_pairs & same_sample, sample), "d_same_", out)
        _range(np.compress(sample_pairs & ~same_sample, sample), "d_other_", out)
        counts = published.get("same_class_counts")
        if counts is not None:  # the loss counted them already: no pass over the mask
            out["rows_without_same_class"] = torch.count_nonzero(counts == 0)
        elif same.shape[1]:  # any() over a bool matrix is a slow CPU reduction; amax over its bytes is fast
            out["rows_without_same_class"] = torch.count_nonzero(same.view(torch.uint8).amax(dim=1) == 0)
        else:
            out["rows_without_same_class"] = torch.count_nonzero(~same.any(dim=1))
    if overall is None:  # a leading diagonal with a non-finite distance: the general path (the same numbers)
        overall = _overall_statistics(distances, self_mask, published, exact_range=stride > 1, fast=not leading)
    out.update(overall)
    # distances are already divided by T; max d/T is the largest argument of exp(-d/T).
    out["max_d_over_T"] = out["d_max"]
    for name in ("p_same", "p_diff"):
        values = published.get(name)
        if values is not None and values.numel():
            out[f"{name}_min"] = values.detach().min()
            out[f"{name}_zero"] = torch.count_nonzero(values.detach() == 0)
    out.update(row_coordinates(published.get("p_same"), published.get("p_diff")))
    return out


def row_coordinates(p_same: torch.Tensor | None, p_diff: torch.Tensor | None) -> dict[str, torch.Tensor]:
    """(a, b) = (−ln P_same, −ln P_diff) of real rows, so that a and b come from the same row.

    Three rows: ``backward``, the largest 2b − a (DivBackward0 of ``log(P_same / P_diff)``
    forms e^(2b − a) and overflows past ln(max float)); ``same``, the largest a; ``diff``,
    the largest b. In float64 from the stored sums: a sum that is 0.0 gives +inf, a sum
    above 1 a negative value. A NaN score (both sums 0) never wins over a number. O(B).

    >>> ab = row_coordinates(torch.tensor([1.0, 0.5, 2.0]), torch.tensor([1.0, 0.01, 0.5]))
    >>> int(round(float(ab["ab_backward_b"]) / math.log(100))), round(float(ab["ab_same_a"]), 4)
    (1, 0.6931)
    """
    if p_same is None or p_diff is None or not p_same.numel() or p_same.shape != p_diff.shape:
        return {}
    a = -torch.log(p_same.detach().double())
    b = -torch.log(p_diff.detach().double())
    out: dict[str, torch.Tensor] = {}
    for name, score in (("backward", 2 * b - a), ("same", a), ("diff", b)):
        row = torch.where(torch.isnan(score), -math.inf, score).argmax()
        out[f"ab_{name}_a"], out[f"ab_{name}_b"] = a[row], b[row]
    return out


def _off_diagonal(matrix: torch.Tensor) -> list[torch.Tensor]:
    """Every entry of a contiguous (B, C) matrix, B <= C, except the leading diagonal: two views.

    Row k of the first view (``B - 1`` rows of ``C``) is what lies in memory strictly between
    diagonal entries k and k + 1; the second view is the last row after its diagonal entry.
    No copy and no mask: one reduction over them reads each non-self pair once. Empty views
    (B = 1, or B = C) are left out.
    """
    batch, width = matrix.shape
    body = matrix.as_strided((batch - 1, width), (width + 1, 1), matrix.storage_offset() + 1)
    return [view for view in (body, matrix[batch - 1, batch:]) if view.numel()]


def _is_leading_diagonal(self_mask: torch.Tensor) -> bool:
    """The self pairs are exactly (i, i), i < B (both candidate schemes of the Trainer)."""
    if is_leading_self_mask(self_mask):  # the shared mask, unwritten: known without reading it
        return True
    batch, width = self_mask.shape
    if not (0 < batch <= width and self_mask.is_contiguous() and bool(self_mask.diagonal().all())):
        return False
    # amax over the bytes of the off-diagonal views: one fast pass, no index list
    return not any(bool(view.view(torch.uint8).amax()) for view in _off_diagonal(self_mask))


def _off_diagonal_reduction(matrix: torch.Tensor, reduction):
    """``reduction(matrix)`` (a min, a max or both) over a contiguous (B, C) CPU float matrix,
    0 < B <= C, without its leading diagonal, in one read of the matrix; None where numpy
    cannot view it.

    A 1024 x 1848 matrix (7.5 MB) has left the cache by the time the probes run, so each pass
    costs a read from memory: amin then amax over the off-diagonal views read it twice, and
    aminmax over them copies them first. Here the diagonal is overwritten, for one reduction
    of the whole matrix, by an off-diagonal entry (a value already in the set: no extreme
    moves, and a NaN stays a NaN), and put back bit for bit. The writes go through numpy, so
    autograd's version counter of the loss's tensor does not move.
    """
    batch, width = matrix.shape
    # Contiguous only: of a strided matrix, reshape(-1) below would be a copy, and the diagonal
    # written there would stay in the reduction.
    if matrix.device.type != "cpu" or matrix.dtype not in _FLOATS or matrix.requires_grad or \
            not matrix.is_contiguous() or not 0 < batch <= width or width < 2:
        return None
    array = matrix.numpy()
    diagonal = array.reshape(-1)[:batch * (width + 1):width + 1]  # B <= C: exactly the B entries (i, i)
    saved = diagonal.copy()
    try:
        diagonal[:] = array[0, 1]
        return reduction(matrix)
    finally:
        diagonal[:] = saved


def _off_diagonal_extremes(distances: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor] | None:
    """(min, max) of a contiguous (B, C) matrix without its leading diagonal (NaN propagates); None when
    there is no other pair."""
    extremes = _off_diagonal_reduction(distances, torch.aminmax)
    if extremes is None:
        pairs = _off_diagonal(distances)
        if not pairs:
            return None
        # amin and amax, not aminmax: aminmax copies a strided view first. torch.minimum/maximum
        # propagate NaN (Python's min() over tensors drops a NaN that comes second).
        extremes = (functools.reduce(torch.minimum, [view.amin() for view in pairs]),
                    functools.reduce(torch.maximum, [view.amax() for view in pairs]))
    return extremes


def _off_diagonal_underflow(values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(zeros, subnormals) of a contiguous (B, C) exp or softmax output without its leading diagonal."""
    tiny = torch.finfo(values.dtype).tiny
    smallest = _off_diagonal_reduction(values, torch.amin)
    if smallest is None:
        smallest = functools.reduce(torch.minimum, [view.amin() for view in _off_diagonal(values)])
    if bool(smallest >= tiny):  # nothing underflowed (a NaN compares False and is counted below)
        return torch.tensor(0), torch.tensor(0)
    # Over the whole contiguous matrix less its diagonal: vectorised passes, not the strided views
    return _underflow_counts(values, values.diagonal(), tiny, nonnegative=bool(smallest >= 0),
                             no_zeros=bool(smallest > 0))


#: What :class:`PublishedReductions` takes from each published name.
_EARLY = {"distances": _off_diagonal_extremes, "exp_out": _off_diagonal_underflow, "softmax": _off_diagonal_underflow}


class PublishedReductions:
    """A :func:`stablenca.publish.capture` sink that takes the probes' full-matrix reductions of each
    large published matrix as it arrives, while it is still in the cache.

    Those reductions (the distances' range, the exp or softmax minimum and, below the smallest
    normal number, the underflow counts) read a whole (B, C) matrix. After the backward and the
    optimizer step, when the recorder runs, a 1024 x 1848 float32 matrix has left the cache; just
    after the loss wrote it, the same reductions cost less (``bench/probe_cost.py`` compares the two:
    about 1 % of a ModernNCA step in its thirteenth round).

    :func:`batch_statistics` takes a result only for the same tensor at the same version
    (autograd's count of in-place writes), so a loss that changes a published matrix afterwards
    gets the reduction of what it left, as before: the same numbers either way. Small matrices
    (the held steps of :class:`DeferredSteps`) are left alone, and so is everything under a tracer
    or while compiling, where every op of the step is seen and the probes' are not the step's.
    """

    def __init__(self) -> None:
        self._results: dict[str, tuple[torch.Tensor, int, Any]] = {}

    def __setitem__(self, name: str, value: Any) -> None:
        reduce = _EARLY.get(name)
        if reduce is None or not isinstance(value, torch.Tensor) or value.numel() <= DEFERRED_PAIRS \
                or value.dim() != 2 or value.device.type != "cpu" or value.dtype not in _FLOATS \
                or not value.is_contiguous() or not 0 < value.shape[0] <= value.shape[1] or ops_observed():
            return
        result = reduce(value)
        if result is not None:
            self._results[name] = (value, value._version, result)

    @contextlib.contextmanager
    def collecting(self):
        """Forget the last step's results, then take this step's as the loss publishes its matrices
        (entered around forward + backward, beside the step's own :func:`~stablenca.publish.capture`)."""
        self._results.clear()
        with capture(into=self):
            yield self

    def get(self, name: str, value: torch.Tensor):
        """The reduction taken of ``value`` when it was published under ``name``, or None."""
        entry = self._results.get(name)
        if entry is None:
            return None
        kept, version, result = entry
        # the same memory, viewed the same way, unwritten since (publish() detaches, so identity
        # would miss the caller's alias; ``kept`` holds the storage, so no other tensor can reuse it)
        same = (value.data_ptr() == kept.data_ptr() and value.shape == kept.shape and value.stride() == kept.stride()
                and value.dtype == kept.dtype and value._version == version)
        return result if same else None

    def clear(self) -> None:
        self._results.clear()


def _reduced(reductions: PublishedReductions | None, name: str, value: torch.Tensor, reduce):
    early = reductions.get(name, value) if reductions is not None else None
    return early if early is not None else reduce(value)


def _diagonal_statistics(distances: torch.Tensor, published: dict[str, Any], *, exact_range: bool,
                         reductions: PublishedReductions | None = None) -> dict[str, torch.Tensor] | None:
    """:func:`_overall_statistics` when the self pairs are the leading diagonal and every other
    distance is finite, from reductions over :func:`_off_diagonal` views (or those ``reductions``
    took when the matrices were published); None otherwise."""
    if not distances.is_contiguous() or distances.shape[0] < 2 and distances.shape[1] < 2:
        return None
    extremes = _reduced(reductions, "distances", distances, _off_diagonal_extremes)
    if extremes is None:
        return None
    low, high = extremes
    if not bool(torch.isfinite(low) & torch.isfinite(high)):  # NaN propagates: both finite means all are
        return None
    out: dict[str, torch.Tensor] = {}
    if exact_range:
        out["d_min"], out["d_max"] = low.double(), high.double()
    for name, key in (("exp_out", "exp"), ("softmax", "softmax")):
        values = published.get(name)
        if values is None:
            continue
        if values.shape != distances.shape or not values.is_contiguous():
            return None
        out[f"{key}_zero"], out[f"{key}_subnormal"] = _reduced(reductions, name, values.detach(),
                                                               _off_diagonal_underflow)
    return out


def _underflow_counts(values: torch.Tensor, self_values: torch.Tensor, tiny: float, *,
                      nonnegative: bool = False, no_zeros: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """(zeros, subnormals) among ``values`` outside the self pairs: the counts over every entry less
    those over ``self_values`` (the self pairs' entries, few). For values known to be >= 0 (exp and
    softmax outputs), |v| < tiny is v < tiny, without an abs pass; ``no_zeros``: the smallest value
    outside the self pairs is known to be > 0, so there is no zero to count (a ModernNCA softmax
    that has just begun to underflow: one pass instead of two).

    CPU float32/float64 values are counted by numpy: both counts of an underflowed 1024 x 1848
    softmax take it 1.4 ms on one thread, torch (bool tensors, then ``count_nonzero``) 3.9 ms on two
    (``bench/talent_alternatives.py``), and a late ModernNCA step's softmax has mostly underflowed.
    The same counts: both compare IEEE values (NaN is neither 0 nor < tiny; -0.0 is 0)."""
    if values.device.type == "cpu" and values.dtype in _FLOATS and values.layout == torch.strided:
        values, self_values = (tensor.detach().resolve_neg().numpy() for tensor in (values, self_values))
        absolute, count, as_tensor = np.abs, np.count_nonzero, torch.tensor
    else:
        absolute, count, as_tensor = torch.abs, torch.count_nonzero, lambda counted: counted
    if not nonnegative:
        values, self_values = absolute(values), absolute(self_values)
    small = count(values < tiny) - count(self_values < tiny)
    if no_zeros:
        return torch.tensor(0), as_tensor(small)
    zero = count(values == 0) - count(self_values == 0)
    return as_tensor(zero), as_tensor(small - zero)


def _overall_statistics(distances: torch.Tensor, self_mask: torch.Tensor, published: dict[str, Any], *,
                        exact_range: bool, fast: bool = True) -> dict[str, torch.Tensor]:
    """The full-matrix statistics over finite non-self pairs: ``d_min``/``d_max`` (when
    ``exact_range``) and the exp/softmax zero and subnormal counts.

    The common case, every distance finite, needs no finiteness mask: a count over the
    non-self pairs is the count over all pairs minus the count over the (few) self pairs,
    and the range comes from reductions. Each full-matrix pass saved matters: the probes
    run on every step. Any NaN or inf distance takes the general path (``fast=False``),
    which gives the same numbers.
    """
    if fast and distances.dim() == 2 and _is_leading_diagonal(self_mask):
        diagonal = _diagonal_statistics(distances, published, exact_range=exact_range)
        if diagonal is not None:
            return diagonal
    out: dict[str, torch.Tensor] = {}
    if fast and distances.numel():
        low, high = torch.aminmax(distances)  # NaN propagates, so both finite means every entry is
        fast = bool(torch.isfinite(low) & torch.isfinite(high))
    if fast:
        self_distances = distances[self_mask]
        if exact_range:
            out["d_min"] = (low if not self_distances.numel() or self_distances.amin() > low
                            else distances.masked_fill(self_mask, math.inf).amin()).double()
            out["d_max"] = (high if not self_distances.numel() or self_distances.amax() < high
                            else distances.masked_fill(self_mask, -math.inf).amax()).double()
        for name, key in (("exp_out", "exp"), ("softmax", "softmax")):
            values = published.get(name)
            if values is None:
                continue
            out[f"{key}_zero"], out[f"{key}_subnormal"] = _underflow_counts(values, values[self_mask],
                                                                            torch.finfo(values.dtype).tiny)
        return out
    finite_pairs = ~self_mask & torch.isfinite(distances)
    if exact_range:
        out["d_min"] = torch.where(finite_pairs, distances, math.inf).amin().double()
        out["d_max"] = torch.where(finite_pairs, distances, -math.inf).amax().double()
    for name, key in (("exp_out", "exp"), ("softmax", "softmax")):
        values = published.get(name)
        if values is None:
            continue
        zero = (values == 0) & finite_pairs
        out[f"{key}_zero"] = torch.count_nonzero(zero)
        small = (values.abs() < torch.finfo(values.dtype).tiny) & finite_pairs
        out[f"{key}_subnormal"] = torch.count_nonzero(small) - out[f"{key}_zero"]
    return out


def batch_statistics(
    *,
    loss: torch.Tensor,
    per_sample: torch.Tensor | None,
    rows_excluded: int,
    published: dict[str, Any],
    named_parameters: list[tuple[str, torch.nn.Parameter]],
    grad_norms: torch.Tensor | None = None,
    param_norms: torch.Tensor | None = None,
    reductions: PublishedReductions | None = None,
) -> dict[str, Any]:
    """One flat record for one batch (see the module docstring for the keys).

    ``grad_norms`` and ``param_norms``, when given, are the float64 norms per parameter in
    ``named_parameters`` order that the trainer computed already (the same expression).
    ``reductions``: taken as the loss published its matrices (:class:`PublishedReductions`)."""
    tensors: dict[str, Any] = {"loss": loss.detach().double().reshape(())}
    if per_sample is not None:
        per_sample = per_sample.detach()
        tensors["loss_nan"] = torch.isnan(per_sample).sum()
        tensors["loss_inf"] = torch.isinf(per_sample).sum()
    if grad_norms is None:
        grads = [p.grad if p.grad is not None else torch.zeros((), dtype=p.dtype) for _, p in named_parameters]
        # In float64: a finite float32 gradient with entries near 1e35 has a float32 norm of inf,
        # which would mark a healthy step as failed.
        grad_norms = torch.stack(torch._foreach_norm(grads, 2, dtype=torch.float64)) if grads else torch.zeros(0)
    if param_norms is None:
        param_norms = torch.stack(torch._foreach_norm([p.detach() for _, p in named_parameters], 2,
                                                      dtype=torch.float64)) \
            if named_parameters else torch.zeros(0)
    tensors["grad_norm"] = grad_norms.double().norm()
    tensors["grad_nonfinite"] = (~torch.isfinite(grad_norms)).sum()
    tensors["param_norm"] = param_norms.double().norm()
    tensors.update(distance_statistics(published, reductions))
    keys = list(tensors)
    on_device = [key for key, t in tensors.items() if isinstance(t, torch.Tensor) and t.device.type != "cpu"]
    if not on_device:
        # On the CPU, float() per scalar is exact (counts < 2**53, float32 widened exactly) and
        # skips three tensor ops per key: most of a small step's probe cost.
        flat = [float(t) for t in tensors.values()]
    else:  # one host transfer for everything on the device
        moved = dict(zip(on_device, torch.stack([tensors[key].double().reshape(()) for key in on_device]).tolist()))
        flat = [moved[key] if key in moved else float(t) for key, t in tensors.items()]
    record: dict[str, Any] = {}
    for key, value in zip(keys, flat):
        is_count = key.endswith(("_nan", "_inf", "_zero", "_subnormal", "_nonfinite")) or key.startswith("rows_")
        if key == "probe_sampled":
            record[key] = bool(value)
            continue
        record[key] = int(value) if is_count and math.isfinite(value) else value
    record["rows_excluded"] = int(rows_excluded)
    temperature = published.get("temperature")
    if temperature is not None:
        record["temperature"] = float(temperature)
    for (name, _), value in zip(named_parameters, grad_norms.double().cpu().tolist()):
        record[f"grad_2.0_norm/{name}"] = value
    for (name, _), value in zip(named_parameters, param_norms.double().cpu().tolist()):
        record[f"param_norm/{name}"] = value
    return record


# -- many small steps at once ---------------------------------------------------------------
#
# The student's step (a 32 x 32 matrix, about 1 ms) would spend half its time again in the
# hundred-odd tensor ops of batch_statistics: per-op dispatch, not arithmetic. Such steps are
# copied (one fused copy) into stacked buffers and summarised DEFERRED_STEPS at a time with
# numpy over (steps, B, C) arrays. Every number is the one batch_statistics gives: counts,
# extremes and order statistics are exact whatever the grouping; the float64 norms and logs,
# whose roundings depend on how a kernel walks its input, are computed row by row by the same
# torch kernels (tests/test_probe_deferred.py compares the two paths key by key).

#: Steps with at most this many (query, candidate) pairs are summarised many at a time.
DEFERRED_PAIRS = 1 << 12
#: At most this many such steps are held (DEFERRED_STEPS x DEFERRED_PAIRS x 10 bytes: 5.2 MB): more
#: than an epoch of the student's 84 steps, so an epoch is summarised once, at its end.
DEFERRED_STEPS = 128
#: At most this many layouts (shapes) keep buffers; a step of another is summarised at once
#: (a loss whose batch size changes every step would otherwise allocate without end).
DEFERRED_LAYOUTS = 8

_MATRICES = ("distances", "same_class_mask", "self_mask", "exp_out", "softmax")
_SUMS = ("p_same", "p_diff")
_HELD = _MATRICES + _SUMS
_FLOATS = (torch.float32, torch.float64)


def _layout(tensors: dict[str, Any]) -> tuple | None:
    """``((name, shape, dtype), ...)`` when :class:`DeferredSteps` can stack these tensors, else None.

    Anything unusual (a non-CPU tensor, a half precision, a shape the probes do not expect)
    is left to batch_statistics.
    """
    distances = tensors["distances"]
    if distances.dim() != 2 or distances.dtype not in _FLOATS:
        return None
    batch = distances.shape[0]
    for name, value in tensors.items():
        if not isinstance(value, torch.Tensor) or value.device.type != "cpu":
            return None
        if name in _MATRICES:
            wanted = torch.bool if name.endswith("_mask") else distances.dtype
            if value.shape != distances.shape or value.dtype != wanted:
                return None
        elif name in _SUMS:
            if value.shape != (batch,) or value.dtype not in _FLOATS:
                return None
        elif name == "included":
            if value.dim() != 1 or value.dtype != torch.bool:
                return None
        elif name in ("grad_norms", "param_norms"):
            if value.dim() != 1 or value.dtype != torch.float64 or value.shape != tensors["grad_norms"].shape:
                return None
        elif value.dtype not in _FLOATS or (name == "loss" and value.numel() != 1) or \
                (name == "per_sample" and value.dim() != 1):
            return None
    return tuple((name, tuple(value.shape), value.dtype) for name, value in tensors.items())


class _Stack:
    """``capacity`` slots of one layout: a (steps, ...) buffer per tensor, and its views per slot.

    P_same and P_diff are kept widened to float64 (exact), each row padded by one entry so
    that a log over the stack runs row by row (see :func:`_row_logs`).
    """

    def __init__(self, layout: tuple, capacity: int) -> None:
        self.names = [name for name, _, _ in layout]
        self.buffers, views = [], []
        for name, shape, dtype in layout:
            if name in _SUMS:
                buffer = torch.empty((capacity, shape[0] + 1), dtype=torch.float64)
                views.append(buffer[:, :shape[0]])
            else:
                buffer = torch.empty((capacity, *shape), dtype=dtype)
                views.append(buffer)
            self.buffers.append(views[-1])
        self.slots = [[view[slot] for view in views] for slot in range(capacity)]
        self.used = 0

    def arrays(self) -> dict[str, torch.Tensor]:
        return {name: buffer[:self.used] for name, buffer in zip(self.names, self.buffers)}


class DeferredSteps:
    """Small steps held for :meth:`records`, in the order they were added.

    >>> held = DeferredSteps()
    >>> norms = torch.ones(1, dtype=torch.float64)
    >>> published = {"distances": torch.tensor([[0.0, 1.0], [1.0, 0.0]]), "self_mask": torch.eye(2, dtype=torch.bool)}
    >>> held.add({"step": 0}, loss=torch.tensor(0.5), per_sample=None, included=None, grad_norms=norms,
    ...          param_norms=norms, published=published)
    False
    >>> record = held.records(["w"])[0]
    >>> record["step"], record["d_min"], record["param_norm/w"], len(held)
    (0, 1.0, 1.0, 0)
    """

    def __init__(self, capacity: int = DEFERRED_STEPS) -> None:
        self.capacity = capacity
        self._stacks: dict[tuple, _Stack | None] = {}  # None: a layout that is summarised at once
        self._held: list[tuple[_Stack, int, dict[str, Any], float | None]] = []

    def __len__(self) -> int:
        return len(self._held)

    def add(self, header: dict[str, Any], *, loss: torch.Tensor, per_sample: torch.Tensor | None,
            included: torch.Tensor | None, published: dict[str, Any], grad_norms: torch.Tensor | None,
            param_norms: torch.Tensor | None) -> bool | None:
        """Copy one step in (one fused copy). None: not held (summarise it with batch_statistics);
        True: held, and a stack is now full (call :meth:`records` before the next add).

        ``included`` marks the rows the loss kept (``rows_excluded`` counts the others; the
        count is taken with the rest, not here)."""
        distances = published.get("distances")
        if not isinstance(distances, torch.Tensor) or not 0 < distances.numel() <= DEFERRED_PAIRS \
                or grad_norms is None or param_norms is None:
            return None
        tensors = {"loss": loss.detach(), "grad_norms": grad_norms, "param_norms": param_norms}
        if per_sample is not None:
            tensors["per_sample"] = per_sample.detach()
        if included is not None:
            tensors["included"] = included
        for name in _HELD:
            value = published.get(name)
            if value is not None:
                tensors[name] = value
        values = list(tensors.values())
        try:  # a key that is cheap to build: the names, then each shape, dtype and whether on the CPU
            key = (tuple(tensors), *[(v.shape, v.dtype, v.is_cpu) for v in values])
        except AttributeError:  # something published that is not a tensor
            return None
        stack = self._stacks.get(key, False)
        if stack is False:  # a layout not seen yet (or forgotten)
            for old in [old for old, kept in self._stacks.items() if kept is None or not kept.used]:
                if len(self._stacks) < DEFERRED_LAYOUTS:
                    break
                del self._stacks[old]  # nothing held there
            if len(self._stacks) >= DEFERRED_LAYOUTS:
                return None
            layout = _layout(tensors)
            stack = self._stacks[key] = None if layout is None else _Stack(layout, self.capacity)
        if stack is None:
            return None
        slot = stack.used
        torch._foreach_copy_(stack.slots[slot], values)
        stack.used += 1
        temperature = published.get("temperature")
        self._held.append((stack, slot, header, None if temperature is None else float(temperature)))
        return stack.used == self.capacity

    def records(self, parameter_names: list[str]) -> list[dict[str, Any]]:
        """The held steps' records (each header, then what batch_statistics gives); empties the store."""
        summaries, norm_keys = self._summaries(parameter_names)
        rows = {stack: list(zip(*columns)) for stack, (_, columns) in summaries.items()}
        records = [_record(header, summaries[id(stack)][0], rows[id(stack)][slot], temperature, norm_keys)
                   for stack, slot, header, temperature in self._held]
        self._release(summaries)
        return records

    def jsonl(self, parameter_names: list[str]) -> tuple[str, dict[str, Any] | None]:
        """The held steps' records as JSON lines, the text ``json.dumps`` gives for each of
        :meth:`records` (one line each), and the last record; empties the store.

        json.dumps spends about 0.3 us on each key of each record (the student's records have 53);
        here a stack's keys are written once into a %-format, and a record is one formatting of
        its values (the floats and ints by repr, which is json's text for them).
        """
        summaries, norm_keys = self._summaries(parameter_names)
        columns = {stack: [_json_column(column) for column in stack_columns]
                   for stack, (_, stack_columns) in summaries.items()}
        rows = {stack: list(zip(*[values for _, values in stack_columns])) for stack, stack_columns in columns.items()}
        formats: dict[tuple, str | None] = {}
        lines = []
        for stack, slot, header, temperature in self._held:
            keys = summaries[id(stack)][0]
            row = rows[id(stack)][slot]
            group = (id(stack), tuple(header), temperature is None)
            if group not in formats:
                formats[group] = _json_format(header, keys, [spec for spec, _ in columns[id(stack)]],
                                              temperature, norm_keys)
            form = formats[group]
            if form is None:  # a key given twice: the record's dict decides, as in records()
                values = [column[slot] for column in summaries[id(stack)][1]]
                lines.append(json.dumps(_record(header, keys, values, temperature, norm_keys), allow_nan=True) + "\n")
                continue
            head = tuple(_json_token(value) for value in header.values())
            tail = row[len(keys):] if temperature is None else (_json_token(temperature), *row[len(keys):])
            lines.append(form % (*head, *row[:len(keys)], *tail))
        last = None
        if self._held:
            stack, slot, header, temperature = self._held[-1]
            keys, stack_columns = summaries[id(stack)]
            last = _record(header, keys, [column[slot] for column in stack_columns], temperature, norm_keys)
        self._release(summaries)
        return "".join(lines), last

    def _summaries(self, parameter_names: list[str]) -> tuple[dict[int, tuple[list[str], list[list]]], list[str]]:
        """``{id(stack): (keys, columns)}`` for the stacks holding steps, and the norm keys."""
        summaries = {id(stack): _stacked_statistics(stack.arrays(), parameter_names)
                     for stack in self._stacks.values() if stack is not None and stack.used}
        norm_keys = [f"grad_2.0_norm/{name}" for name in parameter_names] + \
                    [f"param_norm/{name}" for name in parameter_names]
        return summaries, norm_keys

    def _release(self, summaries: dict) -> None:
        self._held.clear()
        for stack in self._stacks.values():
            if stack is not None and id(stack) in summaries:
                stack.used = 0


def _record(header: dict[str, Any], keys: list[str], values, temperature: float | None,
            norm_keys: list[str]) -> dict[str, Any]:
    """One held step's record: its header, the statistics, the temperature, the norms."""
    record = dict(header)
    record.update(zip(keys, values))  # ... rows_excluded
    if temperature is not None:
        record["temperature"] = temperature
    record.update(zip(norm_keys, values[len(keys):]))
    return record


def _json_token(value: Any) -> str:
    """``json.dumps(value)`` (NaN and infinities as json writes them)."""
    kind = type(value)
    if kind is bool:
        return "true" if value else "false"
    if kind is int or kind is float and math.isfinite(value):
        return repr(value)
    return json.dumps(value, allow_nan=True)


def _json_column(column: list) -> tuple[str, list]:
    """How a column of ``ndarray.tolist()`` values (one type) goes into a %-format: ``("%r", column)``
    where repr is json's text (ints, finite floats), else ``("%s", its JSON tokens)``."""
    kind = type(column[0]) if column else None
    if kind is int or kind is float and all(map(math.isfinite, column)):
        return "%r", column
    if kind is bool:
        return "%s", ["true" if value else "false" for value in column]
    return "%s", [_json_token(value) for value in column]


def _json_format(header: dict[str, Any], keys: list[str], specs: list[str], temperature: float | None,
                 norm_keys: list[str]) -> str | None:
    """The %-format of one JSON line for records of this header's keys and this stack, or None when
    a key repeats (the record's dict then keeps one value, at the first key's place)."""
    names = [*header, *keys] + (["temperature"] if temperature is not None else []) + norm_keys
    if len(set(names)) != len(names):
        return None
    specs = ["%s"] * len(header) + specs[:len(keys)] + (["%s"] if temperature is not None else []) + \
        specs[len(keys):]
    fields = ", ".join(f"{json.dumps(name).replace('%', '%%')}: {spec}" for name, spec in zip(names, specs))
    return "{" + fields + "}\n"


def _row_logs(rows: torch.Tensor) -> np.ndarray:
    """``torch.log`` of each row of a (steps, B) float64 view, as the log of that row alone.

    A vectorised log rounds an entry according to where it falls in the kernel's blocks of
    vector width, counted from the start of the inner loop. The view's rows are one entry
    apart in memory (_Stack pads them), so TensorIterator cannot merge them into one loop:
    each row is its own inner loop, as a (B,) tensor is. Above the parallel grain size
    (32768 entries) a loop could start mid-row, so those stacks go row by row.
    """
    if rows.numel() < 32768 and rows.dim() == 2 and rows.stride(0) != rows.shape[1]:
        return torch.log(rows).numpy()
    return np.stack([torch.log(row).numpy() for row in rows])


def _count(mask: np.ndarray) -> np.ndarray:
    """True entries per row of a (rows, N) bool array, N < 65536: bytes summed into uint16,
    four times faster than ``np.count_nonzero(axis=1)`` (which widens every entry to int64)."""
    return mask.view(np.uint8).sum(axis=1, dtype=np.uint16).astype(np.int64)


def _nan_unless(keep: np.ndarray, values: np.ndarray) -> np.ndarray:
    """``np.where(keep, values, nan)`` for float32/float64 ``values``, without np.where's
    branch per entry (six times slower on a random mask): OR-ing a quiet NaN's bits into
    an entry makes it NaN, OR-ing zero leaves it as it is."""
    bits = np.uint32 if values.dtype == np.float32 else np.uint64
    quiet_nan = np.array(np.nan, dtype=values.dtype).view(bits)
    return (values.view(bits) | (~keep).astype(bits) * quiet_nan).view(values.dtype)


def _stacked_ranges(values: np.ndarray, keep: np.ndarray, numbers: np.ndarray, prefix: str,
                    out: dict[str, np.ndarray]) -> None:
    """:func:`_range` of ``values[k][keep[k]]`` for every row k of (steps, N) arrays;
    ``numbers`` is ``keep`` less the NaN values."""
    kept, counted = _count(keep), _count(numbers)
    ordered = _nan_unless(numbers, values)
    ordered.sort(axis=1)  # each row's numbers first, ascending, then NaN
    # the same float64 product and ceil as _range
    low, high = ((np.maximum(1, np.ceil(q * kept)) - 1).astype(np.int64) for q in (0.5, 0.99))
    ranks = np.stack([np.zeros_like(kept), counted - 1, low, high], axis=1)
    picked = np.take_along_axis(ordered, np.clip(ranks, 0, values.shape[1] - 1), axis=1)
    # A NaN value makes min and max NaN (numpy's min/max); a rank past the numbers lands on a NaN.
    extremes = (kept > 0) & (counted == kept)
    defined = np.stack([extremes, extremes, low < counted, high < counted], axis=1)
    result = np.where(defined, picked, np.nan)
    for column, key in enumerate(("min", "max", "p50", "p99")):
        out[f"{prefix}{key}"] = result[:, column]


def _stacked_statistics(tensors: dict[str, torch.Tensor], parameter_names: list[str]):
    """``(keys, columns)``: batch_statistics' keys in its order, one column of Python values per key
    (then one per ``grad_2.0_norm/NAME`` and ``param_norm/NAME``), for stacked steps."""
    arrays = {name: tensor.numpy() for name, tensor in tensors.items()}
    steps = len(arrays["loss"])
    out: dict[str, Any] = {"loss": arrays["loss"].reshape(steps)}
    if "per_sample" in arrays:
        out["loss_nan"] = _count(np.isnan(arrays["per_sample"]))
        out["loss_inf"] = _count(np.isinf(arrays["per_sample"]))
    # The norm kernel reduces each row of a (steps, P) tensor as it reduces one (P,) vector
    # (binary_kernel_reduce_lastdim, one row per call): the same float64 bits as .norm().
    out["grad_norm"] = torch.linalg.vector_norm(tensors["grad_norms"], dim=1).numpy()
    out["grad_nonfinite"] = _count(~np.isfinite(arrays["grad_norms"]))
    out["param_norm"] = torch.linalg.vector_norm(tensors["param_norms"], dim=1).numpy()
    out["probe_sampled"] = np.zeros(steps, dtype=bool)  # DEFERRED_PAIRS < QUANTILE_SAMPLE: never sampled

    distances = arrays["distances"].reshape(steps, -1)
    self_mask = arrays.get("self_mask")
    pairs = ~np.isinf(distances)
    if self_mask is not None:
        pairs &= ~self_mask.reshape(steps, -1)
    finite_pairs = pairs & ~np.isnan(distances)
    _stacked_ranges(distances, pairs, finite_pairs, "d_", out)
    same = arrays.get("same_class_mask")
    if same is not None:
        flat_same = same.reshape(steps, -1)
        other = ~flat_same
        _stacked_ranges(distances, pairs & flat_same, finite_pairs & flat_same, "d_same_", out)
        _stacked_ranges(distances, pairs & other, finite_pairs & other, "d_other_", out)
        out["rows_without_same_class"] = _count(_count(same.reshape(-1, same.shape[2])).reshape(steps, -1) == 0)
    tiny = torch.finfo(tensors["distances"].dtype).tiny
    for name, key in (("exp_out", "exp"), ("softmax", "softmax")):
        if name in arrays:
            values = arrays[name].reshape(steps, -1)
            out[f"{key}_zero"] = _count((values == 0) & finite_pairs)
            small = _count((np.abs(values) < tiny) & finite_pairs)
            out[f"{key}_subnormal"] = small - out[f"{key}_zero"]
    out["max_d_over_T"] = out["d_max"]
    for name in _SUMS:
        if name in arrays:
            out[f"{name}_min"] = arrays[name].min(axis=1)
            out[f"{name}_zero"] = _count(arrays[name] == 0)
    if "p_same" in arrays and "p_diff" in arrays:
        # float64 logs row by row, as row_coordinates takes them; negation and 2b - a are exact.
        a, b = -_row_logs(tensors["p_same"]), -_row_logs(tensors["p_diff"])
        with np.errstate(invalid="ignore"):  # inf - inf is NaN, as in torch, without a warning
            backward = 2 * b - a
        for name, score in (("backward", backward), ("same", a), ("diff", b)):
            row = np.where(np.isnan(score), -np.inf, score).argmax(axis=1)  # the first largest, as torch's
            out[f"ab_{name}_a"], out[f"ab_{name}_b"] = a[np.arange(steps), row], b[np.arange(steps), row]
    included = arrays.get("included")
    out["rows_excluded"] = np.zeros(steps, dtype=np.int64) if included is None else \
        included.shape[1] - _count(included)
    keys = list(out)
    columns = [column.tolist() for column in out.values()]
    columns += arrays["grad_norms"].T.tolist() + arrays["param_norms"].T.tolist()
    return keys, columns
