"""make bench ARGS="--only celery": the same runs on Airflow's CeleryExecutor, one worker or two,
with the workers' preload on or off.

Each configuration gets a stack of its own (``make run EXECUTOR=celery``'s: its own Redis on a
free port started from airflow-broker.service, local Celery workers with a state directory
each, state in .stack-bench-celery/, database airflow_retrain_bench_celery), two tasks at once
per worker. A warm-up run goes first (each pool process's first task pays for loading the DAG
bundle); then ``runs`` runs of a synthetic pipeline of ``series`` series are timed, and last
`make run`'s run-all of the shipped pipelines (all triggered at once, on a fresh store):

  wall        trigger to the run's end
  overhead    each task's duration minus the stage's own logged work (median, p90)
  preload     seconds each worker took to import the scientific libraries before forking
              its pool (run/preload.json of its state directory; none with preload off)
  hosts       how many tasks each worker ran

Preload off is ``[celery] extra_celery_config = {}``: Celery then imports nothing before
forking, and each task imports pandas, statsmodels and the rest itself.
"""

from __future__ import annotations

import json
import re
import statistics
import subprocess
import sys
from typing import Any

from benchmarks.stack_runs import BUNDLE, BenchError, Stack, bench_stack, pct, run_pipeline, say
from deploy import workers
from deploy.stack import free_port

# Every configuration: the CeleryExecutor with two tasks at once per worker (a 2-core worker VM).
COMMON = {"RETRAIN_EXECUTOR": "celery", "AIRFLOW__CELERY__WORKER_CONCURRENCY": "2"}
CONFIGS = {
    "two workers, preload": {"RETRAIN_LOCAL_WORKERS": "2"},
    "one worker, preload": {"RETRAIN_LOCAL_WORKERS": "1"},
    "two workers, no preload": {"RETRAIN_LOCAL_WORKERS": "2", "AIRFLOW__CELERY__EXTRA_CELERY_CONFIG": "{}"},
}
WARMUP = "celery_warmup"
RUN_ALL = re.compile(r"runs finished in ([0-9.]+)s")


def pipelines(series: int, runs: int) -> dict[str, int]:
    return {WARMUP: series, **{f"celery_r{i + 1}": series for i in range(runs)}}


def preload_seconds(stack: Stack) -> dict[str, float]:
    """Worker name -> seconds its main process spent importing the preload list, for workers that preloaded."""
    found = {}
    for name in workers.LOCAL_WORKERS:
        record = stack.state / "workers" / name / "run" / "preload.json"
        if record.exists():
            found[name] = json.loads(record.read_text())["preload_seconds"]
    return found


def tasks_by_host(stack: Stack, dag_ids: list[str]) -> dict[str, int]:
    rows = stack.sql(
        "select hostname, count(*) from task_instance where dag_id = any(%s) and hostname <> '' group by 1",
        dag_ids,
    )  # the scheduler marks each run's finish task itself: no worker, no hostname
    return dict(rows)


def shipped_run(stack: Stack) -> dict[str, Any]:
    """`make run`'s run-all on this stack: every shipped pipeline triggered at once."""
    done = subprocess.run(
        [sys.executable, "-m", "include.retrain_airflow.cli", "run-all"],
        env=stack.env,
        cwd=BUNDLE,
        capture_output=True,
        text=True,
        timeout=1800,
    )
    finished = RUN_ALL.search(done.stdout)
    if done.returncode or not finished:
        raise BenchError(f"run-all failed:\n{done.stdout[-2000:]}\n{done.stderr[-2000:]}")
    shipped = [f"retrain_{spec.stem}" for spec in (BUNDLE / "include" / "pipelines").glob("*.yaml")]
    hosts = tasks_by_host(stack, shipped)
    return {"wall_s": float(finished.group(1)), "tasks": sum(hosts.values()), "tasks_by_host": hosts}


def measure_config(label: str, settings: dict[str, str], series: int, runs: int) -> dict[str, Any]:
    names = pipelines(series, runs)
    env = {**COMMON, "RETRAIN_BROKER_URL": f"redis://127.0.0.1:{free_port()}/0", **settings}
    with bench_stack(env, names, name="bench-celery", label=f"CeleryExecutor, {label}", shipped=True) as stack:
        say(f"{label}: warm-up run, then {runs} timed run(s) of {series} series, then the shipped pipelines")
        warmup = run_pipeline(stack, WARMUP)
        flows = [run_pipeline(stack, name) for name in names if name != WARMUP]
        overhead = [o for f in flows for o in f["overhead_s"]]
        return {
            "settings": settings,
            "shipped": shipped_run(stack),
            "warmup_wall_s": warmup["wall_s"],
            "wall_s": [f["wall_s"] for f in flows],
            "wall_median_s": statistics.median(f["wall_s"] for f in flows),
            "tasks_per_run": flows[0]["tasks"],
            "overhead_p50_s": pct(overhead, 0.5),
            "overhead_p90_s": pct(overhead, 0.9),
            "overhead_max_s": max(overhead, default=float("nan")),
            "trigger_to_first_task_s": statistics.median(f["first_task_s"] for f in flows),
            "preload_s": preload_seconds(stack),
            "tasks_by_host": tasks_by_host(stack, [f["dag_id"] for f in flows]),
        }


def measure(series: int = 8, runs: int = 3) -> dict[str, Any]:
    return {
        "series": series,
        "concurrency_per_worker": int(COMMON["AIRFLOW__CELERY__WORKER_CONCURRENCY"]),
        "configs": {label: measure_config(label, settings, series, runs) for label, settings in CONFIGS.items()},
    }


def per_worker(tasks_by_host: dict[str, int]) -> str:
    """ "worker1 14, worker2 13": the Celery node names without the machine's."""
    return ", ".join(f"{host.split('@')[0]} {count}" for host, count in sorted(tasks_by_host.items()))


def table(results: dict[str, Any]) -> list[str]:
    out = [
        f"8. CeleryExecutor: {results['series']}-series runs, {results['concurrency_per_worker']} tasks at once "
        "per worker (wall of each timed run; task overhead p50/p90; preload per worker)"
    ]
    for label, c in results["configs"].items():
        out.append(
            f"  {label:<26} shipped pipelines (run-all): {c['shipped']['wall_s']:.1f} s "
            f"({c['shipped']['tasks']} tasks); tasks: {per_worker(c['shipped']['tasks_by_host'])}"
        )
    for label, c in results["configs"].items():
        walls = " / ".join(f"{w:.1f}" for w in c["wall_s"])
        preload = ", ".join(f"{s:.1f} s" for s in c["preload_s"].values()) or "none"
        out.append(
            f"  {label:<26} {walls} s ({c['tasks_per_run']} tasks); overhead "
            f"{c['overhead_p50_s']:.2f}/{c['overhead_p90_s']:.2f} s; preload {preload}; "
            f"tasks: {per_worker(c['tasks_by_host'])}"
        )
    return out
