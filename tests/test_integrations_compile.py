"""torch.compile: the watch's cheap checks on a compiled model, and the eager replay of the failing step."""

from __future__ import annotations

import pytest
import torch

import stablenca


class _ExpNet(torch.nn.Module):
    """log(sum(exp(linear(x)))): inside the compiled graph, exp overflows float32 once x is scaled up."""

    def __init__(self) -> None:
        super().__init__()
        self.linear = torch.nn.Linear(16, 4)

    def forward(self, x):
        return torch.log(torch.exp(self.linear(x)).sum())


def _compiled_loop(backend: str):
    torch.manual_seed(0)
    net = _ExpNet()
    model = torch.compile(net, backend=backend)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    x = torch.randn(32, 16)
    with stablenca.watch(model, optimizer) as watch:
        for step in range(5):
            def closure():
                optimizer.zero_grad()
                # Step 3 scales the input so that exp(linear(x)) passes float32's 88.72 inside the graph.
                loss = model(x * (1000.0 if step == 3 else 1.0))
                loss.backward()
                return loss
            watch.step(closure, epoch=0)
            if watch.should_stop:
                break
            optimizer.step()
    return watch, net


def _check(watch):
    assert watch.failed_at == {"epoch": 0, "step": 3}
    assert [r["status"] for r in watch.records] == ["ok", "ok", "ok", "failed"]
    # The records use the user's parameter names, not the compile wrapper's `_orig_mod.` ones.
    assert "grad_2.0_norm/linear.weight" in watch.records[0]
    finding = watch.finding
    assert finding is not None and finding.op == "aten.exp.default" and finding.phase == "forward"
    assert finding.root_cause["kind"] == "overflow"


def test_a_compiled_model_is_watched_and_replayed_eagerly():
    """aot_eager: dynamo capture and AOTAutograd as with inductor, without its C++ compile (fast)."""
    from torch._dynamo.utils import counters

    counters.clear()
    watch, _ = _compiled_loop("aot_eager")
    _check(watch)
    assert counters["stats"]["unique_graphs"] >= 1


@pytest.mark.slow
def test_an_inductor_compiled_model_is_replayed_eagerly():
    """The default backend (inductor: C++ kernels on CPU, compiled here with the system's gcc)."""
    from torch._dynamo.utils import counters

    counters.clear()
    watch, _ = _compiled_loop("inductor")
    _check(watch)
    assert counters["stats"]["unique_graphs"] >= 1  # the loop really ran a compiled graph
