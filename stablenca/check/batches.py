"""Batches for the check: distance matrices whose scale is known, exactly representable in every dtype.

See :mod:`stablenca.check` for what is swept and why.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence

import numpy as np
import torch

from .. import floats

#: Every row's nearest same-class and nearest other-class distance lies in [s, KAPPA s].
KAPPA = 1.25
#: All other off-diagonal distances lie in [s, FAR s].
FAR = 3.0
SCALE_MIN, SCALE_MAX = 1e-3, 1e4
POINTS_PER_DECADE = 10
ROWS = (8, 16)
CLASSES = (2, 3)
POPULATIONS = ("paired", "singleton")
POPULATION_HELP = {
    "paired": "every class has >= 2 members (population a; breakdown scales refer to it)",
    "singleton": "one class has exactly 1 member (population b)",
}


def theory_window(dtype, kappa: float = KAPPA) -> tuple[float, float]:
    """Where the *ratio* loss must break for batches of this generator: [L_normal/kappa, L_zero].

    >>> [round(x, 1) for x in theory_window("float32")]
    [69.9, 104.0]
    """
    normal, zero = floats.exp_limits(dtype)
    return normal / kappa, zero


def scale_grid(scale_min: float = SCALE_MIN, scale_max: float = SCALE_MAX,
               points_per_decade: int = POINTS_PER_DECADE) -> list[float]:
    """Log-uniform scales, both ends included.

    >>> grid = scale_grid(1, 100, 2)
    >>> [round(s, 2) for s in grid]
    [1.0, 3.16, 10.0, 31.62, 100.0]
    """
    lo, hi = math.log10(scale_min), math.log10(scale_max)
    count = max(1, round((hi - lo) * points_per_decade))
    return [10 ** (lo + (hi - lo) * k / count) for k in range(count + 1)]



@dataclasses.dataclass
class Batch:
    """One generated batch: float64 distances exact in every dtype, labels, its scale."""

    distances: torch.Tensor
    labels: torch.Tensor
    scale: float
    population: str = "paired"

    @property
    def self_mask(self) -> torch.Tensor:
        return torch.eye(len(self.labels), dtype=torch.bool)

    @property
    def n_classes(self) -> int:
        return int(self.labels.max()) + 1

    @property
    def rows(self) -> int:
        return len(self.labels)

    def __repr__(self) -> str:
        return f"Batch({self.summary()})"

    def summary(self) -> str:
        """One line: scale, labels, and the nearest same/other distances per row."""
        d = self.distances.detach()
        same = self.labels[:, None] == self.labels[None, :]
        off = ~self.self_mask
        inf = torch.tensor(math.inf, dtype=d.dtype)
        near_same = torch.where(same & off, d, inf).min(dim=1).values
        near_other = torch.where(~same, d, inf).min(dim=1).values
        off_values = d[off]
        return (f"scale={self.scale:.4g} rows={self.rows} labels={self.labels.tolist()} "
                f"off-diagonal distances in [{float(off_values.min()):.4g}, {float(off_values.max()):.4g}]; "
                f"nearest same-class per row {[round(float(x), 4) for x in near_same]}; "
                f"nearest other-class per row {[round(float(x), 4) for x in near_other]}")


def quantize(values: torch.Tensor) -> torch.Tensor:
    """Round to 8 significant bits: exact in bfloat16, and in float16 for |x| in [2**-14, 65504].

    >>> quantize(torch.tensor([1.0 + 2**-9, 3.0], dtype=torch.float64)).tolist()
    [1.0, 3.0]
    """
    return values.to(torch.float32).to(torch.bfloat16).to(torch.float64)


def build_batch(labels: Sequence[int], scale: float, far: Sequence[Sequence[float]],
                near_same: Sequence[tuple[int, float] | None], near_other: Sequence[tuple[int, float] | None],
                population: str | None = None) -> Batch:
    """The deterministic construction behind both the check and :mod:`stablenca.testing.strategies`.

    ``far[i][j]`` (i < j used) in [1, FAR]; row i's ``near_same = (j, u)`` and
    ``near_other = (k, v)`` set ``u_ij = u_ji = u`` and ``u_ik = u_ki = v`` with u, v
    in [1, KAPPA] (later rows may overwrite earlier pairs, always with a value in
    [1, KAPPA], so every row keeps a nearest same and other distance in [s, KAPPA s]).
    Distances are ``quantize(scale · u)``.
    """
    labels = [int(v) for v in labels]
    rows = len(labels)
    u = np.ones((rows, rows))
    for i in range(rows):
        for j in range(i + 1, rows):
            u[i, j] = u[j, i] = far[i][j]
    for i in range(rows):
        for pair in (near_same[i], near_other[i]):
            if pair is not None:
                j, value = pair
                u[i, j] = u[j, i] = value
    np.fill_diagonal(u, 0.0)
    distances = quantize(torch.from_numpy(scale * u))
    counts = np.bincount(labels)
    if population is None:
        population = "singleton" if (counts == 1).any() else "paired"
    # Labels as 0..k-1 in order of first appearance (the losses index one-hot by label).
    return Batch(distances, torch.tensor(labels, dtype=torch.int64), float(scale), population)


def _labels(rng: np.random.Generator, rows: int, classes: int, singleton: bool) -> list[int]:
    if singleton:
        labels = [0] + [c for c in range(1, classes) for _ in range(2)]
        pool = list(range(1, classes))
    else:
        labels = [c for c in range(classes) for _ in range(2)]
        pool = list(range(classes))
    labels += [int(rng.choice(pool)) for _ in range(rows - len(labels))]
    rng.shuffle(labels)
    return labels


def random_batch(rng: np.random.Generator, scale: float, population: str = "paired",
                 rows: tuple[int, int] = ROWS, classes: tuple[int, int] = CLASSES) -> Batch:
    """A random batch at ``scale`` of the given population (see the module docstring)."""
    n_rows = int(rng.integers(rows[0], rows[1] + 1))
    n_classes = int(rng.integers(classes[0], classes[1] + 1))
    labels = _labels(rng, n_rows, n_classes, population == "singleton")
    far = rng.uniform(1.0, FAR, size=(n_rows, n_rows))
    near_same, near_other = [], []
    for i in range(n_rows):
        same = [j for j in range(n_rows) if j != i and labels[j] == labels[i]]
        other = [j for j in range(n_rows) if labels[j] != labels[i]]
        near_same.append((int(rng.choice(same)), float(rng.uniform(1.0, KAPPA))) if same else None)
        near_other.append((int(rng.choice(other)), float(rng.uniform(1.0, KAPPA))))
    return build_batch(labels, scale, far, near_same, near_other, population)
