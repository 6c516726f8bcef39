"""The op registry: what the tracer knows about an ATen op, registered per overload packet.

Facts are registered the way ``torch.utils.flop_counter`` registers its formulas, with a
decorator over the op packets they hold for::

    @register(aten.log, aten.log2, aten.log10, elementwise=True, pole=0.0)
    def _logarithm(call, pos_nan, pos_inf, tensors): ...   # the NaN/Inf pattern of these ops

``register(...)`` records its facts at once, so it also works as a plain statement for ops
without a pattern rule. An op's facts are the union of every registration of its packet.
In-place and ``out=`` variants (``aten.exp_``) share the value facts of their functional
packet (``elementwise``, ``exact_select`` ...); the facts that decide which checks run
(``underflow``, ``cancels``, ``reduction``, ``mask``, ``view``, ``skip``) belong to the
packet registered, since an in-place op has lost its inputs.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import torch
from mpmath import mp

aten = torch.ops.aten

#: Facts that belong to the registered packet only (see the module docstring).
_OWN_FACTS = ("view", "skip", "underflow", "cancels", "reduction", "mask")


@dataclasses.dataclass(frozen=True)
class OpFacts:
    """What is known about one op packet; every fact is False/None unless registered."""

    view: bool = False  # shares its input's values (beyond ``func.is_view``: detach, alias)
    skip: bool = False  # creation or bookkeeping with no values worth checking (empty, zeros)
    exact_create: bool = False  # creates exact constants (zeros, ones, eye, arange, full)
    exact_select: bool = False  # selects, moves or negates: exact inputs give exact outputs
    exact_arith: bool = False  # exact when the operands are and the result is an integer below 2^p
    elementwise: bool = False  # output element i depends on input element i only
    noncreating: bool = False  # finite inputs give a finite output, and it cannot underflow
    no_overflow: bool = False  # elementwise, cannot turn finite inputs into ±inf
    underflow: str | None = None  # "positive" (exp, softmax: outputs >= 0) or "signed" (mul, div, pow)
    cancels: bool = False  # an addition or subtraction: may cancel significant bits
    reduction: bool = False  # sum/mean: an exact zero may be a reduction over nothing
    mask: bool = False  # may apply a mask (a bool cast, where, masked_fill with 0)
    spread: bool = False  # std/var/norm: an exact zero says every reduced value is equal or 0
    pole: float | None = None  # the input at which a log-like op is -inf
    mpmath: Callable | None = None  # the op on mpmath numbers, elementwise (see stablenca.trace.exact)


#: op packet -> its facts; filled by :func:`register`.
FACTS: dict[Any, OpFacts] = {}
#: op packet -> the rule naming its NaN/Inf pattern; filled by decorating with :func:`register`.
NAN_PATTERNS: dict[Any, Callable] = {}

_NO_FACTS = OpFacts()


def register(*packets, **facts) -> Callable[[Callable], Callable]:
    """Record ``facts`` for each op packet now; the returned decorator registers a pattern rule.

    >>> register(aten.sinc, elementwise=True)  # doctest: +ELLIPSIS
    <function ...>
    >>> facts_of(aten.sinc).elementwise, facts_of(aten.sinc).underflow
    (True, None)
    """
    for packet in packets:
        if not isinstance(packet, torch._ops.OpOverloadPacket):
            raise TypeError(f"register(): expected op packets such as aten.exp, got {packet!r}")
        FACTS[packet] = dataclasses.replace(FACTS.get(packet, _NO_FACTS), **facts)

    def with_rule(rule: Callable) -> Callable:
        for packet in packets:
            NAN_PATTERNS[packet] = rule
        return rule

    return with_rule


def facts_of(packet) -> OpFacts:
    """The facts registered for ``packet`` (all unset when none were)."""
    return FACTS.get(packet, _NO_FACTS)


def functional_packet(func):
    """``aten.exp`` for ``aten.exp_.default`` (its in-place variant), else ``func``'s own packet."""
    short = func._opname
    if short.endswith("_") and not short.endswith("__"):
        packet = getattr(aten, short[:-1], None)
        if packet is not None:
            return packet
    return func.overloadpacket


def facts_for(func) -> OpFacts:
    """An op overload's facts: its own packet's check facts, its functional packet's value facts."""
    own = facts_of(func.overloadpacket)
    family = facts_of(functional_packet(func))
    if family is own:
        return own
    return dataclasses.replace(family, **{k: getattr(own, k) for k in _OWN_FACTS})


# -- the facts -------------------------------------------------------------------------------
# (pattern rules for the NaN/Inf of div, log, sqrt, pow, mul, add/sub and softmax are registered
# in stablenca.trace.patterns, next to their code)

register(aten._unsafe_view, aten.lift_fresh, aten.lift_fresh_copy, aten.detach, aten.alias, view=True)
register(aten.empty, aten.empty_like, aten.empty_strided, aten.new_empty, aten.new_empty_strided, aten.resize_,
         aten.set_, aten._local_scalar_dense, aten.zeros, aten.zeros_like, aten.ones, aten.ones_like, aten.eye,
         aten.arange, aten.randperm, aten._to_dense, skip=True)
register(aten.zeros, aten.zeros_like, aten.ones, aten.ones_like, aten.eye, aten.arange, aten.full,
         aten.full_like, aten.new_full, aten.new_ones, aten.new_zeros, aten.scalar_tensor, aten.lift_fresh_copy,
         exact_create=True)
register(aten.clone, aten.copy, aten._to_copy, aten.neg, aten.abs, aten.where, aten.masked_fill, aten.cat,
         aten.stack, aten.index, aten.index_select, aten.gather, aten.repeat, aten.expand_copy, aten.maximum,
         aten.minimum, aten.relu, aten.flip, aten.roll, aten.tril, aten.triu, aten.constant_pad_nd,
         aten._unsafe_view, aten.clamp, aten.sign, exact_select=True)
register(aten.add, aten.sub, aten.rsub, aten.mul, aten.sum, exact_arith=True)
register(
    aten.abs, aten.add, aten.sub, aten.rsub, aten.mul, aten.div, aten.true_divide, aten.neg, aten.exp, aten.exp2,
    aten.expm1, aten.log, aten.log2, aten.log10, aten.log1p, aten.sqrt, aten.rsqrt, aten.pow, aten.reciprocal,
    aten.sigmoid, aten.tanh, aten.sin, aten.cos, aten.tan, aten.sinh, aten.cosh, aten.asin, aten.acos, aten.atan,
    aten.asinh, aten.acosh, aten.atanh, aten.clamp, aten.clamp_min, aten.clamp_max, aten.maximum, aten.minimum,
    aten.fmax, aten.fmin, aten.where, aten.masked_fill, aten._to_copy, aten.clone, aten.copy, aten.square,
    aten.xlogy, aten.lerp, aten.addcmul, aten.addcdiv, aten.threshold_backward, aten.relu, aten.gelu, aten.silu,
    aten.softplus, aten.erf, aten.erfc, aten.lgamma, aten.digamma, aten.atan2, aten.hypot, aten.fmod,
    aten.remainder, aten.sign, aten.floor, aten.ceil, aten.round, aten.trunc, aten.frac, aten.nan_to_num,
    aten.logit, aten.special_xlog1py, aten.sgn,
    elementwise=True)
register(
    aten.neg, aten.abs, aten.relu, aten.clone, aten.masked_fill, aten.where, aten.index, aten.index_select,
    aten.gather, aten.cat, aten.stack, aten.maximum, aten.minimum, aten.fmax, aten.fmin, aten.clamp,
    aten.clamp_min, aten.clamp_max, aten.sign, aten.sgn, aten.threshold_backward, aten.tanh, aten.hardtanh,
    aten.fill, aten.zero, aten.constant_pad_nd, aten.embedding, aten.index_put, aten.masked_scatter, aten.copy,
    aten._to_copy, aten.flip, aten.roll, aten.repeat, aten.tril, aten.triu, aten.select_backward,
    aten.slice_backward, aten.index_select_backward, aten.floor, aten.ceil, aten.round, aten.trunc,
    aten.new_zeros, aten.new_ones, aten.zeros_like, aten.scatter, aten.full_like, aten.ones_like,
    noncreating=True)
register(aten.neg, aten.clone, aten.abs, aten.masked_fill, aten.where, aten.copy, aten.relu, aten.clamp,
         aten.clamp_min, aten.clamp_max, aten.maximum, aten.minimum, aten.fmax, aten.fmin, aten.sign, aten.sgn,
         aten.floor, aten.ceil, aten.round, aten.trunc, aten.frac, aten.sigmoid, aten.tanh, aten.sin, aten.cos,
         aten.threshold_backward, aten.nan_to_num, no_overflow=True)
register(aten.exp, aten.exp2, aten._softmax, aten.sigmoid, aten.erfc, underflow="positive")
register(aten.mul, aten.div, aten.pow, underflow="signed")
register(aten.add, aten.sub, aten.rsub, cancels=True)
register(aten.sum, aten.mean, reduction=True)
register(aten._to_copy, aten.where, aten.masked_fill, mask=True)
register(aten.std, aten.var, aten.std_mean, aten.var_mean, aten.norm, aten.linalg_vector_norm, spread=True)
register(aten.log, aten.log2, aten.log10, pole=0.0)
register(aten.log1p, pole=-1.0)

# the exact value of an elementwise op, for elements where float64 overflows too (exact.py);
# an mpmath pole raises (ZeroDivisionError, ValueError) or returns ±inf
register(aten.exp, mpmath=lambda x: mp.exp(x))
register(aten.exp2, mpmath=lambda x: mp.power(2, x))
register(aten.expm1, mpmath=lambda x: mp.expm1(x))
register(aten.pow, mpmath=lambda a, b: mp.power(a, b))
register(aten.mul, mpmath=lambda a, b: a * b)
register(aten.div, aten.true_divide, mpmath=lambda a, b: a / b)
register(aten.reciprocal, mpmath=lambda x: 1 / x)
register(aten.square, mpmath=lambda x: x * x)
register(aten.cosh, mpmath=lambda x: mp.cosh(x))
register(aten.sinh, mpmath=lambda x: mp.sinh(x))
register(aten.tan, mpmath=lambda x: mp.tan(x))
register(aten.lgamma, mpmath=lambda x: mp.loggamma(x) if x > 0 else mp.log(abs(mp.gamma(x))))
register(aten.digamma, mpmath=lambda x: mp.digamma(x))
