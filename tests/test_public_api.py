"""The public API: what ``from stablenca import *`` gives, and that each name resolves."""

import subprocess
import sys

import stablenca

NEEDED = {"find_nonfinite", "trace_call", "Finding", "watch", "publish", "run_check", "StableNCAError", "LossOutput"}


def test_the_names_a_user_needs_are_public_and_resolve():
    assert NEEDED <= set(stablenca.__all__)
    for name in stablenca.__all__:
        assert getattr(stablenca, name) is not None, name
    assert stablenca.run_check.__module__.startswith("stablenca.check")
    assert stablenca.Finding.__name__ == "Finding"


def test_import_stablenca_does_not_load_torch():
    # The pytest plugin imports stablenca in every pytest run of a user: it must stay cheap.
    code = "import sys, stablenca; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"


def test_the_cli_parser_does_not_load_torch():
    # `stablenca --help` builds every subcommand's parser: their defaults come from light modules.
    code = "import sys; from stablenca import cli; cli.build_parser(); print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"
