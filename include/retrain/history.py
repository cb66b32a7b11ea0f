"""Every model decision, and the forecasts served from it, in PostgreSQL.

S3 holds the models; this database holds the story: which version was promoted or
rejected, why, against which champion, and what the batch-prediction DAG forecast with it.
Plain Python on a DB-API connection: psycopg2 or psycopg 3 (``PostgresHook.get_conn()``
returns the latter when SQLAlchemy 2 and psycopg are installed). Every function runs in its
own transaction and commits it, or rolls it back and raises a ``StoreError`` that names
the table, the rule and the fix.

The schema moves forward only, through ``MIGRATIONS``: ``migrate`` applies the missing
steps under an advisory lock, so two processes starting together cannot race, and refuses
to touch a database that a newer bundle has already migrated further.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass
from datetime import datetime
from typing import Any

from include.retrain.database import CHECK_VIOLATION, driver_errors, select, sqlstate, transaction
from include.retrain.errors import DataValidationError, StoreError
from include.retrain.timestamps import as_utc

SCHEMA_TABLE = "retrain_schema_migrations"
DECISIONS_TABLE = "retrain_decisions"
FORECASTS_TABLE = "retrain_forecasts"
DECISION_KINDS = ("promoted", "rejected", "dry_run", "forced", "rolled_back")
# pg_advisory_xact_lock key shared by every process migrating this schema: b"retrainH" as a bigint.
MIGRATION_LOCK_KEY = int.from_bytes(b"retrainH", "big")


@dataclass(frozen=True)
class Migration:
    """One forward step of the schema; never edit a released one, append a new version."""

    version: int
    description: str
    sql: str


MIGRATIONS: list[Migration] = [
    Migration(
        1,
        "decision history",
        f"""
        CREATE TABLE IF NOT EXISTS {DECISIONS_TABLE} (
            id bigserial PRIMARY KEY,
            event_key text NOT NULL UNIQUE,
            recorded_at timestamptz NOT NULL DEFAULT now(),
            pipeline text NOT NULL,
            series text NOT NULL,
            version text NOT NULL,
            dag_id text,
            run_id text,
            window_end timestamptz,
            decision text NOT NULL CHECK (decision IN ({", ".join(f"'{kind}'" for kind in DECISION_KINDS)})),
            reason text NOT NULL,
            primary_metric text,
            candidate_value double precision,
            champion_version text,
            champion_value double precision,
            baseline_value double precision,
            drift jsonb,
            metrics jsonb,
            actor text NOT NULL
        );
        CREATE INDEX IF NOT EXISTS {DECISIONS_TABLE}_pipeline_series_recorded_at
            ON {DECISIONS_TABLE} (pipeline, series, recorded_at);
        """,
    ),
    Migration(
        2,
        "batch forecasts",
        f"""
        CREATE TABLE IF NOT EXISTS {FORECASTS_TABLE} (
            pipeline text NOT NULL,
            series text NOT NULL,
            model_version text NOT NULL,
            run_id text NOT NULL,
            origin timestamptz,
            target_timestamp timestamptz NOT NULL,
            step int NOT NULL,
            value double precision NOT NULL,
            written_at timestamptz DEFAULT now(),
            PRIMARY KEY (pipeline, series, run_id, step)
        );
        """,
    ),
]


# -- migrations ------------------------------------------------------------------------------


def migrate(conn: Any) -> list[int]:
    """Bring the schema up to ``MIGRATIONS``; return the versions applied now (empty when current).

    One transaction under an advisory lock: a second process waits, then finds nothing to do.
    A database migrated by a newer bundle is left untouched: this code would not know its tables.
    """
    known = max(m.version for m in MIGRATIONS)
    with transaction(
        conn,
        doing=f"migrating the history schema ({SCHEMA_TABLE})",
        rule="history schema migration",
        fix="read the SQL error, repair the database by hand, then rerun; no step was recorded",
    ) as cur:
        cur.execute(f"SELECT pg_advisory_xact_lock({MIGRATION_LOCK_KEY})")
        cur.execute(
            f"CREATE TABLE IF NOT EXISTS {SCHEMA_TABLE} ("
            " version int PRIMARY KEY,"
            " description text NOT NULL,"
            " applied_at timestamptz NOT NULL DEFAULT now())"
        )
        cur.execute(f"SELECT version FROM {SCHEMA_TABLE}")
        applied = {row[0] for row in cur.fetchall()}
        if applied and max(applied) > known:
            raise StoreError(
                f"the history database is at schema version {max(applied)} ({SCHEMA_TABLE}), "
                f"this bundle knows versions up to {known}; nothing was changed",
                fix=f"upgrade the bundle on this machine to the one that wrote version {max(applied)}; "
                "never downgrade the schema by hand",
                rule="history schema version",
                permanent=True,
            )
        done = []
        for step in sorted(MIGRATIONS, key=lambda m: m.version):
            if step.version in applied:
                continue
            cur.execute(step.sql)
            cur.execute(
                f"INSERT INTO {SCHEMA_TABLE} (version, description) VALUES (%s, %s)", (step.version, step.description)
            )
            done.append(step.version)
    return done


# -- decisions -----------------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class Decision:
    """One decision about one model version: a row of ``retrain_decisions``.

    ``event_key`` identifies the event, not the attempt: a retried task passes the same key
    and rewrites its row instead of adding a second one.
    """

    event_key: str
    pipeline: str
    series: str
    version: str
    decision: str  # one of DECISION_KINDS; the database's CHECK has the last word
    reason: str
    actor: str
    dag_id: str | None = None
    run_id: str | None = None
    window_end: datetime | str | None = None
    primary_metric: str | None = None
    candidate_value: float | None = None
    champion_version: str | None = None
    champion_value: float | None = None
    baseline_value: float | None = None
    drift: dict[str, Any] | None = None
    metrics: dict[str, Any] | None = None


_JSON_COLUMNS = ("drift", "metrics")
_FLOAT_COLUMNS = ("candidate_value", "champion_value", "baseline_value")


def _finite_or_null(value: Any) -> Any:
    """JSON has no NaN or infinity: such a metric is stored as null."""
    if isinstance(value, dict):
        return {str(key): _finite_or_null(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_finite_or_null(item) for item in value]
    if hasattr(value, "item") and callable(value.item):  # numpy scalar
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def _json(value: dict[str, Any] | None) -> str | None:
    if value is None:
        return None
    return json.dumps(_finite_or_null(value), default=str, allow_nan=False)


def _decision_row(decision: Decision) -> dict[str, Any]:
    row = asdict(decision)
    for name in _JSON_COLUMNS:
        row[name] = _json(row[name])
    for name in _FLOAT_COLUMNS:
        row[name] = None if row[name] is None else float(row[name])
    row["window_end"] = None if row["window_end"] is None else as_utc(row["window_end"])
    return row


def record_decision(conn: Any, decision: Decision) -> None:
    """Write the decision, or rewrite it when its ``event_key`` is already there (a retried task)."""
    row = _decision_row(decision)
    columns = list(row)
    values = ", ".join(f"%({name})s::jsonb" if name in _JSON_COLUMNS else f"%({name})s" for name in columns)
    updates = ", ".join(f"{name} = EXCLUDED.{name}" for name in columns if name != "event_key")
    with transaction(
        conn,
        doing=f"recording decision {decision.decision!r} for {decision.pipeline}/{decision.series} "
        f"version {decision.version} in {DECISIONS_TABLE}",
        rule="decision is recorded",
        fix="fix the caller: every NOT NULL column needs a value",
    ) as cur:
        try:
            cur.execute(
                f"INSERT INTO {DECISIONS_TABLE} ({', '.join(columns)}) VALUES ({values}) "
                f"ON CONFLICT (event_key) DO UPDATE SET {updates}, recorded_at = now()",
                row,
            )
        except driver_errors() as exc:
            if sqlstate(exc) == CHECK_VIOLATION:
                raise StoreError(
                    f"{DECISIONS_TABLE} refused decision {decision.decision!r} for "
                    f"{decision.pipeline}/{decision.series} version {decision.version}",
                    fix=f"record one of {', '.join(DECISION_KINDS)}",
                    rule="decision kind",
                    pipeline=decision.pipeline,
                    series=decision.series,
                    permanent=True,
                ) from exc
            raise


def decisions(
    conn: Any, pipeline: str | None = None, series: str | None = None, limit: int = 200
) -> list[dict[str, Any]]:
    """The newest ``limit`` decisions, newest first, optionally of one pipeline and/or series."""
    where, params = [], []
    if pipeline is not None:
        where.append("pipeline = %s")
        params.append(pipeline)
    if series is not None:
        where.append("series = %s")
        params.append(series)
    clause = f"WHERE {' AND '.join(where)} " if where else ""
    query = f"SELECT * FROM {DECISIONS_TABLE} {clause}ORDER BY recorded_at DESC, id DESC LIMIT %s"
    return select(conn, DECISIONS_TABLE, query, [*params, int(limit)], fix="pass a limit of 0 or more")


# -- forecasts -------------------------------------------------------------------------------


def write_forecasts(
    conn: Any,
    pipeline: str,
    series: str,
    model_version: str,
    run_id: str,
    origin: datetime | None,
    points: list[tuple[datetime, float]],
) -> int:
    """Replace the run's forecast of one series with ``points`` (step 1 is the first); return rows written.

    A retried run rewrites its own rows and leaves other runs' forecasts alone. Nothing is
    written when a value is not a finite number: a NaN forecast is a broken model, not data.
    """
    rows = []
    start = None if origin is None else as_utc(origin)
    for step, (target, value) in enumerate(points, start=1):
        number = float(value)
        if not math.isfinite(number):
            raise DataValidationError(
                f"forecast step {step} ({target}) of model version {model_version} is {number}, "
                f"not a finite number; nothing was written to {FORECASTS_TABLE}",
                fix="check the model's forecast (a diverged fit or a missing input) before writing it",
                pipeline=pipeline,
                series=series,
                rule="finite forecasts",
            )
        when = None if target is None else as_utc(target)  # None: the NOT NULL column refuses it below
        rows.append((pipeline, series, model_version, run_id, start, when, step, number))
    with transaction(
        conn,
        doing=f"writing the forecast of {pipeline}/{series} run {run_id!r} to {FORECASTS_TABLE}",
        rule="forecast is written",
        fix="fix the caller: every forecast point needs a timestamp and a value",
    ) as cur:
        cur.execute(
            f"DELETE FROM {FORECASTS_TABLE} WHERE pipeline = %s AND series = %s AND run_id = %s",
            (pipeline, series, run_id),
        )
        if rows:
            cur.executemany(
                f"INSERT INTO {FORECASTS_TABLE} "
                "(pipeline, series, model_version, run_id, origin, target_timestamp, step, value) "
                "VALUES (%s, %s, %s, %s, %s, %s, %s, %s)",
                rows,
            )
    return len(rows)


def forecasts(conn: Any, pipeline: str, series: str, run_id: str | None = None) -> list[dict[str, Any]]:
    """The stored forecasts of one series (of one run if given), by run then step."""
    clause, params = "", [pipeline, series]
    if run_id is not None:
        clause, params = " AND run_id = %s", [*params, run_id]
    query = f"SELECT * FROM {FORECASTS_TABLE} WHERE pipeline = %s AND series = %s{clause} ORDER BY run_id, step"
    return select(conn, FORECASTS_TABLE, query, params, fix="read the SQL error; the query takes no user SQL")


# -- what the Models page reads ----------------------------------------------------------------


def newest_decisions(conn: Any) -> list[dict[str, Any]]:
    """The newest decision of every series: one query, whatever the table's size (index-ordered)."""
    query = (
        f"SELECT DISTINCT ON (pipeline, series) * FROM {DECISIONS_TABLE} "
        "ORDER BY pipeline, series, recorded_at DESC, id DESC"
    )
    return select(conn, DECISIONS_TABLE, query, [], fix="read the SQL error; the query takes no user SQL")


def latest_forecast(conn: Any, pipeline: str, series: str) -> list[dict[str, Any]]:
    """The forecast of the newest ``batch_predict`` run for one series, by step (empty: none yet)."""
    query = (
        f"SELECT * FROM {FORECASTS_TABLE} WHERE pipeline = %s AND series = %s AND run_id = ("
        f"SELECT run_id FROM {FORECASTS_TABLE} WHERE pipeline = %s AND series = %s "
        "ORDER BY written_at DESC, run_id DESC LIMIT 1) ORDER BY step"
    )
    params = [pipeline, series, pipeline, series]
    return select(conn, FORECASTS_TABLE, query, params, fix="read the SQL error; the query takes no user SQL")
