"""What a loss is to stablenca: its output, its reference, and its registered description.

No torch op runs here and nothing is imported from the rest of the package:
:mod:`.builtin`, :mod:`.user`, :mod:`.mp` and :mod:`.registry` build on these types, and
:mod:`stablenca.reference` evaluates a :class:`Reference` (so the reference side imports
the losses, never the other way round).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any, Literal

import torch

Task = Literal["multiclass", "regression"]

#: Significant decimal digits of the mpmath references.
DEFAULT_DPS = 50


@dataclasses.dataclass
class LossOutput:
    """Per-sample losses and how they reduce.

    ``per_sample`` has one entry per *included* row; ``included`` is the (B,) bool
    mask of rows that took part (rows a formulation excludes, such as those without
    a same-class neighbour in ``nca_logspace``, are counted, never turned into inf).
    """

    per_sample: torch.Tensor
    reduction: Literal["mean", "sum"]
    included: torch.Tensor

    @property
    def loss(self) -> torch.Tensor:
        """The scalar that is optimised."""
        if self.per_sample.numel() == 0:
            # Nothing to learn from in this batch: a zero that keeps the graph alive.
            return self.per_sample.sum()
        return self.per_sample.mean() if self.reduction == "mean" else self.per_sample.sum()

    @property
    def n_excluded(self) -> int:
        return int((~self.included).sum())


@dataclasses.dataclass(frozen=True)
class MpResult:
    """An mpmath reference of a loss: the scalar loss and its gradient w.r.t. the distances.

    ``grad`` is a (B, C) nested tuple of mpf, or None when the reference gives the
    loss only (the gradient is then taken from float64 autograd).
    """

    loss: Any
    grad: tuple | None = None


@dataclasses.dataclass(frozen=True)
class Reference:
    """The value a loss (or any function) would have with exact arithmetic, as code.

    ``kind="loss"``: ``mp`` has the loss signature ``(d, labels, candidate_labels,
    self_mask)`` on Python lists (``d[i][j]`` mpf, labels ints, mask bools) and
    returns an :class:`MpResult` (or just the mpf loss); ``float64`` has the same
    signature on float64 torch tensors and returns a tensor or a ``LossOutput``.
    ``kind="function"``: ``mp`` is any function of mpf arguments returning an mpf.
    """

    name: str
    mp: Callable | None = None
    float64: Callable | None = None
    kind: str = "loss"
    summary: str = ""
    label: str = ""

    def describe(self, dps: int = DEFAULT_DPS) -> str:
        if self.label:
            return self.label
        return f"mpmath ({dps} digits)" if self.mp is not None else "float64"


@dataclasses.dataclass(frozen=True)
class Formulation:
    """A loss as stablenca runs it: the function and what is known about it, as fields.

    * ``stable``: finite at every distance scale (the report groups these runs apart);
    * ``reference``: what :func:`stablenca.reference.reference_for` compares it with: a
      :class:`Reference`, the name of a registered one, a float64 callable with the loss
      signature, or None (then a ``reference`` attribute of ``fn``, else ``fn`` itself
      in float64);
    * ``user``: loaded from ``package.module:function``; its exceptions become
      :class:`stablenca.errors.UserLossError` in training;
    * ``task_arguments``: ``fn`` takes ``n_classes=`` and ``task=`` (TALENT's objective).
    """

    name: str
    fn: Callable[..., LossOutput]
    tasks: tuple[str, ...]
    stable: bool
    summary: str
    reference: Reference | str | Callable | None = dataclasses.field(default=None, kw_only=True)
    user: bool = dataclasses.field(default=False, kw_only=True)
    task_arguments: bool = dataclasses.field(default=False, kw_only=True)

    def __call__(self, distances, labels, candidate_labels, self_mask, **kwargs) -> LossOutput:
        return self.fn(distances, labels, candidate_labels, self_mask, **kwargs)
