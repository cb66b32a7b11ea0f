"""Whole DAG runs through Airflow (api-server, scheduler, dag-processor, LocalExecutor)
on PostgreSQL, publishing to an S3 endpoint over HTTP; then a consumer loads the models.

The tests share one stack and run in any order: each asks for ``run_all`` (``make run``'s
job, run once per session), so every pipeline has published before the test starts.
"""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

from include.retrain_airflow.cli import failed_tasks, wait_for_runs
from tests.e2e.conftest import RunAll, Stack, write_flaky_csv
from tests.e2e.runs import trigger_now

pytestmark = [pytest.mark.e2e, pytest.mark.usefixtures("run_all")]

SHIPPED = {"co2_weekly": ["co2"], "us_macro": ["realgdp", "unemp"]}

# A consumer with statsmodels / scikit-learn and nothing of this bundle: check the
# checksum, unpickle, forecast. For a scikit-learn Pipeline the manifest says which
# lags and calendar columns to feed it.
CONSUMER = r"""
import hashlib, json, pickle, sys
import pandas as pd
manifest = json.load(open(sys.argv[2]))
data = open(sys.argv[1], "rb").read()
assert hashlib.sha256(data).hexdigest() == manifest["artifact"]["sha256"], "checksum"
model = pickle.loads(data)
usage = manifest["usage"]
if "feature_columns" in usage:
    last = list(usage["last_observations"].items())
    when = pd.date_range(last[-1][0], periods=2, freq=manifest["frequency"])[1]
    row = {f"lag_{k}": [last[-k][1]] for k in range(1, usage["lags"] + 1)}
    calendar = {"quarter": when.quarter, "month": when.month, "dayofweek": when.dayofweek,
                "weekofyear": when.isocalendar().week}
    row.update({name: [int(calendar[name])] for name in usage["calendar"]})
    forecast = list(model.predict(pd.DataFrame(row)[usage["feature_columns"]]))
else:
    forecast = [float(v) for v in model.forecast(3)]
print(json.dumps({"type": type(model).__module__ + "." + type(model).__name__, "forecast": forecast}))
"""


def _latest(stack: Stack, pipeline: str, series: str) -> dict:
    return json.loads(stack.get(f"models/{pipeline}/{series}/latest.json"))


def _task_states(stack: Stack, dag_id: str, run_id: str) -> dict[str, tuple[str, int]]:
    found = stack.api.json("GET", f"/dags/{dag_id}/dagRuns/{run_id}/taskInstances", params={"limit": 100})
    return {ti["task_id"]: (ti["state"], ti["try_number"]) for ti in found["task_instances"]}


def test_make_run_job_publishes_every_pipeline(stack: Stack, run_all: RunAll) -> None:
    """`make run`'s job: trigger every pipeline through the REST API, wait, print the table."""
    done = run_all.done
    assert done.returncode == 0, done.stderr[-2000:]
    assert "retrain_co2_weekly=success" in done.stdout and "retrain_us_macro=success" in done.stdout
    assert "not running retrain_stocks_daily: it needs Airflow connection 'tiingo_default'" in done.stdout
    for stream in (done.stdout, done.stderr):  # the S3 hook's INFO logs once landed in the table
        assert "credentials retrieved" not in stream and "[info" not in stream, stream
    ui = f"http://{stack.env['RETRAIN_API_HOST']}:{stack.env['RETRAIN_API_PORT']}"
    lines = done.stdout.splitlines()
    assert lines[lines.index("Next:") + 2].startswith(f"  Models:  {ui}/plugin/models  ")  # next to the UI's
    for pipeline, series_names in SHIPPED.items():
        for series in series_names:
            pointer = _latest(stack, pipeline, series)
            line = next(line for line in done.stdout.splitlines() if line.startswith(f"{pipeline:<12} {series:<9}"))
            assert line.endswith(
                f"{pointer['version']}: {json.loads(stack.get(pointer['manifest']))['decision']['status']}"
            )


@pytest.mark.parametrize(("pipeline", "series"), [(p, s) for p, names in SHIPPED.items() for s in names])
def test_published_model_loads_and_forecasts_without_the_bundle(
    stack: Stack, tmp_path: Path, pipeline: str, series: str
) -> None:
    pointer = _latest(stack, pipeline, series)
    manifest = json.loads(stack.get(pointer["manifest"]))
    model = stack.get(pointer["model"])
    assert hashlib.sha256(model).hexdigest() == manifest["artifact"]["sha256"] == pointer["sha256"]
    assert manifest["artifact"]["bytes"] == len(model)
    assert (manifest["pipeline"], manifest["series"], manifest["dag_id"]) == (pipeline, series, f"retrain_{pipeline}")
    assert manifest["version"] == pointer["version"] and manifest["run_id"]
    assert set(manifest["metrics"]["model"]) == {"mae", "rmse", "mape"}
    assert manifest["metrics"]["baseline"]["mae"] is not None
    assert manifest["data_fingerprint"].startswith("sha256:")
    assert {"pandas", "statsmodels", "scikit-learn"} <= set(manifest["libraries"])
    (tmp_path / "model.pkl").write_bytes(model)
    (tmp_path / "manifest.json").write_text(json.dumps(manifest))
    done = subprocess.run(
        [sys.executable, "-I", "-c", CONSUMER, "model.pkl", "manifest.json"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    assert result["forecast"] and all(abs(v) < 1e9 for v in result["forecast"])
    assert result["type"].startswith(("statsmodels.", "sklearn."))


def test_rerun_of_a_published_run_skips_and_changes_nothing(stack: Stack) -> None:
    """Clearing a finished run: its snapshot is reused, the current model has seen it, so
    extract skips (visible in the UI), everything downstream skips, no key changes."""
    dag_id = "retrain_co2_weekly"
    pointer = _latest(stack, "co2_weekly", "co2")
    run_id = json.loads(stack.get(pointer["manifest"]))["run_id"]  # the run that published it, whoever ran it
    before = stack.keys(f"models/co2_weekly/co2/{pointer['version']}/")
    body = {"dag_run_id": run_id, "dry_run": False, "only_failed": False, "reset_dag_runs": True}
    stack.api.json("POST", f"/dags/{dag_id}/clearTaskInstances", json=body)
    states = wait_for_runs(stack.api, {dag_id: run_id}, timeout=300)
    assert states[dag_id] == "success", failed_tasks(stack.api, dag_id, run_id)
    tasks = _task_states(stack, dag_id, run_id)
    assert tasks["extract"] == ("skipped", 2)
    downstream = ("validate", "preprocess", "split", "train", "evaluate", "gate", "publish", "promote", "finish")
    assert {tasks[t][0] for t in downstream} == {"skipped"}
    assert stack.keys(f"models/co2_weekly/co2/{pointer['version']}/") == before
    assert _latest(stack, "co2_weekly", "co2") == pointer
    manifest = json.loads(stack.get(pointer["manifest"]))
    assert manifest["run_id"] == run_id and manifest["artifact"]["sha256"] == pointer["sha256"]


def test_bad_data_fails_validate_at_once_and_keeps_the_published_model(stack: Stack) -> None:
    """A broken export: validate fails without retrying, nothing published is touched."""
    pointer_key = "models/flaky/level/latest.json"
    pointer_before = stack.get(pointer_key)
    model_key = json.loads(pointer_before)["model"]
    model_before = stack.get(model_key)
    write_flaky_csv(stack.flaky_csv, duplicate=True)
    try:
        run_id = trigger_now(stack, "retrain_flaky")
        states = wait_for_runs(stack.api, {"retrain_flaky": run_id}, timeout=300)
    finally:
        write_flaky_csv(stack.flaky_csv)
    assert states["retrain_flaky"] == "failed"
    tasks = _task_states(stack, "retrain_flaky", run_id)
    assert tasks["extract"][0] == "success"
    assert tasks["validate"] == ("failed", 1), "bad data is not worth a retry"
    assert {tasks[t][0] for t in ("preprocess", "split", "train", "evaluate", "publish")} == {"upstream_failed"}
    assert tasks["finish"][0] == "upstream_failed", "a failed series fails the run (finish is its leaf)"
    log = stack.api.call(
        "GET",
        f"/dags/retrain_flaky/dagRuns/{run_id}/taskInstances/validate/logs/1",
        params={"map_index": 0, "full_content": True},
        headers={"Accept": "application/json"},
    ).text
    for fragment in ("pipeline 'flaky'", "series 'level'", "duplicated timestamp", "unique timestamps", "Fix:"):
        assert fragment in log
    assert stack.get(pointer_key) == pointer_before
    assert stack.get(model_key) == model_before


# -- champion/challenger, history, downstream predictions, backfill ------------------------


def _sql(stack: Stack, query: str, *params: object) -> list[tuple]:
    import psycopg

    with psycopg.connect(stack.env["AIRFLOW_CONN_RETRAIN_DB"]) as conn:
        return conn.execute(query, params).fetchall()


def _champion(stack: Stack, pipeline: str, series: str) -> dict | None:
    key = f"models/{pipeline}/{series}/champion.json"
    return json.loads(stack.get(key)) if stack.keys(key) else None


def test_history_table_records_every_gate_decision(stack: Stack) -> None:
    rows = _sql(
        stack,
        "select pipeline, series, version, decision, reason, candidate_value, baseline_value from retrain_decisions"
        " where actor = 'gate' and pipeline in ('co2_weekly', 'us_macro') order by recorded_at",
    )
    seen = {(pipeline, series) for pipeline, series, *_ in rows}
    assert seen == {(p, s) for p, names in SHIPPED.items() for s in names}
    for pipeline, series, version, decision, reason, candidate, baseline in rows:
        champion = _champion(stack, pipeline, series)
        assert decision in ("promoted", "rejected") and reason and candidate is not None and baseline is not None
        if decision == "promoted":
            assert champion is not None and champion["version"] == version and champion["promoted_by"] == "promoted"
        manifest = json.loads(stack.get(f"models/{pipeline}/{series}/{version}/manifest.json"))
        assert manifest["decision"]["status"] == decision and manifest["decision"]["reason"] == reason
        assert manifest["artifact"]["signature"]["scheme"] == "hmac-sha256/v1", "the stack signs every model"
    co2 = next(row for row in rows if row[:2] == ("co2_weekly", "co2"))
    assert co2[3] == "promoted" and co2[4].startswith("first model")


def _forecasts(stack: Stack) -> dict[tuple[str, str], set[tuple[str, int, int, int]]]:
    """(model version, rows, first step, last step) of every batch_predict run's forecast, per series."""
    rows = _sql(
        stack,
        "select pipeline, series, model_version, run_id, count(*), min(step), max(step) from retrain_forecasts"
        " group by 1, 2, 3, 4",
    )
    written: dict[tuple[str, str], set[tuple[str, int, int, int]]] = {}
    for pipeline, series, version, _, count, first, last in rows:
        written.setdefault((pipeline, series), set()).add((version, count, first, last))
    return written


def test_promotions_trigger_batch_predict_which_writes_forecasts(stack: Stack) -> None:
    """Each promotion is an asset event; batch_predict loads the champion (verified) and writes its forecast."""
    champions = {(p, s): _champion(stack, p, s) for p, names in SHIPPED.items() for s in names}
    horizons = {"co2_weekly": 52, "us_macro": 8}
    expected = {
        (p, s): (champion["version"], horizons[p], 1, horizons[p])
        for (p, s), champion in champions.items()
        if champion is not None
    }
    deadline = time.monotonic() + 300
    while True:  # a promotion's asset event becomes a run within a scheduler loop or two
        runs = stack.api.json("GET", "/dags/batch_predict/dagRuns", params={"limit": 100})["dag_runs"]
        written = _forecasts(stack)
        finished = runs and all(r["state"] in ("success", "failed") for r in runs)
        if (finished and all(row in written.get(key, set()) for key, row in expected.items())) or (
            time.monotonic() > deadline
        ):
            break
        time.sleep(3)
    assert runs and {r["state"] for r in runs} == {"success"}, runs
    assert {r["run_type"] for r in runs} == {"asset_triggered"}
    for (pipeline, series), champion in champions.items():
        if champion is None:
            assert (pipeline, series) not in written, "no champion, no forecast"
        else:
            assert expected[(pipeline, series)] in written.get((pipeline, series), set()), written


def test_backfill_shows_a_sequence_of_versions_with_their_decisions(stack: Stack) -> None:
    """Three past quarters of us_macro: each a new immutable version, none replaces the newer champion."""
    dag_id = "retrain_us_macro"
    done = stack.run(
        "airflow",
        "backfill",
        "create",
        "--dag-id",
        dag_id,
        "--from-date",
        "2008-03-01",
        "--to-date",
        "2008-10-03",
        "--max-active-runs",
        "1",
    )
    assert done.returncode == 0, done.stderr[-2000:]
    deadline = time.monotonic() + 420
    while time.monotonic() < deadline:
        runs = stack.api.json("GET", f"/dags/{dag_id}/dagRuns", params={"run_type": "backfill", "limit": 10})
        states = [r["state"] for r in runs["dag_runs"]]
        if len(states) == 3 and set(states) <= {"success", "failed"}:
            break
        time.sleep(3)
    assert states == ["success"] * 3, states
    for run in runs["dag_runs"]:  # the gate kept the champion: promote and finish skipped, the run a success
        tasks = _task_states(stack, dag_id, run["dag_run_id"])
        assert tasks["promote"][0] == tasks["finish"][0] == "skipped", tasks
    listing = stack.run(sys.executable, "-m", "include.retrain_airflow.registry_cli", "list", "us_macro", "unemp")
    print(listing.stdout)
    assert listing.returncode == 0, listing.stderr
    lines = listing.stdout.splitlines()
    for end in ("20080702T070000Z", "20081002T070000Z", "20090102T070000Z"):
        line = next(line for line in lines if end in line)
        assert "rejected" in line
    rows = _sql(
        stack,
        "select version, decision, reason from retrain_decisions where pipeline = 'us_macro' and series = 'unemp'"
        " and run_id like 'backfill%%' order by version",
    )
    assert [r[0][:16] for r in rows] == ["20080702T070000Z", "20081002T070000Z", "20090102T070000Z"]
    assert all(r[1] == "rejected" and "a backfill does not replace a newer model" in r[2] for r in rows)
