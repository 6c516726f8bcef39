"""One call under a :class:`~stablenca.trace.tracer.Tracer`: :func:`trace_call` and :func:`find_nonfinite`."""

from __future__ import annotations

from collections.abc import Callable, Iterable

import torch

from .records import Finding, TraceResult
from .tracer import Tracer

def _loss_tensor(value):
    if isinstance(value, torch.Tensor):
        return value
    loss = getattr(value, "loss", None)
    return loss if isinstance(loss, torch.Tensor) else None


def trace_call(fn: Callable, *args, model: torch.nn.Module | None = None, backward: bool = True,
               allow: Iterable[str | Callable] = (), sources: bool = True, stop_at_first: bool = True,
               max_precursors: int = 100, cancellation_bits: int | None = None, **kwargs) -> TraceResult:
    """Run ``fn(*args, **kwargs)`` under a :class:`Tracer` and return a :class:`TraceResult`.

    If the result is a tensor (or has a tensor ``.loss``, like a ``LossOutput``) that requires
    grad, its backward pass (``.sum().backward()`` when it is not a scalar) also runs under
    the tracer, so a NaN that only appears in backward is found; gradients accumulate into
    ``.grad`` as usual. Backward is skipped once the forward pass already has a finding.
    A non-finite result (or, with ``model``, a non-finite parameter gradient) that no op was
    blamed for, for example an allow-listed inf that reached the loss, becomes a finding too.
    The keywords above are the tracer's; every other keyword goes to ``fn``.
    """
    tracer = Tracer(model=model, allow=allow, sources=sources, stop_at_first=stop_at_first,
                    max_precursors=max_precursors, cancellation_bits=cancellation_bits)
    with tracer:
        value = fn(*args, **kwargs)
        loss = _loss_tensor(value)
        if backward and loss is not None and loss.requires_grad and tracer.finding is None:
            (loss if loss.dim() == 0 else loss.sum()).backward()
    if tracer.finding is None and loss is not None:
        tracer.check_result(loss, "result")
    if tracer.finding is None and model is not None and backward:
        for name, p in model.named_parameters():
            if p.grad is not None:
                tracer.check_result(p.grad, f"gradient of {name}")
                if tracer.finding is not None:
                    break
    result = TraceResult(value, tracer.finding, list(tracer.findings), list(tracer.precursors),
                         tracer.precursors_dropped)
    tracer._release()
    return result


def find_nonfinite(fn: Callable, *args, model: torch.nn.Module | None = None, backward: bool = True,
                   **kwargs) -> Finding | None:
    """Run ``fn(*args, **kwargs)`` (and its backward) under the tracer; the first finding or None.

    The tracer keywords ``allow``, ``sources``, ``stop_at_first``, ``max_precursors`` and
    ``cancellation_bits`` are accepted too; use :func:`trace_call` to also get the
    precursors of a clean run.

    >>> find_nonfinite(lambda x: torch.exp(x) - torch.exp(x), torch.tensor([100.0])).root_cause["kind"]
    'overflow'
    >>> find_nonfinite(lambda x: (x * 2).sum(), torch.ones(3, requires_grad=True)) is None
    True
    """
    return trace_call(fn, *args, model=model, backward=backward, **kwargs).finding
