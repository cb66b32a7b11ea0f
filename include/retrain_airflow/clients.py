"""The library's ``Clients`` made from Airflow: connections, PostgresHook, S3Hook.

A missing connection or a SQL error no retry can fix fails at once, naming the
connection and the command that creates it; a database that does not answer is left
to Airflow's retries.
"""

from __future__ import annotations

from typing import Any

import pandas as pd

from include.retrain.database import is_transient
from include.retrain.errors import SourceError
from include.retrain.sources import Clients, Endpoint
from include.retrain_airflow.store import S3Store

ADD = "airflow connections add {conn_id} --conn-type {kind} ..."


def _connection(conn_id: str, kind: str) -> Any:
    from airflow.sdk import Connection
    from airflow.sdk.exceptions import AirflowNotFoundException, AirflowRuntimeError

    try:
        return Connection.get(conn_id)
    except (AirflowNotFoundException, AirflowRuntimeError):
        raise SourceError(
            f"Airflow connection {conn_id!r} is not defined",
            fix=f"create it: {ADD.format(conn_id=conn_id, kind=kind)} (see docs/pipelines.md, data sources)",
            rule="connection exists",
        ) from None


def endpoint(conn_id: str) -> Endpoint:
    conn = _connection(conn_id, "http")
    host = conn.host or ""
    if host and "://" not in host:
        host = f"{conn.schema or 'https'}://{host}"
    if host and conn.port:
        host = f"{host}:{conn.port}"
    return Endpoint(base_url=host or None, token=conn.password or None)


def _root(exc: BaseException) -> BaseException:
    while exc.__cause__ is not None or getattr(exc, "orig", None) is not None:
        exc = getattr(exc, "orig", None) or exc.__cause__
    return exc


def sql(conn_id: str, query: str, params: dict) -> pd.DataFrame:
    """Run the query through PostgresHook; the driver's own error decides retry or not."""
    from airflow.providers.postgres.hooks.postgres import PostgresHook

    _connection(conn_id, "postgres")
    try:
        return PostgresHook(postgres_conn_id=conn_id).get_df(query, parameters=params)
    except Exception as exc:
        root = _root(exc)
        first_line = str(root).strip().splitlines()[0] if str(root).strip() else type(root).__name__
        if is_transient(root):  # could not connect, lost the connection: worth a retry
            raise SourceError(
                f"PostgreSQL behind {conn_id!r} did not answer: {first_line}",
                fix=f"check that the database is up and connection {conn_id!r} points at it",
                rule="database reachable",
                permanent=False,
            ) from None
        raise SourceError(
            f"the query on {conn_id!r} failed: {first_line}",
            fix="fix source.table / source.query in the spec (the table must exist, the SQL must run)",
            rule="SQL runs",
        ) from None


def read_object(conn_id: str, uri: str) -> bytes:
    bucket, _, key = uri.removeprefix("s3://").partition("/")
    return S3Store(bucket, conn_id).read(key)


def from_airflow() -> Clients:
    return Clients(endpoint=endpoint, sql=sql, read_object=read_object)
