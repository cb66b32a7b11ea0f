"""
### Preload probe (test DAG)
One task that reports what its process inherited from the LocalExecutor worker it was
forked from, then imports a bundle module that tests/e2e/test_preloaded_tasks.py rewrites
between runs.
"""

from __future__ import annotations

import importlib
import os
import sys
from pathlib import Path

import pendulum
from airflow.sdk import dag, task

LIBRARIES = ("pandas", "statsmodels.tsa.arima.model", "sklearn.pipeline")
# Compiled extensions whose mapping in a process proves the library is loaded there.
MAPPED = {"pandas": "/pandas/_libs/", "statsmodels": "/statsmodels/"}


@dag(
    schedule=None,
    start_date=pendulum.datetime(2024, 1, 1, tz="UTC"),
    catchup=False,
    max_active_runs=1,
    default_args={
        "owner": "ml-platform",
        "retries": 2,
        "retry_delay": pendulum.duration(seconds=10),
        "execution_timeout": pendulum.duration(minutes=5),
    },
    doc_md=__doc__,
    tags=["ml", "test"],
)
def preload_probe():
    @task
    def probe() -> dict:
        """What the task process had before its body imported anything, and the probe module's VALUE."""
        loaded = {name: name in sys.modules for name in LIBRARIES}  # first thing: nothing imported yet
        parent = os.getppid()
        maps = Path(f"/proc/{parent}/maps").read_text()
        mapped = {name: marker in maps for name, marker in MAPPED.items()}
        value = importlib.import_module("include._preload_probe").VALUE
        return {"loaded": loaded, "parent": parent, "parent_mapped": mapped, "value": value}

    probe()


preload_probe()
