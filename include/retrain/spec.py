"""Pipeline specs: one YAML file per pipeline, validated before any DAG is built.

A spec is parsed at DAG-parse time, so this module imports only ``yaml`` and
``pydantic`` (both already loaded by Airflow) and never pandas or a model library.
Validation errors name the file, the field and what is allowed, so a broken spec shows
up as a readable DAG import error without touching the other pipelines.
"""

from __future__ import annotations

import re
from datetime import date
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from croniter import croniter
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from include.retrain.errors import SpecError

NAME_PATTERN = r"^[a-z][a-z0-9_]{0,62}$"
DOTTED_PATH = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)+$")
CALENDAR_FEATURES = ("month", "quarter", "weekofyear", "dayofweek")
METRICS = ("mae", "rmse", "mape")
STATSMODELS_DATASETS = ("co2", "macrodata", "sunspots", "nile")
# pandas 3 offset aliases for regular series (checked here without importing pandas).
_ANCHOR = "(-(JAN|FEB|MAR|APR|MAY|JUN|JUL|AUG|SEP|OCT|NOV|DEC))?"
FREQUENCY = re.compile(
    rf"^[1-9]?[0-9]*(D|B|h|min|s|W(-(MON|TUE|WED|THU|FRI|SAT|SUN))?|MS|ME|BMS|BME|QS{_ANCHOR}|QE{_ANCHOR}"
    rf"|YS{_ANCHOR}|YE{_ANCHOR})$"
)

NonNegInt = Annotated[int, Field(ge=0, le=60)]


class _Strict(BaseModel):
    """Unknown keys are typos: reject them instead of silently ignoring them."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class StatsmodelsSource(_Strict):
    """A real data set that ships inside statsmodels: needs no network."""

    kind: Literal["statsmodels"]
    dataset: Literal[STATSMODELS_DATASETS]  # type: ignore[valid-type]


IDENTIFIER = r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)?$"


class FileSource(_Strict):
    """A CSV or Parquet file: a local path, or ``s3://bucket/key`` read through S3Hook."""

    kind: Literal["file"]
    path: str
    time_column: str = "timestamp"
    conn_id: str = Field(default="aws_default", description="for s3:// paths")


class DataReaderSource(_Strict):
    """A keyless pandas-datareader reader; each series' ``target`` is the reader's series id."""

    kind: Literal["datareader"]
    reader: str = Field(default="fred", pattern=r"^[a-z\-]+$", description="fred, famafrench, oecd, eurostat, ...")
    conn_id: str | None = Field(default=None, description="optional connection whose host replaces the base URL")
    incremental: bool = True


class TiingoSource(_Strict):
    """Daily prices from Tiingo's REST API; each series' ``target`` is a ticker."""

    kind: Literal["tiingo"]
    conn_id: str = Field(default="tiingo_default", description="HTTP connection; its password is the API token")
    column: Literal["adjClose", "close", "open", "high", "low", "volume", "adjVolume"] = "adjClose"
    incremental: bool = True


class PostgresSource(_Strict):
    """A table or a parameterised query through PostgresHook; the window is passed as parameters."""

    kind: Literal["postgres"]
    conn_id: str
    table: str | None = Field(default=None, pattern=IDENTIFIER)
    query: str | None = Field(default=None, description="uses %(start)s and %(end)s for the window")
    time_column: str = Field(default="timestamp", pattern=IDENTIFIER)
    incremental: bool = True

    @model_validator(mode="after")
    def _one_of(self) -> PostgresSource:
        if (self.table is None) == (self.query is None):
            raise ValueError("set exactly one of table or query")
        if self.query is not None and ("%(end)s" not in self.query or "%(start)s" not in self.query):
            raise ValueError("query must filter on the window with %(start)s and %(end)s parameters")
        return self


Source = Annotated[
    StatsmodelsSource | FileSource | DataReaderSource | TiingoSource | PostgresSource, Field(discriminator="kind")
]
INCREMENTAL_KINDS = ("datareader", "tiingo", "postgres")


class Series(_Strict):
    name: str = Field(pattern=NAME_PATTERN)
    target: str = Field(min_length=1, description="column of the source holding the values")


class Window(_Strict):
    max_history: int | None = Field(default=None, ge=10, description="train on at most this many most recent periods")


class Validation(_Strict):
    min_rows: int = Field(default=30, ge=3)
    max_null_fraction: float = Field(default=0.1, ge=0.0, lt=1.0)
    min_value: float | None = None
    max_value: float | None = None


class Preprocess(_Strict):
    fill: Literal["interpolate", "ffill"] = "interpolate"
    max_gap: int = Field(default=4, ge=0, description="longest run of missing periods to fill")


class ArimaModel(_Strict):
    """statsmodels ARIMA or SARIMAX, fitted by state-space maximum likelihood."""

    kind: Literal["arima", "sarimax"]
    order: tuple[NonNegInt, NonNegInt, NonNegInt]
    seasonal_order: tuple[NonNegInt, NonNegInt, NonNegInt, NonNegInt] | None = None
    trend: Literal["n", "c", "t", "ct"] | None = None

    @field_validator("seasonal_order")
    @classmethod
    def _season_length(cls, value: tuple[int, int, int, int] | None) -> Any:
        if value is not None and any(value[:3]) and value[3] < 2:
            raise ValueError("the 4th element (season length) must be >= 2 when P, D or Q is set")
        return value


class StlArimaModel(_Strict):
    """STL removes the seasonal cycle, ARIMA forecasts the rest (statsmodels STLForecast).

    Fast for long seasons (52 weeks) where a seasonal ARIMA needs a huge state vector.
    """

    kind: Literal["stl_arima"]
    order: tuple[NonNegInt, NonNegInt, NonNegInt]
    trend: Literal["n", "c", "t", "ct"] | None = None
    period: int = Field(ge=2, le=366)
    robust: bool = False


class SklearnModel(_Strict):
    """Any scikit-learn regressor, trained on lag and calendar features."""

    kind: Literal["sklearn"]
    estimator: str = Field(description="dotted path, e.g. sklearn.linear_model.Ridge")
    params: dict[str, Any] = Field(default_factory=dict)
    lags: int = Field(default=4, ge=1, le=400)
    calendar: list[Literal[CALENDAR_FEATURES]] = Field(default_factory=list)  # type: ignore[valid-type]
    scale: bool = True

    @field_validator("estimator")
    @classmethod
    def _dotted(cls, value: str) -> str:
        if not DOTTED_PATH.match(value):
            raise ValueError("must be a dotted path to a class, e.g. sklearn.linear_model.Ridge")
        return value


Model = Annotated[ArimaModel | StlArimaModel | SklearnModel, Field(discriminator="kind")]


class Split(_Strict):
    test_size: int = Field(ge=1, description="the last N periods are the test window")
    refit_on_full: bool = True


class Evaluation(_Strict):
    metrics: list[Literal[METRICS]] = Field(default_factory=lambda: list(METRICS))  # type: ignore[valid-type]
    primary_metric: Literal[METRICS] = "mae"  # type: ignore[valid-type]
    baseline: Literal["naive", "seasonal_naive"] = "naive"
    season_length: int | None = Field(default=None, ge=2)
    backtest_folds: int = Field(default=0, ge=0, le=20, description="walk-forward folds of test_size; 0: off")

    @model_validator(mode="after")
    def _season(self) -> Evaluation:
        if self.baseline == "seasonal_naive" and self.season_length is None:
            raise ValueError("baseline 'seasonal_naive' needs season_length")
        if self.primary_metric not in self.metrics:
            raise ValueError(f"primary_metric {self.primary_metric!r} must be one of metrics")
        return self


class Promotion(_Strict):
    """When a candidate replaces the champion (the model consumers load)."""

    margin: float = Field(
        default=0.0,
        ge=-0.5,
        lt=1.0,
        description="fraction of the champion's primary metric the candidate must improve on; "
        "0: at least as good; negative: tolerate that much regression",
    )
    beat_baseline: bool = Field(default=True, description="the candidate must also beat the naive baseline")


class Drift(_Strict):
    """Compare each run's newest data with the champion's training data."""

    action: Literal["off", "warn", "block"] = "warn"
    transform: Literal["level", "diff", "pct_change"] = Field(
        default="diff", description="compare changes, not levels: a trend alone is not drift"
    )
    window: int | None = Field(default=None, ge=2, description="newest periods compared; default split.test_size")
    psi_threshold: float = Field(default=0.25, gt=0.0)
    ks_alpha: float = Field(default=0.01, gt=0.0, lt=1.0)
    bins: int = Field(default=10, ge=2, le=50)


class Forecast(_Strict):
    """What the batch_predict DAG writes for each new champion."""

    horizon: int | None = Field(default=None, ge=1, le=1000, description="periods ahead; default split.test_size")


class PipelineSpec(_Strict):
    name: str = Field(pattern=NAME_PATTERN)
    description: str = ""
    owner: str = "ml-platform"
    schedule: str = Field(description="cron expression; each run covers one interval")
    timezone: str = Field(default="UTC", pattern=r"^[A-Za-z_]+(/[A-Za-z_\-]+)*$", description="of the schedule")
    start_date: date
    frequency: str = Field(pattern=FREQUENCY.pattern, description="pandas offset alias, e.g. D, W-SAT, MS, QS")
    source: Source
    series: list[Series] = Field(min_length=1)
    window: Window = Window()
    validation: Validation = Validation()
    preprocess: Preprocess = Preprocess()
    model: Model
    split: Split
    evaluation: Evaluation = Evaluation()
    promotion: Promotion = Promotion()
    drift: Drift = Drift()
    forecast: Forecast = Forecast()
    store_prefix: str = Field(default="models", pattern=r"^[A-Za-z0-9_\-]+(/[A-Za-z0-9_\-]+)*$")
    tags: list[str] = Field(default_factory=list)
    queue: str = Field(
        default="default",
        pattern=r"^[A-Za-z0-9_.\-]{1,64}$",
        description="the Celery queue its tasks go to (RETRAIN_EXECUTOR=celery): pin a heavy pipeline to "
        "the workers that consume it; the LocalExecutor ignores it",
    )

    @field_validator("schedule")
    @classmethod
    def _cron(cls, value: str) -> str:
        if len(value.split()) != 5 or not croniter.is_valid(value):
            raise ValueError("must be a valid 5-field cron expression, e.g. '0 6 * * 1'")
        return value

    @field_validator("series")
    @classmethod
    def _unique_series(cls, value: list[Series]) -> list[Series]:
        names = [s.name for s in value]
        if len(set(names)) != len(names):
            raise ValueError(f"series names must be unique, got {names}")
        return value

    @model_validator(mode="after")
    def _history(self) -> PipelineSpec:
        if self.source.kind in ("tiingo", "datareader") and not self.window.max_history:
            raise ValueError(f"a {self.source.kind} source needs window.max_history (how much history to fetch)")
        return self

    @model_validator(mode="after")
    def _sizes(self) -> PipelineSpec:
        lags = self.model.lags if isinstance(self.model, SklearnModel) else 0
        if self.validation.min_rows <= self.split.test_size + lags:
            raise ValueError(
                f"validation.min_rows ({self.validation.min_rows}) must exceed split.test_size "
                f"({self.split.test_size}) plus model lags ({lags}), or nothing is left to train on"
            )
        return self

    @property
    def drift_window(self) -> int:
        return self.drift.window or self.split.test_size

    @property
    def horizon(self) -> int:
        return self.forecast.horizon or self.split.test_size

    def required_connection(self) -> str | None:
        """The Airflow connection this pipeline cannot run without, if any."""
        source = self.source
        if isinstance(source, TiingoSource | PostgresSource):
            return source.conn_id
        if isinstance(source, FileSource) and source.path.startswith("s3://"):
            return source.conn_id
        return source.conn_id if isinstance(source, DataReaderSource) else None

    def series_by_name(self, name: str) -> Series:
        for series in self.series:
            if series.name == name:
                return series
        raise SpecError(
            f"no series named {name!r}",
            fix=f"use one of {[s.name for s in self.series]}",
            pipeline=self.name,
        )


def _describe(error: dict[str, Any]) -> str:
    field = ".".join(str(part) for part in error["loc"]) or "(top level)"
    message = error["msg"]
    if error["type"] == "literal_error":
        message = f"got {error['input']!r}; allowed: {error['ctx']['expected']}"
    elif error["type"] == "union_tag_invalid":
        field = f"{field}.{error['ctx']['discriminator'].strip(chr(39))}"
        message = f"got {error['ctx']['tag']!r}; allowed: {error['ctx']['expected_tags']}"
    elif error["type"] == "extra_forbidden":
        message = "unknown field (typo?)"
    elif error["type"] == "string_pattern_mismatch" and field == "frequency":
        message = f"got {error['input']!r}; allowed: a pandas offset alias such as D, W-SAT, MS, QS, YS, h"
    elif error["type"] == "missing":
        message = "required field is missing"
    return f"field '{field}': {message}"


def load_spec(path: Path) -> PipelineSpec:
    """Read and validate one spec file; every problem is reported, not just the first."""
    try:
        raw = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise SpecError(f"{path}: cannot read YAML ({exc})", fix="fix the file's syntax") from None
    if not isinstance(raw, dict):
        raise SpecError(f"{path}: expected a mapping at the top level", fix="see docs/pipelines.md for the spec format")
    try:
        spec = PipelineSpec.model_validate(raw)
    except ValidationError as exc:
        problems = "; ".join(_describe(e) for e in exc.errors())
        raise SpecError(
            f"{path}: {problems}",
            fix="correct the field(s) named above; docs/pipelines.md lists every spec field",
            pipeline=str(raw.get("name") or path.stem),
        ) from None
    if spec.name != path.stem:
        raise SpecError(
            f"{path}: field 'name' is {spec.name!r} but the file is {path.name}",
            fix=f"rename the file to {spec.name}.yaml or set name: {path.stem}",
            pipeline=spec.name,
        )
    return spec


def spec_names(directory: Path) -> list[str]:
    """Names of the pipelines declared in ``directory``, sorted."""
    return sorted(p.stem for p in directory.glob("*.yaml"))


def valid_specs(directory: Path) -> list[PipelineSpec]:
    """Every spec in ``directory`` that validates; a broken one is its own DAG's import error."""
    specs = []
    for name in spec_names(directory):
        try:
            specs.append(load_spec(directory / f"{name}.yaml"))
        except SpecError:
            continue
    return specs
