"""Bring your own loss: ``package.module:function``.

A user loss has the same signature as the built-in formulations::

    def my_loss(distances, labels, candidate_labels, self_mask):
        ...
        return per_sample_losses  # (B,) tensor, or a scalar, or a LossOutput

* ``distances`` (B, C) are already divided by the temperature;
* ``labels`` (B,) and ``candidate_labels`` (C,) are class indices (or standardised
  targets for regression);
* ``self_mask`` (B, C) is True where the candidate is the query itself.

Its inputs are published for it (``distances``, ``self_mask`` and, for class labels,
``same_class_mask``), so the recorder measures the distance scale of any user loss; it
may call :func:`stablenca.publish` to show its own intermediates (``exp_out``,
``p_same``, ``p_diff``, ``softmax``), which the recorder turns into underflow counts.

Optional attributes on the function:

* ``tasks = ("multiclass",)`` (default: both tasks);
* ``reference``: a float64 callable with the same signature (on float64 tensors), the
  name of a registered reference, or a :class:`stablenca.reference.Reference`;
* ``reference_mp``: an mpmath reference with the same signature on Python lists
  (``d[i][j]`` mpf, labels ints, mask bools) returning the loss as an mpf (or a
  :class:`stablenca.reference.MpResult` with its gradient). It is evaluated at 50
  digits; without a gradient of its own, the gradient comes from ``reference`` (float64
  autograd) when there is one.

Without either, the float64 evaluation of the function itself is the reference, and
``stablenca check`` labels it ``float64 (self)``.
"""

from __future__ import annotations

import importlib
import importlib.util
import inspect
import sys
from pathlib import Path

import torch

from ..errors import UserLossError
from ..publish import publish
from .base import LossOutput, Reference


def load_user_function(spec: str):
    """Import ``package.module:function`` (or ``path/to/file.py:function``)."""
    module_name, sep, attribute = spec.rpartition(":")
    if not sep or not module_name or not attribute:
        raise UserLossError(f"loss {spec!r} is not of the form package.module:function",
                            fix="write --loss mypkg.losses:my_loss (the module must be importable)")
    try:
        if module_name.endswith(".py"):
            path = Path(module_name)
            if not path.is_file():
                raise UserLossError(f"loss file {module_name} does not exist", fix="check the path")
            spec_obj = importlib.util.spec_from_file_location(path.stem, path)
            module = importlib.util.module_from_spec(spec_obj)
            sys.modules[path.stem] = module
            spec_obj.loader.exec_module(module)
        else:
            module = importlib.import_module(module_name)
    except UserLossError:
        raise
    except Exception as exc:  # an import failure of user code, whatever it is
        raise UserLossError(f"cannot import {module_name!r} for loss {spec!r}: {type(exc).__name__}: {exc}",
                            fix="make the module importable (pip install -e it or add its folder to PYTHONPATH)"
                            ) from None
    function = getattr(module, attribute, None)
    if function is None or not callable(function):
        raise UserLossError(f"module {module_name!r} has no function {attribute!r}",
                            fix=f"define {attribute}(distances, labels, candidate_labels, self_mask) there")
    return function


def check_signature(function, spec: str) -> None:
    try:
        signature = inspect.signature(function)
        signature.bind(object(), object(), object(), object())
    except (TypeError, ValueError):
        raise UserLossError(f"loss {spec!r} must accept (distances, labels, candidate_labels, self_mask)",
                            fix="give the function exactly those four positional parameters") from None


def as_loss_output(value, distances: torch.Tensor, spec: str):
    """Normalise what a user loss returns into a :class:`stablenca.losses.LossOutput`."""
    if isinstance(value, LossOutput):
        return value
    if not isinstance(value, torch.Tensor) or not value.is_floating_point():
        raise UserLossError(f"loss {spec!r} returned {type(value).__name__}, not a floating tensor",
                            fix="return per-sample losses (B,), a scalar tensor, or a stablenca.LossOutput")
    rows = torch.ones(distances.shape[0], dtype=torch.bool, device=distances.device)
    if value.dim() == 0:
        return LossOutput(value.reshape(1), "mean", rows)
    if value.dim() == 1 and len(value) == distances.shape[0]:
        return LossOutput(value, "mean", rows)
    raise UserLossError(f"loss {spec!r} returned shape {tuple(value.shape)}; expected () or ({distances.shape[0]},)",
                        fix="return per-sample losses (B,) or a scalar")


def publish_inputs(distances, labels, candidate_labels, self_mask) -> None:
    """Publish a user loss's inputs under the names the probes read."""
    publish("distances", distances)
    publish("self_mask", self_mask)
    if isinstance(labels, torch.Tensor) and isinstance(candidate_labels, torch.Tensor) \
            and not labels.is_floating_point() and not candidate_labels.is_floating_point():
        publish("same_class_mask", (labels[:, None] == candidate_labels[None, :]) & ~self_mask)


def reference_of(function, spec: str):
    """The reference a user loss declares (see the module docstring), or None.

    ``reference_mp`` becomes a :class:`stablenca.reference.Reference` (with ``reference``
    as its float64 side when that is a callable); otherwise ``reference`` is returned
    as it is (a name, a callable or a Reference), for :func:`stablenca.reference.reference_for`.
    """
    attached = getattr(function, "reference", None)
    mp_fn = getattr(function, "reference_mp", None)
    if mp_fn is None:
        return attached
    if not callable(mp_fn):
        raise UserLossError(f"loss {spec!r} has a reference_mp that is not callable",
                            fix="set reference_mp to an mpmath function (d, labels, candidate_labels, self_mask)")
    float64 = attached if callable(attached) and not isinstance(attached, Reference) else None
    return Reference(spec, mp_fn, float64, kind="loss", summary="user mpmath reference")
