"""Preloaded task processes on the live stack: a task starts with pandas and statsmodels
inherited from its forkserver-made worker, yet imports the bundle's own code fresh, so an
edited ``include/`` module is live for the next run without restarting the scheduler.
"""

from __future__ import annotations

import os
import time

import pytest

from include.retrain_airflow.cli import failed_tasks, trigger, wait_for_dags, wait_for_runs
from tests.e2e.conftest import Stack
from tests.helpers import BUNDLE

pytestmark = pytest.mark.e2e

DAG_ID, TASK_ID = "preload_probe", "probe"
PROBE = BUNDLE / "include" / "_preload_probe.py"  # the stack's PYTHONPATH is the bundle


def _write_probe(value: str) -> None:
    """Rewrite the module so that no stale bytecode can stand in for it."""
    for cached in (PROBE.parent / "__pycache__").glob(f"{PROBE.stem}.*.pyc"):
        cached.unlink()
    PROBE.write_text(f'"""Written by tests/e2e/test_preloaded_tasks.py."""\n\nVALUE = {value!r}\n')
    later = time.time() + 2
    os.utime(PROBE, (later, later))


def _probe_run(stack: Stack) -> dict:
    """Trigger the probe DAG, wait for it, return what its task returned."""
    run_id = trigger(stack.api, DAG_ID)
    states = wait_for_runs(stack.api, {DAG_ID: run_id}, timeout=180)
    assert states[DAG_ID] == "success", failed_tasks(stack.api, DAG_ID, run_id)
    path = f"/dags/{DAG_ID}/dagRuns/{run_id}/taskInstances/{TASK_ID}/xcomEntries/return_value"
    return stack.api.json("GET", path)["value"]  # the returned dict itself (JSON-serialisable XCom)


def test_task_inherits_libraries_but_sees_edited_bundle_code(stack: Stack) -> None:
    wait_for_dags(stack.api, [DAG_ID], timeout=120)
    stack.api.json("PATCH", f"/dags/{DAG_ID}", json={"is_paused": False})
    try:
        _write_probe("first")
        first = _probe_run(stack)
        print(f"first probe run: {first}")
        assert first["loaded"] == {"pandas": True, "statsmodels.tsa.arima.model": True, "sklearn.pipeline": True}, (
            "the task had to import the libraries itself: the forkserver preload is not in effect"
        )
        assert first["parent_mapped"] == {"pandas": True, "statsmodels": True}, (
            f"the task's parent (pid {first['parent']}) has not loaded the libraries"
        )
        assert first["value"] == "first"

        _write_probe("second")
        second = _probe_run(stack)
        print(f"second probe run: {second}")
        assert second["value"] == "second", "the edited include/ module needs a scheduler restart to take effect"
        assert second["loaded"]["pandas"] and second["parent_mapped"]["pandas"]
    finally:
        PROBE.unlink(missing_ok=True)
        for cached in (PROBE.parent / "__pycache__").glob(f"{PROBE.stem}.*.pyc"):
            cached.unlink()
