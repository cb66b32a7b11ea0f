"""Test-wide settings: Airflow reads a throw-away home, never ~/airflow."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.helpers import DEPLOY_VENV_DIR, MEASUREMENTS, free_port, wait_for_port

# Before anything imports Airflow: its configuration is read once, at import.
os.environ.setdefault("AIRFLOW_HOME", tempfile.mkdtemp(prefix="retrain-airflow-home-"))
os.environ.setdefault("AIRFLOW__CORE__LOAD_EXAMPLES", "False")

pytest_plugins = ["tests.registry_fixtures"]  # a published registry: publish, reg, history_db


@pytest.fixture(scope="session")
def s3_endpoint() -> Iterator[str]:
    """A real S3 HTTP endpoint (moto_server) on loopback, for this test session only."""
    port = free_port()
    server = subprocess.Popen(
        [str(Path(sys.executable).parent / "moto_server"), "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_for_port(port)
        yield f"http://127.0.0.1:{port}"
    finally:
        server.terminate()
        server.wait(timeout=10)


# -- two workers (make test: pytest -n 2 --dist loadfile) --------------------------------------
# Each worker takes whole test files, so a module's fixtures (make deploy's deployment, the
# Celery stack) are made once, and each worker that runs a live-stack test starts its own
# stack. Tests that use the machine's PostgreSQL name their databases per worker (per_worker).


OWN_DEPLOY_VENV = pytest.StashKey[Path]()


def pytest_configure(config: pytest.Config) -> None:
    """The session's one directory for the `make deploy` tests' shared virtualenv
    (tests.helpers.deploy_venv): made before the workers start, so they inherit its name."""
    if not hasattr(config, "workerinput") and DEPLOY_VENV_DIR not in os.environ:
        root = Path(tempfile.mkdtemp(prefix="retrain-test-deploy-venv-"))
        root.chmod(0o755)  # the deployments' service users run it
        os.environ[DEPLOY_VENV_DIR] = str(root)
        config.stash[OWN_DEPLOY_VENV] = root


def pytest_unconfigure(config: pytest.Config) -> None:
    """Remove the shared virtualenv this session made (about 1 GB)."""
    root = config.stash.get(OWN_DEPLOY_VENV, None)
    if root is not None:
        shutil.rmtree(root, ignore_errors=True)
        os.environ.pop(DEPLOY_VENV_DIR, None)


def pytest_sessionstart(session: pytest.Session) -> None:
    if not hasattr(session.config, "workerinput"):  # the controller, or a run without xdist
        MEASUREMENTS.unlink(missing_ok=True)


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    """What the fault and load tests measured (their ``FAULT``/``LOAD`` lines), whichever
    worker ran them: the README's table is made of these."""
    if MEASUREMENTS.exists():
        terminalreporter.section("measured by the fault and load tests")
        terminalreporter.write(MEASUREMENTS.read_text())
