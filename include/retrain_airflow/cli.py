"""Operator commands: run every pipeline through Airflow, list published models.

    python -m include.retrain_airflow.cli run-all      # trigger every retrain_* DAG, wait, report
    python -m include.retrain_airflow.cli models       # the current model of every series
    python -m include.retrain_airflow.cli ensure-bucket

``run-all`` goes through the api-server's REST API with a real login, like an operator;
``models`` reads the model store through the same store code the tasks use.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import MutableMapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import requests

from include.retrain.formatting import number
from include.retrain.registry import overview
from include.retrain.settings import Settings, parse_store_uri
from include.retrain.spec import PipelineSpec, load_spec, spec_names, valid_specs
from include.retrain_airflow import names
from include.retrain_airflow.store import S3Store, open_store

TERMINAL = {"success", "failed"}

# Airflow's loggers that print INFO lines into the CLIs' output when they open the model
# store: the Amazon provider's connection wrapper ("AWS Connection (conn_id='aws_default', ...)
# credentials retrieved from login and password.") and every hook's logger under
# airflow.task.hooks (S3Hook: 'Bucket "retrain-models" does not exist').
QUIET_LOGGERS = ("airflow.providers.amazon", "airflow.task.hooks")


def quiet_airflow_info(environ: MutableMapping[str, str] = os.environ) -> None:
    """Keep those loggers to warnings and errors in this process: the CLIs print their own lines.

    Goes through Airflow's ``[logging] namespace_levels``, read once when ``airflow`` is first
    imported (that configures structlog): call it before anything imports Airflow, as the
    CLIs' ``__main__`` does. Levels already in ``AIRFLOW__LOGGING__NAMESPACE_LEVELS`` come
    after ours, so an operator's choice wins.
    """
    key = "AIRFLOW__LOGGING__NAMESPACE_LEVELS"
    ours = " ".join(f"{name}=WARNING" for name in QUIET_LOGGERS)
    environ[key] = f"{ours} {environ.get(key, '')}".strip()


class Api:
    """The api-server's REST API with a bearer token from the auth manager."""

    def __init__(self, base: str, username: str, password: str) -> None:
        self.base = base.rstrip("/")
        response = requests.post(
            f"{self.base}/auth/token", json={"username": username, "password": password}, timeout=30
        )
        response.raise_for_status()
        self.session = requests.Session()
        self.session.headers["Authorization"] = f"Bearer {response.json()['access_token']}"

    def call(self, method: str, path: str, **kwargs: Any) -> requests.Response:
        return self.session.request(method, f"{self.base}/api/v2{path}", timeout=30, **kwargs)

    def json(self, method: str, path: str, **kwargs: Any) -> Any:
        response = self.call(method, path, **kwargs)
        response.raise_for_status()
        return response.json()


def api_from_env(env: dict[str, str]) -> Api:
    password = Path(env["RETRAIN_STATE_DIR"], "admin-password").read_text().strip()
    base = f"http://{env['RETRAIN_API_HOST']}:{env['RETRAIN_API_PORT']}"
    return Api(base, "admin", password)


def wait_for_dags(api: Api, dag_ids: list[str], timeout: float) -> None:
    """Wait until the dag-processor has parsed every pipeline; fail on import errors."""
    deadline = time.monotonic() + timeout
    while True:
        errors = api.json("GET", "/importErrors")["import_errors"]
        if errors:
            details = "\n".join(f"  {e['filename']}: {e['stack_trace'].strip().splitlines()[-1]}" for e in errors)
            raise SystemExit(f"DAG import errors:\n{details}")
        known = {d["dag_id"] for d in api.json("GET", "/dags", params={"limit": 1000})["dags"]}
        if set(dag_ids) <= known:
            return
        if time.monotonic() > deadline:
            raise SystemExit(f"DAGs not parsed after {timeout:.0f}s: {sorted(set(dag_ids) - known)}")
        time.sleep(2)


def trigger(api: Api, dag_id: str) -> str:
    """Trigger one run of the latest complete interval, then unpause.

    The run takes the logical date the scheduler would give that interval, so unpausing
    does not add a second, scheduled run of the same data; if that run exists already
    (an earlier ``make run``), a manual run of the same interval is added instead.
    """
    dag = api.json("GET", f"/dags/{dag_id}")
    now = datetime.now(UTC).isoformat()
    body: dict[str, Any] = {"logical_date": now, "note": "triggered by make run"}
    due = dag.get("next_dagrun_run_after")
    if dag.get("next_dagrun_logical_date") and due and due <= now:
        body.update(
            logical_date=dag["next_dagrun_logical_date"],
            data_interval_start=dag["next_dagrun_data_interval_start"],
            data_interval_end=dag["next_dagrun_data_interval_end"],
        )
    response = api.call("POST", f"/dags/{dag_id}/dagRuns", json=body)
    if response.status_code == 409:
        response = api.call("POST", f"/dags/{dag_id}/dagRuns", json={"logical_date": now})
    response.raise_for_status()
    api.json("PATCH", f"/dags/{dag_id}", json={"is_paused": False})
    return response.json()["dag_run_id"]


def missing_connection(api: Api, spec: PipelineSpec) -> str | None:
    conn_id = spec.required_connection()
    if conn_id is None or f"AIRFLOW_CONN_{conn_id.upper()}" in os.environ:
        return None
    return None if api.call("GET", f"/connections/{conn_id}").status_code == 200 else conn_id


def wait_for_runs(api: Api, runs: dict[str, str], timeout: float) -> dict[str, str]:
    deadline = time.monotonic() + timeout
    states: dict[str, str] = {}
    while time.monotonic() < deadline:
        for dag_id, run_id in runs.items():
            states[dag_id] = api.json("GET", f"/dags/{dag_id}/dagRuns/{run_id}")["state"]
        if all(state in TERMINAL for state in states.values()):
            return states
        time.sleep(2)
    return states


def failed_tasks(api: Api, dag_id: str, run_id: str) -> list[str]:
    instances = api.json("GET", f"/dags/{dag_id}/dagRuns/{run_id}/taskInstances", params={"limit": 1000})
    return [
        f"{ti['task_id']}[{ti.get('rendered_map_index') or ti['map_index']}]: {ti['state']}"
        for ti in instances["task_instances"]
        if ti["state"] not in ("success", "skipped")
    ]


def models_table(settings: Settings) -> str:
    """Every series' champion and what the gate decided about its newest version."""
    store, root = open_store(settings)
    bases = {"/".join(p for p in (root, prefix) if p) for prefix in _prefixes(settings)}
    rows = [row for base in sorted(bases) for row in overview(store, base)]
    if not rows:
        return "no published models yet"
    lines = [
        f"{'pipeline':<12} {'series':<9} {'champion':<26} {'metric':<6} {'value':>9} {'baseline':>9}  "
        "newest version: decision"
    ]
    for row in rows:
        lines.append(
            f"{row['pipeline']:<12} {row['series']:<9} {row['champion'] or '(none)':<26} "
            f"{row['primary_metric'] or '':<6} {number(row['champion_value']):>9} {number(row['baseline_value']):>9}  "
            f"{row['newest']}: {row['newest_decision']}"
        )
    return "\n".join(lines) + "\n\nEvery version and the reasons: make registry ARGS=list"


def _prefixes(settings: Settings) -> set[str]:
    return {"models", *(spec.store_prefix for spec in valid_specs(settings.pipelines_dir))}


def run_all(timeout: float, skip_tags: tuple[str, ...] = ()) -> int:
    env = dict(os.environ)
    settings = Settings.from_env(env)
    api = api_from_env(env)
    specs = {name: load_spec(settings.pipelines_dir / f"{name}.yaml") for name in spec_names(settings.pipelines_dir)}
    specs = {name: spec for name, spec in specs.items() if not set(skip_tags) & set(spec.tags)}
    wait_for_dags(api, ["batch_predict", *(names.dag_id(name) for name in specs)], timeout=120)
    dag_ids = []
    for name, spec in specs.items():
        if conn_id := missing_connection(api, spec):
            print(f"not running retrain_{name}: it needs Airflow connection {conn_id!r} (see docs/pipelines.md)")
        else:
            dag_ids.append(names.dag_id(name))
    api.json("PATCH", "/dags/batch_predict", json={"is_paused": False})  # forecasts follow each promotion
    started = time.monotonic()
    runs = {dag_id: trigger(api, dag_id) for dag_id in dag_ids}
    for dag_id, run_id in runs.items():
        print(f"triggered {dag_id}: run {run_id}")
    states = wait_for_runs(api, runs, timeout)
    print(f"\nruns finished in {time.monotonic() - started:.1f}s: " + ", ".join(f"{d}={s}" for d, s in states.items()))
    failed = [dag_id for dag_id, state in states.items() if state != "success"]
    for dag_id in failed:
        print(f"  {dag_id} did not succeed: {'; '.join(failed_tasks(api, dag_id, runs[dag_id]))}", file=sys.stderr)
    print("\nChampions (the models consumers load) and the gate's newest decisions:")
    print(models_table(settings))
    host, port = env["RETRAIN_API_HOST"], env["RETRAIN_API_PORT"]
    password_file = Path(env["RETRAIN_STATE_DIR"], "admin-password")
    print(f"\nNext:\n  UI:      http://{host}:{port}  (user admin, password in {password_file})")
    # The Models plugin's navigation entry (url_route "models"), as deploy/stack.py's up prints it.
    print(f"  Models:  http://{host}:{port}/plugin/models  (champions, versions, decisions, plots)")
    print("  models:  make models\n  status:  make status\n  stop:    make down")
    return 1 if failed else 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("command", choices=["run-all", "models", "ensure-bucket"])
    parser.add_argument("--timeout", type=float, default=900, help="seconds to wait for the runs")
    parser.add_argument(
        "--skip-tag", action="append", default=[], metavar="TAG", help="run-all: leave out pipelines with this tag"
    )
    args = parser.parse_args(argv)
    settings = Settings.from_env(os.environ)
    if args.command == "run-all":
        return run_all(args.timeout, tuple(args.skip_tag))
    if args.command == "models":
        print(models_table(settings))
        return 0
    location = parse_store_uri(settings.model_store)
    if location.scheme == "s3":
        created = S3Store(location.bucket, settings.aws_conn_id).ensure_bucket()
        print(f"[stack] bucket {location.bucket}: {'created' if created else 'exists'}")
    return 0


if __name__ == "__main__":
    quiet_airflow_info()
    sys.exit(main())
