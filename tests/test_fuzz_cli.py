"""Fuzzing the CLI arguments and the loaders: exit 0 or 2, one line, never a traceback.

In-process for speed: ``stablenca.cli.main(argv)`` with stderr captured. Example counts
follow the hypothesis profile of tests/conftest.py (``HYPOTHESIS_PROFILE``); the tests
that train use an eighth of it, on tiny data, for one epoch.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import shutil
import tempfile
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from stablenca.cli import build_parser, main
from stablenca.errors import CapsuleError, StableNCAError

#: For the fuzz cases that train (tiny data, one epoch): an eighth of the profile's examples.
TRAINING = settings(max_examples=max(4, settings().max_examples // 8), deadline=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
LOADING = settings(deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])

WORKDIR = Path(tempfile.mkdtemp(prefix="stablenca-fuzz-"))


def _talent(root: Path, n_train: int = 24) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for split, n in (("train", n_train), ("val", 6), ("test", 6)):
        np.save(root / f"N_{split}.npy", rng.normal(size=(n, 3)))
        np.save(root / f"y_{split}.npy", np.arange(n) % 3)
    (root / "info.json").write_text(json.dumps({"task_type": "multiclass", "n_num_features": 3}))
    return root


@pytest.fixture(scope="module", autouse=True)
def _remove_workdir():
    yield
    shutil.rmtree(WORKDIR, ignore_errors=True)


TINY = _talent(WORKDIR / "tiny")
GARBAGE_CSV = WORKDIR / "garbage.csv"
GARBAGE_CSV.write_bytes(b"y,\x00\xff\n1,2\n")


# --------------------------------------------------------------------------- argument lists from the real options


def _options(command: str) -> list[argparse.Action]:
    """The options of ``stablenca COMMAND``, read from the real parser (so new options are fuzzed too)."""
    parser = build_parser()
    subparsers = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return [a for a in subparsers.choices[command]._actions
            if a.option_strings and a.dest not in ("help", "data", "out", "json")]


#: Text that cannot name a module to import (no ':'), a file to write, or a NUL (argv cannot hold one).
garbage = st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00:/\\"), max_size=12)
numbers = st.one_of(
    st.integers(-10 ** 25, 10 ** 25).map(str),
    st.floats(allow_nan=True, allow_infinity=True).map(repr),
    st.sampled_from(["0", "1", "2", "-1", "-0", "1e400", "nan", "inf", "-inf", "0x10", "1_000", " 3 ", "3.0"]),
)
values = st.one_of(numbers, garbage, st.just(""))
#: Values that pass argparse for an option of that type, so that most examples reach the deeper checks.
PLAUSIBLE = {
    "positive_int": st.integers(1, 40).map(str),
    "nonnegative_int": st.sampled_from(["0", "1", "3", str(2 ** 64), str(10 ** 30)]),
    "positive_float": st.sampled_from(["0.01", "1e-8", "1e30", "3"]),
    "nonnegative_float": st.sampled_from(["0", "0.01", "1e30"]),
    "device": st.sampled_from(["cpu", "cuda", "meta", "cuda:7", "mps"]),
    "target": st.sampled_from(["y", "a"]),
}


def _plausible(action: argparse.Action):
    for key in (getattr(action.type, "__name__", None), action.dest):
        if key in PLAUSIBLE:
            return PLAUSIBLE[key]
    return garbage


@st.composite
def argument_lists(draw, command: str, *, garbage_too: bool = True) -> list[str]:
    """``[command, --option value, ...]``: values of the option's type, or (``garbage_too``) anything."""
    argv = [command]
    for action in draw(st.lists(st.sampled_from(_options(command)), max_size=5)):
        argv.append(draw(st.sampled_from(action.option_strings)))
        if action.nargs == 0:  # a flag
            continue
        valid = list(action.choices or ()) + (["ratio", "difference", "nca_logspace", "modernnca", "nosuchmod:fn",
                                               "os:getcwd"] if action.dest == "loss" else [])
        typed = st.sampled_from(valid) if valid else _plausible(action)
        one = st.one_of(typed, values) if garbage_too else typed
        count = draw(st.integers(1, 2)) if action.nargs in ("+", "*") else 1
        argv += [draw(one) for _ in range(count)]
    return argv


def _run(argv: list[str]) -> tuple[int, str, str]:
    """``main(argv)`` in-process; anything but a return or SystemExit propagates (and fails the test)."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err), contextlib.chdir(WORKDIR):
        try:
            rc = main(argv)
        except SystemExit as exc:
            rc = exc.code
    return rc, out.getvalue(), err.getvalue()


def _check_outcome(argv: list[str], rc, stdout: str, stderr: str) -> None:
    assert rc in (0, 2), (argv, rc, stderr)
    assert "Traceback" not in stderr, (argv, stderr)
    if rc == 2:
        lines = stderr.strip().splitlines()
        assert len(lines) == 1 and "fix:" in lines[0], (argv, stderr)


@pytest.mark.parametrize("command", ["train", "diagnose"])
@LOADING
@given(data=st.data())
def test_fuzz_arguments_then_bad_data_is_exit_2(command, data):
    """Random options and values, with data that cannot load: every path ends in one line, exit 2."""
    argv = data.draw(argument_lists(command))
    argv += ["--data", str(GARBAGE_CSV)]
    if command == "diagnose":
        argv += ["--out", str(WORKDIR / "never-written")]
    rc, stdout, stderr = _run(argv)
    _check_outcome(argv, rc, stdout, stderr)
    assert not (WORKDIR / "never-written").exists()


@pytest.mark.parametrize("command", ["train", "diagnose"])
@TRAINING
@given(data=st.data())
def test_fuzz_arguments_on_tiny_data_is_exit_0_or_2(command, data):
    """Random options with values of their type on a tiny dataset, one epoch: it trains (0) or says why not (2)."""
    argv = data.draw(argument_lists(command, garbage_too=False))
    argv += ["--data", str(TINY), "--epochs", "1", "--mode", "sentinel"] if command == "diagnose" else \
        ["--data", str(TINY), "--epochs", "1"]
    if command == "diagnose":
        argv += ["--out", str(WORKDIR / "diag"), "--force", "--no-report"]
    rc, stdout, stderr = _run(argv)
    _check_outcome(argv, rc, stdout, stderr)


# --------------------------------------------------------------------------- random bytes into every loader


def _expect_stablenca_error_or_success(call) -> None:
    try:
        call()
    except StableNCAError as exc:
        assert "\n" not in str(exc) and "; fix: " in str(exc), str(exc)


@LOADING
@given(content=st.binary(max_size=400))
def test_fuzz_random_bytes_as_csv(content):
    from stablenca.data import load_csv, prepare

    path = WORKDIR / "fuzz.csv"
    path.write_bytes(content)
    _expect_stablenca_error_or_success(lambda: prepare(load_csv(path, target="y")))


cells = st.one_of(numbers, garbage, st.just(""), st.sampled_from(["NaN", "inf", "a", "b", "1", "2", '"', ","]))


@LOADING
@given(rows=st.lists(st.lists(cells, min_size=3, max_size=3), max_size=30),
       header=st.sampled_from([["a", "b", "y"], ["y", "y", "a"], ["a", "b", "c"], ["", "b", "y"]]),
       task=st.sampled_from([None, "multiclass", "regression"]))
def test_fuzz_random_tables_as_csv(rows, header, task):
    """Well-formed CSV text with random cells reaches the deeper checks (types, NaN, classes, constants)."""
    import csv

    from stablenca.data import load_csv, prepare

    path = WORKDIR / "table.csv"
    with io.StringIO() as buffer:
        csv.writer(buffer).writerows([header, *rows])
        path.write_text(buffer.getvalue())
    _expect_stablenca_error_or_success(lambda: prepare(load_csv(path, target="y", task=task)))


NPY_MAGIC = b"\x93NUMPY\x01\x00"


@LOADING
@given(content=st.one_of(st.binary(max_size=300), st.binary(max_size=200).map(lambda b: NPY_MAGIC + b)),
       name=st.sampled_from(["N_train.npy", "y_val.npy", "y_train.npy", "N_test.npy"]))
def test_fuzz_random_bytes_as_npy(content, name):
    from stablenca.data import load_talent_dir

    root = _talent(WORKDIR / "npy")
    (root / name).write_bytes(content)
    _expect_stablenca_error_or_success(lambda: load_talent_dir(root))


arrays = st.one_of(
    st.lists(st.floats(allow_nan=True, allow_infinity=True), max_size=30).map(np.array),
    st.lists(st.integers(-5, 5), max_size=30).map(np.array),
    st.lists(garbage, max_size=30).map(lambda v: np.array(v, dtype=str)),
    st.lists(st.binary(max_size=3), max_size=10).map(lambda v: np.array(v, dtype=bytes)),
    st.integers(0, 30).map(lambda n: np.zeros((n, 2, 2))),
    st.integers(0, 30).map(lambda n: np.ones((n, 1), dtype=np.complex64)),
)


@LOADING
@given(array=arrays, name=st.sampled_from(["N_train.npy", "N_val.npy", "y_train.npy", "y_test.npy"]))
def test_fuzz_random_arrays_in_a_talent_dir(array, name):
    from stablenca.data import load_talent_dir, prepare

    root = _talent(WORKDIR / "arrays")
    np.save(root / name, array)
    _expect_stablenca_error_or_success(lambda: prepare(load_talent_dir(root)))


json_values = st.recursive(st.one_of(st.none(), st.booleans(), st.integers(-3, 5), st.floats(allow_nan=False),
                                     st.text(max_size=10)),
                           lambda inner: st.one_of(st.lists(inner, max_size=3),
                                                   st.dictionaries(st.text(max_size=10), inner, max_size=3)),
                           max_leaves=8)
info_objects = st.fixed_dictionaries({}, optional={
    "task_type": st.one_of(st.sampled_from(["binclass", "multiclass", "regression"]), json_values),
    "n_num_features": st.one_of(st.integers(-1, 5), json_values),
    "n_cat_features": st.one_of(st.integers(-1, 5), json_values),
})


@LOADING
@given(content=st.one_of(st.binary(max_size=200), json_values.map(lambda v: json.dumps(v).encode()),
                         info_objects.map(lambda v: json.dumps(v).encode())))
def test_fuzz_random_info_json(content):
    from stablenca.data import load_talent_dir

    root = _talent(WORKDIR / "info")
    (root / "info.json").write_bytes(content)
    _expect_stablenca_error_or_success(lambda: load_talent_dir(root))


ZIP_MAGIC = b"PK\x03\x04"


@LOADING
@given(content=st.one_of(st.binary(max_size=300), st.binary(max_size=300).map(lambda b: ZIP_MAGIC + b)))
def test_fuzz_random_bytes_as_capsule(content):
    from stablenca.runtime.sentinel import load_capsule

    path = WORKDIR / "fuzz-capsule.pt"
    path.write_bytes(content)
    with pytest.raises(CapsuleError):
        load_capsule(path)
    rc, _, stderr = _run(["replay", str(path)])
    _check_outcome(["replay", str(path)], rc, "", stderr)
    assert rc == 2


tensors = st.one_of(st.integers(0, 4).map(lambda n: torch.zeros(n)), st.just(torch.tensor([1, 2, 3])),
                    st.just(torch.ByteTensor(8)))
capsule_values = st.one_of(json_values, tensors)
capsule_configs = st.one_of(
    json_values,
    st.fixed_dictionaries({"model": st.just("seed"), "data": st.just(str(TINY)), "loss": st.just("nca_logspace"),
                           "batch_size": st.just(4)},
                          optional={"epochs": st.one_of(st.integers(-1, 2), json_values),
                                    "device": st.one_of(st.just("cpu"), json_values),
                                    "model_options": st.one_of(st.just({}), json_values),
                                    "bogus": json_values}),
)


@TRAINING
@given(config=capsule_configs, values=st.fixed_dictionaries({
    key: capsule_values for key in ("epoch", "step", "step_in_epoch", "batch_indices", "model_state",
                                    "optimizer_state", "rng_state")}))
def test_fuzz_capsules_with_the_right_keys_and_random_values(config, values):
    """A capsule that passes the format check but holds nonsense: replay says so in one line."""
    from stablenca.runtime.sentinel import CAPSULE_FORMAT, CAPSULE_VERSION

    path = WORKDIR / "nonsense-capsule.pt"
    torch.save({"format": CAPSULE_FORMAT, "version": CAPSULE_VERSION, "config": config, **values}, path)
    rc, stdout, stderr = _run(["replay", str(path)])
    _check_outcome(["replay", str(path)], rc, stdout, stderr)


def test_fuzz_helpers_see_the_real_options():
    names = {name for action in _options("train") for name in action.option_strings}
    assert {"--epochs", "--seed", "--batch-size", "--lr", "--loss", "--model", "--device"} <= names
