"""Build one retraining DAG from one pipeline spec.

Each ``dags/retrain_<name>.py`` calls ``build_retrain_dag("<name>")``: one file per spec,
so a broken spec becomes an import error of its own DAG file and leaves every other
pipeline running. This module is imported at parse time: it loads the spec (YAML and
pydantic only) and wires tasks; the work happens in ``runtime`` inside each task.
"""

from __future__ import annotations

import os
from datetime import UTC, datetime, timedelta
from typing import Any

from airflow.sdk import DAG, CronDataIntervalTimetable, Param, get_current_context, task

from include.retrain.settings import Settings
from include.retrain.spec import PipelineSpec, load_spec
from include.retrain_airflow.assets import champion_asset
from include.retrain_airflow.notify import on_failure, on_promotion

DEFAULT_RETRIES = 2
TASK_TIMEOUT = timedelta(minutes=30)


def _doc(spec: PipelineSpec, path: str) -> str:
    series = ", ".join(f"`{s.name}` ({s.target})" for s in spec.series)
    return (
        f"### Retrain `{spec.name}`\n{spec.description}\n\n"
        f"- **Spec:** `{path}`\n- **Source:** `{spec.source.kind}`\n- **Series:** {series}\n"
        f"- **Model:** `{spec.model.kind}`\n- **Schedule:** `{spec.schedule}` ({spec.timezone}); each run trains on "
        "data up to the end of its data interval\n\n"
        "Per series: extract → validate → preprocess → split → train → evaluate → gate → publish → promote. "
        "Every candidate is kept under `<store>/<store_prefix>/<pipeline>/<series>/<version>/` with `model.pkl`, "
        "`profile.json` and `manifest.json` (its metrics and the gate's decision); `champion.json` moves only when "
        f"the candidate beats the champion (margin {spec.promotion.margin:.1%} on `{spec.evaluation.primary_metric}`)"
        f" and the naive baseline. Drift: `{spec.drift.action}`. The `promote` task is skipped when the gate keeps "
        "the champion; when it runs it emits an asset event that triggers `batch_predict`.\n\n"
        "Trigger params: `promotion` = `gate` (default), `force` (promote whatever the gate says) or `dry_run` "
        "(decide and record, publish nothing); `full_refresh` refetches the whole history."
    )


def _stage(spec: PipelineSpec, method: str, arg: Any) -> dict[str, Any]:
    from include.retrain_airflow.runtime import run_stage  # heavy: pandas, models, boto3

    return run_stage(spec, method, arg, get_current_context())


def build_retrain_dag(name: str) -> DAG:
    settings = Settings.from_env(os.environ)
    path = settings.pipelines_dir / f"{name}.yaml"
    spec = load_spec(path)
    start = datetime.combine(spec.start_date, datetime.min.time(), tzinfo=UTC)
    label = "{{ series }}"
    asset = champion_asset(spec, settings)

    with DAG(
        dag_id=f"retrain_{spec.name}",
        schedule=CronDataIntervalTimetable(spec.schedule, timezone=spec.timezone),
        start_date=start,
        catchup=False,
        max_active_runs=1,  # one run at a time per pipeline; champion.json writes are conditional as well
        default_args={
            "owner": spec.owner,
            "retries": DEFAULT_RETRIES,
            "retry_delay": timedelta(seconds=30),
            "retry_exponential_backoff": 2.0,
            "max_retry_delay": timedelta(minutes=10),
            "execution_timeout": TASK_TIMEOUT,
            "on_failure_callback": on_failure(),
        },
        doc_md=_doc(spec, str(path)),
        params={
            "promotion": Param(
                "gate",
                enum=["gate", "force", "dry_run"],
                description="gate: promote only a better model; force: promote this run's model whatever the gate "
                "says; dry_run: decide and record the decision, publish nothing.",
            ),
            "full_refresh": Param(
                False,
                type="boolean",
                description="Fetch the whole history again instead of only what is new since the last snapshot.",
            ),
        },
        tags=["ml", "retraining", *spec.tags],
    ) as dag:

        @task(map_index_template=label)
        def extract(series: str) -> dict[str, Any]:
            """Snapshot the series' rows up to the end of the run's data interval."""
            return _stage(spec, "extract", series)

        @task(map_index_template=label)
        def validate(ref: dict[str, Any]) -> dict[str, Any]:
            """Schema, row count, timestamps, nulls, value bounds, frequency and gaps."""
            return _stage(spec, "validate", ref)

        @task(map_index_template=label)
        def preprocess(ref: dict[str, Any]) -> dict[str, Any]:
            """Regular frequency, gaps filled, model features built."""
            return _stage(spec, "preprocess", ref)

        @task(map_index_template=label)
        def split(ref: dict[str, Any]) -> dict[str, Any]:
            """Time-ordered train/test split."""
            return _stage(spec, "split", ref)

        @task(map_index_template=label)
        def train(ref: dict[str, Any]) -> dict[str, Any]:
            """Fit on train only; store the candidate pickle."""
            return _stage(spec, "train", ref)

        @task(map_index_template=label)
        def evaluate(ref: dict[str, Any]) -> dict[str, Any]:
            """Score the candidate and a naive baseline on the test window."""
            return _stage(spec, "evaluate", ref)

        @task(map_index_template=label)
        def gate(ref: dict[str, Any]) -> dict[str, Any]:
            """Score the champion on the same windows, compare drift, decide promotion."""
            return _stage(spec, "gate", ref)

        @task(map_index_template=label)
        def publish(ref: dict[str, Any]) -> dict[str, Any]:
            """Keep the candidate as an immutable version with its decision; record it in the history table."""
            return _stage(spec, "publish", ref)

        @task(map_index_template=label, outlets=[asset], on_success_callback=on_promotion())
        def promote(ref: dict[str, Any]) -> dict[str, Any]:
            """Move champion.json to this version (skipped when the gate kept the champion)."""
            return _stage(spec, "promote", ref)

        refs = extract.expand(series=[s.name for s in spec.series])
        for step in (validate, preprocess, split, train, evaluate, gate, publish, promote):
            refs = step.expand(ref=refs)
    return dag
