"""The user-loop API: attach the recorder, sentinel and tracer to any training loop."""

import torch

import stablenca
from stablenca.watcher import watch


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
