"""PostgreSQL on a DB-API connection: one transaction per call, and what its errors mean.

Plain Python on psycopg2 or psycopg 3 (``PostgresHook.get_conn()`` returns the latter
when SQLAlchemy 2 and psycopg are installed). A driver error leaves here as a
``StoreError``: transient when a retry may cure it (``is_transient``, the one rule the
history table and the PostgreSQL data source share), permanent otherwise.
"""

from __future__ import annotations

import importlib
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from functools import cache
from typing import Any

from include.retrain.errors import StoreError

# SQLSTATE codes that deserve their own fix.
UNDEFINED_TABLE = "42P01"
CHECK_VIOLATION = "23514"
REACHABLE_FIX = (
    "check that PostgreSQL is up and the connection points at it (host, port, database, login); "
    "Airflow retries the task"
)


@cache
def driver_errors() -> tuple[type[BaseException], ...]:
    """The base ``Error`` of each PostgreSQL driver installed: psycopg2 and/or psycopg 3."""
    found = []
    for name in ("psycopg2", "psycopg"):
        try:
            found.append(importlib.import_module(name).Error)
        except ImportError:
            continue
    return tuple(found)


def is_transient(exc: BaseException) -> bool:
    """A lost or refused connection, a timeout, a deadlock: a retry may cure it."""
    return any(cls.__name__ in ("OperationalError", "InterfaceError") for cls in type(exc).__mro__)


def sqlstate(exc: BaseException) -> str | None:
    """The SQLSTATE code of a driver error (psycopg 3 calls it ``sqlstate``, psycopg2 ``pgcode``)."""
    return getattr(exc, "sqlstate", None) or getattr(exc, "pgcode", None)


def as_store_error(exc: BaseException, *, doing: str, rule: str, fix: str) -> StoreError:
    """A driver error as a ``StoreError``: transient when a retry may cure it, else permanent."""
    text = str(exc).strip()
    first_line = text.splitlines()[0] if text else type(exc).__name__
    if is_transient(exc):
        return StoreError(
            f"{doing} failed: PostgreSQL did not answer ({first_line})",
            fix=REACHABLE_FIX,
            rule="history database reachable",
            permanent=False,
        )
    if sqlstate(exc) == UNDEFINED_TABLE:
        return StoreError(
            f"{doing} failed: {first_line}",
            fix="run include.retrain.history.migrate(conn) first (include.retrain_airflow.history.opened does it)",
            rule="history schema migrated",
            permanent=True,
        )
    return StoreError(f"{doing} failed: {first_line}", fix=fix, rule=rule, permanent=True)


@contextmanager
def transaction(conn: Any, *, doing: str, rule: str, fix: str) -> Iterator[Any]:
    """One transaction in UTC: commit on success, roll back and raise a ``StoreError`` on error."""
    autocommit = False
    try:
        autocommit = bool(getattr(conn, "autocommit", False))
        if autocommit:  # our transaction must span every statement (and hold the advisory lock)
            conn.autocommit = False
        with conn.cursor() as cur:
            cur.execute("SET LOCAL TIME ZONE 'UTC'")  # timestamps come back in UTC, naive ones go in as UTC
            yield cur
        conn.commit()
    except driver_errors() as exc:
        rollback(conn)
        raise as_store_error(exc, doing=doing, rule=rule, fix=fix) from exc
    except BaseException:
        rollback(conn)
        raise
    finally:
        if autocommit:
            with suppress(Exception):  # a dead connection: the error above already says so
                conn.autocommit = True


def rollback(conn: Any) -> None:
    with suppress(Exception):  # the connection is gone; the original error is the one to report
        conn.rollback()


def rows(cur: Any) -> list[dict[str, Any]]:
    names = [column[0] for column in cur.description]
    return [dict(zip(names, row, strict=True)) for row in cur.fetchall()]


def select(conn: Any, table: str, query: str, params: list[Any], fix: str) -> list[dict[str, Any]]:
    """Rows of one read-only query, as dicts, in its own transaction."""
    with transaction(conn, doing=f"reading {table}", rule=f"{table} is readable", fix=fix) as cur:
        cur.execute(query, params)
        return rows(cur)
