"""Reference values, and how far a computed value is from one (bits of error).

A *reference* (:class:`stablenca.losses.Reference`) is the value a formula would have
with exact arithmetic. Two kinds:

* **mpmath** (``mp.dps`` = 50 by default): the same formula evaluated with 50
  significant digits. mpmath's exponent range is unbounded, so ``exp(-1e4)`` is a
  tiny positive number, never 0.0: this oracle stays valid exactly where float
  types break (underflow, 0/0, log 0). For the built-in losses the gradient with
  respect to the distances is analytic (checked against float64 autograd and
  against mpmath finite differences in ``tests/test_reference.py``).
* **float64**: the same formula in float64 through torch, gradient by autograd.
  For a user loss without a reference of its own, the float64 evaluation of the
  function itself is the reference, labelled ``"float64 (self)"``.

References live in a registry keyed by name (:func:`register_reference`), so a
case other than a loss can add its own, e.g. ``1/(1-exp(-x)) - 1/x``:

>>> from mpmath import mp
>>> ref = register_reference("doc_expm1_case", lambda x: 1 / (1 - mp.exp(-x)) - 1 / x, kind="function")
>>> x = 1e-4
>>> naive = torch.tensor(1 / (1 - math.exp(-x)) - 1 / x, dtype=torch.float64)  # cancellation
>>> exact = evaluate_reference("doc_expm1_case", mp.mpf(x))
>>> bool(bits_of_error(naive, exact, torch.float64) > 20)  # more than 20 of 53 bits are wrong
True
>>> unregister_reference("doc_expm1_case")

Bits of error (Herbie's metric): ``log2(1 + ulp distance)`` between the computed
value and the reference *correctly rounded to the evaluated dtype*, where the ulp
distance counts the representable numbers between them (floats mapped to ordered
integers). 0 bits: correctly rounded; the dtype's bit width (16, 32, 64): garbage,
or a non-finite result against a finite reference.

>>> bits_of_error(torch.tensor(1.0), 1.0, torch.float32)
0.0
>>> bits_of_error(torch.tensor(1.0 + 2**-23), 1.0, torch.float32)  # one ulp
1.0
>>> bits_of_error(torch.tensor(float("nan")), 1.0, torch.float32)
32.0
"""

from __future__ import annotations

import dataclasses
import math
import struct
from collections.abc import Callable
from typing import Any

import mpmath
import numpy as np
import torch
from mpmath import mp

from .errors import ConfigError
from .floats import as_dtype, bit_width, facts
from .losses import DEFAULT_DPS, REGISTRY, MpResult, Reference
from .losses.mp import to_mp_inputs
from .losses.user import as_loss_output

@dataclasses.dataclass(frozen=True)
class RefResult:
    """A reference ready for comparison: exact loss (mpf), gradient as float64, and its provenance.

    ``grad_nonzero`` says whether the exact gradient has a non-zero entry (an
    mpmath gradient can be non-zero where its float64 rounding is all zeros).
    """

    loss: Any
    grad: np.ndarray | None
    label: str
    grad_nonzero: bool

    @property
    def loss_finite(self) -> bool:
        return bool(mpmath.isfinite(self.loss))


#: Registered references by name; the built-in losses' come from their formulations.
REFERENCES: dict[str, Reference] = {f.name: f.reference for f in REGISTRY.values()}


def register_reference(name: str, mp_fn: Callable | None = None, *, float64_fn: Callable | None = None,
                       kind: str = "loss", summary: str = "", replace: bool = False) -> Reference:
    """Register (and return) the reference of ``name``: an mpmath function, a float64 one, or both."""
    if mp_fn is None and float64_fn is None:
        raise ConfigError(f"reference {name!r} has neither an mpmath nor a float64 function",
                          fix="pass mp_fn=... or float64_fn=...")
    if kind not in ("loss", "function"):
        raise ConfigError(f"reference kind {kind!r} is unknown", fix="use kind='loss' or kind='function'")
    if name in REFERENCES and not replace:
        raise ConfigError(f"a reference named {name!r} is already registered",
                          fix="pick another name or pass replace=True")
    reference = Reference(name, mp_fn, float64_fn, kind, summary)
    REFERENCES[name] = reference
    return reference


def unregister_reference(name: str) -> None:
    REFERENCES.pop(name, None)


def get_reference(name: str) -> Reference:
    if name not in REFERENCES:
        raise ConfigError(f"no reference named {name!r}", fix=f"register one or use one of {', '.join(REFERENCES)}")
    return REFERENCES[name]


def evaluate_reference(name: str, *args, dps: int = DEFAULT_DPS):
    """Evaluate a registered mpmath reference at ``dps`` digits (arguments as given)."""
    reference = get_reference(name)
    if reference.mp is None:
        raise ConfigError(f"reference {name!r} has no mpmath function", fix="register one with mp_fn=...")
    with mp.workdps(dps):
        return reference.mp(*args)


# --------------------------------------------------------------------------- computing references


def mp_loss(name_or_reference, distances, labels, candidate_labels, self_mask, *, dps: int = DEFAULT_DPS,
            mp_inputs=None) -> MpResult:
    """The mpmath reference of a loss at ``dps`` digits, from torch inputs.

    >>> d = torch.tensor([[0., 200.], [200., 0.]], dtype=torch.float64)
    >>> float(mp_loss("nca_logspace", d, torch.tensor([0, 0]), torch.tensor([0, 0]), torch.eye(2, dtype=torch.bool)).loss)
    0.0
    >>> r = mp_loss("ratio", torch.tensor([[0., 200., 201.], [200., 0., 300.], [201., 300., 0.]]),
    ...             torch.tensor([0, 0, 1]), torch.tensor([0, 0, 1]), torch.eye(3, dtype=torch.bool))
    >>> r.loss  # row 2 has no same-class candidate: log 0
    mpf('+inf')
    """
    reference = name_or_reference if isinstance(name_or_reference, Reference) else get_reference(name_or_reference)
    if reference.mp is None:
        raise ConfigError(f"reference {reference.name!r} has no mpmath function", fix="use float64_loss instead")
    with mp.workdps(dps):
        if mp_inputs is None:
            mp_inputs = to_mp_inputs(distances, labels, candidate_labels, self_mask)
        result = reference.mp(*mp_inputs)
    return result if isinstance(result, MpResult) else MpResult(result, None)


def float64_loss(fn: Callable, distances, labels, candidate_labels, self_mask) -> tuple[float, np.ndarray]:
    """Evaluate ``fn`` (loss signature) in float64 with autograd: (loss, gradient w.r.t. distances)."""
    d = distances.detach().to(torch.float64).clone().requires_grad_(True)
    with torch.enable_grad():
        out = as_loss_output(fn(d, labels, candidate_labels, self_mask), d, getattr(fn, "__name__", "reference"))
        loss = out.loss
        if loss.requires_grad:
            (grad,) = torch.autograd.grad(loss, d, allow_unused=True)
        else:
            grad = None
    grad = torch.zeros_like(d) if grad is None else grad
    return float(loss.detach()), grad.detach().numpy().copy()


def reference_for(formulation) -> Reference:
    """The reference a formulation is compared with.

    Its ``reference`` field (for a hand-built formulation left None: the function's own
    ``reference`` attribute): a :class:`Reference` (the five built-ins carry their mpmath
    one), the name of a registered one, or a float64 callable with the loss signature.
    Without any, the float64 evaluation of the function itself, labelled ``"float64 (self)"``.
    """
    name = formulation.name

    def self_reference(distances, labels, candidate_labels, self_mask):
        return formulation.fn(distances, labels, candidate_labels, self_mask)

    declared = formulation.reference
    if declared is None:
        declared = getattr(formulation.fn, "reference", None)
    if isinstance(declared, Reference):
        found = declared
    elif isinstance(declared, str):
        found = get_reference(declared)
    elif callable(declared):
        return Reference(name, None, declared, label="float64 (user reference)")
    else:
        return Reference(name, None, self_reference, label="float64 (self)")
    if found.float64 is None:  # an mpmath loss without gradient: the gradient comes from float64 autograd
        return dataclasses.replace(found, float64=self_reference)
    return found


def compute_reference(reference: Reference, distances, labels, candidate_labels, self_mask,
                      *, dps: int = DEFAULT_DPS, mp_inputs=None) -> RefResult:
    """Evaluate a loss reference on one batch (once; it does not depend on the evaluated dtype).

    ``mp_inputs`` (from :func:`to_mp_inputs`) saves converting the batch again when
    several references share it.
    """
    if reference.mp is not None:
        result = mp_loss(reference, distances, labels, candidate_labels, self_mask, dps=dps, mp_inputs=mp_inputs)
        if result.grad is not None:
            grad = np.array([[_to_float64(x) for x in row] for row in result.grad], dtype=np.float64)
            nonzero = any(x != 0 for row in result.grad for x in row)
        elif reference.float64 is not None:
            grad = float64_loss(reference.float64, distances, labels, candidate_labels, self_mask)[1]
            nonzero = bool((grad != 0).any())
        else:
            grad, nonzero = None, False
        return RefResult(result.loss, grad, reference.describe(dps), nonzero)
    loss, grad = float64_loss(reference.float64, distances, labels, candidate_labels, self_mask)
    return RefResult(mp.mpf(loss), grad, reference.describe(dps), bool((grad != 0).any()))


# --------------------------------------------------------------------------- rounding and bits of error


def round_to_dtype(value, dtype) -> float:
    """Correctly round a real (mpf or float) to ``dtype`` (round to nearest, ties to even).

    The result is returned as a Python float (every value of the four dtypes is a
    float64). No double rounding: the mpf is rounded once at the dtype's precision,
    with its subnormal spacing and overflow to inf. mpmath values far below 1e-308
    round to 0.0 (or to the dtype's smallest subnormal) correctly.

    >>> round_to_dtype(mp.mpf("1e-400"), torch.float64), round_to_dtype(1e-40, torch.float32)
    (0.0, 9.99994610111476e-41)
    >>> round_to_dtype(65520.0, torch.float16)  # halfway between max and 2**16: even → inf
    inf
    """
    f = facts(dtype)
    p, emin, emax = f.significand_bits, f.min_exponent, f.max_exponent
    x = value if isinstance(value, mpmath.mpf) else mp.mpf(value)
    if not mpmath.isfinite(x):
        return float(x)
    if x == 0:
        return 0.0
    sign, man, exp, bc = x._mpf_
    sign, man, exp, bc = mpmath.libmp.normalize1(sign, man, exp, bc, p, mpmath.libmp.round_nearest)
    if emin <= exp + bc - 1 <= emax:  # a normal number of the dtype: one rounding at p bits, exact ldexp
        return math.ldexp(-man if sign else man, exp)
    with mp.workprec(max(mp.prec, p + 10)):  # subnormal or overflow: round at the dtype's quantum
        _, e = mpmath.frexp(x)  # |x| = m 2^e with 1/2 <= m < 1: leading bit 2^(e-1)
        quantum = max(e - 1, emin) - (p - 1)
        n = mpmath.nint(mpmath.ldexp(x, -quantum))  # ties to even
        rounded = mpmath.ldexp(n, quantum)
        largest = mpmath.ldexp(mp.mpf(2) - mpmath.ldexp(1, 1 - p), emax)
        if abs(rounded) > largest:
            return math.copysign(math.inf, float(rounded))
        return float(rounded)


def _as_float64_array(values) -> np.ndarray:
    if isinstance(values, torch.Tensor):
        return values.detach().to(torch.float64).cpu().numpy().reshape(-1)
    if isinstance(values, (mpmath.mpf, float, int, np.floating)):
        return np.array([float(values)], dtype=np.float64)
    return np.asarray(values, dtype=np.float64).reshape(-1)


_PACK = {torch.float16: ("<e", "<h"), torch.float32: ("<f", "<i"), torch.float64: ("<d", "<q")}


def _ordered(value: float, dtype: torch.dtype) -> int:
    """A float of ``dtype`` → its ordered integer: consecutive numbers differ by 1, -0 == +0, inf is
    one past the largest finite number."""
    width = bit_width(dtype)
    if dtype is torch.bfloat16:
        bits = struct.unpack("<i", struct.pack("<f", value))[0] >> 16  # bfloat16 = the top half of float32
    else:
        float_code, int_code = _PACK[dtype]
        bits = struct.unpack(int_code, struct.pack(float_code, value))[0]
    return -(bits & ((1 << (width - 1)) - 1)) if bits < 0 else bits


def ulp_distance(computed, reference_rounded, dtype) -> np.ndarray:
    """How many representable ``dtype`` numbers lie between two values (both in the dtype), as float64.

    >>> ulp_distance(1.0, 1.0 + 2**-23, torch.float32).tolist(), ulp_distance(-0.0, 5e-324, torch.float64).tolist()
    ([1.0], [1.0])
    """
    dtype = as_dtype(dtype)
    a = _as_float64_array(computed).tolist()
    b = _as_float64_array(reference_rounded).tolist()
    return np.array([float(abs(_ordered(x, dtype) - _ordered(y, dtype))) for x, y in zip(a, b)])


def _to_float64(value) -> float:
    """mpf → the nearest float64 (``float(mpf)`` truncates to 53 bits)."""
    if isinstance(value, mpmath.mpf):
        return mpmath.libmp.to_float(value._mpf_, False, mpmath.libmp.round_nearest)
    return float(value)


def _reference_list(reference, size: int) -> list:
    if isinstance(reference, mpmath.mpf) or np.isscalar(reference):
        return [reference]
    if isinstance(reference, torch.Tensor):
        return reference.detach().to(torch.float64).reshape(-1).tolist()
    if isinstance(reference, np.ndarray):
        return reference.reshape(-1).tolist()
    flat: list = []
    for item in reference:
        if isinstance(item, (list, tuple, np.ndarray)):
            flat.extend(_reference_list(item, len(item)))
        else:
            flat.append(item)
    return flat


def bits_of_error(computed, reference, dtype, *, floor: float = 0.0) -> float | np.ndarray:
    """Herbie's bits of error of ``computed`` (values of ``dtype``) against ``reference``.

    ``reference``: mpf, float, or a sequence / array / tensor of them, same size as
    ``computed`` (or a scalar for all). It is rounded correctly to ``dtype`` first;
    then ``log2(1 + ulp distance)``. A non-finite result against a finite reference
    counts as the dtype's bit width; a non-finite reference counts 0 bits when the
    result is the same non-finite value, else the width. A scalar in, a float out.

    ``floor > 0`` measures the error in ulps of ``max(|reference|, floor)`` instead
    (``log2(1 + |computed - rounded| / spacing(max(|reference|, floor)))``): an
    absolute error for values smaller than ``floor``, e.g. a loss that is tiny
    compared with the distances it is computed from.

    >>> round(bits_of_error(torch.tensor(0.0), 1e-10, torch.float32), 1)  # relative: all wrong
    29.6
    >>> round(bits_of_error(torch.tensor(0.0), 1e-10, torch.float32, floor=1.0), 1)  # absolute: fine
    0.0
    """
    dtype = as_dtype(dtype)
    width = float(bit_width(dtype))
    got = _as_float64_array(computed).tolist()
    refs = _reference_list(reference, len(got))
    if len(refs) == 1 and len(got) > 1:
        refs = refs * len(got)
    if len(refs) != len(got):
        raise ValueError(f"computed has {len(got)} values, reference {len(refs)}")
    bits = [_bits(value, r if isinstance(r, mpmath.mpf) else mp.mpf(float(r)), dtype, width, floor)
            for value, r in zip(got, refs)]
    if np.ndim(computed) == 0 and not isinstance(computed, (list, tuple)):
        return bits[0]
    return np.array(bits)


def _bits(value: float, exact, dtype: torch.dtype, width: float, floor: float) -> float:
    rounded = round_to_dtype(exact, dtype)
    if not (math.isfinite(value) and mpmath.isfinite(exact)):
        same = value == rounded or (math.isnan(value) and math.isnan(rounded))
        return 0.0 if same else width
    if floor > 0:
        gap = spacing(max(abs(rounded), floor), dtype)
        return min(math.log2(1.0 + abs(value - rounded) / gap), width)
    return min(math.log2(1.0 + abs(_ordered(value, dtype) - _ordered(rounded, dtype))), width)


def spacing(magnitude: float, dtype) -> float:
    """The gap between ``dtype`` numbers at ``magnitude`` (the subnormal gap below the normal range).

    >>> spacing(1.0, torch.float32) == 2**-23, spacing(0.0, torch.float32) == 2**-149
    (True, True)
    """
    f = facts(dtype)
    p, emin = f.significand_bits, f.min_exponent
    if magnitude == 0 or not math.isfinite(magnitude):
        exponent = emin
    else:
        exponent = max(math.frexp(abs(magnitude))[1] - 1, emin)
    return math.ldexp(1.0, exponent - (p - 1))


def gradient_bits_of_error(computed, reference: np.ndarray, dtype, *, floor: float = 0.0) -> float:
    """Normwise bits of error of a gradient: ``log2(1 + max|g - r| / spacing(max|r|))``.

    The error of the whole gradient measured in ulps (of ``dtype``) of its largest
    reference entry, so an entry that is negligible at the dtype's precision may
    underflow without counting, while a vanished or garbled gradient counts fully.
    Any non-finite entry: the bit width. An all-zero reference: 0 if the result is
    all zero too, else the width. ``floor > 0``: ulps of ``max(max|r|, floor)``.

    >>> gradient_bits_of_error(np.array([1.0, 0.0]), np.array([1.0, 1e-60]), torch.float32)
    0.0
    >>> round(gradient_bits_of_error(np.zeros(2), np.array([1.0, 0.5]), torch.float32), 3)  # vanished
    23.0
    """
    dtype = as_dtype(dtype)
    width = float(bit_width(dtype))
    got = _as_float64_array(computed)
    ref = np.asarray(reference, dtype=np.float64).reshape(-1)
    if not np.isfinite(got).all() or not np.isfinite(ref).all():
        return width
    scale = max(float(np.max(np.abs(ref))) if ref.size else 0.0, floor)
    error = float(np.max(np.abs(got - ref))) if ref.size else 0.0
    if scale == 0.0:
        return 0.0 if error == 0.0 else width
    return float(min(math.log2(1.0 + error / spacing(scale, dtype)), width))


def relative_error(computed, reference) -> float | np.ndarray:
    """``|computed - reference| / |reference|`` (computed in mpmath; 0/0 → 0, x/0 → inf).

    >>> relative_error(1.5, 1.0)
    0.5
    """
    got = _as_float64_array(computed)
    refs = _reference_list(reference, got.size)
    if len(refs) == 1 and got.size > 1:
        refs = refs * got.size
    out = []
    for g, r in zip(got.tolist(), refs):
        r = r if isinstance(r, mpmath.mpf) else mp.mpf(float(r))
        if not (math.isfinite(g) and mpmath.isfinite(r)):
            out.append(0.0 if (g == float(r) or (math.isnan(g) and mpmath.isnan(r))) else math.inf)
        elif r == 0:
            out.append(0.0 if g == 0 else math.inf)
        else:
            out.append(float(abs(mp.mpf(g) - r) / abs(r)))
    if np.ndim(computed) == 0 and not isinstance(computed, (list, tuple)):
        return out[0]
    return np.array(out)
