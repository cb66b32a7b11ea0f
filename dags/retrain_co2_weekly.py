"""Retrain the `co2_weekly` pipeline declared in include/pipelines/co2_weekly.yaml.

The spec holds everything about the pipeline; this file only asks the factory for its DAG.
"""

from include.retrain_airflow.factory import build_retrain_dag

dag = build_retrain_dag("co2_weekly")
