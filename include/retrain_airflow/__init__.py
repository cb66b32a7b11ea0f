"""The Airflow side of the bundle: the DAG factory, the S3 store, the operator CLI.

``include.retrain`` holds the data and ML logic and never imports Airflow; this package
connects it to Airflow's connections, context and exceptions.
"""
