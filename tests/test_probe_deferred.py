"""Small steps summarised many at a time (probes.DeferredSteps) give batch_statistics' records, and
the recorder writes them on every way out of a run."""

from __future__ import annotations

import gc
import json
import math
import os
import signal

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from stablenca.records import read_jsonl
from stablenca.runtime import probes
from stablenca.runtime.recorder import Recorder
from stablenca.runtime.sentinel import Sentinel
from stablenca.training.trainer import Hook, StepContext, Trainer, TrainConfig

SPECIAL = torch.tensor([0.0, math.inf, math.nan, 1e-40, 1e30, 87.5, 104.0, 2.0, 2.0])


def _values(generator, shape, dtype, special: bool, scale: float = 120.0):
    """Uniform values with ties (rounded halves) and, when ``special``, zeros, inf, NaN, subnormals."""
    values = (torch.rand(shape, generator=generator, dtype=torch.float64) * scale * 2).round() / 2
    if special:
        pick = torch.rand(shape, generator=generator) < 0.2
        values[pick] = SPECIAL[torch.randint(0, len(SPECIAL), (int(pick.sum()),), generator=generator)].double()
    return values.to(dtype)


def _step(seed: int, batch: int, width: int, dtype, options: dict):
    """What the trainer hands the recorder for one step, drawn from ``seed``."""
    generator = torch.Generator().manual_seed(seed)
    special = options["special"]
    distances = _values(generator, (batch, width), dtype, special)
    if options["self"] == "diagonal":
        self_mask = torch.zeros(batch, width, dtype=torch.bool)
        self_mask[:, :batch].fill_diagonal_(True)
    elif options["self"] == "random":
        self_mask = torch.rand(batch, width, generator=generator) < 0.2
    else:
        self_mask = None
    published = {"distances": distances}
    if self_mask is not None:
        published["self_mask"] = self_mask
    if options["same"]:
        same = torch.rand(batch, width, generator=generator) < 0.3
        same[0] = False  # a row without a same-class candidate
        published["same_class_mask"] = same
    if options["exp"]:
        published["exp_out"] = torch.exp(-distances)  # zeros and subnormals past d = 87.3
    if options["softmax"]:
        published["softmax"] = _values(generator, (batch, width), dtype, special, scale=1.0) * 1e-38
    if options["sums"]:
        published["p_same"] = _values(generator, (batch,), dtype, special, scale=2.0)
        published["p_diff"] = _values(generator, (batch,), dtype, special, scale=2.0)
    if options["temperature"]:
        published["temperature"] = 0.5
    norms = _values(generator, (2, options["parameters"]), torch.float64, special, scale=10.0)
    return {
        "loss": _values(generator, (), dtype, special),
        "per_sample": _values(generator, (batch,), dtype, special) if options["per_sample"] else None,
        "included": torch.rand(batch, generator=generator) < 0.8 if options["included"] else None,
        "published": published, "grad_norms": norms[0], "param_norms": norms[1],
    }


def _immediate(step: dict, header: dict, names: list[str]) -> dict:
    included = step["included"]
    record = dict(header)
    record.update(probes.batch_statistics(
        loss=step["loss"], per_sample=step["per_sample"], published=step["published"],
        rows_excluded=0 if included is None else int((~included).sum()),
        named_parameters=[(name, None) for name in names], grad_norms=step["grad_norms"],
        param_norms=step["param_norms"]))
    return record


options_strategy = st.fixed_dictionaries({
    "special": st.booleans(), "self": st.sampled_from(["diagonal", "random", None]), "same": st.booleans(),
    "exp": st.booleans(), "softmax": st.booleans(), "sums": st.booleans(), "temperature": st.booleans(),
    "per_sample": st.booleans(), "included": st.booleans(),
})
layout_strategy = st.tuples(st.integers(1, 40), st.integers(0, 24), st.sampled_from([torch.float32, torch.float64]),
                            options_strategy)


@given(layouts=st.lists(layout_strategy, min_size=1, max_size=3),
       order=st.lists(st.integers(0, 2), min_size=1, max_size=12), capacity=st.integers(1, 5),
       parameters=st.integers(1, 9), seed=st.integers(0, 2**31 - 1))
def test_held_steps_give_batch_statistics_records(layouts, order, capacity, parameters, seed):
    # The same text, so the same keys in the same order, the same numbers and the same JSON
    # types, for steps of up to three layouts interleaved (as the short last batch of an epoch).
    # Distances here are never -0.0: the sign of a zero minimum is fixed by neither path.
    # jsonl() writes that text itself: its lines must be json.dumps' of records(), and its last
    # record the last of records().
    held, twin = probes.DeferredSteps(capacity), probes.DeferredSteps(capacity)
    names = [f"layer{i}.weight" for i in range(parameters)]
    expected, written, lines = [], [], []

    def flush():
        records = held.records(names)
        text, last = twin.jsonl(names)
        assert last == (records[-1] if records else None) or json.dumps(last) == json.dumps(records[-1])
        written.extend(json.dumps(record) for record in records)
        lines.extend(text.splitlines())
        assert text.endswith("\n") or not text

    for index, which in enumerate(order):
        batch, extra, dtype, options = layouts[which % len(layouts)]
        step = _step(seed + index, batch, batch + extra, dtype, {**options, "parameters": parameters})
        header = {"step": index, "finite": bool(index % 2), "epoch": 0.5 if index % 3 else math.nan}
        expected.append(json.dumps(_immediate(step, header, names)))
        full = held.add(header, **step)
        assert full is not None  # every layout drawn here is held
        assert twin.add(header, **step) == full
        if full:
            flush()
    flush()
    assert written == expected
    assert lines == expected


@pytest.mark.parametrize("header", [{"step": 3, "applied": True}, {"loss": "header's", "temperature": None},
                                    {"epoch": -0.0, "note": "100% ü", "flags": [1, None]}])
def test_jsonl_is_the_text_of_json_dumps(header):
    # Keys given twice (the record's dict keeps the first place, the last value), keys and
    # names that need escaping or hold %, and header values of any JSON type.
    names = ["w%d", "ü.weight", 'say "hi"']
    held, twin = probes.DeferredSteps(), probes.DeferredSteps()
    for index in range(3):
        step = _step(index, 4, 6, torch.float32, {"special": True, "self": "diagonal", "same": True, "exp": True,
                                                  "softmax": False, "sums": True, "temperature": index != 1,
                                                  "per_sample": True, "included": True, "parameters": 3})
        assert held.add(header, **step) is not None and twin.add(header, **step) is not None
    records = held.records(names)
    text, last = twin.jsonl(names)
    assert text == "".join(json.dumps(record) + "\n" for record in records)
    assert json.dumps(last) == json.dumps(records[-1])
    assert twin.jsonl(names) == ("", None)


def test_unusual_steps_are_not_held():
    held = probes.DeferredSteps()
    norms = torch.ones(2, dtype=torch.float64)
    common = {"loss": torch.tensor(1.0), "per_sample": None, "included": None, "grad_norms": norms,
              "param_norms": norms}
    big = torch.zeros(1, probes.DEFERRED_PAIRS + 1)
    assert held.add({}, published={"distances": big}, **common) is None
    assert held.add({}, published={"distances": torch.zeros(4, 4, dtype=torch.float16)}, **common) is None
    assert held.add({}, published={"distances": torch.zeros(4, 4), "p_same": torch.zeros(3)}, **common) is None
    assert held.add({}, published={"distances": torch.zeros(4, 4), "self_mask": "no"}, **common) is None
    assert held.add({}, published={}, **common) is None
    assert len(held) == 0


@pytest.mark.parametrize("width", [1, 5, 6, 8, 9, 16, 17, 31, 40])
def test_stacked_norms_are_the_norms_of_each_row(width):
    # batch_statistics takes .norm() of one (P,) vector; the stack takes vector_norm(dim=1) of (steps, P).
    generator = torch.Generator().manual_seed(width)
    rows = torch.randn(64, width, generator=generator, dtype=torch.float64) * 10.0 ** torch.randint(
        -150, 150, (64, 1), generator=generator)
    stacked = torch.linalg.vector_norm(rows, dim=1)
    assert all(stacked[k].item() == rows[k].norm().item() for k in range(len(rows)))


@pytest.mark.parametrize("batch", [1, 3, 7, 8, 15, 16, 17, 32, 33, 64])
def test_stacked_logs_are_the_logs_of_each_row(batch):
    generator = torch.Generator().manual_seed(batch)
    padded = torch.empty(64, batch + 1, dtype=torch.float64)
    rows = padded[:, :batch]
    rows.copy_(torch.rand(64, batch, generator=generator, dtype=torch.float64) * 10.0 ** torch.randint(
        -300, 3, (64, batch), generator=generator))
    rows[0, 0], rows[1, -1], rows[2, 0] = 0.0, math.nan, math.inf
    logs = probes._row_logs(rows)
    for k in range(64):
        expected = torch.log(rows[k].clone()).numpy()  # one contiguous (B,) row, as row_coordinates has it
        assert logs[k].tobytes() == expected.tobytes()


# -- the recorder on real runs --------------------------------------------------------------

def _seed_config(**overrides) -> TrainConfig:
    return TrainConfig(**{"model": "seed", "loss": "difference", "seed": 0, "epochs": 2, **overrides})


def _lines(run_dir) -> list[str]:
    path = run_dir / "records.jsonl"
    return path.read_text().splitlines() if path.exists() else []


@pytest.mark.parametrize("loss", ["difference", "ratio", "nca_logspace"])
def test_held_and_immediate_records_are_the_same_text(tmp_path, monkeypatch, loss):
    # ratio diverges in its third epoch: the non-finite step is written at once, the others held.
    def run(run_dir):
        recorder = Recorder(run_dir)
        Trainer(_seed_config(loss=loss, epochs=3), hooks=[Sentinel(), recorder]).fit()
        return _lines(run_dir)

    held = run(tmp_path / "held")
    monkeypatch.setattr(probes, "DEFERRED_PAIRS", 0)  # every step summarised at once, as before
    assert run(tmp_path / "immediate") == held
    assert len(held) > 100


class _ReadAfterRecorder(Hook):
    """Placed after the recorder: what records.jsonl holds when the recorder is done with a step or an epoch."""

    def __init__(self, run_dir) -> None:
        self.run_dir, self.seen = run_dir, {}

    def after_step(self, trainer, ctx) -> None:
        if not ctx.finite:
            self.seen["nonfinite"] = (ctx.step, len(_lines(self.run_dir)))

    def on_epoch_end(self, trainer, epoch, val_metrics) -> None:
        self.seen.setdefault("epochs", []).append((trainer.global_step, len(_lines(self.run_dir))))


def test_the_nonfinite_step_and_each_epoch_reach_the_file_at_once(tmp_path):
    reader = _ReadAfterRecorder(tmp_path)
    sentinel = Sentinel()
    result = Trainer(_seed_config(loss="ratio", epochs=5), hooks=[sentinel, Recorder(tmp_path), reader]).fit()
    assert result.diverged and sentinel.capsule["step"] == result.diverged_at["step"]  # caught at that batch
    step, lines = reader.seen["nonfinite"]
    assert step == result.diverged_at["step"] and lines == step + 1
    assert all(steps == lines for steps, lines in reader.seen["epochs"])
    last = read_jsonl(tmp_path / "records.jsonl")[-1]
    assert last["step"] == step and last["finite"] is False


class _Interrupt(Hook):
    def __init__(self, step: int) -> None:
        self.step = step

    def after_step(self, trainer, ctx) -> None:
        if ctx.step == self.step:  # a real Ctrl-C: held by the trainer until the step is done
            os.kill(os.getpid(), signal.SIGINT)


def test_a_step_that_raises_leaves_every_earlier_record_on_disk(tmp_path):
    class Broken(RuntimeError):
        pass

    trainer = Trainer(_seed_config(), hooks=[Recorder(tmp_path)])
    forward_backward = trainer.forward_backward

    def failing(ctx):  # the loss raises inside forward at step 50
        if ctx.step == 50:
            raise Broken("step 50")
        forward_backward(ctx)

    trainer.forward_backward = failing
    with pytest.raises(Broken):
        trainer.fit()
    assert [json.loads(line)["step"] for line in _lines(tmp_path)] == list(range(50))  # nobody closed it


def test_ctrl_c_keeps_every_finished_step(tmp_path):
    result = Trainer(_seed_config(), hooks=[Recorder(tmp_path), _Interrupt(40)]).fit()
    assert result.status == "interrupted"
    assert [json.loads(line)["step"] for line in _lines(tmp_path)] == list(range(41))


def test_a_recorder_nobody_closed_writes_when_collected(tmp_path):
    trainer = Trainer(_seed_config(), hooks=[Recorder(tmp_path)])
    for step, batch in enumerate(trainer.epoch_batches()[:10]):
        trainer.run_step(StepContext(0, step, step, batch))
    assert _lines(tmp_path) == []  # held
    del trainer
    gc.collect()
    assert len(_lines(tmp_path)) == 10


def test_a_new_shape_every_step_keeps_a_bounded_number_of_buffers():
    held = probes.DeferredSteps(4)
    names = ["w"]
    expected, written = [], []
    for index in range(3 * probes.DEFERRED_LAYOUTS):
        options = {"special": False, "self": "diagonal", "same": True, "exp": True, "softmax": False, "sums": True,
                   "temperature": True, "per_sample": True, "included": False, "parameters": 1}
        step = _step(index, 2 + index, 3 + index, torch.float32, options)  # a new batch size each step
        header = {"step": index}
        expected.append(json.dumps(_immediate(step, header, names)))
        result = held.add(header, **step)
        if result is None:  # over the bound: the caller summarises it at once, after what is held
            written += [json.dumps(record) for record in held.records(names)] + [expected[-1]]
        elif result:
            written += [json.dumps(record) for record in held.records(names)]
        assert len(held._stacks) <= probes.DEFERRED_LAYOUTS
    written += [json.dumps(record) for record in held.records(names)]
    assert written == expected
