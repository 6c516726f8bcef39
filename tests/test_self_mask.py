"""The shared self-pair mask: one read-only mask per shape, retired by any write, recognised by the probes."""

from __future__ import annotations

import torch

from stablenca.models.neighbours import is_leading_self_mask, leading_self_mask
from stablenca.runtime import probes


def test_the_mask_is_the_leading_diagonal_and_shared():
    mask = leading_self_mask(3, 5)
    assert torch.equal(mask, torch.eye(3, 5, dtype=torch.bool))
    assert leading_self_mask(3, 5) is mask
    assert is_leading_self_mask(mask) and is_leading_self_mask(mask.detach())  # publish() hands out a detached alias


def test_a_write_retires_the_mask_and_the_probes_read_what_is_there():
    mask = leading_self_mask(4, 6)
    mask[0, 1] = True  # a loss that writes into the mask it was given
    assert not is_leading_self_mask(mask)
    assert not probes._is_leading_diagonal(mask)  # read, not assumed
    fresh = leading_self_mask(4, 6)
    assert fresh is not mask and torch.equal(fresh, torch.eye(4, 6, dtype=torch.bool))
    assert is_leading_self_mask(fresh)


def test_lookalikes_are_not_trusted():
    shared = leading_self_mask(5, 7)
    copy = shared.clone()
    assert not is_leading_self_mask(copy) and probes._is_leading_diagonal(copy)  # verified by reading
    assert not is_leading_self_mask(shared[:, :5]) and not is_leading_self_mask(shared[1:, 1:])
    assert not is_leading_self_mask(torch.zeros(5, 7, dtype=torch.bool))


def test_probe_statistics_are_the_same_with_the_shared_mask_and_a_copy():
    generator = torch.Generator().manual_seed(0)
    distances = torch.rand(6, 9, generator=generator) * 40
    shared = leading_self_mask(6, 9)
    softmax = torch.softmax((-distances).masked_fill(shared, -float("inf")), dim=1)
    same = torch.rand(6, 9, generator=generator) < 0.4
    same &= ~shared
    published = {"distances": distances, "softmax": softmax, "same_class_mask": same}
    with_shared = probes.distance_statistics({**published, "self_mask": shared})
    with_copy = probes.distance_statistics({**published, "self_mask": shared.clone()})
    assert with_shared.keys() == with_copy.keys()
    for key in with_shared:
        assert float(with_shared[key]) == float(with_copy[key]), key
