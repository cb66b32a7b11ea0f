"""The same stage calls as a DAG run, in one bare Python process: the benchmark's yardstick.

Imports included (timed from interpreter start), then every series through the chain, one
after another, against the same store and history table as the tasks, through the same
``runtime`` code minus Airflow. Prints one JSON line: seconds for imports, per stage and
per series, and the whole process.

    python benchmarks/bare.py PIPELINE_NAME    # with the stack's environment (deploy/stack.py exec)
"""

from __future__ import annotations

import time

STARTED = time.perf_counter()

import json  # noqa: E402
import os  # noqa: E402
import sys  # noqa: E402


def main(name: str) -> dict:
    from include.retrain.errors import NoNewData, NotPromoted
    from include.retrain.settings import Settings
    from include.retrain.spec import load_spec
    from include.retrain.stages.chain import CHAIN
    from include.retrain.stages.context import RunInfo, StageContext
    from include.retrain_airflow import clients, runtime
    from include.retrain_airflow.store import open_store

    settings = Settings.from_env(os.environ)
    spec = load_spec(settings.pipelines_dir / f"{name}.yaml")
    store, root = open_store(settings)
    imported = time.perf_counter() - STARTED
    run = RunInfo(
        version="20260101T000000Z",
        window_start="2025-12-25T06:00:00+00:00",
        window_end="2026-01-01T06:00:00+00:00",
        dag_id=f"bare_{name}",
        run_id=f"bare_{name}",
    )
    ctx = StageContext(
        spec,
        store,
        root,
        run,
        clients.from_airflow(),
        runtime.history_writer(settings.history_conn_id),
        signing_key=settings.signing_key,
    )
    stages: dict[str, float] = {stage.__name__: 0.0 for stage in CHAIN}
    per_series = []
    for series in spec.series:
        ref: object = series.name
        began = time.perf_counter()
        for stage in CHAIN:
            t0 = time.perf_counter()
            try:
                ref = stage(ctx, ref)
            except (NoNewData, NotPromoted):
                break
            finally:
                stages[stage.__name__] += time.perf_counter() - t0
        per_series.append(time.perf_counter() - began)
    return {
        "pipeline": name,
        "series": len(spec.series),
        "imports_s": imported,
        "stages_s": stages,
        "per_series_s": per_series,
        "total_s": time.perf_counter() - STARTED,
    }


if __name__ == "__main__":
    print(json.dumps(main(sys.argv[1])))
