"""Lightning: the callback records every batch, stops cleanly at the first non-finite one, writes a run set."""

from __future__ import annotations

import json

import lightning.pytorch as pl
import torch

from stablenca.integrations.lightning import StableNCACallback
from stablenca.report import build_report


class _LogSumExp(pl.LightningModule):
    """log(sum(exp(scores))); at global step ``blow_up`` the scores are scaled past exp's float32 limit."""

    def __init__(self, blow_up: int | None = 3) -> None:
        super().__init__()
        self.linear = torch.nn.Linear(4, 3)
        self.blow_up = blow_up

    def training_step(self, batch, batch_idx):
        x, _ = batch
        scale = 1000.0 if self.global_step == self.blow_up else 1.0
        return torch.log(torch.exp(self.linear(x) * scale).sum(1)).mean()

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


def _fit(module, callbacks, epochs=3):
    torch.manual_seed(0)
    data = torch.utils.data.TensorDataset(torch.randn(64, 4), torch.arange(64) % 3)
    trainer = pl.Trainer(max_epochs=epochs, callbacks=callbacks, logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False, accelerator="cpu")
    trainer.fit(module, torch.utils.data.DataLoader(data, batch_size=8))
    return trainer


def test_the_callback_stops_at_the_first_nonfinite_step_with_capsule_and_finding(tmp_path):
    out = tmp_path / "pl"
    callback = StableNCACallback(out=out)
    module = _LogSumExp(blow_up=3)
    trainer = _fit(module, [callback])
    watch = callback.watch
    assert watch.failed_at == {"epoch": 0, "step": 3}
    assert [r["status"] for r in watch.records] == ["ok", "ok", "ok", "failed"]
    assert trainer.global_step == 4  # stopped in the first of 3 epochs of 8 batches (24 steps)
    assert watch.finding.op == "aten.exp.default" and watch.finding.root_cause["kind"] == "overflow"
    assert all(torch.isfinite(p).all() for p in module.parameters())  # the NaN step was not applied
    run_dir = out / "lightning"
    assert (run_dir / "capsule.pt").exists() and json.loads((run_dir / "finding.json").read_text())["op"] \
        == "aten.exp.default"
    records = [json.loads(line) for line in (run_dir / "records.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [0, 1, 2, 3] and "grad_2.0_norm/linear.weight" in records[0]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["runs"][0]["status"] == "diverged"
    report = next(p for p in build_report(out) if p.name == "report.md").read_text()
    assert "`lightning` went non-finite at step 3" in report and "`exp`" in report


def test_a_healthy_fit_is_recorded_batch_by_batch(tmp_path):
    callback = StableNCACallback(out=tmp_path / "pl")
    trainer = _fit(_LogSumExp(blow_up=None), [callback], epochs=2)
    assert trainer.global_step == 16 and not callback.watch.failed
    assert [r["step"] for r in callback.watch.records] == list(range(16))
    assert [r["epoch"] for r in callback.watch.records] == [0] * 8 + [1] * 8
    summary = json.loads((tmp_path / "pl" / "summary.json").read_text())
    assert summary["runs"][0]["status"] == "completed" and summary["runs"][0]["steps_run"] == 16
