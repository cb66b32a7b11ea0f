"""A benchmark's own stack and its runs' timings, read from the metadata database and task logs.

benchmarks/bench.py (LocalExecutor) and benchmarks/celery_workers.py (CeleryExecutor) both
measure through these: a task's overhead is its duration minus the stage's own work, which
the stage logs as ``stage <name> took <s>s``.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

BUNDLE = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(BUNDLE))

from benchmarks import memory, synthetic  # noqa: E402
from deploy import services  # noqa: E402
from deploy.envfile import read_env_file  # noqa: E402
from deploy.profile import local_profile  # noqa: E402
from deploy.stack import isolated_env  # noqa: E402
from include.retrain.stages.chain import CHAIN  # noqa: E402

STAGES = tuple(stage.__name__ for stage in CHAIN)  # the DAG's task ids, in order
STAGE_LOG = re.compile(r"stage (\w+) took ([0-9.]+)s")


class BenchError(RuntimeError):
    """The benchmark could not measure something (a run failed, the stack did not start)."""


def say(message: str) -> None:
    print(f"[bench] {message}", flush=True)


def pct(values: list[float], q: float) -> float:
    """The q-quantile (0..1) by linear interpolation; NaN for no values."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    pos = (len(ordered) - 1) * q
    low = int(pos)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (pos - low)


@dataclass
class Stack:
    state: Path
    env: dict[str, str]  # what the stack's processes get (the caller's plus the env file)
    api: Any

    @property
    def profile(self):
        return local_profile({"RETRAIN_STACK_DIR": str(self.state)})

    def sql(self, query: str, *params: Any) -> list[tuple]:
        import psycopg2

        with psycopg2.connect(self.env["AIRFLOW_CONN_RETRAIN_DB"]) as conn, conn.cursor() as cur:
            cur.execute(query, params)
            return cur.fetchall()

    def leaders(self) -> dict[str, int]:
        found = {name: services.running(self.profile, name) for name in ("api-server", "scheduler", "dag-processor")}
        return {name: pid for name, pid in found.items() if pid}


@contextmanager
def bench_stack(
    settings: dict[str, str],
    pipelines: dict[str, int],
    name: str = "bench",
    label: str = "",
    shipped: bool = False,
) -> Iterator[Stack]:
    """A stack of its own, started the way `make run` starts one: state in .stack-<name>/,
    database airflow_retrain_<name> recreated, bucket retrain-<name>, free ports, ``settings``
    on top of its environment, and a synthetic pipeline per entry of ``pipelines`` (name ->
    series count; a name starting with ``bare_`` gets a spec only, for benchmarks/bare.py).
    ``shipped`` adds the shipped pipelines and DAG files (what `make run` runs). Stopped and
    its state deleted at the end."""
    from include.retrain_airflow.cli import api_from_env, wait_for_dags

    state = BUNDLE / f".stack-{name}"
    shutil.rmtree(state, ignore_errors=True)
    csv = synthetic.write_csv(state / "data" / "weekly.csv")
    for pipeline, count in pipelines.items():
        dags = None if pipeline.startswith("bare_") else state / "dags"
        synthetic.write_pipeline(pipeline, count, csv, state / "pipelines", dags)
    if shipped:
        for spec in (BUNDLE / "include" / "pipelines").glob("*.yaml"):
            shutil.copy(spec, state / "pipelines" / spec.name)
        for dag_file in (BUNDLE / "dags").glob("*.py"):
            shutil.copy(dag_file, state / "dags" / dag_file.name)
    database = f"airflow_retrain_{name.replace('-', '_')}"
    env = isolated_env(state, database, f"retrain-{name}", state / "dags", state / "pipelines")
    env.update(settings)
    command = [sys.executable, str(BUNDLE / "deploy" / "stack.py")]
    say(f"starting a stack of its own in {state} ({label or 'shipped config'})")
    try:
        subprocess.run([*command, "up", "--reset-db"], env=env, check=True, timeout=600)
        file_env = read_env_file(state / "airflow.env")
        stack = Stack(state=state, env={**env, **file_env}, api=api_from_env(file_env))
        wait_for_dags(stack.api, [f"retrain_{p}" for p in pipelines if not p.startswith("bare_")], timeout=300)
        yield stack
    finally:
        subprocess.run([*command, "down"], env=env, timeout=300)
        shutil.rmtree(state, ignore_errors=True)
        say(f"stopped the bench stack and deleted {state}")


def run_pipeline(stack: Stack, name: str) -> dict:
    """Trigger one run, wait for it, and read its timings from the metadata database and task logs."""
    from include.retrain_airflow.cli import failed_tasks, trigger, wait_for_runs

    dag_id = f"retrain_{name}"
    leaders = {**stack.leaders(), "s3": services.running(stack.profile, "s3")}
    cpu_before = memory.cpu_by_part(leaders)
    run_id = trigger(stack.api, dag_id)
    state = wait_for_runs(stack.api, {dag_id: run_id}, timeout=1800)[dag_id]
    cpu = {k: v - cpu_before.get(k, 0.0) for k, v in memory.cpu_by_part(leaders).items()}
    if state != "success":
        raise BenchError(f"{dag_id} run {run_id} ended {state}: {'; '.join(failed_tasks(stack.api, dag_id, run_id))}")
    return timings(stack, dag_id, run_id) | {"cpu_s": cpu}


def stage_seconds(stack: Stack, dag_id: str, run_id: str, task_id: str, map_index: int, attempt: int) -> float | None:
    log = (
        stack.state
        / "logs"
        / f"dag_id={dag_id}"
        / f"run_id={run_id}"
        / f"task_id={task_id}"
        / f"map_index={map_index}"
        / f"attempt={attempt}.log"
    )
    if not log.exists():
        return None
    matches = STAGE_LOG.findall(log.read_text(errors="replace"))
    return float(matches[-1][1]) if matches else None


def timings(stack: Stack, dag_id: str, run_id: str) -> dict:
    ((queued, ended),) = stack.sql(
        "select queued_at, end_date from dag_run where dag_id=%s and run_id=%s", dag_id, run_id
    )
    rows = stack.sql(
        "select task_id, map_index, start_date, end_date, try_number from task_instance "
        "where dag_id=%s and run_id=%s and start_date is not null",
        dag_id,
        run_id,
    )
    tasks = []
    for task_id, map_index, start, end, attempt in rows:
        if task_id not in STAGES:  # finish: set to success by the scheduler, no task process to measure
            continue
        work = stage_seconds(stack, dag_id, run_id, task_id, map_index, attempt)
        duration = (end - start).total_seconds()
        tasks.append(
            {
                "task": task_id,
                "map_index": map_index,
                "start": start,
                "end": end,
                "duration_s": duration,
                "work_s": work,
                "overhead_s": None if work is None else duration - work,
            }
        )
    gaps = []
    for i, stage in enumerate(STAGES[1:], start=1):
        upstream = [t["end"] for t in tasks if t["task"] == STAGES[i - 1]]
        starts = [t["start"] for t in tasks if t["task"] == stage]
        if upstream and starts:
            gaps.append((min(starts) - max(upstream)).total_seconds())  # upstream done -> this stage starts
    return {
        "dag_id": dag_id,
        "run_id": run_id,
        "wall_s": (ended - queued).total_seconds(),
        "first_task_s": (min(t["start"] for t in tasks) - queued).total_seconds(),
        "tasks": len(tasks),
        "task_duration_s": [t["duration_s"] for t in tasks],
        "overhead_s": [t["overhead_s"] for t in tasks if t["overhead_s"] is not None],
        "work_s": sum(t["work_s"] or 0 for t in tasks),
        "busy_slot_s": sum(t["duration_s"] for t in tasks),
        "gaps_s": gaps,
    }
