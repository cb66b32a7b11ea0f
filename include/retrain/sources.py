"""Read a pipeline's source up to the end of the run's data window.

Sources return the rows as the source has them (no sorting, no de-duplication) so that
``validate`` sees, and reports, what is really there. The index is a ``DatetimeIndex``
named ``timestamp``.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from pathlib import Path

import pandas as pd

from include.retrain.errors import SourceError
from include.retrain.spec import FileSource, PipelineSpec, StatsmodelsSource


def _co2() -> pd.DataFrame:
    import statsmodels.api as sm

    return sm.datasets.co2.load_pandas().data


def _macrodata() -> pd.DataFrame:
    import statsmodels.api as sm

    data = sm.datasets.macrodata.load_pandas().data
    quarters = pd.PeriodIndex.from_fields(year=data["year"].astype(int), quarter=data["quarter"].astype(int), freq="Q")
    return data.drop(columns=["year", "quarter"]).set_index(quarters.to_timestamp(how="start"))


def _yearly(loader: str, year_column: str) -> Callable[[], pd.DataFrame]:
    def load() -> pd.DataFrame:
        import statsmodels.api as sm

        data = getattr(sm.datasets, loader).load_pandas().data
        years = pd.to_datetime(data[year_column].astype(int).astype(str), format="%Y")
        return data.drop(columns=[year_column]).set_index(years)

    return load


DATASETS: dict[str, Callable[[], pd.DataFrame]] = {
    "co2": _co2,
    "macrodata": _macrodata,
    "sunspots": _yearly("sunspots", "YEAR"),
    "nile": _yearly("nile", "year"),
}


def _read_file(source: FileSource) -> pd.DataFrame:
    path = Path(source.path)
    fix = f"check source.path ({path}) and source.time_column ({source.time_column})"
    try:
        frame = pd.read_parquet(path) if path.suffix == ".parquet" else pd.read_csv(path)
    except (OSError, ValueError) as exc:
        raise SourceError(f"cannot read {path}: {exc}", fix=fix, rule="source readable") from None
    if source.time_column not in frame.columns:
        raise SourceError(
            f"{path} has no time column {source.time_column!r} (columns: {list(frame.columns)})",
            fix=fix,
            rule="time column present",
        )
    try:
        # utc=True: offsets that change (a local-time export across a clock change) still
        # parse; naive stamps are taken as UTC. Everything downstream is naive UTC.
        index = pd.to_datetime(frame.pop(source.time_column), utc=True).dt.tz_localize(None)
    except (ValueError, TypeError) as exc:
        raise SourceError(f"{path}: time column does not parse ({exc})", fix=fix, rule="timestamps parse") from None
    return frame.set_index(pd.DatetimeIndex(index))


def load(spec: PipelineSpec, target: str, window_end: datetime) -> pd.DataFrame:
    """Rows strictly before ``window_end``: a backfill sees only what existed then.

    With ``window.max_history`` only that many periods up to the newest row are kept,
    so validation judges exactly the rows training will use.
    """
    source = spec.source
    frame = DATASETS[source.dataset]() if isinstance(source, StatsmodelsSource) else _read_file(source)
    index = pd.DatetimeIndex(frame.index)
    if index.tz is not None:
        index = index.tz_convert("UTC").tz_localize(None)
    frame = frame.set_axis(index.rename("timestamp"))
    end = pd.Timestamp(window_end)
    end = end.tz_convert("UTC").tz_localize(None) if end.tzinfo else end
    frame = frame[frame.index < end]
    if spec.window.max_history and len(frame):
        newest = frame.index.max()
        start = pd.date_range(end=newest, periods=spec.window.max_history, freq=spec.frequency)[0]
        frame = frame[frame.index >= start]
    columns = [target] if target in frame.columns else list(frame.columns)
    return frame[columns]
