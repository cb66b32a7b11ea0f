"""Load test: many pipelines come due at the same moment on the shipped configuration.

    python benchmarks/load.py [--pipelines 20] [--series 8]   # make load

It generates ``--pipelines`` pipelines of ``--series`` daily series each over one CSV
file (ARIMA(1,0,0): the load is on Airflow, not on the model), starts a stack of its own
(deploy/stack.py, its own database and ports: a ``make run`` stack is left alone),
triggers every pipeline in the same second through the REST API and waits. Then it checks
what must hold under load (every run succeeded, no task was lost or is stuck, each series
has one version, the decision history one row per run and series) and reports the wall
time, the task throughput and the stack's peak memory (PSS, sampled every second).
The suite runs the same checks on 4 x 4 (tests/e2e/test_load.py).
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

BUNDLE = Path(__file__).resolve().parents[1]
if str(BUNDLE) not in sys.path:
    sys.path.insert(0, str(BUNDLE))

from benchmarks import memory  # noqa: E402

SPEC = """\
name: {name}
description: Load-test pipeline ({series} daily series over one CSV file).
schedule: "0 0 * * *"
start_date: 2024-01-01
frequency: D
source: {{kind: file, path: "{csv}", time_column: day}}
series:
{series_lines}
validation: {{min_rows: 60, max_null_fraction: 0.05}}
model: {{kind: arima, order: [1, 0, 0], trend: c}}
split: {{test_size: 14}}
tags: [load-test]
"""


def series_names(count: int) -> list[str]:
    return [f"s{i:02d}" for i in range(count)]


def write_pipelines(state: Path, pipelines: int, series: int, days: int = 180) -> list[str]:
    """The CSV, the specs and their one-line DAG files; the pipelines' names."""
    import numpy as np
    import pandas as pd

    rng = np.random.default_rng(11)
    index = pd.date_range("2025-01-01", periods=days, freq="D")
    frame = pd.DataFrame({"day": index.strftime("%Y-%m-%d")})
    for i, name in enumerate(series_names(series)):
        frame[name] = (50 + i + 5 * np.sin(np.arange(days) / (7 + i)) + rng.normal(0, 0.3, days)).round(4)
    csv = state / "data" / "load.csv"
    csv.parent.mkdir(parents=True, exist_ok=True)
    frame.to_csv(csv, index=False)
    names = [f"load_{n:02d}" for n in range(1, pipelines + 1)]
    lines = "\n".join(f"  - {{name: {s}, target: {s}}}" for s in series_names(series))
    for name in names:
        for folder in ("pipelines", "dags"):
            (state / folder).mkdir(parents=True, exist_ok=True)
        spec = SPEC.format(name=name, series=series, csv=csv, series_lines=lines)
        (state / "pipelines" / f"{name}.yaml").write_text(spec)
        (state / "dags" / f"retrain_{name}.py").write_text(
            f'"""Load-test pipeline {name}."""\n\nfrom include.retrain_airflow.factory import build_retrain_dag\n\n'
            f'dag = build_retrain_dag("{name}")\n'
        )
    return names


@dataclass
class LoadResult:
    pipelines: int
    series: int
    wall_seconds: float
    task_instances: int
    tasks_run: int  # task instances that ran a process (not skipped without one)
    tasks_per_second: float
    peak_pss_mb: float
    run_states: dict[str, str]
    problems: list[str] = field(default_factory=list)


def _sample_peak(leaders: Callable[[], dict[str, int]], stop: threading.Event, peak: list[float]) -> None:
    while not stop.wait(1.0):
        try:
            peak[0] = max(peak[0], memory.stack_memory(leaders())["total_pss_mb"])
        except OSError:
            continue


def run_load(
    api: Any,
    pipelines: dict[str, list[str]],
    leaders: Callable[[], dict[str, int]],
    versions_of: Callable[[str, str], list[str]],
    history: Callable[[list[str]], list[tuple[str, str, str]]],
    timeout: float,
) -> LoadResult:
    """Trigger every pipeline (name -> its series) at once, wait, check, measure.

    ``versions_of(pipeline, series)`` lists the series' published versions (manifests),
    ``history(pipelines)`` the (pipeline, series, run_id) of every decision row.
    """
    from include.retrain_airflow.cli import trigger, wait_for_runs

    stop, peak = threading.Event(), [0.0]
    sampler = threading.Thread(target=_sample_peak, args=(leaders, stop, peak), daemon=True)
    sampler.start()
    started = time.monotonic()
    # Each pipeline's latest complete interval, as make run triggers it (unpausing then adds
    # no scheduled run of the same data): all due within the same second or two.
    runs = {f"retrain_{name}": trigger(api, f"retrain_{name}") for name in pipelines}
    try:
        states = wait_for_runs(api, runs, timeout)
    finally:
        wall = time.monotonic() - started
        stop.set()
        sampler.join(5)
    problems = [f"{dag_id}: {state}" for dag_id, state in states.items() if state != "success"]
    instances, ran = 0, 0
    for dag_id, run_id in runs.items():
        listed = api.json("GET", f"/dags/{dag_id}/dagRuns/{run_id}/taskInstances", params={"limit": 1000})
        for ti in listed["task_instances"]:
            instances += 1
            ran += ti["start_date"] is not None and ti["state"] == "success"
            if ti["state"] not in ("success", "skipped"):
                problems.append(f"{dag_id} {ti['task_id']}[{ti['map_index']}]: {ti['state']} (lost or stuck)")
    for name, names in pipelines.items():
        for series in names:
            found = versions_of(name, series)
            if len(found) != 1:
                problems.append(f"{name}/{series}: {len(found)} versions, expected 1: {found}")
    rows = history(list(pipelines))
    expected = {(name, s, runs[f"retrain_{name}"]) for name, names in pipelines.items() for s in names}
    for key in expected:
        if rows.count(key) != 1:
            problems.append(f"history has {rows.count(key)} rows for {key}, expected 1")
    extra = [row for row in rows if row not in expected]
    if extra:
        problems.append(f"history rows of no run of this load: {extra[:5]}")
    return LoadResult(
        pipelines=len(pipelines),
        series=sum(len(names) for names in pipelines.values()),
        wall_seconds=wall,
        task_instances=instances,
        tasks_run=ran,
        tasks_per_second=ran / wall if wall else 0.0,
        peak_pss_mb=peak[0],
        run_states=states,
        problems=problems,
    )


def summary(result: LoadResult) -> str:
    return (
        f"{result.pipelines} pipelines x {result.series // max(result.pipelines, 1)} series: "
        f"{sum(s == 'success' for s in result.run_states.values())}/{len(result.run_states)} runs succeeded in "
        f"{result.wall_seconds:.1f}s; {result.tasks_run} task processes of {result.task_instances} task instances, "
        f"{result.tasks_per_second:.2f} tasks/s; peak stack PSS {result.peak_pss_mb:.0f} MB; "
        f"problems: {len(result.problems)}"
    )


@contextmanager
def load_stack(pipelines: int, series: int) -> Iterator[tuple[Any, dict[str, str], Path]]:
    from deploy.envfile import read_env_file
    from deploy.stack import isolated_env
    from include.retrain_airflow.cli import api_from_env, wait_for_dags

    state = BUNDLE / ".stack-load"
    shutil.rmtree(state, ignore_errors=True)
    names = write_pipelines(state, pipelines, series)
    env = isolated_env(state, "airflow_retrain_load", "retrain-load", state / "dags", state / "pipelines")
    command = [sys.executable, str(BUNDLE / "deploy" / "stack.py")]
    print(f"[load] starting a stack of its own in {state} (the shipped config)", flush=True)
    try:
        subprocess.run([*command, "up", "--reset-db"], env=env, check=True, timeout=600)
        file_env = read_env_file(state / "airflow.env")
        api = api_from_env(file_env)
        wait_for_dags(api, [f"retrain_{n}" for n in names], timeout=600)
        yield api, {**env, **file_env}, state
    finally:
        subprocess.run([*command, "down"], env=env, timeout=300)
        shutil.rmtree(state, ignore_errors=True)
        print(f"[load] stopped the load stack and deleted {state}", flush=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pipelines", type=int, default=20)
    parser.add_argument("--series", type=int, default=8)
    parser.add_argument("--timeout", type=float, default=3600)
    parser.add_argument("--output", default=str(BUNDLE / "bench" / "load.json"))
    args = parser.parse_args(argv)
    import boto3
    import psycopg2

    from deploy import services
    from deploy.profile import local_profile

    with load_stack(args.pipelines, args.series) as (api, env, state):
        profile = local_profile({"RETRAIN_STACK_DIR": str(state)})
        s3 = boto3.client(
            "s3",
            endpoint_url=f"http://127.0.0.1:{env['RETRAIN_S3_PORT']}",
            aws_access_key_id="x",
            aws_secret_access_key="x",  # noqa: S106 - moto accepts any key
            region_name="us-east-1",
        )

        def leaders() -> dict[str, int]:
            found = {n: services.running(profile, n) for n in ("api-server", "scheduler", "dag-processor")}
            return {n: pid for n, pid in found.items() if pid}

        def versions_of(pipeline: str, series: str) -> list[str]:
            pages = s3.get_paginator("list_objects_v2").paginate(
                Bucket=env["RETRAIN_BUCKET"], Prefix=f"models/{pipeline}/{series}/"
            )
            keys = [o["Key"] for page in pages for o in page.get("Contents", [])]
            return [k for k in keys if k.endswith("/manifest.json")]

        def history(pipelines: list[str]) -> list[tuple[str, str, str]]:
            with psycopg2.connect(env["AIRFLOW_CONN_RETRAIN_DB"]) as conn, conn.cursor() as cur:
                cur.execute(
                    "SELECT pipeline, series, run_id FROM retrain_decisions WHERE pipeline = ANY(%s)", (pipelines,)
                )
                return [tuple(row) for row in cur.fetchall()]

        names = {f"load_{n:02d}": series_names(args.series) for n in range(1, args.pipelines + 1)}
        result = run_load(api, names, leaders, versions_of, history, args.timeout)
    print(f"\n[load] {summary(result)}")
    for problem in result.problems:
        print(f"[load] PROBLEM: {problem}")
    output = Path(args.output)
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(json.dumps(asdict(result), indent=1))
    print(f"[load] figures: {output}")
    return 1 if result.problems else 0


if __name__ == "__main__":
    sys.exit(main())
