"""Build, fit and forecast with the model a spec names.

What gets pickled is the library's own object (a statsmodels results object or a
scikit-learn ``Pipeline``), so anyone with those libraries can load and use it without
this package. statsmodels models are fitted with ``low_memory=True`` and leave their
filter caches empty: the pickle keeps what out-of-sample forecasting needs and drops the
per-observation smoother output and the filter's work space.
"""

from __future__ import annotations

import importlib
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pandas as pd

from include.retrain import features
from include.retrain.errors import ModelError
from include.retrain.spec import ArimaModel, Model, SklearnModel, StlArimaModel

CALENDAR_CATEGORIES = {
    "month": list(range(1, 13)),
    "quarter": [1, 2, 3, 4],
    "weekofyear": list(range(1, 54)),
    "dayofweek": list(range(7)),
}


def _with_freq(series: pd.Series, frequency: str) -> pd.Series:
    """statsmodels needs an explicit frequency to date its forecasts."""
    return series.asfreq(frequency)


def _fit_statsmodels(spec: ArimaModel | StlArimaModel, y: pd.Series) -> Any:
    from statsmodels.tsa.arima.model import ARIMA
    from statsmodels.tsa.forecasting.stl import STLForecast
    from statsmodels.tsa.statespace.sarimax import SARIMAX

    if isinstance(spec, StlArimaModel):
        if len(y) < 2 * spec.period:
            raise ModelError(
                f"stl_arima with period {spec.period} needs at least {2 * spec.period} training periods, got {len(y)}",
                rule="two full seasons",
                fix="lower model.period, or provide more history (window.max_history, split.test_size)",
            )
        model = STLForecast(
            y,
            ARIMA,
            model_kwargs={"order": spec.order, "trend": spec.trend},
            period=spec.period,
            robust=spec.robust,
        )
        return _without_filter_caches(model.fit(fit_kwargs={"low_memory": True}))
    seasonal = spec.seasonal_order or (0, 0, 0, 0)
    cls = ARIMA if spec.kind == "arima" else SARIMAX
    model = cls(y, order=spec.order, seasonal_order=seasonal, trend=spec.trend)
    fitted = model.fit(low_memory=True) if spec.kind == "arima" else model.fit(low_memory=True, disp=False)
    return _without_filter_caches(fitted)


FILTER_CACHES = ("_kalman_filters", "_statespaces", "_representations")


def _without_filter_caches(results: Any) -> Any:
    """Empty the Kalman filter objects statsmodels caches on the fitted state-space model.

    They are the work space of the fit's last filtering pass (statsmodels makes new ones
    whenever it filters again: forecast, ``apply``), yet pickled they are most of the
    artifact: a 5k-point ARIMA drops from
    1.7 MB to 0.7 MB with identical forecasts (``make bench`` checks both, and that a
    plain statsmodels install still loads and forecasts with it).
    """
    inner = getattr(results, "model_result", results)  # STLForecastResults wraps an ARIMA result
    ssm = getattr(getattr(inner, "model", None), "ssm", None)
    for name in FILTER_CACHES:
        cache = getattr(ssm, name, None)
        if isinstance(cache, dict):
            cache.clear()
    return results


def estimator_class(path: str) -> type:
    module_name, _, class_name = path.rpartition(".")
    fix = "set model.estimator to the dotted path of a regressor class, e.g. sklearn.linear_model.Ridge"
    try:
        cls = getattr(importlib.import_module(module_name), class_name)
    except (ImportError, AttributeError) as exc:
        raise ModelError(f"unknown model class {path!r} ({exc})", rule="model class exists", fix=fix) from None
    if not (isinstance(cls, type) and hasattr(cls, "fit") and hasattr(cls, "predict")):
        raise ModelError(f"{path!r} is not an estimator class with fit/predict", rule="estimator", fix=fix)
    return cls


def build_sklearn(spec: SklearnModel) -> Any:
    """A Pipeline: scale the lags, one-hot the calendar, then the estimator."""
    from sklearn.compose import ColumnTransformer
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import OneHotEncoder, StandardScaler

    cls = estimator_class(spec.estimator)
    params = dict(spec.params)
    if "random_state" in getattr(cls, "_get_param_names", list)() and "random_state" not in params:
        params["random_state"] = 0  # a rerun of a run must reproduce the same model, byte for byte
    try:
        estimator = cls(**params)
    except TypeError as exc:
        raise ModelError(
            f"model.params do not fit {spec.estimator}: {exc}",
            rule="estimator params",
            fix="use parameter names the estimator's constructor accepts",
        ) from None
    transformers: list[tuple[str, Any, list[str]]] = [
        ("lags", StandardScaler() if spec.scale else "passthrough", features.lag_columns(spec))
    ]
    if spec.calendar:
        categories = [CALENDAR_CATEGORIES[name] for name in spec.calendar]
        encoder = OneHotEncoder(categories=categories, handle_unknown="ignore")
        transformers.append(("calendar", encoder, list(spec.calendar)))
    return Pipeline([("features", ColumnTransformer(transformers)), ("model", estimator)])


def fit(spec: Model, y: pd.Series, frequency: str) -> tuple[Any, list[str]]:
    """Fit on ``y`` only; return the fitted object and the warnings raised while fitting."""
    fix = "check model settings in the spec (order, seasonal_order, params) against the data"
    with warnings.catch_warnings(record=True) as caught, _as_model_error(f"fitting {spec.kind}", "model fits", fix):
        warnings.simplefilter("always")
        if isinstance(spec, SklearnModel):
            table = features.build_table(y, spec)
            fitted = build_sklearn(spec).fit(table[features.feature_columns(spec)], table["y"])
        else:
            fitted = _fit_statsmodels(spec, _with_freq(y, frequency))
    notes = sorted({f"{w.category.__name__}: {w.message}" for w in caught})
    return fitted, notes


def forecast(fitted: Any, spec: Model, history: pd.Series, steps: int, frequency: str) -> pd.Series:
    """Forecast ``steps`` periods after the end of ``history``."""
    fix = "check the model settings in the spec against the data"
    with _as_model_error(f"forecasting {steps} steps with {spec.kind}", "model forecasts", fix):
        return _forecast(fitted, spec, history, steps, frequency)


@contextmanager
def _as_model_error(doing: str, rule: str, fix: str) -> Iterator[None]:
    """What the numeric libraries raise on settings that do not suit the data, as a ``ModelError``."""
    try:
        yield
    except ModelError:
        raise
    except (ValueError, TypeError, ArithmeticError) as exc:
        raise ModelError(f"{doing} failed: {exc}", rule=rule, fix=fix) from None


def model_spec(manifest: dict[str, Any]) -> Model:
    """A published model's own settings, from its manifest: the spec may have changed since."""
    from pydantic import TypeAdapter, ValidationError

    try:
        return TypeAdapter(Model).validate_python(manifest["model"])
    except ValidationError as exc:
        raise ModelError(
            f"the manifest of {manifest.get('version')} has model settings this version cannot read "
            f"({exc.error_count()} errors)",
            rule="manifest fields",
            fix="promote a model trained with this version of the bundle",
        ) from None


def forecast_published(fitted: Any, manifest: dict[str, Any], steps: int) -> pd.Series:
    """``steps`` periods after the data the published model last saw, from its manifest alone.

    statsmodels results carry their own state; a scikit-learn pipeline reads its lags from
    the last observations recorded in the manifest.
    """
    spec, frequency = model_spec(manifest), manifest["frequency"]
    window = manifest["data_window"]
    if isinstance(spec, SklearnModel):
        observed = manifest["usage"]["last_observations"]
        history = pd.Series(list(observed.values()), index=pd.DatetimeIndex(list(observed), name="timestamp"))
        return forecast(fitted, spec, history.asfreq(frequency), steps, frequency)
    origin = pd.Timestamp(window.get("model_end") or window["last_timestamp"])
    return forecast(fitted, spec, pd.Series([0.0], index=pd.DatetimeIndex([origin])), steps, frequency)


def forecast_from(fitted: Any, spec: Model, history: pd.Series, steps: int, frequency: str) -> pd.Series:
    """Forecast after ``history`` with ``fitted``'s parameters, whatever data it was fitted on.

    A fitted model is its parameters; the state it forecasts from comes from data. This is
    how the champion is scored on the candidate's test window (same history, same window,
    only the learned parameters differ) and how a kept champion forecasts from newer data.
    """
    try:
        return _forecast(_condition(fitted, spec, history, frequency), spec, history, steps, frequency)
    except (ValueError, TypeError, ArithmeticError, AttributeError, IndexError) as exc:
        raise ModelError(
            f"forecasting {steps} steps with the fitted {spec.kind} model from new data failed: {exc}",
            rule="model forecasts",
            fix="the model's settings may no longer match the data (frequency, season length); retrain it",
        ) from None


def _condition(fitted: Any, spec: Model, history: pd.Series, frequency: str) -> Any:
    """The same parameters, filtered through ``history`` (statsmodels ``apply`` without refitting)."""
    if isinstance(spec, SklearnModel):
        return fitted  # lag features are read from the history at forecast time
    y = _with_freq(history, frequency)
    if isinstance(spec, StlArimaModel):
        from statsmodels.tsa.forecasting.stl import STLForecastResults
        from statsmodels.tsa.seasonal import STL

        stl = STL(y, period=spec.period, robust=spec.robust)
        decomposed = stl.fit()
        inner = fitted.model_result.apply(decomposed.trend + decomposed.resid, refit=False)
        return STLForecastResults(stl, decomposed, inner.model, inner, y)
    return fitted.apply(y, refit=False)


def _forecast(fitted: Any, spec: Model, history: pd.Series, steps: int, frequency: str) -> pd.Series:
    index = pd.date_range(history.index[-1], periods=steps + 1, freq=frequency, name="timestamp")[1:]
    if not isinstance(spec, SklearnModel):
        values = fitted.forecast(steps)
        return pd.Series(list(values), index=index, name="forecast")
    path = history.astype("float64").copy()
    for timestamp in index:
        row = features.next_row(path, timestamp, spec)
        path.loc[timestamp] = float(fitted.predict(row[features.feature_columns(spec)])[0])
    return path.loc[index].rename("forecast")
