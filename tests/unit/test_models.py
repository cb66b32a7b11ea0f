"""Models: every kind fits a small series, forecasts dated steps, and survives a pickle round trip."""

from __future__ import annotations

import io
import pickle
import subprocess
import sys
import textwrap

import numpy as np
import pandas as pd
import pytest
from pydantic import TypeAdapter

from include.retrain import models
from include.retrain.errors import ModelError
from include.retrain.spec import Model

FREQ = "W-SAT"
MODEL = TypeAdapter(Model)
RIDGE = {"kind": "sklearn", "estimator": "sklearn.linear_model.Ridge"}

KINDS = {
    "arima": {"kind": "arima", "order": [1, 1, 0]},
    "sarimax": {"kind": "sarimax", "order": [1, 0, 0], "seasonal_order": [1, 0, 0, 4], "trend": "c"},
    "stl_arima": {"kind": "stl_arima", "order": [1, 1, 0], "period": 4},
    "sklearn": {**RIDGE, "lags": 4, "calendar": ["month"]},
}


def model(raw: dict) -> Model:
    return MODEL.validate_python(raw)


@pytest.fixture(scope="module", params=KINDS.values(), ids=KINDS.keys())
def fitted(request):
    """(spec, y, fitted object), fitted once per kind for the whole module."""
    index = pd.date_range("2020-01-04", periods=40, freq=FREQ, name="timestamp")
    t = np.arange(40)
    y = pd.Series(20 + 0.3 * t + 2 * np.sin(2 * np.pi * t / 4), index=index, name="y")
    spec = model(request.param)
    fitted, _ = models.fit(spec, y, FREQ)
    return spec, y, fitted


def pickled_modules(data: bytes) -> set[str]:
    """Every module a pickle imports while loading."""
    seen: set[str] = set()

    class Recorder(pickle.Unpickler):
        def find_class(self, module: str, name: str):
            seen.add(module)
            return super().find_class(module, name)

    Recorder(io.BytesIO(data)).load()
    return seen


def test_forecast_has_steps_dated_after_history(fitted):
    spec, y, obj = fitted
    forecast = models.forecast(obj, spec, y, 5, FREQ)
    assert list(forecast.index) == list(pd.date_range("2020-10-10", periods=5, freq=FREQ))
    assert forecast.name == "forecast"
    assert forecast.index.name == "timestamp"
    assert np.isfinite(forecast.to_numpy()).all()


def test_forecast_is_close_to_the_series_level(fitted):
    """A smooth trend-plus-cycle series: no kind should forecast wildly off its last level."""
    spec, y, obj = fitted
    forecast = models.forecast(obj, spec, y, 4, FREQ)
    assert (forecast - y.iloc[-1]).abs().max() < 6


def test_pickled_model_forecasts_identically(fitted):
    spec, y, obj = fitted
    loaded = pickle.loads(pickle.dumps(obj, protocol=5))
    pd.testing.assert_series_equal(models.forecast(loaded, spec, y, 6, FREQ), models.forecast(obj, spec, y, 6, FREQ))


def test_pickle_needs_only_model_libraries(fitted):
    """Consumers load model.pkl without this package: no class of `include` may be in it."""
    _, _, obj = fitted
    modules = pickled_modules(pickle.dumps(obj, protocol=5))
    assert not [m for m in modules if m == "include" or m.startswith("include.")]


def test_fit_returns_warnings_as_strings(fitted):
    spec, y, _ = fitted
    _, notes = models.fit(spec, y, FREQ)
    assert isinstance(notes, list)
    assert all(isinstance(n, str) and ": " in n for n in notes)
    assert notes == sorted(set(notes))


def test_random_walk_forecast_repeats_the_last_value(y):
    spec = model({"kind": "arima", "order": [0, 1, 0]})
    fitted, _ = models.fit(spec, y, FREQ)
    np.testing.assert_allclose(models.forecast(fitted, spec, y, 3, FREQ), [y.iloc[-1]] * 3)


def test_sklearn_forecast_is_recursive(y):
    """On an exact ramp, a linear model on lag_1 continues the ramp by feeding its predictions back."""
    ramp = pd.Series(np.arange(30.0), index=y.index[:30], name="y")
    spec = model({"kind": "sklearn", "estimator": "sklearn.linear_model.LinearRegression", "lags": 1})
    fitted, _ = models.fit(spec, ramp, FREQ)
    np.testing.assert_allclose(models.forecast(fitted, spec, ramp, 4, FREQ), [30.0, 31.0, 32.0, 33.0])


def test_sklearn_pickle_is_a_pipeline_loadable_without_include(y, tmp_path):
    spec = model(KINDS["sklearn"])
    fitted, _ = models.fit(spec, y, FREQ)
    (tmp_path / "model.pkl").write_bytes(pickle.dumps(fitted, protocol=5))
    script = textwrap.dedent(
        """
        import importlib.util, pickle, sys
        import pandas as pd
        assert importlib.util.find_spec("include") is None, "include must not be importable here"
        model = pickle.load(open("model.pkl", "rb"))
        row = pd.DataFrame({"lag_1": [1.0], "lag_2": [2.0], "lag_3": [3.0], "lag_4": [4.0], "month": [5]})
        model.predict(row)
        assert not [m for m in sys.modules if m.split(".")[0] == "include"]
        print(type(model).__module__, type(model).__name__, [name for name, _ in model.steps])
        """
    )
    done = subprocess.run([sys.executable, "-I", "-c", script], cwd=tmp_path, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "sklearn.pipeline Pipeline ['features', 'model']"


def test_build_sklearn_pipeline_steps():
    pipeline = models.build_sklearn(model({**RIDGE, "params": {"alpha": 3.0}, "calendar": ["quarter"]}))
    transformers = {name: columns for name, _, columns in pipeline.named_steps["features"].transformers}
    assert transformers == {"lags": ["lag_1", "lag_2", "lag_3", "lag_4"], "calendar": ["quarter"]}
    assert pipeline.named_steps["model"].alpha == 3.0


def test_build_sklearn_without_scaling_passes_lags_through():
    pipeline = models.build_sklearn(model({**RIDGE, "scale": False}))
    assert pipeline.named_steps["features"].transformers == [
        ("lags", "passthrough", ["lag_1", "lag_2", "lag_3", "lag_4"])
    ]


def test_estimator_class_resolves_dotted_path():
    from sklearn.linear_model import Ridge

    assert models.estimator_class("sklearn.linear_model.Ridge") is Ridge


@pytest.mark.parametrize(
    ("path", "rule"),
    [
        ("sklearn.linear_model.Rdge", "model class exists"),
        ("sklearn.linear_modl.Ridge", "model class exists"),
        ("nosuchpackage.Regressor", "model class exists"),
        ("os.path", "estimator"),
        ("builtins.dict", "estimator"),
    ],
    ids=["misspelt class", "misspelt module", "missing package", "not a class", "class without fit"],
)
def test_unknown_model_class_is_a_model_error(path, rule):
    with pytest.raises(ModelError) as caught:
        models.estimator_class(path)
    assert caught.value.rule == rule
    assert repr(path) in str(caught.value)
    assert "Fix: set model.estimator to the dotted path of a regressor class" in str(caught.value)


def test_unknown_model_class_fails_fit(y):
    with pytest.raises(
        ModelError, match=r"unknown model class 'sklearn.linear_model.Rdge'.*\[rule: model class exists\]"
    ):
        models.fit(model({**RIDGE, "estimator": "sklearn.linear_model.Rdge"}), y, FREQ)


BAD_FITS = {
    "misspelt estimator param": ({**RIDGE, "params": {"alpah": 1.0}}, "estimator params", "alpah"),
    "estimator param of wrong type": ({**RIDGE, "params": {"alpha": "strong"}}, "model fits", "alpha"),
    "negative estimator param": ({**RIDGE, "params": {"alpha": -1.0}}, "model fits", "alpha"),
    "arima constant with differencing": ({"kind": "arima", "order": [1, 1, 0], "trend": "c"}, "model fits", "trend"),
    "more lags than rows": ({**RIDGE, "lags": 60}, "model fits", ""),
}


@pytest.mark.parametrize(("raw", "rule", "detail"), BAD_FITS.values(), ids=BAD_FITS.keys())
def test_bad_model_settings_are_model_errors(y, raw, rule, detail):
    with pytest.raises(ModelError) as caught:
        models.fit(model(raw), y, FREQ)
    assert caught.value.rule == rule
    assert detail in str(caught.value)
    assert "Fix: " in str(caught.value)
    assert caught.value.permanent


@pytest.mark.parametrize("period", [40, 41, 200])
def test_stl_period_longer_than_the_series_is_a_model_error(y, period):
    with pytest.raises(ModelError, match="two full seasons"):
        models.fit(model({"kind": "stl_arima", "order": [1, 0, 0], "period": period}), y, FREQ)


def _statsmodels_fit(kind: str, y: pd.Series):
    """The same model fitted straight through statsmodels (low_memory, caches as statsmodels leaves them)."""
    from statsmodels.tsa.arima.model import ARIMA
    from statsmodels.tsa.forecasting.stl import STLForecast

    if kind == "stl_arima":
        return STLForecast(y, ARIMA, model_kwargs={"order": (1, 1, 1)}, period=52).fit(fit_kwargs={"low_memory": True})
    return ARIMA(y, order=(1, 1, 1)).fit(low_memory=True)


@pytest.mark.parametrize("kind", ["arima", "stl_arima"])
def test_statsmodels_pickle_drops_filter_work_space_and_forecasts_the_same(kind):
    """The published pickle leaves the Kalman filter caches empty: a fraction of the size, same forecasts."""
    index = pd.date_range("2000-01-01", periods=600, freq=FREQ, name="timestamp")
    t = np.arange(600)
    noise = np.random.default_rng(1).normal(0, 0.3, 600)
    y = pd.Series(300 + 0.05 * t + 3 * np.sin(2 * np.pi * t / 52) + noise, index=index)
    raw = {"kind": kind, "order": [1, 1, 1]} | ({"period": 52} if kind == "stl_arima" else {})
    slim = pickle.dumps(models.fit(model(raw), y, FREQ)[0])
    reference = _statsmodels_fit(kind, y)
    assert len(slim) < 0.7 * len(pickle.dumps(reference))
    restored = pickle.loads(slim)
    np.testing.assert_allclose(np.asarray(restored.forecast(10)), np.asarray(reference.forecast(10)), rtol=1e-9)
    history = y.iloc[:400]
    if kind == "arima":  # the gate's use: the same parameters filtered through other data
        np.testing.assert_allclose(
            np.asarray(restored.apply(history, refit=False).forecast(3)),
            np.asarray(reference.apply(history, refit=False).forecast(3)),
            rtol=1e-9,
        )
