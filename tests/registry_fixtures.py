"""A model registry published the way DAG runs publish it, and its history database.

The stages of a tiny weekly pipeline run over a ``FileStore``, so every manifest,
pickle, profile and pointer is what production writes; the decision history is a
database on the local PostgreSQL server. The registry CLI's tests and the Models page's
tests use it; the root conftest registers the fixtures (``pytest_plugins``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import psycopg2
import pytest
import yaml

from include.retrain import registry
from include.retrain.spec import PipelineSpec
from include.retrain.stages.chain import CHAIN
from include.retrain.stages.context import RunInfo, StageContext
from include.retrain.store import FileStore, Layout
from include.retrain_airflow import history as airflow_history
from tests.helpers import ensure_database, per_worker

PG_DB = per_worker("retrain_registry_cli_test")
DSN = f"postgresql://postgres@127.0.0.1:5432/{PG_DB}"
HISTORY_TABLES = ("retrain_forecasts", "retrain_decisions", "retrain_schema_migrations")
KEY = "registry-cli-signing-key"

GOOD = {"kind": "sklearn", "estimator": "sklearn.linear_model.Ridge", "lags": 4}
BAD = {"kind": "sklearn", "estimator": "sklearn.dummy.DummyRegressor", "lags": 1}
UNLOADABLE = b"cno_such_module\nGone\n)\x81."  # a pickle of a class whose module is gone
# (model, window end, rows, spec changes): promoted first model, rejected worse one, promoted better one
RUNS = [
    (GOOD, "2021-01-04T06:00:00+00:00", 40, {}),
    (BAD, "2021-01-11T06:00:00+00:00", 41, {}),
    (GOOD, "2021-01-18T06:00:00+00:00", 42, {"promotion": {"margin": -0.5}}),
]


def spec_dict(source: Path, model: dict[str, Any], **changes: Any) -> dict[str, Any]:
    return {
        "name": "tiny",
        "schedule": "0 6 * * 1",
        "start_date": "2024-01-01",
        "frequency": "W-SAT",
        "source": {"kind": "file", "path": str(source)},
        "series": [{"name": "level", "target": "value"}],
        "validation": {"min_rows": 20, "max_null_fraction": 0.2, "min_value": 0, "max_value": 100},
        "model": model,
        "split": {"test_size": 4},
        "evaluation": {"metrics": ["mae", "rmse"], "baseline": "naive"},
        **changes,
    }


def weekly_csv(path: Path, rows: int) -> Path:
    """A positive weekly series with a trend and a 4-week cycle: a ridge on lags beats the naive forecast."""
    t = np.arange(rows)
    values = 20 + 0.3 * t + 2 * np.sin(2 * np.pi * t / 4) + np.random.default_rng(0).normal(0, 0.2, rows)
    index = pd.date_range("2020-01-04", periods=rows, freq="W-SAT", name="timestamp")
    pd.DataFrame({"value": values}, index=index).reset_index().to_csv(path, index=False)
    return path


# -- the history database --------------------------------------------------------------------


@pytest.fixture(scope="module")
def database() -> str:
    """The test database on the local server: created when missing, kept between sessions."""
    return ensure_database(PG_DB)


@pytest.fixture
def history_db(database: str, monkeypatch: pytest.MonkeyPatch) -> str:
    """An empty history database behind Airflow connection ``retrain_db`` (the default conn id)."""
    with psycopg2.connect(database) as conn, conn.cursor() as cur:
        cur.execute(f"DROP TABLE IF EXISTS {', '.join(HISTORY_TABLES)}")
    conn.close()
    monkeypatch.setattr(airflow_history, "_migrated", set())
    monkeypatch.setenv("AIRFLOW_CONN_RETRAIN_DB", database)
    monkeypatch.delenv("RETRAIN_HISTORY_CONN_ID", raising=False)
    return database


def history_rows() -> list[dict[str, Any]]:
    with psycopg2.connect(DSN) as conn, conn.cursor() as cur:
        cur.execute("SELECT to_regclass('retrain_decisions')")
        if cur.fetchone()[0] is None:
            return []
        cur.execute("SELECT * FROM retrain_decisions ORDER BY id")
        names = [column[0] for column in cur.description]
        rows = [dict(zip(names, row, strict=True)) for row in cur.fetchall()]
    conn.close()
    return rows


# -- a registry with published versions ------------------------------------------------------


@dataclass
class Registry:
    store: FileStore
    layout: Layout
    versions: list[str]
    env: dict[str, str]

    def file(self, version: str, name: str) -> str:
        return f"{self.layout.version_dir('level', version)}/{name}"

    def champion(self) -> dict[str, Any] | None:
        return registry.read_champion(self.store, self.layout, "level")[0]

    def champion_bytes(self) -> bytes:
        return self.store.read(self.layout.champion("level"))


@pytest.fixture
def publish(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, history_db: str) -> Callable[..., Registry]:
    """``publish(runs=3, signed=())``: run the tiny pipeline's stages ``runs`` times (see RUNS).

    Run ``i`` signs its version when ``i`` is in ``signed``. The environment the commands
    read (store, pipelines dir, no signing key) is set on the process and returned.
    """

    def make(runs: int = 3, signed: tuple[int, ...] = ()) -> Registry:
        pipelines = tmp_path / "pipelines"
        pipelines.mkdir()
        source = weekly_csv(tmp_path / "data.csv", 40)
        (pipelines / "tiny.yaml").write_text(yaml.safe_dump(spec_dict(source, GOOD)))
        store = FileStore(tmp_path / "store")
        versions = []
        for i, (model, end, rows, changes) in enumerate(RUNS[:runs]):
            data = weekly_csv(tmp_path / f"data-{i}.csv", rows)
            spec = PipelineSpec.model_validate(spec_dict(data, model, **changes))
            stamp = pd.Timestamp(end)
            run = RunInfo(stamp.strftime("%Y%m%dT%H%M%SZ"), None, end, "retrain_tiny", f"scheduled__{end[:10]}")
            ctx = StageContext(spec, store, "", run, signing_key=KEY.encode() if i in signed else None)
            *publish_chain, promote = CHAIN  # extract ... publish, then promote when the gate said so
            ref: Any = "level"
            for stage in publish_chain:
                ref = stage(ctx, ref)
            if ref["decision"]["promote"]:
                promote(ctx, ref)
            versions.append(ref["version"])
        env = {"RETRAIN_MODEL_STORE": f"file://{store.root}", "RETRAIN_PIPELINES_DIR": str(pipelines)}
        for name, value in env.items():
            monkeypatch.setenv(name, value)
        monkeypatch.delenv("RETRAIN_SIGNING_KEY", raising=False)
        return Registry(store, Layout("", "models", "tiny"), versions, env)

    return make


@pytest.fixture
def reg(publish: Callable[..., Registry]) -> Registry:
    """Three versions: v0 promoted, v1 rejected, v2 promoted (champion, previous v0)."""
    made = publish()
    assert made.champion()["version"] == made.versions[2] and made.champion()["previous"] == made.versions[0]
    return made


def publish_by_hand(
    target: Any,
    version: str,
    end: str,
    key: bytes | None = None,
    data: bytes | None = None,
    plot: bytes | None = None,
) -> None:
    """A version of series ``level`` with a hand-made manifest holding the fields the registry checks.

    ``key`` signs it, ``data`` replaces the pickle, and ``plot`` is kept as its
    ``evaluation.json``, recorded in the manifest as ``publish`` records it.
    """
    data = registry.dumps({"version": version}) if data is None else data
    manifest: dict[str, Any] = {
        "pipeline": "tiny",
        "series": "level",
        "version": version,
        "data_window": {"start": None, "end": end},
        "metrics": {"primary_metric": "mae", "model": {"mae": 1.0}, "baseline": {"mae": 2.0}},
        "model": {"kind": "arima", "order": [1, 0, 0]},
        "artifact": {"file": "model.pkl", "sha256": registry.sha256(data), "bytes": len(data)},
    }
    extra = {}
    if plot is not None:
        manifest["evaluation"] = {"file": "evaluation.json", "sha256": registry.sha256(plot)}
        extra["evaluation.json"] = plot
    if key:
        manifest["artifact"]["signature"] = registry.sign(key, manifest)
    registry.publish(target.store, target.layout, "level", data, manifest, extra=extra)
