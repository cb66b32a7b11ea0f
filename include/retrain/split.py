"""Time-ordered train/test split."""

from __future__ import annotations

import pandas as pd

from include.retrain.errors import DataValidationError


def time_split(series: pd.Series, test_size: int, min_train: int) -> tuple[pd.Series, pd.Series]:
    """The last ``test_size`` periods are the test set; the rest, in order, is train.

    Never shuffles: a model must not see the future it is scored on, and nothing is fitted
    here, so no statistic of the test window leaks into training.
    """
    if len(series) - test_size < min_train:
        raise DataValidationError(
            f"{len(series)} periods leave {len(series) - test_size} for training after a test "
            f"window of {test_size}; at least {min_train} are needed",
            rule="train size",
            fix="lower split.test_size or provide more history",
        )
    return series.iloc[:-test_size], series.iloc[-test_size:]
