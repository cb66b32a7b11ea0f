"""Shared fixtures: a tiny weekly pipeline spec, tiny synthetic frames and a local store.

Everything here is synthetic and small (tens of rows) so that the unit suite stays fast;
the shipped specs are only used where a test says so.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

from include.retrain.errors import StoreError
from include.retrain.settings import BUNDLE_ROOT
from include.retrain.spec import PipelineSpec
from include.retrain.stages.context import RunInfo
from include.retrain.store import FileStore

FREQ = "W-SAT"
START = "2020-01-04"  # a Saturday, on the W-SAT grid

# A small, valid spec: weekly series "level" read from column "value" of a CSV file.
BASE_SPEC: dict[str, Any] = {
    "name": "tiny",
    "schedule": "0 6 * * 1",
    "start_date": "2024-01-01",
    "frequency": FREQ,
    "source": {"kind": "file", "path": "data.csv"},
    "series": [{"name": "level", "target": "value"}],
    "validation": {"min_rows": 20, "max_null_fraction": 0.2, "min_value": 0, "max_value": 100},
    "preprocess": {"fill": "interpolate", "max_gap": 2},
    "model": {"kind": "arima", "order": [1, 0, 0]},
    "split": {"test_size": 4},
    "evaluation": {"metrics": ["mae", "rmse", "mape"], "baseline": "naive"},
}


def merge(base: dict[str, Any], changes: dict[str, Any]) -> dict[str, Any]:
    """Deep-merge ``changes`` into a copy of ``base``; a ``None`` value deletes the key."""
    out = copy.deepcopy(base)
    for key, value in changes.items():
        if value is None:
            out.pop(key, None)
        elif isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def synthetic_values(n: int, seed: int = 0) -> np.ndarray:
    """A positive series with a trend, a 4-period cycle and a little noise (values ~20..40)."""
    rng = np.random.default_rng(seed)
    t = np.arange(n)
    return 20 + 0.3 * t + 2 * np.sin(2 * np.pi * t / 4) + rng.normal(0, 0.2, n)


@pytest.fixture
def spec_dict() -> Callable[..., dict[str, Any]]:
    """``spec_dict(**changes)``: the raw mapping of the tiny spec with deep-merged changes."""

    def make(**changes: Any) -> dict[str, Any]:
        return merge(BASE_SPEC, changes)

    return make


@pytest.fixture
def make_spec(spec_dict: Callable[..., dict[str, Any]]) -> Callable[..., PipelineSpec]:
    """``make_spec(**changes)``: a validated ``PipelineSpec`` of the tiny pipeline."""

    def make(**changes: Any) -> PipelineSpec:
        return PipelineSpec.model_validate(spec_dict(**changes))

    return make


@pytest.fixture
def spec(make_spec: Callable[..., PipelineSpec]) -> PipelineSpec:
    return make_spec()


@pytest.fixture
def weekly() -> Callable[..., pd.DataFrame]:
    """``weekly(n, values=None, start=START)``: a regular W-SAT frame with column ``value``."""

    def make(n: int = 30, values: Any = None, start: str = START, seed: int = 0) -> pd.DataFrame:
        index = pd.date_range(start, periods=n, freq=FREQ, name="timestamp")
        data = synthetic_values(n, seed) if values is None else np.asarray(values, dtype=float)
        return pd.DataFrame({"value": data}, index=index)

    return make


@pytest.fixture
def y(weekly: Callable[..., pd.DataFrame]) -> pd.Series:
    """40 regular weekly values named ``y``, as ``features.regularize`` returns them."""
    return weekly(40)["value"].rename("y").asfreq(FREQ)


@pytest.fixture
def write_csv(tmp_path: Path) -> Callable[..., Path]:
    """``write_csv(frame, name)``: write a frame with its index as a ``timestamp`` column."""

    def write(frame: pd.DataFrame, name: str = "data.csv") -> Path:
        path = tmp_path / name
        frame.rename_axis("timestamp").reset_index().to_csv(path, index=False)
        return path

    return write


class FlakyStore(FileStore):
    """A FileStore that records the keys it writes and fails writes of keys ending with ``fail_on``."""

    def __init__(self, root: Path, fail_on: str | None = None) -> None:
        super().__init__(root)
        self.fail_on = fail_on
        self.writes: list[str] = []

    def write(self, key: str, data: bytes) -> None:
        if self.fail_on and key.endswith(self.fail_on):
            raise StoreError(f"simulated outage writing {key}", fix="retry")
        self.writes.append(key)
        super().write(key, data)


@pytest.fixture
def store(tmp_path: Path) -> FileStore:
    return FileStore(tmp_path / "store")


@pytest.fixture
def flaky_store(store: FileStore) -> Callable[..., FlakyStore]:
    """``flaky_store(fail_on=None)``: a recording store over the same directory as ``store``."""

    def make(fail_on: str | None = None) -> FlakyStore:
        return FlakyStore(store.root, fail_on)

    return make


@pytest.fixture
def snapshot(store: FileStore) -> Callable[[], dict[str, bytes]]:
    """``snapshot()``: every key of ``store`` with its bytes, to compare before and after."""

    def take() -> dict[str, bytes]:
        return {key: store.read(key) for key in store.list("")}

    return take


@pytest.fixture
def make_run() -> Callable[..., RunInfo]:
    """``make_run(end)``: the RunInfo of a run whose data window ends at ``end`` (UTC)."""

    def make(end: str = "2021-01-04T06:00:00+00:00", run_id: str = "scheduled__test") -> RunInfo:
        stamp = pd.Timestamp(end)
        return RunInfo(
            version=stamp.strftime("%Y%m%dT%H%M%SZ"),
            window_start=(stamp - pd.Timedelta(days=7)).isoformat(),
            window_end=stamp.isoformat(),
            dag_id="retrain_test",
            run_id=run_id,
        )

    return make


@pytest.fixture
def pipelines_dir() -> Path:
    return BUNDLE_ROOT / "include" / "pipelines"
