"""Preprocessing fitted on the training split: scaling, one-hot encoding, standardised targets."""

from __future__ import annotations

import warnings
from typing import Literal

import numpy as np

from ..errors import ConfigError, DataError
from .dataset import SPLITS, PreparedData, RawDataset


def prepare(raw: RawDataset, *, numerical: Literal["standard", "quantile"] = "standard") -> PreparedData:
    """Fit the preprocessing on ``raw``'s training split and apply it to all three splits.

    Numerical columns get sklearn's ``StandardScaler``, or, with
    ``numerical="quantile"``, a ``QuantileTransformer`` with normal output.
    Categorical columns get a ``OneHotEncoder``. A category that is not seen in
    train becomes an all-zero row. Regression targets are standardised with the
    training mean and std.
    """
    if not isinstance(raw, RawDataset):
        raise ConfigError(f"prepare() needs a RawDataset, not {type(raw).__name__}",
                          fix="pass the result of load_dataset()")
    if numerical not in ("standard", "quantile"):
        raise ConfigError(f"numerical={numerical!r} is not a preprocessing", fix="use 'standard' or 'quantile'")
    # sklearn is slow to import and only needed here.
    from sklearn.preprocessing import OneHotEncoder, QuantileTransformer, StandardScaler

    n_train = len(raw.y["train"])
    num, n_num = dict(raw.x_num), raw.x_num["train"].shape[1]
    if n_num:
        scaler = (
            StandardScaler()
            if numerical == "standard"
            else QuantileTransformer(output_distribution="normal", n_quantiles=min(1000, n_train), random_state=0)
        ).fit(raw.x_num["train"])
        num = {s: scaler.transform(raw.x_num[s]) for s in SPLITS}
    onehot = {s: np.empty((len(raw.y[s]), 0)) for s in SPLITS}
    onehot_names: list[str] = []
    if raw.x_cat["train"].shape[1]:
        # NOTE[DIFF]: TALENT (cat_policy tabr_ohe) first maps a category unseen in train to
        # the first training row's category (its "mode" is taken only when train itself has
        # unknowns, which it cannot); here it becomes an all-zero row. The same result
        # whenever val and test hold only categories seen in train, as Abalone's do. Where they
        # do not, the all-zero row scored higher: `python bench/unseen_categories.py --seeds 10`
        # (reports/talent_side_by_side.md, round 16), +0.0030 test accuracy with 37 of 836 rows unseen.
        enc = OneHotEncoder(handle_unknown="ignore", sparse_output=False, dtype=np.float64).fit(raw.x_cat["train"])
        with warnings.catch_warnings():
            # Unseen categories in val/test become all-zero rows. That is intended, so the warning is noise.
            warnings.filterwarnings("ignore", message="Found unknown categories")
            onehot = {s: enc.transform(raw.x_cat[s]) for s in SPLITS}
        onehot_names = [str(f) for f in enc.get_feature_names_out(raw.cat_names)]
    x = {s: np.ascontiguousarray(np.hstack([num[s], onehot[s]]), dtype=np.float64) for s in SPLITS}

    y_raw = {s: raw.y[s].copy() for s in SPLITS}
    y_mean = y_std = None
    if raw.task == "regression":
        y_mean, y_std = float(raw.y["train"].mean()), float(raw.y["train"].std())  # ddof 0, as TALENT
        if not y_std > 0:
            raise DataError(f"{raw.name}: the regression target is constant in the training split",
                            fix="use a target that varies")
        y = {s: (raw.y[s] - y_mean) / y_std for s in SPLITS}
    else:
        y = {s: raw.y[s].astype(np.int64) for s in SPLITS}
    return PreparedData(
        name=raw.name,
        task=raw.task,
        n_classes=raw.n_classes,
        n_num=n_num,
        n_onehot=onehot["train"].shape[1],
        class_names=raw.class_names,
        y_mean=y_mean,
        y_std=y_std,
        x=x,
        y=y,
        y_raw=y_raw,
        feature_names=list(raw.num_names) + onehot_names,
    )
