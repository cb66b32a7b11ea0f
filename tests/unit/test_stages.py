"""The whole chain over a FileStore: tiny data, every model kind, the shipped specs, reruns and failures."""

from __future__ import annotations

import dataclasses
import json
import pickle
import re

import numpy as np
import pandas as pd
import pytest
import yaml

from include.retrain import models, registry
from include.retrain.errors import (
    DataValidationError,
    IntegrityError,
    ModelError,
    NoNewData,
    RetrainError,
    SourceError,
    SpecError,
    StoreError,
)
from include.retrain.spec import load_spec
from include.retrain.stages import prepare, publishing, snapshots, training
from include.retrain.stages.chain import CHAIN
from include.retrain.stages.context import StageContext

UNTIL_PUBLISH = CHAIN[:-1]  # promote runs only when the gate says so
RIDGE = {"kind": "sklearn", "estimator": "sklearn.linear_model.Ridge", "lags": 4, "calendar": ["month"], "order": None}
KINDS = {
    "arima": {"kind": "arima", "order": [1, 0, 0]},
    "sarimax": {"kind": "sarimax", "order": [1, 0, 0], "seasonal_order": [1, 0, 0, 4]},
    "stl_arima": {"kind": "stl_arima", "order": [1, 1, 0], "period": 4},
    "sklearn": RIDGE,
}


@pytest.fixture
def make_ctx(make_spec, store, weekly, write_csv, make_run):
    """``make_ctx(frame=None, end=..., **spec_changes)``: the StageContext of the tiny pipeline over ``store``."""

    def make(frame=None, end="2021-01-04T06:00:00+00:00", **changes):
        path = write_csv(weekly(40) if frame is None else frame)
        spec = make_spec(**{"source": {"kind": "file", "path": str(path)}, **changes})
        return StageContext(spec, store, "", make_run(end))

    return make


def run_chain(ctx: StageContext, series: str = "level") -> list[dict]:
    """Every stage's ref, in order; each stage gets the previous one's ref (extract gets the series)."""
    refs, ref = [], series
    for stage in UNTIL_PUBLISH:
        ref = stage(ctx, ref)
        refs.append(ref)
    return refs


def first_failure(ctx: StageContext, series: str = "level") -> tuple[str, RetrainError]:
    ref = series
    for stage in UNTIL_PUBLISH:
        try:
            ref = stage(ctx, ref)
        except RetrainError as exc:
            return stage.__name__, exc
    pytest.fail("the chain did not fail")


def published(snapshot: dict[str, bytes]) -> dict[str, bytes]:
    return {key: data for key, data in snapshot.items() if "/_runs/" not in key}


@pytest.mark.parametrize("model", KINDS.values(), ids=KINDS.keys())
def test_chain_publishes_a_loadable_model_for_every_kind(make_ctx, store, model):
    ctx = make_ctx(model=model)
    result = run_chain(ctx)[-1]
    assert result["pipeline"] == "tiny"
    assert result["series"] == "level"
    assert re.fullmatch(r"20210104T060000Z-[0-9a-f]{8}", result["version"]), "window end, then the data it saw"
    assert result["latest_moved"] is True
    assert result["model_key"] == f"models/tiny/level/{result['version']}/model.pkl"
    fitted, manifest = registry.load_model(store, ctx.layout, "level", "latest")
    forecast = models.forecast(fitted, ctx.spec.model, ctx.get_series(ctx.key("level", "clean.parquet")), 3, "W-SAT")
    assert list(forecast.index.strftime("%Y-%m-%d")) == ["2020-10-10", "2020-10-17", "2020-10-24"]
    assert manifest["artifact"]["sha256"] == registry.sha256(store.read(result["model_key"]))


def test_refs_are_small_json_serializable_dicts(make_ctx):
    """Refs travel through XCom: keys and numbers, never frames or models."""
    for ref in run_chain(make_ctx(model=RIDGE)):
        assert isinstance(ref, dict)
        assert len(json.dumps(ref)) < 2500  # the largest, gate's, is about 2 KB: a dozen keys and its decision


def test_stage_refs_carry_keys_and_counts(make_ctx, store):
    extract, validate, preprocess, split, train, evaluate, *_ = run_chain(make_ctx(model=RIDGE))
    work = "models/_runs/tiny/level/20210104T060000Z/scheduled__test"
    assert {k: extract[k] for k in ("series", "raw", "rows", "fetched_rows", "reused_snapshot")} == {
        "series": "level",
        "raw": f"{work}/raw.parquet",
        "rows": 40,
        "fetched_rows": 40,
        "reused_snapshot": False,
    }
    assert extract["snapshot_fingerprint"].startswith("sha256:")
    assert validate["validation"] == {
        "rows": 40,
        "missing": 0,
        "first": "2020-01-04 00:00:00",
        "last": "2020-10-03 00:00:00",
    }
    assert (preprocess["clean"], preprocess["features"]) == (f"{work}/clean.parquet", f"{work}/features.parquet")
    assert (split["rows_train"], split["rows_test"]) == (36, 4)
    assert train["candidate_sha256"] == registry.sha256(store.read(f"{work}/candidate.pkl"))
    assert json.loads(store.read(f"{work}/metrics.json")) == evaluate["metrics"]
    assert evaluate["evaluation"] == f"{work}/evaluation.json"


def test_chain_writes_exactly_the_expected_keys(make_ctx, store):
    version = run_chain(make_ctx())[-1]["version"]
    work = "models/_runs/tiny/level/20210104T060000Z/scheduled__test/"
    names = ["candidate.pkl", "clean.parquet", "decision.json", "evaluation.json", "metrics.json", "raw.parquet"]
    assert store.list("") == [
        *(work + n for n in [*names, "test.parquet", "train.parquet", "validation.json"]),
        f"models/tiny/level/{version}/evaluation.json",
        f"models/tiny/level/{version}/manifest.json",
        f"models/tiny/level/{version}/model.pkl",
        f"models/tiny/level/{version}/profile.json",
        "models/tiny/level/latest.json",
    ]


def test_split_test_window_is_the_last_periods_of_the_clean_series(make_ctx):
    ctx = make_ctx()
    split = run_chain(ctx)[3]
    train, test = ctx.get_series(split["train"]), ctx.get_series(split["test"])
    clean = ctx.get_series(split["clean"])
    assert list(test.index) == list(clean.index[-4:])
    assert train.index.max() < test.index.min()


def test_evaluate_reports_model_and_baseline_on_the_test_window(make_ctx):
    metrics = run_chain(make_ctx())[5]["metrics"]
    assert metrics["primary_metric"] == "mae"
    assert metrics["baseline_kind"] == "naive"
    assert metrics["horizon"] == 4
    assert set(metrics["model"]) == set(metrics["baseline"]) == {"mae", "rmse", "mape"}
    assert all(value is not None and value >= 0 for value in metrics["model"].values())


def test_evaluate_keeps_both_test_window_forecasts_beside_the_actuals(make_ctx, store):
    """What a Models page plots: the series' recent actuals, the candidate's and the baseline's forecasts."""
    ctx = make_ctx()
    split, _, evaluate = run_chain(ctx)[3:6]
    value = json.loads(store.read(evaluate["evaluation"]))
    assert list(value) == ["frequency", "primary_metric", "actual", "test_forecast", "baseline_forecast"]
    assert (value["frequency"], value["primary_metric"]) == ("W-SAT", "mae")
    clean, train = ctx.get_series(split["clean"]), ctx.get_series(split["train"])
    assert value["actual"] == {"timestamps": [str(t) for t in clean.index], "values": clean.tolist()}, "40 < 120"
    window = [str(t) for t in clean.index[-4:]]
    assert value["test_forecast"]["timestamps"] == value["baseline_forecast"]["timestamps"] == window
    assert value["baseline_forecast"]["values"] == [train.iloc[-1]] * 4, "naive: the last training value"
    errors = np.subtract(value["actual"]["values"][-4:], value["test_forecast"]["values"])
    assert round(float(np.mean(np.abs(errors))), 6) == evaluate["metrics"]["model"]["mae"], "the forecast scored"


def test_publish_keeps_evaluation_json_and_records_its_checksum(make_ctx, store):
    ctx = make_ctx()
    *_, evaluate, _, result = run_chain(ctx)
    data = store.read(f"models/tiny/level/{result['version']}/evaluation.json")
    assert data == store.read(evaluate["evaluation"])
    manifest = json.loads(store.read(f"models/tiny/level/{result['version']}/manifest.json"))
    assert manifest["evaluation"] == {"file": "evaluation.json", "sha256": registry.sha256(data)}
    assert registry.read_evaluation(store, ctx.layout, "level", result["version"]) == json.loads(data)


def test_a_ref_from_before_evaluation_json_publishes_without_one(make_ctx, store):
    """A run evaluated by the previous release and published by this one (an upgrade mid-run)."""
    ctx, ref = make_ctx(), "level"
    for stage in CHAIN[:7]:  # up to the gate
        ref = stage(ctx, ref)
    version = publishing.publish(ctx, {k: v for k, v in ref.items() if k != "evaluation"})["version"]
    assert "evaluation" not in registry.read_manifest(store, ctx.layout, "level", version)
    assert not store.exists(f"models/tiny/level/{version}/evaluation.json")
    assert registry.read_evaluation(store, ctx.layout, "level", version) is None


def test_manifest_records_run_data_model_and_usage(make_ctx, store):
    ctx = make_ctx(model=RIDGE)
    version = run_chain(ctx)[-1]["version"]
    manifest = json.loads(store.read(f"models/tiny/level/{version}/manifest.json"))
    assert (manifest["pipeline"], manifest["series"], manifest["target"]) == ("tiny", "level", "value")
    assert (manifest["dag_id"], manifest["run_id"]) == ("retrain_test", "scheduled__test")
    assert manifest["data_window"]["end"] == "2021-01-04T06:00:00+00:00"
    assert manifest["data_window"]["last_timestamp"] == "2020-10-03 00:00:00"
    assert manifest["rows"] == {"total": 40, "train": 36, "test": 4}
    assert manifest["data_fingerprint"].startswith("sha256:")
    assert manifest["model"]["estimator"] == "sklearn.linear_model.Ridge"
    assert manifest["usage"]["feature_columns"] == ["lag_1", "lag_2", "lag_3", "lag_4", "month"]
    assert list(manifest["usage"]["last_observations"]) == [
        "2020-09-12 00:00:00",
        "2020-09-19 00:00:00",
        "2020-09-26 00:00:00",
        "2020-10-03 00:00:00",
    ]
    assert "scikit-learn" in manifest["libraries"]


def test_refit_on_full_publishes_a_model_fitted_on_all_rows(make_ctx, store):
    ctx = make_ctx()
    train, *_, result = run_chain(ctx)[4:]
    assert store.read(result["model_key"]) != store.read(train["candidate"])
    assert registry.load_model(store, ctx.layout, "level", "latest")[0].nobs == 40


def test_without_refit_the_candidate_is_published(make_ctx, store):
    ctx = make_ctx(split={"refit_on_full": False})
    train = run_chain(ctx)[4]
    candidate = registry.verified_loads(store.read(train["candidate"]), train["candidate_sha256"], "candidate")
    published_model = registry.load_model(store, ctx.layout, "level", "latest")[0]
    assert published_model.nobs == candidate.nobs == 36
    np.testing.assert_array_equal(published_model.params, candidate.params)


def test_preprocess_fills_gaps_before_training(make_ctx, weekly):
    frame = weekly(40)
    ctx = make_ctx(frame=frame.drop(frame.index[[10, 11]]))
    preprocess = run_chain(ctx)[2]
    clean = ctx.get_series(preprocess["clean"])
    assert len(clean) == 40
    assert clean.notna().all()


def test_retry_of_extract_reuses_the_runs_snapshot_byte_for_byte(make_ctx, store, weekly, write_csv):
    """A retry trains on the data the run first saw, even if the source changed meanwhile."""
    ctx = make_ctx()
    first = snapshots.extract(ctx, "level")
    raw = store.read(first["raw"])
    write_csv(weekly(40, seed=9))  # the source changes under the run
    again = snapshots.extract(ctx, "level")
    assert again["reused_snapshot"] is True and again["fetched_rows"] == 0
    assert again["snapshot_fingerprint"] == first["snapshot_fingerprint"]
    assert store.read(again["raw"]) == raw


def test_rerun_after_publishing_skips_without_writing(make_ctx, snapshot):
    """The current model already saw this snapshot: the rerun stops at extract, nothing changes."""
    run_chain(make_ctx())
    first = snapshot()
    with pytest.raises(NoNewData, match=r"pipeline 'tiny', series 'level': no new data since the current model"):
        snapshots.extract(make_ctx(), "level")
    assert snapshot() == first


def test_new_run_with_unchanged_data_skips(make_ctx):
    run_chain(make_ctx())
    with pytest.raises(NoNewData):
        snapshots.extract(make_ctx(end="2021-01-11T06:00:00+00:00"), "level")


def test_new_run_with_new_data_trains(make_ctx, weekly):
    run_chain(make_ctx())
    result = run_chain(make_ctx(frame=weekly(41), end="2021-01-11T06:00:00+00:00"))[-1]
    assert result["version"].startswith("20210111T060000Z-") and result["latest_moved"] is True


def test_new_data_within_the_same_interval_is_a_new_version(make_ctx, weekly, store):
    """A manual run after a late update of the source: same window, other data, new version."""
    first = run_chain(make_ctx())[-1]
    late = make_ctx(frame=weekly(40, seed=5))
    late.run = dataclasses.replace(late.run, run_id="manual__late")
    second = run_chain(late)[-1]
    assert first["version"] != second["version"] and second["latest_moved"] is True
    assert store.exists(first["model_key"]) and store.exists(second["model_key"])


def test_backfill_publishes_its_version_but_keeps_latest(make_ctx, store):
    run_chain(make_ctx(end="2021-01-11T06:00:00+00:00"))
    pointer = store.read("models/tiny/level/latest.json")
    result = run_chain(make_ctx(end="2020-09-27T06:00:00+00:00"))[-1]  # sees 39 of the 40 weeks
    assert result["latest_moved"] is False
    assert store.read("models/tiny/level/latest.json") == pointer
    assert store.exists(result["model_key"])


def test_failed_validation_of_a_later_run_leaves_the_published_model_untouched(make_ctx, weekly, snapshot):
    version = run_chain(make_ctx())[-1]["version"]
    before = published(snapshot())
    bad = weekly(41)
    bad.iloc[-1, 0] = 150.0  # the new week is above validation.max_value
    name, error = first_failure(make_ctx(frame=bad, end="2021-01-11T06:00:00+00:00"))
    assert (name, error.rule) == ("validate", "validation.max_value")
    assert published(snapshot()) == before
    assert set(before) == {
        f"models/tiny/level/{version}/evaluation.json",
        f"models/tiny/level/{version}/manifest.json",
        f"models/tiny/level/{version}/model.pkl",
        f"models/tiny/level/{version}/profile.json",
        "models/tiny/level/latest.json",
    }


def corrupt(position: int, value: float):
    def apply(frame: pd.DataFrame) -> pd.DataFrame:
        out = frame.copy()
        out.iloc[position, 0] = value
        return out

    return apply


def null_every_third(frame: pd.DataFrame) -> pd.DataFrame:
    return frame.assign(value=frame["value"].where(np.arange(len(frame)) % 3 != 1))


def move_row(frame: pd.DataFrame) -> pd.DataFrame:
    return frame.set_axis(frame.index.where(np.arange(len(frame)) != 7, frame.index[7] + pd.Timedelta("2D")))


def case(failing_stage: str, error_type: type, rule: str, change=None, end=None, **spec_changes) -> tuple:
    """A broken input (frame change, run end, spec changes) and where and how the chain must fail."""
    return change, spec_changes, end, failing_stage, error_type, rule


V = DataValidationError
FAILURES = {
    "missing source file": case(
        "extract", SourceError, "source readable", source={"kind": "file", "path": "/nonexistent/data.csv"}
    ),
    "missing target column": case("validate", V, "target column present", lambda f: f.rename(columns={"value": "x"})),
    "empty data window": case("validate", V, "non-empty window", end="2019-01-07T06:00:00+00:00"),
    "all-NaN series": case("validate", V, "not all NaN", lambda f: f.assign(value=np.nan)),
    "duplicated timestamps": case(
        "validate", V, "unique timestamps", lambda f: pd.concat([f, f.iloc[[3]]]).sort_index()
    ),
    "non-monotonic timestamps": case("validate", V, "increasing timestamps", lambda f: f.iloc[[1, 0, *range(2, 40)]]),
    "null fraction too high": case("validate", V, "max_null_fraction", null_every_third),
    "value below min_value": case("validate", V, "validation.min_value", corrupt(5, -3.0)),
    "value above max_value": case("validate", V, "validation.max_value", corrupt(6, 101.0)),
    "off-grid timestamp": case("validate", V, "frequency", move_row),
    "gap longer than max_gap": case("validate", V, "max_gap", lambda f: f.drop(f.index[10:13])),
    "too few rows to train after split": case(
        "split", V, "train size", lambda f: f.iloc[:11], validation={"min_rows": 10}
    ),
    "unknown model class": case(
        "train", ModelError, "model class exists", model={**RIDGE, "estimator": "sklearn.linear_model.Rdge"}
    ),
    "bad estimator params": case("train", ModelError, "estimator params", model={**RIDGE, "params": {"alpah": 1.0}}),
    "model settings do not fit": case(
        "train", ModelError, "model fits", model={"kind": "arima", "order": [1, 1, 0], "trend": "c"}
    ),
}


@pytest.mark.parametrize(
    ("change", "spec_changes", "end", "failing_stage", "error_type", "rule"), FAILURES.values(), ids=FAILURES.keys()
)
def test_stage_errors_name_pipeline_series_rule_and_fix(
    make_ctx, weekly, change, spec_changes, end, failing_stage, error_type, rule
):
    frame = weekly(40) if change is None else change(weekly(40))
    ctx = make_ctx(frame=frame, **({"end": end} if end else {}), **spec_changes)
    name, error = first_failure(ctx)
    assert (name, type(error)) == (failing_stage, error_type)
    assert (error.pipeline, error.series, error.rule) == ("tiny", "level", rule)
    assert str(error).startswith("pipeline 'tiny', series 'level': ")
    assert f"[rule: {rule}]. Fix: " in str(error)
    assert error.permanent


def test_missing_upstream_artifact_names_pipeline_and_series(make_ctx):
    ctx = make_ctx()
    with pytest.raises(StoreError) as caught:
        prepare.validate(ctx, {"series": "level", "raw": ctx.key("level", "raw.parquet")})
    assert str(caught.value).startswith("pipeline 'tiny', series 'level': file://")
    assert caught.value.permanent


def test_tampered_candidate_is_refused_by_evaluate(make_ctx, store):
    ctx = make_ctx()
    train = run_chain(ctx)[4]
    store.write(train["candidate"], pickle.dumps("swapped"))
    with pytest.raises(IntegrityError) as caught:
        training.evaluate(ctx, train)
    assert str(caught.value).startswith("pipeline 'tiny', series 'level': ")
    assert caught.value.rule == "artifact checksum"


def test_unknown_series_is_a_spec_error(make_ctx):
    with pytest.raises(SpecError, match=r"^pipeline 'tiny', series 'nope': no series named 'nope'.*Fix: "):
        snapshots.extract(make_ctx(), "nope")


def test_unknown_frequency_fails_with_a_named_error(tmp_path, spec_dict, store, make_run, write_csv, weekly):
    """Either load_spec refuses the frequency (SpecError) or the stage names the problem: both are RetrainErrors."""
    path = tmp_path / "tiny.yaml"
    source = {"kind": "file", "path": str(write_csv(weekly(40)))}
    path.write_text(yaml.safe_dump(spec_dict(frequency="weekly", source=source)))
    with pytest.raises(RetrainError) as caught:
        ctx = StageContext(load_spec(path), store, "", make_run())
        prepare.validate(ctx, snapshots.extract(ctx, "level"))
    assert caught.value.pipeline == "tiny"


SHIPPED = [("co2_weekly", "co2", 1040), ("us_macro", "realgdp", 203), ("us_macro", "unemp", 203)]


@pytest.mark.parametrize(("name", "series", "rows"), SHIPPED, ids=[f"{n}-{s}" for n, s, _ in SHIPPED])
def test_shipped_spec_runs_end_to_end(pipelines_dir, store, make_run, name, series, rows):
    spec = load_spec(pipelines_dir / f"{name}.yaml")
    ctx = StageContext(spec, store, "root", make_run("2010-01-04T06:00:00+00:00"))
    result = run_chain(ctx, series)[-1]
    assert re.fullmatch(rf"root/models/{name}/{series}/20100104T060000Z-[0-9a-f]{{8}}/model.pkl", result["model_key"])
    fitted, manifest = registry.load_model(store, ctx.layout, series, "latest")
    assert manifest["rows"] == {"total": rows, "train": rows - spec.split.test_size, "test": spec.split.test_size}
    assert all(
        v is not None for v in (*manifest["metrics"]["model"].values(), *manifest["metrics"]["baseline"].values())
    )
    clean = ctx.get_series(ctx.key(series, "clean.parquet"))
    forecast = models.forecast(fitted, spec.model, clean, 2, spec.frequency)
    assert list(forecast.index) == list(pd.date_range(clean.index[-1], periods=3, freq=spec.frequency)[1:])
    assert np.isfinite(forecast.to_numpy()).all()


def test_within_fills_only_what_a_lower_layer_did_not_know():
    error = DataValidationError("bad", rule="r", fix="do x").within("tiny", "level")
    assert str(error) == "pipeline 'tiny', series 'level': bad [rule: r]. Fix: do x"
    assert error.args == (str(error),)
    assert SpecError("p", fix="f", pipeline="keep").within("other").pipeline == "keep"


def test_store_errors_are_transient_unless_marked_permanent():
    assert StoreError("down", fix="retry").permanent is False
    assert StoreError("no bucket", fix="create it", permanent=True).permanent is True
    assert ModelError("x", fix="y").permanent is True


def test_backtest_reports_every_fold_in_the_manifest(make_ctx, store):
    ctx = make_ctx(evaluation={"backtest_folds": 3})
    result = run_chain(ctx)[-1]
    backtest = result["metrics"]["backtest"]
    assert (backtest["folds"], backtest["horizon"]) == (3, 4)
    weeks = pd.date_range("2020-01-04", periods=40, freq="W-SAT")
    assert backtest["test_starts"] == [str(weeks[cut]) for cut in (28, 32, 36)], "expanding window, no overlap"
    assert set(backtest["model"]) == set(backtest["baseline"]) == {"mae", "rmse", "mape"}
    assert all(v["mean"] is not None and v["std"] >= 0 for v in backtest["model"].values())
    manifest = json.loads(store.read(result["model_key"].replace("model.pkl", "manifest.json")))
    assert manifest["metrics"]["backtest"] == backtest


def test_backtest_that_does_not_fit_the_data_fails_evaluate(make_ctx):
    name, error = first_failure(make_ctx(evaluation={"backtest_folds": 9}))
    assert (name, error.rule) == ("evaluate", "backtest folds")
    assert "pipeline 'tiny', series 'level'" in str(error)
