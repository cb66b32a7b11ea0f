"""The Models page: a FastAPI app that the api-server mounts at ``/models`` (plugins/models_page.py).

    GET  /                               every series: champion, score vs baseline, newest decision, drift, age
    GET  /{pipeline}/{series}            versions, decisions, plots, drift, the champion's manifest
    GET  /{pipeline}/{series}/metric.png         the primary metric per run
    GET  /{pipeline}/{series}/forecast.png       recent actuals, test-window and batch forecasts
    GET  /{pipeline}/{series}/versions/{version} one version's manifest
    POST /{pipeline}/{series}/promote    make a version the champion (form: version, reason)
    POST /{pipeline}/{series}/rollback   return to the previous champion or to a version (form: to, reason)

Every route depends on ``security.reader`` (set on the app, so a new route cannot miss
it); the two POSTs also need the right to run the pipeline's DAG and a CSRF token. The
moves go through ``include.retrain.registry.operations``, as ``make registry`` does:
verification first, a conditional pointer write, then a history row naming the user.
Names in the path that are not a spec, a series of it or a published version are a
404; nothing from the path reaches a store key unchecked. No route serves OpenAPI docs.
"""

from __future__ import annotations

import base64
import functools
import json
import os
import re
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import urlencode

from fastapi import Depends, FastAPI, Form, HTTPException, Request, status
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from fastapi.templating import Jinja2Templates
from jinja2 import pass_context

from include.retrain.errors import RetrainError, SpecError
from include.retrain.formatting import number
from include.retrain.registry import operations, read_manifest, to_json
from include.retrain.registry.targets import Target
from include.retrain.settings import Settings
from include.retrain.spec import NAME_PATTERN, load_spec, spec_names
from include.retrain_airflow import history as airflow_history
from include.retrain_airflow import names
from include.retrain_airflow.models_page import catalog, plots, security
from include.retrain_airflow.models_page.security import User
from include.retrain_airflow.store import open_store

# Fail fast when the store does not answer: the page shows the problem instead of hanging.
STORE_CLIENT = {"connect_timeout": 3, "read_timeout": 10, "retries": {"max_attempts": 2, "mode": "standard"}}
VERSION_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
LOAD_COMMAND = (
    "from include.retrain_airflow.consumer import champion_model\n"
    "model, manifest = champion_model({pipeline!r}, {series!r})  # checks sha256 and signature first"
)

app = FastAPI(
    title="Models",
    dependencies=[Depends(security.reader)],
    docs_url=None,
    redoc_url=None,
    openapi_url=None,
)
templates = Jinja2Templates(directory=Path(__file__).with_name("templates"))


@pass_context
def path_for(context: dict[str, Any], name: str, /, **params: Any) -> str:
    """A link within the app: a path (under the mount point), so it stays right behind a TLS proxy."""
    return context["request"].url_for(name, **params).path


templates.env.globals["path_for"] = path_for
templates.env.filters["number"] = number
templates.env.filters["age"] = lambda when, now: _age(now - when) if when else ""
templates.env.globals["plot_size"] = (plots.WIDTH, plots.HEIGHT)


def _age(delta: Any) -> str:
    """A model's age as people say it: 40 min, 5 h, 12 d."""
    seconds = max(int(delta.total_seconds()), 0)
    if seconds < 3600:
        return f"{seconds // 60} min"
    return f"{seconds // 3600} h" if seconds < 2 * 86400 else f"{seconds // 86400} d"


async def mounted(scope: dict[str, Any], receive: Any, send: Any) -> None:
    """The app as the api-server mounts it (plugins/models_page.py).

    Inside a mount, Starlette's ``url_for`` looks route names up in the api-server's own
    router and builds URLs from the api-server's root; handing this app's router and the
    mount's root path (``/models``) along makes the page's links resolve under the mount.
    """
    await app({**scope, "router": app.router, "app_root_path": scope.get("root_path", "")}, receive, send)


def warm() -> None:
    """Do what the first view would otherwise wait for: imports, the store client, templates.

    Called on a background thread when the api-server starts (plugins/models_page.py), so
    the first overview after a restart costs what every later one costs. Nothing here may
    fail the api-server: a store or database that is down is the page's to report.
    """
    from airflow.providers.postgres.hooks.postgres import PostgresHook  # noqa: F401  (the import is the work)
    from matplotlib.backends.backend_agg import FigureCanvasAgg  # noqa: F401
    from matplotlib.figure import Figure  # noqa: F401

    for name in ("overview.html", "series.html"):
        templates.get_template(name)
    store = sources().store
    hook = getattr(store, "hook", None)
    if hook is not None:
        hook.get_conn()  # builds the boto3 client; connects to nothing


# -- where things are ------------------------------------------------------------------------


@functools.lru_cache(maxsize=4)
def _opened(settings: Settings) -> tuple[Any, str]:
    """One store client per process and settings: a boto3 client is thread-safe and costly to build."""
    return open_store(settings, STORE_CLIENT)


def sources() -> catalog.Sources:
    settings = Settings.from_env(os.environ)
    store, root = _opened(settings)
    return catalog.Sources(
        settings.pipelines_dir, store, root, lambda: _history(settings.history_conn_id), settings.signing_key
    )


@contextmanager
def _history(conn_id: str) -> Iterator[Any]:
    """A read connection to the history database; reading never migrates its schema."""
    conn = airflow_history.connect(conn_id)
    try:
        yield conn
    finally:
        conn.close()


def not_found(what: str) -> HTTPException:
    return HTTPException(status.HTTP_404_NOT_FOUND, f"no {what} of that name")


def resolve(src: catalog.Sources, user: Any, pipeline: str, series: str) -> Target | SpecError:
    """The series named by the path, or the error of a spec that no longer loads; else 404/403."""
    if not re.fullmatch(NAME_PATTERN, pipeline) or pipeline not in spec_names(src.pipelines_dir):
        raise not_found("pipeline")
    if names.dag_id(pipeline) not in security.readable_dags(user):
        raise HTTPException(status.HTTP_403_FORBIDDEN, f"you may not read DAG {names.dag_id(pipeline)}")
    try:
        spec = load_spec(src.pipelines_dir / f"{pipeline}.yaml")
    except SpecError as exc:
        return exc
    if series not in {s.name for s in spec.series}:
        raise not_found("series")
    return Target.of(spec, series, src.store, src.root)


def target_or_404(src: catalog.Sources, user: Any, pipeline: str, series: str) -> Target:
    found = resolve(src, user, pipeline, series)
    if isinstance(found, SpecError):
        raise not_found("series")
    return found


def published(target: Target, version: str) -> str:
    """A version name that has a directory in the store (a well-formed name, then one listing)."""
    if not VERSION_PATTERN.fullmatch(version) or not target.store.list(target.version_file(version, "")):
        raise not_found("version")
    return version


# -- pages -----------------------------------------------------------------------------------


def _page(request: Request, name: str, **context: Any) -> HTMLResponse:
    return templates.TemplateResponse(request, name, {"now": datetime.now(UTC), **context})


@app.get("/", response_class=HTMLResponse, name="overview")
def overview(request: Request, user: User) -> HTMLResponse:
    readable = security.readable_dags(user)
    found = catalog.overview(sources(), lambda dag_id: dag_id in readable)
    return _page(request, "overview.html", page=found, user=security.name_of(user))


@app.get("/{pipeline}/{series}", response_class=HTMLResponse, name="series")
def series_page(request: Request, user: User, pipeline: str, series: str) -> HTMLResponse:
    src = sources()
    target = resolve(src, user, pipeline, series)
    if isinstance(target, SpecError):
        return _page(request, "broken.html", pipeline=pipeline, series=series, problem=str(target))
    page = catalog.series_page(src, target)
    allowed = security.can_run(user, names.dag_id(pipeline))
    return _page(
        request,
        "series.html",
        page=page,
        target=target,
        user=security.name_of(user),
        can_act=allowed,
        csrf=security.csrf_token(user) if allowed else "",
        flash=read_flash(request),
        manifest_json=json.dumps(page.manifest, indent=2, default=str) if page.manifest else "",
        load_command=LOAD_COMMAND.format(pipeline=pipeline, series=series),
        dag_id=names.dag_id(pipeline),
    )


@app.get("/{pipeline}/{series}/versions/{version}", response_class=HTMLResponse, name="version")
def version_page(request: Request, user: User, pipeline: str, series: str, version: str) -> HTMLResponse:
    target = target_or_404(sources(), user, pipeline, series)
    version = published(target, version)
    try:
        manifest, problem = to_json(read_manifest(target.store, target.layout, series, version)).decode(), ""
    except RetrainError as exc:
        manifest, problem = "", str(exc)
    return _page(request, "version.html", target=target, version=version, manifest=manifest, problem=problem)


# -- plots -----------------------------------------------------------------------------------


def _png(request: Request, png: bytes, tag: str) -> Response:
    headers = {"ETag": f'"{tag}"', "Cache-Control": "private, max-age=300"}
    if request.headers.get("if-none-match") == headers["ETag"]:
        return Response(status_code=status.HTTP_304_NOT_MODIFIED, headers=headers)
    return Response(png, media_type="image/png", headers=headers)


@app.get("/{pipeline}/{series}/metric.png", name="metric_plot")
def metric_plot(request: Request, user: User, pipeline: str, series: str) -> Response:
    src = sources()
    target = target_or_404(src, user, pipeline, series)
    try:
        rows = catalog.decisions(src, target)
    except Exception:  # the page says why; the image says there is nothing to draw
        rows = []
    data = plots.metric_data(target.spec.evaluation.primary_metric, rows)
    return _png(request, *plots.cached("metric", data, plots.draw_metric))


@app.get("/{pipeline}/{series}/forecast.png", name="forecast_plot")
def forecast_plot(request: Request, user: User, pipeline: str, series: str) -> Response:
    src = sources()
    found = catalog.plot_inputs(src, target_or_404(src, user, pipeline, series))
    data = plots.forecast_data(found.actuals, found.evaluation, found.forecast)
    return _png(request, *plots.cached("forecast", data, plots.draw_forecast))


# -- actions ---------------------------------------------------------------------------------


def _flash_url(request: Request, pipeline: str, series: str, level: str, text: str) -> str:
    message = base64.urlsafe_b64encode(json.dumps([level, text]).encode()).decode()
    query = urlencode({"flash": message, "sig": security.sign(f"flash|{message}")})
    return f"{request.url_for('series', pipeline=pipeline, series=series).path}?{query}"


def read_flash(request: Request) -> tuple[str, str] | None:
    """The outcome of the last action, passed through the redirect, signed so a link cannot fake one."""
    message, signature = request.query_params.get("flash", ""), request.query_params.get("sig", "")
    if not message or not security.signed(f"flash|{message}", signature):
        return None
    try:
        level, text = json.loads(base64.urlsafe_b64decode(message))
    except ValueError:
        return None
    return str(level), str(text)


def _act(request: Request, user: Any, pipeline: str, series: str, csrf_token: str, move: Any) -> RedirectResponse:
    """What both actions share: CSRF, permission, the move itself, its history row, the redirect."""
    security.check_csrf(request, user, csrf_token)
    src = sources()
    target = target_or_404(src, user, pipeline, series)
    if not security.can_run(user, names.dag_id(pipeline)):
        raise HTTPException(
            status.HTTP_403_FORBIDDEN, f"moving a champion needs the right to run DAG {names.dag_id(pipeline)}"
        )
    actor, now = f"ui:{security.name_of(user)}", datetime.now(UTC)
    try:
        done = move(target, actor, now, src.signing_key)
    except RetrainError as exc:
        return _redirect(request, pipeline, series, "error", str(exc))
    if not done.moved or done.row is None:
        return _redirect(request, pipeline, series, "ok", f"{done.version} is already the champion; nothing changed")
    text = f"champion is now {done.version} (was {done.previous or 'none'})"
    try:
        airflow_history.record(Settings.from_env(os.environ).history_conn_id, done.row)
    except Exception as exc:  # the pointer is the source of truth: the move stands
        return _redirect(request, pipeline, series, "warn", f"{text}, but no history row was written: {exc}")
    return _redirect(request, pipeline, series, "ok", f"{text}; recorded as {done.row.decision!r} by {actor}")


def _redirect(request: Request, pipeline: str, series: str, level: str, text: str) -> RedirectResponse:
    return RedirectResponse(_flash_url(request, pipeline, series, level, text), status.HTTP_303_SEE_OTHER)


Field = Annotated[str, Form()]


@app.post("/{pipeline}/{series}/promote", name="promote")
def promote(
    request: Request, user: User, pipeline: str, series: str, version: Field, reason: Field = "", csrf_token: Field = ""
) -> RedirectResponse:
    def move(target: Target, actor: str, now: datetime, key: bytes | None) -> operations.Change:
        if not reason.strip():
            raise RetrainError("a promotion needs a reason", fix="say why in the reason field", rule="reason given")
        return operations.promote(target, published(target, version), reason.strip(), actor, key, now=now, via="ui")

    return _act(request, user, pipeline, series, csrf_token, move)


@app.post("/{pipeline}/{series}/rollback", name="rollback")
def rollback(
    request: Request, user: User, pipeline: str, series: str, to: Field = "", reason: Field = "", csrf_token: Field = ""
) -> RedirectResponse:
    def move(target: Target, actor: str, now: datetime, key: bytes | None) -> operations.Change:
        version = published(target, to) if to else None
        return operations.rollback(target, version, reason.strip() or None, actor, key, now=now, via="ui")

    return _act(request, user, pipeline, series, csrf_token, move)
