import os
import signal

import pytest
import torch
from hypothesis import HealthCheck, settings

# Property-test budgets, chosen with HYPOTHESIS_PROFILE: "dev" (the default; random examples, and a
# failing one is stored in .hypothesis/ and replayed first), "ci" (the default when CI is set, and what
# .ci/run uses): derandomised and without an example database, so every CI run, on any machine, draws
# the same examples and nothing stored by an earlier run can change the outcome; "nightly": long.
settings.register_profile("dev", max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
settings.register_profile("ci", max_examples=100, deadline=None, derandomize=True, database=None,
                          print_blob=True, suppress_health_check=[HealthCheck.too_slow])
settings.register_profile("nightly", max_examples=1000, deadline=None,
                          suppress_health_check=[HealthCheck.too_slow])
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci" if os.environ.get("CI") else "dev"))

torch.set_num_threads(min(2, torch.get_num_threads()))

# A suite started in the background by a shell without job control (`cmd &` in a script, under nohup)
# inherits SIGINT ignored, and Python then leaves it ignored: the Ctrl-C tests' signals, sent to this
# process and to the commands it starts (which inherit the disposition), would never arrive. They
# test what a user's Ctrl-C does, so they get Python's own handler back, as in any terminal.
if signal.getsignal(signal.SIGINT) == signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)


@pytest.fixture(scope="session")
def abalone_multiclass():
    from stablenca.data import load_abalone, prepare

    return prepare(load_abalone(task="multiclass", split_seed=0))


@pytest.fixture(scope="session")
def abalone_regression():
    from stablenca.data import load_abalone, prepare

    return prepare(load_abalone(task="regression", split_seed=0))
