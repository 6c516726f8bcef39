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

import math
from typing import Any

import numpy as np
import torch

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


def _range(values: np.ndarray, prefix: str, out: dict[str, torch.Tensor]) -> None:
    """min, max, p50, p99 of ``values`` (NaN when there are none; a NaN value makes min/max NaN)."""
    if values.size == 0:
        nan = torch.tensor(math.nan, dtype=torch.float64)
        out[f"{prefix}min"] = out[f"{prefix}max"] = out[f"{prefix}p50"] = out[f"{prefix}p99"] = nan
        return
    out[f"{prefix}min"] = torch.tensor(float(values.min()), dtype=torch.float64)
    out[f"{prefix}max"] = torch.tensor(float(values.max()), dtype=torch.float64)
    # Both order statistics from one selection (numpy's introselect; NaN sorts last, as in
    # torch.kthvalue); selecting is exact, so the float64 results are the same as sorting.
    ranks = [max(1, math.ceil(q * values.size)) - 1 for q in (0.5, 0.99)]
    selected = np.partition(values, ranks)
    for rank, key in zip(ranks, ("p50", "p99")):
        out[f"{prefix}{key}"] = torch.tensor(float(selected[rank]), dtype=torch.float64)


def distance_statistics(published: dict[str, Any]) -> dict[str, torch.Tensor]:
    """Distance range overall, same-class and other-class; exp/softmax underflow counts."""
    out: dict[str, torch.Tensor] = {}
    distances = published.get("distances")
    if distances is None:
        return out
    distances = distances.detach()
    self_mask = published.get("self_mask")
    if self_mask is None:
        self_mask = torch.zeros_like(distances, dtype=torch.bool)
    same = published.get("same_class_mask")
    stride = max(1, math.ceil(distances.numel() / QUANTILE_SAMPLE))
    out["probe_sampled"] = torch.tensor(float(stride > 1))
    rows = slice(None, None, stride)
    # The (at most QUANTILE_SAMPLE) sampled pairs are selected on the host: numpy's boolean
    # indexing of a small array costs microseconds where torch's goes through nonzero.
    sample = _host_array(distances[rows])
    # +inf marks masked pairs on purpose; NaN distances are kept so they show in min/max.
    sample_pairs = ~_host_array(self_mask[rows]) & ~np.isinf(sample)
    _range(sample[sample_pairs], "d_", out)
    if same is not None:
        same_sample = _host_array(same[rows])
        _range(sample[sample_pairs & same_sample], "d_same_", out)
        _range(sample[sample_pairs & ~same_sample], "d_other_", out)
        if same.shape[1]:  # any() over a bool matrix is a slow CPU reduction; amax over its bytes is fast
            out["rows_without_same_class"] = torch.count_nonzero(same.view(torch.uint8).amax(dim=1) == 0)
        else:
            out["rows_without_same_class"] = torch.count_nonzero(~same.any(dim=1))
    out.update(_overall_statistics(distances, self_mask, published, exact_range=stride > 1))
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
    No copy and no mask: one reduction over them reads each non-self pair once.
    """
    batch, width = matrix.shape
    body = matrix.as_strided((batch - 1, width), (width + 1, 1), matrix.storage_offset() + 1)
    return [body, matrix[batch - 1, batch:]]


def _is_leading_diagonal(self_mask: torch.Tensor) -> bool:
    """The self pairs are exactly (i, i), i < B (both candidate schemes of the Trainer)."""
    batch, width = self_mask.shape
    if not (0 < batch <= width and self_mask.is_contiguous() and bool(self_mask.diagonal().all())):
        return False
    # amax over the bytes of the off-diagonal views: one fast pass, no index list
    return not any(bool(view.view(torch.uint8).amax()) for view in _off_diagonal(self_mask) if view.numel())


def _diagonal_statistics(distances: torch.Tensor, published: dict[str, Any], *,
                         exact_range: bool) -> dict[str, torch.Tensor] | None:
    """:func:`_overall_statistics` when the self pairs are the leading diagonal and every other
    distance is finite, from reductions over :func:`_off_diagonal` views; None otherwise."""
    if not distances.is_contiguous() or distances.shape[0] < 2 and distances.shape[1] < 2:
        return None
    pairs = [view for view in _off_diagonal(distances) if view.numel()]
    if not pairs:
        return None
    # amin and amax, not aminmax: aminmax copies a strided view first
    low, high = min(view.amin() for view in pairs), max(view.amax() for view in pairs)
    if not bool(torch.isfinite(low) & torch.isfinite(high)):  # NaN propagates: both finite means all are
        return None
    out: dict[str, torch.Tensor] = {}
    if exact_range:
        out["d_min"], out["d_max"] = low.double(), high.double()
    tiny = torch.finfo(distances.dtype).tiny
    for name, key in (("exp_out", "exp"), ("softmax", "softmax")):
        values = published.get(name)
        if values is None:
            continue
        if values.shape != distances.shape or not values.is_contiguous():
            return None
        views = [view for view in _off_diagonal(values.detach()) if view.numel()]
        smallest = min(view.amin() for view in views)
        if bool(smallest >= tiny):  # nothing underflowed (a NaN compares False and is counted below)
            out[f"{key}_zero"] = out[f"{key}_subnormal"] = torch.tensor(0)
            continue
        out[f"{key}_zero"] = sum(torch.count_nonzero(view == 0) for view in views)
        # exp and softmax are >= 0, so |v| < tiny is v < tiny without an abs pass
        small = sum(torch.count_nonzero((view < tiny) if bool(smallest >= 0) else (view.abs() < tiny))
                    for view in views)
        out[f"{key}_subnormal"] = small - out[f"{key}_zero"]
    return out


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
    tiny = torch.finfo(distances.dtype).tiny
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
            self_values = values[self_mask]
            out[f"{key}_zero"] = torch.count_nonzero(values == 0) - torch.count_nonzero(self_values == 0)
            small = torch.count_nonzero(values.abs() < tiny) - torch.count_nonzero(self_values.abs() < tiny)
            out[f"{key}_subnormal"] = small - out[f"{key}_zero"]
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
        out[f"{key}_subnormal"] = torch.count_nonzero((values.abs() < tiny) & finite_pairs) - out[f"{key}_zero"]
    return out


def batch_statistics(
    *,
    loss: torch.Tensor,
    per_sample: torch.Tensor | None,
    rows_excluded: int,
    published: dict[str, Any],
    named_parameters: list[tuple[str, torch.nn.Parameter]],
    grad_norms: torch.Tensor | None = None,
) -> dict[str, Any]:
    """One flat record for one batch (see the module docstring for the keys)."""
    tensors: dict[str, torch.Tensor] = {"loss": loss.detach().double().reshape(())}
    if per_sample is not None:
        per_sample = per_sample.detach()
        tensors["loss_nan"] = torch.isnan(per_sample).sum()
        tensors["loss_inf"] = torch.isinf(per_sample).sum()
    if grad_norms is None:
        grads = [p.grad if p.grad is not None else torch.zeros((), dtype=p.dtype) for _, p in named_parameters]
        # In float64: a finite float32 gradient with entries near 1e35 has a float32 norm of inf,
        # which would mark a healthy step as failed.
        grad_norms = torch.stack(torch._foreach_norm(grads, 2, dtype=torch.float64)) if grads else torch.zeros(0)
    param_norms = torch.stack(torch._foreach_norm([p.detach() for _, p in named_parameters], 2,
                                                  dtype=torch.float64)) \
        if named_parameters else torch.zeros(0)
    tensors["grad_norm"] = grad_norms.double().norm()
    tensors["grad_nonfinite"] = (~torch.isfinite(grad_norms)).sum()
    tensors["param_norm"] = param_norms.double().norm()
    tensors.update(distance_statistics(published))
    keys = list(tensors)
    if all(t.device.type == "cpu" for t in tensors.values()):
        # On the CPU, float() per scalar is exact (counts < 2**53, float32 widened exactly) and
        # skips three tensor ops per key: most of a small step's probe cost.
        flat = [float(t) for t in tensors.values()]
    else:  # one host transfer for everything
        flat = torch.stack([t.double().reshape(()).cpu() for t in tensors.values()]).tolist()
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
