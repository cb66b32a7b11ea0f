"""Turn a validated snapshot into a regular series, and a series into model features.

Lags and calendar columns are computed from past values only, so the same function
builds the training table and, step by step, the rows of a recursive forecast.
"""

from __future__ import annotations

import pandas as pd

from include.retrain.spec import PipelineSpec, SklearnModel


def regularize(frame: pd.DataFrame, target: str, spec: PipelineSpec) -> pd.Series:
    """One value per period of ``spec.frequency``; gaps filled as the spec says.

    ``validate`` has already bounded the gaps by ``preprocess.max_gap``, so filling never
    invents long stretches. Only the ``max_history`` most recent periods are kept.
    """
    values = frame[target].astype("float64")
    values = values.loc[values.first_valid_index() : values.last_valid_index()]
    grid = pd.date_range(values.index[0], values.index[-1], freq=spec.frequency, name="timestamp")
    series = values.reindex(grid)
    if spec.preprocess.fill == "interpolate":
        series = series.interpolate(method="time", limit_area="inside")
    else:
        series = series.ffill()
    if spec.window.max_history:
        series = series.iloc[-spec.window.max_history :]
    return series.rename("y")


def calendar_columns(index: pd.DatetimeIndex, names: list[str]) -> pd.DataFrame:
    columns = {
        "month": lambda: index.month,
        "quarter": lambda: index.quarter,
        "weekofyear": lambda: index.isocalendar().week.to_numpy(),
        "dayofweek": lambda: index.dayofweek,
    }
    return pd.DataFrame({name: columns[name]() for name in names}, index=index).astype("int64")


def lag_columns(model: SklearnModel) -> list[str]:
    return [f"lag_{k}" for k in range(1, model.lags + 1)]


def feature_columns(model: SklearnModel) -> list[str]:
    return lag_columns(model) + list(model.calendar)


def build_table(series: pd.Series, model: SklearnModel) -> pd.DataFrame:
    """``y`` plus lag and calendar columns; rows without a full set of lags are dropped."""
    lags = pd.DataFrame({f"lag_{k}": series.shift(k) for k in range(1, model.lags + 1)}, index=series.index)
    calendar = calendar_columns(pd.DatetimeIndex(series.index), list(model.calendar))
    table = pd.concat([series.rename("y"), lags, calendar], axis=1)
    return table.iloc[model.lags :]


def next_row(history: pd.Series, timestamp: pd.Timestamp, model: SklearnModel) -> pd.DataFrame:
    """The feature row for ``timestamp`` given everything observed (or forecast) before it."""
    tail = history.to_numpy()[::-1][: model.lags]
    row = {f"lag_{k}": [float(tail[k - 1])] for k in range(1, model.lags + 1)}
    index = pd.DatetimeIndex([timestamp], name="timestamp")
    frame = pd.DataFrame(row, index=index)
    return pd.concat([frame, calendar_columns(index, list(model.calendar))], axis=1)
