"""The sentinel's pre-step snapshot: take() copies model, buffers and optimizer state; restore() puts
them back bit for bit, whether the copies are flat buffers (few small tensors) or one per tensor."""

from __future__ import annotations

import pytest
import torch

from stablenca.runtime import sentinel
from stablenca.runtime.sentinel import Snapshot


def _train_step(model, optimizer, x):
    optimizer.zero_grad()
    model(x).pow(2).mean().backward()
    optimizer.step()


def _state(model, optimizer):
    tensors = [t.detach().clone() for t in model.state_dict().values()]
    tensors += [v.clone() for s in optimizer.state.values() for v in s.values() if isinstance(v, torch.Tensor)]
    return tensors


@pytest.mark.parametrize("flat_elements", [0, sentinel.FLAT_SNAPSHOT_ELEMENTS])
def test_restore_brings_back_the_state_at_take(monkeypatch, flat_elements):
    monkeypatch.setattr(sentinel, "FLAT_SNAPSHOT_ELEMENTS", flat_elements)
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(5, 3), torch.nn.BatchNorm1d(3), torch.nn.Linear(3, 2))
    optimizer = torch.optim.Adam(model.parameters(), lr=0.1)
    x = torch.randn(8, 5)
    snapshot = Snapshot(model, optimizer)
    snapshot.take()  # before Adam has state
    _train_step(model, optimizer, x)
    for _ in range(2):  # the first take after Adam's lazy state, then a plain one
        snapshot.take()
        expected = _state(model, optimizer)
        expected_dict = {k: v.clone() for k, v in model.state_dict().items()}
        _train_step(model, optimizer, x * 3)
        assert not all(torch.equal(a, b) for a, b in zip(_state(model, optimizer), expected))
        saved = snapshot.model_state()
        assert all(torch.equal(saved[k], v) for k, v in expected_dict.items())
        snapshot.restore()
        assert all(torch.equal(a, b) and a.dtype == b.dtype for a, b in zip(_state(model, optimizer), expected))
        _train_step(model, optimizer, x)


def test_the_copies_are_not_the_live_tensors():
    model = torch.nn.Linear(3, 2)
    snapshot = Snapshot(model, None)
    snapshot.take()
    with torch.no_grad():
        model.weight.add_(1.0)
    assert not torch.equal(snapshot.model_state()["weight"], model.weight)
