"""Task defaults every DAG of the bundle shares: retries with backoff, a timeout, the alert.

Imported at parse time by the DAG builders: cheap (no heavy imports).
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from include.retrain_airflow.notify import on_failure

DEFAULT_RETRIES = 2


def default_args(owner: str, timeout: timedelta, queue: str = "default") -> dict[str, Any]:
    """Retry transient faults (S3, PostgreSQL, a restarted api-server) with exponential backoff.

    ``queue``: the Celery queue of every task (the spec's ``queue``); the LocalExecutor ignores it.
    """
    return {
        "owner": owner,
        "queue": queue,
        "retries": DEFAULT_RETRIES,
        "retry_delay": timedelta(seconds=30),
        "retry_exponential_backoff": 2.0,
        "max_retry_delay": timedelta(minutes=10),
        "execution_timeout": timeout,
        "on_failure_callback": on_failure(),
    }
