"""Bad input: one clear line on stderr, exit code 2, never a traceback (the catalogue of docs/errors.md).

Every CLI case runs ``python -m stablenca.cli ...`` in a process of its own. Starting
Python and importing torch costs seconds per process, so by default the processes
are forked from one warm server that has imported torch once; the child then runs
``stablenca.cli`` as ``__main__`` exactly as ``python -m`` does. Set
``STABLENCA_TEST_COLD_CLI=1`` to start every case as a fresh
``[sys.executable, "-m", "stablenca.cli", ...]`` instead (slow, same results).
A few tests always start a fresh interpreter, to keep the two honest.
"""

from __future__ import annotations

import dataclasses
import json
import os
import pathlib
import select
import subprocess
import sys

import numpy as np
import pytest
import torch

from stablenca.errors import (CapsuleError, ConfigError, DataError, OutputError, StableNCAError,
                              UserLossError)

CLI = [sys.executable, "-m", "stablenca.cli"]
COLD = os.environ.get("STABLENCA_TEST_COLD_CLI") == "1" or not hasattr(os, "fork")
TIMEOUT = 300

# --------------------------------------------------------------------------- running the CLI


@dataclasses.dataclass
class Result:
    argv: list[str]
    rc: int
    stdout: str
    stderr: str

    def __str__(self) -> str:  # what a failing assert shows
        return f"stablenca {' '.join(self.argv)} -> rc {self.rc}\nstdout: {self.stdout}\nstderr: {self.stderr}"


_SERVER = r"""
import json, os, runpy, sys, traceback
import stablenca.data, stablenca.runtime.diagnose, stablenca.runtime.sentinel, stablenca.training.trainer, stablenca.losses.user
import sklearn.metrics, sklearn.neighbors, sklearn.preprocessing
import torch._dynamo  # torch.optim imports it at the first optimizer (seconds)
replies = os.fdopen(os.dup(1), "w")
for line in sys.stdin:
    request = json.loads(line)
    pid = os.fork()
    if pid == 0:  # the child: `python -m stablenca.cli ARGV`, run in request["cwd"]
        code = 1
        try:
            os.chdir(request["cwd"])
            for fd, name in ((1, "stdout"), (2, "stderr")):
                target = os.open(request[name], os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
                os.dup2(target, fd)
                os.close(target)
            sys.argv = ["stablenca", *request["argv"]]
            try:
                runpy.run_module("stablenca.cli", run_name="__main__", alter_sys=True)
                code = 0
            except SystemExit as exc:
                if exc.code is None or isinstance(exc.code, int):
                    code = exc.code or 0
                else:
                    print(exc.code, file=sys.stderr)
        except BaseException:
            traceback.print_exc()  # what an uncaught exception prints
            code = 1
        finally:
            try:
                sys.stdout.flush()
                sys.stderr.flush()
            finally:
                os._exit(code)
    _, status = os.waitpid(pid, 0)
    replies.write(json.dumps({"rc": os.waitstatus_to_exitcode(status)}) + "\n")
    replies.flush()
"""


class WarmCli:
    """Runs each CLI call in a process forked from a server that imported torch once."""

    def __init__(self, workdir: pathlib.Path) -> None:
        self.workdir = workdir
        self.count = 0
        self.server = subprocess.Popen([sys.executable, "-c", _SERVER], stdin=subprocess.PIPE,
                                       stdout=subprocess.PIPE, text=True)

    def __call__(self, argv: list[str], cwd: pathlib.Path) -> Result:
        self.count += 1
        out, err = self.workdir / f"{self.count}.out", self.workdir / f"{self.count}.err"
        request = {"argv": argv, "cwd": str(cwd), "stdout": str(out), "stderr": str(err)}
        self.server.stdin.write(json.dumps(request) + "\n")
        self.server.stdin.flush()
        ready, _, _ = select.select([self.server.stdout], [], [], TIMEOUT)
        if not ready:
            self.close()
            pytest.fail(f"stablenca {' '.join(argv)} did not finish in {TIMEOUT}s")
        reply = self.server.stdout.readline()
        assert reply, "the CLI test server died"
        return Result(argv, json.loads(reply)["rc"], out.read_text(), err.read_text())

    def close(self) -> None:
        if self.server.poll() is None:
            self.server.stdin.close()
            try:
                self.server.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.server.kill()
                self.server.wait()


def run_cold(argv: list[str], cwd: pathlib.Path) -> Result:
    done = subprocess.run([*CLI, *argv], cwd=cwd, capture_output=True, text=True, timeout=TIMEOUT)
    return Result(argv, done.returncode, done.stdout, done.stderr)


@pytest.fixture(scope="module")
def cli(tmp_path_factory):
    """``cli(*argv, cold=False)`` runs ``stablenca ARGV`` in its own process, in a scratch directory."""
    cwd = tmp_path_factory.mktemp("cli-cwd")
    warm = None if COLD else WarmCli(tmp_path_factory.mktemp("cli-io"))

    def run(*argv, cold: bool = False) -> Result:
        argv = [str(a) for a in argv]
        return run_cold(argv, cwd) if cold or warm is None else warm(argv, cwd)

    yield run
    if warm is not None:
        warm.close()


def assert_clear_error(result: Result, *fragments: str) -> str:
    """Exit code 2 and one line on stderr: ``stablenca: error: PROBLEM; fix: FIX``, no traceback."""
    assert result.rc == 2, result
    assert "Traceback" not in result.stderr, result
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result
    line = lines[0]
    assert line.startswith("stablenca: error: ") and "; fix: " in line, result
    for fragment in fragments:
        assert fragment in line, result
    return line


# --------------------------------------------------------------------------- the inputs


def write_csv(path: pathlib.Path, labels, *, n: int = 40, cell=None) -> pathlib.Path:
    """Two numerical features a, b and a target y cycling through ``labels``; ``cell(i)`` may replace a."""
    rng = np.random.default_rng(0)
    lines = ["a,b,y"]
    for i in range(n):
        a = cell(i) if cell is not None else f"{rng.normal():.4f}"
        lines.append(f"{a},{rng.normal():.4f},{labels[i % len(labels)]}")
    path.write_text("\n".join(lines) + "\n")
    return path


def write_talent(root: pathlib.Path, y_train, y_val, y_test, *, task_type="multiclass", widths=(3, 3, 3),
                 info=True) -> pathlib.Path:
    rng = np.random.default_rng(1)
    root.mkdir(parents=True, exist_ok=True)
    for split, y, width in zip(("train", "val", "test"), (y_train, y_val, y_test), widths):
        np.save(root / f"N_{split}.npy", rng.normal(size=(len(y), width)))
        np.save(root / f"y_{split}.npy", np.asarray(y))
    if info:
        (root / "info.json").write_text(json.dumps({"task_type": task_type, "n_num_features": 3,
                                                    "n_cat_features": 0}))
    return root


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    """Every bad (and every awkward but valid) input of the catalogue, as absolute paths."""
    root = tmp_path_factory.mktemp("inputs")
    p = {}
    p["ok.csv"] = write_csv(root / "ok.csv", [0, 1, 2])
    p["strings.csv"] = write_csv(root / "strings.csv", ["cat", "dog", "eel"])
    p["odd_labels.csv"] = write_csv(root / "odd_labels.csv", [-4, 7, 11])
    p["one_class.csv"] = write_csv(root / "one_class.csv", [5])
    p["constant.csv"] = write_csv(root / "constant.csv", [2.5])
    p["nan.csv"] = write_csv(root / "nan.csv", [0, 1], cell=lambda i: "nan" if i == 3 else "0.5")
    p["inf.csv"] = write_csv(root / "inf.csv", [0, 1], cell=lambda i: "-inf" if i == 7 else "0.5")
    p["binary.csv"] = root / "binary.csv"
    p["binary.csv"].write_bytes(b"\x00\xff\xfe\x93 not text \x01\x02")
    p["ragged.csv"] = root / "ragged.csv"
    p["ragged.csv"].write_text("a,b,y\n1,2,0\n3,4\n")
    # TALENT directories
    p["singleton"] = write_talent(root / "singleton", [0] * 6 + [1] * 5 + [2], [0, 1, 0, 1], [1, 0, 1, 0])
    p["no_info"] = write_talent(root / "no_info", [0, 1] * 6, [0, 1], [0, 1], info=False)
    p["bad_shape"] = write_talent(root / "bad_shape", [0, 1] * 6, [0, 1], [0, 1], widths=(3, 4, 3))
    p["talent_odd_labels"] = write_talent(root / "talent_odd_labels", [3, 7, 11] * 4, [3, 7], [7, 11])
    p["talent_constant"] = write_talent(root / "talent_constant", [2.5] * 12, [2.5, 2.5], [2.5, 2.5],
                                        task_type="regression")
    p["lone_last_row"] = write_talent(root / "lone_last_row", [0, 1] * 5 + [0], [0, 1], [0, 1])  # 11 rows
    p["corrupt_npy"] = write_talent(root / "corrupt_npy", [0, 1] * 6, [0, 1], [0, 1])
    (p["corrupt_npy"] / "N_train.npy").write_bytes(b"\x93NUMPY\x01\x00garbage that is no header")
    # a regular file, to put an output directory under
    p["a_file"] = root / "a_file"
    p["a_file"].write_text("I am a file\n")
    # user losses
    p["losses.py"] = root / "my_losses.py"
    p["losses.py"].write_text(
        "import torch\n\n"
        "def fails(distances, labels, candidate_labels, self_mask):\n"
        "    raise RuntimeError('boom in the user loss')\n\n"
        "def two_args(distances, labels):\n"
        "    return distances.sum()\n"
    )
    return p


# --------------------------------------------------------------------------- the catalogue: bad input → exit 2


TRAIN_1 = ["train", "--epochs", "1"]

#: id → (argv from the inputs, fragments the one line must contain). Every row is a line of docs/errors.md.
BAD_INPUT = {
    "missing_csv": (lambda p: [*TRAIN_1, "--data", p["ok.csv"].parent / "nope.csv", "--target", "y"],
                    ["nope.csv does not exist"]),
    "missing_dir": (lambda p: [*TRAIN_1, "--data", p["ok.csv"].parent / "no_such_dir"],
                    ["no_such_dir does not exist"]),
    "corrupt_csv_bytes": (lambda p: [*TRAIN_1, "--data", p["binary.csv"], "--target", "y"],
                          ["binary.csv is not UTF-8 text"]),
    "corrupt_csv_ragged": (lambda p: [*TRAIN_1, "--data", p["ragged.csv"], "--target", "y"],
                           ["ragged.csv line 3 has 2 fields but the header has 3"]),
    "corrupt_npy": (lambda p: [*TRAIN_1, "--data", p["corrupt_npy"]],
                    ["N_train.npy is not a readable .npy file"]),
    "csv_without_target_column": (lambda p: [*TRAIN_1, "--data", p["ok.csv"], "--target", "label"],
                                  ["has no column 'label'", "'a', 'b', 'y'"]),
    "csv_without_target_option": (lambda p: [*TRAIN_1, "--data", p["ok.csv"]],
                                  ["needs a target column", "--target COLUMN"]),
    "nan_feature": (lambda p: [*TRAIN_1, "--data", p["nan.csv"], "--target", "y"],
                    ["NaN or inf values in numerical column(s) 'a'"]),
    "inf_feature": (lambda p: [*TRAIN_1, "--data", p["inf.csv"], "--target", "y"],
                    ["NaN or inf values in numerical column(s) 'a'"]),
    "one_class": (lambda p: [*TRAIN_1, "--data", p["one_class.csv"], "--target", "y"],
                  ["has one class ('5') in the training split"]),
    "constant_regression_target": (lambda p: [*TRAIN_1, "--data", p["constant.csv"], "--target", "y",
                                              "--task", "regression"],
                                   ["is constant (2.5) in the training split"]),
    "constant_regression_talent": (lambda p: [*TRAIN_1, "--data", p["talent_constant"], "--task", "regression"],
                                   ["is constant (2.5) in the training split"]),
    "talent_without_info_json": (lambda p: [*TRAIN_1, "--data", p["no_info"]], ["info.json is missing"]),
    "talent_inconsistent_shapes": (lambda p: [*TRAIN_1, "--data", p["bad_shape"]],
                                   ["N_val.npy has 4 columns but info.json says n_num_features=3"]),
    "task_regression_on_string_labels": (lambda p: [*TRAIN_1, "--data", p["strings.csv"], "--target", "y",
                                                    "--task", "regression"],
                                         ["task=regression but", "is not numeric", "--task multiclass"]),
    # --task is asked: without it the task is inferred from the column (regression).
    "task_multiclass_on_continuous_target": (lambda p: [*TRAIN_1, "--data", p["ok.csv"], "--target", "a",
                                                        "--task", "multiclass"],
                                             ["distinct non-integer values", "--task regression"]),
    "task_against_info_json": (lambda p: [*TRAIN_1, "--data", p["singleton"], "--task", "regression"],
                               ["task=regression was asked but", "task_type='multiclass'"]),
    "loss_does_not_fit_task": (lambda p: [*TRAIN_1, "--loss", "ratio", "--task", "regression"],
                               ["loss 'ratio' does not fit task 'regression'", "--loss modernnca"]),
    "batch_size_1": (lambda p: [*TRAIN_1, "--batch-size", "1"], ["batch_size=1 is too small", "--batch-size 2"]),
    "empty_candidate_set": (lambda p: [*TRAIN_1, "--data", p["lone_last_row"], "--model", "seed",
                                       "--batch-size", "10"],
                            ["last batch of every epoch holds 1 row", "candidate set is empty",
                             "--batch-size 11"]),
    "epochs_not_a_number": (lambda p: ["train", "--epochs", "abc"], ["--epochs: 'abc' is not an integer"]),
    "epochs_negative": (lambda p: ["train", "--epochs", "-1"], ["--epochs: -1 must be >= 1"]),
    "seed_negative": (lambda p: ["train", "--seed", "-3"], ["--seed: -3 must be >= 0"]),
    "lr_not_finite": (lambda p: ["diagnose", "--lr", "nan"], ["--lr: 'nan' is not a finite number"]),
    "seed_too_large": (lambda p: [*TRAIN_1, "--seed", str(2 ** 64)], ["is out of range"]),
    "unknown_device": (lambda p: [*TRAIN_1, "--device", "toaster"], ["'toaster' is not a torch device"]),
    "out_under_a_file": (lambda p: ["diagnose", "--out", p["a_file"] / "sub", "--data", p["singleton"],
                                    "--model", "seed", "--epochs", "1", "--no-report"],
                         ["cannot write to", "Not a directory", "writable --out"]),
    "out_is_a_file": (lambda p: ["diagnose", "--out", p["a_file"], "--data", p["singleton"],
                                 "--model", "seed", "--epochs", "1", "--no-report"],
                      ["exists and is not a directory"]),
    "user_loss_not_importable": (lambda p: [*TRAIN_1, "--loss", "nosuchmod:fn"],
                                 ["cannot import 'nosuchmod'", "PYTHONPATH"]),
    "user_loss_wrong_signature": (lambda p: [*TRAIN_1, "--loss", "os:getcwd"],
                                  ["must accept (distances, labels, candidate_labels, self_mask)"]),
    "user_loss_file_wrong_signature": (lambda p: [*TRAIN_1, "--loss", f"{p['losses.py']}:two_args"],
                                       ["must accept (distances, labels, candidate_labels, self_mask)"]),
    "user_loss_raises_in_training": (lambda p: [*TRAIN_1, "--data", p["singleton"],
                                                "--loss", f"{p['losses.py']}:fails"],
                                     ["raised RuntimeError: boom in the user loss"]),
}


@pytest.mark.parametrize("case", list(BAD_INPUT))
def test_cli_bad_input(cli, inputs, case):
    argv, fragments = BAD_INPUT[case]
    assert_clear_error(cli(*argv(inputs)), *fragments)


def test_cli_bad_input_from_a_fresh_interpreter(cli, inputs):
    """The same line from a real ``python -m stablenca.cli`` (not forked from the warm server)."""
    argv, fragments = BAD_INPUT["missing_csv"]
    cold = cli(*argv(inputs), cold=True)
    line = assert_clear_error(cold, *fragments)
    assert line == assert_clear_error(cli(*argv(inputs)))


# --------------------------------------------------------------------------- awkward but valid input → exit 0


def test_cli_string_labels_are_encoded(cli, inputs):
    result = cli(*TRAIN_1, "--data", inputs["strings.csv"], "--target", "y", "--json")
    assert result.rc == 0, result
    assert json.loads(result.stdout)["status"] == "completed"


@pytest.mark.parametrize("source", ["odd_labels.csv", "talent_odd_labels"])
def test_cli_labels_that_are_not_0_to_k_minus_1_work(cli, inputs, source):
    target = ["--target", "y"] if source.endswith(".csv") else []
    result = cli(*TRAIN_1, "--data", inputs[source], *target, "--json")
    assert result.rc == 0, result
    assert json.loads(result.stdout)["status"] == "completed"


@pytest.mark.parametrize("model,loss", [("seed", "nca_logspace"), ("seed", "modernnca"),
                                        ("modernnca", "nca_logspace"), ("modernnca", "modernnca")])
def test_cli_stable_losses_handle_a_class_alone_in_its_batch(cli, inputs, model, loss):
    # The singleton directory has one training row of class 2; with batch size >= 12 every batch
    # holds it as the only member of its class.
    result = cli("train", "--data", inputs["singleton"], "--model", model, "--loss", loss, "--batch-size", "16",
                 "--epochs", "2", "--json")
    assert result.rc == 0, result
    fit = json.loads(result.stdout)
    assert fit["status"] == "completed" and not fit["diverged"]
    assert all(np.isfinite(v) for v in fit["test"].values())


def test_cli_ratio_on_a_class_alone_in_its_batch_diverges_with_root_cause_empty_set(cli, inputs, tmp_path):
    """The student's ratio reproduces its failure on purpose: P_same is an empty sum, log(0)."""
    out = tmp_path / "diag"
    result = cli("diagnose", "--out", out, "--data", inputs["singleton"], "--model", "seed", "--loss", "ratio",
                 "--batch-size", "16", "--epochs", "2", "--no-report")
    assert result.rc == 0, result
    assert "DIVERGED at epoch 0 step 0" in result.stdout and "root cause empty_set" in result.stdout, result
    run = json.loads((out / "summary.json").read_text())["runs"][0]
    assert run["status"] == "diverged" and run["first_nonfinite"]["root_cause"]["kind"] == "empty_set"
    assert (out / run["capsule"]).is_file()


def test_cli_batch_size_above_the_training_rows_is_one_batch(cli, inputs):
    result = cli(*TRAIN_1, "--data", inputs["singleton"], "--batch-size", str(10 ** 30), "--json")
    assert result.rc == 0, result
    assert json.loads(result.stdout)["steps_run"] == 1


# --------------------------------------------------------------------------- capsules


@pytest.fixture(scope="module")
def capsule(inputs, tmp_path_factory):
    """A real capsule: the student's ratio on the singleton directory fails at step 0."""
    from stablenca.runtime.diagnose import diagnose
    from stablenca.training.trainer import TrainConfig

    out = tmp_path_factory.mktemp("capsule")
    summary = diagnose(out=out, models=["seed"], loss_names=["ratio"], report=False,
                       base=TrainConfig(data=str(inputs["singleton"]), batch_size=16, epochs=1))
    return out / summary["runs"][0]["capsule"]


class _RunsCode:
    """Unpickling this calls ``os.system`` (a classic pickle payload)."""

    def __init__(self, command: str) -> None:
        self.command = command

    def __reduce__(self):
        return os.system, (self.command,)


def test_cli_capsule_that_is_not_a_capsule(cli, tmp_path):
    text = tmp_path / "notes.pt"
    text.write_text("just some notes\n")
    assert_clear_error(cli("replay", text), "notes.pt is not a torch.save file", "not a readable capsule")
    weights = tmp_path / "weights.pt"
    torch.save({"weight": torch.zeros(3)}, weights)
    assert_clear_error(cli("replay", weights), "weights.pt is not a stablenca capsule")
    assert_clear_error(cli("replay", tmp_path), "is a directory, not a capsule file")
    assert_clear_error(cli("replay", tmp_path / "absent.pt"), "absent.pt does not exist")


def test_cli_truncated_capsule(cli, capsule, tmp_path):
    good = capsule.read_bytes()
    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes(good[: len(good) // 2])
    assert_clear_error(cli("replay", truncated), "truncated.pt is truncated or damaged")
    assert cli("replay", capsule).rc == 0  # the capsule it was cut from replays


@pytest.mark.parametrize("how", ["torch.save", "torch.save legacy format", "pickle.dumps"])
def test_capsule_with_a_code_running_pickle_is_refused_and_the_code_does_not_run(cli, tmp_path, how):
    import io
    import pickle

    marker = tmp_path / "pwned"
    evil = tmp_path / "evil.pt"
    payload = {"format": "stablenca-capsule", "version": 1, "payload": _RunsCode(f"touch {marker}")}
    if how == "pickle.dumps":
        evil.write_bytes(pickle.dumps(payload))
    else:
        buffer = io.BytesIO()
        torch.save(payload, buffer, _use_new_zipfile_serialization=how == "torch.save")
        evil.write_bytes(buffer.getvalue())
    assert not marker.exists()
    line = assert_clear_error(cli("replay", evil), "evil.pt")
    if how != "pickle.dumps":  # a raw pickle is not even a torch file; torch.save ones name what they ask for
        assert f"asks to load the Python object {os.system.__module__}.system, which is refused for safety" in line
    from stablenca.runtime.sentinel import load_capsule

    with pytest.raises(CapsuleError):
        load_capsule(evil)
    assert not marker.exists()  # neither the CLI nor the API ran the payload


# --------------------------------------------------------------------------- the same through the API


def _api_cases(p):
    from stablenca import losses
    from stablenca.losses import user as user_loss
    from stablenca.data import load_csv, load_dataset, load_talent_dir
    from stablenca.models.neighbours import soft_neighbour_readout
    from stablenca.artifacts import prepare_out_dir
    from stablenca.runtime.sentinel import load_capsule
    from stablenca.training.trainer import TrainConfig, train

    return {
        "missing_csv": (DataError, lambda: load_dataset(p["ok.csv"].parent / "nope.csv", target="y")),
        "corrupt_npy": (DataError, lambda: load_talent_dir(p["corrupt_npy"])),
        "csv_without_target_column": (DataError, lambda: load_csv(p["ok.csv"], target="label")),
        "nan_feature": (DataError, lambda: load_csv(p["nan.csv"], target="y")),
        "one_class": (DataError, lambda: load_csv(p["one_class.csv"], target="y")),
        "talent_without_info_json": (DataError, lambda: load_talent_dir(p["no_info"])),
        "talent_inconsistent_shapes": (DataError, lambda: load_talent_dir(p["bad_shape"])),
        "loss_does_not_fit_task": (ConfigError, lambda: TrainConfig(loss="ratio", task="regression").resolved()),
        "batch_size_1": (ConfigError, lambda: TrainConfig(batch_size=1).resolved()),
        "epochs_not_a_number": (ConfigError, lambda: TrainConfig(epochs="abc").resolved()),
        "seed_negative": (ConfigError, lambda: TrainConfig(seed=-3).resolved()),
        "unknown_device": (ConfigError, lambda: TrainConfig(device="toaster").resolved()),
        "empty_candidate_set": (ConfigError, lambda: train(TrainConfig(
            model="seed", batch_size=10, epochs=1, data=str(p["lone_last_row"])))),
        "empty_candidate_set_readout": (ConfigError, lambda: soft_neighbour_readout(
            torch.zeros(2, 3), torch.zeros(0, 3), torch.zeros(0, 2))),
        "out_under_a_file": (OutputError, lambda: prepare_out_dir(p["a_file"] / "sub", force=False)),
        "capsule_not_a_capsule": (CapsuleError, lambda: load_capsule(p["ragged.csv"])),
        "user_loss_not_importable": (UserLossError, lambda: user_loss.load_user_function("nosuchmod:fn")),
        "user_loss_wrong_signature": (UserLossError, lambda: losses.resolve("os:getcwd")),
    }


API_CASES = ["missing_csv", "corrupt_npy", "csv_without_target_column", "nan_feature", "one_class",
             "talent_without_info_json", "talent_inconsistent_shapes", "loss_does_not_fit_task", "batch_size_1",
             "epochs_not_a_number", "seed_negative", "unknown_device", "empty_candidate_set",
             "empty_candidate_set_readout", "out_under_a_file", "capsule_not_a_capsule",
             "user_loss_not_importable", "user_loss_wrong_signature"]


@pytest.mark.parametrize("case", API_CASES)
def test_api_raises_stablenca_error(inputs, case):
    kind, call = _api_cases(inputs)[case]
    with pytest.raises(StableNCAError) as info:
        call()
    assert isinstance(info.value, kind)
    message = str(info.value)
    assert "\n" not in message and "; fix: " in message and info.value.exit_code == 2


@pytest.mark.parametrize("case", ["missing_csv", "corrupt_npy", "csv_without_target_column", "nan_feature",
                                  "talent_inconsistent_shapes", "loss_does_not_fit_task", "empty_candidate_set",
                                  "user_loss_not_importable", "out_under_a_file"])
def test_api_and_cli_give_the_same_message(cli, inputs, case):
    _, call = _api_cases(inputs)[case]
    with pytest.raises(StableNCAError) as info:
        call()
    argv, _ = BAD_INPUT[case]
    assert assert_clear_error(cli(*argv(inputs))) == f"stablenca: error: {info.value}"


def test_user_loss_that_raises_is_a_user_loss_error(inputs):
    from stablenca.training.trainer import TrainConfig, train

    sys.path.insert(0, str(inputs["losses.py"].parent))
    try:
        with pytest.raises(UserLossError, match="raised RuntimeError: boom"):
            train(TrainConfig(data=str(inputs["singleton"]), loss="my_losses:fails", epochs=1))
    finally:
        sys.path.remove(str(inputs["losses.py"].parent))


def test_config_types_are_checked_with_the_option_to_fix():
    from stablenca.training.trainer import TrainConfig

    for field, value, option in [("lr", "fast", "--lr"), ("batch_size", 2.5, "--batch-size"),
                                 ("patience", True, "--patience"), ("device", 0, "--device")]:
        with pytest.raises(ConfigError, match=option):
            dataclasses.replace(TrainConfig(), **{field: value}).resolved()
