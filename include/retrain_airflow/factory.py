"""Build one retraining DAG from one pipeline spec.

Each ``dags/retrain_<name>.py`` calls ``build_retrain_dag("<name>")``: one file per spec,
so a broken spec becomes an import error of its own DAG file and leaves every other
pipeline running. This module is imported at parse time: it loads the spec (YAML and
pydantic only) and wires tasks; the work happens in ``runtime`` inside each task.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from types import ModuleType
from typing import Any

from airflow.providers.standard.operators.empty import EmptyOperator
from airflow.sdk import DAG, CronDataIntervalTimetable, Param, get_current_context, task

from include.retrain.settings import Settings
from include.retrain.spec import PipelineSpec, load_spec
from include.retrain.stages.refs import (
    Evaluated,
    Extracted,
    Gated,
    Preprocessed,
    Promoted,
    Published,
    Split,
    Trained,
    Validated,
)
from include.retrain_airflow.assets import champion_asset
from include.retrain_airflow.defaults import default_args
from include.retrain_airflow.names import dag_id
from include.retrain_airflow.notify import on_promotion

TASK_TIMEOUT = timedelta(minutes=30)


def _doc(spec: PipelineSpec, path: str) -> str:
    series = ", ".join(f"`{s.name}` ({s.target})" for s in spec.series)
    return (
        f"### Retrain `{spec.name}`\n{spec.description}\n\n"
        f"- **Spec:** `{path}`\n- **Source:** `{spec.source.kind}`\n- **Series:** {series}\n"
        f"- **Model:** `{spec.model.kind}`\n- **Schedule:** `{spec.schedule}` ({spec.timezone}); each run trains on "
        "data up to the end of its data interval\n\n"
        "Per series: extract → validate → preprocess → split → train → evaluate → gate → publish → promote; "
        "then `finish`, one unmapped no-op (it carries the DAG's owner; the scheduler marks it done without "
        "starting a process). "
        "Every candidate is kept under `<store>/<store_prefix>/<pipeline>/<series>/<version>/` with `model.pkl`, "
        "`profile.json`, `evaluation.json` (its test-window forecast) and `manifest.json` (its metrics and the gate's "
        "decision); `champion.json` moves only when "
        f"the candidate beats the champion (margin {spec.promotion.margin:.1%} on `{spec.evaluation.primary_metric}`)"
        f" and the naive baseline. Drift: `{spec.drift.action}`. The `promote` task is skipped when the gate keeps "
        "the champion; when it runs it emits an asset event that triggers `batch_predict`.\n\n"
        "Trigger params: `promotion` = `gate` (default), `force` (promote whatever the gate says) or `dry_run` "
        "(decide and record, publish nothing); `full_refresh` refetches the whole history."
    )


# Picks a stage function from the stage modules (``include.retrain.stages.chain``): tasks
# import those only when they run, since they pull in pandas and the model libraries.
Pick = Callable[[ModuleType], Callable[[Any, Any], Any]]

# The chain, one task per stage mapped per series: (task id, its stage, what it returns, what it does).
STAGES: list[tuple[str, Pick, type, str]] = [
    ("extract", lambda s: s.snapshots.extract, Extracted, "Snapshot the series' rows up to the run's window end."),
    ("validate", lambda s: s.prepare.validate, Validated, "Schema, rows, timestamps, nulls, bounds, frequency, gaps."),
    ("preprocess", lambda s: s.prepare.preprocess, Preprocessed, "Regular frequency, gaps filled, features built."),
    ("split", lambda s: s.prepare.split, Split, "Time-ordered train/test split."),
    ("train", lambda s: s.training.train, Trained, "Fit on train only; store the candidate pickle."),
    ("evaluate", lambda s: s.training.evaluate, Evaluated, "Score the candidate and a naive baseline."),
    ("gate", lambda s: s.gating.gate, Gated, "Score the champion on the same windows, compare drift, decide."),
    ("publish", lambda s: s.publishing.publish, Published, "Keep the candidate as an immutable version; record it."),
    ("promote", lambda s: s.publishing.promote, Promoted, "Move champion.json here (skipped when the gate said no)."),
]


def stage_task(spec: PipelineSpec, task_id: str, pick: Pick, returns: type, doc: str, **kwargs: Any) -> Any:
    """A task mapped per series that runs one stage function, labelled with the series' name.

    ``item`` is the series' name for ``extract`` and the upstream task's ref after it. The
    task pushes one XCom (the whole ref), not one per key as its dict return type would
    otherwise make Airflow infer (``multiple_outputs``).
    """

    def run_stage(item: Any) -> Any:
        from include.retrain.stages import chain
        from include.retrain_airflow.runtime import run

        return run(spec, pick(chain), item, get_current_context())

    run_stage.__name__ = run_stage.__qualname__ = task_id
    run_stage.__doc__ = doc
    run_stage.__annotations__ = {"item": Any, "return": returns}
    return task(task_id=task_id, map_index_template="{{ series }}", multiple_outputs=False, **kwargs)(run_stage)


FINISH = "finish"
FINISH_DOC = """No-op after the whole chain: the one unmapped task, so the DAG's owner reaches the UI and API.

Airflow 3.3 computes ``DagModel.owners`` from the serialized tasks' own ``owner``
(``LazyDeserializedDAG.owner`` in ``airflow/serialization/serialized_objects.py``, written by
``DagModelOperation.update_dags`` in ``airflow/dag_processing/collection.py``); a mapped task
keeps its owner inside ``partial_kwargs``, so a DAG of mapped tasks only shows
``[operators] default_owner`` (``airflow``). An ``EmptyOperator`` without callbacks,
outlets or inlets is set to success by the scheduler without a task process
(``TaskInstance.is_task_schedulable``). Default trigger rule: a failed series makes it
``upstream_failed`` (the run fails), a skipped ``promote`` makes it skipped (the run succeeds).
"""


def finish_task() -> EmptyOperator:
    """The unmapped no-op that ends the chain: see ``FINISH_DOC``."""
    return EmptyOperator(task_id=FINISH, doc_md=FINISH_DOC)


def build_retrain_dag(name: str) -> DAG:
    """The DAG of one spec: its schedule, params and policy, the chain of ``STAGES``, then ``finish``."""
    settings = Settings.from_env(os.environ)
    path = settings.pipelines_dir / f"{name}.yaml"
    spec = load_spec(path)
    start = datetime.combine(spec.start_date, datetime.min.time(), tzinfo=UTC)
    asset = champion_asset(spec, settings)

    with DAG(
        dag_id=dag_id(spec.name),
        schedule=CronDataIntervalTimetable(spec.schedule, timezone=spec.timezone),
        start_date=start,
        catchup=False,
        max_active_runs=1,  # one run at a time per pipeline; champion.json writes are conditional as well
        default_args=default_args(spec.owner, TASK_TIMEOUT, spec.queue),
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
        announce = {"outlets": [asset], "on_success_callback": on_promotion()}
        refs: Any = [s.name for s in spec.series]
        for task_id, pick, returns, doc in STAGES:
            step = stage_task(spec, task_id, pick, returns, doc, **(announce if task_id == "promote" else {}))
            refs = step.expand(item=refs)
        refs >> finish_task()
    return dag
