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


@pytest.mark.skipif(figures._pool_size(2) == 0, reason="needs fork and two cores to draw in a pool")
def test_a_job_marked_here_is_drawn_in_this_process_while_the_pool_draws_the_others(tmp_path, monkeypatch):
    import os

    import torch

    where: dict[str, tuple[int, int]] = {}

    def noting(name, values):
        def make():
            where[name] = os.getpid(), torch.get_num_threads()  # a pool worker's entry dies with it
            return _line(values)()
        return make

    jobs = [FigureJob("timeline", "a", _line([1, 2])), FigureJob("sweep", "s", noting("s", [0, 1]), here=True),
            FigureJob("timeline", "b", _line([2, 1]))]
    monkeypatch.setattr(figures, "_pool_size", lambda n: 2 if n >= 2 else 0)
    outcomes = draw_figures(jobs, tmp_path)
    assert [o.path.name for o in outcomes] == ["a.png", "s.png", "b.png"]
    assert where == {"s": (os.getpid(), torch.get_num_threads())}
    assert outcomes[1].path.read_bytes() == figures.png_bytes(_line([0, 1])())


# --------------------------------------------------------------------------- png_bytes' shortcuts


def _matplotlib_png(fig) -> bytes:
    """``fig`` rendered by matplotlib alone: its own renderer, parser and title placement."""
    import io

    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    return buffer.getvalue()


def _titled(kind: str):
    """A figure whose left title matplotlib lifts (kind 'lifted') or leaves at the top of the axes."""
    import numpy as np

    fig = figures._figure(5, 3, layout=None)
    steps = np.arange(40.0)
    if kind in ("shared", "marks on top"):  # the upper panel of a sharex column, as in the timeline
        ax, below = fig.subplots(2, 1, sharex=True)
        below.plot(steps, steps)
        ax.plot(steps, 10.0 ** (steps / 4 - 3))
        ax.set_yscale("log")
        if kind == "marks on top":
            ax.xaxis.set_ticks_position("both")
        ax.set_title("(a) a left title", loc="left")
        return fig
    ax = fig.add_subplot()
    if kind == "log":
        ax.plot(steps, 10.0 ** (steps / 4 - 3))
        ax.set_yscale("log")
    elif kind == "offset":  # a linear axis whose values need an offset text ("1e7") at its top left
        ax.plot(steps, 1e7 + steps)
    else:  # lifted: an epoch axis on top, as the timeline's first panel has
        ax.plot(steps, steps)
        ax.secondary_xaxis("top").set_xlabel("epoch")
    ax.set_title("(a) a left title", loc="left")
    return fig


KINDS = ("log", "offset", "lifted", "shared", "marks on top")


@pytest.mark.parametrize("kind", KINDS)
def test_png_bytes_draws_what_matplotlib_draws(kind):
    assert figures.png_bytes(_titled(kind)) == _matplotlib_png(_titled(kind))


def test_the_title_placement_is_skipped_only_where_nothing_can_lift_the_title():
    stays = {kind: figures._title_stays(_titled(kind).axes[0]) for kind in KINDS}
    # shared: its tick labels hidden, only its bottom marks left (matplotlib calls it "unknown")
    assert stays == {"log": True, "offset": False, "lifted": False, "shared": True, "marks on top": False}
    shared = _titled("shared").axes[0]
    assert shared.xaxis.get_ticks_position() == "unknown"
    shared.tick_params(axis="x", direction="in")  # marks pointing into the axes: left to matplotlib
    assert figures._title_stays(shared) is False
    # A linear axis without an offset: its ticks (so its offset text) are known before the draw only
    # where no layout engine resizes the axes.
    for layout, expected in ((None, True), ("constrained", False)):
        fig = figures._figure(5, 3, layout=layout)
        ax = fig.add_subplot()
        ax.plot([0, 1, 2], [3, 1, 2])
        ax.set_title("(b) left", loc="left")
        assert figures._title_stays(ax) is expected


def test_figures_share_one_mathtext_parser():
    from matplotlib.mathtext import MathTextParser

    figures.png_bytes(_titled("log"))  # its 10^k tick labels parsed (or found parsed) once
    before = MathTextParser._parse_cached.cache_info()
    figures.png_bytes(_titled("log"))
    after = MathTextParser._parse_cached.cache_info()
    assert after.hits > before.hits and after.misses == before.misses


def test_a_forked_process_parses_mathtext_with_fonts_of_its_own():
    # Parses hold their fonts, whose files a fork shares: a child must not draw from the parent's.
    import multiprocessing

    from matplotlib.mathtext import MathTextParser

    figures.png_bytes(_titled("log"))
    assert MathTextParser._parse_cached.cache_info().currsize > 0
    context = multiprocessing.get_context("fork")
    receive, send = context.Pipe(duplex=False)
    child = context.Process(target=lambda: send.send(MathTextParser._parse_cached.cache_info().currsize))
    child.start()
    assert receive.recv() == 0
    child.join()
    assert MathTextParser._parse_cached.cache_info().currsize > 0  # this process keeps its own
