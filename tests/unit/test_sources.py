"""Sources: rows strictly before the window end, as the source has them, on a naive UTC index."""

from __future__ import annotations

from datetime import datetime

import numpy as np
import pandas as pd
import pytest

from include.retrain import sources
from include.retrain.errors import SourceError

END = datetime(2030, 1, 1)


@pytest.fixture
def file_spec(make_spec, write_csv, weekly):
    """``file_spec(frame=None, **changes)``: a spec whose file source holds ``frame`` (default 30 weeks)."""

    def make(frame=None, name="data.csv", **changes):
        path = write_csv(weekly(30) if frame is None else frame, name)
        return make_spec(source={"kind": "file", "path": str(path)}, **changes)

    return make


def statsmodels_spec(make_spec, dataset, frequency):
    return make_spec(source={"kind": "statsmodels", "dataset": dataset, "path": None}, frequency=frequency)


@pytest.mark.parametrize(
    ("dataset", "frequency", "target", "first"),
    [
        ("co2", "W-SAT", "co2", "1958-03-29"),
        ("macrodata", "QS", "realgdp", "1959-01-01"),
        ("sunspots", "YS", "SUNACTIVITY", "1700-01-01"),
        ("nile", "YS", "volume", "1871-01-01"),
    ],
)
def test_statsmodels_dataset_loads_target_on_timestamp_index(make_spec, dataset, frequency, target, first):
    frame = sources.load(statsmodels_spec(make_spec, dataset, frequency), target, END)
    assert list(frame.columns) == [target]
    assert isinstance(frame.index, pd.DatetimeIndex)
    assert frame.index.name == "timestamp"
    assert frame.index.tz is None
    assert frame.index[0] == pd.Timestamp(first)
    assert frame.index.is_monotonic_increasing


def test_macrodata_is_quarterly_on_quarter_starts(make_spec):
    frame = sources.load(statsmodels_spec(make_spec, "macrodata", "QS"), "unemp", END)
    assert (frame.index.month % 3 == 1).all()
    assert (frame.index.day == 1).all()
    assert len(frame) == 203


def test_statsmodels_window_end_cuts_history(make_spec):
    frame = sources.load(statsmodels_spec(make_spec, "macrodata", "QS"), "realgdp", datetime(1960, 1, 1))
    assert list(frame.index.strftime("%Y-%m-%d")) == ["1959-01-01", "1959-04-01", "1959-07-01", "1959-10-01"]


def test_file_rows_are_strictly_before_window_end(file_spec, weekly):
    frame = weekly(30)
    end = frame.index[10].to_pydatetime()
    loaded = sources.load(file_spec(frame), "value", end)
    assert len(loaded) == 10
    assert loaded.index.max() < pd.Timestamp(end)
    np.testing.assert_allclose(loaded["value"], frame["value"].iloc[:10])


@pytest.mark.parametrize(("offset", "rows"), [("+02:00", 10), ("-02:00", 11)])
def test_aware_window_end_is_compared_in_utc(file_spec, weekly, offset, rows):
    """01:00 at UTC+2 is before midnight UTC (row 10 excluded); 01:00 at UTC-2 is after it."""
    frame = weekly(30)
    end = datetime.fromisoformat(f"{frame.index[10].date()}T01:00:00{offset}")
    assert len(sources.load(file_spec(frame), "value", end)) == rows


def load_text(make_spec, tmp_path, text):
    path = tmp_path / "aware.csv"
    path.write_text(text)
    return sources.load(make_spec(source={"kind": "file", "path": str(path)}), "value", END)


def test_aware_file_timestamps_become_naive_utc(make_spec, tmp_path):
    loaded = load_text(
        make_spec, tmp_path, "timestamp,value\n2020-01-04T01:00:00+01:00,1\n2020-01-11T01:00:00+01:00,2\n"
    )
    assert list(loaded.index) == [pd.Timestamp("2020-01-04"), pd.Timestamp("2020-01-11")]
    assert loaded.index.tz is None


def test_file_timestamps_with_changing_utc_offset_are_converted(make_spec, tmp_path):
    text = "timestamp,value\n2020-03-21T01:00:00+01:00,1\n2020-03-28T02:00:00+02:00,2\n"
    loaded = load_text(make_spec, tmp_path, text)
    assert list(loaded.index) == [pd.Timestamp("2020-03-21"), pd.Timestamp("2020-03-28")]


def test_parquet_file_with_custom_time_column(make_spec, weekly, tmp_path):
    frame = weekly(12).rename_axis("week_ending").reset_index()
    path = tmp_path / "data.parquet"
    frame.to_parquet(path)
    spec = make_spec(source={"kind": "file", "path": str(path), "time_column": "week_ending"})
    loaded = sources.load(spec, "value", END)
    assert len(loaded) == 12
    assert loaded.index.name == "timestamp"
    assert list(loaded.columns) == ["value"]


def test_rows_are_returned_unsorted_and_with_duplicates(file_spec, weekly):
    """validate must see what is really in the source, so load neither sorts nor de-duplicates."""
    frame = weekly(6)
    messy = pd.concat([frame.iloc[[3, 1, 2]], frame.iloc[[2]]])
    loaded = sources.load(file_spec(messy), "value", END)
    assert list(loaded.index) == list(messy.index)


def test_only_the_target_column_is_kept(file_spec, weekly):
    frame = weekly(6).assign(other=1.0)
    assert list(sources.load(file_spec(frame), "value", END).columns) == ["value"]


def test_missing_target_returns_every_column_for_validate_to_name(file_spec, weekly):
    frame = weekly(6).rename(columns={"value": "level"}).assign(other=1.0)
    assert list(sources.load(file_spec(frame), "value", END).columns) == ["level", "other"]


def test_max_history_keeps_most_recent_periods(file_spec, weekly):
    frame = weekly(30)
    loaded = sources.load(file_spec(frame, window={"max_history": 12}), "value", END)
    assert list(loaded.index) == list(frame.index[-12:])


def test_window_before_all_data_is_empty(file_spec, weekly):
    loaded = sources.load(file_spec(weekly(6), window={"max_history": 12}), "value", datetime(2000, 1, 1))
    assert loaded.empty
    assert list(loaded.columns) == ["value"]


@pytest.mark.parametrize(
    ("content", "time_column", "rule"),
    [
        (None, "timestamp", "source readable"),
        ("timestamp,value\n2020-01-04,1\n", "week", "time column present"),
        ("timestamp,value\nnot a date,1\n", "timestamp", "timestamps parse"),
        ("", "timestamp", "source readable"),
    ],
    ids=["missing file", "missing time column", "unparseable timestamps", "empty file"],
)
def test_unusable_file_raises_source_error_with_rule_and_fix(make_spec, tmp_path, content, time_column, rule):
    path = tmp_path / "data.csv"
    if content is not None:
        path.write_text(content)
    spec = make_spec(source={"kind": "file", "path": str(path), "time_column": time_column})
    with pytest.raises(SourceError) as caught:
        sources.load(spec, "value", END)
    assert caught.value.rule == rule
    assert f"[rule: {rule}]" in str(caught.value)
    assert str(path) in str(caught.value)
    assert "Fix: check source.path" in str(caught.value)
