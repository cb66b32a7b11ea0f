"""The same bundle on the CeleryExecutor: a stack of its own with RETRAIN_EXECUTOR=celery, a
real Redis broker (started by the stack on a free port) and two Celery workers with state
directories of their own, as on two machines. ``worker1`` consumes ``default``; ``worker2``
consumes ``default`` and ``large``.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator

import psycopg2
import pytest

from deploy import broker, services, workers
from include.retrain_airflow.cli import failed_tasks, trigger
from tests.e2e.conftest import ARIMA, FAULT_TAG, SLOW, Stack, running_stack, write_flaky_csv
from tests.e2e.runs import task, versioned, versions, wait_for_run, wait_for_task_state
from tests.helpers import BUNDLE, free_port, record_measurement

pytestmark = pytest.mark.e2e

# Left out of run-all (FAULT_TAG) but on_large: a run-all before their test would train on the
# same data, and their test's run would then skip as "data unchanged".
CELERY_PIPELINES = {
    "on_large": {**ARIMA, "queue": workers.SECOND_QUEUE},  # only worker2 consumes it
    "celery_kill": {**SLOW, "tags": FAULT_TAG},
    "celery_broker": {**ARIMA, "tags": FAULT_TAG},
    "celery_logs": {**ARIMA, "tags": FAULT_TAG},
}
# Task logs also go to the stack's bucket, as from worker VMs whose disks the api-server cannot read.
REMOTE_LOGS = "task-logs"
# A killed worker's task is failed by the scheduler once its heartbeats stop for this long,
# then retried (Airflow's default is 300 s; the test stack waits less).
HEARTBEAT_TIMEOUT = 60


@pytest.fixture(scope="module")
def celery_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    settings = {
        "RETRAIN_EXECUTOR": "celery",
        "RETRAIN_BROKER_URL": f"redis://127.0.0.1:{free_port()}/0",  # the stack starts its own Redis there
        "RETRAIN_WORKER_CONCURRENCY": "2",
        "AIRFLOW__SCHEDULER__TASK_INSTANCE_HEARTBEAT_TIMEOUT": str(HEARTBEAT_TIMEOUT),  # the scheduler's
        "RETRAIN_REMOTE_LOGS": f"s3://retrain-test-models/{REMOTE_LOGS}",
    }
    with running_stack(tmp_path_factory.mktemp("celery"), CELERY_PIPELINES, settings) as made:
        yield made


def hostnames(stack: Stack, dag_id: str) -> dict[str, set[str]]:
    """task_id -> the hostnames its task instances (all tries) ran on, from the metadata database."""
    env = stack.env
    connection = psycopg2.connect(
        host=env["RETRAIN_PG_HOST"], port=env["RETRAIN_PG_PORT"], user="postgres", dbname=env["RETRAIN_PG_DB"]
    )
    try:
        with connection.cursor() as cur:
            cur.execute(
                "SELECT task_id, hostname FROM task_instance WHERE dag_id = %s AND hostname <> '' "
                "UNION SELECT task_id, hostname FROM task_instance_history WHERE dag_id = %s AND hostname <> ''",
                (dag_id, dag_id),
            )
            found: dict[str, set[str]] = {}
            for task_id, host in cur.fetchall():
                found.setdefault(task_id, set()).add(host.split("@")[0])
            return found
    finally:
        connection.close()


def manifests(stack: Stack, pipeline: str) -> list[str]:
    return [k for k in stack.keys(f"models/{pipeline}/level/") if k.endswith("/manifest.json")]


def worker(stack: Stack, name: str):
    return workers.local_worker(stack.profile, name)


def test_the_shipped_pipelines_run_on_both_workers(celery_stack: Stack) -> None:
    """make run's job on the CeleryExecutor: every shipped pipeline succeeds, and the task
    instances in the metadata database name both workers."""
    started = time.monotonic()
    done = celery_stack.run(
        sys.executable, "-m", "include.retrain_airflow.cli", "run-all", "--timeout", "600", "--skip-tag", FAULT_TAG
    )
    seconds = time.monotonic() - started
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    used = set()
    dags = [d["dag_id"] for d in celery_stack.api.json("GET", "/dags", params={"limit": 100})["dags"]]
    for dag_id in dags:
        for hosts in hostnames(celery_stack, dag_id).values():
            used |= hosts
    assert {"worker1", "worker2"} <= used, f"task instances ran on {used}"
    record_measurement(f"CELERY run-all on two workers: {seconds:.1f}s")


def test_a_pipeline_pinned_to_a_queue_runs_only_on_its_worker(celery_stack: Stack) -> None:
    versioned(celery_stack)
    run_id = trigger(celery_stack.api, "retrain_on_large")
    state = wait_for_run(celery_stack, "retrain_on_large", run_id, timeout=300)
    assert state == "success", failed_tasks(celery_stack.api, "retrain_on_large", run_id)
    hosts = hostnames(celery_stack, "retrain_on_large")
    assert hosts and all(found == {"worker2"} for found in hosts.values()), hosts
    status = subprocess.run(
        [sys.executable, str(BUNDLE / "deploy" / "stack.py"), "status"],
        env=celery_stack.env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert status.returncode == 0, status.stderr
    assert re.search(rf"celery: queue {workers.SECOND_QUEUE} \(on_large\): consumed by worker2@", status.stdout), (
        status.stdout
    )


def test_a_worker_killed_mid_task_still_yields_one_version(celery_stack: Stack) -> None:
    """SIGKILL the Celery worker running ``train`` (its pool and the task die with it): the
    scheduler fails the silent try after the heartbeat timeout, the retry runs on the other
    worker, and exactly one version is published."""
    versioned(celery_stack)
    write_flaky_csv(celery_stack.state / "data" / "celery_kill.csv", days=140)
    dag_id = "retrain_celery_kill"
    before = set(manifests(celery_stack, "celery_kill"))
    run_id = trigger(celery_stack.api, dag_id)
    wait_for_task_state(celery_stack, dag_id, run_id, "train", "running", timeout=240)
    ti = task(celery_stack, dag_id, run_id, "train")
    victim = ti["hostname"].split("@")[0]
    assert victim in workers.LOCAL_WORKERS, ti["hostname"]
    pid = services.running(worker(celery_stack, victim), workers.UNIT)
    assert pid is not None
    killed = time.monotonic()
    os.killpg(pid, signal.SIGKILL)
    try:
        state = wait_for_run(celery_stack, dag_id, run_id, timeout=HEARTBEAT_TIMEOUT + 300)
    finally:
        services.start(worker(celery_stack, victim), workers.UNIT)
    done = time.monotonic() - killed
    assert state == "success", failed_tasks(celery_stack.api, dag_id, run_id)
    retried = task(celery_stack, dag_id, run_id, "train")
    assert retried["try_number"] == 2 and retried["hostname"].split("@")[0] != victim, retried
    new = sorted(set(manifests(celery_stack, "celery_kill")) - before)
    assert len(new) == 1 and versions(celery_stack, new[0]) == 1, f"this run published {new}"
    record_measurement(f"CELERY worker-sigkill: run done {done:.1f}s after the kill, train tries 2, 1 version")


def test_task_logs_go_to_s3_and_the_ui_reads_them_there(celery_stack: Stack) -> None:
    """With RETRAIN_REMOTE_LOGS, a worker uploads each task's log when the task ends, and the
    api-server serves it from S3: here the local copy is deleted first, as if the task had
    run on another machine."""
    dag_id = "retrain_celery_logs"
    run_id = trigger(celery_stack.api, dag_id)
    state = wait_for_run(celery_stack, dag_id, run_id, timeout=300)
    assert state == "success", failed_tasks(celery_stack.api, dag_id, run_id)
    uploaded = [k for k in celery_stack.keys(f"{REMOTE_LOGS}/dag_id={dag_id}/") if "/task_id=validate/" in k]
    assert uploaded, celery_stack.keys(f"{REMOTE_LOGS}/")[:20]
    parts = dict(part.split("=", 1) for part in uploaded[0].removesuffix(".log").split("/") if "=" in part)
    assert parts["run_id"] == run_id, uploaded
    local = list((celery_stack.state / "logs" / f"dag_id={dag_id}").rglob("task_id=validate/**/*.log"))
    for path in local:
        path.unlink()
    log = celery_stack.api.call(
        "GET",
        f"/dags/{dag_id}/dagRuns/{run_id}/taskInstances/validate/logs/{parts['attempt']}",
        params={"map_index": parts.get("map_index", "-1"), "full_content": True},
        headers={"Accept": "application/json"},
    ).text
    assert "stage validate took" in log and REMOTE_LOGS in log, f"{uploaded}: {log[-2000:]}"


def queued_messages(stack: Stack, queue: str = "default") -> int:
    """Tasks waiting in the broker's queue (a Redis list of Celery messages)."""
    import redis

    return redis.Redis.from_url(stack.env["AIRFLOW__CELERY__BROKER_URL"]).llen(queue)


def test_the_broker_restarted_while_tasks_are_queued_loses_and_repeats_nothing(celery_stack: Stack) -> None:
    """With no worker up, a run's first task waits in Redis; Redis restarts (SIGTERM writes its
    append-only file); a worker that starts while it is down is refused with the broker named;
    once it is back, the workers take the queued task and the run succeeds with every task
    in its first try and one version published."""
    versioned(celery_stack)
    profile, dag_id = celery_stack.profile, "retrain_celery_broker"
    names = list(workers.local_workers(celery_stack.env))
    for name in names:
        services.stop(worker(celery_stack, name), workers.UNIT)
    before = set(manifests(celery_stack, "celery_broker"))
    try:
        run_id = trigger(celery_stack.api, dag_id)
        wait_for_task_state(celery_stack, dag_id, run_id, "extract", "queued", timeout=120)
        deadline = time.monotonic() + 60
        while queued_messages(celery_stack) == 0 and time.monotonic() < deadline:
            time.sleep(0.5)
        assert queued_messages(celery_stack) >= 1, "the scheduler sent extract to the broker"
        stopped = time.monotonic()
        assert services.stop(profile, "broker"), "the stack's own Redis"
        with pytest.raises(
            services.ServiceError, match=r"the Celery broker redis://127\.0\.0\.1:\d+/0 does not answer"
        ):
            services.start(worker(celery_stack, names[0]), workers.UNIT)
        services.start(profile, "broker")
        services.wait_until(
            lambda: broker.answers(celery_stack.env["AIRFLOW__CELERY__BROKER_URL"]), 30, "Redis", profile, "broker"
        )
        down = time.monotonic() - stopped
        assert queued_messages(celery_stack) >= 1, "the queued task survived the restart (append-only file)"
    finally:
        for name in names:
            services.start(worker(celery_stack, name), workers.UNIT)
    state = wait_for_run(celery_stack, dag_id, run_id, timeout=300)
    assert state == "success", failed_tasks(celery_stack.api, dag_id, run_id)
    listed = celery_stack.api.json("GET", f"/dags/{dag_id}/dagRuns/{run_id}/taskInstances")["task_instances"]
    tries = {(ti["task_id"], ti["map_index"]): ti["try_number"] for ti in listed if ti["state"] == "success"}
    assert tries and set(tries.values()) == {1}, f"a task ran twice or was retried: {tries}"
    new = sorted(set(manifests(celery_stack, "celery_broker")) - before)
    assert len(new) == 1 and versions(celery_stack, new[0]) == 1, f"this run published {new}"
    record_measurement(f"CELERY broker restart with a task queued: broker down {down:.1f}s, run done, all tries 1")
