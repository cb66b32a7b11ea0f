"""The stack as the VM runs it: processes started from the rendered units, operated like
an operator would (CLI and REST), and broken the ways services break: a scheduler killed
mid-task, an api-server outage, a taken port, an unreachable database.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time

import psutil
import pytest

from deploy import services
from deploy.render import unit_commands
from include.retrain_airflow.cli import failed_tasks, trigger, wait_for_runs
from tests.e2e.conftest import Stack, write_flaky_csv
from tests.e2e.runs import task, trigger_now, versions, wait_for_task_state
from tests.helpers import BUNDLE, free_port

pytestmark = pytest.mark.e2e


def test_every_component_is_healthy(stack: Stack) -> None:
    status = services.health(stack.env)
    assert {k: status[k] for k in services.REQUIRED_HEALTH} == dict.fromkeys(services.REQUIRED_HEALTH, "healthy")


def test_processes_are_the_units_commands(stack: Stack) -> None:
    """One source of truth: each process is its unit's ExecStart, in its WorkingDirectory.

    (Airflow rewrites its process titles, which hides argv and environ from /proc; that
    every process shares the env file's jwt_secret shows in every task succeeding.)
    """
    for name in ("api-server", "scheduler", "dag-processor"):
        unit = stack.profile.unit_dir / f"airflow-{name}.service"
        _, command = unit_commands(unit)
        no_log_server = " --skip-serve-logs" if name == "scheduler" else ""  # docs/security.md
        assert command == f"{stack.profile.venv}/bin/airflow {name}{no_log_server}"
        process = psutil.Process(services.running(stack.profile, name))
        assert process.name().startswith("airflow"), process.name()
        assert f"WorkingDirectory={process.cwd()}" in unit.read_text()


@pytest.mark.usefixtures("run_all")  # a run of a paused DAG never starts: run-all unpauses the pipelines
def test_trigger_by_cli_and_by_rest_api(stack: Stack) -> None:
    """An operator's two ways in: `airflow dags trigger` and the REST API with a real login."""
    cli = stack.run(str(stack.profile.venv / "bin" / "airflow"), "dags", "trigger", "retrain_us_macro", "-o", "json")
    assert cli.returncode == 0, cli.stderr
    rows = [line for line in cli.stdout.splitlines() if line.startswith("[{")]
    cli_run = json.loads(rows[-1])[0]["dag_run_id"]
    rest_run = trigger_now(stack, "retrain_co2_weekly")
    states = wait_for_runs(stack.api, {"retrain_us_macro": cli_run, "retrain_co2_weekly": rest_run}, timeout=300)
    assert states == {"retrain_us_macro": "success", "retrain_co2_weekly": "success"}
    for pipeline, series in (("us_macro", "realgdp"), ("us_macro", "unemp"), ("co2_weekly", "co2")):
        pointer = json.loads(stack.get(f"models/{pipeline}/{series}/latest.json"))
        assert stack.get(pointer["model"])


def test_scheduler_killed_mid_task_recovers_without_publishing_twice(stack: Stack) -> None:
    """SIGKILL the scheduler and everything it started (what systemd's restart does to the
    unit's cgroup) while `train` runs; restart it: the run completes within 90 s, once."""
    s3 = stack.s3()
    s3.put_bucket_versioning(Bucket=stack.bucket, VersioningConfiguration={"Status": "Enabled"})
    pointer_writes = versions(stack, "models/slow/level/latest.json")
    dag_id = "retrain_slow"
    write_flaky_csv(stack.state / "data" / "slow.csv", days=122)  # new data: the run trains
    run_id = trigger(stack.api, dag_id)
    wait_for_task_state(stack, dag_id, run_id, "train", "running", timeout=180)
    time.sleep(2)
    scheduler = psutil.Process(services.running(stack.profile, "scheduler"))
    doomed = [scheduler, *scheduler.children(recursive=True)]
    assert len(doomed) > 1, "the running task is the scheduler's descendant"
    for process in doomed:
        process.kill()
    psutil.wait_procs(doomed, timeout=15)
    services.pid_file(stack.profile, "scheduler").unlink()

    restarted = time.monotonic()
    services.start(stack.profile, "scheduler")
    states = wait_for_runs(stack.api, {dag_id: run_id}, timeout=240)
    took = time.monotonic() - restarted
    print(f"interrupted run finished {took:.1f}s after the scheduler restart")
    assert states[dag_id] == "success", failed_tasks(stack.api, dag_id, run_id)
    assert took < 90
    assert task(stack, dag_id, run_id, "train")["try_number"] >= 2, "train was interrupted and run again"
    version = json.loads(stack.get("models/slow/level/latest.json"))["version"]
    assert versions(stack, f"models/slow/level/{version}/model.pkl") == 1
    assert versions(stack, f"models/slow/level/{version}/manifest.json") == 1
    assert versions(stack, "models/slow/level/latest.json") == pointer_writes + 1

    again = trigger_now(stack, dag_id)
    assert wait_for_runs(stack.api, {dag_id: again}, timeout=240)[dag_id] == "success"
    assert task(stack, dag_id, again, "extract")["state"] == "skipped", "no new data: nothing retrained"
    assert versions(stack, f"models/slow/level/{version}/model.pkl") == 1, "nothing rewritten"


@pytest.mark.usefixtures("run_all")  # retrain_slow unpaused, whether or not the scheduler test ran first
def test_tasks_survive_an_api_server_restart(stack: Stack) -> None:
    """The api-server goes down while a task runs and comes back: the run still succeeds."""
    dag_id = "retrain_slow"
    write_flaky_csv(stack.state / "data" / "slow.csv", days=123)  # new data: the run trains
    run_id = trigger_now(stack, dag_id)
    wait_for_task_state(stack, dag_id, run_id, "train", "running", timeout=180)
    services.stop(stack.profile, "api-server")
    time.sleep(5)
    services.start(stack.profile, "api-server")
    services.wait_healthy(stack.profile, stack.env, seconds=120)
    assert wait_for_runs(stack.api, {dag_id: run_id}, timeout=300)[dag_id] == "success"


def test_taken_port_is_refused_before_anything_starts(stack: Stack, tmp_path) -> None:
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith(("AIRFLOW", "RETRAIN_"))},
        "RETRAIN_STACK_DIR": str(tmp_path),
        "RETRAIN_API_PORT": stack.env["RETRAIN_API_PORT"],  # the running stack holds it
        "RETRAIN_S3_PORT": str(free_port()),
        "RETRAIN_LOG_SERVER_PORT": str(free_port()),
    }
    done = subprocess.run(
        [sys.executable, str(BUNDLE / "deploy" / "stack.py"), "up"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 1
    assert f"port {stack.env['RETRAIN_API_PORT']} (RETRAIN_API_PORT) is taken" in done.stderr
    assert not (tmp_path / "run").exists() or not any((tmp_path / "run").iterdir()), "nothing was started"


def test_unreachable_database_stops_the_start_with_a_clear_message(stack: Stack) -> None:
    """The units' ExecStartPre check fails fast, naming the cause; Restart= retries it."""
    pre, _ = unit_commands(stack.profile.unit_dir / "airflow-scheduler.service")
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]
    env = {**services.process_env(stack.profile)}
    env["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"] = f"postgresql+psycopg2://x:y@127.0.0.1:{port}/airflow"
    done = subprocess.run(pre[0].split(), env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode != 0
    assert "Connection refused" in done.stdout + done.stderr


def test_watchdog_sees_a_healthy_scheduler(stack: Stack) -> None:
    done = stack.run(sys.executable, str(BUNDLE / "deploy" / "watchdog.py"), "--dry-run")
    assert done.returncode == 0 and "scheduler healthy" in done.stdout, done.stdout + done.stderr
