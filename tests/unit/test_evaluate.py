"""Metrics on hand-computed examples, and the naive baselines every model is reported against."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from include.retrain import evaluate
from include.retrain.errors import DataValidationError
from include.retrain.evaluate import baseline, score

ALL = ["mae", "rmse", "mape"]


def series(values, start: str = "2020-01-04") -> pd.Series:
    return pd.Series(values, index=pd.date_range(start, periods=len(values), freq="W-SAT"), dtype=float)


def test_metrics_on_a_hand_computed_example():
    # errors: -1, 0, 2 -> mae 3/3, rmse sqrt(5/3), mape mean(1/1, 0/2, 2/4) = 50 %
    result = score(series([1, 2, 4]), series([2, 2, 2]), ALL)
    assert result == {"mae": 1.0, "rmse": round(math.sqrt(5 / 3), 6), "mape": 50.0}


def test_rmse_weighs_large_errors_more_than_mae():
    result = score(series([0, 0, 0, 0]), series([0, 0, 0, 4]), ["mae", "rmse"])
    assert result == {"mae": 1.0, "rmse": 2.0}


def test_perfect_forecast_scores_zero():
    values = series([3.0, 5.0, 7.0])
    assert score(values, values.copy(), ALL) == {"mae": 0.0, "rmse": 0.0, "mape": 0.0}


def test_mape_uses_absolute_actuals():
    assert score(series([-2.0, -4.0]), series([-1.0, -5.0]), ["mape"]) == {"mape": 37.5}


def test_mape_is_none_when_an_actual_is_zero():
    result = score(series([0, 2, 4]), series([1, 2, 3]), ALL)
    assert result["mape"] is None
    assert result["mae"] == round(2 / 3, 6)


def test_only_requested_metrics_are_returned():
    assert list(score(series([1, 2]), series([1, 3]), ["rmse"])) == ["rmse"]


def test_non_finite_metric_is_none():
    assert score(series([1, 2]), series([1, np.nan]), ["mae", "rmse"]) == {"mae": None, "rmse": None}


def test_values_are_rounded_to_six_decimals():
    assert score(series([0.0]), series([1 / 3]), ["mae"]) == {"mae": 0.333333}


def test_naive_baseline_repeats_the_last_train_value():
    train, test = series([1, 2, 3, 9]), series([0, 0, 0], start="2020-02-01")
    result = baseline(train, test.index, "naive", None)
    assert result.tolist() == [9.0, 9.0, 9.0]
    assert result.index.equals(test.index)
    assert result.name == "baseline"


def test_seasonal_naive_repeats_the_last_full_season():
    train, test = series(range(1, 9)), series([0] * 6, start="2020-02-29")
    assert baseline(train, test.index, "seasonal_naive", 4).tolist() == [5, 6, 7, 8, 5, 6]


def test_seasonal_naive_shorter_horizon_than_season():
    train, test = series(range(1, 9)), series([0] * 2, start="2020-02-29")
    assert baseline(train, test.index, "seasonal_naive", 4).tolist() == [5, 6]


@pytest.mark.parametrize("season_length", [None, 10], ids=["no season length", "season longer than train"])
def test_seasonal_naive_falls_back_to_naive(season_length):
    train, test = series(range(1, 9)), series([0] * 3, start="2020-02-29")
    assert baseline(train, test.index, "seasonal_naive", season_length).tolist() == [8, 8, 8]


def test_baseline_scores_against_actuals():
    """The numbers a manifest reports next to the model's: naive forecast of a ramp is off by 1, 2, 3."""
    train, test = series([1, 2, 3]), series([4, 5, 6], start="2020-01-25")
    naive = baseline(train, test.index, "naive", None)
    assert score(test, naive, ["mae", "rmse"]) == {"mae": 2.0, "rmse": round(math.sqrt(14 / 3), 6)}


def test_walk_forward_folds_expand_and_end_at_the_series_end():
    """Fold tests are consecutive blocks ending at the last period; each trains on all before."""
    assert evaluate.fold_cuts(length=40, horizon=4, folds=3, min_train=8) == [28, 32, 36]


def test_too_short_for_the_folds_is_a_clear_error():
    with pytest.raises(DataValidationError, match=r"too few for 5 walk-forward folds of 8.*Fix: lower") as caught:
        evaluate.fold_cuts(length=40, horizon=8, folds=5, min_train=8)
    assert caught.value.rule == "backtest folds"


def test_backtest_summary_is_mean_and_spread():
    summary = evaluate.summarize([{"mae": 1.0, "mape": None}, {"mae": 3.0, "mape": None}])
    assert summary == {"mae": {"mean": 2.0, "std": 1.0}, "mape": {"mean": None, "std": None}}
