"""A version's ``evaluation.json``: its test-window forecast beside the series' recent actuals.

``evaluate`` writes it as a work file and ``publish`` keeps it in the version, recorded in
the manifest with its sha256, so a page can plot "the recent actuals with the champion's
test-window forecast" from a few kilobytes of JSON, without pandas or unpickling anything.
The forecast is the one that was scored: the candidate fitted on the training window only,
before ``split.refit_on_full`` refits the published pickle on the test window too.
Shape (timestamps as ``str(pd.Timestamp)`` gives them, non-finite values as null)::

    {"frequency": "W-SAT", "primary_metric": "mae",
     "actual": {"timestamps": [...], "values": [...]},
     "test_forecast": {"timestamps": [...], "values": [...]},
     "baseline_forecast": {"timestamps": [...], "values": [...]}}

This module imports no pandas: the writer only walks the series it is given, and the
reader runs in the api-server.
"""

from __future__ import annotations

import json
import math
from typing import TYPE_CHECKING, Any

from include.retrain.errors import IntegrityError
from include.retrain.registry.artifacts import sha256
from include.retrain.registry.manifest import read_manifest
from include.retrain.store import Layout, Store

if TYPE_CHECKING:
    import pandas as pd

EVALUATION_FILE = "evaluation.json"
ACTUAL_PER_TEST_POINT = 4
ACTUAL_MIN_POINTS = 120
ACTUAL_MAX_POINTS = 1000


def actual_points(test_length: int) -> int:
    """How many of the newest actuals (train and test) the file keeps.

    Enough context before the test window to judge the forecast against the series' own
    level, trend and season (four test windows' worth, and at least 120 points, a couple of
    years of weekly data), yet bounded (1000 points) so a page reads a few kilobytes
    whatever the series' length.
    """
    return min(max(ACTUAL_PER_TEST_POINT * test_length, ACTUAL_MIN_POINTS), ACTUAL_MAX_POINTS)


def dump_evaluation(
    frequency: str,
    primary_metric: str,
    history: pd.Series,
    test_forecast: pd.Series,
    baseline_forecast: pd.Series,
) -> bytes:
    """``evaluation.json``'s bytes: the newest ``actual_points`` of ``history`` (train then test) and both forecasts."""
    actual = history.iloc[-actual_points(len(test_forecast)) :]
    value = {
        "frequency": frequency,
        "primary_metric": primary_metric,
        "actual": _points(actual),
        "test_forecast": _points(test_forecast),
        "baseline_forecast": _points(baseline_forecast),
    }
    return json.dumps(value, separators=(",", ":"), allow_nan=False).encode() + b"\n"


def _points(series: pd.Series) -> dict[str, list[Any]]:
    """Timestamps and values of a series; JSON has no NaN or infinity, so those become null."""
    values = [None if v is None or not math.isfinite(float(v)) else float(v) for v in series.tolist()]
    return {"timestamps": [str(stamp) for stamp in series.index], "values": values}


def read_evaluation(store: Store, layout: Layout, series: str, version: str) -> dict[str, Any] | None:
    """A published version's ``evaluation.json``, checked against its manifest's sha256.

    None for a version published before versions kept one (its manifest records none).
    """
    manifest = read_manifest(store, layout, series, version)
    recorded = manifest.get("evaluation")
    if not isinstance(recorded, dict) or not recorded.get("sha256"):
        return None
    key = f"{layout.version_dir(series, version)}/{EVALUATION_FILE}"
    data = store.read(key)
    actual = sha256(data)
    if actual != recorded["sha256"]:
        raise IntegrityError(
            f"{store.describe(key)} has sha256 {actual[:12]}..., the manifest records "
            f"{str(recorded['sha256'])[:12]}... (the test-window forecast altered or replaced after publishing)",
            rule="artifact checksum",
            fix="restore it from a backup or republish the version; never edit artifacts in place",
            pipeline=layout.pipeline,
            series=series,
        )
    return json.loads(data)
