"""Small helpers shared by the test packages."""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import socket
import subprocess
import time
from dataclasses import replace
from pathlib import Path

import pytest

from deploy.install import ensure_venv
from deploy.postgres import ensure_server
from deploy.profile import local_profile
from deploy.stack import free_port

__all__ = [
    "BUNDLE",
    "DEPLOY_MARKS",
    "DEPLOY_VENV_DIR",
    "MEASUREMENTS",
    "deploy_venv",
    "ensure_database",
    "ensure_postgres",
    "free_port",
    "link_deploy_venv",
    "make",
    "per_worker",
    "record_measurement",
    "role_permissions",
    "wait_for_port",
]

BUNDLE = Path(__file__).resolve().parents[1]


def wait_for_port(port: int, seconds: float = 30) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return
        except OSError:
            time.sleep(0.2)
    raise TimeoutError(f"nothing listens on 127.0.0.1:{port} after {seconds}s")


def ensure_postgres() -> None:
    """The local PostgreSQL server answers on 127.0.0.1:5432: found, else started (or installed) as
    ``make up`` does. Tests call it themselves instead of counting on a live stack having started it."""
    ensure_server({"RETRAIN_PG_HOST": "127.0.0.1", "RETRAIN_PG_PORT": "5432"}, print)


def per_worker(name: str) -> str:
    """``name`` for this pytest-xdist worker (``make test`` runs two): a database of the machine's
    PostgreSQL that tests empty and fill must not be shared by tests running at the same time."""
    return f"{name}_{os.environ.get('PYTEST_XDIST_WORKER', 'main')}"


def ensure_database(name: str) -> str:
    """A database on the local PostgreSQL server (created when missing, kept between sessions); its DSN."""
    ensure_postgres()
    psql = ["psql", "-h", "127.0.0.1", "-U", "postgres", "-v", "ON_ERROR_STOP=1", "-tAqc"]
    exists = subprocess.run(
        [*psql, f"SELECT 1 FROM pg_database WHERE datname = '{name}'"], check=True, text=True, capture_output=True
    )
    if exists.stdout.strip() != "1":
        subprocess.run([*psql, f"CREATE DATABASE {name}"], check=True)
    return f"postgresql://postgres@127.0.0.1:5432/{name}"


def role_permissions(output: str) -> dict[str, set[tuple[str, str]]]:
    """Each role's (resource, action) pairs from ``airflow roles list -p -o json``'s output.

    The JSON is the last line that starts a list: the CLI may log a warning before it.
    """
    rows = [line for line in output.splitlines() if line.startswith(("[{", "[]"))]
    assert rows, f"no JSON in: {output[-1000:]}"
    granted: dict[str, set[tuple[str, str]]] = {}
    for row in json.loads(rows[-1]):
        for action in row["action"].split(","):
            granted.setdefault(row["name"], set()).add((row["resource"], action.strip()))
    return granted


MEASUREMENTS = BUNDLE / "test-artifacts" / "measurements.txt"


def record_measurement(line: str) -> None:
    """Print a figure a test measured and keep it for the end-of-run summary (with xdist a
    worker's prints are not shown for a passing test)."""
    print(line)
    MEASUREMENTS.parent.mkdir(parents=True, exist_ok=True)
    with MEASUREMENTS.open("a") as handle:
        handle.write(line + "\n")


# The `make deploy` tests: they run as root (system users, /etc-like paths, runuser), slowly
# (a virtualenv per deployment), so make test-fast leaves them out (marker deploy).
DEPLOY_MARKS = [
    pytest.mark.deploy,
    pytest.mark.skipif(os.geteuid() != 0, reason="make deploy runs as root"),
    pytest.mark.skipif(not shutil.which("runuser"), reason="needs runuser"),
]


def make(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    """``make -s ARGS`` in the bundle with ``env``; its output goes to the test's report."""
    done = subprocess.run(["make", "-s", *args], cwd=BUNDLE, env=env, capture_output=True, text=True, timeout=900)
    print(done.stdout[-4000:], done.stderr[-4000:])
    return done


# Set by the session (tests/conftest.py) before pytest-xdist starts its workers, so both share it.
DEPLOY_VENV_DIR = "RETRAIN_TEST_DEPLOY_VENV_DIR"


def deploy_venv() -> Path:
    """The virtualenv every `make deploy` test of this run links its deployment's venv to.

    Building one takes about two minutes; a run deploys three times. ``make deploy`` finds a
    linked venv current (its requirements stamp matches) and leaves it alone, so the venv is
    built once, here, by deploy's own ``ensure_venv`` (checked as an unprivileged user, as the
    service user would be) under a lock: both workers may ask at once. The session removes it.
    """
    root = Path(os.environ[DEPLOY_VENV_DIR])
    with (root / "lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        ensure_venv(replace(local_profile(), venv=root / "venv", service_user="nobody"))
    return root / "venv"


def link_deploy_venv(prefix: Path) -> None:
    """Make ``prefix`` (a deployment's RETRAIN_PREFIX) with its venv a link to ``deploy_venv()``."""
    prefix.mkdir()
    (prefix / "venv").symlink_to(deploy_venv())
