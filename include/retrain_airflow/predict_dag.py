"""The ``batch_predict`` DAG: scheduled on the champions' assets, not on a clock.

It runs whenever any pipeline promotes a model (an asset event per promoted series) and
writes that champion's forecasts for the next horizon to the ``retrain_forecasts`` table.
Parse-time cost is a directory listing: the assets are referenced by name, so a broken
spec cannot break this DAG.
"""

from __future__ import annotations

import os
from datetime import UTC, datetime, timedelta
from typing import Any

from airflow.sdk import DAG, get_current_context, task

from include.retrain.settings import Settings
from include.retrain.spec import spec_names
from include.retrain_airflow.assets import any_champion
from include.retrain_airflow.defaults import default_args


def build_batch_predict_dag() -> DAG:
    settings = Settings.from_env(os.environ)
    with DAG(
        dag_id="batch_predict",
        schedule=any_champion(spec_names(settings.pipelines_dir)),
        start_date=datetime(2024, 1, 1, tzinfo=UTC),
        catchup=False,
        max_active_runs=1,  # runs write disjoint rows, but one at a time keeps the table's story simple
        default_args=default_args("ml-platform", timedelta(minutes=15)),
        doc_md=__doc__,
        tags=["ml", "predictions"],
    ) as dag:

        @task
        def champions() -> list[dict[str, str]]:
            """The series whose champion changed (every champion when triggered by hand)."""
            from include.retrain_airflow.predict import changed_champions

            return changed_champions(get_current_context())

        @task(map_index_template="{{ label }}")
        def predict(item: dict[str, str]) -> dict[str, Any]:
            """Load the verified champion and write its forecast for the next horizon."""
            from include.retrain_airflow.predict import predict_series

            context = get_current_context()
            context["label"] = f"{item['pipeline']}/{item['series']}"  # type: ignore[typeddict-unknown-key]
            return predict_series(item, context["run_id"])

        predict.expand(item=champions())
    return dag
