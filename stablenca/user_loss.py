"""Bring your own loss: ``package.module:function``.

A user loss has the same signature as the built-in formulations::

    def my_loss(distances, labels, candidate_labels, self_mask):
        ...
        return per_sample_losses  # (B,) tensor, or a scalar, or a LossOutput

* ``distances`` (B, C) are already divided by the temperature;
* ``labels`` (B,) and ``candidate_labels`` (C,) are class indices (or standardised
  targets for regression);
* ``self_mask`` (B, C) is True where the candidate is the query itself.

It may call :func:`stablenca.publish` to show intermediates (``exp_out``,
``p_same``...) to the recorder. Optional attributes on the function:
``tasks = ("multiclass",)`` (default: both tasks) and ``reference`` (a float64 or
mpmath reference with the same signature; without one the float64 evaluation of the
function itself is the reference).
"""

from __future__ import annotations

import importlib
import inspect
import sys
from pathlib import Path

import torch

from .errors import UserLossError


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
    from .losses import LossOutput

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
