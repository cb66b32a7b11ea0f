"""What a retraining task does when it runs: resolve the run, open the store, run a stage.

Imported only inside task bodies (it pulls in pandas and the model libraries), never at
DAG-parse time.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Any

from airflow.sdk.exceptions import AirflowFailException, AirflowSkipException
from croniter import croniter

from include.retrain.errors import NoNewData, NotPromoted, RetrainError
from include.retrain.registry import RunInfo
from include.retrain.settings import Settings
from include.retrain.spec import PipelineSpec
from include.retrain.stages import Stage
from include.retrain_airflow import clients
from include.retrain_airflow.store import open_store

VERSION_FORMAT = "%Y%m%dT%H%M%SZ"
log = logging.getLogger(__name__)


def _utc(moment: datetime) -> datetime:
    return moment.astimezone(UTC) if moment.tzinfo else moment.replace(tzinfo=UTC)


def _in_zone(moment: datetime, zone: str) -> datetime:
    from zoneinfo import ZoneInfo

    return _utc(moment).astimezone(ZoneInfo(zone))


def run_info(context: dict[str, Any], spec: PipelineSpec) -> RunInfo:
    """The run's data window; the version id is its end, so reruns reuse the same keys.

    A run triggered without a logical date has no data interval in Airflow 3; its window
    is then the last complete schedule interval before the run was requested, exactly
    what the timetable would infer for a manual run with a logical date.
    """
    start, end = context.get("data_interval_start"), context.get("data_interval_end")
    if end is None:
        run_after = context["dag_run"].run_after
        ticks = croniter(spec.schedule, _in_zone(run_after, spec.timezone))
        end = ticks.get_prev(datetime)
        start = ticks.get_prev(datetime)
    end = _utc(end)
    return RunInfo(
        version=end.strftime(VERSION_FORMAT),
        window_start=_utc(start).isoformat() if start else None,
        window_end=end.isoformat(),
        dag_id=context["dag"].dag_id,
        run_id=context["run_id"],
    )


def history_writer(conn_id: str) -> Callable[[dict[str, Any]], None]:
    """Write a decision row through PostgresHook (the table is created or migrated on first use)."""

    def record(row: dict[str, Any]) -> None:
        from include.retrain import history
        from include.retrain_airflow.history import opened

        with opened(conn_id) as conn:
            history.record_decision(conn, history.Decision(**row))

    return record


def run_stage(spec: PipelineSpec, method: str, arg: Any, context: dict[str, Any]) -> dict[str, Any]:
    """Run one stage; errors no retry can cure fail the task at once, with their message."""
    context["series"] = arg if isinstance(arg, str) else arg["series"]  # map_index_template
    settings = Settings.from_env(os.environ)
    params = context.get("params") or {}
    mode = params.get("promotion", "gate")
    try:
        store, root = open_store(settings)
        stage = Stage(
            spec,
            store,
            root,
            run_info(context, spec),
            clients.from_airflow(),
            history=history_writer(settings.history_conn_id),
            signing_key=settings.signing_key,
        )
        with timed(method):
            result = call_stage(stage, method, arg, params, mode)
        if method == "promote":
            announce(context, spec, settings, result)
        return result
    except (NoNewData, NotPromoted) as exc:
        raise AirflowSkipException(str(exc.within(spec.name, context["series"]))) from exc
    except RetrainError as exc:
        exc.within(spec.name, context["series"])
        if exc.permanent:
            raise AirflowFailException(str(exc)) from exc
        raise


@contextmanager
def timed(method: str) -> Iterator[None]:
    """Log the stage's own work: make bench subtracts it from the task's duration."""
    started = time.perf_counter()
    try:
        yield
    finally:
        log.info("stage %s took %.3fs", method, time.perf_counter() - started)


def call_stage(stage: Stage, method: str, arg: Any, params: dict[str, Any], mode: str) -> dict[str, Any]:
    """The stage method a task runs, with the trigger params it takes (also benchmarks/bare.py)."""
    if method == "extract":
        return stage.extract(arg, full_refresh=bool(params.get("full_refresh")), skip_seen=mode == "gate")
    if method == "gate":
        return stage.gate(arg, mode=mode)
    return getattr(stage, method)(arg)


def announce(context: dict[str, Any], spec: PipelineSpec, settings: Settings, result: dict[str, Any]) -> None:
    """The asset event of a promotion names what changed, so consumers need not list the store."""
    from include.retrain_airflow.assets import champion_asset

    event = context["outlet_events"][champion_asset(spec, settings)]
    event.extra = {
        "pipeline": spec.name,
        "series": result["series"],
        "version": result["version"],
        "sha256": result["champion"]["sha256"],
        "decision": result["decision"]["status"],
    }
