"""The case library: numerical traps beyond NCA, each with its naive form, its fix and references.

============================  ==================================================  =================
case                          naive form → what goes wrong                        root cause
============================  ==================================================  =================
``one_minus_exp``             ``1/(1-exp(-x)) - 1/x`` → inf/NaN near 0             ``cancellation``
``log_softmax``               ``log(softmax(z))`` → -inf, NaN gradient             ``underflow``
``bce_sigmoid``               ``BCELoss(sigmoid(x))`` → loss 100, gradient 0       silent (warning)
``ce_on_probabilities``       ``CrossEntropyLoss(softmax(z))`` → loss ≥ 1.46       silent (warning)
============================  ==================================================  =================

Each case (a :class:`Case`) has ``naive(x)``, ``fixed(x)`` (``patched(x)`` where the
story has a patch), ``reference_mp(x)`` / ``gradient_mp(x)`` (mpmath, correct to 50
digits), ``reference_f64`` (float64 torch; autograd gives the float64 gradient
reference), its ``domain`` (the sweep), ``expected_root_cause`` and a description.

>>> sorted(CASES)
['bce_sigmoid', 'ce_on_probabilities', 'log_softmax', 'one_minus_exp']
>>> import torch
>>> CASES["one_minus_exp"].fixed(torch.tensor([0.0])).item()
0.5

:func:`run_case` measures a case in one dtype (bits of error of every form over the
sweep, the tracer's finding for the naive form, the loss-input warnings);
:func:`stablenca.cases.check.check_case` is the ``stablenca check --case`` behind
it, :mod:`stablenca.cases.plots` draws the Herbie-style error plots. The references
are also registered in :mod:`stablenca.reference` as ``cases.<name>`` (value) and
``cases.<name>.grad`` (derivative), ``kind="function"``.
"""

from __future__ import annotations

from .. import reference as _reference
from ..errors import ConfigError
from . import bce_sigmoid, ce_on_probabilities, log_softmax, one_minus_exp
from ._base import Budget, Case, Domain
from .detect import (
    LossInputWarning,
    check_loss_inputs,
    detect_probability_inputs,
    detect_saturated_probabilities,
)
from .runner import CaseRun, run_case

__all__ = [
    "CASES",
    "Budget",
    "Case",
    "CaseRun",
    "Domain",
    "LossInputWarning",
    "check_loss_inputs",
    "detect_probability_inputs",
    "detect_saturated_probabilities",
    "get_case",
    "reference_name",
    "run_case",
]

#: Every case by name, in the order they are documented.
CASES: dict[str, Case] = {
    module.CASE.name: module.CASE for module in (one_minus_exp, log_softmax, bce_sigmoid, ce_on_probabilities)
}


def get_case(name: str) -> Case:
    """The case called ``name`` (a :class:`~stablenca.errors.ConfigError` naming the others if none)."""
    if name not in CASES:
        raise ConfigError(f"unknown case {name!r}", fix=f"use one of {', '.join(CASES)}")
    return CASES[name]


def reference_name(name: str, gradient: bool = False) -> str:
    """The name a case's reference is registered under in :mod:`stablenca.reference`.

    >>> reference_name("one_minus_exp"), reference_name("one_minus_exp", gradient=True)
    ('cases.one_minus_exp', 'cases.one_minus_exp.grad')
    """
    return f"cases.{name}.grad" if gradient else f"cases.{name}"


for _case in CASES.values():
    _reference.register_reference(reference_name(_case.name), _case.reference_mp, float64_fn=_case.reference_f64,
                                  kind="function", summary=_case.title, replace=True)
    _reference.register_reference(reference_name(_case.name, gradient=True), _case.gradient_mp,
                                  float64_fn=_case.gradient_f64, kind="function",
                                  summary=f"derivative of {_case.title}", replace=True)
