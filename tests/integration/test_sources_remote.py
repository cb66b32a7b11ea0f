"""Every source kind through its real client code, against local stand-ins: an HTTP server
speaking FRED's and Tiingo's formats, a real PostgreSQL table, a file in the S3 endpoint."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from pathlib import Path

import boto3
import pandas as pd
import pytest

from include.retrain import http
from include.retrain.errors import SourceError
from include.retrain.sources import Clients, Endpoint, Window, fetch
from include.retrain.spec import PipelineSpec
from include.retrain_airflow import clients as airflow_clients
from tests.helpers import ensure_postgres, free_port, per_worker
from tests.standins import TOKEN, StandIn, serve

FAST = http.RetryPolicy(attempts=3, first_delay=0.01, timeout=5)
END = pd.Timestamp("2026-11-21")
PG_DB = per_worker("retrain_sources_test")


def spec(source: dict, target: str = "x", **changes: object) -> PipelineSpec:
    raw = {
        "name": "src",
        "schedule": "0 6 * * 1",
        "start_date": "2024-01-01",
        "frequency": "MS",
        "source": source,
        "series": [{"name": "s", "target": target}],
        "window": {"max_history": 60},
        "model": {"kind": "arima", "order": [1, 0, 0]},
        "split": {"test_size": 4},
        **changes,
    }
    return PipelineSpec.model_validate(raw)


@pytest.fixture(scope="module")
def standin() -> Iterator[tuple[StandIn, str]]:
    with serve() as running:
        yield running


def remote(base: str, token: str | None = TOKEN) -> Clients:
    return Clients(endpoint=lambda conn_id: Endpoint(base_url=base, token=token), policy=FAST)


# -- FRED through pandas-datareader --------------------------------------------------------


def test_fred_series_in_fredgraph_format(standin: tuple[StandIn, str]) -> None:
    _, base = standin
    frame = fetch(spec({"kind": "datareader", "conn_id": "fred"}, "UNRATE"), "UNRATE", Window(END), remote(base))
    assert list(frame.columns) == ["UNRATE"] and frame.index.name == "timestamp"
    assert frame.index[0] == pd.Timestamp("2015-01-01") and frame.index[-1] == pd.Timestamp("2026-11-01")
    assert frame["UNRATE"].isna().sum() == 1, "FRED's '.' is a missing value"


def test_fred_window_start_limits_the_rows(standin: tuple[StandIn, str]) -> None:
    _, base = standin
    window = Window(END, start=pd.Timestamp("2026-01-01"))
    frame = fetch(spec({"kind": "datareader", "conn_id": "fred"}, "UNRATE"), "UNRATE", window, remote(base))
    assert frame.index.min() == pd.Timestamp("2026-01-01") and len(frame) == 11


@pytest.mark.parametrize(
    ("series", "rule", "words"),
    [
        ("NOPE", "HTTP 404", "is a FRED series id"),
        ("HTMLPAGE", "data, not HTML", "HTML page instead of data"),
        ("EMPTY", "data", "empty body"),
    ],
)
def test_fred_answers_no_retry_can_fix_fail_at_once(
    standin: tuple[StandIn, str], series: str, rule: str, words: str
) -> None:
    state, base = standin
    before = state.hits[series]
    with pytest.raises(SourceError) as caught:
        fetch(spec({"kind": "datareader", "conn_id": "fred"}, series), series, Window(END), remote(base))
    assert caught.value.permanent and caught.value.rule == rule
    assert words in str(caught.value) and "Fix:" in str(caught.value)
    assert state.hits[series] - before == 1, "no wasted retries"


@pytest.mark.parametrize(("series", "attempts"), [("FLAKY", 3), ("LIMITED", 2)])
def test_fred_transient_errors_are_retried_with_backoff(
    standin: tuple[StandIn, str], series: str, attempts: int
) -> None:
    state, base = standin
    frame = fetch(spec({"kind": "datareader", "conn_id": "fred"}, series), series, Window(END), remote(base))
    assert len(frame) > 100 and state.hits[series] == attempts


def test_fred_outage_becomes_a_transient_failure_after_the_retries(standin: tuple[StandIn, str]) -> None:
    state, base = standin
    with pytest.raises(SourceError) as caught:
        fetch(spec({"kind": "datareader", "conn_id": "fred"}, "DOWN"), "DOWN", Window(END), remote(base))
    assert not caught.value.permanent and "failed 3 times, last with HTTP 500" in str(caught.value)
    assert state.hits["DOWN"] == 3


def test_backoff_doubles_and_honours_retry_after() -> None:
    policy = http.RetryPolicy(first_delay=1, max_delay=5)
    assert [policy.delay(n, None) for n in range(4)] == [1, 2, 4, 5]
    assert policy.delay(0, "3") == 3


# -- Tiingo ----------------------------------------------------------------------------------


def tiingo(**changes: object) -> PipelineSpec:
    return spec({"kind": "tiingo", **changes}, "NLS", frequency="B")


def test_tiingo_daily_prices(standin: tuple[StandIn, str]) -> None:
    state, base = standin
    window = Window(pd.Timestamp("2026-11-20 22:00"), start=pd.Timestamp("2026-11-02"))
    frame = fetch(tiingo(), "NLS", window, remote(base))
    assert list(frame.columns) == ["NLS"] and len(frame) == 15
    assert frame.index[-1] == pd.Timestamp("2026-11-20"), "the day's bar counts once the market closed"
    path, params = state.requests[-1]
    assert path == "/tiingo/daily/NLS/prices" and params["startDate"] == "2026-11-02"


@pytest.mark.parametrize(
    ("token", "ticker", "rule", "words"),
    [
        ("wrong", "NLS", "HTTP 401", "connections add tiingo_default"),
        (TOKEN, "ZZZZ", "HTTP 404", "'ZZZZ' is a ticker Tiingo knows"),
    ],
)
def test_tiingo_refusals_fail_at_once(
    standin: tuple[StandIn, str], token: str, ticker: str, rule: str, words: str
) -> None:
    _, base = standin
    with pytest.raises(SourceError) as caught:
        fetch(tiingo(), ticker, Window(END), remote(base, token=token))
    assert caught.value.permanent and caught.value.rule == rule and words in str(caught.value)


def test_tiingo_without_a_token_says_how_to_add_one(standin: tuple[StandIn, str]) -> None:
    _, base = standin
    with pytest.raises(SourceError, match=r"has no API token.*connections add tiingo_default"):
        fetch(tiingo(), "NLS", Window(END), remote(base, token=None))


# -- Airflow connections, PostgreSQL, S3 -----------------------------------------------------


def test_missing_connection_fails_at_once_naming_it() -> None:
    with pytest.raises(SourceError, match=r"connection 'no_such_conn' is not defined.*connections add") as caught:
        airflow_clients.endpoint("no_such_conn")
    assert caught.value.permanent


def test_http_connection_gives_base_url_and_token(monkeypatch: pytest.MonkeyPatch) -> None:
    conn = {"conn_type": "http", "host": "127.0.0.1", "port": 8000, "schema": "http", "password": "t0k"}
    monkeypatch.setenv("AIRFLOW_CONN_TIINGO_TEST", json.dumps(conn))
    assert airflow_clients.endpoint("tiingo_test") == Endpoint(base_url="http://127.0.0.1:8000", token="t0k")


@pytest.fixture(scope="module")
def warehouse() -> Iterator[str]:
    """A real PostgreSQL database with a fixture table of daily sales."""
    ensure_postgres()
    psql = ["psql", "-h", "127.0.0.1", "-U", "postgres", "-v", "ON_ERROR_STOP=1", "-qc"]
    subprocess.run([*psql, f"DROP DATABASE IF EXISTS {PG_DB} WITH (FORCE)"], check=True)
    subprocess.run([*psql, f"CREATE DATABASE {PG_DB}"], check=True)
    rows = ",".join(f"('2026-10-{d:02d}', {100 + d}.5)" for d in range(1, 31))
    table = f"CREATE TABLE sales (day date, amount double precision); INSERT INTO sales VALUES {rows}"
    subprocess.run(
        ["psql", "-h", "127.0.0.1", "-U", "postgres", "-d", PG_DB, "-v", "ON_ERROR_STOP=1", "-qc", table], check=True
    )
    yield json.dumps({"conn_type": "postgres", "host": "127.0.0.1", "port": 5432, "login": "postgres", "schema": PG_DB})
    subprocess.run([*psql, f"DROP DATABASE IF EXISTS {PG_DB} WITH (FORCE)"], check=True)


def pg(**source: object) -> PipelineSpec:
    return spec({"kind": "postgres", "conn_id": "warehouse", "time_column": "day", **source}, "amount", frequency="D")


@pytest.mark.parametrize(
    "source",
    [
        {"table": "sales"},
        {"query": "SELECT day, amount FROM sales WHERE day >= %(start)s AND day < %(end)s"},
    ],
    ids=["table", "query"],
)
def test_postgres_window_is_passed_as_parameters(warehouse: str, monkeypatch: pytest.MonkeyPatch, source: dict) -> None:
    monkeypatch.setenv("AIRFLOW_CONN_WAREHOUSE", warehouse)
    window = Window(pd.Timestamp("2026-10-21"), start=pd.Timestamp("2026-10-11"))
    frame = fetch(pg(**source), "amount", window, airflow_clients.from_airflow())
    assert list(frame.index) == list(pd.date_range("2026-10-11", "2026-10-20"))
    assert frame["amount"].iloc[0] == 111.5


def test_postgres_missing_table_fails_at_once(warehouse: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AIRFLOW_CONN_WAREHOUSE", warehouse)
    with pytest.raises(SourceError, match=r'the query on .warehouse. failed: relation "nope" does not exist') as caught:
        fetch(pg(table="nope"), "amount", Window(END), airflow_clients.from_airflow())
    assert caught.value.permanent and caught.value.rule == "SQL runs"


def test_postgres_down_is_left_to_retries(monkeypatch: pytest.MonkeyPatch) -> None:
    dead = {"conn_type": "postgres", "host": "127.0.0.1", "port": free_port(), "login": "x", "schema": "x"}
    monkeypatch.setenv("AIRFLOW_CONN_WAREHOUSE", json.dumps(dead))
    with pytest.raises(SourceError, match="did not answer") as caught:
        fetch(pg(table="sales"), "amount", Window(END), airflow_clients.from_airflow())
    assert not caught.value.permanent


def test_postgres_spec_rejects_a_query_without_window_parameters() -> None:
    with pytest.raises(ValueError, match="%\\(start\\)s and %\\(end\\)s"):
        pg(query="SELECT * FROM sales")


def test_file_in_s3_through_s3hook(s3_endpoint: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    conn = {"conn_type": "aws", "login": "k", "password": "s", "extra": {"endpoint_url": s3_endpoint}}
    monkeypatch.setenv("AIRFLOW_CONN_AWS_FILES", json.dumps(conn))
    s3 = boto3.client(
        "s3", endpoint_url=s3_endpoint, aws_access_key_id="k", aws_secret_access_key="s", region_name="us-east-1"
    )
    s3.create_bucket(Bucket="drops")
    s3.put_object(Bucket="drops", Key="in/sales.csv", Body=b"day,amount\n2026-10-01,1.5\n2026-10-02,2.5\n")
    source = {"kind": "file", "path": "s3://drops/in/sales.csv", "time_column": "day", "conn_id": "aws_files"}
    frame = fetch(spec(source, "amount", frequency="D"), "amount", Window(END), airflow_clients.from_airflow())
    assert frame["amount"].tolist() == [1.5, 2.5]
