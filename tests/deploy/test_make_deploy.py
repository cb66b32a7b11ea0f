"""`make deploy` twice on this machine, as root: the second run changes nothing.

Paths go to a temporary directory and the service user, role and database carry test
names, so a real deployment on the same machine is not touched. Each deployment's
virtualenv is a link to the run's shared one (tests.helpers.deploy_venv: built once, by
deploy's own code), which ``make deploy`` finds current. Building it makes these the
slowest tests: they carry the ``deploy`` marker, which ``make test-fast`` leaves out. The tests that
only look at a deployment share one; the undeploy test removes its own.
"""

from __future__ import annotations

import os
import pwd
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import psutil
import pytest

from deploy.envfile import SECRET_KEYS, read_env_file
from deploy.install import systemd_running
from deploy.profile import vm_profile
from deploy.services import health, wait_until
from tests.helpers import BUNDLE, DEPLOY_MARKS, deploy_venv, free_port, link_deploy_venv, make, role_permissions

pytestmark = DEPLOY_MARKS

USER = "retrain-deploy-test"
DB = "airflow_deploy_test"
# The undeploy test's own deployment: other names, so removing it (user included) leaves the shared one alone.
UNDEPLOY_USER = "retrain-undeploy-test"
UNDEPLOY_DB = "airflow_undeploy_test"
# The units whose processes must never run as root (the watchdog's runs as root: it calls systemctl).
UNPRIVILEGED = ("api-server", "scheduler", "dag-processor", "triggerer", "migrate")


@dataclass(frozen=True)
class Deployment:
    env: dict[str, str]
    root: Path
    first: subprocess.CompletedProcess[str]  # the first `make deploy`: what it printed


@contextmanager
def deployed(user: str, db: str) -> Iterator[Deployment]:
    """`make deploy` into a new temporary root; afterwards remove it all, database and user too."""
    root = Path(tempfile.mkdtemp(prefix="retrain-deploy-"))
    root.chmod(0o755)  # the service user must reach the venv and the bundle
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith(("AIRFLOW", "RETRAIN_"))},
        "RETRAIN_PREFIX": str(root / "opt"),
        "RETRAIN_ETC": str(root / "etc"),
        "RETRAIN_STATE": str(root / "var"),
        "RETRAIN_UNIT_DIR": str(root / "units"),
        "RETRAIN_SERVICE_USER": user,
        "RETRAIN_PG_DB": db,
        "RETRAIN_PG_USER": db,
        "RETRAIN_API_PORT": str(free_port()),
    }
    undeploy = ["make", "-s", "undeploy", "DROP_DATABASE=1", "REMOVE_USER=1"]
    # The same names from a session that was killed before its clean-up: start from nothing.
    subprocess.run(undeploy, cwd=BUNDLE, env=env, capture_output=True)
    try:
        link_deploy_venv(root / "opt")
        first = make(env, "deploy")
        assert first.returncode == 0, first.stderr[-2000:]
        yield Deployment(env, root, first)
    finally:
        subprocess.run(undeploy, cwd=BUNDLE, env=env)
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="module")
def deployment() -> Iterator[Deployment]:
    """One deployment for the tests that only look at it or run it (none removes anything)."""
    with deployed(USER, DB) as made:
        yield made


def test_deploy_twice_changes_nothing_the_second_time(deployment: Deployment) -> None:
    env, root, first = deployment.env, deployment.root, deployment.first
    assert "UI/API user 'admin', password:" in first.stdout, "the first admin password is shown once"
    if systemd_running():
        assert "systemctl restart airflow.target" in first.stdout, "a deploy that changed things restarts the target"
    else:
        assert "systemd is not PID 1 here: units installed but not started" in first.stdout
        assert "systemctl daemon-reload && systemctl enable --now airflow.target" in first.stdout, "what to run later"
    secrets_before = {k: read_env_file(root / "etc" / "airflow.env")[k] for k in SECRET_KEYS}

    second = make(env, "deploy")
    assert second.returncode == 0
    assert second.stdout.rstrip().endswith("[deploy] nothing changed"), second.stdout
    assert "password:" not in second.stdout
    assert {k: read_env_file(root / "etc" / "airflow.env")[k] for k in SECRET_KEYS} == secrets_before


def test_files_are_owned_and_private(deployment: Deployment) -> None:
    root = deployment.root
    service = pwd.getpwnam(USER)
    env_file = (root / "etc" / "airflow.env").stat()
    assert env_file.st_mode & 0o777 == 0o640 and (env_file.st_uid, env_file.st_gid) == (0, service.pw_gid)
    state = (root / "var").stat()
    assert (state.st_uid, state.st_mode & 0o777) == (service.pw_uid, 0o750)
    assert (root / "opt" / "bundle" / "dags" / "retrain_co2_weekly.py").stat().st_uid == 0, "code is root's"
    assert service.pw_shell.endswith("nologin")


def test_database_needs_the_generated_password(deployment: Deployment) -> None:
    root = deployment.root
    password = read_env_file(root / "etc" / "airflow.env")["RETRAIN_PG_PASSWORD"]
    base = ["psql", "-h", "127.0.0.1", "-U", DB, "-d", DB, "-Atc", "select 1"]
    ok = subprocess.run(base, env={**os.environ, "PGPASSWORD": password}, capture_output=True, text=True)
    wrong = subprocess.run(base, env={**os.environ, "PGPASSWORD": "wrong"}, capture_output=True, text=True)
    assert ok.stdout.strip() == "1"
    assert "password authentication failed" in wrong.stderr


@pytest.mark.skipif(not shutil.which("systemd-analyze"), reason="systemd-analyze is not installed")
def test_installed_units_verify(deployment: Deployment) -> None:
    root = deployment.root
    units = sorted(p.name for p in (root / "units").iterdir())
    done = subprocess.run(
        ["systemd-analyze", "verify", "--man=no", *units], cwd=root / "units", capture_output=True, text=True
    )
    assert done.returncode == 0 and done.stderr.strip() == "", done.stderr


def test_services_start_as_the_service_user(deployment: Deployment) -> None:
    """The units name the service user; the api-server started from its unit as that user,
    with its env file, answers, and every one of its processes runs as that user, not root."""
    env, root = deployment.env, deployment.root
    service = pwd.getpwnam(USER)
    for name in UNPRIVILEGED:
        lines = (root / "units" / f"airflow-{name}.service").read_text().splitlines()
        assert f"User={USER}" in lines and f"Group={USER}" in lines, f"airflow-{name}.service"
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
        server = psutil.Process(proc.pid).children(recursive=True)  # runuser (root) forks the command
        assert server, "runuser started nothing"
        assert any(p.name().startswith("airflow") for p in server), [p.name() for p in server]
        assert {(p.uids().effective, p.gids().effective) for p in server} == {(service.pw_uid, service.pw_gid)}
    finally:
        os.killpg(proc.pid, 15)
        proc.wait(timeout=30)
    strangers = [p for p in (root / "var").rglob("*") if p.lstat().st_uid != service.pw_uid]
    assert strangers == [], "everything in the state directory is the service user's"


def test_operator_cli_runs_as_the_service_user(deployment: Deployment) -> None:
    root = deployment.root
    wrapper = root / "opt" / "bin" / "airflow-retrain"
    assert f'exec runuser -u "{USER}" -- "$@"' in wrapper.read_text(), "root drops to the service user"
    done = subprocess.run(
        [str(root / "opt" / "bin" / "airflow-retrain"), "users", "list", "-o", "json"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert '"username": "admin"' in done.stdout


def test_viewers_and_users_may_read_the_plugin_menu(deployment: Deployment) -> None:
    """With FAB only Op and Admin may read the plugin list the UI's menu comes from: deploy grants the rest."""
    root, first = deployment.root, deployment.first
    assert "[deploy] changed plugin menu for roles Viewer and User (Plugins: can_read for Viewer, User)" in first.stdout
    done = subprocess.run(
        [str(root / "opt" / "bin" / "airflow-retrain"), "roles", "list", "-p", "-o", "json"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    granted = role_permissions(done.stdout)
    assert all(("Plugins", "can_read") in granted[role] for role in ("Viewer", "User")), granted


@pytest.fixture
def own_deployment() -> Iterator[Deployment]:
    """A deployment for the undeploy test alone: undeploying the shared one would break every test after it."""
    with deployed(UNDEPLOY_USER, UNDEPLOY_DB) as made:
        yield made


def test_undeploy_keeps_the_database(own_deployment: Deployment) -> None:
    env, root = own_deployment.env, own_deployment.root
    assert make(env, "undeploy").returncode == 0
    assert not (root / "opt").exists() and not (root / "etc").exists() and not (root / "var").exists()
    assert (deploy_venv() / "bin" / "python").exists(), "a linked virtualenv loses its link, not its files"
    assert list((root / "units").iterdir()) == [], "every unit is removed"
    query = f"select 1 from pg_database where datname = '{UNDEPLOY_DB}'"
    exists = subprocess.run(
        ["psql", "-h", "127.0.0.1", "-U", "postgres", "-Atc", query], capture_output=True, text=True
    )
    assert exists.stdout.strip() == "1", "DAG run history survives an undeploy"
    assert pwd.getpwnam(UNDEPLOY_USER), "the service user stays unless REMOVE_USER=1"
