"""Bring your own loss: a loss defined in a file outside the package, diagnosed and checked end to end."""

import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch

import stablenca
from stablenca import check, losses, reference
from stablenca.cases._base import bits_for_ulps
from stablenca.check import bounds
from stablenca.losses import user as user_loss
from stablenca.publish import capture

USER_LOSSES = textwrap.dedent('''
    """Losses a user wrote, outside stablenca."""
    import torch
    from mpmath import mp

    import stablenca

    SHARPNESS = 1000.0  # a temperature far too small: exp(-1000 d) underflows at the first step


    def my_ratio(distances, labels, candidate_labels, self_mask):
        """The ratio loss with a sharp kernel."""
        same = (labels[:, None] == candidate_labels[None, :]) & ~self_mask
        other = labels[:, None] != candidate_labels[None, :]
        exp_out = torch.exp(-SHARPNESS * distances)
        stablenca.publish("exp_out", exp_out)
        p_same = (exp_out * same).sum(1)
        p_diff = (exp_out * other).sum(1)
        return -torch.log(p_same / p_diff)


    my_ratio.tasks = ("multiclass",)


    def my_logspace(distances, labels, candidate_labels, self_mask):
        """The same loss in log space: finite at any scale."""
        same = (labels[:, None] == candidate_labels[None, :]) & ~self_mask
        logits = -SHARPNESS * distances.masked_fill(self_mask, float("inf"))
        return torch.logsumexp(logits, 1) - torch.logsumexp(logits.masked_fill(~same, -float("inf")), 1)


    def unit_logspace(distances, labels, candidate_labels, self_mask):
        same = (labels[:, None] == candidate_labels[None, :]) & ~self_mask
        logits = -distances.masked_fill(self_mask, float("inf"))
        return (torch.logsumexp(logits, 1) - torch.logsumexp(logits.masked_fill(~same, -float("inf")), 1)).mean()


    def _mp_unit_logspace(d, labels, candidate_labels, self_mask):
        rows = []
        for i, row in enumerate(d):
            every = [-row[j] for j in range(len(row)) if not self_mask[i][j]]
            same = [-row[j] for j in range(len(row)) if not self_mask[i][j] and candidate_labels[j] == labels[i]]
            top = max(every)
            rows.append(mp.log(mp.fsum(mp.exp(v - top) for v in every))
                        - mp.log(mp.fsum(mp.exp(v - top) for v in same)))
        return mp.fsum(rows) / len(rows)


    def with_mp_reference(distances, labels, candidate_labels, self_mask):
        return unit_logspace(distances, labels, candidate_labels, self_mask)


    with_mp_reference.reference_mp = _mp_unit_logspace
''')


def _write_user_files(folder):
    (folder / "myloss.py").write_text(USER_LOSSES)
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 3, 240)
    features = rng.normal(size=(240, 4)) + 3.0 * np.eye(3, 4)[labels]
    rows = ["a,b,c,d,label"] + [",".join(f"{v:.4f}" for v in x) + f",{y}" for x, y in zip(features, labels)]
    (folder / "tiny.csv").write_text("\n".join(rows) + "\n")


def _env(pythonpath=None):
    env = dict(os.environ)
    if pythonpath is not None:
        env["PYTHONPATH"] = os.pathsep.join([str(pythonpath), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    return env


@pytest.fixture(scope="module")
def commands(tmp_path_factory):
    """Start both commands at once (each pays the interpreter start-up), collect them in the tests."""
    folder = tmp_path_factory.mktemp("user")
    _write_user_files(folder)
    out = folder / "out"
    diagnose = subprocess.Popen(
        [sys.executable, "-m", "stablenca.cli", "diagnose", "--model", "seed",
         "--loss", f"{folder / 'myloss.py'}:my_ratio", f"{folder / 'myloss.py'}:my_logspace",
         "--epochs", "2", "--data", str(folder / "tiny.csv"), "--target", "label", "--out", str(out), "--no-report"],
        cwd=folder, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    check = subprocess.Popen(
        [sys.executable, "-m", "stablenca.cli", "check", "--loss", "myloss:unit_logspace", "myloss:with_mp_reference",
         "--dtype", "float32", "--batches", "1", "--json"],
        cwd=folder, env=_env(pythonpath=folder), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    yield {"folder": folder, "out": out, "diagnose": diagnose, "check": check}
    for process in (diagnose, check):
        if process.poll() is None:
            process.kill()


def _finish(process, timeout=300):
    stdout, stderr = process.communicate(timeout=timeout)
    return process.returncode, stdout, stderr


def test_diagnose_a_user_loss_file_end_to_end(commands):
    code, stdout, stderr = _finish(commands["diagnose"])
    assert code == 0, stderr
    summary = json.loads((commands["out"] / "summary.json").read_text())
    runs = {run["loss"].rsplit(":", 1)[1]: run for run in summary["runs"]}
    ratio, logspace = runs["my_ratio"], runs["my_logspace"]
    # The sharp ratio loss diverges at its first step; the tracer names the silent exp underflow
    # in the user's own file, not the division that made the NaN.
    assert ratio["diverged"] and ratio["status"] == "diverged"
    first = ratio["first_nonfinite"]
    assert first["step"] == 0 and first["phase"] == "forward"
    assert first["op"] in ("aten.div.Tensor", "aten.log.default")  # 0/0 or x/0, else log(0/x)
    assert first["root_cause"]["kind"] == "underflow" and first["root_cause"]["op"] == "aten.exp.default"
    assert "myloss.py" in first["source"] and "torch.log(p_same / p_diff)" in first["source"]
    assert "DIVERGED" in stdout and "underflow" in stdout
    # The recorder measured the user's published exp_out (the inputs are published for it).
    (record,) = [json.loads(line) for line in (commands["out"] / ratio["run"] / "records.jsonl").open()]
    assert record["exp_zero"] > 0 and record["d_max"] > 0
    assert (commands["out"] / ratio["run"] / "capsule.pt").is_file()
    # The log-space form of the same loss trains.
    assert not logspace["diverged"] and logspace["status"] == "completed"
    assert logspace["epochs_run"] == 2 and logspace["first_nonfinite"] is None


def test_check_a_user_loss_module_with_and_without_its_own_reference(commands):
    code, stdout, stderr = _finish(commands["check"])
    assert code == 0, stderr
    data = json.loads(stdout)
    rows = {row["loss"]: row for row in data["results"]}
    plain, with_mp = rows["myloss:unit_logspace"], rows["myloss:with_mp_reference"]
    # Without a reference, the float64 evaluation of the same function is the reference, and it says so.
    assert plain["reference"] == "float64 (self)"
    # A user mpmath reference (reference_mp) is evaluated at 50 digits.
    assert with_mp["reference"] == "mpmath (50 digits)"
    for row in (plain, with_mp):
        assert row["dtype"] == "float32" and row["breakdown_scale"] is None
        assert row["populations"]["paired"]["finite_fraction"] == 1.0
    # unit_logspace is nca_logspace written by hand (paired batches: every row has a same-class
    # candidate): the contract's derived bound on the same sweep (default grid, seed 0, one batch).
    sweep = {"seed": 0, "batches": 1, "points_per_decade": check.POINTS_PER_DECADE,
             "scale_min": check.SCALE_MIN, "scale_max": check.SCALE_MAX}
    assert with_mp["populations"]["paired"]["loss_bits_max"] <= bounds.derived_bits("nca_logspace", "float32", sweep)[0]


@pytest.fixture()
def user_module(tmp_path):
    _write_user_files(tmp_path)
    return tmp_path / "myloss.py"


def _batch(scale=1.0):
    d = torch.tensor([[0.0, 1.0, 2.0, 2.5], [1.0, 0.0, 3.0, 2.0], [2.0, 3.0, 0.0, 1.5], [2.5, 2.0, 1.5, 0.0]])
    y = torch.tensor([0, 0, 1, 1])
    return (d * scale).requires_grad_(), y, y, torch.eye(4, dtype=torch.bool)


def test_find_nonfinite_explains_a_user_function(user_module):
    function = user_loss.load_user_function(f"{user_module}:my_ratio")
    finding = stablenca.find_nonfinite(function, *_batch())
    assert finding is not None and finding.root_cause["kind"] == "underflow"
    assert finding.root_cause["op"] == "aten.exp.default"
    assert "myloss.py" in finding.source
    stable = user_loss.load_user_function(f"{user_module}:my_logspace")
    assert stablenca.find_nonfinite(lambda d, y, c, m: stable(d, y, c, m).mean(), *_batch()) is None


def test_find_nonfinite_passes_keywords_to_the_function(user_module):
    function = user_loss.load_user_function(f"{user_module}:my_ratio")

    def scaled(distances, labels, candidate_labels, self_mask, *, scale):
        return function(distances * scale, labels, candidate_labels, self_mask)

    d, y, c, m = _batch()
    assert stablenca.find_nonfinite(scaled, d, y, c, m, scale=1e-4) is None  # exp(-0.1 d): fine
    finding = stablenca.find_nonfinite(scaled, d, y, c, m, scale=1.0, cancellation_bits=20)  # a tracer keyword
    assert finding.root_cause["kind"] == "underflow"


def test_resolved_user_loss_publishes_its_inputs_and_what_it_publishes(user_module):
    formulation = losses.resolve(f"{user_module}:my_ratio", "multiclass")
    d, y, c, m = _batch(0.01)
    with capture() as published:
        out = formulation(d, y, c, m)
    assert {"distances", "self_mask", "same_class_mask", "exp_out"} <= set(published)
    assert torch.equal(published["same_class_mask"], (y[:, None] == c[None, :]) & ~m)
    assert out.per_sample.shape == (4,) and bool(torch.isfinite(out.loss))


def test_regression_labels_publish_no_class_mask(user_module):
    formulation = losses.resolve(f"{user_module}:my_logspace", "multiclass")
    d, _, _, m = _batch()
    targets = torch.tensor([0.1, -0.3, 1.2, 0.0])
    with capture() as published:
        user_loss.publish_inputs(d, targets, targets, m)
    assert "same_class_mask" not in published and "distances" in published
    assert formulation.name.endswith(":my_logspace")


def test_user_references(user_module):
    plain = losses.resolve(f"{user_module}:unit_logspace")
    assert reference.reference_for(plain).describe() == "float64 (self)"
    with_mp = losses.resolve(f"{user_module}:with_mp_reference")
    declared = reference.reference_for(with_mp)
    assert declared.mp is not None and declared.describe() == "mpmath (50 digits)"
    d, y, c, m = _batch()
    exact = reference.mp_loss(declared, d.detach().double(), y, c, m)
    computed = float(with_mp(d.detach().double(), y, c, m).loss)
    # The float64 evaluation's bound (stablenca/check/bounds.py, nca_logspace's analysis: the same
    # operations), in ulps of the loss (spacing > u |L|), +1 for rounding the reference.
    error = bounds.nca_logspace_error(check.Batch(d.detach().double(), y, 1.0), "float64")[0]
    allowed = bits_for_ulps(error / (2.0 ** -53 * abs(float(exact.loss))) + 1)
    assert reference.bits_of_error(computed, exact.loss, torch.float64) <= allowed


def test_reference_mp_must_be_callable(user_module):
    function = user_loss.load_user_function(f"{user_module}:unit_logspace")
    function.reference_mp = "not a function"
    with pytest.raises(stablenca.StableNCAError, match="reference_mp"):
        user_loss.reference_of(function, "myloss:unit_logspace")
