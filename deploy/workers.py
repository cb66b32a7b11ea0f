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
import re
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
# Where a VM's files are: a worker VM has its own (make deploy ROLE=worker sets them).
PATHS = ("PYTHONPATH", "RETRAIN_BUNDLE_DIR", "RETRAIN_DAGS_DIR", "RETRAIN_PIPELINES_DIR")
# Secrets only the main VM's processes use, never a worker: the key that signs API logins and
# tokens, and the one of the log servers. A stolen worker.env must not let anyone log in.
MAIN_ONLY = ("AIRFLOW__API_AUTH__JWT_SECRET", "AIRFLOW__API__SECRET_KEY", "RETRAIN_BROKER_PASSWORD")
# What a worker VM reaches on the main VM: loopback there is the private address here.
REMOTE = (
    "RETRAIN_PG_HOST",
    "RETRAIN_API_HOST",
    "RETRAIN_BROKER_URL",
    "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN",
    "AIRFLOW_CONN_RETRAIN_DB",
    "AIRFLOW__CELERY__BROKER_URL",
    "AIRFLOW__CELERY__RESULT_BACKEND",
)
LOOPBACK = re.compile(r"(?<=[/@])(127\.0\.0\.1|localhost)(?=[:/]|$)|^(127\.0\.0\.1|localhost)$")
# The local stack's workers: both consume the default queue, the second also a queue of its
# own (a spec with ``queue: large`` runs only there), as a big machine would.
SECOND_QUEUE = "large"
LOCAL_WORKERS = {"worker1": "default", "worker2": f"default,{SECOND_QUEUE}"}
# RETRAIN_LOCAL_WORKERS=1 runs worker1 alone, consuming both queues (make bench compares one and two).
ALONE = {"worker1": f"default,{SECOND_QUEUE}"}
UNIT = "celery-worker"  # deploy/systemd/airflow-celery-worker.service


def worker_values(main: dict[str, str], name: str, queues: str) -> dict[str, str]:
    """The environment-file values of a worker named ``name`` consuming ``queues``."""
    values = {k: v for k, v in main.items() if k not in PER_MACHINE and k not in MAIN_ONLY}
    values["RETRAIN_WORKER_NAME"] = f"{name}@{socket.gethostname()}"
    values["RETRAIN_WORKER_QUEUES"] = queues
    return values


def for_worker_vms(main: dict[str, str], private_host: str) -> dict[str, str]:
    """worker.env: what the main VM's environment file gives a worker VM. Its own paths and
    the main VM's own secrets are left out, and every loopback address of the main VM's
    services (database, broker, api-server) becomes ``private_host``, where workers reach it."""
    values = {k: v for k, v in main.items() if k not in (*PER_MACHINE, *PATHS, *MAIN_ONLY)}
    for key in REMOTE:
        if key in values:
            values[key] = LOOPBACK.sub(private_host, values[key])
    return values


def local_worker(main: Profile, name: str) -> Profile:
    """A worker of the local stack: a state directory (env file, config, units, logs) of its own."""
    state = main.state_dir / "workers" / name
    return replace(main, state_dir=state, etc_dir=state, unit_dir=state / "systemd")


def local_workers(main_env: dict[str, str]) -> dict[str, str]:
    """Name -> queues of the local stack's workers: two unless ``RETRAIN_LOCAL_WORKERS=1``."""
    count = main_env.get("RETRAIN_LOCAL_WORKERS", "2")
    if count not in ("1", "2"):
        raise ValueError(f"RETRAIN_LOCAL_WORKERS={count!r}: the local stack runs 1 or 2 Celery workers")
    return ALONE if count == "1" else LOCAL_WORKERS


def local_overrides(main_env: dict[str, str], main: Profile, name: str) -> dict[str, str]:
    """What a local worker changes beyond ``worker_values``: on one machine its task logs go to
    the stack's log folder (the api-server reads them there, as it would from remote logging)
    and its task instances carry the worker's name as their hostname, so the two workers of
    one machine are told apart in the UI and the metadata database."""
    return {
        **worker_values(main_env, name, local_workers(main_env)[name]),
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
