"""Tests for stablenca.data: the abalone facts, the splits, preparation, the three sources, and every DataError."""

from __future__ import annotations

import json
import subprocess
import sys
import warnings

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from stablenca import data as D
from stablenca.errors import ConfigError, DataError, StableNCAWarning


def raises_data_error(call, *fragments: str) -> str:
    """``call()`` must raise DataError with a one-line message that has a fix and every fragment in it."""
    with pytest.raises(DataError) as info:
        call()
    msg = str(info.value)
    assert "fix:" in msg and "\n" not in msg, msg
    for fragment in fragments:
        assert fragment in msg, msg
    return msg


@pytest.fixture(scope="module")
def abalone() -> D.RawDataset:
    return D.load_abalone()


def write_talent(root, *, task_type="multiclass", n=(20, 6, 8), num=2, cat=1, y=None, info=None, seed=0):
    """A small TALENT directory. Returns the arrays it wrote as {file name: array}."""
    rng = np.random.default_rng(seed)
    root.mkdir(parents=True, exist_ok=True)
    arrays = {}
    for split, rows in zip(D.SPLITS, n):
        if num:
            arrays[f"N_{split}.npy"] = rng.normal(size=(rows, num))
        if cat:
            arrays[f"C_{split}.npy"] = rng.choice(["a", "b", "c"], size=(rows, cat))
        if y is not None:
            arrays[f"y_{split}.npy"] = y(rng, rows)
        elif task_type == "regression":
            arrays[f"y_{split}.npy"] = rng.normal(size=rows)
        else:
            arrays[f"y_{split}.npy"] = np.arange(rows) % (2 if task_type == "binclass" else 3)
    for name, arr in arrays.items():
        np.save(root / name, arr)
    (root / "info.json").write_text(json.dumps(
        info if info is not None else {"task_type": task_type, "n_num_features": num, "n_cat_features": cat}))
    return arrays


def write_csv(path, rows, header="a,b,color,target"):
    path.write_text(header + "\n" + "\n".join(rows) + "\n")
    return path


def good_rows(n=30):
    colors = ["red", "green", "blue"]
    return [f"{i * 0.5},{i % 7},{colors[i % 3]},{['cat', 'dog'][i % 2]}" for i in range(n)]


# --------------------------------------------------------------------------- abalone


def test_abalone_facts(abalone):
    n = sum(abalone.sizes().values())
    assert n == 4177
    assert abalone.sizes() == {"train": 2672, "val": 669, "test": 836}
    assert (abalone.name, abalone.task) == ("abalone", "multiclass")
    assert abalone.num_names == list(D.ABALONE_COLUMNS[1:8]) and abalone.cat_names == ["sex"]
    assert abalone.class_names == ["rings 1-8", "rings 9-10", "rings 11-29"]
    sex = np.concatenate([abalone.x_cat[s][:, 0] for s in D.SPLITS])
    values, counts = np.unique(sex, return_counts=True)
    assert dict(zip(values.tolist(), counts.tolist())) == {"M": 1528, "I": 1342, "F": 1307}
    y = np.concatenate([abalone.y[s] for s in D.SPLITS])
    assert y.dtype == np.int64
    np.testing.assert_allclose(np.bincount(y) / n, [0.337, 0.317, 0.346], atol=5e-4)  # 3-decimal literals: half a unit


def test_abalone_regression_is_rings():
    raw = D.load_abalone(task="regression")
    rings = np.concatenate([raw.y[s] for s in D.SPLITS])
    assert raw.task == "regression" and raw.class_names is None and raw.name == "abalone_reg"
    assert rings.dtype == np.float64 and rings.min() == 1 and rings.max() == 29
    assert np.all(rings == np.round(rings))
    # The classes are the binned rings, row for row.
    cls = D.load_abalone()
    np.testing.assert_array_equal(np.digitize(raw.y["train"], [9, 11]), cls.y["train"])


def test_abalone_measurements_rounded_to_4_decimals(abalone):
    for s in D.SPLITS:
        x = abalone.x_num[s]
        assert x.dtype == np.float64 and x.shape[1] == 7
        np.testing.assert_array_equal(x, np.round(x, 4))
        assert np.isfinite(x).all()


def test_abalone_splits_partition_rows(abalone):
    idx = abalone.row_index
    together = np.concatenate([idx[s] for s in D.SPLITS])
    assert len(together) == 4177 and len(np.unique(together)) == 4177
    assert sorted(together.tolist()) == list(range(4177))


def test_split_determinism():
    a, b, c = D.load_abalone(split_seed=0), D.load_abalone(split_seed=0), D.load_abalone(split_seed=1)
    for s in D.SPLITS:
        np.testing.assert_array_equal(a.row_index[s], b.row_index[s])
        np.testing.assert_array_equal(a.x_num[s], b.x_num[s])
    assert not np.array_equal(np.sort(a.row_index["test"]), np.sort(c.row_index["test"]))
    assert c.sizes() == a.sizes()


@pytest.mark.parametrize("n", [10, 11, 57, 4177])
def test_split_sizes_rule(n):
    train, val, test = D.split_sizes(n)
    assert train + val + test == n and min(train, val, test) >= 1
    assert test == -(-n // 5) and val == -(-(n - test) // 5)


def test_abalone_does_not_import_sklego():
    code = "import sys; from stablenca.data import load_abalone; load_abalone(); print('sklego' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_abalone_without_scikit_lego(monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "sklego" else real(name, *a))
    raises_data_error(D.load_abalone, "scikit-lego", "pip install scikit-lego")


# --------------------------------------------------------------------------- prepare


def standardised_error(x: np.ndarray, z: np.ndarray) -> tuple[float, float]:
    """Bounds on |mean(z)| and |std(z) - 1| for ``z`` = float64 standardisation of the column ``x``.

    u = 2**-53, sums sequential (Higham 2nd ed. sec. 4.2). The fitted mean is off by
    E_mu = (n+1) u mean|x| (the sum and the division), the fitted std by (n+4) u relative (squares,
    the sum of n positive terms, the division, the sqrt), so each z_i by
    delta_i = (E_mu + u (|x_i| + |mu|)) / sigma + (n+6) u |z_i| (the subtraction, the division).
    The exact standardisation has mean 0 and std 1; computing mean(z) adds (n-1) u mean|z|,
    and std(z) moves by at most mean(|z_i| delta_i) plus its own (n+4) u.
    """
    u, n = 2.0 ** -53, len(x)
    mu, sigma = float(np.mean(x)), float(np.std(x))
    error_mu = (n + 1) * u * float(np.mean(np.abs(x)))
    delta = (error_mu + u * (np.abs(x) + abs(mu))) / sigma + (n + 6) * u * np.abs(z)
    mean_bound = float(np.mean(delta)) + (n - 1) * u * float(np.mean(np.abs(z)))
    std_bound = float(np.mean(np.abs(z) * delta)) + (n + 4) * u
    return mean_bound, std_bound


def test_prepare_fits_on_train_only(abalone):
    data = D.prepare(abalone)
    assert (data.n_num, data.n_onehot, data.d_in, data.n_classes) == (7, 3, 10, 3)
    assert data.feature_names[-3:] == ["sex_F", "sex_I", "sex_M"]
    num_train, num_val = data.x["train"][:, :7], data.x["val"][:, :7]
    for column in range(7):
        mean_bound, std_bound = standardised_error(abalone.x_num["train"][:, column], num_train[:, column])
        assert abs(num_train[:, column].mean()) <= mean_bound and abs(num_train[:, column].std() - 1) <= std_bound
    assert np.all(np.abs(num_val.mean(0)) > 1e-6)  # val is transformed, not refitted
    for s in D.SPLITS:
        assert data.x[s].dtype == np.float64
        np.testing.assert_array_equal(data.x[s][:, 7:].sum(1), 1)
    x, y = data.tensors("train")
    assert x.dtype == torch.float32 and y.dtype == torch.int64 and x.shape == (2672, 10)
    x64, _ = data.tensors("test", dtype=torch.float64)
    assert x64.dtype == torch.float64
    x64[0, 0] = 1e9  # tensors are copies
    assert data.x["test"][0, 0] != 1e9


def test_prepare_quantile():
    data = D.prepare(D.load_abalone(), numerical="quantile")
    assert data.d_in == 10 and np.isfinite(data.x["val"]).all()
    assert abs(np.median(data.x["train"][:, 0])) < 0.05


def test_prepare_regression_round_trip():
    raw = D.load_abalone(task="regression")
    data = D.prepare(raw)
    assert data.n_classes is None and data.class_names is None
    # The same numpy reductions on the same array: equal, not close.
    assert data.y_mean == float(raw.y["train"].mean()) and data.y_std == float(raw.y["train"].std())
    mean_bound, std_bound = standardised_error(raw.y["train"], data.y["train"])
    assert abs(data.y["train"].mean()) <= mean_bound and abs(data.y["train"].std() - 1) <= std_bound
    # Round trip (y - mu) / sigma * sigma + mu: four roundings, each at most u times |y| + |mu| (the
    # largest intermediate), so 4u (|y| + |mu|) absolute.
    u = 2.0 ** -53
    for s in D.SPLITS:
        round_trip_bound = 4 * u * (np.abs(raw.y[s]) + abs(data.y_mean))
        assert (np.abs(data.unstandardise(data.y[s]) - raw.y[s]) <= round_trip_bound).all()
        np.testing.assert_array_equal(data.y_raw[s], raw.y[s])
    _, y = data.tensors("val", dtype=torch.float64)
    assert y.dtype == torch.float64
    back = data.unstandardise(y)
    assert (torch.abs(back - torch.tensor(raw.y["val"])) <= torch.tensor(4 * u * (np.abs(raw.y["val"]) + abs(data.y_mean)))).all()


def test_prepare_bad_arguments(abalone):
    with pytest.raises(ConfigError):
        D.prepare(abalone, numerical="minmax")
    with pytest.raises(ConfigError):
        D.prepare(abalone).tensors("training")
    with pytest.raises(ConfigError):
        D.load_abalone(task="binclass")
    with pytest.raises(ConfigError):
        D.load_abalone(split_seed=-1)


def test_prepare_unseen_category_is_all_zero(tmp_path):
    write_talent(tmp_path / "d", num=1, cat=1)
    c = np.load(tmp_path / "d" / "C_test.npy")
    c[0, 0] = "never-seen"
    np.save(tmp_path / "d" / "C_test.npy", c)
    data = D.prepare(D.load_talent_dir(tmp_path / "d"))
    assert data.n_onehot == 3
    np.testing.assert_array_equal(data.x["test"][0, 1:], 0)


# --------------------------------------------------------------------------- TALENT directories


def test_talent_round_trip(tmp_path):
    arrays = write_talent(tmp_path / "mydata")
    raw = D.load_talent_dir(tmp_path / "mydata")
    assert raw.name == "mydata" and raw.task == "multiclass" and raw.split_seed is None
    assert raw.sizes() == {"train": 20, "val": 6, "test": 8}
    assert raw.num_names == ["num_0", "num_1"] and raw.cat_names == ["cat_0"]
    assert raw.class_names == ["0", "1", "2"]
    for s in D.SPLITS:
        np.testing.assert_array_equal(raw.x_num[s], arrays[f"N_{s}.npy"])
        np.testing.assert_array_equal(raw.x_cat[s], arrays[f"C_{s}.npy"])
        np.testing.assert_array_equal(raw.y[s], arrays[f"y_{s}.npy"])
        assert raw.y[s].dtype == np.int64
    assert D.load_dataset(str(tmp_path / "mydata")).sizes() == raw.sizes()
    assert D.prepare(raw).d_in == 5


def test_talent_binclass_regression_and_optional_parts(tmp_path):
    write_talent(tmp_path / "b", task_type="binclass")
    raw = D.load_talent_dir(tmp_path / "b")
    assert raw.task == "multiclass" and raw.n_classes == 2
    write_talent(tmp_path / "r", task_type="regression", cat=0)
    raw = D.load_talent_dir(tmp_path / "r", task="regression")
    assert raw.task == "regression" and raw.x_cat["train"].shape == (20, 0) and raw.y["val"].dtype == np.float64
    write_talent(tmp_path / "c", num=0, cat=2)
    raw = D.load_talent_dir(tmp_path / "c")
    assert raw.x_num["test"].shape == (8, 0) and D.prepare(raw).n_num == 0


def test_talent_labels_encoded(tmp_path):
    write_talent(tmp_path / "s", y=lambda rng, rows: np.array(["yes", "no", "maybe"])[np.arange(rows) % 3])
    raw = D.load_talent_dir(tmp_path / "s")
    assert raw.class_names == ["maybe", "no", "yes"]
    assert raw.y["train"][:3].tolist() == [2, 1, 0]
    write_talent(tmp_path / "g", y=lambda rng, rows: np.array([3, 7, 9])[np.arange(rows) % 3])
    raw = D.load_talent_dir(tmp_path / "g")
    assert raw.class_names == ["3", "7", "9"] and set(raw.y["train"].tolist()) == {0, 1, 2}


# --------------------------------------------------------------------------- CSV files


def test_csv_round_trip(tmp_path):
    rows = good_rows(30)
    path = write_csv(tmp_path / "pets.csv", rows)
    raw = D.load_csv(path, target="target", split_seed=3)
    assert raw.name == "pets" and raw.task == "multiclass" and raw.split_seed == 3
    assert raw.num_names == ["a", "b"] and raw.cat_names == ["color"]
    assert raw.class_names == ["cat", "dog"]
    assert raw.sizes() == dict(zip(D.SPLITS, D.split_sizes(30)))
    for s in D.SPLITS:
        for k, i in enumerate(raw.row_index[s]):
            a, b, color, label = rows[i].split(",")
            assert raw.x_num[s][k].tolist() == [float(a), float(b)]
            assert raw.x_cat[s][k, 0] == color
            assert raw.class_names[raw.y[s][k]] == label
    same = D.load_dataset(str(path), target="target", split_seed=3)
    np.testing.assert_array_equal(same.y["test"], raw.y["test"])
    data = D.prepare(raw)
    assert data.d_in == 5 and data.n_classes == 2


def test_csv_categorical_override_and_empty_category(tmp_path):
    rows = [r.replace("green", "") for r in good_rows(30)]
    raw = D.load_csv(write_csv(tmp_path / "d.csv", rows), target="target", categorical=["b"])
    assert raw.num_names == ["a"] and raw.cat_names == ["b", "color"]
    assert "" in np.concatenate([raw.x_cat[s][:, 1] for s in D.SPLITS]).tolist()


@pytest.mark.parametrize(
    ("labels", "task", "names"),
    [
        (lambda i: [3, 7, 9][i % 3], "multiclass", ["3", "7", "9"]),
        (lambda i: i % 20, "multiclass", [str(k) for k in range(20)]),
        (lambda i: i, "regression", None),  # 40 distinct integers
        (lambda i: i * 0.37, "regression", None),
    ],
)
def test_csv_task_inference(tmp_path, labels, task, names):
    rows = [f"{i},{labels(i)}" for i in range(40)]
    raw = D.load_csv(write_csv(tmp_path / "t.csv", rows, header="x,target"), target="target")
    assert raw.task == task and raw.class_names == names
    if task == "multiclass":
        assert all(set(raw.y[s].tolist()) <= set(range(len(names))) for s in D.SPLITS)


def test_csv_explicit_task_is_respected(tmp_path):
    path = write_csv(tmp_path / "t.csv", [f"{i},{i}" for i in range(40)], header="x,target")
    assert D.load_csv(path, target="target", task="multiclass").n_classes == 40
    path = write_csv(tmp_path / "u.csv", [f"{i},{i % 3}" for i in range(40)], header="x,target")
    assert D.load_csv(path, target="target", task="regression").task == "regression"


# --------------------------------------------------------------------------- every DataError


def test_source_errors(tmp_path):
    raises_data_error(lambda: D.load_dataset(str(tmp_path / "nope")), "does not exist")
    raises_data_error(lambda: D.load_dataset(str(tmp_path / "nope.csv"), target="y"), "does not exist")
    (tmp_path / "x.txt").write_text("hi")
    raises_data_error(lambda: D.load_dataset(str(tmp_path / "x.txt")), "x.txt")
    path = write_csv(tmp_path / "d.csv", good_rows())
    raises_data_error(lambda: D.load_dataset(str(path)), "fix: --target COLUMN")
    raises_data_error(lambda: D.load_csv(tmp_path / "missing.csv", target="y"), "missing.csv")
    raises_data_error(lambda: D.load_talent_dir(tmp_path / "missing"), "not a directory")
    with pytest.raises(ConfigError):
        D.load_dataset("abalone", target="rings")


def test_csv_file_errors(tmp_path):
    (tmp_path / "empty.csv").write_text("")
    raises_data_error(lambda: D.load_csv(tmp_path / "empty.csv", target="y"), "empty.csv", "empty")
    (tmp_path / "bin.csv").write_bytes(b"\xff\xfe\x00garbage\x81")
    raises_data_error(lambda: D.load_csv(tmp_path / "bin.csv", target="y"), "UTF-8")
    rows = good_rows()
    rows[4] += ",extra"
    raises_data_error(lambda: D.load_csv(write_csv(tmp_path / "ragged.csv", rows), target="target"), "line 6")
    path = write_csv(tmp_path / "dup.csv", good_rows(), header="a,a,color,target")
    raises_data_error(lambda: D.load_csv(path, target="target"), "'a'")
    path = write_csv(tmp_path / "few.csv", good_rows(9))
    raises_data_error(lambda: D.load_csv(path, target="target"), "9 data rows")
    path = write_csv(tmp_path / "only.csv", [str(i % 2) for i in range(20)], header="target")
    raises_data_error(lambda: D.load_csv(path, target="target"), "no feature")


def test_csv_missing_target_lists_columns(tmp_path):
    header = ",".join(f"col{i}" for i in range(30))
    path = write_csv(tmp_path / "wide.csv", [",".join("1" * 30)] * 12, header=header)
    msg = raises_data_error(lambda: D.load_csv(path, target="label"), "'label'", "'col0'", "+22 more")
    assert "col29" not in msg
    raises_data_error(lambda: D.load_csv(path, target="col0", categorical=["nope"]), "'nope'")


def test_csv_missing_values(tmp_path):
    rows = good_rows()
    rows[3] = rows[3].replace("1.5,", ",", 1)
    rows[5] = "inf" + rows[5][rows[5].index(","):]
    msg = raises_data_error(lambda: D.load_csv(write_csv(tmp_path / "nan.csv", rows), target="target"), "'a'", "impute")
    assert "2 missing" in msg
    rows = good_rows()
    rows[7] = rows[7].rsplit(",", 1)[0] + ","
    raises_data_error(lambda: D.load_csv(write_csv(tmp_path / "y.csv", rows), target="target"), "empty cells")


def test_label_errors(tmp_path):
    one = [f"{i},x" for i in range(20)]
    raises_data_error(lambda: D.load_csv(write_csv(tmp_path / "one.csv", one, header="a,target"), target="target"),
                      "one class")
    const = [f"{i},2.5" for i in range(20)]
    path = write_csv(tmp_path / "const.csv", const, header="a,target")
    raises_data_error(lambda: D.load_csv(path, target="target", task="regression"), "constant")
    words = [f"{i},{'ab'[i % 2]}" for i in range(20)]
    path = write_csv(tmp_path / "words.csv", words, header="a,target")
    raises_data_error(lambda: D.load_csv(path, target="target", task="regression"), "not numeric", "multiclass")
    floats = [f"{i},{i * 0.37}" for i in range(40)]
    path = write_csv(tmp_path / "floats.csv", floats, header="a,target")
    raises_data_error(lambda: D.load_csv(path, target="target", task="multiclass"), "non-integer", "regression")


def test_talent_errors(tmp_path):
    def fresh(name, **kw):
        write_talent(tmp_path / name, **kw)
        return tmp_path / name

    root = fresh("noinfo")
    (root / "info.json").unlink()
    raises_data_error(lambda: D.load_talent_dir(root), "info.json", "missing")
    root = fresh("badinfo")
    (root / "info.json").write_text("{not json")
    raises_data_error(lambda: D.load_talent_dir(root), "info.json", "JSON")
    root = fresh("badtask", info={"task_type": "ranking"})
    raises_data_error(lambda: D.load_talent_dir(root), "'ranking'")
    root = fresh("mismatch", task_type="regression")
    raises_data_error(lambda: D.load_talent_dir(root, task="multiclass"), "task_type='regression'")

    root = fresh("rows")
    np.save(root / "N_val.npy", np.zeros((5, 2)))
    raises_data_error(lambda: D.load_talent_dir(root), "N_val.npy", "6 rows")
    root = fresh("cols")
    np.save(root / "N_test.npy", np.zeros((8, 3)))
    raises_data_error(lambda: D.load_talent_dir(root), "N_test.npy", "3 columns")
    root = fresh("declared", info={"task_type": "multiclass", "n_num_features": 4, "n_cat_features": 1})
    raises_data_error(lambda: D.load_talent_dir(root), "n_num_features=4")
    root = fresh("partial")
    (root / "C_val.npy").unlink()
    raises_data_error(lambda: D.load_talent_dir(root), "C_val.npy", "missing")
    root = fresh("noy")
    (root / "y_test.npy").unlink()
    raises_data_error(lambda: D.load_talent_dir(root), "y_test.npy")
    root = fresh("emptysplit", n=(20, 0, 8))
    raises_data_error(lambda: D.load_talent_dir(root), "y_val.npy")

    root = fresh("inf")  # an infinity is not a missing value: TALENT does not fill it, and it is refused
    x = np.load(root / "N_train.npy")
    x[2, 1] = -np.inf
    np.save(root / "N_train.npy", x)
    raises_data_error(lambda: D.load_talent_dir(root), "N_train.npy", "'num_1'", "impute")
    root = fresh("object_nested")
    nested = np.empty((20, 1), dtype=object)
    nested[:, 0] = [np.zeros(2)] * 20
    np.save(root / "C_train.npy", nested, allow_pickle=True)
    raises_data_error(lambda: D.load_talent_dir(root), "C_train.npy", "ndarray element")
    root = fresh("corrupt")
    (root / "N_test.npy").write_bytes(np.load(root / "N_test.npy").tobytes()[:20])
    raises_data_error(lambda: D.load_talent_dir(root), "N_test.npy", "numpy.save")
    root = fresh("npz")
    with open(root / "y_train.npy", "wb") as f:
        np.savez(f, y=np.arange(20) % 3)
    raises_data_error(lambda: D.load_talent_dir(root), "y_train.npy", ".npz")

    root = fresh("oneclass", y=lambda rng, rows: np.zeros(rows, dtype=np.int64))
    raises_data_error(lambda: D.load_talent_dir(root), "one class")
    root = fresh("const", task_type="regression", y=lambda rng, rows: np.full(rows, 4.0))
    raises_data_error(lambda: D.load_talent_dir(root), "constant")
    root = fresh("strreg", task_type="regression", y=lambda rng, rows: np.array(["a", "b"])[np.arange(rows) % 2])
    raises_data_error(lambda: D.load_talent_dir(root), "not numeric", "info.json")
    root = fresh("nofeatures", num=0, cat=0)
    raises_data_error(lambda: D.load_talent_dir(root), "no features")


# --------------------------------------------------------------------------- fuzz

_FUZZ = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


@_FUZZ
@given(blob=st.binary(max_size=300))
def test_garbage_npy_raises_data_error(tmp_path, blob):
    for name in ("y_train.npy", "N_val.npy", "C_test.npy"):
        root = tmp_path / name
        if not root.exists():
            write_talent(root)
        (root / name).write_bytes(blob)
        raises_data_error(lambda: D.load_talent_dir(root), name)


@_FUZZ
@given(blob=st.binary(max_size=300))
def test_garbage_csv_raises_data_error(tmp_path, blob):
    path = tmp_path / "fuzz.csv"
    path.write_bytes(blob)
    raises_data_error(lambda: D.load_csv(path, target="target"))
    raises_data_error(lambda: D.load_dataset(str(path), target="target"))


_CELL = st.one_of(
    st.integers(-3, 3).map(str),
    st.floats(-1e6, 1e6, allow_nan=False).map(repr),
    st.sampled_from(["", "a", "b", "nan", "inf", "1e999", " 2 ", '"x,y"']),
)


@_FUZZ
@given(
    rows=st.lists(st.lists(_CELL, min_size=3, max_size=3), max_size=30),
    task=st.sampled_from([None, "multiclass", "regression"]),
)
def test_csv_like_tables_load_or_raise_data_error(tmp_path, rows, task):
    path = tmp_path / "fuzz.csv"
    path.write_text("a,b,target\n" + "\n".join(",".join(r) for r in rows))
    try:
        raw = D.load_csv(path, target="target", task=task)
    except DataError as e:
        assert "fix:" in str(e) and "\n" not in str(e)
        return
    data = D.prepare(raw)
    assert data.x["train"].shape[1] == data.d_in and np.isfinite(data.x["train"]).all()
    assert task is None or raw.task == task


# ---------------------------------------------------------------- TALENT's object arrays


class _OpensAFile:
    """Unpickling this opens ``path`` for writing: a payload that runs code and leaves a trace."""

    def __init__(self, path):
        self.path = str(path)

    def __reduce__(self):
        return (open, (self.path, "w"))


def test_talent_object_arrays_load_like_string_arrays(tmp_path):
    # TALENT saves categorical columns (and sometimes labels) as object arrays of str.
    written = write_talent(tmp_path / "plain", n=(20, 6, 8))
    as_objects = tmp_path / "objects"
    write_talent(as_objects, n=(20, 6, 8))
    for name, arr in written.items():
        if name.startswith(("C_", "y_")):
            np.save(as_objects / name, arr.astype(object), allow_pickle=True)
    np.save(as_objects / "y_train.npy", written["y_train.npy"].astype(object), allow_pickle=True)
    plain, objects = D.load_talent_dir(tmp_path / "plain"), D.load_talent_dir(as_objects)
    for split in D.SPLITS:
        assert np.array_equal(objects.x_cat[split], plain.x_cat[split])
        assert np.array_equal(objects.y[split], plain.y[split])
        assert np.array_equal(objects.x_num[split], plain.x_num[split])
    assert objects.class_names == plain.class_names


def test_object_array_of_numbers_loads_as_float(tmp_path):
    path = tmp_path / "numbers.npy"
    np.save(path, np.array([[1, 2.5], [np.int64(3), True]], dtype=object), allow_pickle=True)
    arr = D._load_npy(path)
    assert arr.dtype == np.float64 and arr.tolist() == [[1.0, 2.5], [3.0, 1.0]]


def test_none_in_object_arrays_is_read_as_talent_reads_it(tmp_path):
    """TALENT's data_nan_process: C_* arrays become astype(str), so None is the category "None" (not one of
    its missing spellings), 2 is "2" and a float NaN is "nan" (missing). For an N_* object array holding
    None, TALENT's np.nanmean raises a TypeError; here None is NaN (numpy's cast) and gets the training mean."""
    arrays = write_talent(tmp_path / "d", num=2, cat=1)
    c_train = arrays["C_train.npy"].astype(object)
    c_train[0, 0], c_train[1, 0], c_train[2, 0], c_train[3, 0] = None, 2, 2.0, float("nan")
    np.save(tmp_path / "d" / "C_train.npy", c_train, allow_pickle=True)
    n_train = arrays["N_train.npy"].astype(object)
    n_train[4, 1] = None
    np.save(tmp_path / "d" / "N_train.npy", n_train, allow_pickle=True)
    with pytest.warns(StableNCAWarning, match=r"filled 1 missing numerical value\(s\).* 1 missing categorical"):
        raw = D.load_talent_dir(tmp_path / "d")
    assert raw.x_cat["train"][:4, 0].tolist() == ["None", "2", "2.0", D.MISSING_CATEGORY]
    assert raw.x_cat["train"][4:, 0].tolist() == arrays["C_train.npy"][4:, 0].tolist()
    known = np.delete(arrays["N_train.npy"][:, 1], 4)
    # the mean of the other values, within the summation bound of the test above
    bound = (2 * (len(known) - 1) + 2) * 2.0**-53 * np.abs(known).sum() / len(known)
    assert abs(raw.x_num["train"][4, 1] - known.sum() / len(known)) <= bound
    # each is a category of its own: a, b, c (as written), None, 2, 2.0 and ___null___
    assert D.prepare(raw).n_onehot == 7


def test_object_array_with_a_code_running_payload_is_refused_and_not_run(tmp_path):
    marker = tmp_path / "payload_ran"
    root = tmp_path / "evil"
    write_talent(root)
    np.save(root / "C_train.npy", np.array([[_OpensAFile(marker)]] * 20, dtype=object), allow_pickle=True)
    msg = raises_data_error(lambda: D.load_talent_dir(root), "C_train.npy", "not loaded for safety")
    assert "open" in msg  # names what the pickle asked for
    assert not marker.exists()
    # The payload is live: numpy's own loader runs it (so the check above can fail).
    np.load(root / "C_train.npy", allow_pickle=True)
    assert marker.exists()


def test_bare_pickle_behind_an_object_header_is_refused(tmp_path):
    import io
    import pickle

    marker = tmp_path / "payload_ran"
    path = tmp_path / "C_train.npy"
    header = io.BytesIO()
    np.lib.format.write_array_header_1_0(header, {"descr": "|O", "fortran_order": False, "shape": (1,)})
    path.write_bytes(header.getvalue() + pickle.dumps(_OpensAFile(marker), protocol=3))
    raises_data_error(lambda: D._load_npy(path), "not loaded for safety")
    assert not marker.exists()
    path.write_bytes(header.getvalue() + b"\x80\x03garbage")
    raises_data_error(lambda: D._load_npy(path), "unreadable pickle")
    assert not marker.exists()


def test_task_comes_from_info_json_unless_asked(tmp_path):
    from stablenca.training import TrainConfig, load_data

    write_talent(tmp_path / "reg", task_type="regression")
    assert D.data_task(tmp_path / "reg") == "regression"
    config = TrainConfig(data=str(tmp_path / "reg"), epochs=1).resolved()
    assert (config.task, config.loss) == ("regression", "modernnca")
    assert load_data(config).task == "regression"
    assert TrainConfig().resolved().task == "multiclass"  # the embedded Abalone
    with pytest.raises(DataError, match="task_type='regression'"):
        load_data(TrainConfig(data=str(tmp_path / "reg"), task="multiclass").resolved())


def test_talent_missing_values_are_filled_as_talent_fills_them(tmp_path):
    """TALENT's defaults (num_nan_policy 'mean', cat_nan_policy 'new'): a numerical NaN gets its column's
    training mean (0 if the training column has no value), a missing category one category of its own."""
    arrays = write_talent(tmp_path / "d", num=3, cat=1)
    n_train = np.load(tmp_path / "d" / "N_train.npy")
    n_train[[2, 5, 11], 1] = np.nan
    n_train[:, 2] = np.nan  # no training value in this column
    n_val = np.load(tmp_path / "d" / "N_val.npy")
    n_val[0, :] = np.nan
    np.save(tmp_path / "d" / "N_train.npy", n_train)
    np.save(tmp_path / "d" / "N_val.npy", n_val)
    c_test = np.load(tmp_path / "d" / "C_test.npy").astype(object)
    c_test[0, 0], c_test[1, 0], c_test[2, 0] = float("nan"), "", "NaN"  # the three spellings TALENT reads
    np.save(tmp_path / "d" / "C_test.npy", c_test, allow_pickle=True)  # as TALENT saves C_*: an object array

    with pytest.warns(StableNCAWarning, match=r"filled 26 missing numerical value\(s\).* 3 missing categorical"):
        raw = D.load_talent_dir(tmp_path / "d")
    for column, filled in ((1, raw.x_num["train"][[2, 5, 11], 1]), (1, raw.x_num["val"][0, 1]),
                           (0, raw.x_num["val"][0, 0])):
        known = n_train[~np.isnan(n_train[:, column]), column]
        # the two sums add the same n values in different orders: each is within (n - 1) u sum|x| of the
        # exact sum (Higham, eq. 4.4), and the division adds half an ulp to each side
        bound = (2 * (len(known) - 1) + 2) * 2.0**-53 * np.abs(known).sum() / len(known)
        assert (np.abs(filled - known.sum() / len(known)) <= bound).all()
    assert (raw.x_num["train"][:, 2] == 0).all() and raw.x_num["val"][0, 2] == 0
    np.testing.assert_array_equal(raw.x_num["test"], arrays["N_test.npy"])  # untouched where nothing is missing
    assert raw.x_cat["test"][:3, 0].tolist() == [D.MISSING_CATEGORY] * 3
    assert raw.x_cat["test"][3:, 0].tolist() == arrays["C_test.npy"][3:, 0].tolist()
    # the three spellings are one category, unseen in training: all-zero one-hot, as any unseen category
    data = D.prepare(raw)
    assert data.n_onehot == 3
    np.testing.assert_array_equal(data.x["test"][:3, -3:], 0)
    with warnings.catch_warnings():  # read again in this process (diagnose does, from a capsule): said once
        warnings.simplefilter("error", StableNCAWarning)
        again = D.load_talent_dir(tmp_path / "d")
    np.testing.assert_array_equal(again.x_num["train"], raw.x_num["train"])


def test_talent_directory_without_missing_values_gives_no_warning(tmp_path, recwarn):
    write_talent(tmp_path / "d")
    D.load_talent_dir(tmp_path / "d")
    assert not [w for w in recwarn if issubclass(w.category, StableNCAWarning)]


def test_cli_says_in_one_line_what_it_filled(tmp_path):
    write_talent(tmp_path / "d", n=(40, 10, 10))
    x = np.load(tmp_path / "d" / "N_train.npy")
    x[0, 0] = np.nan
    np.save(tmp_path / "d" / "N_train.npy", x)
    run = subprocess.run([sys.executable, "-m", "stablenca.cli", "train", "--data", str(tmp_path / "d"),
                          "--epochs", "1", "--json"], capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    warning = [line for line in run.stderr.splitlines() if "filled" in line]
    assert warning == [f"stablenca: warning: {tmp_path / 'd'}: filled 1 missing numerical value(s) with their "
                       "column's training mean and 0 missing categorical value(s) with the category '___null___', "
                       "as TALENT does by default (num_nan_policy='mean', cat_nan_policy='new')"]
    assert json.loads(run.stdout)["status"] in {"completed", "early_stopped"}


def test_cli_takes_the_task_from_info_json_and_refuses_a_contradiction(tmp_path):
    write_talent(tmp_path / "reg", task_type="regression", n=(40, 10, 10))
    base = [sys.executable, "-m", "stablenca.cli", "train", "--data", str(tmp_path / "reg"), "--epochs", "1", "--json"]
    ok = subprocess.run(base, capture_output=True, text=True)
    assert ok.returncode == 0, ok.stderr
    assert json.loads(ok.stdout)["task"] == "regression"
    refused = subprocess.run([*base, "--task", "multiclass"], capture_output=True, text=True)
    assert refused.returncode == 2
    assert "task_type='regression'" in refused.stderr and len(refused.stderr.strip().splitlines()) == 1
