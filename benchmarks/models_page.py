"""The Models page at production size: how long the overview takes to render.

Builds a registry of 3 pipelines x 10 series x 50 versions on a real S3 endpoint
(``moto_server`` from the venv, on a free loopback port) and a decision history on the
local PostgreSQL (database ``retrain_bench_models_page``, recreated, dropped at the end),
then requests the page through ``fastapi.testclient.TestClient`` and reports latency:

  overview   GET /                          every series: champion, scores, newest decision (the target: < 1 s)
  series     GET /{pipeline}/{series}       one series' 50 versions, decisions, drift
  metric     GET /{pipeline}/{series}/metric.png
  forecast   GET /{pipeline}/{series}/forecast.png

"cold" is the first request after the api-server started: each cold sample is a child
process that loads Airflow's API app (as the api-server has before anyone opens the page),
imports the Models app and runs its start-up warm-up (``app.warm``: hooks, store client,
templates, matplotlib; the plugin's root middleware runs it on a thread when the
api-server starts; both timed apart), then requests the overview, the series page and its
two plots, as a browser opening them would.
"warm" is one process's later requests; for the plots "warm" serves the cached PNG and
"redrawn" empties the plot cache first (what a new decision or forecast costs). Each
figure comes with the store requests it sent (botocore's HTTP sends, retries included) and
the CPU time of the page's process and of the S3 endpoint, which tell a slow page from a
busy machine, and the page's own cost from the fake store's.

What is not measured: Airflow's login and permission checks (the app's ``reader``
dependency is replaced by a stand-in user and ``security.readable_dags``/``can_run`` by
stubs, as tests/integration/test_models_page.py does), the network between browser and
api-server, and S3's own round trips: moto on loopback answers in about a millisecond,
so ``--store-latency-ms`` adds a sleep before each store request to model a remote store.

Versions are written as the ``publish`` and ``promote`` stages write them (``build_manifest``,
``registry.publish``, ``move_champion``, signed, with ``profile.json`` and ``evaluation.json``),
and the gate's decision comes from ``gate.decide`` on the synthetic co2-like series of
``benchmarks/synthetic.py``; only the fitted model is a stand-in (a forecast with known error,
a small pickle), so nothing is trained. The process runs with an AIRFLOW_HOME of its own.
Prints a table and writes bench/models_page.json; ``make bench ARGS="--only models-page"``
runs it as a section of benchmarks/bench.py.

    .venv/bin/python benchmarks/models_page.py [--requests 20] [--cold 5] [--store-latency-ms 20]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import zlib
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

BUNDLE = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(BUNDLE))

from benchmarks.memory import cpu_seconds  # noqa: E402
from deploy.envfile import aws_connection  # noqa: E402
from deploy.postgres import ensure_server, port_open  # noqa: E402
from deploy.stack import free_port  # noqa: E402

if TYPE_CHECKING:  # imported where used: a cold sample's process must not have pandas loaded beforehand
    import pandas as pd

DATABASE = "retrain_bench_models_page"
BUCKET = "retrain-bench-models-page"
SIGNING_KEY = "models-page-bench-signing-key"
TARGET_S = 1.0  # the overview must render within a second
ROUTES = {
    "overview": "/",
    "series": "/{pipeline}/{series}",
    "metric": "/{pipeline}/{series}/metric.png",
    "forecast": "/{pipeline}/{series}/forecast.png",
}
PLOTS = ("metric", "forecast")
S3_PID = "MODELS_PAGE_BENCH_S3_PID"  # tells a cold sample's process whose CPU time is the store's
# What the app's settings read; removed from the environment unless set here, so the defaults apply.
APP_VARIABLES = ("RETRAIN_AWS_CONN_ID", "RETRAIN_HISTORY_CONN_ID", "RETRAIN_SIGNING_KEY")


class Sample(NamedTuple):
    """One request. CPU seconds of the page's process (all its threads) and of the S3 endpoint tell
    a slow page from a busy machine, and the page's own cost from the local fake store's."""

    seconds: float
    store_requests: int
    cpu_s: float
    store_cpu_s: float


class BenchError(RuntimeError):
    """The benchmark could not measure the page (a setup step failed, a page showed a problem)."""


def say(message: str) -> None:
    print(f"[models-page] {message}", flush=True)


def stats(samples: list[float]) -> dict[str, Any]:
    """p50, p95 (linear interpolation, as bench.py's pct) and max of ``samples`` seconds."""
    ordered = sorted(samples)
    pos = (len(ordered) - 1) * 0.95
    low, high = int(pos), min(int(pos) + 1, len(ordered) - 1)
    p95 = ordered[low] + (ordered[high] - ordered[low]) * (pos - low)
    return {"n": len(ordered), "p50_s": statistics.median(ordered), "p95_s": p95, "max_s": ordered[-1]}


# -- the endpoint, the database, the specs -------------------------------------------------


@dataclass(frozen=True)
class Shape:
    pipelines: int = 3
    series: int = 10
    versions: int = 50

    def names(self) -> list[str]:
        return [f"page_bench_{chr(ord('a') + i)}" for i in range(self.pipelines)]


@contextmanager
def environment(values: dict[str, str]) -> Iterator[None]:
    """Set ``values`` (and unset the app's other settings) for the block; restore the caller's after."""
    keys = [*values, *(k for k in APP_VARIABLES if k not in values)]
    saved = {key: os.environ.get(key) for key in keys}
    for key in keys:
        os.environ.pop(key, None)
    os.environ.update(values)
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


@contextmanager
def moto_server() -> Iterator[tuple[str, int]]:
    """A real S3 HTTP endpoint on loopback for this run only (as tests/conftest.py's ``s3_endpoint``)."""
    port = free_port()
    server = subprocess.Popen(
        [str(Path(sys.executable).parent / "moto_server"), "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 30
        while not port_open("127.0.0.1", port, timeout=0.5):
            if server.poll() is not None or time.monotonic() > deadline:
                raise BenchError(f"moto_server did not listen on 127.0.0.1:{port}")
            time.sleep(0.1)
        yield f"http://127.0.0.1:{port}", server.pid
    finally:
        server.terminate()
        try:
            server.wait(timeout=10)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()
        say(f"stopped moto_server (pid {server.pid})")


@contextmanager
def history_database() -> Iterator[str]:
    """Database ``DATABASE`` on the local server, recreated empty; dropped on the way out (only it)."""
    admin = ensure_server({"RETRAIN_PG_HOST": "127.0.0.1", "RETRAIN_PG_PORT": "5432"}, say)
    admin.run(f'DROP DATABASE IF EXISTS "{DATABASE}" WITH (FORCE)')
    admin.run(f'CREATE DATABASE "{DATABASE}"')
    try:
        yield f"postgresql://postgres@127.0.0.1:5432/{DATABASE}"
    finally:
        admin.run(f'DROP DATABASE IF EXISTS "{DATABASE}" WITH (FORCE)')
        say(f"dropped database {DATABASE}")


@contextmanager
def scratch(shape: Shape) -> Iterator[dict[str, str]]:
    """Endpoint, bucket, history database, specs and Airflow home; the environment the page reads.

    Everything is removed on the way out, whatever failed.
    """
    with (
        tempfile.TemporaryDirectory(prefix="retrain-models-page-") as tmp,
        moto_server() as (endpoint, s3_pid),
        history_database() as dsn,
    ):
        from benchmarks import synthetic

        root = Path(tmp)
        csv = synthetic.write_csv(root / "weekly.csv")
        for name in shape.names():
            synthetic.write_pipeline(name, shape.series, csv, root / "pipelines", None)
        (root / "airflow").mkdir()
        env = {
            "AIRFLOW_HOME": str(root / "airflow"),
            "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
            "AIRFLOW__API__SECRET_KEY": "models-page-bench-secret",
            "AIRFLOW_CONN_AWS_DEFAULT": aws_connection(endpoint),
            "AIRFLOW_CONN_RETRAIN_DB": dsn,
            "RETRAIN_MODEL_STORE": f"s3://{BUCKET}",
            "RETRAIN_PIPELINES_DIR": str(root / "pipelines"),
            "RETRAIN_SIGNING_KEY": SIGNING_KEY,
            S3_PID: str(s3_pid),
        }
        with environment(env):
            yield env


# -- the registry: versions as publish and promote write them ---------------------------------


@dataclass
class Champion:
    """What the writer remembers of the current champion, as the gate would read it back."""

    version: str
    window_end: str
    error: float  # the stand-in model's noise: its scores on any window
    profile: dict[str, Any]


def stand_in(actual: pd.Series, error: float, seed: int) -> pd.Series:
    """A fitted model's forecast of ``actual`` with a known error: realistic scores without fitting."""
    import numpy as np
    import pandas as pd

    noise = np.random.default_rng(seed).normal(0, error, len(actual))
    return pd.Series(actual.to_numpy() + noise, index=actual.index, name="forecast")


def scored(spec: Any, whole: pd.Series, error: float, seed: int) -> dict[str, Any]:
    """What ``evaluate`` keeps for a model with this error: the test window and the walk-forward folds."""
    from include.retrain import evaluate as scoring

    ev, horizon = spec.evaluation, spec.split.test_size
    train, test = whole.iloc[:-horizon], whole.iloc[-horizon:]
    naive = scoring.baseline(train, test.index, ev.baseline, ev.season_length)
    cuts = scoring.fold_cuts(len(whole), horizon, ev.backtest_folds, min_train=8)
    folds: dict[str, list[dict[str, Any]]] = {"model": [], "baseline": []}
    for i, cut in enumerate(cuts):
        fold = whole.iloc[cut : cut + horizon]
        folds["model"].append(scoring.score(fold, stand_in(fold, error, seed + i + 1), ev.metrics))
        fold_naive = scoring.baseline(whole.iloc[:cut], fold.index, ev.baseline, ev.season_length)
        folds["baseline"].append(scoring.score(fold, fold_naive, ev.metrics))
    predicted = stand_in(test, error, seed)
    return {
        "primary_metric": ev.primary_metric,
        "model": scoring.score(test, predicted, ev.metrics),
        "baseline": scoring.score(test, naive, ev.metrics),
        "baseline_kind": ev.baseline,
        "horizon": horizon,
        "backtest": {
            "folds": len(cuts),
            "horizon": horizon,
            "test_starts": [str(whole.index[cut]) for cut in cuts],
            **{name: scoring.summarize(each) for name, each in folds.items()},
        },
        "_plot": (predicted, naive),
    }


def decided(
    spec: Any, whole: pd.Series, metrics: dict[str, Any], champion: Champion | None, seed: int, etag: str | None
) -> tuple[dict[str, Any], str]:
    """The gate's decision (with its drift report) from ``gate.decide``, and the run's window end."""
    import pandas as pd

    from include.retrain import drift
    from include.retrain import gate as rules

    settings = spec.drift
    if champion is None:
        report: dict[str, Any] = {"action": settings.action, "status": "no champion yet: nothing to compare with"}
        scores = None
    else:
        window = whole.iloc[-(spec.drift_window + 1) :].rename("target")
        found = drift.compare(champion.profile, window, settings.psi_threshold, settings.ks_alpha)
        report = {"action": settings.action, "champion_version": champion.version, **found}
        again = scored(spec, whole, champion.error, seed + 100)
        scores = {
            "version": champion.version,
            "window_end": champion.window_end,
            "etag": etag,
            "model": again["model"],
            "backtest": {"model": again["backtest"]["model"]},
        }
    end = (whole.index[-1] + pd.Timedelta(days=2, hours=6)).tz_localize("UTC").isoformat()  # Monday 06:00 UTC
    return rules.decide(spec, metrics, scores, report, "gate", end), end


def publish_version(
    spec: Any, store: Any, layout: Any, series: str, whole: pd.Series, seed: int, champion: Champion | None
) -> tuple[dict[str, Any], dict[str, Any], Champion | None]:
    """One run of one series from the gate on: publish the version, move the champion if it won.

    Returns (manifest, decision, champion after the run).
    """
    import numpy as np
    import pandas as pd

    from include.retrain import drift, frames, registry
    from include.retrain.stages.publishing import CONSUMER_LOAD

    _, etag = registry.read_champion(store, layout, series)  # as the gate reads it, for the conditional move
    error = float(np.random.default_rng(seed).uniform(0.15, 0.6))
    metrics = scored(spec, whole, error, seed)
    predicted, naive = metrics.pop("_plot")
    decision, window_end = decided(spec, whole, metrics, champion, seed, etag)
    fingerprint = frames.fingerprint(whole.to_frame())
    stamp = pd.Timestamp(window_end)
    run_version, run_id = f"{stamp:%Y%m%dT%H%M%SZ}", f"scheduled__{window_end}"
    version = f"{run_version}-{fingerprint.removeprefix('sha256:')[:8]}"  # as StageContext.published_version
    profile = {"target": drift.profile(whole, spec.drift.transform, spec.drift.bins)}
    profile_bytes = registry.to_json(profile)
    evaluation = registry.dump_evaluation(spec.frequency, spec.evaluation.primary_metric, whole, predicted, naive)
    model = registry.dumps({"stand_in_for": "stl_arima", "error": error, "last": float(whole.iloc[-1])})
    horizon = spec.split.test_size
    manifest = registry.build_manifest(
        spec,
        series,
        version,
        run={
            "dag_id": f"retrain_{spec.name}",
            "run_id": run_id,
            "window_start": (stamp - pd.Timedelta(weeks=1)).isoformat(),
            "window_end": window_end,
        },
        data={
            "window": {
                "first_timestamp": str(whole.index[0]),
                "last_timestamp": str(whole.index[-1]),
                "model_end": str(whole.index[-1]),
            },
            "rows": {"total": len(whole), "train": len(whole) - horizon, "test": horizon},
            "fingerprint": fingerprint,
            "snapshot": {
                "key": layout.work(series, run_version, re.sub(r"[^\w.-]", "_", run_id), "raw.parquet"),
                "fingerprint": fingerprint,
                "rows": len(whole),
                "source": spec.source.kind,
            },
        },
        evidence={"metrics": metrics, "decision": decision},
        model_bytes=model,
        profile_sha256=registry.sha256(profile_bytes),
        usage={"load": CONSUMER_LOAD, "kind": "statsmodels results", "forecast": "model.forecast(steps)"},
        signing_key=SIGNING_KEY.encode(),
        evaluation_sha256=registry.sha256(evaluation),
    )
    extra = {"profile.json": profile_bytes, registry.EVALUATION_FILE: evaluation}
    registry.publish(store, layout, series, model, manifest, extra=extra)
    if decision["promote"]:
        how = {"promoted_by": decision["status"], "reason": decision["reason"], "run_id": run_id}
        registry.move_champion(store, layout, series, manifest, decision["champion_version"], etag, how)
        champion = Champion(version, window_end, error, profile["target"])
    return manifest, decision, champion


def publish_series(
    spec: Any, series: str, store: Any, versions: int, frame: pd.DataFrame
) -> tuple[list[Any], tuple | None]:
    """``versions`` weekly runs of one series, oldest first: their decisions, and the champion's batch forecast."""
    import pandas as pd

    from include.retrain import history
    from include.retrain.store import Layout

    layout = Layout("", spec.store_prefix, spec.name)
    values = frame.set_index(pd.DatetimeIndex(frame["week"], name="week"))[spec.series_by_name(series).target]
    values = values.asfreq(spec.frequency)
    decisions, champion = [], None
    for step in range(versions):
        whole = values.iloc[: len(values) - (versions - 1 - step)]
        seed = zlib.crc32(f"{spec.name}/{series}/{step}".encode())  # the same registry on every run
        manifest, decision, champion = publish_version(spec, store, layout, series, whole, seed, champion)
        decisions.append(
            history.Decision(
                event_key=f"gate:{manifest['dag_id']}:{manifest['run_id']}:{series}",
                pipeline=spec.name,
                series=series,
                version=manifest["version"],
                dag_id=manifest["dag_id"],
                run_id=manifest["run_id"],
                window_end=manifest["data_window"]["end"],
                decision=decision["status"],
                reason=decision["reason"],
                primary_metric=decision["primary_metric"],
                candidate_value=decision["candidate"],
                champion_version=decision["champion_version"],
                champion_value=decision["champion"],
                baseline_value=decision["baseline"],
                drift=decision["drift"],
                metrics=manifest["metrics"],
                actor="gate",
            )
        )
    return decisions, batch_forecast(spec, series, champion, values) if champion else None


def batch_forecast(spec: Any, series: str, champion: Champion, values: pd.Series) -> tuple:
    """What ``batch_predict`` writes for the champion: ``history.write_forecasts``'s arguments."""
    import pandas as pd

    horizon = spec.forecast.horizon or spec.split.test_size
    last = values.index[-1]
    steps = pd.date_range(last, periods=horizon + 1, freq=spec.frequency)[1:]
    level = values.iloc[-52:].to_numpy()
    points = [(when.to_pydatetime(), float(level[i % 52] + 0.03 * 52)) for i, when in enumerate(steps)]
    return (spec.name, series, champion.version, f"scheduled__{last.date()}", last.to_pydatetime(), points)


def populate(shape: Shape, env: dict[str, str], threads: int) -> dict[str, Any]:
    """Write every version to the store (series in parallel), then the history rows; their counts and time."""
    import psycopg2

    from benchmarks import synthetic
    from include.retrain import history
    from include.retrain.spec import load_spec
    from include.retrain_airflow.store import S3Store

    started = time.perf_counter()

    class Writer(S3Store):
        """The store the DAGs use, writing with one PUT (the hook's load_bytes runs a transfer manager per object)."""

        def write(self, key: str, data: bytes) -> None:
            self._call(key, lambda: self.hook.get_conn().put_object(Bucket=self.bucket, Key=key, Body=data))

    store = Writer(BUCKET, "aws_default", {"max_pool_connections": threads * 2})
    store.ensure_bucket()
    frame = synthetic.weekly_frame()
    specs = [load_spec(Path(env["RETRAIN_PIPELINES_DIR"]) / f"{name}.yaml") for name in shape.names()]
    work = [(spec, s.name) for spec in specs for s in spec.series]
    with ThreadPoolExecutor(threads) as pool:
        found = list(pool.map(lambda job: publish_series(*job, store, shape.versions, frame), work))
    store_s = time.perf_counter() - started
    decisions = [row for rows, _ in found for row in rows]
    conn = psycopg2.connect(env["AIRFLOW_CONN_RETRAIN_DB"])
    try:
        history.migrate(conn)
        for row in decisions:
            history.record_decision(conn, row)
        for _, forecast in found:
            if forecast:
                history.write_forecasts(conn, *forecast)
    finally:
        conn.close()
    return {
        "versions": len(decisions),
        "promoted": sum(r.decision == "promoted" for r in decisions),
        "objects": len(store.list("")),
        "store_s": store_s,
        "history_s": time.perf_counter() - started - store_s,
    }


# -- requests ------------------------------------------------------------------------------


class StoreRequests:
    """Counts the HTTP requests botocore sends (the S3 hook's client), optionally delaying each.

    Patched on botocore's HTTP session class, so it sees the page's client whenever it is built.
    """

    def __init__(self, latency_s: float = 0.0) -> None:
        self.latency_s = latency_s
        self.count = 0
        self._lock = threading.Lock()

    @contextmanager
    def installed(self) -> Iterator[StoreRequests]:
        from botocore.httpsession import URLLib3Session

        original = URLLib3Session.send

        def send(session: Any, request: Any) -> Any:
            with self._lock:
                self.count += 1
            if self.latency_s:
                time.sleep(self.latency_s)
            return original(session, request)

        URLLib3Session.send = send
        try:
            yield self
        finally:
            URLLib3Session.send = original


@contextmanager
def page_client() -> Iterator[Any]:
    """A client of the app as a stand-in user who may read and run the benchmark's DAGs (auth not measured)."""
    from fastapi.testclient import TestClient

    from include.retrain.settings import Settings
    from include.retrain.spec import spec_names
    from include.retrain_airflow.models_page import app as page
    from include.retrain_airflow.models_page import security

    class StandIn:
        def get_name(self) -> str:
            return "bench"

        def get_id(self) -> str:
            return "id-bench"

    user = StandIn()
    dags = {f"retrain_{name}" for name in spec_names(Settings.from_env(os.environ).pipelines_dir)}
    saved = security.readable_dags, security.can_run
    security.readable_dags = lambda who: dags
    security.can_run = lambda who, dag_id: dag_id in dags
    page.app.dependency_overrides[security.reader] = lambda: user
    try:
        with TestClient(page.app, follow_redirects=False) as client:
            yield client
    finally:
        page.app.dependency_overrides.pop(security.reader, None)
        security.readable_dags, security.can_run = saved
        page._opened.cache_clear()


def _rows(html: str, css_class: str) -> list[str]:
    return re.findall(rf'<tr class="{css_class}[^"]*"(.*?)</tr>', html, flags=re.S)


def check(route: str, response: Any, expected_rows: int) -> None:
    """The page as it should be: 200, every row there, no problem shown anywhere."""
    if response.status_code != 200:
        raise BenchError(f"{route}: HTTP {response.status_code}: {response.text[:500]}")
    if route in PLOTS:
        if response.headers.get("content-type") != "image/png":
            raise BenchError(f"{route}: {response.headers.get('content-type')}, not a PNG")
        return
    html = response.text
    rows = _rows(html, "series-row" if route == "overview" else "version-row")
    problems = re.findall(r'class="problem[^"]*">([^<]+)<', html)
    unset = [row for row in rows if '<td class="champion"></td>' in row]
    if len(rows) != expected_rows or problems or unset:
        raise BenchError(
            f"{route}: {len(rows)} rows (expected {expected_rows}), {len(unset)} without a champion; "
            f"problems shown: {problems[:3]}"
        )


def timed(client: Any, counter: StoreRequests, route: str, path: str, expected_rows: int) -> Sample:
    """One request, checked."""
    store = [int(os.environ[S3_PID])]
    before, cpu, store_cpu = counter.count, time.process_time(), cpu_seconds(store)
    started = time.perf_counter()
    response = client.get(path)
    seconds = time.perf_counter() - started
    cpu, store_cpu = time.process_time() - cpu, cpu_seconds(store) - store_cpu
    check(route, response, expected_rows)
    return Sample(seconds, counter.count - before, cpu, store_cpu)


def paths(shape: Shape) -> dict[str, str]:
    """Each route's path, on the first series of the first pipeline."""
    pipeline, series = shape.names()[0], "s00"  # benchmarks/synthetic.py's first series
    return {route: path.format(pipeline=pipeline, series=series) for route, path in ROUTES.items()}


def expected(shape: Shape) -> dict[str, int]:
    return {"overview": shape.pipelines * shape.series, "series": shape.versions, "metric": 0, "forecast": 0}


def first_requests(shape: Shape, latency_s: float) -> dict[str, Sample]:
    """In a fresh process: the overview, then the series page and its plots, each route's first request."""
    with StoreRequests(latency_s).installed() as counter, page_client() as client:
        return {
            route: timed(client, counter, route, path, expected(shape)[route]) for route, path in paths(shape).items()
        }


def child(shape_arg: str, latency_ms: float) -> int:
    """One cold sample (see ``cold``); prints {route: Sample} as JSON.

    The process first loads what the api-server has loaded before the page's first request
    (Airflow and its FastAPI app); the plugin imports the Models app on that request, which
    is timed as ``import``.
    """
    import airflow.api_fastapi.app  # noqa: F401

    started, cpu = time.perf_counter(), time.process_time()
    import include.retrain_airflow.models_page.app

    imported = Sample(time.perf_counter() - started, 0, time.process_time() - cpu, 0.0)
    started, cpu = time.perf_counter(), time.process_time()
    include.retrain_airflow.models_page.app.warm()
    warmed = Sample(time.perf_counter() - started, 0, time.process_time() - cpu, 0.0)
    shape = Shape(*(int(n) for n in shape_arg.split(",")))
    print(json.dumps({"import": imported, "warm_up": warmed, **first_requests(shape, latency_ms / 1000)}))
    return 0


def cold(shape: Shape, runs: int, latency_s: float) -> dict[str, list[Sample]]:
    """``runs`` fresh processes, each timing ``first_requests``."""
    found: dict[str, list[Sample]] = {}
    argv = [
        "--child",
        f"{shape.pipelines},{shape.series},{shape.versions}",
        "--store-latency-ms",
        str(latency_s * 1000),
    ]
    for _ in range(runs):
        done = subprocess.run(
            [sys.executable, __file__, *argv], capture_output=True, text=True, cwd=BUNDLE, timeout=300
        )
        if done.returncode:
            raise BenchError(f"a cold sample failed:\n{done.stderr[-3000:]}")
        for route, sample in json.loads(done.stdout.strip().splitlines()[-1]).items():
            found.setdefault(route, []).append(Sample(*sample))
    return found


def warm(shape: Shape, requests: int, latency_s: float) -> dict[str, dict[str, list[Sample]]]:
    """``requests`` of each route in one process after one untimed request; the plots also redrawn."""
    from include.retrain_airflow.models_page import plots

    found: dict[str, dict[str, list[Sample]]] = {}
    with StoreRequests(latency_s).installed() as counter, page_client() as client:
        for route, path in paths(shape).items():
            rows = expected(shape)[route]
            timed(client, counter, route, path, rows)
            found[route] = {"warm": [timed(client, counter, route, path, rows) for _ in range(requests)]}
            if route in PLOTS:
                redraw = []
                for _ in range(requests):
                    plots._cache.clear()
                    redraw.append(timed(client, counter, route, path, rows))
                found[route]["redraw"] = redraw
    return found


def figures_of(samples: list[Sample]) -> dict[str, Any]:
    figures = stats([s.seconds for s in samples])
    figures["store_requests"] = statistics.median(s.store_requests for s in samples)
    figures["cpu_p50_s"] = statistics.median(s.cpu_s for s in samples)
    figures["store_cpu_p50_s"] = statistics.median(s.store_cpu_s for s in samples)
    figures["samples_s"] = [round(s.seconds, 6) for s in samples]
    return figures


# -- report --------------------------------------------------------------------------------


def measure(
    shape: Shape | None = None, requests: int = 20, cold_runs: int = 5, latency_ms: float = 0.0, threads: int = 8
) -> dict[str, Any]:
    """Set up, write the registry, time the routes cold and warm, tear down; the figures."""
    shape = shape or Shape()
    started = time.monotonic()
    results: dict[str, Any] = {
        "shape": {"pipelines": shape.pipelines, "series_per_pipeline": shape.series, "versions": shape.versions},
        "store_latency_ms": latency_ms,
        "target_s": TARGET_S,
        "load_average_before": os.getloadavg(),
    }
    with scratch(shape) as env:
        say(f"writing {shape.pipelines} x {shape.series} x {shape.versions} versions to s3://{BUCKET}")
        results["setup"] = populate(shape, env, threads)
        setup = results["setup"]
        say(f"{setup['objects']} objects in {setup['store_s']:.0f} s; {cold_runs} cold samples, then warm requests")
        latency_s = latency_ms / 1000
        cold_found = cold(shape, cold_runs, latency_s)
        warm_found = warm(shape, requests, latency_s)
    results["load_average_after"] = os.getloadavg()
    results["app_import"] = figures_of(cold_found["import"])
    results["warm_up"] = figures_of(cold_found["warm_up"])
    results["routes"] = {
        route: {"path": ROUTES[route], "cold": figures_of(cold_found[route])}
        | {kind: figures_of(samples) for kind, samples in warm_found[route].items()}
        for route in ROUTES
    }
    overview = results["routes"]["overview"]
    results["overview_warm_within_target"] = overview["warm"]["p95_s"] < TARGET_S
    results["overview_cold_within_target"] = overview["cold"]["max_s"] < TARGET_S
    results["bench_seconds"] = time.monotonic() - started
    return results


LABELS = {"overview": "overview GET /", "series": "series page", "metric": "metric.png", "forecast": "forecast.png"}


def table(results: dict[str, Any]) -> str:
    shape, routes, setup = results["shape"], results["routes"], results["setup"]
    out = [
        f"Models page: {shape['pipelines']} pipelines x {shape['series_per_pipeline']} series x "
        f"{shape['versions']} versions ({setup['objects']} objects; moto S3 on loopback, "
        f"+{results['store_latency_ms']:g} ms per store request); load average "
        f"{results['load_average_before'][0]:.1f} before, {results['load_average_after'][0]:.1f} after",
        f"  {'':<44} {'p50 / p95 / max ms':>20} {'CPU ms page/S3':>15} {'S3 req':>6}  target",
    ]

    def row(what: str, f: dict[str, Any], target: str = "", worst: str = "") -> None:
        times = f"{f['p50_s'] * 1e3:.0f} / {f['p95_s'] * 1e3:.0f} / {f['max_s'] * 1e3:.0f}"
        mark = ("ok" if f[worst] < TARGET_S else "MISSED") if worst else ""
        cpu = f"{f['cpu_p50_s'] * 1e3:.0f} / {f['store_cpu_p50_s'] * 1e3:.0f}"
        out.append(f"  {what:<44} {times:>20} {cpu:>15} {f['store_requests']:>6g}  {target:<7} {mark}")

    for route, figures in routes.items():
        for kind, meaning in (("cold", "cold"), ("warm", "warm"), ("redraw", "warm, redrawn")):
            if kind in figures:
                f = figures[kind]
                target = f"< {TARGET_S:g} s" if route == "overview" else ""
                worst = ("max_s" if kind == "cold" else "p95_s") if target else ""
                row(f"{LABELS[route]}, {meaning} (n={f['n']})", f, target, worst)
    row(f"Models app import (n={results['app_import']['n']})", results["app_import"])
    row(f"warm-up at api-server start (n={results['warm_up']['n']})", results["warm_up"])
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=20, help="warm requests per route")
    parser.add_argument("--cold", type=int, default=5, help="fresh processes, one cold sample each")
    parser.add_argument("--store-latency-ms", type=float, default=0.0, help="added before each store request")
    parser.add_argument("--pipelines", type=int, default=3)
    parser.add_argument("--series", type=int, default=10)
    parser.add_argument("--versions", type=int, default=50)
    parser.add_argument("--threads", type=int, default=8, help="writer threads while building the registry")
    parser.add_argument("--output", default=str(BUNDLE / "bench" / "models_page.json"))
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        return child(args.child, args.store_latency_ms)
    results = {
        "machine": {"cores": os.cpu_count(), "python": platform.python_version(), "platform": platform.platform()},
        "started_at": datetime.now().astimezone().isoformat(timespec="seconds"),
        **measure(
            Shape(args.pipelines, args.series, args.versions),
            args.requests,
            args.cold,
            args.store_latency_ms,
            args.threads,
        ),
    }
    output = Path(args.output)
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(json.dumps(results, indent=1))
    print()
    print(table(results))
    print(f"\nall figures: {output}")
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except BenchError as exc:
        print(f"[models-page] ERROR: {exc}", file=sys.stderr)
        sys.exit(1)
