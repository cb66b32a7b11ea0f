"""The shipped stocks_daily pipeline end to end through Airflow, against a local Tiingo
stand-in: the operator adds the connection, the DAG fetches, trains and publishes per
ticker; a second run with nothing new skips instead of publishing a duplicate."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime

import pytest

from include.retrain_airflow.cli import failed_tasks, trigger, wait_for_runs
from tests.e2e.conftest import Stack
from tests.standins import TOKEN, StandIn, serve

pytestmark = pytest.mark.e2e
DAG = "retrain_stocks_daily"


@pytest.fixture(scope="module")
def tiingo(stack: Stack) -> Iterator[StandIn]:
    """The stand-in behind connection tiingo_default, for this module only.

    Removed again afterwards (and the DAG paused): other modules see the stack as
    ``make run`` does, without the connection, whatever order the modules run in.
    """
    airflow = str(stack.profile.venv / "bin" / "airflow")
    with serve() as (state, base):
        added = stack.run(
            airflow,
            "connections",
            "add",
            "tiingo_default",
            "--conn-type",
            "http",
            "--conn-host",
            base,
            "--conn-password",
            TOKEN,
        )
        assert added.returncode == 0, added.stderr[-2000:]
        try:
            yield state
        finally:
            stack.api.json("PATCH", f"/dags/{DAG}", json={"is_paused": True})
            deleted = stack.run(airflow, "connections", "delete", "tiingo_default")
            assert deleted.returncode == 0, deleted.stderr[-2000:]


@dataclass(frozen=True)
class FirstRun:
    run_id: str
    state: str
    requests: list[tuple[str, dict[str, str]]]  # what the stand-in was asked, up to the end of the run


@pytest.fixture(scope="module")
def first_run(stack: Stack, tiingo: StandIn) -> FirstRun:
    """The DAG's first run (what `make run` triggers): it fetches both tickers in full and publishes."""
    run_id = trigger(stack.api, DAG)
    state = wait_for_runs(stack.api, {DAG: run_id}, timeout=300)[DAG]
    return FirstRun(run_id, state, list(tiingo.requests))


def _states(stack: Stack, run_id: str) -> dict[str, list[str]]:
    found = stack.api.json("GET", f"/dags/{DAG}/dagRuns/{run_id}/taskInstances", params={"limit": 100})
    states: dict[str, list[str]] = {}
    for ti in found["task_instances"]:
        states.setdefault(ti["task_id"], []).append(ti["state"])
    return states


def test_stocks_daily_publishes_a_model_per_ticker(stack: Stack, first_run: FirstRun) -> None:
    assert first_run.state == "success", failed_tasks(stack.api, DAG, first_run.run_id)
    assert {path for path, _ in first_run.requests} == {"/tiingo/daily/NLS/prices", "/tiingo/daily/FSLY/prices"}
    for series in ("nls", "fsly"):
        pointer = json.loads(stack.get(f"models/stocks_daily/{series}/latest.json"))
        manifest = json.loads(stack.get(pointer["manifest"]))
        assert manifest["snapshot"]["source"] == "tiingo" and manifest["rows"]["total"] == 750
        assert manifest["data_window"]["last_timestamp"] == "2026-11-20 00:00:00"
        assert hashlib.sha256(stack.get(pointer["model"])).hexdigest() == manifest["artifact"]["sha256"]


def test_second_run_without_new_prices_skips(stack: Stack, tiingo: StandIn, first_run: FirstRun) -> None:
    assert first_run.state == "success", "the first run must publish for the second to have nothing new"
    body = {"logical_date": datetime.now(UTC).isoformat()}
    run_id = stack.api.json("POST", f"/dags/{DAG}/dagRuns", json=body)["dag_run_id"]
    assert wait_for_runs(stack.api, {DAG: run_id}, timeout=300)[DAG] == "success"
    states = _states(stack, run_id)
    assert states["extract"] == ["skipped", "skipped"]
    assert set(states["publish"]) == {"skipped"}, "downstream of a skipped mapped task: skipped, unexpanded"
    incremental = [params for path, params in tiingo.requests[-2:]]
    assert all(p["startDate"] == "2026-11-20" for p in incremental), "only new days were asked for"
