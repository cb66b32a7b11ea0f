"""Preprocessing: a regular series with short gaps filled; lag and calendar features from the past only."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from include.retrain import features
from include.retrain.spec import SklearnModel

RIDGE = {"kind": "sklearn", "estimator": "sklearn.linear_model.Ridge"}


def sklearn_model(lags: int = 3, calendar: tuple[str, ...] = ()) -> SklearnModel:
    return SklearnModel(**RIDGE, lags=lags, calendar=list(calendar))


def ramp(weekly, n: int = 12) -> pd.DataFrame:
    """Values 0, 1, 2, ... so interpolated values are easy to predict."""
    return weekly(n, values=np.arange(n, dtype=float))


def test_absent_rows_are_interpolated_onto_a_regular_index(spec, weekly):
    frame = ramp(weekly).drop(ramp(weekly).index[[4, 5]])
    series = features.regularize(frame, "value", spec)
    assert series.index.equals(pd.date_range("2020-01-04", periods=12, freq="W-SAT"))
    assert series.index.freqstr == "W-SAT"
    np.testing.assert_allclose(series.to_numpy(), np.arange(12.0))


def test_nan_rows_are_interpolated(spec, weekly):
    frame = ramp(weekly)
    frame.iloc[[6, 7], 0] = np.nan
    np.testing.assert_allclose(features.regularize(frame, "value", spec).to_numpy(), np.arange(12.0))


def test_ffill_repeats_the_last_value(make_spec, weekly):
    frame = ramp(weekly)
    frame.iloc[6, 0] = np.nan  # a NaN row
    frame = frame.drop(frame.index[3])  # an absent row
    series = features.regularize(frame, "value", make_spec(preprocess={"fill": "ffill"}))
    assert len(series) == 12
    assert series.iloc[3] == 2.0
    assert series.iloc[6] == 5.0


def test_leading_and_trailing_nans_are_trimmed_not_invented(spec, weekly):
    frame = ramp(weekly)
    frame.iloc[[0, 1, 11], 0] = np.nan
    series = features.regularize(frame, "value", spec)
    assert series.index[0] == frame.index[2]
    assert series.index[-1] == frame.index[10]
    assert series.notna().all()


def test_max_history_keeps_the_most_recent_periods(make_spec, weekly):
    frame = ramp(weekly, 30)
    series = features.regularize(frame, "value", make_spec(window={"max_history": 10}))
    assert list(series.index) == list(frame.index[-10:])
    np.testing.assert_allclose(series.to_numpy(), np.arange(20.0, 30.0))


def test_regularize_returns_float_series_named_y_and_leaves_input_alone(spec, weekly):
    frame = weekly(12, values=np.arange(12)).astype({"value": "int64"}).drop(weekly(12).index[4])
    before = frame.copy()
    series = features.regularize(frame, "value", spec)
    assert series.name == "y"
    assert series.dtype == "float64"
    assert series.index.name == "timestamp"
    pd.testing.assert_frame_equal(frame, before)


def test_build_table_has_lags_of_past_values_only(weekly):
    series = ramp(weekly, 10)["value"].rename("y")
    table = features.build_table(series, sklearn_model(lags=3))
    assert list(table.columns) == ["y", "lag_1", "lag_2", "lag_3"]
    assert len(table) == 7  # the first 3 rows lack a full set of lags
    assert table.index[0] == series.index[3]
    np.testing.assert_allclose(table["lag_1"], table["y"] - 1)
    np.testing.assert_allclose(table["lag_3"], table["y"] - 3)


def test_calendar_columns_values(weekly):
    index = pd.DatetimeIndex(["2021-01-02", "2021-05-15", "2021-12-25"])
    calendar = features.calendar_columns(index, ["month", "quarter", "weekofyear", "dayofweek"])
    assert calendar.to_dict("list") == {
        "month": [1, 5, 12],
        "quarter": [1, 2, 4],
        "weekofyear": [53, 19, 51],
        "dayofweek": [5, 5, 5],
    }
    assert (calendar.dtypes == "int64").all()


def test_feature_columns_are_lags_then_calendar():
    assert features.feature_columns(sklearn_model(2, ("month", "quarter"))) == ["lag_1", "lag_2", "month", "quarter"]


@pytest.mark.parametrize("position", [4, 7, 9])
def test_next_row_equals_the_training_row_for_the_same_timestamp(weekly, position):
    """A recursive forecast must see exactly the features training saw."""
    model = sklearn_model(lags=4, calendar=("month", "weekofyear"))
    series = weekly(10)["value"].rename("y")
    table = features.build_table(series, model)
    row = features.next_row(series.iloc[:position], series.index[position], model)
    columns = features.feature_columns(model)
    np.testing.assert_allclose(
        row[columns].to_numpy(dtype=float)[0], table.loc[series.index[position], columns].to_numpy(dtype=float)
    )


def test_next_row_lag_1_is_the_last_observation(weekly):
    history = ramp(weekly, 6)["value"]
    row = features.next_row(history, pd.Timestamp("2020-02-15"), sklearn_model(lags=3))
    assert row.to_dict("records") == [{"lag_1": 5.0, "lag_2": 4.0, "lag_3": 3.0}]
    assert row.index[0] == pd.Timestamp("2020-02-15")
