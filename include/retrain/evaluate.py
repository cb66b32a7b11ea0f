"""Score a forecast on the test window, next to a naive baseline.

A model that cannot beat "same as last time" has learnt nothing worth publishing, so the
baseline is computed with the same horizon and reported next to every metric.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from include.retrain.errors import DataValidationError


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


def fold_cuts(length: int, horizon: int, folds: int, min_train: int) -> list[int]:
    """Where each walk-forward fold's test window starts, oldest first.

    Fold j tests on ``horizon`` periods ending ``(j - 1) * horizon`` before the series'
    end and trains on everything before them (an expanding window): no fold sees its future.
    """
    cuts = [length - j * horizon for j in range(folds, 0, -1)]
    if cuts and cuts[0] < min_train:
        raise DataValidationError(
            f"{length} periods are too few for {folds} walk-forward folds of {horizon} "
            f"(the first fold would train on {cuts[0]}, at least {min_train} needed)",
            rule="backtest folds",
            fix="lower evaluation.backtest_folds or split.test_size, or provide more history",
        )
    return cuts


def summarize(per_fold: list[dict[str, float | None]]) -> dict[str, dict[str, float | None]]:
    """Mean and spread (population standard deviation) of each metric across folds."""
    summary: dict[str, dict[str, float | None]] = {}
    for name in per_fold[0]:
        values = [fold[name] for fold in per_fold if fold[name] is not None]
        if not values:
            summary[name] = {"mean": None, "std": None}
            continue
        summary[name] = {"mean": round(float(np.mean(values)), 6), "std": round(float(np.std(values)), 6)}
    return summary
