"""Pipeline specs: shipped specs load, and every broken spec is refused with a readable message."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from include.retrain.errors import SpecError
from include.retrain.spec import PipelineSpec, SklearnModel, StlArimaModel, load_spec, spec_names


def write_spec(directory: Path, raw: object, stem: str = "tiny") -> Path:
    path = directory / f"{stem}.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return path


def spec_error(directory: Path, raw: object, stem: str = "tiny") -> SpecError:
    with pytest.raises(SpecError) as caught:
        load_spec(write_spec(directory, raw, stem))
    return caught.value


def test_shipped_spec_names(pipelines_dir):
    assert spec_names(pipelines_dir) == ["co2_weekly", "stocks_daily", "us_macro"]


def test_co2_weekly_spec_loads(pipelines_dir):
    spec = load_spec(pipelines_dir / "co2_weekly.yaml")
    assert spec.name == "co2_weekly"
    assert isinstance(spec.model, StlArimaModel)
    assert spec.model.period == 52
    assert [s.name for s in spec.series] == ["co2"]
    assert spec.evaluation.baseline == "seasonal_naive"
    assert spec.evaluation.season_length == 52


def test_us_macro_spec_loads(pipelines_dir):
    spec = load_spec(pipelines_dir / "us_macro.yaml")
    assert isinstance(spec.model, SklearnModel)
    assert spec.model.estimator == "sklearn.linear_model.Ridge"
    assert [(s.name, s.target) for s in spec.series] == [("realgdp", "realgdp"), ("unemp", "unemp")]
    assert spec.frequency == "QS"


def test_valid_tiny_spec_round_trips_through_yaml(tmp_path, spec_dict):
    spec = load_spec(write_spec(tmp_path, spec_dict()))
    assert spec == PipelineSpec.model_validate(spec_dict())
    assert spec.model.order == (1, 0, 0)


def test_defaults_are_applied(tmp_path, spec_dict):
    spec = load_spec(write_spec(tmp_path, spec_dict(window=None, evaluation=None, store_prefix=None)))
    assert spec.window.max_history is None
    assert spec.evaluation.metrics == ["mae", "rmse", "mape"]
    assert spec.evaluation.primary_metric == "mae"
    assert spec.store_prefix == "models"
    assert spec.queue == "default"


def test_spec_is_frozen(spec):
    with pytest.raises(ValueError, match="frozen"):
        spec.name = "other"


BAD_SPECS = {
    "unknown model kind": ({"model": {"kind": "xgboost"}}, "model.kind", "'xgboost'"),
    "arima order with 2 elements": ({"model": {"order": [1, 1]}}, "model.arima.order", "missing"),
    "arima order with 4 elements": ({"model": {"order": [1, 0, 0, 1]}}, "model.arima.order", "at most 3"),
    "negative arima order": ({"model": {"order": [1, -1, 0]}}, "model.arima.order.1", "greater than or equal to 0"),
    "non-integer arima order": ({"model": {"order": [1, 0.5, 0]}}, "model.arima.order.1", "integer"),
    "string arima order": ({"model": {"order": "1,1,1"}}, "model.arima.order", "tuple"),
    "seasonal order without season length": (
        {"model": {"kind": "sarimax", "seasonal_order": [1, 0, 0, 1]}},
        "model.sarimax.seasonal_order",
        "season length",
    ),
    "misspelt top-level field": ({"schedle": "0 6 * * 1"}, "'schedle'", "unknown field (typo?)"),
    "misspelt nested field": ({"validation": {"min_row": 5}}, "validation.min_row", "unknown field (typo?)"),
    "missing required field": ({"schedule": None}, "'schedule'", "required field is missing"),
    "wrong fill literal": ({"preprocess": {"fill": "bfill"}}, "preprocess.fill", "got 'bfill'; allowed"),
    "wrong metric literal": ({"evaluation": {"metrics": ["mae", "r2"]}}, "evaluation.metrics.1", "got 'r2'"),
    "unknown statsmodels dataset": (
        {"source": {"kind": "statsmodels", "dataset": "iris", "path": None}},
        "source.statsmodels.dataset",
        "got 'iris'",
    ),
    "estimator without module": (
        {"model": {"kind": "sklearn", "estimator": "Ridge", "order": None}},
        "model.sklearn.estimator",
        "dotted path",
    ),
    "cron with 4 fields": ({"schedule": "0 6 * *"}, "'schedule'", "5-field cron"),
    "cron with 6 fields": ({"schedule": "0 6 * * 1 2024"}, "'schedule'", "5-field cron"),
    "cron in words": ({"schedule": "every monday"}, "'schedule'", "5-field cron"),
    "seasonal_naive without season_length": (
        {"evaluation": {"baseline": "seasonal_naive"}},
        "'evaluation'",
        "needs season_length",
    ),
    "primary metric not computed": (
        {"evaluation": {"metrics": ["rmse"], "primary_metric": "mae"}},
        "'evaluation'",
        "must be one of metrics",
    ),
    "min_rows equal to test_size": (
        {"validation": {"min_rows": 4}, "split": {"test_size": 4}},
        "(top level)",
        "validation.min_rows (4) must exceed split.test_size (4)",
    ),
    "min_rows below test_size": (
        {"validation": {"min_rows": 3}, "split": {"test_size": 10}},
        "(top level)",
        "must exceed split.test_size (10)",
    ),
    "min_rows not above test_size plus lags": (
        {
            "model": {"kind": "sklearn", "estimator": "sklearn.linear_model.Ridge", "lags": 4, "order": None},
            "validation": {"min_rows": 8},
            "split": {"test_size": 4},
        },
        "(top level)",
        "plus model lags (4)",
    ),
    "duplicated series names": (
        {"series": [{"name": "a", "target": "x"}, {"name": "a", "target": "y"}]},
        "'series'",
        "must be unique",
    ),
    "series name not snake_case": ({"series": [{"name": "Level-1", "target": "x"}]}, "series.0.name", "pattern"),
    "no series": ({"series": []}, "'series'", "at least 1"),
    "max_null_fraction of 1": ({"validation": {"max_null_fraction": 1.0}}, "validation.max_null_fraction", "less"),
    "bad store_prefix": ({"store_prefix": "/abs/path"}, "store_prefix", "pattern"),
    "queue with a space": ({"queue": "big machine"}, "queue", "pattern"),
    "queue list instead of one queue": ({"queue": "default,large"}, "queue", "pattern"),
}


@pytest.mark.parametrize(("changes", "field", "detail"), BAD_SPECS.values(), ids=BAD_SPECS.keys())
def test_bad_spec_is_rejected_with_field_and_fix(tmp_path, spec_dict, changes, field, detail):
    """The message names the pipeline, the file, the broken field (the rule) and says how to fix it."""
    error = spec_error(tmp_path, spec_dict(**changes))
    message = str(error)
    assert message.startswith("pipeline 'tiny': ")
    assert str(tmp_path / "tiny.yaml") in message
    assert field in message
    assert detail in message
    assert "Fix: " in message
    assert error.pipeline == "tiny"
    assert error.permanent


def test_every_problem_is_reported_not_just_the_first(tmp_path, spec_dict):
    message = str(spec_error(tmp_path, spec_dict(schedle="x", preprocess={"fill": "bfill"})))
    assert "'schedle'" in message
    assert "preprocess.fill" in message


def test_name_must_match_file_name(tmp_path, spec_dict):
    error = spec_error(tmp_path, spec_dict(), stem="other")
    assert error.pipeline == "tiny"
    assert "field 'name' is 'tiny' but the file is other.yaml" in str(error)
    assert "Fix: rename the file to tiny.yaml or set name: other" in str(error)


def test_file_stem_names_the_pipeline_when_name_is_missing(tmp_path, spec_dict):
    error = spec_error(tmp_path, spec_dict(name=None), stem="nameless")
    assert error.pipeline == "nameless"
    assert "field 'name': required field is missing" in str(error)


@pytest.mark.parametrize(
    ("text", "detail"),
    [
        ("name: [unclosed\n", "cannot read YAML"),
        ("- just\n- a list\n", "expected a mapping at the top level"),
        ("", "expected a mapping at the top level"),
    ],
    ids=["yaml syntax error", "top-level list", "empty file"],
)
def test_unreadable_yaml_is_a_spec_error(tmp_path, text, detail):
    path = tmp_path / "tiny.yaml"
    path.write_text(text)
    with pytest.raises(SpecError, match=detail) as caught:
        load_spec(path)
    assert "Fix: " in str(caught.value)


def test_missing_spec_file_is_a_spec_error(tmp_path):
    with pytest.raises(SpecError, match="cannot read YAML"):
        load_spec(tmp_path / "absent.yaml")


def test_series_by_name_unknown_series_names_pipeline_and_choices(spec):
    with pytest.raises(SpecError) as caught:
        spec.series_by_name("nope")
    assert "pipeline 'tiny': no series named 'nope'" in str(caught.value)
    assert "Fix: use one of ['level']" in str(caught.value)


@pytest.mark.parametrize("schedule", ["0 6 * * 1", "*/15 0-6 1,15 * MON-FRI", "0 7 2 1,4,7,10 *"])
def test_valid_cron_expressions_are_accepted(make_spec, schedule):
    assert make_spec(schedule=schedule).schedule == schedule


@pytest.mark.parametrize("schedule", ["61 6 * * 1", "0 25 * * 1", "run at six on mondays"])
def test_out_of_range_cron_is_rejected(tmp_path, spec_dict, schedule):
    error = spec_error(tmp_path, spec_dict(schedule=schedule))
    assert "'schedule'" in str(error)


@pytest.mark.parametrize(
    ("source", "needed"),
    [
        ({"kind": "statsmodels", "dataset": "co2"}, None),
        ({"kind": "file", "path": "/data/x.csv"}, None),
        ({"kind": "file", "path": "s3://drops/x.csv", "conn_id": "aws_files"}, "aws_files"),
        ({"kind": "tiingo"}, "tiingo_default"),
        ({"kind": "postgres", "conn_id": "warehouse", "table": "sales"}, "warehouse"),
        ({"kind": "datareader"}, None),
        ({"kind": "datareader", "conn_id": "fred_proxy"}, "fred_proxy"),
    ],
)
def test_required_connection_names_what_the_pipeline_cannot_run_without(spec_dict, source, needed):
    """make run leaves out pipelines whose connection is missing; this is how it knows."""
    raw = spec_dict(window={"max_history": 60}) | {"source": source}
    assert PipelineSpec.model_validate(raw).required_connection() == needed
