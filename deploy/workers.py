"""Celery workers (RETRAIN_EXECUTOR=celery): a worker machine's settings, from the main VM's.

A worker needs what the main VM's processes have (the broker URL, the metadata database
for Celery's results, ``jwt_secret`` and the other shared secrets, the model store and its
connection) and keeps a few settings of its own: its state directory, its name and the
queues it consumes. ``worker_values`` makes the one from the other; ``make deploy
ROLE=worker`` and the local stack's two workers both go through it.
"""

from __future__ import annotations

import hashlib
import os
import socket
from dataclasses import replace
from pathlib import Path

from deploy.profile import Profile

# Settings that belong to the machine, not to the deployment: never copied from the main VM.
PER_MACHINE = (
    "AIRFLOW_HOME",
    "AIRFLOW_CONFIG",
    "RETRAIN_STATE_DIR",
    "MPLCONFIGDIR",
    "RETRAIN_WORKER_NAME",
    "RETRAIN_WORKER_QUEUES",
    "RETRAIN_WORKER_CONCURRENCY",
)
# The local stack's workers: both consume the default queue, the second also a queue of its
# own (a spec with ``queue: large`` runs only there), as a big machine would.
SECOND_QUEUE = "large"
LOCAL_WORKERS = {"worker1": "default", "worker2": f"default,{SECOND_QUEUE}"}
UNIT = "celery-worker"  # deploy/systemd/airflow-celery-worker.service


def worker_values(main: dict[str, str], name: str, queues: str) -> dict[str, str]:
    """The environment-file values of a worker named ``name`` consuming ``queues``."""
    values = {k: v for k, v in main.items() if k not in PER_MACHINE}
    values["RETRAIN_WORKER_NAME"] = f"{name}@{socket.gethostname()}"
    values["RETRAIN_WORKER_QUEUES"] = queues
    return values


def local_worker(main: Profile, name: str) -> Profile:
    """A worker of the local stack: a state directory (env file, config, units, logs) of its own."""
    state = main.state_dir / "workers" / name
    return replace(main, state_dir=state, etc_dir=state, unit_dir=state / "systemd")


def local_overrides(main_env: dict[str, str], main: Profile, name: str) -> dict[str, str]:
    """What a local worker changes beyond ``worker_values``: on one machine its task logs go to
    the stack's log folder (the api-server reads them there, as it would from remote logging)
    and its task instances carry the worker's name as their hostname, so the two workers of
    one machine are told apart in the UI and the metadata database."""
    return {
        **worker_values(main_env, name, LOCAL_WORKERS[name]),
        "AIRFLOW__LOGGING__BASE_LOG_FOLDER": str(main.state_dir / "logs"),
        "AIRFLOW__CORE__HOSTNAME_CALLABLE": "deploy.workers.worker_name",
    }


def worker_name() -> str:
    """``[core] hostname_callable`` of the local stack's workers."""
    return os.environ.get("RETRAIN_WORKER_NAME") or socket.getfqdn()


# What a task runs: a worker whose copy of these differs from the main VM's runs other code.
VERSIONED = ("dags", "include", "plugins", "deploy", "requirements.txt", "constraints.txt")


def bundle_version(bundle: Path) -> str:
    """A short hash of the bundle's code and pins (not its state): equal on two machines when
    they run the same bundle. make status compares each worker's with the main VM's."""
    digest = hashlib.sha256()
    for top in VERSIONED:
        path = bundle / top
        files = sorted(path.rglob("*")) if path.is_dir() else [path]
        for file in files:
            if file.is_file() and "__pycache__" not in file.parts and file.suffix != ".pyc":
                digest.update(str(file.relative_to(bundle)).encode() + b"\0" + file.read_bytes() + b"\0")
    return digest.hexdigest()[:12]
