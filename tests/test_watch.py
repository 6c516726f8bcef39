"""The user-loop API: attach the recorder, sentinel and tracer to any training loop."""

import json

import torch

import stablenca
from stablenca.report.tracer_zh import translate, untranslated
from stablenca.runtime.watcher import watch


def _loop(mode, tmp_path):
    torch.manual_seed(0)
    model = torch.nn.Linear(4, 2)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    x = torch.randn(16, 4)
    with watch(model, optimizer, out=tmp_path / mode, mode=mode) as w:
        for step in range(5):
            def closure():
                optimizer.zero_grad()
                scores = model(x)
                # Step 3 scales the scores far past exp's float32 limit: exp overflows to inf.
                scale = 1000.0 if step == 3 else 1.0
                loss = torch.log(torch.exp(scale * scores).sum())
                stablenca.publish("exp_out", torch.exp(-scale * scores.detach()))
                loss.backward()
                return loss
            w.step(closure, epoch=0)
            if w.failed:
                break
            optimizer.step()
    return w


def test_watch_records_every_step_and_traces_the_first_failure(tmp_path):
    w = _loop("sentinel", tmp_path)
    assert w.failed_at == {"epoch": 0, "step": 3}
    assert [r["step"] for r in w.records] == [0, 1, 2, 3]
    assert w.finding is not None and w.finding.root_cause["kind"] == "overflow"
    assert "exp" in w.finding.root_cause["op"]
    lines = (tmp_path / "sentinel" / "watch" / "records.jsonl").read_text().splitlines()
    assert len(lines) == 4 and (tmp_path / "sentinel" / "watch" / "finding.json").exists()


def test_watch_full_mode_finds_the_same_op(tmp_path):
    sentinel = _loop("sentinel", tmp_path)
    full = _loop("full", tmp_path)
    assert full.finding.op == sentinel.finding.op
    assert full.finding.root_cause == sentinel.finding.root_cause


def test_sigterm_finishes_the_step_writes_the_summary_and_exits_143(tmp_path):
    import json
    import os
    import signal

    import pytest

    from stablenca.errors import EXIT_TERMINATED

    model = torch.nn.Linear(4, 1)
    x = torch.randn(8, 4)
    steps_done = []
    with pytest.raises(SystemExit) as exited:
        with watch(model, out=tmp_path / "run") as w:
            for step in range(100):
                def closure():
                    model.zero_grad()
                    loss = model(x).pow(2).mean()
                    if step == 2:
                        os.kill(os.getpid(), signal.SIGTERM)  # preempted in the middle of step 2
                    loss.backward()
                    return loss
                w.step(closure)
                steps_done.append(step)
                if w.should_stop:
                    break
    assert exited.value.code == EXIT_TERMINATED
    assert steps_done == [0, 1, 2] and w.interrupted and w.terminated and not w.failed  # step 2 was finished
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # the handler is put back
    lines = (tmp_path / "run" / "watch" / "records.jsonl").read_text().splitlines()
    assert len(lines) == 3 and json.loads(lines[-1])["interrupted"] == "SIGTERM"
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["interrupted"] is True and summary["signal"] == "SIGTERM"
    assert summary["runs"][0]["status"] == "interrupted" and summary["runs"][0]["steps_run"] == 3


def test_the_watch_keeps_a_sigterm_handler_the_program_installed():
    import signal

    def mine(signum, frame):
        pass

    previous = signal.signal(signal.SIGTERM, mine)
    try:
        with watch(torch.nn.Linear(2, 1)):
            assert signal.getsignal(signal.SIGTERM) is mine
        assert signal.getsignal(signal.SIGTERM) is mine
    finally:
        signal.signal(signal.SIGTERM, previous)


def test_a_watch_capsule_reloads_and_replay_says_it_cannot_rerun_it(tmp_path, capsys):
    from stablenca.cli import main
    from stablenca.errors import EXIT_USAGE
    from stablenca.runtime.sentinel import load_capsule

    w = _loop("sentinel", tmp_path)
    capsule_path = tmp_path / "sentinel" / "watch" / "capsule.pt"
    capsule = load_capsule(capsule_path)
    assert capsule["source"] == "watch" and capsule["step"] == 3
    assert capsule["finding"]["op"] == w.finding.op
    model = torch.nn.Linear(4, 2)
    model.load_state_dict(capsule["model_state"])  # the pre-state of the failing step, as the user needs it
    assert main(["replay", str(capsule_path)]) == EXIT_USAGE
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "stablenca.watch" in err and "fix:" in err


# -- counterfactual verification of the failing step --------------------------------------------


def _log_sum_exp_naive(model, x, scale):
    d = scale * model(x).pow(2).sum(1)  # positive "distances"
    return -torch.log(torch.exp(-d).sum())  # float32 exp(-d) is 0.0 for d > 103.97: log(0) = -inf


def _watched(tmp_path, *, as_loss_fn, calls=None):
    torch.manual_seed(0)
    model = torch.nn.Linear(4, 3)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    x = torch.randn(8, 4)

    def loss_fn(m, x, scale):
        if calls is not None:
            calls.append(scale)
        return _log_sum_exp_naive(m, x, scale)

    with watch(model, optimizer, out=tmp_path) as w:
        for step in range(3):
            scale = 1e4 if step == 2 else 1.0  # step 2: every distance is far beyond 103.97
            if as_loss_fn:
                w.step(loss_fn, x, scale, epoch=0)
            else:
                def closure():
                    optimizer.zero_grad()
                    loss = loss_fn(model, x, scale)
                    loss.backward()
                    return loss
                w.step(closure, epoch=0)
            if w.should_stop:
                break
            optimizer.step()
    return w, model


def test_a_step_given_as_a_loss_function_is_verified_in_float64(tmp_path):
    w, model = _watched(tmp_path, as_loss_fn=True)
    assert w.failed_at == {"epoch": 0, "step": 2}
    verification = w.finding.verification
    assert verification["reference_finite"] and verification["representable"]
    verdicts = {c["label"]: c["verdict"] for c in verification["candidates"]}
    assert verdicts["exp (forward)"] == "confirmed"  # float32 exp(-d) = 0 is what makes the log fail
    assert "the exact loss is finite" in verification["statement"]
    assert w.finding.root_cause["verdict"] == "confirmed"
    written = json.loads((tmp_path / "watch" / "finding.json").read_text())
    assert written["verification"]["candidates"] == verification["candidates"]
    # the float64 replays ran on copies: the user's model is float32 and holds the pre-step parameters
    assert all(p.dtype == torch.float32 for p in model.parameters())


def test_an_opaque_closure_says_the_verification_was_not_run(tmp_path):
    w, _ = _watched(tmp_path, as_loss_fn=False)
    assert w.failed_at == {"epoch": 0, "step": 2} and w.finding.pattern == "log(0)"
    verification = w.finding.verification
    assert verification["status"] == "not run" and "opaque closure" in verification["reason"]
    assert "verification: not run, the step is an opaque closure" in str(w.finding)
    written = json.loads((tmp_path / "watch" / "finding.json").read_text())
    assert written["verification"]["status"] == "not run"
    assert untranslated(translate(verification["statement"])) == []  # the Chinese report says it too


def test_healthy_steps_run_the_loss_function_once_each(tmp_path):
    calls = []
    torch.manual_seed(0)
    model = torch.nn.Linear(4, 3)
    x = torch.randn(8, 4)
    with watch(model, None) as w:
        for _ in range(3):
            w.step(lambda m, x, s: (calls.append(s), _log_sum_exp_naive(m, x, s))[1], x, 1.0)
    assert not w.failed and len(calls) == 3  # no replay, no verification on a finite step
    failing = []
    _watched(tmp_path, as_loss_fn=True, calls=failing)
    # two healthy steps, the failing one, its traced replay, then the verification's replays
    assert failing[:3] == [1.0, 1.0, 1e4] and len(failing) > 4


def test_a_loss_function_that_returns_no_tensor_is_a_one_line_error():
    import pytest

    from stablenca.errors import StableNCAError

    model = torch.nn.Linear(4, 3)
    with watch(model, None) as w:
        with pytest.raises(StableNCAError, match="loss function returned float.*return the loss tensor"):
            w.step(lambda m, x: 1.0, torch.randn(2, 4))


def test_a_rebuilt_step_that_does_not_fail_is_not_verified(tmp_path):
    """A loss function that reads more than the model and its inputs (here: which model object it got)
    rebuilds into a finite step: verdicts on it would be about another step, so none are given."""
    torch.manual_seed(0)
    model = torch.nn.Linear(4, 3)
    x = torch.randn(8, 4)

    def loss_fn(m, x, step):
        return _log_sum_exp_naive(m, x, 1e4 if (step == 1 and m is model) else 1.0)

    with watch(model, torch.optim.SGD(model.parameters(), lr=0.1)) as w:
        for step in range(2):
            w.step(loss_fn, x, step, epoch=0)
    assert w.failed_at == {"epoch": 0, "step": 1}
    verification = w.finding.verification
    assert verification["status"] == "not run"
    assert "is finite in float32, so it is not the step that failed" in verification["reason"]
    assert untranslated(translate(verification["statement"])) == []


def test_a_loss_function_that_ignores_its_model_argument_is_not_verified(tmp_path):
    """The watch replays the loss function on float64 copies; one that uses the captured model instead
    would replay float32 and call it float64. It is caught and said."""
    torch.manual_seed(0)
    model = torch.nn.Linear(4, 3)
    x = torch.randn(8, 4)
    with watch(model, torch.optim.SGD(model.parameters(), lr=0.1)) as w:
        w.step(lambda m, x, scale: _log_sum_exp_naive(model, x, scale), x, 1e4, epoch=0)
    assert w.failed_at == {"epoch": 0, "step": 0}
    verification = w.finding.verification
    assert verification["status"] == "not run" and "does not use the model it is given" in verification["reason"]
    assert untranslated(translate(verification["statement"])) == []


def test_a_step_large_enough_is_reduced_as_published_with_the_record_of_a_late_reduction(tmp_path, monkeypatch):
    from stablenca.runtime import probes
    from stablenca.runtime.probes import batch_statistics

    monkeypatch.setattr(probes, "QUANTILE_SAMPLE", 1024)  # a sampled step: d_min and d_max are the reductions'
    torch.manual_seed(0)
    model = torch.nn.Linear(6, 8)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    x = torch.randn(130, 6) * 30  # spread: the exp underflows for many pairs, so the counts run too
    seen = {}

    def closure():
        optimizer.zero_grad()
        embedded = model(x)
        distances = torch.cdist(embedded[:72], embedded)
        exp_out = torch.exp(-distances)
        stablenca.publish("distances", distances)
        stablenca.publish("self_mask", torch.eye(72, 130, dtype=torch.bool))
        stablenca.publish("exp_out", exp_out)
        seen["published"] = {"distances": distances.detach(), "exp_out": exp_out.detach(),
                             "self_mask": torch.eye(72, 130, dtype=torch.bool)}
        seen["taken"] = {name: w.reductions.get(name, seen["published"][name]) is not None
                         for name in ("distances", "exp_out")}
        loss = exp_out.sum()
        loss.backward()
        return loss

    with watch(model, optimizer, out=tmp_path, mode="sentinel") as w:
        w.step(closure, epoch=0)
    assert seen["taken"] == {"distances": True, "exp_out": True}
    late = batch_statistics(loss=torch.tensor(w.records[0]["loss"]), per_sample=None, rows_excluded=0,
                            published=seen["published"], named_parameters=[])
    assert late["exp_zero"] + late["exp_subnormal"] > 0
    for key, value in late.items():
        if key.startswith(("d_", "exp_")) or key == "max_d_over_T":
            assert w.records[0][key] == value or (value != value and w.records[0][key] != w.records[0][key]), key
