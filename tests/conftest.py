import os

import pytest
import torch
from hypothesis import HealthCheck, settings

# Property-test budgets: "dev" (default, bounded for CI), "ci", "nightly" via HYPOTHESIS_PROFILE.
settings.register_profile("dev", max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
settings.register_profile("ci", max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
settings.register_profile("nightly", max_examples=1000, deadline=None,
                          suppress_health_check=[HealthCheck.too_slow])
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "dev"))

torch.set_num_threads(min(2, torch.get_num_threads()))


@pytest.fixture(scope="session")
def abalone_multiclass():
    from stablenca.data import load_abalone, prepare

    return prepare(load_abalone(task="multiclass", split_seed=0))


@pytest.fixture(scope="session")
def abalone_regression():
    from stablenca.data import load_abalone, prepare

    return prepare(load_abalone(task="regression", split_seed=0))
