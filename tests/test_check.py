"""`stablenca check`: the batch generator, the sweep, the contract, the CLI."""

import json
import math
import textwrap

import numpy as np
import pytest
import torch

from stablenca import check, cli, losses
from stablenca import reference as ref
from stablenca.check import bounds
from stablenca.errors import ContractError

# A short sweep: 2 points per decade, one batch per scale and population.
QUICK = {"points_per_decade": 2, "batches": 1}


def quick_contract(tmp_path, expect, **extra):
    path = tmp_path / "contract.json"
    path.write_text(json.dumps({"sweep": QUICK, "expect": expect, **extra}))
    return str(path)


# --------------------------------------------------------------------------- batches


@pytest.mark.parametrize("population", check.POPULATIONS)
@pytest.mark.parametrize("scale", [1e-3, 0.37, 95.0, 1e4])
def test_generated_batches_have_the_documented_shape(population, scale):
    for seed in range(5):
        batch = check.random_batch(np.random.default_rng(seed), scale, population)
        d, y = batch.distances, batch.labels
        assert check.ROWS[0] <= batch.rows <= check.ROWS[1]
        assert torch.equal(d, d.T) and bool((d.diagonal() == 0).all()) and bool((d >= 0).all())
        for dtype in (torch.float16, torch.bfloat16, torch.float32):
            assert torch.equal(d.to(dtype).to(torch.float64), d), "exact in every dtype"
        counts = torch.bincount(y)
        assert bool((counts > 0).all())
        if population == "paired":
            assert bool((counts >= 2).all())
        else:
            assert int((counts == 1).sum()) == 1
        same = y[:, None] == y[None, :]
        off = ~batch.self_mask
        slack = 2 ** -8  # the 8-bit input rounding
        for i in range(batch.rows):
            nearest_other = d[i][~same[i]].min().item()
            assert scale * (1 - slack) <= nearest_other <= check.KAPPA * scale * (1 + slack)
            if (same[i] & off[i]).any():
                nearest_same = d[i][same[i] & off[i]].min().item()
                assert scale * (1 - slack) <= nearest_same <= check.KAPPA * scale * (1 + slack)
            assert d[i][off[i]].max().item() <= check.FAR * scale * (1 + slack)


def test_scale_grid_and_theory_window():
    grid = check.scale_grid()
    # 10 ** exponent: one pow, within 1 ulp (2u, u = 2**-53) of the exact power.
    assert grid[0] == pytest.approx(1e-3, rel=2.0 ** -52) and grid[-1] == pytest.approx(1e4, rel=2.0 ** -52)
    assert len(grid) == 71
    # -ln(2**-1022) / KAPPA and -ln(2**-1075): the exact limits, no longer a rounded table. Both sides
    # are a log (1 ulp) and a product or quotient (u), or two logs and a difference: within 4 ulps.
    window = check.theory_window("float64")
    assert window == (pytest.approx(1022 * math.log(2) / 1.25, rel=4 * 2.0 ** -52),
                      pytest.approx(1075 * math.log(2), rel=4 * 2.0 ** -52))


# --------------------------------------------------------------------------- the sweep


@pytest.fixture(scope="module")
def small_report():
    return check.run_check(["ratio", "nca_logspace", "difference"], ["float32"], seed=1, **QUICK)


def test_sweep_reports_every_formulation_and_population(small_report):
    ratio = small_report.row("ratio", "float32")
    logspace = small_report.row("nca_logspace", "float32")
    difference = small_report.row("difference", "float32")
    assert ratio.reference == "mpmath (50 digits)"
    assert ratio.breakdown_scale is not None and "non-finite" in ratio.breakdown_reason
    assert ratio.populations["paired"].finite_fraction < 1
    assert ratio.populations["singleton"].finite_fraction == 0  # P_same = 0 at every scale
    assert logspace.breakdown_scale is None
    assert logspace.populations["paired"].finite_fraction == 1
    assert logspace.populations["singleton"].finite_fraction == 1
    assert logspace.populations["paired"].loss_bits_max <= check.threshold_bits("float32")  # never broken
    assert difference.populations["paired"].vanished_fraction > 0  # exp underflow: gradient exactly zero
    assert logspace.populations["paired"].vanished_fraction == 0
    assert small_report.contract is None and small_report.ok


def test_report_is_json_and_a_table(small_report):
    data = json.loads(json.dumps(small_report.to_dict()))
    assert data["command"] == "check" and data["contract"] is None
    assert {r["loss"] for r in data["results"]} == {"ratio", "nca_logspace", "difference"}
    assert set(data["results"][0]["populations"]) == {"paired", "singleton"}
    assert data["sweep"]["threshold_bits"] == {"float32": 12.0}
    table = small_report.format_table()
    assert "breakdown" in table and "nca_logspace" in table and "singleton" in table


def test_sweep_is_deterministic_and_subsets_do_not_change_batches():
    first = check.run_check(["ratio"], ["float32"], seed=4, **QUICK)
    again = check.run_check(["ratio", "nca_logspace"], ["float64", "float32"], seed=4, **QUICK)
    assert first.row("ratio", "float32") == again.row("ratio", "float32")


# --------------------------------------------------------------------------- contracts


def test_contract_violations_read_as_a_diff(tmp_path):
    path = quick_contract(tmp_path, {
        "ratio": {"float32": {"breakdown": "none"}},
        "nca_logspace": {"float32": {"breakdown": 50, "max_loss_bits": 0.001}},
    })
    report = check.run_check(contract=path, seed=1)
    assert not report.ok
    messages = {(v.loss, v.dtype, v.field): v.message for v in report.violations}
    assert "expected none up to 1e+04, measured" in messages[("ratio", "float32", "breakdown")]
    assert "expected 50 (tolerance factor 1.5: 33.3..75), measured none up to 1e+04" in \
        messages[("nca_logspace", "float32", "breakdown")]
    assert "expected <= 0.001" in messages[("nca_logspace", "float32", "max_loss_bits")]
    table = report.format_table()
    assert "3 violation(s)" in table and "  - ratio x float32: breakdown scale" in table


def test_contract_passes_within_the_tolerance_factor(tmp_path):
    measured = check.run_check(["ratio"], ["float32"], seed=1, **QUICK).row("ratio", "float32").breakdown_scale
    path = quick_contract(tmp_path, {"ratio": {"float32": {"breakdown": measured * 1.4}}}, tolerance_factor=1.5)
    assert check.run_check(contract=path, seed=1).ok
    path = quick_contract(tmp_path, {"ratio": {"float32": {"breakdown": measured * 1.4, "tolerance_factor": 1.2}}})
    assert not check.run_check(contract=path, seed=1).ok


MALFORMED = {
    "not json": "{ nope",
    "no expect": '{"sweep": {}}',
    "unknown top key": '{"expect": {"ratio": {"float32": {"breakdown": 1}}}, "colour": 1}',
    "unknown dtype": '{"expect": {"ratio": {"float8": {"breakdown": 1}}}}',
    "no breakdown": '{"expect": {"ratio": {"float32": {}}}}',
    "bad breakdown": '{"expect": {"ratio": {"float32": {"breakdown": "soon"}}}}',
    "negative bits": '{"expect": {"ratio": {"float32": {"breakdown": 1, "max_loss_bits": -1}}}}',
    "bad tolerance": '{"tolerance_factor": 0.5, "expect": {"ratio": {"float32": {"breakdown": 1}}}}',
    "bad sweep": '{"sweep": {"batches": 0}, "expect": {"ratio": {"float32": {"breakdown": 1}}}}',
    "unknown entry key": '{"expect": {"ratio": {"float32": {"breakdown": 1, "maxbits": 3}}}}',
    "unknown loss": '{"expect": {"no_such_loss": {"float32": {"breakdown": 1}}}}',
}


@pytest.mark.parametrize("case", list(MALFORMED))
def test_malformed_contract_is_a_one_line_error_and_exit_2(case, tmp_path, capsys):
    path = tmp_path / "bad.json"
    path.write_text(MALFORMED[case])
    if case != "unknown loss":
        with pytest.raises(ContractError):
            check.load_contract(path)
    assert cli.main(["check", "--contract", str(path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("stablenca: error: ") and err.count("\n") == 1 and "fix:" in err


def test_missing_contract_file_is_exit_2(tmp_path, capsys):
    assert cli.main(["check", "--contract", str(tmp_path / "absent.json")]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_shipped_contract_is_valid_and_states_the_expected_behaviour():
    contract = check.load_contract("default")
    assert contract.path.endswith("default.json")
    assert set(contract.losses) == {"ratio", "ratio_eps", "difference", "nca_logspace", "modernnca"}
    assert contract.dtypes == ["float32", "float64"]
    assert contract.expect["nca_logspace"]["float32"].breakdown is None
    assert contract.expect["modernnca"]["float32"].loss_breakdown is None
    lo32, hi32 = check.theory_window("float32")
    assert lo32 <= contract.expect["ratio"]["float32"].breakdown <= hi32
    lo64, hi64 = check.theory_window("float64")
    assert lo64 <= contract.expect["ratio"]["float64"].breakdown <= hi64



SHIPPED_SWEEP = check.load_contract("default").sweep


def test_shipped_bits_bounds_are_the_derived_ones():
    """Every max_*_bits of the shipped contract is the analysis' bound on the seeded sweep (not a measurement)."""
    contract = check.load_contract("default")
    for name in ("difference", "nca_logspace", "modernnca"):
        for dtype, entry in contract.expect[name].items():
            loss_bits, grad_bits = bounds.derived_bits(name, dtype, SHIPPED_SWEEP)
            assert entry.max_loss_bits == loss_bits, (name, dtype)
            assert entry.max_grad_bits == grad_bits or (entry.max_grad_bits is None and name == "modernnca"), \
                (name, dtype)


def test_shipped_modernnca_breakdown_spans_the_predicted_window():
    """Theory's first broken seeded batch, with q's rounding bracketed (slack 1/4..2), lies in the tolerance window."""
    contract = check.load_contract("default")
    for dtype, entry in contract.expect["modernnca"].items():
        lo = bounds.modernnca_breakdown(dtype, SHIPPED_SWEEP, slack=2.0)
        hi = bounds.modernnca_breakdown(dtype, SHIPPED_SWEEP, slack=0.25)
        assert lo is not None and hi is not None, dtype
        f = entry.tolerance_factor
        assert entry.breakdown / f <= lo <= hi <= entry.breakdown * f, (dtype, lo, hi)


@pytest.mark.parametrize("name", ["difference", "nca_logspace", "modernnca"])
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_measured_bits_stay_within_the_derived_bound_batch_by_batch(name, dtype):
    """On this CPU path, every seeded batch (one per scale) is within its own derived bound."""
    formulation = losses.resolve(name, "multiclass")
    reference = ref.reference_for(formulation)
    sweep = {**SHIPPED_SWEEP, "batches": 1}
    for batch in bounds.sweep_batches(sweep):
        exact = ref.compute_reference(reference, batch.distances, batch.labels, batch.labels, batch.self_mask)
        measured = check.evaluate(formulation, batch, dtype, exact)
        loss_bound, grad_bound = bounds.batch_bits(name, batch, dtype, exact)
        assert measured.loss_bits <= loss_bound, (batch.scale, measured.loss_bits, loss_bound)
        if grad_bound is not None:
            assert measured.grad_bits <= grad_bound, (batch.scale, measured.grad_bits, grad_bound)
        if name == "modernnca":  # no bits bound (its gradient breaks), but an absolute one
            _, grad = check.run_formulation(formulation, batch, dtype)
            error = float(np.abs(grad.numpy() - exact.grad).max())
            assert error <= bounds.modernnca_gradient_error(batch, dtype) + 2.0 ** -53 * np.abs(exact.grad).max(), \
                (batch.scale, error)


def test_modernnca_breakdown_prediction_flips_at_the_saturation_boundary():
    """Every row's same class nearer by g: theory says broken once (2**12 - 1) exp(-g) < 1, g > ln 4095 = 8.32 (float32)."""
    labels = [0, 0, 1, 1]
    far = [[2.0] * 4 for _ in range(4)]
    # Row i's nearest same-class neighbour at 1 (scale s), nearest other at 1 + g/s.
    for g, expected in ((8.0, False), (9.0, True)):
        s = 64.0
        near_same = [(1, 1.0), (0, 1.0), (3, 1.0), (2, 1.0)]
        near_other = [(2, 1.0 + g / s), (3, 1.0 + g / s), (0, 1.0 + g / s), (1, 1.0 + g / s)]
        batch = check.build_batch(labels, s, far, near_same, near_other)
        assert bounds.modernnca_gradient_breaks(batch, "float32") is expected, g
# --------------------------------------------------------------------------- the command line


def test_cli_json_and_exit_code_without_contract(capsys):
    assert cli.main(["check", "--loss", "ratio", "--dtype", "float64", "--batches", "1", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    (row,) = data["results"]
    assert row["loss"] == "ratio" and row["dtype"] == "float64"
    lo, hi = check.theory_window("float64")
    assert lo <= row["breakdown_scale"] <= hi * 10 ** 0.1


def test_cli_accepts_a_user_loss_module_function(tmp_path, monkeypatch, capsys):
    contract = quick_contract(tmp_path, {"nca_logspace": {"float32": {"breakdown": "none"}}})
    (tmp_path / "my_stable_losses.py").write_text(textwrap.dedent("""
        import torch

        def logspace(distances, labels, candidate_labels, self_mask):
            same = (labels[:, None] == candidate_labels[None, :]) & ~self_mask
            logits = -distances.masked_fill(self_mask, float("inf"))
            return torch.logsumexp(logits, 1) - torch.logsumexp(logits.masked_fill(~same, -float("inf")), 1)

        def with_reference(distances, labels, candidate_labels, self_mask):
            return logspace(distances, labels, candidate_labels, self_mask)

        with_reference.reference = "nca_logspace"
    """))
    monkeypatch.syspath_prepend(str(tmp_path))
    argv = ["check", "--loss", "my_stable_losses:logspace", "my_stable_losses:with_reference",
            "--dtype", "float32", "--contract", contract, "--json"]
    assert cli.main(argv) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["contract"]["not_in_contract"] == ["my_stable_losses:logspace x float32",
                                                   "my_stable_losses:with_reference x float32"]
    rows = {r["loss"]: r for r in data["results"]}
    assert rows["my_stable_losses:logspace"]["reference"] == "float64 (self)"
    assert rows["my_stable_losses:with_reference"]["reference"] == "mpmath (50 digits)"
    assert rows["my_stable_losses:with_reference"]["breakdown_scale"] is None
    # In the table both names are whole (cut to a column's width they read alike) and the columns line up.
    assert cli.main(argv[:-1]) == 0
    lines = capsys.readouterr().out.splitlines()
    header = next(line for line in lines if line.startswith("loss "))
    named = [line for line in lines if line.startswith("my_stable_losses:")]
    assert [line.split()[0] for line in named] == ["my_stable_losses:logspace", "my_stable_losses:with_reference"]
    assert {line.index(" float32 ") + 1 for line in named} == {header.index("dtype")}


def test_cli_unknown_loss_is_exit_2(capsys):
    assert cli.main(["check", "--loss", "softmax_nca"]) == 2
    assert "unknown loss" in capsys.readouterr().err


def test_human_table_on_stdout(tmp_path, capsys):
    contract = quick_contract(tmp_path, {"nca_logspace": {"float32": {"breakdown": "none", "max_loss_bits": 6}}})
    assert cli.main(["check", "--contract", contract]) == 0
    out = capsys.readouterr().out
    assert out.startswith("stablenca check: 15 scales")
    assert "nca_logspace  float32" in out and "none" in out
    assert out.rstrip().endswith(f"contract {contract}: OK")


def test_threshold_is_half_the_significand():
    assert [check.threshold_bits(d) for d in ("float16", "bfloat16", "float32", "float64")] == [5.5, 4, 12, 26.5]
    # -ln(2**-126) / KAPPA: a log and a division on either side, within 4 ulps.
    assert math.isclose(check.theory_window("float32")[0], 126 * math.log(2) / 1.25, rel_tol=4 * 2.0 ** -52)
