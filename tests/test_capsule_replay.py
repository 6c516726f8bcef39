"""Replaying a capsule (stablenca.runtime.sentinel.traced_step) must not change what the capsule recorded."""

import copy

import torch

from stablenca.runtime.sentinel import Snapshot, build_capsule, traced_step
from stablenca.training import StepContext, TrainConfig, Trainer


def test_replaying_a_capsule_leaves_its_optimizer_state_as_recorded():
    trainer = Trainer(TrainConfig(seed=0, epochs=1, model="seed", loss="modernnca"))
    batches = trainer.epoch_batches()
    trainer.run_step(StepContext(0, 0, 0, batches[0]))  # Adam's state exists from here on
    snapshot = Snapshot(trainer.model, trainer.optimizer, trainer.generator)
    snapshot.take()
    ctx = StepContext(0, 1, 1, batches[1])
    capsule = build_capsule(trainer, ctx, snapshot)
    recorded = copy.deepcopy(capsule["optimizer_state"])
    _, replayed = traced_step(trainer, capsule)
    assert replayed.finite  # so the replay ran the optimizer step
    for index, state in recorded["state"].items():
        for key, value in state.items():
            assert torch.equal(capsule["optimizer_state"]["state"][index][key], value), (index, key)
