"""What a retraining task does when it runs: resolve the run, open the store, call its stage.

Imported only inside task bodies (it pulls in pandas and the model libraries), never at
DAG-parse time.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from datetime import datetime
from typing import Any, TypeVar

from airflow.sdk.exceptions import AirflowFailException, AirflowSkipException
from croniter import croniter

from include.retrain.errors import NoNewData, NotPromoted, RetrainError
from include.retrain.settings import Settings
from include.retrain.spec import PipelineSpec
from include.retrain.stages import publishing
from include.retrain.stages.context import RunInfo, StageContext
from include.retrain.stages.refs import Promoted
from include.retrain.timestamps import as_utc
from include.retrain_airflow import clients
from include.retrain_airflow.store import open_store

VERSION_FORMAT = "%Y%m%dT%H%M%SZ"
log = logging.getLogger(__name__)
In = TypeVar("In")
Out = TypeVar("Out")


def _in_zone(moment: datetime, zone: str) -> datetime:
    from zoneinfo import ZoneInfo

    return as_utc(moment).astimezone(ZoneInfo(zone))


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
    end = as_utc(end)
    return RunInfo(
        version=end.strftime(VERSION_FORMAT),
        window_start=as_utc(start).isoformat() if start else None,
        window_end=end.isoformat(),
        dag_id=context["dag"].dag_id,
        run_id=context["run_id"],
    )


def history_writer(conn_id: str) -> Callable[[dict[str, Any]], None]:
    """Write a decision row through PostgresHook (the table is created or migrated on first use)."""

    def write(row: dict[str, Any]) -> None:
        from include.retrain.history import Decision
        from include.retrain_airflow.history import record

        record(conn_id, Decision(**row))

    return write


def stage_context(spec: PipelineSpec, context: Mapping[str, Any], settings: Settings) -> StageContext:
    """The stage functions' context for this task: its store, run window, clients and trigger params."""
    params = context.get("params") or {}
    store, root = open_store(settings)
    return StageContext(
        spec,
        store,
        root,
        run_info(context, spec),
        clients.from_airflow(),
        history=history_writer(settings.history_conn_id),
        signing_key=settings.signing_key,
        mode=params.get("promotion", "gate"),
        full_refresh=bool(params.get("full_refresh")),
    )


def run(spec: PipelineSpec, stage: Callable[[StageContext, In], Out], arg: In, context: dict[str, Any]) -> Out:
    """Run one stage function for one series; errors no retry can cure fail the task at once.

    A series with nothing new, or a candidate the gate kept out, skips the task instead.
    """
    series = arg if isinstance(arg, str) else arg["series"]
    context["series"] = series  # the mapped task's label (map_index_template)
    settings = Settings.from_env(os.environ)
    try:
        ctx = stage_context(spec, context, settings)
        with timed(stage.__name__):
            result = stage(ctx, arg)
        if stage is publishing.promote:
            announce(context, spec, settings, result)
        return result
    except (NoNewData, NotPromoted) as exc:
        raise AirflowSkipException(str(exc.within(spec.name, series))) from exc
    except RetrainError as exc:
        exc.within(spec.name, series)
        if exc.permanent:
            raise AirflowFailException(str(exc)) from exc
        raise


@contextmanager
def timed(stage: str) -> Iterator[None]:
    """Log the stage's own work: make bench subtracts it from the task's duration."""
    started = time.perf_counter()
    try:
        yield
    finally:
        log.info("stage %s took %.3fs", stage, time.perf_counter() - started)


def announce(context: dict[str, Any], spec: PipelineSpec, settings: Settings, result: Promoted) -> None:
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
