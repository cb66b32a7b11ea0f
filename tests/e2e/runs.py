"""What the live-stack tests do to runs and read back: trigger, wait for a task's state,
count the S3 object versions a key has had, read the decision history."""

from __future__ import annotations

import json
import time
from datetime import UTC, datetime
from typing import Any

import psycopg2

from tests.e2e.conftest import Stack


def task(stack: Stack, dag_id: str, run_id: str, task_id: str, map_index: int = 0) -> dict:
    """The task's instance for ``map_index``; empty until the mapped task is expanded (or
    while the api-server does not answer)."""
    try:
        response = stack.api.call("GET", f"/dags/{dag_id}/dagRuns/{run_id}/taskInstances/{task_id}/{map_index}")
    except OSError:
        return {}
    if response.status_code != 200:
        return {}
    return response.json()


def wait_for_task_state(
    stack: Stack, dag_id: str, run_id: str, task_id: str, state: str, timeout: float, map_index: int = 0
) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if task(stack, dag_id, run_id, task_id, map_index).get("state") == state:
            return
        time.sleep(0.25)
    raise TimeoutError(f"{task_id} of {run_id} not {state} after {timeout}s")


def trigger_now(stack: Stack, dag_id: str, conf: dict[str, Any] | None = None, unpause: bool = False) -> str:
    """A run of the interval ending now (REST); ``unpause`` for a DAG no other test has run."""
    body: dict[str, Any] = {"logical_date": datetime.now(UTC).isoformat(), "conf": conf or {}}
    run_id = stack.api.json("POST", f"/dags/{dag_id}/dagRuns", json=body)["dag_run_id"]
    if unpause:
        stack.api.json("PATCH", f"/dags/{dag_id}", json={"is_paused": False})
    return run_id


def run_state(stack: Stack, dag_id: str, run_id: str) -> str | None:
    """The run's state, or None while the api-server (or its database) does not answer."""
    try:
        response = stack.api.call("GET", f"/dags/{dag_id}/dagRuns/{run_id}")
    except OSError:
        return None
    return response.json().get("state") if response.status_code == 200 else None


def wait_for_run(stack: Stack, dag_id: str, run_id: str, timeout: float) -> str:
    """Poll through outages until the run succeeds or fails; its final state."""
    deadline = time.monotonic() + timeout
    state = None
    while time.monotonic() < deadline:
        state = run_state(stack, dag_id, run_id)
        if state in ("success", "failed"):
            return state
        time.sleep(1)
    raise TimeoutError(f"{dag_id} run {run_id} still {state} after {timeout}s")


def versions(stack: Stack, key: str) -> int:
    """How many times ``key`` was written (the bucket keeps object versions: ``versioned``)."""
    listed = stack.s3().list_object_versions(Bucket=stack.bucket, Prefix=key)
    return len([v for v in listed.get("Versions", []) if v["Key"] == key])


def versioned(stack: Stack) -> None:
    """Keep every write of every key, so a test can count them (idempotent)."""
    config = {"Status": "Enabled"}
    stack.s3().put_bucket_versioning(Bucket=stack.bucket, VersioningConfiguration=config)


def pointer(stack: Stack, pipeline: str, series: str, name: str = "champion") -> dict | None:
    try:
        return json.loads(stack.get(f"models/{pipeline}/{series}/{name}.json"))
    except stack.s3().exceptions.NoSuchKey:
        return None


def decisions(stack: Stack, pipeline: str) -> list[dict[str, Any]]:
    """The gate's decision rows of ``pipeline`` in the stack's history table."""
    env = stack.env
    connection = psycopg2.connect(
        host=env["RETRAIN_PG_HOST"], port=env["RETRAIN_PG_PORT"], user="postgres", dbname=env["RETRAIN_PG_DB"]
    )
    try:
        with connection.cursor() as cur:
            cur.execute("SELECT to_regclass('retrain_decisions')")
            if cur.fetchone()[0] is None:
                return []
            cur.execute("SELECT * FROM retrain_decisions WHERE pipeline = %s ORDER BY id", (pipeline,))
            names = [column[0] for column in cur.description]
            return [dict(zip(names, row, strict=True)) for row in cur.fetchall()]
    finally:
        connection.close()
