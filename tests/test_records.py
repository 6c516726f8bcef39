import json
import math

import pandas as pd
import pytest
import torch

from stablenca import losses
from stablenca.errors import OutputError
from stablenca.runtime.probes import batch_statistics
from stablenca.publish import capture
from stablenca.artifacts import prepare_out_dir
from stablenca.records import JsonlWriter, atomic_write_json, read_jsonl


def test_jsonl_keeps_nan_and_inf_and_pandas_reads_it(tmp_path):
    path = tmp_path / "records.jsonl"
    with JsonlWriter(path) as writer:
        writer.write({"step": 0, "loss": float("nan"), "grad_norm": float("inf")})
        writer.write({"step": 1, "loss": 1.5, "grad_norm": -float("inf")})
    frame = pd.read_json(path, lines=True)
    assert math.isnan(frame["loss"][0]) and frame["grad_norm"][0] == math.inf
    assert frame["grad_norm"][1] == -math.inf


def test_jsonl_is_flushed_per_record(tmp_path):
    path = tmp_path / "records.jsonl"
    writer = JsonlWriter(path)
    writer.write({"step": 0})
    assert read_jsonl(path) == [{"step": 0}]  # visible before close
    writer.close()


def test_read_jsonl_ignores_a_cut_last_line(tmp_path):
    path = tmp_path / "records.jsonl"
    path.write_text('{"step": 0}\n{"step": 1, "lo')
    assert read_jsonl(path) == [{"step": 0}]


def test_atomic_write_leaves_no_temporary_files(tmp_path):
    atomic_write_json(tmp_path / "summary.json", {"runs": [], "x": float("nan")})
    assert [p.name for p in tmp_path.iterdir()] == ["summary.json"]
    assert math.isnan(json.loads((tmp_path / "summary.json").read_text())["x"])


def test_out_dir_refuses_to_mix_runs_without_force(tmp_path):
    out = prepare_out_dir(tmp_path / "d", force=False)
    atomic_write_json(out / "summary.json", {"runs": []})
    (out / "old-run").mkdir()
    (out / "old-run" / "records.jsonl").write_text("{}\n")
    with pytest.raises(OutputError, match="--force"):
        prepare_out_dir(out, force=False)
    prepare_out_dir(out, force=True)
    assert not (out / "summary.json").exists() and not (out / "old-run" / "records.jsonl").exists()


def test_probe_reads_published_intermediates_of_the_ratio_loss():
    distances = torch.tensor([[0.0, 1.0, 200.0], [1.0, 0.0, 300.0], [200.0, 300.0, 0.0]])
    labels = torch.tensor([0, 0, 1])
    with capture() as published:
        output = losses.ratio(distances, labels, labels, torch.eye(3, dtype=torch.bool))
    record = batch_statistics(loss=output.loss, per_sample=output.per_sample, rows_excluded=0,
                              published=published, named_parameters=[])
    assert record["d_max"] == 300.0 and record["d_min"] == 1.0
    assert record["d_same_max"] == 1.0 and record["d_other_min"] == 200.0
    assert record["exp_zero"] == 4  # exp(-200), exp(-300) twice each: finite → 0.0
    assert record["rows_without_same_class"] == 1
    assert record["p_same_min"] == 0.0 and record["p_diff_zero"] == 3
    assert math.isnan(record["loss"]) and record["loss_inf"] == 2 and record["loss_nan"] == 1


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_probe_counts_subnormal_exp_outputs(dtype):
    tiny = torch.finfo(dtype).tiny
    subnormal_distance = -math.log(tiny) + 5  # exp(-d) is subnormal but not zero
    distances = torch.tensor([[0.0, subnormal_distance], [subnormal_distance, 0.0]], dtype=dtype)
    labels = torch.tensor([0, 1])
    with capture() as published:
        output = losses.difference(distances, labels, labels, torch.eye(2, dtype=torch.bool))
    record = batch_statistics(loss=output.loss, per_sample=output.per_sample, rows_excluded=0,
                              published=published, named_parameters=[])
    assert record["exp_subnormal"] == 2 and record["exp_zero"] == 0


def test_probe_of_a_loss_that_publishes_nothing_has_gradient_statistics():
    layer = torch.nn.Linear(3, 2)
    loss = layer(torch.ones(4, 3)).pow(2).mean()
    loss.backward()
    record = batch_statistics(loss=loss, per_sample=None, rows_excluded=0, published={},
                              named_parameters=list(layer.named_parameters()))
    assert record["grad_norm"] > 0 and "grad_2.0_norm/weight" in record and "param_norm/bias" in record
    assert "d_max" not in record


def test_probe_samples_large_matrices_but_keeps_exact_extremes():
    torch.manual_seed(0)
    distances = torch.rand(600, 700) * 10
    distances[123, 456] = 500.0
    labels, candidate_labels = torch.arange(600) % 3, torch.arange(700) % 3
    self_mask = torch.zeros(600, 700, dtype=torch.bool)
    with capture() as published:
        output = losses.ratio(distances, labels, candidate_labels, self_mask)
    record = batch_statistics(loss=output.loss, per_sample=output.per_sample, rows_excluded=0,
                              published=published, named_parameters=[])
    assert record["probe_sampled"] is True
    assert record["d_max"] == 500.0 and record["exp_zero"] == 1
