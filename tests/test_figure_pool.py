"""The report's figures drawn in a pool of forked processes: the same files as drawn one by one."""

from __future__ import annotations

import pytest

from stablenca.report import figures
from stablenca.report.figures import Figure, FigureJob, draw_figures, render_here


def _line(values):
    def make():
        fig = figures._figure(3, 2)
        fig.add_subplot().plot(values)
        return fig
    return make


def _broken():
    raise ValueError("no data for this figure")


def _jobs():
    return [FigureJob("timeline", "a", _line([1, 3, 2]), "run-a"), FigureJob("check", "broken", _broken),
            FigureJob("timeline", "b", _line([2, 1, 0.5]), "run-b"), FigureJob("sweep", "c", _line([0, 1]))]


def _draw(tmp_path, monkeypatch, workers: int, strict: bool = False):
    monkeypatch.setattr(figures, "_pool_size", lambda n: workers)
    return draw_figures(_jobs(), tmp_path, strict=strict)


@pytest.mark.skipif(figures._pool_size(2) == 0, reason="needs fork and two cores to draw in a pool")
def test_pool_writes_the_same_bytes_in_the_same_order(tmp_path, monkeypatch):
    serial = _draw(tmp_path / "serial", monkeypatch, 0)
    pooled = _draw(tmp_path / "pooled", monkeypatch, 2)
    assert [type(o) for o in pooled] == [Figure, str, Figure, Figure]
    assert pooled[1] == serial[1] == "broken.png: ValueError: no data for this figure"
    for one, other in zip(serial, pooled):
        if isinstance(one, Figure):
            assert (one.kind, one.run, one.path.name) == (other.kind, other.run, other.path.name)
            assert one.path.read_bytes() == other.path.read_bytes()


@pytest.mark.parametrize("workers", [0, 2])
def test_strict_raises_the_figure_s_own_error_and_writes_nothing_after_it(tmp_path, monkeypatch, workers):
    with pytest.raises(ValueError, match="no data for this figure"):
        _draw(tmp_path, monkeypatch, workers, strict=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.png"]


@pytest.mark.parametrize("workers", [0, 2])
def test_figures_drawn_elsewhere_are_written_as_they_are_and_not_drawn_again(tmp_path, monkeypatch, workers):
    # What a diagnose worker sends: PNG bytes or a problem, drawn in another process.
    drawn = render_here(_jobs()[:2])
    assert isinstance(drawn["a"], bytes) and drawn["broken"] == "broken.png: ValueError: no data for this figure"

    def not_again():
        raise AssertionError("a figure drawn elsewhere is drawn again")

    monkeypatch.setattr(figures, "_pool_size", lambda n: workers)
    jobs = [FigureJob("timeline", "a", not_again, "run-a"), FigureJob("check", "broken", not_again), *_jobs()[2:]]
    outcomes = draw_figures(jobs, tmp_path, strict=False, drawn=drawn)
    assert [type(o) for o in outcomes] == [Figure, str, Figure, Figure]
    assert outcomes[1] == drawn["broken"]
    assert (tmp_path / "a.png").read_bytes() == drawn["a"]
    assert (outcomes[0].kind, outcomes[0].run) == ("timeline", "run-a")


class _FinalisedInAChild:
    """Garbage in a reference cycle that says (a file) when a process other than its creator finalises it.

    It stands for a DistributedDataParallel reducer left in a cycle: its gloo process group's
    destructor joins worker threads that a forked child does not have, and hung a figure worker.
    """

    def __init__(self, marker):
        import os

        self.marker, self.creator, self.cycle = marker, os.getpid(), self

    def __del__(self):
        import os

        if os.getpid() != self.creator:
            self.marker.write_text("finalised in a forked child")


def _collect_then_line():
    import gc

    gc.collect()  # a worker's collection, forced: it must not reach what the worker inherited
    return _line([0, 1])()


def test_a_figure_worker_never_finalises_what_it_inherits(tmp_path, monkeypatch):
    import gc

    monkeypatch.setattr(figures, "_pool_size", lambda n: 2)
    marker = tmp_path / "marker"
    gc.disable()  # keep the garbage uncollected here until the fork
    try:
        _FinalisedInAChild(marker)
        outcomes = draw_figures([FigureJob("sweep", "a", _collect_then_line), FigureJob("sweep", "b", _line([1]))],
                                tmp_path, strict=True)
    finally:
        gc.enable()
        gc.collect()  # finalised here, by its creator
    assert [type(o) for o in outcomes] == [Figure, Figure]
    assert not marker.exists()
    assert gc.get_freeze_count() == 0  # the parent's collector is back as it was
