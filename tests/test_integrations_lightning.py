"""Lightning: the callback records every batch, stops cleanly at the first non-finite one, writes a run set."""

from __future__ import annotations

import json
import subprocess
import sys

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


def _fit(module, callbacks, epochs=3, **options):
    torch.manual_seed(0)
    data = torch.utils.data.TensorDataset(torch.randn(64, 4), torch.arange(64) % 3)
    trainer = pl.Trainer(max_epochs=epochs, callbacks=callbacks, logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False, accelerator="cpu", **options)
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
    # verified on float64 and float32 copies of the module: exp(1307) is beyond float64's range too
    assert watch.finding.verification.get("status") != "not run" and not watch.finding.verification["reference_finite"]
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


class _Cancellation(pl.LightningModule):
    """1 / (y1 - y0) with y1 = 1.001 x, y0 = x: bfloat16 (8 significant bits) rounds both to x -> 1/0."""

    def __init__(self) -> None:
        super().__init__()
        self.linear = torch.nn.Linear(1, 2, bias=False)
        with torch.no_grad():
            self.linear.weight.copy_(torch.tensor([[1.0], [1.001]]))

    def training_step(self, batch, batch_idx):
        y = self.linear(torch.ones(4, 1))
        return (1.0 / (y[:, 1] - y[:, 0])).float().mean()

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.0)


def test_bf16_mixed_is_replayed_in_bfloat16_and_would_be_finite_in_float32():
    callback = StableNCACallback()
    _fit(_Cancellation(), [callback], epochs=1, precision="bf16-mixed")
    watch = callback.watch
    assert watch.failed_at == {"epoch": 0, "step": 0}
    explained = watch.records[0]["first_nonfinite"]
    assert explained["output"]["dtype"] == "bfloat16"  # the replay ran under Lightning's autocast
    assert explained["float32"]["finite"] is True


class _Regression(pl.LightningModule):
    """MSE against targets of size ~100: scaled by 2**16 its gradient overflows float16 in the backward."""

    def __init__(self) -> None:
        super().__init__()
        self.linear = torch.nn.Linear(8, 1)

    def training_step(self, batch, batch_idx):
        x, y = batch
        return torch.nn.functional.mse_loss(self.linear(x).float(), y)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=1e-4)


def test_16_mixed_scaler_skips_are_recorded_not_failures():
    """Lightning's 16-mixed plugin with its GradScaler (built by hand: Lightning picks bf16 on CPU)."""
    from lightning.pytorch.plugins.precision import MixedPrecision

    torch.manual_seed(0)
    data = torch.utils.data.TensorDataset(torch.randn(64, 8), torch.randn(64, 1) * 100)
    callback = StableNCACallback()
    plugin = MixedPrecision("16-mixed", "cpu", torch.amp.GradScaler("cpu", init_scale=2.0 ** 16))
    trainer = pl.Trainer(max_epochs=10, callbacks=[callback], logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False, accelerator="cpu",
                         plugins=[plugin])
    trainer.fit(_Regression(), torch.utils.data.DataLoader(data, batch_size=64))
    watch = callback.watch
    assert trainer.global_step == 10 and not watch.failed  # the fit was not stopped by the skips
    statuses = [r["status"] for r in watch.records]
    n_skipped = statuses.count("skipped")
    assert 0 < n_skipped < 10 and statuses == ["skipped"] * n_skipped + ["ok"] * (10 - n_skipped)
    assert [r["loss_scale"] for r in watch.records[:n_skipped + 1]] == [2.0 ** (16 - k) for k in range(n_skipped + 1)]
    # The recorded loss is the unscaled one: the same on every skipped step (nothing was applied).
    assert len({r["loss"] for r in watch.records[:n_skipped + 1]}) == 1
    first = watch.records[0]["finding"]
    assert first["dtype"] == "float16" and first["root_cause"] == "overflow" and first["float32"]["finite"] is True


class _Underflow(pl.LightningModule):
    """-log(sum(exp(-d))) of "distances" d >= 1; at global step ``blow_up`` they are scaled by 200, past
    103.97, where float32's exp(-d) is 0.0 and the log is -inf; float64's exp(-d) is 0.0 only past 745."""

    def __init__(self, blow_up: int = 2) -> None:
        super().__init__()
        self.linear = torch.nn.Linear(4, 3)
        self.blow_up = blow_up

    def training_step(self, batch, batch_idx):
        x, _ = batch
        scale = 200.0 if self.global_step == self.blow_up else 1.0  # read from the trainer, as steps often do
        self.log("scale", scale)  # a no-op on the rebuilt copies
        d = scale * (1 + self.linear(x).pow(2).sum(1))
        return -torch.log(torch.exp(-d).sum())

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.01)


def test_the_failing_training_step_is_verified_in_float64_on_copies(tmp_path):
    callback = StableNCACallback(out=tmp_path / "pl")
    module = _Underflow(blow_up=2)
    _fit(module, [callback], epochs=1)
    watch = callback.watch
    assert watch.failed_at == {"epoch": 0, "step": 2}
    verification = watch.finding.verification
    assert verification.get("status") != "not run", verification
    assert verification["reference_finite"] and verification["representable"]
    verdicts = {c["label"]: c["verdict"] for c in verification["candidates"]}
    assert verdicts["exp (forward)"] == "confirmed"  # float32's exp(-d) = 0 is what makes the log fail
    assert watch.finding.root_cause["verdict"] == "confirmed"
    written = json.loads((tmp_path / "pl" / "lightning" / "finding.json").read_text())
    assert written["verification"]["candidates"] == verification["candidates"]
    # the replays ran on copies: the fitted module is float32, attached to its trainer, its parameters finite
    assert all(p.dtype == torch.float32 and torch.isfinite(p).all() for p in module.parameters())
    assert isinstance(module.trainer, pl.Trainer)  # the copies got the counters, not the fitted module


class _ReadsTheTrainer(_Underflow):
    def training_step(self, batch, batch_idx):
        assert self.trainer.max_epochs > 0  # more of the trainer than the copies are given
        return super().training_step(batch, batch_idx)


def test_a_step_that_reads_more_of_the_trainer_says_why_it_was_not_verified(tmp_path):
    callback = StableNCACallback()
    _fit(_ReadsTheTrainer(blow_up=1), [callback], epochs=1)
    verification = callback.watch.finding.verification
    assert verification["status"] == "not run" and "max_epochs" in verification["reason"]
    assert callback.watch.finding.op == "aten.log.default"  # the traced replay still names the op


_DDP_SCRIPT = '''
import sys
import lightning.pytorch as pl
import torch
from stablenca.integrations.lightning import StableNCACallback


class Underflow(pl.LightningModule):
    def __init__(self):
        super().__init__()
        self.linear = torch.nn.Linear(4, 3)

    def training_step(self, batch, batch_idx):
        x, _ = batch
        scale = 200.0 if self.global_step == 2 else 1.0
        return -torch.log(torch.exp(-scale * (1 + self.linear(x).pow(2).sum(1))).sum())

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.01)


if __name__ == "__main__":
    torch.manual_seed(0)
    data = torch.utils.data.TensorDataset(torch.randn(64, 4), torch.arange(64) % 3)
    trainer = pl.Trainer(max_epochs=1, callbacks=[StableNCACallback(out=sys.argv[1])], logger=False,
                         enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                         accelerator="cpu", devices=2, strategy="ddp")
    trainer.fit(Underflow(), torch.utils.data.DataLoader(data, batch_size=8))
'''


def test_under_ddp_every_rank_stops_at_the_failing_step_with_a_verified_finding(tmp_path):
    """strategy="ddp" on CPU (gloo), 2 processes, as a user's script runs it (about 20 s: Lightning starts a
    second process that imports torch): the watch agrees across ranks, each rank writes its run and its
    finding, and each finding is verified on copies outside the DDP wrapper."""
    script, out = tmp_path / "fit.py", tmp_path / "pl"
    script.write_text(_DDP_SCRIPT)
    done = subprocess.run([sys.executable, str(script), str(out)], cwd=tmp_path, capture_output=True, text=True,
                          timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["world_size"] == 2
    assert sorted((r["run"], r["status"]) for r in summary["runs"]) == [("lightning-rank0", "diverged"),
                                                                          ("lightning-rank1", "diverged")]
    for rank in (0, 1):
        finding = json.loads((out / f"lightning-rank{rank}" / "finding.json").read_text())
        assert finding["op"] == "aten.log.default" and finding["root_cause"]["verdict"] == "confirmed"
        verdicts = {c["label"]: c["verdict"] for c in finding["verification"]["candidates"]}
        assert finding["verification"]["reference_finite"] and verdicts["exp (forward)"] == "confirmed"
        records = [json.loads(line) for line in (out / f"lightning-rank{rank}" / "records.jsonl").read_text().splitlines()]
        assert [r["status"] for r in records] == ["ok", "ok", "failed"]


class _NoBatchIndex(_Underflow):
    def training_step(self, batch):  # Lightning allows leaving batch_idx out
        return super().training_step(batch, None)


def test_a_training_step_without_batch_idx_is_replayed_and_verified_as_lightning_calls_it():
    callback = StableNCACallback()
    _fit(_NoBatchIndex(blow_up=1), [callback], epochs=1)
    watch = callback.watch
    assert watch.failed_at == {"epoch": 0, "step": 1} and watch.finding.op == "aten.log.default"
    assert watch.finding.verification["reference_finite"] and watch.finding.root_cause["verdict"] == "confirmed"
