"""diagnose end to end on the student's setting, capsules and replay."""

import json
import subprocess
import sys

import pytest
import torch

from stablenca.runtime.diagnose import diagnose, plan_runs
from stablenca.records import read_jsonl
from stablenca.runtime.sentinel import load_capsule, replay
from stablenca.training.trainer import TrainConfig


@pytest.fixture(scope="module")
def student_run(tmp_path_factory):
    """SeedNCA + ratio (diverges in epoch 2) and ModernNCA + nca_logspace (2 epochs), sentinel mode."""
    out = tmp_path_factory.mktemp("diagnose")
    runs = []
    summary = diagnose(out=out, models=["seed"], loss_names=["ratio"], base=TrainConfig(epochs=5), report=False)
    runs += summary["runs"]
    stable = diagnose(out=out / "stable", models=["modernnca"], loss_names=["nca_logspace", "modernnca"],
                      base=TrainConfig(epochs=2), report=False)
    return out, summary, stable


def test_default_plan_is_the_student_and_every_formulation():
    assert plan_runs(None, None) == [("seed", "ratio"), ("modernnca", "ratio"), ("modernnca", "ratio_eps"),
                                     ("modernnca", "difference"), ("modernnca", "nca_logspace"),
                                     ("modernnca", "modernnca")]


def test_ratio_run_is_diverged_with_a_traced_root_cause(student_run):
    out, summary, _ = student_run
    (run,) = summary["runs"]
    assert run["diverged"] and run["status"] == "diverged"
    first = run["first_nonfinite"]
    assert first["step"] == run["diverged_at"]["step"]
    assert first["op"].startswith("aten.") and first["phase"] in ("forward", "backward")
    from stablenca.trace import ROOT_CAUSE_KINDS

    assert first["root_cause"]["kind"] in ROOT_CAUSE_KINDS
    verdicts = {c["verdict"] for c in first["verification"]["candidates"]}  # the counterfactual replays ran
    assert verdicts and verdicts <= {"confirmed", "present, not causal", "float64 fails too"}
    assert "losses/" in first["source"]  # the user's line, not a torch internal
    on_disk = json.loads((out / "summary.json").read_text())
    assert on_disk["runs"][0]["first_nonfinite"]["op"] == first["op"]


def test_records_cover_every_batch_up_to_the_failure(student_run):
    out, summary, _ = student_run
    records = read_jsonl(out / "seed-ratio-float32" / "records.jsonl")
    run = summary["runs"][0]
    assert [r["step"] for r in records] == list(range(run["steps_run"]))
    assert records[-1]["finite"] is False and records[-2]["finite"] is True
    for key in ("grad_norm", "d_max", "d_same_min", "d_other_min", "exp_zero", "exp_subnormal", "p_same_min",
                "p_diff_min", "rows_without_same_class", "max_d_over_T", "grad_2.0_norm/layers.0.weight"):
        assert key in records[0]


def test_stable_formulations_do_not_diverge(student_run):
    _, _, stable = student_run
    assert [r["diverged"] for r in stable["runs"]] == [False, False]
    assert all(r["first_nonfinite"] is None for r in stable["runs"])


def test_capsule_loads_with_weights_only_and_replays_the_same_first_bad_op(student_run):
    out, summary, _ = student_run
    path = out / "seed-ratio-float32" / "capsule.pt"
    raw = torch.load(path, weights_only=True)
    assert raw["format"] == "stablenca-capsule" and raw["step"] == summary["runs"][0]["diverged_at"]["step"]
    finding, capsule = replay(path)
    assert finding is not None
    assert finding.to_dict() == capsule["finding"]  # bit for bit the chain found in the run
    assert finding.op == summary["runs"][0]["first_nonfinite"]["op"]


def test_replay_cli_prints_the_chain(student_run):
    out, summary, _ = student_run
    completed = subprocess.run([sys.executable, "-m", "stablenca.cli", "replay",
                                str(out / "seed-ratio-float32" / "capsule.pt"), "--json"],
                               capture_output=True, text=True, timeout=300)
    assert completed.returncode == 0, completed.stderr
    result = json.loads(completed.stdout)
    assert result["same_as_recorded"] is True
    assert result["finding"]["op"] == summary["runs"][0]["first_nonfinite"]["op"]


def test_load_capsule_rejects_garbage_and_truncation(tmp_path, student_run):
    from stablenca.errors import CapsuleError

    out, _, _ = student_run
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"not a capsule at all")
    with pytest.raises(CapsuleError, match="not a readable capsule"):
        load_capsule(garbage)
    good = (out / "seed-ratio-float32" / "capsule.pt").read_bytes()
    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes(good[: len(good) // 2])
    with pytest.raises(CapsuleError):
        load_capsule(truncated)
    other = tmp_path / "other.pt"
    torch.save({"weights": torch.zeros(2)}, other)
    with pytest.raises(CapsuleError, match="not a stablenca capsule"):
        load_capsule(other)


@pytest.fixture(scope="module")
def modernnca_capsule(tmp_path_factory):
    """ModernNCA (TALENT's sampled training candidates) with the ratio loss at lr 0.3: fails at step 1."""
    out = tmp_path_factory.mktemp("modernnca")
    summary = diagnose(out=out, models=["modernnca"], loss_names=["ratio"], base=TrainConfig(epochs=1, lr=0.3),
                       report=False)
    (run,) = summary["runs"]
    assert run["diverged"] and run["diverged_at"]["step"] >= 1  # not the first step: the generator has moved
    return out / run["capsule"]


def test_modernnca_capsule_replays_the_recorded_finding_bit_for_bit(modernnca_capsule):
    capsule = load_capsule(modernnca_capsule)
    assert capsule["config"]["candidates"] == "sampled" and capsule["generator_state"] is not None
    finding, _ = replay(modernnca_capsule)
    # The candidates are drawn from the restored generator, so every count in the chain matches
    # (a replay that drew other candidates would find other numbers of zeros and 0/0 rows).
    assert finding.to_dict() == capsule["finding"]
    assert finding.root_cause["kind"] == "underflow" and finding.pattern == "0/0"


def test_replay_runs_with_the_thread_count_recorded_in_the_capsule(modernnca_capsule, monkeypatch):
    # Reductions split by thread, so a replay with another count can differ in the last bits of
    # float64 figures; the capsule records the count and replay uses it, then restores the caller's.
    import stablenca.runtime.sentinel as sentinel

    capsule = load_capsule(modernnca_capsule)
    assert capsule["threads"] >= 1
    seen = []
    real_traced_step = sentinel.traced_step

    def spy(trainer, capsule):
        seen.append(torch.get_num_threads())
        return real_traced_step(trainer, capsule)

    monkeypatch.setattr(sentinel, "traced_step", spy)
    before = torch.get_num_threads()
    other = capsule["threads"] + 1
    torch.set_num_threads(other)
    try:
        finding, _ = replay(modernnca_capsule)
        assert seen == [capsule["threads"]]
        assert torch.get_num_threads() == other
        assert finding.to_dict() == capsule["finding"]
    finally:
        torch.set_num_threads(before)
