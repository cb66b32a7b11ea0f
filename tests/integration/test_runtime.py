"""What a task does around a stage: the run's window, and fail-fast versus retry."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from types import SimpleNamespace

import pytest
from airflow.sdk.exceptions import AirflowFailException

from include.retrain.errors import StoreError
from include.retrain.spec import load_spec
from include.retrain.stages import prepare, snapshots
from include.retrain_airflow import runtime
from tests.helpers import free_port

SPEC = load_spec(Path(__file__).resolve().parents[2] / "include" / "pipelines" / "co2_weekly.yaml")


def _context(**overrides: object) -> dict:
    context = {
        "data_interval_start": datetime(2026, 11, 9, 6, tzinfo=UTC),
        "data_interval_end": datetime(2026, 11, 16, 6, tzinfo=UTC),
        "dag": SimpleNamespace(dag_id="retrain_co2_weekly"),
        "run_id": "scheduled__2026-11-09T06:00:00+00:00",
        "dag_run": SimpleNamespace(run_after=datetime(2026, 11, 16, 6, tzinfo=UTC)),
    }
    return {**context, **overrides}


def test_version_is_the_end_of_the_data_interval() -> None:
    info = runtime.run_info(_context(), SPEC)
    assert info.version == "20261116T060000Z"
    assert info.window_end == "2026-11-16T06:00:00+00:00"


def test_run_without_logical_date_uses_last_complete_interval() -> None:
    """Airflow 3 manual runs may have no data interval: fall back to the schedule."""
    context = _context(data_interval_start=None, data_interval_end=None)
    context["dag_run"] = SimpleNamespace(run_after=datetime(2026, 11, 18, 9, 30, tzinfo=UTC))
    info = runtime.run_info(context, SPEC)
    assert (info.version, info.window_start) == ("20261116T060000Z", "2026-11-09T06:00:00+00:00")


def test_permanent_error_fails_without_retry(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RETRAIN_MODEL_STORE", f"file://{tmp_path}")
    context = _context(data_interval_end=datetime(1950, 1, 1, tzinfo=UTC))
    ref = runtime.run(SPEC, snapshots.extract, "co2", context)
    assert context["series"] == "co2", "map_index_template renders the series name"
    with pytest.raises(AirflowFailException, match=r"pipeline 'co2_weekly', series 'co2'.*empty.*Fix:"):
        runtime.run(SPEC, prepare.validate, ref, context)


def test_store_outage_is_left_to_retries(monkeypatch: pytest.MonkeyPatch) -> None:
    dead = f"http://127.0.0.1:{free_port()}"
    extra = {"endpoint_url": dead, "config_kwargs": {"retries": {"max_attempts": 1}, "connect_timeout": 1}}
    monkeypatch.setenv("AIRFLOW_CONN_AWS_DEFAULT", json.dumps({"conn_type": "aws", "extra": extra}))
    monkeypatch.setenv("RETRAIN_MODEL_STORE", "s3://retrain-models")
    with pytest.raises(StoreError, match=r"pipeline 'co2_weekly', series 'co2'.*cannot reach") as caught:
        runtime.run(SPEC, snapshots.extract, "co2", _context())
    assert not isinstance(caught.value, AirflowFailException)
