"""Mixed precision: torch.autocast (float16, bfloat16 on CPU) and torch.amp.GradScaler under the watch."""

from __future__ import annotations

import json

import pytest
import torch

import stablenca
from stablenca.errors import ConfigError
from stablenca.integrations.precision import autocast_disabled


def _scaled_loop(tmp_path, *, steps=12, max_skips=None, min_scale=None, poison=False):
    """A float32 model trained under float16 autocast with a GradScaler that starts at 2**16.

    The loss gradient is about 2 * 100 / 64 per output, so scaled by 2**16 it passes float16's
    largest finite value (65504) in the backward: the scaler must skip and halve until it fits.
    """
    torch.manual_seed(0)
    model = torch.nn.Linear(8, 1)
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-4)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0 ** 16)
    x, y = torch.randn(64, 8), torch.randn(64, 1) * 100
    if poison:
        x[0, 0] = float("nan")  # every step is non-finite: the scaler skips forever
    out = tmp_path / "mp"
    with stablenca.watch(model, optimizer, scaler=scaler, out=out, max_skips=max_skips,
                         min_scale=min_scale) as watch:
        for _ in range(steps):
            def closure():
                optimizer.zero_grad()
                with torch.autocast("cpu", dtype=torch.float16):
                    loss = torch.nn.functional.mse_loss(model(x).float(), y)
                scaler.scale(loss).backward()
                return loss
            watch.step(closure, epoch=0)
            if watch.should_stop:  # the README's pattern: a skip does not stop the loop
                break
            scaler.step(optimizer)
            scaler.update()
    return watch, out


def test_a_scaler_skip_is_recorded_as_skipped_not_failed(tmp_path):
    watch, out = _scaled_loop(tmp_path)
    assert not watch.failed and not watch.should_stop
    statuses = [r["status"] for r in watch.records]
    assert len(statuses) == 12 and statuses[0] == "skipped" and statuses[-1] == "ok"
    n_skipped = statuses.count("skipped")
    assert statuses == ["skipped"] * n_skipped + ["ok"] * (12 - n_skipped) and watch.skipped == n_skipped
    scales = [r["loss_scale"] for r in watch.records]
    # The scaler halves the scale at each skip and keeps it while steps are clean (growth after 2000).
    assert scales[:n_skipped + 1] == [2.0 ** (16 - k) for k in range(n_skipped + 1)]
    for record in watch.records[:n_skipped]:
        finding = record["finding"]
        assert finding["dtype"] == "float16" and finding["root_cause"] == "overflow"
        assert finding["phase"] == "backward"
        assert finding["float32"]["finite"] is True  # the same step without autocast is finite
    # The optimizer moved on after the skips: the loss of the clean steps changes.
    assert watch.records[-1]["loss"] != watch.records[n_skipped]["loss"]
    lines = [json.loads(line) for line in (out / "watch" / "records.jsonl").read_text().splitlines()]
    assert [r["status"] for r in lines] == statuses and all("loss_scale" in r for r in lines)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["runs"][0]["status"] == "completed" and summary["runs"][0]["skipped_steps"] == n_skipped


@pytest.mark.parametrize("limit", [{"max_skips": 3}, {"min_scale": 2.0 ** 13}])
def test_skips_become_a_failure_only_when_asked(tmp_path, limit):
    watch, out = _scaled_loop(tmp_path, poison=True, **limit)
    assert watch.failed and watch.should_stop
    last = watch.records[-1]
    assert last["status"] == "skipped" and "failure" in last
    # max_skips=3: the 4th skip in a row fails; min_scale=2**13: the first scale below it is 2**12 (step 4).
    assert watch.failed_at["step"] == (3 if "max_skips" in limit else 4)
    assert (out / "watch" / "capsule.pt").exists()
    summary = json.loads((out / "summary.json").read_text())
    assert summary["runs"][0]["status"] == "diverged"


def test_without_a_limit_a_poisoned_loop_skips_but_goes_on(tmp_path):
    watch, _ = _scaled_loop(tmp_path, poison=True, steps=6)
    assert not watch.failed and [r["status"] for r in watch.records] == ["skipped"] * 6


def test_a_bfloat16_cancellation_is_finite_in_float32():
    """1 / (y1 - y0) with y1 = 1.001, y0 = 1: bfloat16 (8 significant bits) rounds both to 1 -> 1/0."""
    model = torch.nn.Linear(1, 2, bias=False)
    with torch.no_grad():
        model.weight.copy_(torch.tensor([[1.0], [1.001]]))
    x = torch.ones(4, 1)
    with stablenca.watch(model) as watch:
        def closure():
            model.zero_grad()
            with torch.autocast("cpu", dtype=torch.bfloat16):
                y = model(x)
            loss = (1.0 / (y[:, 1] - y[:, 0])).mean()
            loss.backward()
            return loss
        watch.step(closure)
    assert watch.failed
    explained = watch.records[0]["first_nonfinite"]
    assert explained["output"]["dtype"] == "bfloat16"
    assert explained["float32"]["finite"] is True
    assert model.weight.grad is not None and not torch.isfinite(model.weight.grad).all()  # the step's own grads


def test_autocast_disabled_switches_autocast_off_and_restores_it():
    with autocast_disabled() as seen:
        with torch.autocast("cpu", dtype=torch.bfloat16):
            inside = torch.ones(2, 2) @ torch.ones(2, 2)
    assert seen["autocast"] and inside.dtype == torch.float32
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert (torch.ones(2, 2) @ torch.ones(2, 2)).dtype == torch.bfloat16


def test_bad_scaler_arguments_are_one_line_errors():
    model = torch.nn.Linear(2, 1)
    with pytest.raises(ConfigError, match="not a torch.amp.GradScaler"):
        stablenca.watch(model, scaler=object())
    with pytest.raises(ConfigError, match="max_skips"):
        stablenca.watch(model, max_skips=-1)
