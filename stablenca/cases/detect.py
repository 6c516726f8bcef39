"""Checks of what a loss function is *given*: bugs that never make a NaN.

Two silent mistakes the tracer cannot see, because every value stays finite:

* probabilities passed where logits (``cross_entropy``) or log-probabilities
  (``nll_loss``) are expected: :func:`detect_probability_inputs`;
* sigmoid outputs that saturated to exactly 0.0 or 1.0 passed to
  ``binary_cross_entropy``, which clamps ``log`` at -100: the loss of those elements is
  a constant 100 and their gradient is exactly 0: :func:`detect_saturated_probabilities`.

:func:`check_loss_inputs` runs both automatically on every ``F.cross_entropy``,
``F.nll_loss`` and ``F.binary_cross_entropy`` call (``nn.CrossEntropyLoss`` & co. call
these) made inside the block, through a :class:`torch.overrides.TorchFunctionMode`::

    >>> import torch, torch.nn.functional as F
    >>> logits = torch.tensor([[2.0, 0.5, -1.0], [0.1, 0.2, 3.0]])
    >>> with check_loss_inputs() as warnings:
    ...     loss = F.cross_entropy(torch.softmax(logits, dim=1), torch.tensor([0, 2]))
    >>> [w.kind for w in warnings]
    ['probability_inputs']
    >>> print(warnings[0].fix)
    pass raw logits to CrossEntropyLoss (drop the softmax), or use NLLLoss(log_softmax(z))
    >>> detect_probability_inputs(logits) is None
    True
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
from collections.abc import Iterator
from typing import Any

import torch
import torch.nn.functional as F
from torch.overrides import TorchFunctionMode

__all__ = [
    "LossInputWarning",
    "check_loss_inputs",
    "detect_probability_inputs",
    "detect_saturated_probabilities",
]


@dataclasses.dataclass(frozen=True)
class LossInputWarning:
    """A loss was given inputs that make it silently wrong: what, how many, and the fix."""

    kind: str  # "probability_inputs" or "saturated_probabilities"
    loss: str  # the loss function that received them, e.g. "cross_entropy"
    message: str
    fix: str
    count: int  # rows (or elements) affected
    total: int  # rows (or elements) checked

    def __str__(self) -> str:
        return f"{self.loss}: {self.message}; fix: {self.fix}"

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def _class_dim(x: torch.Tensor, dim: int | None) -> int:
    if dim is not None:
        return dim
    return 1 if x.dim() >= 2 else 0


def default_tolerance(dtype: torch.dtype, classes: int) -> float:
    """How far from 1 a row of probabilities may sum: ``max(1e-3, 4 K eps)``.

    >>> default_tolerance(torch.float32, 10)
    0.001
    >>> round(default_tolerance(torch.float16, 100), 4)
    0.3906
    """
    return max(1e-3, 4.0 * classes * torch.finfo(dtype).eps)


def detect_probability_inputs(logits: torch.Tensor, dim: int | None = None, *, tolerance: float | None = None,
                              loss: str = "cross_entropy") -> LossInputWarning | None:
    """A warning when every row of ``logits`` lies in [0, 1] and sums to 1 (probabilities), else None.

    ``dim`` is the class dimension (default: 1 for 2-d and higher inputs, 0 for 1-d, as
    ``F.cross_entropy``); ``tolerance`` on the row sums defaults to
    :func:`default_tolerance`. Real logits almost never satisfy both conditions on every
    row, so the check has no false positives in practice; a row of probabilities that
    went through ``log`` first (the correct ``nll_loss`` input) is negative and passes.

    >>> p = torch.softmax(torch.randn(4, 5), dim=1)
    >>> w = detect_probability_inputs(p)
    >>> w.kind, w.count, w.total
    ('probability_inputs', 4, 4)
    >>> detect_probability_inputs(torch.log(p), loss="nll_loss") is None
    True
    """
    if not isinstance(logits, torch.Tensor) or not logits.is_floating_point() or logits.numel() == 0:
        return None
    x = logits.detach()
    dim = _class_dim(x, dim)
    classes = x.shape[dim]
    if classes < 2:
        return None
    tol = default_tolerance(x.dtype, classes) if tolerance is None else tolerance
    x64 = x.to(torch.float64)
    in_unit = bool(((x64 >= 0) & (x64 <= 1)).all())
    if not in_unit:
        return None
    sums = x64.sum(dim=dim)
    rows = int(sums.numel())
    close = (sums - 1).abs() <= tol
    if not bool(close.all()):
        return None
    if loss == "nll_loss":
        message = (f"got probabilities (all {rows} rows in [0, 1] and summing to 1 within {tol:g}), not "
                   f"log-probabilities: the loss is -p[y], bounded in [-1, 0], and it ignores how wrong the "
                   f"other classes are")
        fix = "pass log_softmax(z) (or log(p)) to NLLLoss, or raw logits to CrossEntropyLoss"
    else:
        floor = math.log(math.e + classes - 1) - 1
        message = (f"got probabilities (all {rows} rows in [0, 1] and summing to 1 within {tol:g}), not "
                   f"logits: it applies log_softmax again, so the loss cannot go below log(e + K - 1) - 1 = "
                   f"{floor:.4f} for K = {classes} classes and its gradients shrink")
        fix = "pass raw logits to CrossEntropyLoss (drop the softmax), or use NLLLoss(log_softmax(z))"
    return LossInputWarning("probability_inputs", loss, message, fix, rows, rows)


def detect_saturated_probabilities(probabilities: torch.Tensor, target: torch.Tensor,
                                   loss: str = "binary_cross_entropy") -> LossInputWarning | None:
    """A warning when some probability given to ``binary_cross_entropy`` is exactly 0.0 or 1.0 while its
    target is not, else None.

    ``BCELoss`` clamps ``log`` at -100, so such an element contributes exactly
    ``100 * |target - p|`` whatever the logit was, and (after a sigmoid) a gradient of
    exactly 0: float32 ``sigmoid(x)`` is 1.0 for every ``x > 16.6``.

    >>> p = torch.sigmoid(torch.tensor([20.0, 0.5]))
    >>> detect_saturated_probabilities(p, torch.tensor([0.0, 0.0])).count
    1
    >>> detect_saturated_probabilities(p, torch.tensor([1.0, 0.0])) is None
    True
    """
    if not isinstance(probabilities, torch.Tensor) or not probabilities.is_floating_point():
        return None
    p = probabilities.detach()
    t = target.detach().to(p.dtype) if isinstance(target, torch.Tensor) else torch.full_like(p, float(target))
    t = torch.broadcast_to(t, p.shape) if t.shape != p.shape else t
    saturated = ((p == 1) & (t < 1)) | ((p == 0) & (t > 0))
    count = int(saturated.sum())
    if count == 0:
        return None
    message = (f"{count} of {p.numel()} probabilities are exactly 0.0 or 1.0 against a different target: "
               f"BCELoss clamps log at -100, so each contributes a constant 100 x |target - p| and no gradient "
               f"(sigmoid(x) rounds to 1.0 for x > 16.6 in float32, x > 36.7 in float64)")
    fix = "pass the logits to BCEWithLogitsLoss / F.binary_cross_entropy_with_logits (drop the sigmoid)"
    return LossInputWarning("saturated_probabilities", loss, message, fix, count, int(p.numel()))


def _argument(args, kwargs, index: int, name: str):
    if len(args) > index:
        return args[index]
    return kwargs.get(name)


def _check_cross_entropy(args, kwargs):
    return detect_probability_inputs(_argument(args, kwargs, 0, "input"), loss="cross_entropy")


def _check_nll_loss(args, kwargs):
    return detect_probability_inputs(_argument(args, kwargs, 0, "input"), loss="nll_loss")


def _check_bce(args, kwargs):
    target = _argument(args, kwargs, 1, "target")
    if target is None:
        return None
    return detect_saturated_probabilities(_argument(args, kwargs, 0, "input"), target)


#: The loss functions checked, and their checks.
CHECKS = {
    F.cross_entropy: _check_cross_entropy,
    F.nll_loss: _check_nll_loss,
    F.binary_cross_entropy: _check_bce,
}


class _LossInputMode(TorchFunctionMode):
    def __init__(self, sink: list[LossInputWarning]) -> None:
        super().__init__()
        self.sink = sink

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        check = CHECKS.get(func)
        if check is not None:
            warning = check(args, kwargs)
            if warning is not None:
                self.sink.append(warning)
        return func(*args, **kwargs)


@contextlib.contextmanager
def check_loss_inputs() -> Iterator[list[LossInputWarning]]:
    """Check the inputs of every checked loss call inside the block; yields the list of warnings.

    Costs one Python dispatch per torch function call in the block (a
    ``TorchFunctionMode``), plus the checks on the loss calls themselves.
    """
    warnings: list[LossInputWarning] = []
    with _LossInputMode(warnings):
        yield warnings
