"""When the watchdog restarts the scheduler, and when it leaves it alone."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from deploy.watchdog import Observation, verdict

NOW = datetime(2026, 11, 21, 12, 0, tzinfo=UTC)
STALE, STUCK = timedelta(seconds=120), timedelta(seconds=300)


def seen(heartbeat: float | None = 5, queued: float | None = None, started: float | None = 10) -> Observation:
    ago = lambda s: None if s is None else NOW - timedelta(seconds=s)  # noqa: E731
    return Observation(NOW, ago(heartbeat), ago(queued), ago(started))


@pytest.mark.parametrize(
    ("observation", "reason"),
    [
        (seen(heartbeat=None), "no running scheduler job"),
        (seen(heartbeat=600), "heartbeat is 600s old"),
        (seen(queued=900, started=700), "queued for 900s and no task started"),
        (seen(queued=900, started=None), "queued for 900s"),
    ],
)
def test_restarts_a_scheduler_that_stopped_scheduling(observation: Observation, reason: str) -> None:
    assert reason in (verdict(observation, STALE, STUCK) or "")


@pytest.mark.parametrize(
    "observation",
    [
        seen(),
        seen(queued=900, started=30),  # busy: tasks wait for a slot but others keep starting
        seen(queued=60, started=900),  # queued only briefly
        seen(heartbeat=100),
    ],
)
def test_leaves_a_working_scheduler_alone(observation: Observation) -> None:
    assert verdict(observation, STALE, STUCK) is None
