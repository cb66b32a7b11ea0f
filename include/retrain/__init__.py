"""Scheduled retraining of forecasting models: plain Python, no Airflow imports.

One module per stage (``sources``, ``validate``, ``features``, ``split``, ``models``,
``evaluate``, ``registry``) plus ``spec`` for pipeline specs and ``stages`` that chains
them over a model store. The Airflow side lives in ``include.retrain_airflow``.
"""
