"""`make deploy` twice on this machine, as root: the second run changes nothing.

Paths go to a temporary directory and the service user, role and database carry test
names, so a real deployment on the same machine is not touched. Installing the
virtualenv makes this the slowest test (about a minute and a half).
"""

from __future__ import annotations

import os
import pwd
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from deploy.envfile import SECRET_KEYS, read_env_file
from deploy.profile import vm_profile
from deploy.services import health, wait_until
from tests.helpers import BUNDLE, free_port

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.skipif(os.geteuid() != 0, reason="make deploy runs as root"),
    pytest.mark.skipif(not shutil.which("runuser"), reason="needs runuser"),
]

USER = "retrain-deploy-test"
DB = "airflow_deploy_test"


@pytest.fixture(scope="module")
def deployment() -> Iterator[tuple[dict[str, str], Path]]:
    root = Path(tempfile.mkdtemp(prefix="retrain-deploy-"))
    root.chmod(0o755)  # the service user must reach the venv and the bundle
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith(("AIRFLOW", "RETRAIN_"))},
        "RETRAIN_PREFIX": str(root / "opt"),
        "RETRAIN_ETC": str(root / "etc"),
        "RETRAIN_STATE": str(root / "var"),
        "RETRAIN_UNIT_DIR": str(root / "units"),
        "RETRAIN_SERVICE_USER": USER,
        "RETRAIN_PG_DB": DB,
        "RETRAIN_PG_USER": DB,
        "RETRAIN_API_PORT": str(free_port()),
    }
    try:
        yield env, root
    finally:
        subprocess.run(["make", "-s", "undeploy", "DROP_DATABASE=1", "REMOVE_USER=1"], cwd=BUNDLE, env=env)
        shutil.rmtree(root, ignore_errors=True)


def make(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(["make", "-s", *args], cwd=BUNDLE, env=env, capture_output=True, text=True, timeout=900)
    print(done.stdout[-4000:], done.stderr[-4000:])
    return done


def test_deploy_twice_changes_nothing_the_second_time(deployment: tuple[dict[str, str], Path]) -> None:
    env, root = deployment
    first = make(env, "deploy")
    assert first.returncode == 0
    assert "UI/API user 'admin', password:" in first.stdout, "the first admin password is shown once"
    assert "systemd is not PID 1" in first.stdout or "systemctl" in first.stdout
    secrets_before = {k: read_env_file(root / "etc" / "airflow.env")[k] for k in SECRET_KEYS}

    second = make(env, "deploy")
    assert second.returncode == 0
    assert second.stdout.rstrip().endswith("[deploy] nothing changed"), second.stdout
    assert "password:" not in second.stdout
    assert {k: read_env_file(root / "etc" / "airflow.env")[k] for k in SECRET_KEYS} == secrets_before


def test_files_are_owned_and_private(deployment: tuple[dict[str, str], Path]) -> None:
    _, root = deployment
    service = pwd.getpwnam(USER)
    env_file = (root / "etc" / "airflow.env").stat()
    assert env_file.st_mode & 0o777 == 0o640 and (env_file.st_uid, env_file.st_gid) == (0, service.pw_gid)
    state = (root / "var").stat()
    assert (state.st_uid, state.st_mode & 0o777) == (service.pw_uid, 0o750)
    assert (root / "opt" / "bundle" / "dags" / "retrain_co2_weekly.py").stat().st_uid == 0, "code is root's"
    assert service.pw_shell.endswith("nologin")


def test_database_needs_the_generated_password(deployment: tuple[dict[str, str], Path]) -> None:
    _, root = deployment
    password = read_env_file(root / "etc" / "airflow.env")["RETRAIN_PG_PASSWORD"]
    base = ["psql", "-h", "127.0.0.1", "-U", DB, "-d", DB, "-Atc", "select 1"]
    ok = subprocess.run(base, env={**os.environ, "PGPASSWORD": password}, capture_output=True, text=True)
    wrong = subprocess.run(base, env={**os.environ, "PGPASSWORD": "wrong"}, capture_output=True, text=True)
    assert ok.stdout.strip() == "1"
    assert "password authentication failed" in wrong.stderr


@pytest.mark.skipif(not shutil.which("systemd-analyze"), reason="systemd-analyze is not installed")
def test_installed_units_verify(deployment: tuple[dict[str, str], Path]) -> None:
    _, root = deployment
    units = sorted(p.name for p in (root / "units").iterdir())
    done = subprocess.run(
        ["systemd-analyze", "verify", "--man=no", *units], cwd=root / "units", capture_output=True, text=True
    )
    assert done.returncode == 0 and done.stderr.strip() == "", done.stderr


def test_services_start_as_the_service_user(deployment: tuple[dict[str, str], Path]) -> None:
    """The api-server from its installed unit, as its user, with its env file: it answers."""
    env, root = deployment
    unit = (root / "units" / "airflow-api-server.service").read_text()
    start = next(line.split("=", 1)[1] for line in unit.splitlines() if line.startswith("ExecStart="))
    service_env = {"PATH": "/usr/bin:/bin", **read_env_file(root / "etc" / "airflow.env")}
    proc = subprocess.Popen(
        [shutil.which("runuser"), "-u", USER, "--", *start.split()],
        env=service_env,
        cwd=root / "var",
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        wait_until(lambda: health(service_env).get("metadatabase") == "healthy", 90, "api-server", vm_profile(env), "x")
    finally:
        os.killpg(proc.pid, 15)
        proc.wait(timeout=30)


def test_operator_cli_runs_as_the_service_user(deployment: tuple[dict[str, str], Path]) -> None:
    _, root = deployment
    done = subprocess.run(
        [str(root / "opt" / "bin" / "airflow-retrain"), "users", "list", "-o", "json"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert '"username": "admin"' in done.stdout


def test_undeploy_keeps_the_database(deployment: tuple[dict[str, str], Path]) -> None:
    env, root = deployment
    assert make(env, "undeploy").returncode == 0
    assert not (root / "opt").exists() and not (root / "etc").exists()
    exists = subprocess.run(
        ["psql", "-h", "127.0.0.1", "-U", "postgres", "-Atc", f"select 1 from pg_database where datname = '{DB}'"],
        capture_output=True,
        text=True,
    )
    assert exists.stdout.strip() == "1", "DAG run history survives an undeploy"
