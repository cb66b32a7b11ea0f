"""Read a pipeline's source for the run's data window.

Sources return the rows as the source has them (no sorting, no de-duplication) so that
``validate`` sees, and reports, what is really there. The index is a ``DatetimeIndex``
named ``timestamp`` in naive UTC.

What needs Airflow (connections, PostgresHook, S3Hook) reaches this module as
``Clients``, built by the Airflow side, so the library stays importable without it.
"""

from __future__ import annotations

import io
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

import pandas as pd
import requests

from include.retrain import http
from include.retrain.errors import SourceError
from include.retrain.spec import (
    INCREMENTAL_KINDS,
    DataReaderSource,
    FileSource,
    PipelineSpec,
    PostgresSource,
    StatsmodelsSource,
    TiingoSource,
)

TIINGO_URL = "https://api.tiingo.com"
FRED_URL = "https://fred.stlouisfed.org"
EARLIEST = pd.Timestamp("1900-01-01")


@dataclass(frozen=True)
class Endpoint:
    """What a connection says about an HTTP service: where it is, and the secret to use."""

    base_url: str | None = None
    token: str | None = None


@dataclass
class Clients:
    """Access to the outside world, supplied by the caller (the Airflow side in a task)."""

    endpoint: Callable[[str], Endpoint] = lambda conn_id: Endpoint()
    sql: Callable[[str, str, dict], pd.DataFrame] | None = None  # conn_id, query, params
    read_object: Callable[[str, str], bytes] | None = None  # conn_id, s3:// URI
    session: requests.Session = field(default_factory=requests.Session)
    policy: http.RetryPolicy = field(default_factory=http.RetryPolicy)


@dataclass(frozen=True)
class Window:
    """Rows with ``start <= timestamp < end`` (``start`` None: from the beginning)."""

    end: pd.Timestamp
    start: pd.Timestamp | None = None


def naive_utc(moment: datetime | pd.Timestamp) -> pd.Timestamp:
    stamp = pd.Timestamp(moment)
    return stamp.tz_convert("UTC").tz_localize(None) if stamp.tzinfo else stamp


# -- package data sets -------------------------------------------------------------------


def _co2() -> pd.DataFrame:
    from statsmodels import datasets

    return datasets.co2.load_pandas().data


def _macrodata() -> pd.DataFrame:
    from statsmodels import datasets

    data = datasets.macrodata.load_pandas().data
    quarters = pd.PeriodIndex.from_fields(year=data["year"].astype(int), quarter=data["quarter"].astype(int), freq="Q")
    return data.drop(columns=["year", "quarter"]).set_index(quarters.to_timestamp(how="start"))


def _yearly(loader: str, year_column: str) -> Callable[[], pd.DataFrame]:
    def load() -> pd.DataFrame:
        from statsmodels import datasets

        data = getattr(datasets, loader).load_pandas().data
        years = pd.to_datetime(data[year_column].astype(int).astype(str), format="%Y")
        return data.drop(columns=[year_column]).set_index(years)

    return load


DATASETS: dict[str, Callable[[], pd.DataFrame]] = {
    "co2": _co2,
    "macrodata": _macrodata,
    "sunspots": _yearly("sunspots", "YEAR"),
    "nile": _yearly("nile", "year"),
}


# -- files -------------------------------------------------------------------------------


def _read_file(source: FileSource, clients: Clients) -> pd.DataFrame:
    fix = f"check source.path ({source.path}) and source.time_column ({source.time_column})"
    parquet = source.path.endswith(".parquet")
    try:
        if source.path.startswith("s3://"):
            if clients.read_object is None:
                raise SourceError("no S3 client to read the file with", fix="run the pipeline through Airflow")
            data = io.BytesIO(clients.read_object(source.conn_id, source.path))
            frame = pd.read_parquet(data) if parquet else pd.read_csv(data)
        else:
            frame = pd.read_parquet(Path(source.path)) if parquet else pd.read_csv(Path(source.path))
    except (OSError, ValueError) as exc:
        raise SourceError(f"cannot read {source.path}: {exc}", fix=fix, rule="source readable") from None
    if source.time_column not in frame.columns:
        raise SourceError(
            f"{source.path} has no time column {source.time_column!r} (columns: {list(frame.columns)})",
            fix=fix,
            rule="time column present",
        )
    return _indexed(frame, source.time_column, source.path, fix)


def _indexed(frame: pd.DataFrame, column: str, what: str, fix: str) -> pd.DataFrame:
    try:
        # utc=True: offsets that change (a local-time export across a clock change) still
        # parse; naive stamps are taken as UTC. Everything downstream is naive UTC.
        index = pd.to_datetime(frame.pop(column), utc=True).dt.tz_localize(None)
    except (ValueError, TypeError) as exc:
        raise SourceError(f"{what}: time column does not parse ({exc})", fix=fix, rule="timestamps parse") from None
    return frame.set_index(pd.DatetimeIndex(index))


# -- remote sources ----------------------------------------------------------------------


def _fred(source: DataReaderSource, series_id: str, window: Window, clients: Clients) -> pd.DataFrame:
    """pandas-datareader's FRED reader, with our retry policy and a configurable base URL."""
    from pandas_datareader.fred import FredReader

    base = (clients.endpoint(source.conn_id).base_url if source.conn_id else None) or FRED_URL

    class Reader(FredReader):
        @property
        def url(self) -> str:
            return f"{base.rstrip('/')}/graph/fredgraph.csv"

        def _get_response(self, url, params=None, headers=None):
            return http.get(
                self.session,
                url,
                what=f"FRED series {series_id}",
                params=params,
                headers=headers,
                policy=clients.policy,
                fixes={404: f"check that {series_id!r} is a FRED series id"},
            )

    start = window.start if window.start is not None else EARLIEST  # the reader's default is 5 years ago
    reader = Reader(series_id, start=start, end=window.end, session=clients.session)
    try:
        frame = reader.read()
    except (ValueError, KeyError, IndexError) as exc:
        raise SourceError(
            f"FRED series {series_id} did not parse as FRED's CSV ({exc})", fix="check the series id", rule="data"
        ) from None
    return frame.rename_axis("timestamp")


def _datareader(source: DataReaderSource, series_id: str, window: Window, clients: Clients) -> pd.DataFrame:
    if source.reader == "fred":
        return _fred(source, series_id, window, clients)
    from pandas_datareader import data as pdr
    from pandas_datareader._utils import RemoteDataError

    try:
        return pdr.DataReader(series_id, source.reader, start=window.start, end=window.end, session=clients.session)
    except NotImplementedError as exc:
        raise SourceError(f"reader {source.reader!r}: {exc}", fix="use a keyless reader such as fred") from None
    except RemoteDataError as exc:
        raise SourceError(f"{source.reader} {series_id}: {exc}", fix="check the id", permanent=False) from None


def _tiingo(source: TiingoSource, ticker: str, window: Window, clients: Clients) -> pd.DataFrame:
    endpoint = clients.endpoint(source.conn_id)
    if not endpoint.token:
        raise SourceError(
            f"connection {source.conn_id!r} has no API token",
            fix=f"airflow connections add {source.conn_id} --conn-type http --conn-password <token>",
            rule="credentials",
        )
    base = (endpoint.base_url or TIINGO_URL).rstrip("/")
    params = {"endDate": window.end.strftime("%Y-%m-%d"), "format": "json"}  # inclusive; cut below
    if window.start is not None:
        params["startDate"] = window.start.strftime("%Y-%m-%d")
    response = http.get(
        clients.session,
        f"{base}/tiingo/daily/{ticker}/prices",
        what=f"Tiingo prices of {ticker}",
        params=params,
        headers={"Authorization": f"Token {endpoint.token}", "Content-Type": "application/json"},
        policy=clients.policy,
        fixes={
            401: f"the Tiingo token in connection {source.conn_id!r} is missing or wrong: set it with "
            f"airflow connections add {source.conn_id} --conn-type http --conn-password <token>",
            404: f"check that {ticker!r} is a ticker Tiingo knows",
        },
    )
    try:
        rows = response.json()
    except ValueError:
        raise SourceError(f"Tiingo answered non-JSON for {ticker}", fix="check the base URL", rule="data") from None
    if not isinstance(rows, list):
        raise SourceError(f"Tiingo answered {str(rows)[:200]}", fix="check the ticker and the token", rule="data")
    if not rows:
        return pd.DataFrame({source.column: pd.Series(dtype="float64")}, index=pd.DatetimeIndex([], name="timestamp"))
    frame = pd.DataFrame(rows)
    if "date" not in frame.columns or source.column not in frame.columns:
        raise SourceError(
            f"Tiingo rows lack 'date' or {source.column!r} (got {list(frame.columns)})",
            fix="set source.column to one of Tiingo's price fields",
            rule="data",
        )
    frame = _indexed(frame, "date", f"Tiingo {ticker}", "check the ticker")
    frame.index = frame.index.normalize()  # Tiingo stamps each trading day at midnight UTC
    return frame.rename(columns={source.column: ticker})[[ticker]]


def _postgres(source: PostgresSource, window: Window, clients: Clients) -> pd.DataFrame:
    if clients.sql is None:
        raise SourceError("no SQL client", fix="run the pipeline through Airflow")
    if source.query is not None:
        query = source.query
    else:
        table = ".".join(f'"{part}"' for part in source.table.split("."))
        query = f'SELECT * FROM {table} WHERE "{source.time_column}" >= %(start)s AND "{source.time_column}" < %(end)s'
    params = {"start": (window.start or EARLIEST).to_pydatetime(), "end": window.end.to_pydatetime()}
    frame = clients.sql(source.conn_id, query, params)
    if source.time_column not in frame.columns:
        raise SourceError(
            f"the query returned no column {source.time_column!r} (columns: {list(frame.columns)})",
            fix="set source.time_column to the query's time column",
            rule="time column present",
        )
    return _indexed(frame, source.time_column, f"postgres {source.conn_id}", "check the time column's type")


# -- entry point -------------------------------------------------------------------------


def fetch(spec: PipelineSpec, target: str, window: Window, clients: Clients) -> pd.DataFrame:
    """The source's rows for ``window`` (every row before ``window.end`` for package data)."""
    source = spec.source
    if isinstance(source, StatsmodelsSource):
        frame = DATASETS[source.dataset]()
    elif isinstance(source, FileSource):
        frame = _read_file(source, clients)
    elif isinstance(source, DataReaderSource):
        frame = _datareader(source, target, window, clients)
    elif isinstance(source, TiingoSource):
        frame = _tiingo(source, target, window, clients)
    else:
        frame = _postgres(source, window, clients)
    index = pd.DatetimeIndex(frame.index)
    if index.tz is not None:
        index = index.tz_convert("UTC").tz_localize(None)
    frame = frame.set_axis(index.rename("timestamp"))
    frame = frame[frame.index < window.end]
    if window.start is not None:
        frame = frame[frame.index >= window.start]
    columns = [target] if target in frame.columns else list(frame.columns)
    return frame[columns]


def history_start(spec: PipelineSpec, end: pd.Timestamp) -> pd.Timestamp | None:
    """Where a full fetch starts: ``max_history`` periods before the window's end."""
    if not spec.window.max_history:
        return None
    return pd.date_range(end=end, periods=spec.window.max_history + 1, freq=spec.frequency)[0]


def trim_history(frame: pd.DataFrame, spec: PipelineSpec) -> pd.DataFrame:
    """Keep the ``max_history`` most recent periods (counted from the newest row)."""
    if not spec.window.max_history or not len(frame):
        return frame
    newest = frame.index.max()
    start = pd.date_range(end=newest, periods=spec.window.max_history, freq=spec.frequency)[0]
    return frame[frame.index >= start]


def load(spec: PipelineSpec, target: str, window_end: datetime, clients: Clients | None = None) -> pd.DataFrame:
    """Rows strictly before ``window_end``: a backfill sees only what existed then.

    With ``window.max_history`` only that many periods up to the newest row are kept,
    so validation judges exactly the rows training will use.
    """
    end = naive_utc(window_end)
    remote = spec.source.kind in INCREMENTAL_KINDS  # package data and files are read whole
    frame = fetch(
        spec, target, Window(end=end, start=history_start(spec, end) if remote else None), clients or Clients()
    )
    return trim_history(frame, spec)
