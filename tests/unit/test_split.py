"""Time split: the test window is the last test_size periods, train is everything before, in order."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from include.retrain.errors import DataValidationError
from include.retrain.split import time_split


@pytest.fixture
def series(y: pd.Series) -> pd.Series:
    return y.iloc[:20]


@pytest.mark.parametrize("test_size", [1, 4, 12])
def test_test_window_is_the_last_test_size_periods(series, test_size):
    train, test = time_split(series, test_size, min_train=8)
    assert len(test) == test_size
    assert list(test.index) == list(series.index[-test_size:])
    assert list(train.index) == list(series.index[:-test_size])


def test_train_strictly_precedes_test(series):
    train, test = time_split(series, 5, min_train=8)
    assert train.index.max() < test.index.min()
    assert train.index.is_monotonic_increasing
    assert test.index.is_monotonic_increasing


def test_split_never_shuffles_or_drops_values(series):
    train, test = time_split(series, 6, min_train=8)
    pd.testing.assert_series_equal(pd.concat([train, test]), series, check_freq=False)


def test_split_is_deterministic(series):
    first, second = time_split(series, 6, min_train=8), time_split(series, 6, min_train=8)
    np.testing.assert_array_equal(first[0], second[0])
    np.testing.assert_array_equal(first[1], second[1])


def test_exactly_min_train_rows_left_is_enough(series):
    train, _ = time_split(series, 12, min_train=8)
    assert len(train) == 8


@pytest.mark.parametrize(
    ("rows", "test_size", "min_train"),
    [(20, 13, 8), (20, 20, 1), (10, 4, 8), (3, 1, 8)],
    ids=["one row short", "nothing left", "short series", "tiny series"],
)
def test_too_few_rows_to_train_after_split(series, rows, test_size, min_train):
    with pytest.raises(DataValidationError) as caught:
        time_split(series.iloc[:rows], test_size, min_train=min_train)
    message = str(caught.value)
    assert caught.value.rule == "train size"
    assert f"{rows} periods leave {rows - test_size} for training" in message
    assert f"at least {min_train} are needed" in message
    assert "Fix: lower split.test_size or provide more history" in message
