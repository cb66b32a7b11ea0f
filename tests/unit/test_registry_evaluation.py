"""A version's evaluation.json: its documented shape and bounded size, checked on read and by verify.

Versions are published with ``registry.publish`` (tiny pickled dicts, hand-made manifests), as
in test_registry_operations.py; the chain's side (evaluate writes it, publish keeps it) is in
test_stages.py.
"""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from include.retrain import registry
from include.retrain.errors import IntegrityError
from include.retrain.registry import operations
from include.retrain.registry.targets import Target
from tests.registry_fixtures import publish_by_hand as publish

V1, END1 = "20210104T060000Z", "2021-01-04T06:00:00+00:00"
V2, END2 = "20210111T060000Z", "2021-01-11T06:00:00+00:00"
SHAPE = {"frequency", "primary_metric", "actual", "test_forecast", "baseline_forecast"}


@pytest.fixture
def target(spec, store) -> Target:
    return Target.of(spec, "level", store, "")


def weeks(n: int, values=None) -> pd.Series:
    index = pd.date_range("2020-01-04", periods=n, freq="W-SAT")
    return pd.Series(np.arange(n, dtype=float) if values is None else values, index=index)


def evaluation(history: pd.Series | None = None, test: int = 4) -> bytes:
    history = weeks(40) if history is None else history
    forecast = history.iloc[-test:] + 0.5
    naive = pd.Series(history.iloc[-test - 1], index=forecast.index)
    return registry.dump_evaluation("W-SAT", "mae", history, forecast, naive)


# -- the file --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("test_length", "points"),
    [(1, 120), (4, 120), (30, 120), (31, 124), (52, 208), (250, 1000), (5000, 1000)],
)
def test_actual_points_are_four_test_windows_at_least_120_at_most_1000(test_length: int, points: int) -> None:
    assert registry.actual_points(test_length) == points


def test_evaluation_json_has_the_documented_shape() -> None:
    value = json.loads(evaluation())
    assert list(value) == ["frequency", "primary_metric", "actual", "test_forecast", "baseline_forecast"]
    assert (value["frequency"], value["primary_metric"]) == ("W-SAT", "mae")
    assert all(set(value[name]) == {"timestamps", "values"} for name in SHAPE - {"frequency", "primary_metric"})
    assert value["actual"]["timestamps"][:2] == ["2020-01-04 00:00:00", "2020-01-11 00:00:00"], "str(pd.Timestamp)"
    assert value["actual"]["values"] == [float(v) for v in range(40)], "shorter than the rule: the whole history"
    test_window = ["2020-09-12 00:00:00", "2020-09-19 00:00:00", "2020-09-26 00:00:00", "2020-10-03 00:00:00"]
    assert value["test_forecast"] == {"timestamps": test_window, "values": [36.5, 37.5, 38.5, 39.5]}
    assert value["baseline_forecast"] == {"timestamps": test_window, "values": [35.0] * 4}


def test_evaluation_json_keeps_only_the_newest_actuals() -> None:
    history = weeks(300)
    value = json.loads(evaluation(history, test=52))
    assert len(value["actual"]["values"]) == 208
    assert value["actual"]["timestamps"] == [str(t) for t in history.index[-208:]], "up to the test window's end"
    assert len(value["test_forecast"]["values"]) == len(value["baseline_forecast"]["values"]) == 52
    assert len(json.loads(evaluation(weeks(5000), test=260))["actual"]["values"]) == 1000


def test_non_finite_values_are_null() -> None:
    history = weeks(8, [1.0, np.nan, 3.0, np.inf, 5.0, -np.inf, 7.0, 8.0])
    forecast = pd.Series([np.nan, 2.5], index=history.index[-2:])
    data = registry.dump_evaluation("W-SAT", "rmse", history, forecast, forecast.fillna(1.0))
    value = json.loads(data)
    assert b"NaN" not in data and b"Infinity" not in data
    assert value["actual"]["values"] == [1.0, None, 3.0, None, 5.0, None, 7.0, 8.0]
    assert value["test_forecast"]["values"] == [None, 2.5]
    assert value["baseline_forecast"]["values"] == [1.0, 2.5]


# -- reading it back, and verify -------------------------------------------------------------


def test_read_evaluation_returns_what_was_published(target: Target) -> None:
    publish(target, V1, END1, plot=evaluation())
    assert registry.read_evaluation(target.store, target.layout, "level", V1) == json.loads(evaluation())


def test_read_evaluation_of_a_version_published_without_one_is_none(target: Target) -> None:
    publish(target, V1, END1)
    assert registry.read_evaluation(target.store, target.layout, "level", V1) is None
    assert operations.verify(target, None).versions == {V1: []}, "old manifests still verify"


def test_read_evaluation_refuses_a_tampered_file(target: Target) -> None:
    publish(target, V1, END1, plot=evaluation())
    target.store.write(target.version_file(V1, "evaluation.json"), evaluation(weeks(40, np.zeros(40))))
    with pytest.raises(IntegrityError) as caught:
        registry.read_evaluation(target.store, target.layout, "level", V1)
    error = caught.value
    assert (error.pipeline, error.series, error.rule) == ("tiny", "level", "artifact checksum")
    assert f"models/tiny/level/{V1}/evaluation.json has sha256" in str(error)
    assert "Fix: restore it from a backup or republish the version" in str(error)


def test_verify_reports_a_tampered_evaluation_json(target: Target) -> None:
    publish(target, V1, END1, plot=evaluation())
    publish(target, V2, END2, plot=evaluation())
    assert operations.verify(target, None).problems == 0
    target.store.write(target.version_file(V2, "evaluation.json"), b"{}")
    checked = operations.verify(target, None)
    assert checked.versions[V1] == []
    (problem,) = checked.versions[V2]
    assert problem.startswith("evaluation.json has sha256") and "the test-window forecast altered" in problem
    assert "Fix: restore it from a backup or republish the version" in problem
