"""Data rules: each broken rule raises DataValidationError naming the rule and the fix."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from include.retrain.errors import DataValidationError
from include.retrain.validate import run_rules

WINDOW_END = "2021-01-04T06:00:00+00:00"


def set_values(frame: pd.DataFrame, positions: list[int], value: float) -> pd.DataFrame:
    out = frame.copy()
    out.iloc[positions, 0] = value
    return out


def shift_row(frame: pd.DataFrame, position: int, delta: str) -> pd.DataFrame:
    index = frame.index.to_list()
    index[position] = index[position] + pd.Timedelta(delta)
    return frame.set_axis(pd.DatetimeIndex(index, name="timestamp"))


BAD_DATA = {
    "missing target column": (lambda f: f.rename(columns={"value": "level"}), "target column present", "['level']"),
    "non-numeric target": (lambda f: f.astype(str), "numeric target", "not numeric"),
    "empty data window": (lambda f: f.iloc[:0], "non-empty window", f"window ending {WINDOW_END} is empty"),
    "all-NaN series": (lambda f: set_values(f, list(range(30)), np.nan), "not all NaN", "all 30 values"),
    "too few rows": (lambda f: f.iloc[:12], "min_rows", "only 12 non-missing rows"),
    "duplicated timestamps": (
        lambda f: pd.concat([f, f.iloc[[5]]]).sort_index(),
        "unique timestamps",
        "1 duplicated timestamp(s), first ['2020-02-08']",
    ),
    "non-monotonic timestamps": (
        lambda f: f.iloc[[*range(10), 11, 10, *range(12, 30)]],
        "increasing timestamps",
        "go backwards at row 11",
    ),
    "null fraction too high": (
        lambda f: set_values(f, [1, 4, 7, 10, 13, 16, 19], np.nan),
        "max_null_fraction",
        "23.3% of values are missing, at most 20.0% allowed",
    ),
    "infinite value": (lambda f: set_values(f, [3], np.inf), "finite values", "infinity"),
    "value below min_value": (
        lambda f: set_values(f, [3, 9], -1.0),
        "validation.min_value",
        "2 value(s) below validation.min_value (0.0), first at 2020-01-25",
    ),
    "value above max_value": (
        lambda f: set_values(f, [4], 150.0),
        "validation.max_value",
        "1 value(s) above validation.max_value (100.0)",
    ),
    "off-grid timestamp": (
        lambda f: shift_row(f, 7, "1D"),
        "frequency",
        "1 timestamp(s) are not on the 'W-SAT' grid, first ['2020-02-23']",
    ),
    "whole series on another weekday": (
        lambda f: f.set_axis(f.index + pd.Timedelta("1D")),
        "frequency",
        "not on the 'W-SAT' grid",
    ),
    "absent rows longer than max_gap": (lambda f: f.drop(f.index[10:13]), "max_gap", "a gap of 3 missing periods"),
    "NaN run longer than max_gap": (
        lambda f: set_values(f, [10, 11, 12], np.nan),
        "max_gap",
        "preprocess.max_gap allows 2",
    ),
}


@pytest.mark.parametrize(("corrupt", "rule", "detail"), BAD_DATA.values(), ids=BAD_DATA.keys())
def test_bad_data_breaks_named_rule(spec, weekly, corrupt, rule, detail):
    with pytest.raises(DataValidationError) as caught:
        run_rules(corrupt(weekly(30)), spec, "value", WINDOW_END)
    error = caught.value
    assert error.rule == rule
    assert detail in str(error)
    assert f"[rule: {rule}]. Fix: " in str(error)
    assert error.permanent


def test_clean_window_passes_with_report(spec, weekly):
    frame = weekly(30)
    report = run_rules(frame, spec, "value", WINDOW_END)
    assert report == {"rows": 30, "missing": 0, "first": "2020-01-04 00:00:00", "last": "2020-07-25 00:00:00"}


@pytest.mark.parametrize(
    "corrupt",
    [lambda f: f.drop(f.index[10:12]), lambda f: set_values(f, [10, 11], np.nan)],
    ids=["two absent rows", "two NaN rows"],
)
def test_gap_of_max_gap_periods_passes(spec, weekly, corrupt):
    report = run_rules(corrupt(weekly(30)), spec, "value", WINDOW_END)
    assert report["first"] == "2020-01-04 00:00:00"


def test_exactly_min_rows_passes(spec, weekly):
    assert run_rules(weekly(20), spec, "value", WINDOW_END)["rows"] == 20


@pytest.mark.parametrize(
    "frame", [lambda w: w(19), lambda w: set_values(w(21), [4, 8], np.nan)], ids=["19 rows", "21 rows, 2 NaN"]
)
def test_min_rows_counts_non_missing_values(spec, weekly, frame):
    with pytest.raises(DataValidationError, match="only 19 non-missing rows in the window, 20 needed"):
        run_rules(frame(weekly), spec, "value", WINDOW_END)


def test_missing_count_is_reported(spec, weekly):
    assert run_rules(set_values(weekly(30), [3, 9], np.nan), spec, "value", WINDOW_END)["missing"] == 2


def test_bounds_are_inclusive(spec, weekly):
    frame = set_values(set_values(weekly(30), [0], 0.0), [1], 100.0)
    assert run_rules(frame, spec, "value", WINDOW_END)["rows"] == 30


def test_no_bounds_means_any_finite_value(make_spec, weekly):
    spec = make_spec(validation={"min_value": None, "max_value": None})
    assert run_rules(set_values(weekly(30), [2], -1e9), spec, "value", WINDOW_END)["rows"] == 30


def test_zero_null_fraction_refuses_a_single_nan(make_spec, weekly):
    spec = make_spec(validation={"max_null_fraction": 0.0})
    with pytest.raises(DataValidationError, match="max_null_fraction"):
        run_rules(set_values(weekly(30), [5], np.nan), spec, "value", WINDOW_END)


def test_quarterly_grid_is_accepted(make_spec):
    index = pd.date_range("2000-01-01", periods=24, freq="QS", name="timestamp")
    frame = pd.DataFrame({"value": np.linspace(1, 24, 24)}, index=index)
    assert run_rules(frame, make_spec(frequency="QS"), "value", WINDOW_END)["rows"] == 24


def test_schema_is_checked_before_timestamps(spec, weekly):
    frame = pd.concat([weekly(30), weekly(30)]).rename(columns={"value": "level"})
    with pytest.raises(DataValidationError, match="target column present"):
        run_rules(frame, spec, "value", WINDOW_END)


def test_absent_rows_count_towards_null_fraction(make_spec, weekly):
    spec = make_spec(validation={"min_rows": 10})
    frame = weekly(30)
    as_nan = set_values(frame, list(range(1, 29, 2)), np.nan)
    with pytest.raises(DataValidationError, match="max_null_fraction"):
        run_rules(as_nan, spec, "value", WINDOW_END)
    with pytest.raises(DataValidationError, match="max_null_fraction"):
        run_rules(as_nan.dropna(), spec, "value", WINDOW_END)
