"""Forecasts from every newly promoted champion; see include/retrain_airflow/predict_dag.py."""

from include.retrain_airflow.predict_dag import build_batch_predict_dag

dag = build_batch_predict_dag()
