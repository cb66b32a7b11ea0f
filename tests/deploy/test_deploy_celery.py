"""`make deploy` of a CeleryExecutor deployment on two "VMs" of this machine, as root.

The main VM (RETRAIN_EXECUTOR=celery, RETRAIN_PRIVATE_HOST=127.0.0.2) runs the broker with a
password and opens PostgreSQL to the workers' network; a worker VM (`make deploy ROLE=worker`
with the main VM's worker.env) gets only the worker unit. 127.0.0.2 stands for the private
address: it is loopback too, so this machine reaches it. The main VM's database is a
PostgreSQL cluster of the test's own (its listen_addresses change and it restarts), and both
deployments live in a temporary root under test names; both virtualenvs are links to the run's
shared one (tests.helpers.deploy_venv; a real VM builds its own), so deploying takes seconds.
"""

from __future__ import annotations

import json
import os
import pwd
import shlex
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from deploy import broker, render, services
from deploy.envfile import read_env_file
from tests.helpers import BUNDLE, DEPLOY_MARKS, free_port, link_deploy_venv, make
from tests.pgcluster import Cluster

pytestmark = DEPLOY_MARKS

USER = "retrain-celery-test"
DB = "airflow_celery_deploy_test"
PRIVATE = "127.0.0.2"


@dataclass(frozen=True)
class TwoVMs:
    root: Path
    cluster: Cluster
    main_env: dict[str, str]  # the caller's environment of each make deploy
    worker_env: dict[str, str]
    main: subprocess.CompletedProcess[str]  # what each first make deploy printed
    worker: subprocess.CompletedProcess[str]

    @property
    def main_file(self) -> dict[str, str]:
        return read_env_file(self.root / "main-etc" / "airflow.env")

    @property
    def worker_file(self) -> dict[str, str]:
        return read_env_file(self.root / "worker-etc" / "airflow.env")


def vm(root: Path, name: str) -> dict[str, str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith(("AIRFLOW", "RETRAIN_"))}
    return {
        **base,
        "RETRAIN_PREFIX": str(root / "opt"),
        "RETRAIN_ETC": str(root / f"{name}-etc"),
        "RETRAIN_STATE": str(root / f"{name}-var"),
        "RETRAIN_UNIT_DIR": str(root / f"{name}-units"),
        "RETRAIN_SERVICE_USER": USER,
    }


@pytest.fixture(scope="module")
def two_vms() -> Iterator[TwoVMs]:
    root = Path(tempfile.mkdtemp(prefix="retrain-celery-deploy-"))
    root.chmod(0o755)  # the service user must reach the venv and the bundle
    cluster = Cluster(free_port())
    main_env = {
        **vm(root, "main"),
        "RETRAIN_EXECUTOR": "celery",
        "RETRAIN_MODEL_STORE": "s3://retrain-celery-deploy-test",
        "RETRAIN_PG_PORT": str(cluster.port),
        "RETRAIN_PG_DB": DB,
        "RETRAIN_PG_USER": DB,
        "RETRAIN_API_PORT": str(free_port()),
        "RETRAIN_BROKER_URL": f"redis://127.0.0.1:{free_port()}/0",
        "RETRAIN_PRIVATE_HOST": PRIVATE,
        "RETRAIN_WORKER_NETWORK": "127.0.0.0/8",
    }
    worker_env = {
        **vm(root, "worker"),
        "RETRAIN_PREFIX": str(root / "worker-opt"),
        "RETRAIN_MAIN_ENV": str(root / "main-etc" / "worker.env"),
        "RETRAIN_WORKER_NAME": "big",
        "RETRAIN_WORKER_QUEUES": "default,large",
    }
    try:
        cluster.create()
        for prefix in ("opt", "worker-opt"):  # the run's shared virtualenv, as make deploy would build it
            link_deploy_venv(root / prefix)
        main = make(main_env, "deploy")
        assert main.returncode == 0, main.stderr[-2000:]
        cluster.restart()  # not a Debian cluster: deploy asks for this restart (asserted below)
        worker = make(worker_env, "deploy", "ROLE=worker")
        assert worker.returncode == 0, worker.stderr[-2000:]
        yield TwoVMs(root, cluster, main_env, worker_env, main, worker)
    finally:
        subprocess.run(["make", "-s", "undeploy"], cwd=BUNDLE, env=worker_env)
        subprocess.run(["make", "-s", "undeploy", "REMOVE_USER=1"], cwd=BUNDLE, env=main_env)
        cluster.remove()
        shutil.rmtree(root, ignore_errors=True)


def test_a_second_deploy_of_either_vm_changes_nothing(two_vms: TwoVMs) -> None:
    for env, args in ((two_vms.main_env, ()), (two_vms.worker_env, ("ROLE=worker",))):
        again = make(env, "deploy", *args)
        assert again.returncode == 0, again.stderr
        assert again.stdout.rstrip().endswith("[deploy] nothing changed"), again.stdout


def test_the_main_vm_runs_a_broker_with_a_password(two_vms: TwoVMs) -> None:
    env = two_vms.main_file
    password = env["RETRAIN_BROKER_PASSWORD"]
    assert env["AIRFLOW__CELERY__BROKER_URL"].startswith(f"redis://:{password}@127.0.0.1:")
    conf = two_vms.root / "main-etc" / "redis.conf"
    stat = conf.stat()
    assert stat.st_mode & 0o777 == 0o640 and (stat.st_uid, stat.st_gid) == (0, pwd.getpwnam(USER).pw_gid)
    lines = conf.read_text().splitlines()
    assert f"bind 127.0.0.1 {PRIVATE}" in lines and f"requirepass {password}" in lines
    assert (two_vms.root / "main-units" / "airflow-broker.service").exists()
    assert "enable --now airflow-broker.service airflow.target" in two_vms.main.stdout, "started with the rest"
    assert env["RETRAIN_API_HOST"] == PRIVATE, "workers reach the Execution API on the private address"


def test_postgres_lets_in_the_workers_network_only_with_the_password(two_vms: TwoVMs) -> None:
    assert f"must restart to listen on 127.0.0.1,{PRIVATE}" in two_vms.main.stdout, "not a Debian cluster: said"
    password = two_vms.main_file["RETRAIN_PG_PASSWORD"]
    base = ["psql", "-h", PRIVATE, "-p", str(two_vms.cluster.port), "-U", DB, "-d", DB, "-Atc", "select 1"]
    ok = subprocess.run(base, env={**os.environ, "PGPASSWORD": password}, capture_output=True, text=True)
    wrong = subprocess.run(base, env={**os.environ, "PGPASSWORD": "wrong"}, capture_output=True, text=True)
    assert ok.stdout.strip() == "1", ok.stderr
    assert "password authentication failed" in wrong.stderr


def test_worker_env_points_at_the_private_address_and_holds_no_login_secret(two_vms: TwoVMs) -> None:
    path = two_vms.root / "main-etc" / "worker.env"
    stat = path.stat()
    assert stat.st_mode & 0o777 == 0o600 and stat.st_uid == 0
    values = read_env_file(path)
    assert f"@{PRIVATE}:" in values["AIRFLOW__CELERY__BROKER_URL"] and values["RETRAIN_PG_HOST"] == PRIVATE
    assert "127.0.0.1" not in values["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"]
    assert "AIRFLOW__API_AUTH__JWT_SECRET" not in values and "RETRAIN_BROKER_PASSWORD" not in values


def test_the_worker_vm_has_its_worker_unit_alone(two_vms: TwoVMs) -> None:
    env, main = two_vms.worker_file, two_vms.main_file
    assert env["RETRAIN_WORKER_NAME"] == f"big@{socket.gethostname()}"
    assert env["RETRAIN_WORKER_QUEUES"] == "default,large"
    assert env["AIRFLOW_HOME"].startswith(str(two_vms.root / "worker-var")), "its own state"
    assert env["RETRAIN_SIGNING_KEY"] == main["RETRAIN_SIGNING_KEY"], "what it publishes verifies on the main VM"
    assert "executor = CeleryExecutor" in (two_vms.root / "worker-etc" / "airflow.cfg").read_text()
    assert [p.name for p in (two_vms.root / "worker-units").iterdir()] == ["airflow-celery-worker.service"]
    assert "enable --now airflow-celery-worker.service" in two_vms.worker.stdout
    assert "WARNING main VM's broker" in two_vms.worker.stdout, "the main VM's broker is not started yet: said"


def as_service_user(two_vms: TwoVMs, vm_name: str, command: str, **popen: object) -> subprocess.Popen[str]:
    """``command`` as a unit of that VM runs it: the service user, its env file, its state directory."""
    env = {"PATH": "/usr/bin:/bin", **read_env_file(two_vms.root / f"{vm_name}-etc" / "airflow.env")}
    argv = [shutil.which("runuser"), "-u", USER, "--", *shlex.split(services.expand(command, env))]
    return subprocess.Popen(argv, env=env, cwd=two_vms.root / f"{vm_name}-var", text=True, **popen)


def unit_command(two_vms: TwoVMs, vm_name: str, unit: str) -> tuple[list[str], str]:
    return render.unit_commands(two_vms.root / f"{vm_name}-units" / unit)


def test_the_worker_waits_for_the_broker_then_consumes_its_queues(two_vms: TwoVMs) -> None:
    """The worker unit's start check fails while the broker is down, naming it and the port; with
    the main VM's broker started from its unit, the worker started from its unit consumes its
    queues over the private address, and Redis refuses a client without the password."""
    pre, worker_start = unit_command(two_vms, "worker", "airflow-celery-worker.service")
    check = as_service_user(two_vms, "worker", pre[0], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    _, err = check.communicate(timeout=60)
    url = two_vms.worker_file["AIRFLOW__CELERY__BROKER_URL"]
    _, _, port = broker.address(url)
    assert check.returncode == 1 and f"{PRIVATE}:{port}/tcp" in err and "does not answer" in err, err
    assert broker.redacted(url) in err and url not in err, "the broker is named, its password is not"

    _, broker_start = unit_command(two_vms, "main", "airflow-broker.service")
    processes = [as_service_user(two_vms, "main", broker_start, stdout=subprocess.DEVNULL, start_new_session=True)]
    try:
        deadline = time.monotonic() + 30
        while not broker.answers(url) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert broker.answers(url), "the broker did not start from airflow-broker.service"
        assert "NOAUTH" in broker.probe(f"redis://{PRIVATE}:{port}/0")
        assert as_service_user(two_vms, "worker", pre[0]).wait(timeout=60) == 0
        log = open(two_vms.root / "worker.log", "w")  # noqa: SIM115 - closed in finally
        processes.append(
            as_service_user(
                two_vms, "worker", worker_start, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
            )
        )
        probe = "import json; from deploy import queues; print(json.dumps(queues.consumers(timeout=3)))"
        python = str(two_vms.root / "worker-opt" / "venv" / "bin" / "python")
        consumers: dict[str, list[str]] = {}
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and not consumers:
            asked = as_service_user(two_vms, "worker", f"{python} -c {shlex.quote(probe)}", stdout=subprocess.PIPE)
            out, _ = asked.communicate(timeout=60)
            consumers = json.loads(out.strip().splitlines()[-1]) if out.strip() else {}
            time.sleep(2)
        name = f"big@{socket.gethostname()}"
        assert consumers == {name: ["default", "large"]}, (two_vms.root / "worker.log").read_text()[-3000:]
    finally:
        for proc in reversed(processes):
            os.killpg(proc.pid, 15)
            proc.wait(timeout=60)
