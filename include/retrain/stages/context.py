"""What every stage works with: the spec, the store, the run, and the trigger's params.

A stage is a plain function ``stage(ctx, ref) -> ref``. ``StageContext`` carries what the
functions share, so the Airflow side (``retrain_airflow.runtime``), the benchmarks and
the tests build one the same way and call the same functions.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from typing import Any

import pandas as pd

from include.retrain import frames
from include.retrain.errors import about
from include.retrain.gate import Mode
from include.retrain.sources import Clients
from include.retrain.spec import PipelineSpec, SklearnModel
from include.retrain.store import Layout, Store


@dataclass(frozen=True)
class RunInfo:
    """The Airflow run a stage works for: where its data window ends and who it is."""

    version: str
    window_start: str | None
    window_end: str
    dag_id: str
    run_id: str

    @property
    def slug(self) -> str:
        """The run id as a key segment: a retry and a rerun of the run share it."""
        return "".join(c if c.isalnum() or c in "-_." else "_" for c in self.run_id)


def _no_history(row: dict[str, Any]) -> None:
    """Without a history database (unit tests, benchmarks) decisions live only in the store."""


@dataclass
class StageContext:
    """One pipeline's run over one store, with the trigger params its stages honour."""

    spec: PipelineSpec
    store: Store
    root: str
    run: RunInfo
    clients: Clients = field(default_factory=Clients)
    history: Callable[[dict[str, Any]], None] = _no_history
    signing_key: bytes | None = None
    mode: Mode = "gate"
    full_refresh: bool = False

    @property
    def layout(self) -> Layout:
        return Layout(self.root, self.spec.store_prefix, self.spec.name)

    def about(self, series: str) -> AbstractContextManager[None]:
        """Every error leaving a stage names the pipeline and the series."""
        return about(self.spec.name, series)

    def key(self, series: str, name: str) -> str:
        """A work file of this run: a retry or a rerun of the run overwrites the same key."""
        return self.layout.work(series, self.run.version, self.run.slug, name)

    def put_frame(self, series: str, name: str, frame: pd.DataFrame | pd.Series) -> str:
        key = self.key(series, name)
        self.store.write(key, frames.to_parquet(frame.to_frame() if isinstance(frame, pd.Series) else frame))
        return key

    def get_frame(self, key: str) -> pd.DataFrame:
        return frames.from_parquet(self.store.read(key))

    def get_series(self, key: str) -> pd.Series:
        return self.get_frame(key)["y"].asfreq(self.spec.frequency)

    def published_version(self, snapshot_fingerprint: str) -> str:
        """The run's window end plus the data it saw: a rerun of the run gets the same id,
        new data within the same interval a new one (published versions are immutable)."""
        return f"{self.run.version}-{snapshot_fingerprint.removeprefix('sha256:')[:8]}"

    def min_train(self) -> int:
        """The fewest training periods worth fitting on: a lag model needs rows beyond its lags."""
        lags = self.spec.model.lags if isinstance(self.spec.model, SklearnModel) else 0
        return max(lags + 2, 2 * (lags or 1), 8)
