"""The names the bundle gives its Airflow objects, in one place.

Imports nothing: the CLIs import it before they configure Airflow's logging.
"""


def dag_id(pipeline: str) -> str:
    """The retraining DAG of a pipeline: the factory names it so, the CLI and the Models page find it so."""
    return f"retrain_{pipeline}"
