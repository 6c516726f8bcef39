"""A straightforward ModernNCA evaluation, as TALENT's reference code does it (the baseline).

For every evaluation batch of 1024 queries it embeds the *whole* training split
again and computes ``softmax(-cdist(queries, candidates) / T) @ onehot`` in one
shot: a (1024, N) distance matrix per batch, and N embeddings recomputed per batch.
stablenca's :meth:`Trainer.predict` embeds the candidates once per evaluation and
streams the softmax over candidate chunks (:func:`stablenca.models.neighbours.soft_neighbour_readout`).

:class:`NaivePortTrainer` is the library's Trainer with only ``predict`` swapped for
this one, so a fit with either runs the same training steps and the same weights:
predictions must agree within rounding (:func:`assert_same_predictions`).

Written for the benchmarks; not part of the library.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from stablenca.training.trainer import Trainer

EVAL_BATCH = 1024


@torch.no_grad()
def naive_predict(trainer: Trainer, split: str, batch_size: int = EVAL_BATCH) -> np.ndarray:
    """Class probabilities (n, K) or regression values (n,), the straightforward way."""
    model = trainer.model
    model.eval()
    x, _ = trainer.data.tensors(split, trainer.dtype)
    x = x.to(trainer.device)
    if trainer.task == "regression":
        targets = trainer.y_train.to(trainer.dtype)[:, None]
    else:
        targets = F.one_hot(trainer.y_train, trainer.n_classes).to(trainer.dtype)
    temperature = getattr(model, "temperature", 1.0)
    outputs = []
    for start in range(0, len(x), batch_size):
        candidates = model(trainer.x_train)  # the whole training split, again for every batch
        queries = model(x[start:start + batch_size])
        probabilities = F.softmax(-torch.cdist(queries, candidates, p=2) / temperature, dim=1)
        outputs.append(probabilities @ targets)
    prediction = torch.cat(outputs).cpu().double().numpy()
    if trainer.task == "regression":
        prediction = prediction[:, 0] * trainer.data.y_std + trainer.data.y_mean
    return prediction


class NaivePortTrainer(Trainer):
    """The library's Trainer with TALENT-style evaluation (soft readout only)."""

    def predict(self, split: str) -> np.ndarray:
        if self.config.readout != "soft":
            return super().predict(split)
        return naive_predict(self, split)


def assert_same_predictions(trainer: Trainer, split: str, *, rtol: float | None = None,
                            atol: float | None = None) -> float:
    """Library and naive predictions for the same weights agree; returns the max abs difference."""
    fast = trainer.predict(split)
    naive = naive_predict(trainer, split)
    if rtol is None:
        rtol = 1e-4 if trainer.dtype == torch.float32 else 1e-10
    if atol is None:
        atol = 1e-5 if trainer.dtype == torch.float32 else 1e-12
    if fast.shape != naive.shape:
        raise AssertionError(f"shapes differ: {fast.shape} vs {naive.shape}")
    if not np.allclose(fast, naive, rtol=rtol, atol=atol):
        raise AssertionError(f"predictions differ on {split}: max |diff| {np.max(np.abs(fast - naive)):.3g}")
    if fast.ndim == 2 and not np.array_equal(fast.argmax(axis=1), naive.argmax(axis=1)):
        # Near-ties may flip; tolerate a handful but report them.
        flips = int(np.sum(fast.argmax(axis=1) != naive.argmax(axis=1)))
        if flips > max(1, len(fast) // 1000):
            raise AssertionError(f"{flips} predicted labels differ on {split}")
    return float(np.max(np.abs(fast - naive))) if fast.size else 0.0
