"""What a VM does to the service, done to the live test stack while a run is under way, and
what must hold afterwards: the run completes with no manual action, every version is
published once, and ``champion.json`` never names a model that is not there.

Each test drives a pipeline of its own (``fault_*``, left out of run-all) with fresh
data, prints what it measured (``FAULT <scenario>: ...``: the README's table comes from
these lines) and undoes its fault in a ``finally``, so a failing test leaves the stack
running for the next one. The faults touch only what the session made: its own
PostgreSQL cluster, its own S3 proxy, its own Airflow processes.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import signal
import subprocess
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import timedelta

import psutil
import pytest

from deploy import services, watchdog
from deploy.stack import AIRFLOW_PROCESSES
from include.retrain_airflow.cli import failed_tasks, trigger
from tests.e2e.conftest import Stack, write_flaky_csv
from tests.e2e.runs import (
    decisions,
    pointer,
    task,
    versioned,
    versions,
    wait_for_run,
    wait_for_task_state,
)
from tests.helpers import record_measurement
from tests.tmpfs import fill, small_filesystem

pytestmark = pytest.mark.e2e

OUTAGE = 60.0  # seconds the S3 endpoint and the api-server are away
RESTART_SEC = 10.0  # the units' RestartSec=
WATCHDOG_EVERY = 60.0  # airflow-watchdog.timer's OnUnitActiveSec=


def report(scenario: str, **figures: object) -> None:
    record_measurement(
        f"FAULT {scenario}: "
        + ", ".join(f"{k}={v:.1f}s" if isinstance(v, float) else f"{k}={v}" for k, v in figures.items())
    )


def start(stack: Stack, pipeline: str, days: int) -> tuple[str, str]:
    """New data for the pipeline, then its first run: the latest complete interval, as
    ``make run`` triggers it (so unpausing adds no scheduled run of the same data). A
    first run has no champion to beat: it publishes and promotes."""
    versioned(stack)
    write_flaky_csv(stack.state / "data" / f"{pipeline}.csv", days=days)
    dag_id = f"retrain_{pipeline}"
    return dag_id, trigger(stack.api, dag_id)


def assert_published_once(stack: Stack, pipeline: str, series: str = "level") -> dict:
    """The champion names a complete version whose manifest and model were each written once."""
    champion = pointer(stack, pipeline, series)
    assert champion is not None, f"{pipeline}/{series} has no champion"
    assert versions(stack, champion["manifest"]) == 1, "the manifest was written once"
    assert versions(stack, champion["model"]) == 1, "the model was written once"
    model = stack.get(champion["model"])
    assert hashlib.sha256(model).hexdigest() == champion["sha256"]
    return champion


@dataclass
class Supervisor:
    """What the VM's systemd does for the units: ``Restart=always`` + ``RestartSec=10s`` (a
    process of the stack that exits is started again 10 s later) and airflow-watchdog.timer
    (every minute, deploy/watchdog.py restarts a scheduler that is alive but stopped
    heartbeating: Airflow 3.3.2's can hang while it shuts down after losing its database).
    The test stack has this instead, so "without manual action" means the same in both."""

    stack: Stack
    restarts: list[tuple[str, float]] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)

    def _watch(self) -> None:
        gone: dict[str, float] = {}
        next_watchdog = time.monotonic() + WATCHDOG_EVERY
        while not self._stop.wait(0.5):
            if time.monotonic() >= next_watchdog:
                next_watchdog = time.monotonic() + WATCHDOG_EVERY
                self._watchdog()
            for name in AIRFLOW_PROCESSES:
                if services.running(self.stack.profile, name) is not None:
                    gone.pop(name, None)
                    continue
                since = gone.setdefault(name, time.monotonic())
                if time.monotonic() - since >= RESTART_SEC:
                    with contextlib.suppress(services.ServiceError):  # the unit would retry too
                        services.start(self.stack.profile, name)
                    self.restarts.append((name, time.monotonic()))
                    gone.pop(name, None)

    def _watchdog(self) -> None:
        """One tick of airflow-watchdog.timer, with the unit's thresholds; its restart command
        (``systemctl restart``) is a stop (SIGTERM, then SIGKILL of the group) and a start."""
        try:
            seen = watchdog.observe(self.stack.env["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"])
        except Exception:  # the database is down: the watchdog restarts nothing either
            return
        reason = watchdog.verdict(
            seen, timedelta(seconds=watchdog.STALE_AFTER), timedelta(seconds=watchdog.STUCK_AFTER)
        )
        if reason is not None:
            services.stop(self.stack.profile, "scheduler")
            with contextlib.suppress(services.ServiceError):
                services.start(self.stack.profile, "scheduler")
            self.restarts.append((f"scheduler (watchdog: {reason})", time.monotonic()))

    @contextlib.contextmanager
    def running(self) -> Iterator[Supervisor]:
        thread = threading.Thread(target=self._watch, daemon=True)
        thread.start()
        try:
            yield self
        finally:
            self._stop.set()
            thread.join(10)
            for name in AIRFLOW_PROCESSES:  # whatever happened, the next test finds a whole stack
                services.start(self.stack.profile, name)
            services.wait_healthy(self.stack.profile, self.stack.env, seconds=180)


def wait_healthy_since(stack: Stack, since: float, timeout: float = 180) -> float:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        status = services.health(stack.env)
        if all(status.get(name) == "healthy" for name in services.REQUIRED_HEALTH):
            return time.monotonic() - since
        time.sleep(0.5)
    raise TimeoutError(f"the stack is not healthy {timeout}s after the fault")


def test_postgres_restart_while_tasks_run(stack: Stack) -> None:
    """A minor upgrade's restart of PostgreSQL (fast shutdown: every connection is cut) while
    ``train`` runs: the run completes without manual action."""
    dag_id, run_id = start(stack, "fault_pg", days=131)
    wait_for_task_state(stack, dag_id, run_id, "train", "running", timeout=180)
    with Supervisor(stack).running() as supervisor:
        restarted_in = stack.cluster.restart()
        back = time.monotonic()
        healthy = wait_healthy_since(stack, back)
        state = wait_for_run(stack, dag_id, run_id, timeout=400)
        done = time.monotonic() - back
    assert state == "success", failed_tasks(stack.api, dag_id, run_id)
    assert_published_once(stack, "fault_pg")
    report(
        "postgres-restart",
        restart=restarted_in,
        healthy_after=healthy,
        run_done_after=done,
        processes_restarted=[name for name, _ in supervisor.restarts] or "none",
        train_tries=task(stack, dag_id, run_id, "train")["try_number"],
    )


def test_s3_outage_during_publish(stack: Stack) -> None:
    """The S3 endpoint unreachable for 60 s from the moment ``publish`` can start: tasks
    retry, the run completes after it returns, nothing is published twice, and at no
    moment does ``champion.json`` name an object that is not there."""
    versioned(stack)
    s3 = stack.s3()
    violations: list[str] = []
    checks = 0
    watching = threading.Event()

    def watch() -> None:  # straight to moto, past the cut proxy
        nonlocal checks
        while not watching.wait(0.2):
            checks += 1
            try:
                body = s3.get_object(Bucket=stack.bucket, Key="models/fault_s3/level/champion.json")["Body"]
            except s3.exceptions.NoSuchKey:
                continue  # no champion yet: nothing named, nothing missing
            champion = json.loads(body.read())
            for key in (champion["manifest"], champion["model"]):
                try:
                    s3.head_object(Bucket=stack.bucket, Key=key)
                except s3.exceptions.ClientError as exc:
                    violations.append(f"champion.json names {key}, which is missing: {exc}")

    pointer_writes = versions(stack, "models/fault_s3/level/champion.json")
    dag_id, run_id = start(stack, "fault_s3", days=132)
    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    try:
        wait_for_task_state(stack, dag_id, run_id, "gate", "success", timeout=240)
        stack.s3_proxy.cut()
        time.sleep(OUTAGE)
    finally:
        stack.s3_proxy.restore()
    back = time.monotonic()
    try:
        state = wait_for_run(stack, dag_id, run_id, timeout=400)
    finally:
        watching.set()
        watcher.join(5)
    done = time.monotonic() - back
    assert state == "success", failed_tasks(stack.api, dag_id, run_id)
    assert violations == []
    assert checks > OUTAGE, f"champion.json was checked only {checks} times"
    champion = assert_published_once(stack, "fault_s3")
    assert versions(stack, "models/fault_s3/level/champion.json") == pointer_writes + 1, "promoted once"
    rows = [row for row in decisions(stack, "fault_s3") if row["run_id"] == run_id]
    assert len(rows) == 1 and rows[0]["version"] == champion["version"]
    report(
        "s3-outage",
        outage=OUTAGE,
        run_done_after=done,
        publish_tries=task(stack, dag_id, run_id, "publish")["try_number"],
        champion_checks=checks,
    )


def test_api_server_hung_while_a_task_runs(stack: Stack) -> None:
    """The api-server stopped (SIGSTOP: a hung server) for 60 s while ``train`` runs: the
    task rides it out on the Execution API client's retries ([workers] settings in
    airflow.cfg.template) and the run completes without a task retry."""
    dag_id, run_id = start(stack, "fault_api", days=133)
    wait_for_task_state(stack, dag_id, run_id, "train", "running", timeout=180)
    server = services.running(stack.profile, "api-server")
    assert server is not None
    os.killpg(server, signal.SIGSTOP)
    try:
        time.sleep(OUTAGE)
    finally:
        os.killpg(server, signal.SIGCONT)
    back = time.monotonic()
    state = wait_for_run(stack, dag_id, run_id, timeout=400)
    done = time.monotonic() - back
    assert state == "success", failed_tasks(stack.api, dag_id, run_id)
    tries = task(stack, dag_id, run_id, "train")["try_number"]
    report("api-server-hung", outage=OUTAGE, run_done_after=done, train_tries=tries)
    assert tries == 1, "train rode out the outage instead of dying and being retried"
    assert_published_once(stack, "fault_api")


def task_process(ti_id: str, timeout: float = 60) -> psutil.Process:
    """The process running the task instance: the task runner retitles itself
    ``airflow worker -- <ti id>``. Its parent, the LocalExecutor worker that supervises it, is
    ``airflow worker -- LocalExecutor: <ti id>``; the OOM killer takes the task (it is the
    one that grows), and the supervisor reports the death."""
    title = f"airflow worker -- {ti_id}"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for process in psutil.process_iter(["cmdline"]):
            if " ".join(process.info["cmdline"] or []).strip() == title:
                return process
        time.sleep(0.2)
    raise TimeoutError(f"no process titled {title!r} after {timeout}s")


def test_task_process_killed_like_the_oom_killer_does(stack: Stack) -> None:
    """SIGKILL the process running ``train``: the try fails, the retry lands on the same keys."""
    dag_id, run_id = start(stack, "fault_kill", days=134)
    wait_for_task_state(stack, dag_id, run_id, "train", "running", timeout=180)
    ti = task(stack, dag_id, run_id, "train")
    victim = task_process(ti["id"])
    killed = time.monotonic()
    victim.kill()
    state = wait_for_run(stack, dag_id, run_id, timeout=400)
    done = time.monotonic() - killed
    assert state == "success", failed_tasks(stack.api, dag_id, run_id)
    assert task(stack, dag_id, run_id, "train")["try_number"] == 2
    champion = assert_published_once(stack, "fault_kill")
    latest = pointer(stack, "fault_kill", "level", "latest")
    assert latest is not None and latest["version"] == champion["version"], "the retry's version is the run's own"
    report("task-sigkill", run_done_after=done, train_tries=2)


def test_state_directory_full_while_a_run_starts(stack: Stack) -> None:
    """The filesystem under the pipeline's part of the state directory (its task logs) full
    when a run starts: the tasks fail saying so, the scheduler stays up, no version is
    visible to consumers, and once space is freed the retry completes the run."""
    pipeline, dag_id = "fault_disk", "retrain_fault_disk"
    scheduler = services.running(stack.profile, "scheduler")
    with small_filesystem(stack.state / "logs" / f"dag_id={dag_id}", size="1m") as disk:
        filler = fill(disk)
        _, run_id = start(stack, pipeline, days=137)
        triggered = time.monotonic()
        wait_for_task_state(stack, dag_id, run_id, "extract", "up_for_retry", timeout=240)
        failed = time.monotonic() - triggered
        assert services.running(stack.profile, "scheduler") == scheduler, "the scheduler stayed up"
        assert services.health(stack.env).get("scheduler") == "healthy"
        assert stack.keys(f"models/{pipeline}/") == [], "nothing of the run is visible to consumers"
        said = (stack.state / "logs" / "scheduler.log").read_text(errors="replace")
        assert "No space left on device" in said, "the failure names its cause"
        filler.unlink()
        freed = time.monotonic()
        state = wait_for_run(stack, dag_id, run_id, timeout=400)
    done = time.monotonic() - freed
    assert state == "success", failed_tasks(stack.api, dag_id, run_id)
    assert_published_once(stack, pipeline)
    report(
        "disk-full",
        failed_after=failed,
        run_done_after_freeing=done,
        extract_tries=task(stack, dag_id, run_id, "extract")["try_number"],
    )


def test_scheduler_stopped_with_sigterm_while_tasks_run(stack: Stack) -> None:
    """``systemctl stop`` of the scheduler (KillMode=mixed: SIGTERM to the main process, the
    rest killed once it exits) while ``train`` runs, then started again: nothing is lost."""
    dag_id, run_id = start(stack, "fault_term", days=135)
    wait_for_task_state(stack, dag_id, run_id, "train", "running", timeout=180)
    scheduler = services.running(stack.profile, "scheduler")
    assert scheduler is not None
    stopping = time.monotonic()
    os.kill(scheduler, signal.SIGTERM)
    with contextlib.suppress(psutil.NoSuchProcess):
        psutil.Process(scheduler).wait(timeout=120)
    stop_took = time.monotonic() - stopping
    services.stop(stack.profile, "scheduler")  # SIGKILL whatever the main process left in its group
    restarted = time.monotonic()
    services.start(stack.profile, "scheduler")
    state = wait_for_run(stack, dag_id, run_id, timeout=400)
    done = time.monotonic() - restarted
    assert state == "success", failed_tasks(stack.api, dag_id, run_id)
    assert_published_once(stack, "fault_term")
    rows = [row for row in decisions(stack, "fault_term") if row["run_id"] == run_id]
    assert len(rows) == 1
    tries = task(stack, dag_id, run_id, "train")["try_number"]
    report("scheduler-sigterm", stop_took=stop_took, run_done_after_restart=done, train_tries=tries)


def test_one_interval_triggered_twice_at_once(stack: Stack) -> None:
    """The same interval triggered through REST and the CLI at the same moment: one run is
    refused as a duplicate, and exactly one version of the interval exists."""
    pipeline = "fault_twice"
    versioned(stack)
    write_flaky_csv(stack.state / "data" / f"{pipeline}.csv", days=136)
    dag_id = f"retrain_{pipeline}"
    # The interval the scheduler would run next: unpausing afterwards adds no run of its own.
    logical = stack.api.json("GET", f"/dags/{dag_id}")["next_dagrun_logical_date"]
    airflow = str(stack.profile.venv / "bin" / "airflow")

    def by_rest() -> str | None:
        response = stack.api.call("POST", f"/dags/{dag_id}/dagRuns", json={"logical_date": logical})
        return response.json()["dag_run_id"] if response.status_code == 200 else None

    def by_cli() -> subprocess.CompletedProcess[str]:
        return stack.run(airflow, "dags", "trigger", dag_id, "--logical-date", logical, "-o", "json")

    with ThreadPoolExecutor(2) as pool:
        rest, cli = pool.submit(by_rest), pool.submit(by_cli)
        rest_run, cli_done = rest.result(), cli.result()
    stack.api.json("PATCH", f"/dags/{dag_id}", json={"is_paused": False})
    created = stack.api.json("GET", f"/dags/{dag_id}/dagRuns", params={"limit": 10})["dag_runs"]
    assert len(created) == 1, f"two runs of one interval: {created}"
    assert (rest_run is None) != (cli_done.returncode != 0), "exactly one of the two triggers was refused"
    run_id = created[0]["dag_run_id"]
    assert wait_for_run(stack, dag_id, run_id, timeout=300) == "success", failed_tasks(stack.api, dag_id, run_id)
    latest = pointer(stack, pipeline, "level", "latest")
    assert latest is not None
    listed = stack.keys(f"models/{pipeline}/level/{latest['version']}/manifest.json")
    assert len(listed) == 1 and versions(stack, listed[0]) == 1
    rows = [row for row in decisions(stack, pipeline) if row["run_id"] == run_id]
    assert len(rows) == 1
    report("double-trigger", refused="rest" if rest_run is None else "cli", runs=1, versions=1)
