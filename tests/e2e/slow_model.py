"""A scikit-learn regressor whose fit takes ``delay`` seconds: a task long enough to crash
the scheduler under. Used by the test-only ``slow`` pipeline through the usual
``model.estimator`` dotted path."""

from __future__ import annotations

import time

from sklearn.base import BaseEstimator, RegressorMixin
from sklearn.linear_model import LinearRegression


class SlowRegressor(RegressorMixin, BaseEstimator):
    def __init__(self, delay: float = 0.0) -> None:
        self.delay = delay

    def fit(self, X, y):
        time.sleep(self.delay)
        self.model_ = LinearRegression().fit(X, y)
        return self

    def predict(self, X):
        return self.model_.predict(X)
