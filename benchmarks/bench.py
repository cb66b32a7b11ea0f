"""make bench: what Airflow costs on top of the work it orchestrates, measured side by side.

Sections (all by default; pick some with --only parse,artifacts,runs,memory,models-page,celery):

  parse      parse time of dags/, cold and warm, against one empty DAG
  artifacts  published artifact size against series length (statsmodels and scikit-learn)
  runs       per-task overhead (task duration minus the stage's own logged work), task-to-task
             gap, trigger to first task; whole runs through the scheduler and LocalExecutor
             against the same stage calls in one bare Python process, at 1, 8 and 32 series
             of a synthetic co2_weekly-like pipeline; wall time against series count
  memory     the idle stack's PSS per process with the task preload on and off (Airflow's
             defaults: fork, idle sleep 1 s), and the idle scheduler's CPU under each
  models-page  the Models page's overview, series page and plots, cold and warm, on a registry of
             3 pipelines x 10 series x 50 versions (benchmarks/models_page.py: an S3 endpoint and
             a history database of its own, no stack)
  celery     the same runs on the CeleryExecutor: two workers or one, preload on or off, each
             on a stack of its own (benchmarks/celery_workers.py)

It starts a stack of its own the way `make run` does (state in .stack-bench/, database
airflow_retrain_bench recreated, free ports), stops it and deletes its state at the end,
prints a table and writes the sections it measured into bench/results.json (the others
stay as an earlier run left them).

    .venv/bin/python benchmarks/bench.py [--only runs] [--series 1,8] [--config defaults]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from datetime import datetime
from pathlib import Path
from typing import Any

BUNDLE = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(BUNDLE))

from benchmarks import celery_workers, memory, models_page  # noqa: E402
from benchmarks.parse_time import parse_times  # noqa: E402
from benchmarks.stack_runs import BenchError, Stack, bench_stack, pct, run_pipeline, say  # noqa: E402
from deploy import preload, services  # noqa: E402

SECTIONS = ("parse", "artifacts", "runs", "memory", "models-page", "celery")
# Airflow's own defaults for what the shipped config changes: the "preload off" side.
CONFIGS = {
    "shipped": {},
    "defaults": {"AIRFLOW__SCHEDULER__MP_START_METHOD": "fork", "AIRFLOW__SCHEDULER__SCHEDULER_IDLE_SLEEP_TIME": "1"},
}
REPEATS_AT_ONE = 3  # the 1-series run is short: three runs give the gaps and the ratio a median


# -- the stack ---------------------------------------------------------------------------


def pipelines_for(series_counts: list[int]) -> dict[str, int]:
    """Every pipeline the runs use, and its series count (each pipeline runs once, on a fresh store)."""
    names = {"bench_warmup": 1, "bench_other": 1}
    for count in series_counts:
        repeats = REPEATS_AT_ONE if count == 1 else 1
        for r in range(repeats):
            suffix = f"_r{r + 1}" if repeats > 1 else ""
            names[f"bench_s{count}{suffix}"] = count
            names[f"bare_s{count}{suffix}"] = count
    return names


# -- runs --------------------------------------------------------------------------------


def bare_run(stack: Stack, name: str) -> dict:
    """The same stage calls in one fresh Python process; its wall time includes the interpreter and imports."""
    started = time.perf_counter()
    done = subprocess.run(
        [sys.executable, str(BUNDLE / "benchmarks" / "bare.py"), name],
        env=services.process_env(stack.profile),
        cwd=BUNDLE,
        capture_output=True,
        text=True,
        timeout=1800,
    )
    wall = time.perf_counter() - started
    if done.returncode:
        raise BenchError(f"bare run of {name} failed:\n{done.stderr[-2000:]}")
    return {**json.loads(done.stdout.strip().splitlines()[-1]), "wall_s": wall}


def workers(stack: Stack) -> int:
    return int(stack.env.get("RETRAIN_PARALLELISM", "4"))


def slope(points: list[tuple[float, float]]) -> float:
    """Least-squares seconds per series."""
    xs, ys = [p[0] for p in points], [p[1] for p in points]
    mx, my = statistics.fmean(xs), statistics.fmean(ys)
    den = sum((x - mx) ** 2 for x in xs)
    return sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True)) / den if den else float("nan")


def runs_section(stack: Stack, series_counts: list[int]) -> dict:
    say("warm-up run (the first task after a scheduler start also starts the forkserver)")
    warmup = run_pipeline(stack, "bench_warmup")
    result: dict[str, Any] = {"first_task_after_start_s": warmup["first_task_s"], "by_series": {}}
    serial: list[dict] = []
    for count in series_counts:
        repeats = REPEATS_AT_ONE if count == 1 else 1
        names = [f"s{count}_r{r + 1}" if repeats > 1 else f"s{count}" for r in range(repeats)]
        say(f"{count} series: {repeats} run(s) through Airflow, then the same in one bare process")
        flows = [run_pipeline(stack, f"bench_{n}") for n in names]
        bares = [bare_run(stack, f"bare_{n}") for n in names]
        if count == 1:
            serial = flows
        flow_wall = statistics.median(f["wall_s"] for f in flows)
        bare_wall = statistics.median(b["wall_s"] for b in bares)
        result["by_series"][count] = {
            "airflow_wall_s": flow_wall,
            "bare_wall_s": bare_wall,
            "ratio": flow_wall / bare_wall,
            "bare_imports_s": statistics.median(b["imports_s"] for b in bares),
            "bare_work_per_series_s": statistics.fmean(s for b in bares for s in b["per_series_s"]),
            "tasks": flows[0]["tasks"],
            "tasks_per_s": flows[0]["tasks"] / flow_wall,
            "overhead_p50_s": pct([o for f in flows for o in f["overhead_s"]], 0.5),
            "overhead_p95_s": pct([o for f in flows for o in f["overhead_s"]], 0.95),
            "trigger_to_first_task_s": statistics.median(f["first_task_s"] for f in flows),
            # how full the worker slots were: task durations over (wall time x workers)
            "worker_utilisation": flows[0]["busy_slot_s"] / (flow_wall * workers(stack)),
            "cpu_s": flows[0]["cpu_s"],
        }
    tasks = serial or []
    overhead = [o for f in tasks for o in f["overhead_s"]]
    gaps = [g for f in tasks for g in f["gaps_s"]]
    result["per_task"] = {
        "measured_on": "the 1-series runs (one chain, nothing queued behind a busy worker)",
        "overhead_p50_s": pct(overhead, 0.5),
        "overhead_p95_s": pct(overhead, 0.95),
        "gap_p50_s": pct(gaps, 0.5),
        "gap_p95_s": pct(gaps, 0.95),
        "trigger_to_first_task_s": statistics.median(f["first_task_s"] for f in tasks) if tasks else float("nan"),
        "samples": len(overhead),
    }
    points = [(float(c), r["airflow_wall_s"]) for c, r in result["by_series"].items()]
    if len(points) >= 2:
        lanes = min(workers(stack), os.cpu_count() or 1)
        per_series = statistics.fmean(r["bare_work_per_series_s"] for r in result["by_series"].values())
        result["scaling"] = {
            "slope_s_per_series": slope(points),
            "expected_slope_s_per_series": per_series / lanes,
            "work_per_series_s": per_series,
            "parallel_lanes": lanes,
            "workers": workers(stack),
        }
    return result


# -- memory ------------------------------------------------------------------------------


def measure_idle(stack: Stack, label: str, settle: float = 5.0, cpu_window: float = 20.0) -> dict:
    time.sleep(settle)
    leaders = stack.leaders()
    figures = memory.stack_memory(leaders)
    ok, lines = preload.report(stack.state, leaders.get("scheduler"))
    figures["preload_report"] = lines
    figures["workers_preloaded"] = ok and any("worker pid" in line for line in lines)
    figures["scheduler_idle_cpu"] = memory.idle_cpu(leaders["scheduler"], cpu_window)
    figures["label"] = label
    return figures


def restart_scheduler(stack: Stack, config: str) -> None:
    for key in (k for cfg in CONFIGS.values() for k in cfg):
        os.environ.pop(key, None)
    os.environ.update(CONFIGS[config])  # services.process_env starts from this process's environment
    services.stop(stack.profile, "scheduler", grace=120)
    (stack.state / "run" / "preload.json").unlink(missing_ok=True)
    services.start(stack.profile, "scheduler")
    services.wait_healthy(stack.profile, stack.env)


def memory_section(stack: Stack, config: str) -> dict:
    other = "defaults" if config == "shipped" else "shipped"
    say(f"idle stack, {config} config: PSS per process, then {20:.0f} s of scheduler CPU")
    first = measure_idle(stack, config)
    say(f"restarting the scheduler with the {other} config, one 1-series run, then the same measurements")
    restart_scheduler(stack, other)
    run = run_pipeline(stack, "bench_other")
    second = measure_idle(stack, other)
    second["run"] = {k: run[k] for k in ("wall_s", "first_task_s")} | {
        "overhead_p50_s": pct(run["overhead_s"], 0.5),
        "overhead_p95_s": pct(run["overhead_s"], 0.95),
        "gap_p50_s": pct(run["gaps_s"], 0.5),
        "gap_p95_s": pct(run["gaps_s"], 0.95),
    }
    return {config: first, other: second}


# -- report ------------------------------------------------------------------------------


def verdict(value: float, limit: float) -> str:
    return "ok" if value <= limit else "MISSED"


def table(results: dict) -> str:
    out = []

    def row(what: str, value: str, target: str = "", mark: str = "") -> None:
        out.append(f"  {what:<52} {value:>16}  {target:<10} {mark}")

    if "parse" in results:
        p = results["parse"]
        out.append("1. DAG parsing (fresh interpreter with airflow.sdk loaded; median of 5)")
        row(
            "one empty DAG, cold / warm",
            f"{p['empty_dag']['cold_s'] * 1e3:.1f} / {p['empty_dag']['warm_s'] * 1e3:.1f} ms",
        )
        folder = p["folder"]
        row("dags/ whole folder, cold", f"{folder['cold_s'] * 1e3:.1f} ms", "<= 100 ms", verdict(folder["cold_s"], 0.1))
        row("dags/ whole folder, warm", f"{folder['warm_s'] * 1e3:.1f} ms")
        worst = max(p["files"].items(), key=lambda item: item[1]["cold_s"])
        row(f"slowest single file cold ({worst[0]})", f"{worst[1]['cold_s'] * 1e3:.1f} ms")
        row("heavy imports at parse time", ",".join(folder["heavy_imports"]) or "none")
    if "runs" in results:
        r = results["runs"]
        t = r["per_task"]
        out.append(f"2. Per task ({t['measured_on']}; {t['samples']} tasks)")
        row(
            "overhead p50 (task wall minus stage work)",
            f"{t['overhead_p50_s']:.3f} s",
            "<= 0.3 s",
            verdict(t["overhead_p50_s"], 0.3),
        )
        row("overhead p95", f"{t['overhead_p95_s']:.3f} s", "<= 0.6 s", verdict(t["overhead_p95_s"], 0.6))
        row("task-to-task gap p50", f"{t['gap_p50_s']:.3f} s")
        row("task-to-task gap p95", f"{t['gap_p95_s']:.3f} s", "<= 0.4 s", verdict(t["gap_p95_s"], 0.4))
        row(
            "trigger to first task",
            f"{t['trigger_to_first_task_s']:.2f} s",
            "<= 2 s",
            verdict(t["trigger_to_first_task_s"], 2),
        )
        row("trigger to first task, first run after scheduler start", f"{r['first_task_after_start_s']:.2f} s")
        out.append("3. Whole run through Airflow vs the same stage calls in one bare process (imports included)")
        targets = {1: 2.0, 8: 1.2, 32: 1.0}
        for count, s in r["by_series"].items():
            limit = targets.get(int(count))
            row(
                f"{count} series: {s['airflow_wall_s']:.1f} s vs {s['bare_wall_s']:.1f} s bare ({s['tasks']} tasks)",
                f"{s['ratio']:.2f}x",
                f"<= {limit}x" if limit else "",
                verdict(s["ratio"], limit) if limit else "",
            )
        for count, s in r["by_series"].items():
            cpu = ", ".join(f"{k} {v:.0f}" for k, v in sorted(s["cpu_s"].items(), key=lambda kv: -kv[1]) if v >= 0.5)
            row(f"{count} series: CPU s: {cpu}", f"{s['worker_utilisation']:.0%} busy")
        for count, s in r["by_series"].items():
            row(
                f"{count} series: overhead p50 / p95, tasks per second",
                f"{s['overhead_p50_s']:.2f}/{s['overhead_p95_s']:.2f}s {s['tasks_per_s']:.2f}/s",
            )
        if "scaling" in r:
            sc = r["scaling"]
            out.append("6. Wall time against series count")
            row("slope (least squares over the runs above)", f"{sc['slope_s_per_series']:.2f} s/series")
            row(
                f"work per series / {sc['parallel_lanes']} lanes (min of workers, cores)",
                f"{sc['expected_slope_s_per_series']:.2f} s/series",
            )
    if "artifacts" in results:
        out.append("4. Published artifact size (pickle) against series length")
        for a in results["artifacts"]:
            extra = ""
            if "full_bytes" in a:
                extra = f"default fit {a['full_bytes'] / 1e6:.1f} MB, forecast diff {a['forecast_max_rel_diff']:.1e}"
            target = "<= 1 MB" if a["points"] == 5000 and a["kind"] != "sklearn" else ""
            mark = verdict(a["bytes"], 1e6) if target else ""
            row(f"{a['kind']} {a['points']} points {extra}", f"{a['bytes'] / 1e6:.3f} MB", target, mark)
            if a.get("consumer"):
                row("  loads and forecasts in a plain statsmodels install", a["consumer"][:16])
    if "memory" in results:
        out.append("5. Idle stack memory (PSS, MB) and idle scheduler CPU")
        for label, m in results["memory"].items():
            by_component: dict[str, float] = {}
            for p in m["processes"]:
                by_component[p["component"]] = by_component.get(p["component"], 0) + p["pss_mb"]
            parts = ", ".join(f"{k} {v:.0f}" for k, v in by_component.items())
            target = "<= 900 MB" if label == "shipped" else ""
            mark = verdict(m["total_pss_mb"], 900) if target else ""
            row(f"{label}: {parts}", f"{m['total_pss_mb']:.0f} MB", target, mark)
            row(f"{label}: scheduler idle CPU (share of one core)", f"{m['scheduler_idle_cpu'] * 100:.1f} %")
            row(f"{label}: workers have the libraries preloaded", "yes" if m["workers_preloaded"] else "no")
            if "run" in m:
                run = m["run"]
                row(
                    f"{label}: 1-series run; overhead p50/p95; gap p95",
                    f"{run['wall_s']:.1f}s {run['overhead_p50_s']:.2f}/{run['overhead_p95_s']:.2f} "
                    f"{run['gap_p95_s']:.2f}",
                )
    if "models_page" in results:
        out.append(f"7. {models_page.table(results['models_page'])}")
    if "celery" in results:
        out.extend(celery_workers.table(results["celery"]))
    return "\n".join(out)


def default(value: Any) -> Any:
    if isinstance(value, datetime):
        return value.isoformat()
    raise TypeError(type(value).__name__)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", default=",".join(SECTIONS), help=f"comma-separated subset of {', '.join(SECTIONS)}")
    parser.add_argument("--series", default="1,8,32", help="series counts of the synthetic runs")
    parser.add_argument(
        "--config",
        choices=sorted(CONFIGS),
        default="shipped",
        help="defaults: Airflow's fork start method and 1 s idle sleep (the figures before tuning)",
    )
    parser.add_argument("--output", default=str(BUNDLE / "bench" / "results.json"))
    args = parser.parse_args(argv)
    only = [s.strip() for s in args.only.split(",") if s.strip()]
    unknown = sorted(set(only) - set(SECTIONS))
    if unknown:
        parser.error(f"unknown section(s) {unknown}; choose from {', '.join(SECTIONS)}")
    series_counts = [int(n) for n in args.series.split(",") if n.strip()]
    started = time.monotonic()
    results: dict[str, Any] = {
        "machine": {"cores": os.cpu_count(), "python": platform.python_version(), "platform": platform.platform()},
        "config": args.config,
        "started_at": datetime.now().astimezone().isoformat(timespec="seconds"),
    }
    if "parse" in only:
        say("parsing dags/ and one empty DAG")
        results["parse"] = parse_times(BUNDLE / "dags", repeat=5)
    if "artifacts" in only:
        say("fitting and pickling models at 1k, 5k and 20k points")
        from benchmarks.artifacts import artifact_sizes

        results["artifacts"] = artifact_sizes()
    if "runs" in only or "memory" in only:
        with bench_stack(CONFIGS[args.config], pipelines_for(series_counts), label=f"{args.config} config") as stack:
            if "runs" in only:
                results["runs"] = runs_section(stack, series_counts)
            if "memory" in only:
                results["memory"] = memory_section(stack, args.config)
    if "models-page" in only:
        say("the Models page on 3 x 10 x 50 versions (benchmarks/models_page.py)")
        results["models_page"] = models_page.measure()
    if "celery" in only:
        say("the CeleryExecutor: two workers, one worker, two without preload (benchmarks/celery_workers.py)")
        results["celery"] = celery_workers.measure()
    results["bench_seconds"] = time.monotonic() - started
    output = Path(args.output)
    output.parent.mkdir(parents=True, exist_ok=True)
    earlier = json.loads(output.read_text()) if output.exists() else {}
    output.write_text(json.dumps(earlier | results, indent=1, default=default))
    print(
        f"\nmake bench ({args.config} config, {results['machine']['cores']} cores, "
        f"{results['bench_seconds']:.0f} s); targets are the project's\n"
    )
    print(table(results))
    print(f"\nall figures: {output}")
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except (BenchError, models_page.BenchError) as exc:
        print(f"[bench] ERROR: {exc}", file=sys.stderr)
        sys.exit(1)
