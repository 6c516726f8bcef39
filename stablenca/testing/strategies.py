"""Hypothesis strategies for testing a loss's numerical stability in your own suite.

Scale regimes (the distance scale ``s``: every row's nearest same-class and
nearest other-class distances lie in [s, 1.25 s], see :mod:`stablenca.check`),
drawn log-uniformly:

=========  ================  =====================================================
regime     scales            what happens there
=========  ================  =====================================================
small      1e-3 .. 1         exp(-d) ≈ 1 - d: sums of nearly equal terms (cancellation)
normal     1 .. 50           every exp(-d) is a normal float32/float64 (not float16)
large      50 .. 1000        crosses float32's (87–104) and float64's (708–745) underflow
extremal   1000 .. 1e4       far past every underflow limit
all        1e-3 .. 1e4       the whole sweep of ``stablenca check``
=========  ================  =====================================================

Example (a property test of your own loss)::

    from hypothesis import given
    from stablenca.testing import strategies

    @given(strategies.batches(regime="large"))
    def test_my_loss_is_finite(batch):
        loss = my_loss(batch.distances.float(), batch.labels, batch.labels, batch.self_mask)
        assert torch.isfinite(loss).all()

>>> from hypothesis import given, settings
>>> @settings(max_examples=5, database=None)
... @given(batches(regime="small"))
... def symmetric(batch):
...     assert torch.equal(batch.distances, batch.distances.T) and batch.scale <= 1
>>> symmetric()
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch
from hypothesis import strategies as st

from ..check import FAR, KAPPA, Batch, build_batch
from ..floats import DTYPE_NAMES, as_dtype

#: Scale regimes: (lowest, highest) distance scale.
REGIMES: dict[str, tuple[float, float]] = {
    "small": (1e-3, 1.0),
    "normal": (1.0, 50.0),
    "large": (50.0, 1e3),
    "extremal": (1e3, 1e4),
    "all": (1e-3, 1e4),
}


_SINGLETONS = {False: "never", True: "allowed", "never": "never", "allowed": "allowed", "always": "always"}


def _regime(regime: str) -> tuple[float, float]:
    if regime not in REGIMES:
        raise ValueError(f"unknown regime {regime!r}; use one of {', '.join(REGIMES)}")
    return REGIMES[regime]


def scales(regime: str = "all") -> st.SearchStrategy[float]:
    """Distance scales of a regime (see :data:`REGIMES`), log-uniform: ``10 ** uniform(log10 lo, log10 hi)``.

    >>> from hypothesis import find
    >>> 50.0 <= find(scales("large"), lambda s: True) <= 1000.0
    True
    """
    lo, hi = _regime(regime)
    return st.floats(math.log10(lo), math.log10(hi)).map(lambda e: float(10.0 ** e))


def dtypes(names: Sequence[str] = DTYPE_NAMES) -> st.SearchStrategy[torch.dtype]:
    """Torch floating dtypes by name.

    >>> from hypothesis import find
    >>> find(dtypes(["float32", "float64"]), lambda d: True)
    torch.float32
    """
    return st.sampled_from([as_dtype(n) for n in names])


@st.composite
def labels(draw, rows: tuple[int, int] = (4, 12), classes: tuple[int, int] = (2, 3),
           singletons: bool | str = False) -> list[int]:
    """Class labels 0..k-1 (every class present), shuffled.

    ``singletons``: ``False``/``"never"``: every class has >= 2 members; ``True``/
    ``"allowed"``: classes of one member may occur; ``"always"``: class 0 has exactly
    one member (the others may too).

    >>> from hypothesis import find
    >>> sorted(find(labels(singletons="always"), lambda y: True))
    [0, 1, 1, 1]
    """
    mode = _SINGLETONS[singletons]
    n_classes = draw(st.integers(classes[0], classes[1]))
    smallest = 1 if mode != "never" else 2
    cap = max(smallest, rows[1] // n_classes)
    sizes = [draw(st.integers(smallest, cap)) for _ in range(n_classes)]
    if mode == "always":
        sizes[0] = 1
    while sum(sizes) < rows[0]:
        sizes[-1] += 1
    while sum(sizes) > rows[1] and max(sizes) > smallest:
        sizes[sizes.index(max(sizes))] -= 1
    values = [c for c, size in enumerate(sizes) for _ in range(size)]
    return list(draw(st.permutations(values)))


@st.composite
def batches(draw, regime: str = "all", *, scale: float | None = None, rows: tuple[int, int] = (4, 12),
            classes: tuple[int, int] = (2, 3), singletons: bool | str = False) -> Batch:
    """A :class:`stablenca.check.Batch`: distances (float64, symmetric, zero diagonal,
    non-negative, exact in every dtype), labels, and the scale.

    Every row's nearest same-class and nearest other-class distance lies in
    [s, 1.25 s] and the others in [s, 3 s] (up to the 8-bit input rounding), as in
    ``stablenca check``. ``batch.self_mask`` is the identity (in-batch neighbours).
    The labels, the scale and each row's nearest neighbours are drawn (and shrink);
    the far distances come from one drawn seed (seed 0: all equal to s).
    """
    y = draw(labels(rows=rows, classes=classes, singletons=singletons))
    s = draw(scales(regime)) if scale is None else float(scale)
    n = len(y)
    # The far distances only have to be no nearer than the nearest ones: drawn from a seed
    # (one choice instead of n²/2, so generation stays cheap; shrinks towards all 1.0... seed 0).
    seed = draw(st.integers(0, 2 ** 32 - 1), label="far distances seed")
    far = np.random.default_rng(seed).uniform(1.0, FAR, size=(n, n)).tolist() if seed else [[1.0] * n] * n
    near_same, near_other = [], []
    near = st.floats(1.0, KAPPA)
    for i in range(n):
        same = [j for j in range(n) if j != i and y[j] == y[i]]
        other = [j for j in range(n) if y[j] != y[i]]
        near_same.append((draw(st.sampled_from(same)), draw(near)) if same else None)
        near_other.append((draw(st.sampled_from(other)), draw(near)))
    return build_batch(y, s, far, near_same, near_other)


def distance_matrices(regime: str = "all", **kwargs) -> st.SearchStrategy[torch.Tensor]:
    """Distance matrices alone (float64, symmetric, zero diagonal, non-negative).

    >>> from hypothesis import find
    >>> d = find(distance_matrices("normal"), lambda d: True)
    >>> bool((d == d.T).all()) and bool((d.diagonal() == 0).all()) and bool((d >= 0).all())
    True
    """
    return batches(regime, **kwargs).map(lambda batch: batch.distances)


@st.composite
def embeddings_with_labels(draw, regime: str = "all", *, rows: tuple[int, int] = (4, 12),
                           dim: tuple[int, int] = (2, 6), classes: tuple[int, int] = (2, 3),
                           singletons: bool | str = False) -> tuple[torch.Tensor, torch.Tensor]:
    """(embeddings (B, D) float64, labels (B,)): coordinates in [-1, 1] times a regime's scale.

    Pairwise distances (``torch.cdist``) are then of the order of the scale.

    >>> from hypothesis import find
    >>> e, y = find(embeddings_with_labels("small"), lambda pair: True)
    >>> e.dtype, e.shape[0] == y.shape[0]
    (torch.float64, True)
    """
    y = draw(labels(rows=rows, classes=classes, singletons=singletons))
    d = draw(st.integers(dim[0], dim[1]))
    s = draw(scales(regime))
    coordinates = st.floats(-1.0, 1.0, allow_subnormal=False)
    points = [[draw(coordinates) for _ in range(d)] for _ in y]
    return torch.tensor(points, dtype=torch.float64) * s, torch.tensor(y, dtype=torch.int64)
