"""The load test of benchmarks/load.py, small: the session stack's four ``load_*``
pipelines of four series each, all due at the same second (``make load`` runs 20 x 8)."""

from __future__ import annotations

import pytest

from benchmarks.load import run_load, summary
from deploy import services
from tests.e2e.conftest import FAULT_PIPELINES, Stack, series_columns
from tests.e2e.runs import decisions, versioned
from tests.helpers import record_measurement

pytestmark = pytest.mark.e2e


def test_pipelines_due_at_once_all_succeed_once(stack: Stack) -> None:
    versioned(stack)
    pipelines = {n: series_columns(f["series"]) for n, f in FAULT_PIPELINES.items() if n.startswith("load_")}

    def leaders() -> dict[str, int]:
        found = {name: services.running(stack.profile, name) for name in ("api-server", "scheduler", "dag-processor")}
        return {name: pid for name, pid in found.items() if pid}

    def versions_of(pipeline: str, series: str) -> list[str]:
        return [k for k in stack.keys(f"models/{pipeline}/{series}/") if k.endswith("/manifest.json")]

    def history(names: list[str]) -> list[tuple[str, str, str]]:
        return [(row["pipeline"], row["series"], row["run_id"]) for name in names for row in decisions(stack, name)]

    result = run_load(stack.api, pipelines, leaders, versions_of, history, timeout=600)
    record_measurement(f"LOAD {summary(result)}")
    assert result.problems == []
    assert set(result.run_states.values()) == {"success"} and len(result.run_states) == 4
    assert result.task_instances == 4 * (4 * 9 + 1), "9 mapped stages per series and finish, none lost"
    assert result.peak_pss_mb > 0
