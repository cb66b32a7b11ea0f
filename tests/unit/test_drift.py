"""Drift checks: a stable, storable profile, and drift flagged only when material and significant."""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest

from include.retrain.drift import compare, profile, transform
from include.retrain.errors import DataValidationError

PSI = 0.25
ALPHA = 0.01


def series(values, name: str | None = "target") -> pd.Series:
    index = pd.date_range("2020-01-04", periods=len(values), freq="W-SAT")
    return pd.Series(np.asarray(values, dtype=float), index=index, name=name)


def normal(seed: int, size: int, loc: float = 0.0) -> pd.Series:
    return series(np.random.default_rng(seed).normal(loc, 1.0, size))


# --- transform -------------------------------------------------------------------------------------------------------


def test_transforms_on_a_hand_computed_example():
    values = series([100.0, 110.0, 99.0, np.nan, 0.0, 5.0])
    assert transform(values, "level").tolist() == [100.0, 110.0, 99.0, 0.0, 5.0]
    assert transform(values, "diff").tolist() == [10.0, -11.0, 5.0]  # no difference across the gap
    # 110/100 - 1, 99/110 - 1; nothing across the gap, and a change from zero (inf) is dropped
    assert transform(values, "pct_change").tolist() == pytest.approx([0.1, -0.1])


def test_transform_keeps_the_dates_of_the_kept_values():
    values = series([1.0, 3.0, 6.0])
    assert list(transform(values, "diff").index) == list(values.index[1:])


def test_unknown_transform_is_refused():
    with pytest.raises(ValueError, match="log"):
        transform(series([1.0, 2.0]), "log")  # type: ignore[arg-type]


# --- profile ---------------------------------------------------------------------------------------------------------


def test_profile_is_json_serialisable_and_deterministic():
    values = normal(1, 500)
    first = profile(values, "level")
    text = json.dumps(first, allow_nan=False)
    assert json.dumps(profile(values.copy(), "level"), allow_nan=False) == text
    assert json.loads(text) == first
    assert first["transform"] == "level"
    assert first["count"] == 500
    assert first["mean"] == pytest.approx(float(values.mean()))
    assert first["std"] == pytest.approx(float(values.std()))
    assert (first["min"], first["max"]) == (float(values.min()), float(values.max()))
    assert list(first["quantiles"]) == ["0.01", "0.05", "0.25", "0.5", "0.75", "0.95", "0.99"]
    assert first["quantiles"]["0.5"] == pytest.approx(float(values.median()))


@pytest.mark.parametrize("bins", [2, 5, 10, 20])
def test_fractions_cover_every_value_once(bins):
    result = profile(normal(2, 300), "level", bins=bins)
    assert len(result["edges"]) == bins - 1
    assert result["edges"] == sorted(set(result["edges"]))
    assert len(result["fractions"]) == len(result["edges"]) + 1
    assert math.isclose(sum(result["fractions"]), 1.0)
    assert result["fractions"] == pytest.approx([1 / bins] * bins, abs=0.01)  # quantile edges: equal-mass bins


def test_tied_values_collapse_into_fewer_bins():
    result = profile(series([0.0] * 90 + list(range(1, 11))), "level", bins=10)
    assert len(result["edges"]) < 9
    assert len(result["fractions"]) == len(result["edges"]) + 1
    assert math.isclose(sum(result["fractions"]), 1.0)


def test_sample_is_capped_evenly_spaced_and_in_order():
    result = profile(series(np.arange(5000.0)), "level", sample_size=100)
    sample = result["sample"]
    assert len(sample) == 100
    assert (sample[0], sample[-1]) == (0.0, 4999.0)
    assert sample == sorted(sample)
    assert set(np.diff(sample)) <= {50.0, 51.0}


def test_short_series_is_sampled_whole_and_rounded_to_ten_digits():
    result = profile(series([1 / 3, 2 / 3, 1.0]), "level", sample_size=1000)
    assert result["sample"] == [0.3333333333, 0.6666666667, 1.0]


@pytest.mark.parametrize(
    ("values", "how"),
    [
        ([], "level"),
        ([1.0], "level"),
        ([1.0, np.nan, np.inf], "level"),
        ([1.0, 2.0], "diff"),
        ([0.0, 0.0, 0.0], "pct_change"),
    ],
)
def test_profile_of_fewer_than_two_values_is_refused(values, how):
    with pytest.raises(DataValidationError, match="at least 2") as raised:
        profile(series(values), how)
    assert raised.value.rule == "drift profile"


# --- compare ---------------------------------------------------------------------------------------------------------


def test_psi_on_a_hand_computed_example():
    reference = {"transform": "level", "edges": [0.0], "fractions": [0.5, 0.5], "sample": [-1.0, 1.0]}
    result = compare(reference, series([-1.0, 1.0, 1.0, 1.0]), PSI, ALPHA)
    expected = (0.25 - 0.5) * math.log(0.25 / 0.5) + (0.75 - 0.5) * math.log(0.75 / 0.5)
    assert result["psi"] == pytest.approx(expected)
    assert result["window_rows"] == 4


def test_an_empty_bin_counts_as_epsilon():
    reference = {"transform": "level", "edges": [0.0], "fractions": [0.5, 0.5], "sample": [-1.0, 1.0]}
    result = compare(reference, series([1.0, 2.0]), PSI, ALPHA)
    expected = (1e-4 - 0.5) * math.log(1e-4 / 0.5) + 0.5 * math.log(1.0 / 0.5)
    assert result["psi"] == pytest.approx(expected)


def test_same_distribution_is_not_drift():
    result = compare(profile(normal(10, 1000), "level"), normal(11, 200), PSI, ALPHA)
    assert result["drifted"] is False
    assert result["psi"] < PSI
    assert result["ks_pvalue"] > ALPHA
    assert result["message"].startswith("target level: no drift (PSI ")
    json.dumps(result, allow_nan=False)
    assert set(result) == {
        "transform",
        "window_rows",
        "psi",
        "ks_statistic",
        "ks_pvalue",
        "psi_threshold",
        "ks_alpha",
        "drifted",
        "message",
    }
    assert (result["psi_threshold"], result["ks_alpha"], result["window_rows"]) == (PSI, ALPHA, 200)


def test_a_three_sd_shift_is_drift():
    result = compare(profile(normal(10, 1000), "level"), normal(12, 52, loc=3.0), PSI, ALPHA)
    assert result["drifted"] is True
    assert result["psi"] > PSI
    assert result["ks_pvalue"] < 1e-10
    assert result["ks_statistic"] > 0.8
    assert "differ from the champion's training data" in result["message"]
    assert "the new 52 periods" in result["message"]
    assert result["message"].startswith(f"target level: PSI {result['psi']:.2f} > 0.25 and KS p=")


@pytest.mark.parametrize("seed", [20, 21, 22])
def test_a_short_window_from_the_same_distribution_is_not_flagged(seed):
    # Eight values leave most of ten bins empty, so PSI alone is always large; KS keeps it from being called drift.
    result = compare(profile(normal(10, 1000), "level"), normal(seed, 8), PSI, ALPHA)
    assert result["window_rows"] == 8
    assert result["psi"] > PSI
    assert result["ks_pvalue"] >= ALPHA
    assert result["drifted"] is False


def test_a_long_window_with_a_tiny_shift_is_not_flagged():
    # KS alone would call a 0.15 sd shift significant on 5000 values; PSI says it is immaterial.
    result = compare(profile(normal(10, 5000), "level"), normal(30, 5000, loc=0.15), PSI, ALPHA)
    assert result["ks_pvalue"] < ALPHA
    assert result["psi"] < PSI
    assert result["drifted"] is False


def trend(start: int, size: int, seed: int) -> pd.Series:
    t = np.arange(start, start + size)
    return series(0.5 * t + np.random.default_rng(seed).normal(0.0, 1.0, size))


def test_diff_removes_a_trend_that_level_calls_drift():
    history, window = trend(0, 200, seed=40), trend(200, 52, seed=41)
    level = compare(profile(history, "level"), window, PSI, ALPHA)
    diff = compare(profile(history, "diff"), window, PSI, ALPHA)
    assert level["drifted"] is True  # every new value is above the training range
    assert diff["drifted"] is False
    assert diff["transform"] == "diff"
    assert diff["window_rows"] == 51  # the first period has nothing to difference against
    assert diff["message"].startswith("target diff: no drift")


def growth(start: int, size: int, seed: int) -> pd.Series:
    t = np.arange(start, start + size)
    return series(100.0 * 1.02**t * np.exp(np.random.default_rng(seed).normal(0.0, 0.01, size)))


def test_pct_change_removes_steady_growth_that_level_calls_drift():
    history, window = growth(0, 200, seed=50), growth(200, 52, seed=51)
    level = compare(profile(history, "level"), window, PSI, ALPHA)
    pct = compare(profile(history, "pct_change"), window, PSI, ALPHA)
    assert level["drifted"] is True
    assert pct["drifted"] is False
    assert pct["transform"] == "pct_change"


def test_pct_change_flags_a_change_in_growth_rate():
    history, window = growth(0, 200, seed=50), growth(0, 52, seed=52) ** 2 / 100.0  # ~4 % a period instead of 2 %
    result = compare(profile(history, "pct_change"), window, PSI, ALPHA)
    assert result["drifted"] is True


def test_compare_uses_the_references_transform():
    reference = profile(trend(0, 200, seed=40), "diff")
    assert compare(reference, trend(200, 52, seed=41), PSI, ALPHA)["transform"] == "diff"


def test_unnamed_series_is_labelled_by_its_transform():
    result = compare(profile(normal(10, 1000), "level"), normal(11, 200).rename(None), PSI, ALPHA)
    assert result["message"].startswith("level: no drift")


def valid_reference() -> dict:
    return profile(normal(10, 200), "level")


def without(key: str) -> dict:
    reference = valid_reference()
    del reference[key]
    return reference


def with_value(key: str, value) -> dict:
    return {**valid_reference(), key: value}


@pytest.mark.parametrize(
    ("reference", "detail"),
    [
        (without("transform"), "lacks transform"),
        (without("edges"), "lacks edges"),
        (without("fractions"), "lacks fractions"),
        (without("sample"), "lacks sample"),
        ({}, "lacks transform, edges, fractions, sample"),
        (["not", "a", "profile"], "not a mapping"),
        (with_value("transform", "log"), "transform 'log'"),
        (with_value("edges", "0,1,2"), "edges is not a list of finite numbers"),
        (with_value("edges", [3.0, 2.0, 1.0, 0.0, -1.0, -2.0, -3.0, -4.0, -5.0]), "edges are not increasing"),
        (with_value("fractions", [0.5, 0.5]), "do not fit 9 edges"),
        (with_value("fractions", [0.2] * 10), "summing to 2"),
        (with_value("sample", []), "sample is empty"),
        (with_value("sample", [1.0, None]), "sample is not a list of finite numbers"),
        (with_value("sample", [[1.0], [2.0]]), "sample is not a list of finite numbers"),
    ],
)
def test_an_unusable_reference_is_refused_with_a_fix(reference, detail):
    with pytest.raises(DataValidationError) as raised:
        compare(reference, normal(11, 50), PSI, ALPHA)
    assert raised.value.rule == "drift profile"
    assert detail in str(raised.value)
    assert "drift.profile" in raised.value.fix


@pytest.mark.parametrize(
    ("values", "how"),
    [([1.0], "level"), ([np.nan, 1.0, np.inf], "level"), ([1.0, 2.0], "diff"), ([0.0, 1.0], "pct_change")],
)
def test_a_window_of_fewer_than_two_values_is_refused(values, how):
    reference = profile(normal(10, 200).abs() + 1.0, how)
    with pytest.raises(DataValidationError, match="the new window has") as raised:
        compare(reference, series(values), PSI, ALPHA)
    assert raised.value.rule == "drift profile"
