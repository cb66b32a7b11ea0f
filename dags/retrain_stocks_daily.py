"""Retrain the `stocks_daily` pipeline declared in include/pipelines/stocks_daily.yaml.

The spec holds everything about the pipeline; this file only asks the factory for its DAG.
"""

from include.retrain_airflow.factory import build_retrain_dag

dag = build_retrain_dag("stocks_daily")
