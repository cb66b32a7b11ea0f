"""The decision history's database, reached through an Airflow connection.

``opened(conn_id)`` is what a task uses: it connects with ``PostgresHook``, brings the
schema up to date once per process, and closes the connection afterwards. A missing
connection fails at once; a database that does not answer is left to Airflow's retries.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from include.retrain import database, history
from include.retrain.errors import StoreError

# Connection ids whose database this process has already migrated: once is enough.
_migrated: set[str] = set()


def connect(conn_id: str) -> Any:
    """A DB-API connection (psycopg 3 or psycopg2, as the provider chooses) to the history database."""
    from airflow.providers.postgres.hooks.postgres import PostgresHook
    from airflow.sdk.exceptions import AirflowNotFoundException  # airflow.exceptions' is the same class in 3.x

    try:
        return PostgresHook(postgres_conn_id=conn_id).get_conn()
    except AirflowNotFoundException:
        raise StoreError(
            f"Airflow connection {conn_id!r} for the decision history is not defined",
            fix=f"add Airflow connection {conn_id!r} (postgres) or set RETRAIN_HISTORY_CONN_ID",
            rule="history connection",
            permanent=True,
        ) from None
    except Exception as exc:
        if not database.is_transient(exc):
            raise
        raise database.as_store_error(
            exc,
            doing=f"connecting to the history database of {conn_id!r}",
            rule="history database reachable",
            fix=database.REACHABLE_FIX,
        ) from exc


@contextmanager
def opened(conn_id: str) -> Iterator[Any]:
    """A migrated connection to the history database, closed on the way out."""
    conn = connect(conn_id)
    try:
        if conn_id not in _migrated:
            history.migrate(conn)
            _migrated.add(conn_id)
        yield conn
    finally:
        conn.close()


def record(conn_id: str, decision: history.Decision) -> None:
    """Write one decision row to the history database behind ``conn_id`` (a retry rewrites it)."""
    with opened(conn_id) as conn:
        history.record_decision(conn, decision)
