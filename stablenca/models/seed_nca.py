"""The student's encoder from the story: ``Linear(d_in, 3) → BatchNorm → ReLU → Linear(3, 3)``.

It is trained on in-batch pairwise distances (batch 32, Adam lr 1e-2) and predicts
with k-nearest neighbours (k = 3) in the 3-d embedding; both live in
:mod:`stablenca.models.neighbours` and :mod:`stablenca.training.trainer`.

>>> import torch
>>> SeedNCA(d_in=10)(torch.zeros(4, 10)).shape
torch.Size([4, 3])
"""

from __future__ import annotations

import torch
from torch import nn

from ..errors import ConfigError


class SeedNCA(nn.Module):
    """The homework's embedding network (3-d output)."""

    def __init__(self, *, d_in: int, d_hidden: int = 3, d_out: int = 3) -> None:
        super().__init__()
        if d_in < 1:
            raise ConfigError(f"{d_in=} must be >= 1", fix="pass the number of input columns")
        if d_hidden < 1 or d_out < 1:
            raise ConfigError(f"{d_hidden=} and {d_out=} must be >= 1", fix="use positive layer sizes")
        self.temperature = 1.0
        self.layers = nn.Sequential(
            nn.Linear(d_in, d_hidden),
            nn.BatchNorm1d(d_hidden),
            nn.ReLU(),
            nn.Linear(d_hidden, d_out),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x)
