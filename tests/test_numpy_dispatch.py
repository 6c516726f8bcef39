"""On AMD Zen 4 the CLI makes numpy sort with its AVX2 kernels (its AVX-512 ones are slow there)."""

import os
import subprocess
import sys

import pytest

from stablenca.runtime import numpy_dispatch

ZEN4 = "vendor_id\t: AuthenticAMD\ncpu family\t: 25\nmodel\t\t: 17\nflags\t\t: fpu sse2 avx2 avx512f avx512dq\n"
ZEN3 = ZEN4.replace(" avx512f avx512dq", "")
ZEN5 = ZEN4.replace("cpu family\t: 25", "cpu family\t: 26")
INTEL = "vendor_id\t: GenuineIntel\ncpu family\t: 6\nflags\t\t: fpu sse2 avx2 avx512f avx512dq\n"


@pytest.mark.parametrize("cpuinfo, slow", [(ZEN4, True), (ZEN3, False), (ZEN5, False), (INTEL, False), ("", False),
                                           ("vendor_id : AuthenticAMD\ncpu family : ?\nflags : avx512f\n", False),
                                           (ZEN4.replace("avx512f", "avx512fx"), False)])
def test_only_amd_family_19h_with_avx512_is_recognised(cpuinfo, slow):
    assert numpy_dispatch.slow_avx512_compress(cpuinfo) is slow


@pytest.fixture
def zen4(monkeypatch):
    monkeypatch.setattr(numpy_dispatch, "_cpuinfo", lambda: ZEN4)
    monkeypatch.delitem(sys.modules, "numpy", raising=False)  # restored by monkeypatch afterwards
    monkeypatch.setattr(numpy_dispatch, "_numpy_knows_these_target_names", lambda: True)


def test_on_zen4_before_numpy_is_imported_the_avx512_targets_are_turned_off(zen4):
    environ = {}
    assert numpy_dispatch.prefer_avx2_sorting(environ) is True
    assert environ == {"NPY_DISABLE_CPU_FEATURES": "X86_V4 AVX512_ICL AVX512_SPR"}


@pytest.mark.parametrize("given", ["", "AVX512_SPR"])
def test_the_users_own_setting_wins_even_an_empty_one(zen4, given):
    environ = {"NPY_DISABLE_CPU_FEATURES": given}
    assert numpy_dispatch.prefer_avx2_sorting(environ) is False
    assert environ == {"NPY_DISABLE_CPU_FEATURES": given}


def test_not_applied_once_numpy_is_imported(zen4, monkeypatch):
    monkeypatch.setitem(sys.modules, "numpy", object())
    environ = {}
    assert numpy_dispatch.prefer_avx2_sorting(environ) is False
    assert environ == {}


def test_not_applied_on_other_cpus_or_an_older_numpy(zen4, monkeypatch):
    monkeypatch.setattr(numpy_dispatch, "_numpy_knows_these_target_names", lambda: False)
    assert numpy_dispatch.prefer_avx2_sorting({}) is False
    monkeypatch.setattr(numpy_dispatch, "_numpy_knows_these_target_names", lambda: True)
    monkeypatch.setattr(numpy_dispatch, "_cpuinfo", lambda: INTEL)
    assert numpy_dispatch.prefer_avx2_sorting({}) is False


def test_the_installed_numpy_knows_the_target_names():
    # pyproject asks numpy >= 2.4.6; the names must be ones it dispatches, or it prints a complaint
    assert numpy_dispatch._numpy_knows_these_target_names()
    from numpy._core._multiarray_umath import __cpu_dispatch__
    assert set(numpy_dispatch.AVX512_TARGETS.split()) <= set(__cpu_dispatch__)


CLI_ON_ZEN4 = """
import os, sys
from stablenca.runtime import numpy_dispatch
numpy_dispatch._cpuinfo = lambda: {cpuinfo!r}
from stablenca import cli
assert "numpy" not in sys.modules, "importing the CLI imported numpy"
try:
    cli.main(["--version"])
except SystemExit:
    pass
import numpy
from numpy._core._multiarray_umath import __cpu_features__
print(os.environ.get("NPY_DISABLE_CPU_FEATURES"), __cpu_features__.get("X86_V4"))
"""


def test_the_cli_sets_it_before_its_commands_import_numpy():
    env = {k: v for k, v in os.environ.items() if k != "NPY_DISABLE_CPU_FEATURES"}
    out = subprocess.run([sys.executable, "-c", CLI_ON_ZEN4.format(cpuinfo=ZEN4)], capture_output=True, text=True,
                         check=True, env=env)
    setting, avx512 = out.stdout.split("\n")[-2].rsplit(" ", 1)
    assert setting == "X86_V4 AVX512_ICL AVX512_SPR"
    assert avx512 == "False"  # numpy, imported after it, took the setting (False too on a CPU without AVX-512)
    assert "cannot disable" not in out.stderr
