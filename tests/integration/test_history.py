"""The decision history and forecast tables on a real PostgreSQL: migrations that are safe
to run twice and from two processes at once, upserts that a retried task cannot duplicate,
and the Airflow connection that leads there.

Every library test runs on both drivers: psycopg2, and psycopg 3, which is what
``PostgresHook.get_conn()`` returns with this bundle's pins.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pandas as pd
import psycopg
import psycopg2
import pytest

from include.retrain import history
from include.retrain.errors import DataValidationError, StoreError
from include.retrain.settings import Settings
from include.retrain_airflow import history as airflow_history
from tests.helpers import ensure_database, free_port, per_worker

PG_DB = per_worker("retrain_history_test")
DSN = f"postgresql://postgres@127.0.0.1:5432/{PG_DB}"
TABLES = (history.FORECASTS_TABLE, history.DECISIONS_TABLE, history.SCHEMA_TABLE)
DRIVERS = {"psycopg2": psycopg2.connect, "psycopg3": psycopg.connect}


@pytest.fixture(scope="module")
def database() -> str:
    """The test database on the local server: created when missing, kept between sessions."""
    return ensure_database(PG_DB)


@pytest.fixture
def empty(database: str) -> str:
    """The test database without any of the history tables."""
    with psycopg2.connect(database) as conn, conn.cursor() as cur:
        cur.execute(f"DROP TABLE IF EXISTS {', '.join(TABLES)}")
    return database


@pytest.fixture(params=list(DRIVERS))
def conn(request: pytest.FixtureRequest, empty: str) -> Iterator[Any]:
    """A connection with either driver to an empty database, in a session zone that is not UTC."""
    connection = DRIVERS[request.param](empty, options="-c TimeZone=Asia/Kolkata")
    yield connection
    connection.close()


@pytest.fixture
def migrated(conn: Any) -> Any:
    history.migrate(conn)
    return conn


def query(sql: str, params: tuple = ()) -> list[tuple]:
    """Look at the database from a connection of its own, outside the code under test."""
    with psycopg2.connect(DSN) as connection, connection.cursor() as cur:
        cur.execute(sql, params)
        rows = cur.fetchall() if cur.description else []
    connection.close()
    return rows


def tables() -> set[str]:
    rows = query("SELECT tablename FROM pg_tables WHERE schemaname = 'public' AND tablename LIKE %s", ("retrain_%",))
    return {name for (name,) in rows}


def versions() -> list[int]:
    return [v for (v,) in query(f"SELECT version FROM {history.SCHEMA_TABLE} ORDER BY version")]


# -- migrations ------------------------------------------------------------------------------


def test_migrations_are_numbered_one_by_one_from_one() -> None:
    assert [m.version for m in history.MIGRATIONS] == list(range(1, len(history.MIGRATIONS) + 1))
    assert len(history.MIGRATIONS) >= 2, "the mechanism is exercised with more than one step"


def test_migrate_creates_both_tables_then_has_nothing_to_do(conn: Any) -> None:
    assert history.migrate(conn) == [1, 2]
    assert tables() == set(TABLES)
    assert versions() == [1, 2]
    assert history.migrate(conn) == [], "a second migrate applies nothing"
    assert versions() == [1, 2]
    columns = query(
        "SELECT column_name, data_type, is_nullable FROM information_schema.columns WHERE table_name = %s",
        (history.DECISIONS_TABLE,),
    )
    assert ("drift", "jsonb", "YES") in columns and ("recorded_at", "timestamp with time zone", "NO") in columns
    primary = query(
        "SELECT a.attname FROM pg_index i JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = ANY(i.indkey) "
        "WHERE i.indrelid = %s::regclass AND i.indisprimary",
        (history.FORECASTS_TABLE,),
    )
    assert {name for (name,) in primary} == {"pipeline", "series", "run_id", "step"}


def test_migrate_applies_only_the_missing_step(conn: Any) -> None:
    history.migrate(conn)
    query(f"DROP TABLE {history.FORECASTS_TABLE}; DELETE FROM {history.SCHEMA_TABLE} WHERE version = 2")
    assert history.migrate(conn) == [2]
    assert tables() == set(TABLES) and versions() == [1, 2]


def test_migrate_keeps_the_callers_autocommit_setting(empty: str) -> None:
    connection = psycopg2.connect(empty)
    connection.autocommit = True
    try:
        assert history.migrate(connection) == [1, 2]
        assert connection.autocommit
    finally:
        connection.close()


def waiting_for_the_lock() -> int:
    (count,) = query(
        "SELECT count(*) FROM pg_locks l JOIN pg_database d ON d.oid = l.database "
        "WHERE l.locktype = 'advisory' AND NOT l.granted AND d.datname = %s",
        (PG_DB,),
    )[0]
    return count


@pytest.mark.parametrize("driver", list(DRIVERS))
def test_concurrent_migrations_wait_for_each_other(empty: str, driver: str) -> None:
    results: dict[int, list[int] | BaseException] = {}

    def run(n: int) -> None:
        connection = DRIVERS[driver](empty)
        try:
            results[n] = history.migrate(connection)
        except BaseException as exc:
            results[n] = exc
        finally:
            connection.close()

    holder = psycopg2.connect(empty)  # hold the lock so both migrations are in flight at once
    try:
        with holder.cursor() as cur:
            cur.execute("SELECT pg_advisory_xact_lock(%s)", (history.MIGRATION_LOCK_KEY,))
        threads = [threading.Thread(target=run, args=(n,)) for n in (1, 2)]
        for thread in threads:
            thread.start()
        deadline = time.monotonic() + 10
        while waiting_for_the_lock() < 2 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert waiting_for_the_lock() == 2, "both migrations wait on the advisory lock"
        holder.rollback()
    finally:
        holder.close()
    for thread in threads:
        thread.join(timeout=30)
    assert all(isinstance(result, list) for result in results.values()), results
    assert sorted(results.values(), key=len) == [[], [1, 2]], "one applied both steps, the other found nothing to do"
    assert versions() == [1, 2], "each version recorded once"


def test_a_database_from_a_newer_bundle_is_left_untouched(conn: Any) -> None:
    history.migrate(conn)
    query(f"DROP TABLE {history.FORECASTS_TABLE}; DELETE FROM {history.SCHEMA_TABLE} WHERE version = 2")
    query(f"INSERT INTO {history.SCHEMA_TABLE} (version, description) VALUES (999, 'from the future')")
    with pytest.raises(StoreError) as caught:
        history.migrate(conn)
    assert caught.value.permanent and caught.value.rule == "history schema version"
    assert "schema version 999" in str(caught.value) and "upgrade the bundle" in str(caught.value)
    assert tables() == {history.DECISIONS_TABLE, history.SCHEMA_TABLE}, "missing step 2 was not applied"
    assert versions() == [1, 999]
    assert history.decisions(conn) == [], "the connection is usable after the refusal"


# -- decisions -------------------------------------------------------------------------------


def decision(**changes: Any) -> history.Decision:
    fields: dict[str, Any] = {
        "event_key": "sales/north/v1/promote",
        "pipeline": "sales",
        "series": "north",
        "version": "v1",
        "decision": "promoted",
        "reason": "beats the champion",
        "actor": "scheduler",
        "dag_id": "retrain_sales",
        "run_id": "scheduled__2026-11-21",
        "window_end": pd.Timestamp("2026-11-21"),
        "primary_metric": "mae",
        "candidate_value": 1.5,
        "champion_version": "v0",
        "champion_value": 2.0,
        "baseline_value": 3.0,
        "drift": {"psi": 0.1, "shifted": False},
        "metrics": {"mae": 1.5, "mape": float("nan")},
    }
    return history.Decision(**(fields | changes))


def test_a_window_end_given_as_an_iso_string_is_stored_as_a_timestamp(migrated: Any) -> None:
    """The stages pass the run's window as the ISO string RunInfo carries."""
    history.record_decision(migrated, decision(window_end="2026-11-16T06:00:00+00:00"))
    (row,) = history.decisions(migrated)
    assert row["window_end"] == datetime(2026, 11, 16, 6, tzinfo=UTC)


def test_record_decision_stores_every_column(migrated: Any) -> None:
    history.record_decision(migrated, decision())
    (row,) = history.decisions(migrated)
    assert row["event_key"] == "sales/north/v1/promote" and row["decision"] == "promoted"
    assert row["window_end"] == datetime(2026, 11, 21, tzinfo=UTC), "a naive timestamp is UTC"
    assert row["window_end"].utcoffset() == timedelta(0), "timestamps come back in UTC"
    assert row["drift"] == {"psi": 0.1, "shifted": False}
    assert row["metrics"] == {"mae": 1.5, "mape": None}, "JSON has no NaN: stored as null"
    assert (row["candidate_value"], row["champion_value"], row["baseline_value"]) == (1.5, 2.0, 3.0)
    assert row["recorded_at"].tzinfo is not None and row["id"] > 0


def test_record_decision_twice_rewrites_one_row(migrated: Any) -> None:
    history.record_decision(migrated, decision())
    history.record_decision(migrated, decision(reason="retried", candidate_value=1.25, drift=None))
    assert query(f"SELECT count(*) FROM {history.DECISIONS_TABLE}") == [(1,)]
    (row,) = history.decisions(migrated)
    assert (row["reason"], row["candidate_value"], row["drift"]) == ("retried", 1.25, None)


def test_an_unknown_decision_is_refused_by_the_database(migrated: Any) -> None:
    with pytest.raises(StoreError) as caught:
        history.record_decision(migrated, decision(decision="maybe"))
    message = str(caught.value)
    assert caught.value.permanent and caught.value.rule == "decision kind"
    assert "retrain_decisions refused decision 'maybe'" in message
    assert "Fix: record one of promoted, rejected, dry_run, forced, rolled_back" in message
    assert history.decisions(migrated) == [], "rolled back: the connection is usable and nothing was written"


def test_decisions_newest_first_filtered_and_limited(migrated: Any) -> None:
    for n, (pipeline, series) in enumerate([("sales", "north"), ("sales", "south"), ("stock", "north")] * 2):
        history.record_decision(migrated, decision(event_key=f"e{n}", pipeline=pipeline, series=series))
    assert [row["event_key"] for row in history.decisions(migrated)] == ["e5", "e4", "e3", "e2", "e1", "e0"]
    assert [row["event_key"] for row in history.decisions(migrated, pipeline="sales")] == ["e4", "e3", "e1", "e0"]
    assert [row["event_key"] for row in history.decisions(migrated, series="north")] == ["e5", "e3", "e2", "e0"]
    assert [row["event_key"] for row in history.decisions(migrated, "sales", "south")] == ["e4", "e1"]
    assert [row["event_key"] for row in history.decisions(migrated, limit=2)] == ["e5", "e4"]
    history.record_decision(migrated, decision(event_key="e0", reason="retried"))
    assert history.decisions(migrated, limit=1)[0]["event_key"] == "e0", "a rewrite is the newest record"


def test_an_unmigrated_database_says_to_migrate(conn: Any) -> None:
    with pytest.raises(StoreError) as caught:
        history.record_decision(conn, decision())
    assert caught.value.permanent and caught.value.rule == "history schema migrated"
    assert 'relation "retrain_decisions" does not exist' in str(caught.value) and "migrate(conn)" in str(caught.value)


def test_a_lost_connection_is_left_to_retries(migrated: Any) -> None:
    migrated.close()
    with pytest.raises(StoreError) as caught:
        history.decisions(migrated)
    assert not caught.value.permanent and caught.value.rule == "history database reachable"
    assert "reading retrain_decisions failed" in str(caught.value) and "PostgreSQL is up" in str(caught.value)


# -- forecasts -------------------------------------------------------------------------------

ORIGIN = datetime(2026, 11, 1, tzinfo=UTC)


def points(start: float, n: int = 3) -> list[tuple[datetime, float]]:
    return [(ORIGIN + timedelta(days=step), start + step) for step in range(1, n + 1)]


def stored(conn: Any, run_id: str | None = None) -> list[tuple]:
    return [
        (row["run_id"], row["step"], row["target_timestamp"], row["value"], row["model_version"])
        for row in history.forecasts(conn, "sales", "north", run_id)
    ]


def test_write_forecasts_twice_leaves_the_same_rows(migrated: Any) -> None:
    assert history.write_forecasts(migrated, "sales", "north", "v1", "run1", ORIGIN, points(10)) == 3
    first = stored(migrated)
    assert first == [("run1", step, ORIGIN + timedelta(days=step), 10.0 + step, "v1") for step in (1, 2, 3)]
    assert history.write_forecasts(migrated, "sales", "north", "v1", "run1", ORIGIN, points(10)) == 3
    assert stored(migrated) == first
    assert query(f"SELECT count(*) FROM {history.FORECASTS_TABLE}") == [(3,)]


def test_a_retried_run_replaces_its_own_rows_only(migrated: Any) -> None:
    history.write_forecasts(migrated, "sales", "north", "v1", "run1", ORIGIN, points(10, n=3))
    history.write_forecasts(migrated, "sales", "south", "v1", "run2", ORIGIN, points(50, n=1))
    assert history.write_forecasts(migrated, "sales", "north", "v2", "run2", ORIGIN, points(20, n=2)) == 2
    assert len(stored(migrated)) == 5 and len(stored(migrated, "run1")) == 3
    assert history.write_forecasts(migrated, "sales", "north", "v3", "run2", ORIGIN, points(30, n=1)) == 1
    assert [(run, step, value) for run, step, _, value, _ in stored(migrated, "run2")] == [("run2", 1, 31.0)]
    assert len(stored(migrated, "run1")) == 3
    assert len(history.forecasts(migrated, "sales", "south")) == 1


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), float("-inf")])
def test_a_forecast_that_is_not_finite_writes_nothing(migrated: Any, bad: float) -> None:
    history.write_forecasts(migrated, "sales", "north", "v1", "run1", ORIGIN, points(10))
    broken = [*points(20, n=1), (ORIGIN + timedelta(days=2), bad)]
    with pytest.raises(DataValidationError) as caught:
        history.write_forecasts(migrated, "sales", "north", "v2", "run1", ORIGIN, broken)
    assert caught.value.rule == "finite forecasts" and caught.value.permanent
    assert "pipeline 'sales', series 'north': forecast step 2" in str(caught.value)
    assert [value for _, _, _, value, _ in stored(migrated)] == [11.0, 12.0, 13.0], "the old rows stay"


def test_a_failed_write_keeps_the_previous_forecast_even_in_autocommit(migrated: Any) -> None:
    history.write_forecasts(migrated, "sales", "north", "v1", "run1", ORIGIN, points(10))
    migrated.autocommit = True
    with pytest.raises(StoreError) as caught:
        history.write_forecasts(migrated, "sales", "north", "v2", "run1", ORIGIN, [*points(20, n=1), (None, 1.0)])
    assert caught.value.permanent and caught.value.rule == "forecast is written"
    assert "retrain_forecasts failed" in str(caught.value) and "target_timestamp" in str(caught.value)
    assert [value for _, _, _, value, _ in stored(migrated)] == [11.0, 12.0, 13.0], "delete and insert are one unit"
    assert migrated.autocommit, "the caller's setting is restored"


# -- the Airflow side ------------------------------------------------------------------------


@pytest.fixture
def airflow_conn(empty: str, monkeypatch: pytest.MonkeyPatch) -> str:
    monkeypatch.setenv("AIRFLOW_CONN_RETRAIN_HISTORY_TEST", empty)
    monkeypatch.setattr(airflow_history, "_migrated", set())
    return "retrain_history_test"


def test_connect_through_an_airflow_connection(airflow_conn: str) -> None:
    connection = airflow_history.connect(airflow_conn)
    try:
        assert history.migrate(connection) == [1, 2]
        history.record_decision(connection, decision())
        assert [row["event_key"] for row in history.decisions(connection)] == ["sales/north/v1/promote"]
    finally:
        connection.close()


def test_a_missing_connection_fails_at_once_naming_it() -> None:
    with pytest.raises(StoreError) as caught:
        airflow_history.connect("no_such_history_conn")
    assert caught.value.permanent and caught.value.rule == "history connection"
    assert "add Airflow connection 'no_such_history_conn' (postgres) or set RETRAIN_HISTORY_CONN_ID" in str(
        caught.value
    )


def test_a_database_that_does_not_answer_is_left_to_retries(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AIRFLOW_CONN_RETRAIN_HISTORY_DEAD", f"postgresql://postgres@127.0.0.1:{free_port()}/x")
    with pytest.raises(StoreError) as caught:
        airflow_history.connect("retrain_history_dead")
    assert not caught.value.permanent and caught.value.rule == "history database reachable"


def test_opened_migrates_once_per_process_and_closes(airflow_conn: str, monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[list[int]] = []
    real = history.migrate
    monkeypatch.setattr(history, "migrate", lambda connection: calls.append(real(connection)) or calls[-1])
    with airflow_history.opened(airflow_conn) as first:
        assert history.decisions(first) == []
    with airflow_history.opened(airflow_conn) as second:
        history.record_decision(second, decision())
    assert calls == [[1, 2]], "migrated on the first open only"
    assert first.closed and second.closed
    assert tables() == set(TABLES)


def test_history_conn_id_comes_from_the_environment() -> None:
    assert Settings.from_env({}).history_conn_id == "retrain_db"
    assert Settings.from_env({"RETRAIN_HISTORY_CONN_ID": ""}).history_conn_id == "retrain_db"
    assert Settings.from_env({"RETRAIN_HISTORY_CONN_ID": "warehouse"}).history_conn_id == "warehouse"
