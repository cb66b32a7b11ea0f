"""Preloaded Celery workers: the scientific libraries imported once, before the pool forks.

``[celery] extra_celery_config`` lists this module in Celery's ``imports``. Celery imports
it in the worker's main process while the worker starts, before the prefork pool forks its
children; every task then runs in a fork of a child (Airflow's supervisor forks the task
runner), so it starts with pandas, statsmodels, scikit-learn and boto3 loaded, as it does
under the LocalExecutor's preloading forkserver (deploy/preload.py).

The list is the scheduler's ``[scheduler] mp_forkserver_preload``, one list for both
executors. A module that fails to import stops the worker's start with its name (Celery
raises what an ``imports`` module raises), instead of tasks silently importing it again.
"""

from __future__ import annotations

import gc

from deploy import preload

NOT_FOR_WORKERS = (preload.SELF, "airflow.executors.local_executor")


def modules() -> list[str]:
    _, listed = preload.configured()
    return [m for m in listed if m not in NOT_FOR_WORKERS]


def load() -> dict:
    """Import the list, record what loaded (run/preload.json), freeze the garbage collector."""
    wanted = modules()
    errors = preload.import_errors(wanted)
    if errors:
        raise ImportError(
            "the Celery worker cannot preload "
            + "; ".join(f"{name} ({error})" for name, error in errors.items())
            + ": install it into the virtualenv or remove it from [scheduler] mp_forkserver_preload"
        )
    record = preload.record_loaded(wanted, errors)
    preload.prime_inspect()
    gc.collect()
    gc.freeze()  # Airflow froze before this import ran: freeze what it added, shared by every fork
    return record


def register_version_command() -> None:
    """``bundle_version``, a Celery remote-control command answered by this worker: make status
    asks every worker and reports one that runs another copy of the bundle than the main VM."""
    from celery.worker.control import inspect_command

    from deploy.profile import BUNDLE
    from deploy.workers import bundle_version

    version = bundle_version(BUNDLE)

    @inspect_command(name="bundle_version")
    def bundle_version_command(state: object) -> dict[str, str]:  # Celery passes the worker state
        return {"version": version}


load()
register_version_command()
