"""Score a forecast on the test window, next to a naive baseline.

A model that cannot beat "same as last time" has learnt nothing worth publishing, so the
baseline is computed with the same horizon and reported next to every metric.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd


def baseline(train: pd.Series, test_index: pd.Index, kind: str, season_length: int | None) -> pd.Series:
    """Last value repeated, or the last full season repeated (seasonal naive)."""
    if kind == "seasonal_naive" and season_length and len(train) >= season_length:
        season = train.to_numpy()[-season_length:]
        values = np.resize(season, len(test_index))
    else:
        values = np.repeat(train.iloc[-1], len(test_index))
    return pd.Series(values, index=test_index, name="baseline")


def score(actual: pd.Series, predicted: pd.Series, metrics: list[str]) -> dict[str, float | None]:
    """Metric values; MAPE is ``None`` (undefined) when an actual value is zero."""
    error = actual.to_numpy(dtype=float) - predicted.to_numpy(dtype=float)
    values: dict[str, float | None] = {}
    for name in metrics:
        if name == "mae":
            values[name] = float(np.mean(np.abs(error)))
        elif name == "rmse":
            values[name] = float(math.sqrt(np.mean(error**2)))
        elif name == "mape":
            denominator = np.abs(actual.to_numpy(dtype=float))
            values[name] = None if (denominator == 0).any() else float(np.mean(np.abs(error) / denominator) * 100)
    return {k: (round(v, 6) if v is not None and math.isfinite(v) else None) for k, v in values.items()}
