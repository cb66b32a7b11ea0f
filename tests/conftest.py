"""Test-wide settings: Airflow reads a throw-away home, never ~/airflow."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.helpers import MEASUREMENTS, free_port, wait_for_port

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


# -- two workers (make test: pytest -n 2 --dist loadgroup) -------------------------------------

# Modules whose tests spend most of their time waiting out an outage or a retry delay: under
# xdist they run on a worker (and a live stack) of their own while the rest of the suite runs.
WAITING_MODULES = ("tests.e2e.test_faults", "tests.e2e.test_load")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Each worker that runs a live-stack test starts a stack for itself, so those tests come
    in two groups (``xdist_group``): the waiting ones, and every other e2e test. The
    ``make deploy`` tests share one machine-wide database role, so they stay together too.
    Other tests go to whichever worker is free. Without xdist the marks do nothing."""
    for item in items:
        if item.get_closest_marker("e2e"):
            group = "waiting" if item.module.__name__ in WAITING_MODULES else "stack"
        elif item.get_closest_marker("deploy"):
            group = "deploy"
        else:
            continue
        item.add_marker(pytest.mark.xdist_group(group))


def pytest_sessionstart(session: pytest.Session) -> None:
    if not hasattr(session.config, "workerinput"):  # the controller, or a run without xdist
        MEASUREMENTS.unlink(missing_ok=True)


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    """What the fault and load tests measured (their ``FAULT``/``LOAD`` lines), whichever
    worker ran them: the README's table is made of these."""
    if MEASUREMENTS.exists():
        terminalreporter.section("measured by the fault and load tests")
        terminalreporter.write(MEASUREMENTS.read_text())
