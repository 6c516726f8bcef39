"""DDP: a per-rank watch over gloo; all ranks stop at the same step; SIGTERM on one rank stops every rank.

The ranks are real processes: ``torch.multiprocessing.spawn`` for the failure, and two
plain subprocesses started as ``torchrun`` starts them (RANK, WORLD_SIZE, MASTER_ADDR,
MASTER_PORT in the environment) for SIGTERM.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import torch.multiprocessing

from stablenca.errors import EXIT_TERMINATED
from stablenca.report import build_report

from test_interrupt import _lines  # the SIGINT tests' helper: lines recorded so far

TESTS = Path(__file__).resolve().parent


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _rank_main(rank: int, world: int, port: int | str, out: str, bad_rank: int | None, steps: int, pause: float,
               half: bool = False) -> None:
    """One rank: DDP over gloo, the same model everywhere; ``bad_rank``'s data overflows exp at step 3.

    ``half``: the forward runs under bfloat16 autocast.
    """
    import stablenca

    torch.set_num_threads(1)
    if isinstance(port, str):  # a file rendezvous: no port that another process could take meanwhile
        torch.distributed.init_process_group("gloo", init_method=f"file://{port}", rank=rank, world_size=world)
    else:  # torchrun's way: the rendezvous in the environment
        os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
        torch.distributed.init_process_group("gloo", rank=rank, world_size=world)
    calls = {"all_reduce": 0, "all_gather_object": 0}
    for name in calls:  # count the watch's own collectives (DDP's gradient all-reduce is in C++)
        original = getattr(torch.distributed, name)

        def counted(*args, _name=name, _original=original, **kwargs):
            calls[_name] += 1
            return _original(*args, **kwargs)

        setattr(torch.distributed, name, counted)
    torch.manual_seed(0)
    model = torch.nn.parallel.DistributedDataParallel(torch.nn.Linear(4, 2))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    x = torch.randn(16, 4) + rank
    with stablenca.watch(model, optimizer, out=out) as watch:
        for step in range(steps):
            def closure():
                optimizer.zero_grad()
                scale = 1000.0 if rank == bad_rank and step == 3 else 1.0
                with torch.autocast("cpu", dtype=torch.bfloat16, enabled=half):
                    scores = model(x)
                loss = torch.log(torch.exp(scores * scale).sum().float())
                loss.backward()
                return loss
            watch.step(closure, epoch=0)
            if watch.should_stop:
                break
            optimizer.step()
            time.sleep(pause)
    Path(out, f"calls-{rank}.json").write_text(json.dumps(
        {"calls": calls, "failed_at": watch.failed_at, "steps": len(watch.records),
         "first_failing_rank": watch.first_failing_rank}))
    _leave(0)


def _leave(code: int) -> None:
    """End a rank process: tear the group down together, then exit without the interpreter's teardown.

    A rank that destroys the group while its peer is still between collectives can make gloo's peer
    abort ("terminate called without an active exception", seen once in 3 suites); and torch's gloo
    threads can abort the process in the interpreter's teardown even after that (SIGABRT after the
    rank function has returned: 1 in 100 spawns of a plain DDP loop without stablenca on a loaded
    2-core machine, 2 in 60 of ``_rank_main``). Everything asserted on is written before this, and
    the watch has closed its files.
    """
    torch.distributed.barrier()
    torch.distributed.destroy_process_group()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def test_a_nonfinite_step_on_one_rank_stops_both_at_the_same_step(tmp_path):
    out = tmp_path / "ddp"
    torch.multiprocessing.spawn(_rank_main, args=(2, str(tmp_path / "store"), str(out), 1, 8, 0.0), nprocs=2)
    ranks = [json.loads((out / f"calls-{rank}.json").read_text()) for rank in (0, 1)]
    for rank, seen in enumerate(ranks):
        assert seen["failed_at"] == {"epoch": 0, "step": 3}, rank
        assert seen["steps"] == 4 and seen["first_failing_rank"] == 1
        # One flag all-reduce per step and nothing else; two gathers only after the failure
        # (the findings, then the summary entries at close).
        assert seen["calls"] == {"all_reduce": 4, "all_gather_object": 2}
        records = [json.loads(line) for line in (out / f"watch-rank{rank}" / "records.jsonl").read_text().splitlines()]
        assert [r["step"] for r in records] == [0, 1, 2, 3] and records[3]["first_failing_rank"] == 1
    summary = json.loads((out / "summary.json").read_text())
    assert summary["world_size"] == 2 and summary["first_failing_rank"] == 1
    assert summary["first_failing_finding"]["op"] == "aten.exp.default"
    assert summary["first_failing_finding"]["root_cause"]["kind"] == "overflow"
    assert [r["run"] for r in summary["runs"]] == ["watch-rank0", "watch-rank1"]
    assert all(r["status"] == "diverged" for r in summary["runs"])
    # Rank 0's own replay (no gradient sync) is finite: only rank 1 has a finding file.
    assert not (out / "watch-rank0" / "finding.json").exists() and (out / "watch-rank1" / "finding.json").exists()
    report = next(p for p in build_report(out) if p.name == "report.md").read_text()
    assert "`watch-rank1` went non-finite at step 3" in report


@pytest.mark.slow  # one more pair of processes (about 25 s on a busy 2-core machine)
def test_ddp_under_autocast_asks_every_rank_whether_float32_would_be_finite(tmp_path):
    out = tmp_path / "ddp"
    torch.multiprocessing.spawn(_rank_main, args=(2, str(tmp_path / "store"), str(out), 1, 8, 0.0, True), nprocs=2)
    summary = json.loads((out / "summary.json").read_text())
    finding = summary["first_failing_finding"]
    assert summary["first_failing_rank"] == 1 and finding["output"]["dtype"] == "bfloat16"
    # exp(1000 x) overflows float32 as well (bfloat16 has float32's range): not a precision problem.
    assert finding["float32"]["finite"] is False
    ranks = [json.loads((out / f"calls-{rank}.json").read_text()) for rank in (0, 1)]
    # The counterfactual was decided on the gathered findings: both ranks ran it, then gathered again.
    assert all(seen["calls"] == {"all_reduce": 4, "all_gather_object": 3} for seen in ranks)


def _launch_rank(rank: int, port: int, out: Path, log: Path) -> subprocess.Popen:
    """A rank as torchrun starts it: its own process, the rendezvous in the environment."""
    code = (f"import sys; sys.path.insert(0, {str(TESTS)!r})\n"
            f"from test_integrations_ddp import _leave, _rank_main\n"
            f"try:\n    _rank_main({rank}, 2, {port}, {str(out)!r}, None, 100000, 0.01)\n"
            # The watch's SystemExit(143) leaves through the same teardown as a finished rank.
            f"except SystemExit as stop:\n    _leave(stop.code)")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.Popen([sys.executable, "-c", code], env=env, stdout=open(log, "w"), stderr=subprocess.STDOUT)


@pytest.mark.slow  # two more processes that import torch (about 20 s on a busy 2-core machine)
def test_sigterm_on_one_rank_stops_every_rank_with_143(tmp_path):
    out, port = tmp_path / "ddp", _free_port()
    procs = [_launch_rank(rank, port, out, tmp_path / f"rank{rank}.log") for rank in (0, 1)]
    try:
        deadline = time.monotonic() + 240
        while _lines(out / "watch-rank1" / "records.jsonl") < 3:
            if any(p.poll() is not None for p in procs) or time.monotonic() > deadline:
                pytest.fail("the ranks did not start training: "
                            + " | ".join((tmp_path / f"rank{r}.log").read_text()[-1500:] for r in (0, 1)))
            time.sleep(0.05)
        procs[1].send_signal(signal.SIGTERM)  # preempt one rank; torchrun would signal them all
        codes = [p.wait(timeout=120) for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    assert codes == [EXIT_TERMINATED, EXIT_TERMINATED], [(tmp_path / f"rank{r}.log").read_text() for r in (0, 1)]
    records = [[json.loads(line) for line in (out / f"watch-rank{r}" / "records.jsonl").read_text().splitlines()]
               for r in (0, 1)]
    assert len(records[0]) == len(records[1]) >= 3  # both ranks stopped after the same step
    assert records[0][-1]["interrupted"] == records[1][-1]["interrupted"] == "SIGTERM"
    summary = json.loads((out / "summary.json").read_text())
    assert summary["interrupted"] is True and summary["signal"] == "SIGTERM"
    assert [r["status"] for r in summary["runs"]] == ["interrupted", "interrupted"]
