"""Published artifact size against series length, and what the slimmer pickle gives up.

The library fits statsmodels models with ``low_memory=True`` (see include/retrain/models.py).
For each length this fits the same model both ways and reports the pickle sizes, the
largest relative difference of their forecasts, and whether a plain Python with only
statsmodels (no bundle on the path) loads the published pickle and forecasts with it.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import warnings
from pathlib import Path

import numpy as np
import pandas as pd

from benchmarks.synthetic import weekly_frame

KINDS = {
    "stl_arima": {"kind": "stl_arima", "order": [1, 1, 1], "trend": "t", "period": 52},
    "arima": {"kind": "arima", "order": [2, 1, 1], "trend": "t"},
    "sklearn": {"kind": "sklearn", "estimator": "sklearn.linear_model.Ridge", "lags": 8, "calendar": ["weekofyear"]},
}
FREQUENCY = "W-SAT"
HORIZON = 52
CONSUMER = r"""
import pickle, sys
model = pickle.load(open(sys.argv[1], "rb"))
values = model.forecast(5)
print(type(model).__module__, len(values))
"""


def _full_fit(kind: str, model, y):
    """The same model without low_memory: the results object statsmodels returns by default."""
    from statsmodels.tsa.arima.model import ARIMA
    from statsmodels.tsa.forecasting.stl import STLForecast

    if kind == "stl_arima":
        forecaster = STLForecast(
            y, ARIMA, model_kwargs={"order": model.order, "trend": model.trend}, period=model.period
        )
        return forecaster.fit()
    return ARIMA(y, order=model.order, trend=model.trend).fit()


def _consumer_loads(data: bytes) -> str:
    """Load and forecast in a fresh interpreter that cannot import this bundle."""
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "model.pkl"
        path.write_bytes(data)
        env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
        done = subprocess.run(
            [sys.executable, "-c", CONSUMER, str(path)], capture_output=True, text=True, cwd=tmp, env=env, timeout=120
        )
    return done.stdout.strip() if done.returncode == 0 else f"FAILED: {done.stderr.strip().splitlines()[-1]}"


def measure(kind: str, points: int) -> dict:
    from pydantic import TypeAdapter

    from include.retrain import models, registry
    from include.retrain.spec import Model

    model = TypeAdapter(Model).validate_python(KINDS[kind])
    frame = weekly_frame(weeks=points, columns=1)
    y = frame.set_index(pd.to_datetime(frame["week"]))["s00"].asfreq(FREQUENCY)
    fitted, _ = models.fit(model, y, FREQUENCY)
    data = registry.dumps(fitted)
    row = {"kind": kind, "points": points, "bytes": len(data)}
    if kind != "sklearn":
        with warnings.catch_warnings():  # statsmodels' start-parameter notes; models.fit records its own
            warnings.simplefilter("ignore")
            full = _full_fit(kind, model, y)
        slim_forecast = np.asarray(fitted.forecast(HORIZON))
        full_forecast = np.asarray(full.forecast(HORIZON))
        row["full_bytes"] = len(registry.dumps(full))
        row["forecast_max_rel_diff"] = float(np.max(np.abs(slim_forecast - full_forecast) / np.abs(full_forecast)))
        row["consumer"] = _consumer_loads(data) if points == 5000 else None
    return row


def artifact_sizes(points: tuple[int, ...] = (1000, 5000, 20000)) -> list[dict]:
    return [measure(kind, n) for kind in KINDS for n in points]
