"""The registered losses by name, and the one place that decides what a ``--loss`` names.

``name`` → a built-in :class:`Formulation` (with its mpmath reference as a field);
``package.module:function`` or ``path/file.py:function`` → a user loss
(:func:`is_user_spec`), loaded by :mod:`.user`.
"""

from __future__ import annotations

from ..errors import ConfigError
from . import builtin, mp, user
from .base import Formulation, LossOutput, Reference


def _builtin(name, fn, mp_fn, tasks, stable, summary, **fields) -> Formulation:
    # The float64 side of a built-in reference is the formulation itself in float64 (its
    # gradient by autograd serves where an mpmath reference gives the loss only).
    reference = Reference(name, mp_fn, fn, summary=(mp_fn.__doc__ or "").split("\n")[0])
    return Formulation(name, fn, tasks, stable, summary, reference=reference, **fields)


REGISTRY: dict[str, Formulation] = {
    f.name: f
    for f in [
        _builtin("ratio", builtin.ratio, mp.mp_ratio, ("multiclass",), False,
                 "-log(P_same/P_diff), the student's loss"),
        _builtin("ratio_eps", builtin.ratio_eps, mp.mp_ratio_eps, ("multiclass",), False,
                 "ratio with 1e-10 on both sums and once more in the divisor (the student's patch)"),
        _builtin("difference", builtin.difference, mp.mp_difference, ("multiclass",), False,
                 "P_diff.sum() - P_same.sum()"),
        _builtin("nca_logspace", builtin.nca_logspace, mp.mp_nca_logspace, ("multiclass",), True,
                 "-(logsumexp same - logsumexp all-but-self)"),
        _builtin("modernnca", builtin.modernnca, mp.mp_modernnca, ("multiclass", "regression"), True,
                 "TALENT: log(softmax @ onehot + 1e-7) + NLL, or MSE", task_arguments=True),
    ]
}


def is_user_spec(spec: str) -> bool:
    """Whether a ``--loss`` value names a user loss (``module:function``) rather than a registered one.

    >>> is_user_spec("ratio"), is_user_spec("mypkg.losses:my_loss")
    (False, True)
    """
    return ":" in spec


def is_stable(name: str) -> bool:
    """Whether ``name`` is a registered formulation that is finite at every scale (user losses: False)."""
    return name in REGISTRY and REGISTRY[name].stable


def get(name: str, task: str = "multiclass") -> Formulation:
    """Look a formulation up by name and check that it fits the task."""
    if name not in REGISTRY:
        raise ConfigError(f"unknown loss {name!r}",
                          fix=f"use one of {', '.join(REGISTRY)} or package.module:function")
    formulation = REGISTRY[name]
    if task not in formulation.tasks:
        raise ConfigError(
            f"loss {name!r} does not fit task {task!r} (it needs class labels)",
            fix="use --loss modernnca for regression, or --task multiclass",
        )
    return formulation


def resolve(spec: str, task: str = "multiclass") -> Formulation:
    """A registry name, or a user loss ``package.module:function`` wrapped as a formulation."""
    if not is_user_spec(spec):
        return get(spec, task)
    function = user.load_user_function(spec)
    user.check_signature(function, spec)
    tasks = tuple(getattr(function, "tasks", ("multiclass", "regression")))
    if task not in tasks:
        raise ConfigError(f"loss {spec!r} declares tasks {tasks}, not {task!r}",
                          fix=f"use --task {tasks[0]} or another loss")

    def wrapped(distances, labels, candidate_labels, self_mask):
        # The inputs are published for the user (the probes need them for the distance and
        # exp-underflow statistics); what the function publishes itself is kept too.
        user.publish_inputs(distances, labels, candidate_labels, self_mask)
        return user.as_loss_output(function(distances, labels, candidate_labels, self_mask), distances, spec)

    return Formulation(spec, wrapped, tasks, False, getattr(function, "__doc__", None) or spec,
                       reference=user.reference_of(function, spec), user=True)


def evaluate(formulation: Formulation, distances, labels, candidate_labels, self_mask,
             *, task: str = "multiclass", n_classes: int | None = None) -> LossOutput:
    """Call a formulation, with ``n_classes`` and ``task`` where it takes them."""
    if formulation.task_arguments:
        return formulation(distances, labels, candidate_labels, self_mask, n_classes=n_classes, task=task)
    return formulation(distances, labels, candidate_labels, self_mask)
