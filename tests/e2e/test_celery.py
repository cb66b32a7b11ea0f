"""The same bundle on the CeleryExecutor: a stack of its own with RETRAIN_EXECUTOR=celery, a
real Redis broker (started by the stack on a free port) and two Celery workers with state
directories of their own, as on two machines. ``worker1`` consumes ``default``; ``worker2``
consumes ``default`` and ``large``.
"""

from __future__ import annotations

import os
import signal
import sys
import time
from collections.abc import Iterator

import psycopg2
import pytest

from deploy import services, workers
from include.retrain_airflow.cli import failed_tasks, trigger
from tests.e2e.conftest import ARIMA, SLOW, Stack, running_stack, write_flaky_csv
from tests.e2e.runs import task, versioned, versions, wait_for_run, wait_for_task_state
from tests.helpers import free_port, record_measurement

pytestmark = pytest.mark.e2e

CELERY_PIPELINES = {
    "on_large": {**ARIMA, "queue": workers.SECOND_QUEUE},  # only worker2 consumes it
    "celery_kill": SLOW,
}
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
        sys.executable, "-m", "include.retrain_airflow.cli", "run-all", "--timeout", "600", "--skip-tag", "fault-test"
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
