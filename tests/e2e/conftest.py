"""A live stack for the session: PostgreSQL database, S3 endpoint, api-server, scheduler,
dag-processor, started by deploy/stack.py exactly as ``make run`` starts them.

It gets its own state directory, metadata database (recreated) and free ports, so it
never touches a developer's ``make run`` stack. Its DAGs folder holds the bundle's DAG
files, the test pipelines (``flaky`` reads a CSV file the tests rewrite) and the
test-only DAGs of tests/e2e/dags/.

Tests run in random order (pytest-randomly), so none may count on another having run:
a test that needs published models or unpaused pipelines asks for ``run_all``, which
runs ``make run``'s job once for the whole session, whichever test asks first.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import boto3
import numpy as np
import pandas as pd
import pytest

from deploy.envfile import read_env_file
from deploy.profile import Profile, local_profile
from deploy.stack import isolated_env
from include.retrain_airflow.cli import Api, api_from_env, wait_for_dags
from tests.helpers import BUNDLE

TEST_SPEC = """\
name: {name}
description: {description}
schedule: "0 0 * * *"
start_date: 2024-01-01
frequency: D
source: {{kind: file, path: "{csv}", time_column: day}}
series:
  - {{name: level, target: level}}
validation: {{min_rows: 60, max_null_fraction: 0.05}}
model: {model}
split: {split}
"""
TEST_PIPELINES = {
    "flaky": {
        "description": "Test pipeline reading a CSV file that the tests rewrite.",
        "model": "{kind: arima, order: [1, 0, 0], trend: c}",
        "split": "{test_size: 14}",
    },
    "slow": {
        "description": "Test pipeline whose train task takes a while (to crash the scheduler under).",
        "model": "{kind: sklearn, estimator: tests.e2e.slow_model.SlowRegressor, params: {delay: 12}, lags: 3}",
        "split": "{test_size: 14, refit_on_full: false}",
    },
}


@dataclass
class Stack:
    env: dict[str, str]
    api: Api
    state: Path

    @property
    def profile(self) -> Profile:
        return local_profile({"RETRAIN_STACK_DIR": str(self.state)})

    @property
    def flaky_csv(self) -> Path:
        return self.state / "data" / "flaky.csv"

    def s3(self):
        return boto3.client(
            "s3",
            endpoint_url=f"http://127.0.0.1:{self.env['RETRAIN_S3_PORT']}",
            aws_access_key_id="x",
            aws_secret_access_key="x",
            region_name="us-east-1",
        )

    @property
    def bucket(self) -> str:
        return self.env["RETRAIN_BUCKET"]

    def get(self, key: str) -> bytes:
        return self.s3().get_object(Bucket=self.bucket, Key=key)["Body"].read()

    def keys(self, prefix: str) -> list[str]:
        pages = self.s3().get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=prefix)
        return sorted(obj["Key"] for page in pages for obj in page.get("Contents", []))

    def run(self, *command: str) -> subprocess.CompletedProcess[str]:
        """A command with the stack's environment file, as `make` runs it."""
        stack = [sys.executable, str(BUNDLE / "deploy" / "stack.py"), "exec", "--", *command]
        return subprocess.run(stack, env=self.env, capture_output=True, text=True, timeout=900)


def write_flaky_csv(path: Path, days: int = 120, duplicate: bool = False) -> None:
    """A smooth daily series with noise; ``duplicate`` repeats one day (a broken export)."""
    rng = np.random.default_rng(7)
    index = pd.date_range("2025-01-01", periods=days, freq="D")
    level = 50 + 5 * np.sin(np.arange(days) / 7) + rng.normal(0, 0.3, days)
    frame = pd.DataFrame({"day": index.strftime("%Y-%m-%d"), "level": level.round(4)})
    if duplicate:
        frame = pd.concat([frame, frame.iloc[[10]]]).sort_values("day", kind="stable")
    path.parent.mkdir(parents=True, exist_ok=True)
    frame.to_csv(path, index=False)


@pytest.fixture(scope="session")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    state = tmp_path_factory.mktemp("stack")
    dags, pipelines = state / "dags", state / "pipelines"
    shutil.copytree(BUNDLE / "dags", dags, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copytree(BUNDLE / "include" / "pipelines", pipelines)
    for probe in (BUNDLE / "tests" / "e2e" / "dags").glob("*.py"):  # test-only DAGs
        shutil.copy(probe, dags / probe.name)
    for name, fields in TEST_PIPELINES.items():
        (dags / f"retrain_{name}.py").write_text(
            '"""Test pipeline."""\nfrom include.retrain_airflow.factory import build_retrain_dag\n\n'
            f'dag = build_retrain_dag("{name}")\n'
        )
        csv = state / "data" / f"{name}.csv"
        write_flaky_csv(csv)
        (pipelines / f"{name}.yaml").write_text(TEST_SPEC.format(name=name, csv=csv, **fields))
    env = isolated_env(state, "airflow_retrain_test", "retrain-test-models", dags, pipelines)
    command = [sys.executable, str(BUNDLE / "deploy" / "stack.py")]
    try:
        subprocess.run([*command, "up", "--reset-db"], env=env, check=True, timeout=600)
        file_env = read_env_file(state / "airflow.env")
        api = api_from_env(file_env)
        # Airflow queues no asset-triggered run for a paused DAG: unpaused from the start,
        # batch_predict sees every promotion of the session, whichever test makes it.
        wait_for_dags(api, ["batch_predict"], timeout=120)
        api.json("PATCH", "/dags/batch_predict", json={"is_paused": False})
        yield Stack(env={**env, **file_env}, api=api, state=state)
    finally:
        subprocess.run([*command, "down"], env=env, timeout=120)
        logs = state / "logs"
        if logs.exists():
            print(f"stack logs kept in {logs}")


@dataclass(frozen=True)
class RunAll:
    """What `make run`'s job printed and returned."""

    done: subprocess.CompletedProcess[str]
    seconds: float


@pytest.fixture(scope="session")
def run_all(stack: Stack) -> RunAll:
    """`make run`'s job, once per session: every pipeline triggered through the REST API
    (which unpauses it) and waited for, so each has published and recorded a gate decision.

    Ask for it rather than count on an earlier test having run the pipelines.
    """
    started = time.monotonic()
    done = stack.run(sys.executable, "-m", "include.retrain_airflow.cli", "run-all", "--timeout", "600")
    seconds = time.monotonic() - started
    print(done.stdout[-3000:], done.stderr[-3000:], f"run-all took {seconds:.1f}s")
    return RunAll(done=done, seconds=seconds)
