"""TensorBoard: the per-batch records as event files, read back with TensorBoard's own reader."""

from __future__ import annotations

import math

import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

import stablenca
from stablenca.cli import main
from stablenca.errors import EXIT_USAGE


def _watched_run(out):
    """Five steps of a linear model; step 3 overflows exp, so its loss and gradients are not finite."""
    torch.manual_seed(0)
    model = torch.nn.Linear(4, 2)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    x = torch.randn(16, 4)
    with stablenca.watch(model, optimizer, out=out) as watch:
        for step in range(5):
            def closure():
                optimizer.zero_grad()
                loss = torch.log(torch.exp(model(x) * (1000.0 if step == 3 else 1.0)).sum())
                loss.backward()
                return loss
            watch.step(closure)
            if watch.should_stop:
                break
            optimizer.step()
    return watch


def _read(logdir):
    accumulator = EventAccumulator(str(logdir), size_guidance={"scalars": 0, "histograms": 0})
    accumulator.Reload()
    return accumulator


def test_export_writes_scalars_and_keeps_nan_out_of_them_and_of_histograms(tmp_path, capsys):
    out = tmp_path / "run"
    watch = _watched_run(out)
    assert main(["export-tensorboard", str(out)]) == 0
    assert capsys.readouterr().out.strip() == str(out / "tensorboard" / "watch")
    events = _read(out / "tensorboard" / "watch")
    tags = events.Tags()
    loss = events.Scalars("loss")
    # The finite losses of steps 0-2, as recorded. An event stores a float32; the losses are float32
    # values (recorded as float64 without rounding), so they come back exactly.
    assert [e.step for e in loss] == [0, 1, 2]
    assert [e.value for e in loss] == [r["loss"] for r in watch.records[:3]]
    # Step 3's loss is inf: not a point of the loss curve but its own series, with the per-step totals.
    assert [(e.step, e.value) for e in events.Scalars("inf/loss")] == [(3, 1.0)]
    assert [e.value for e in events.Scalars("nonfinite/inf_values")][:3] == [0.0, 0.0, 0.0]
    nonfinite_at_3 = sum(e.value for name in ("nonfinite/nan_values", "nonfinite/inf_values")
                         for e in events.Scalars(name) if e.step == 3)
    assert nonfinite_at_3 >= 2  # the loss and the gradient norm at least
    assert [e.value for e in events.Scalars("status/failed")] == [0.0, 0.0, 0.0, 1.0]
    assert all(math.isfinite(e.value) for tag in tags["scalars"] for e in events.Scalars(tag))
    histograms = events.Histograms("grad_norms")
    assert [h.step for h in histograms] == [0, 1, 2]  # none at step 3, whose gradients are all NaN
    assert all(math.isfinite(h.histogram_value.sum) for h in histograms)


def test_export_of_something_else_is_a_one_line_error(tmp_path, capsys):
    assert main(["export-tensorboard", str(tmp_path)]) == EXIT_USAGE
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "records.jsonl" in err and "fix:" in err
