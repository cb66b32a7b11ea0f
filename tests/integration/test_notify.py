"""Failure and promotion notices reach a real HTTP endpoint and a real SMTP server on loopback.

Connections come from ``AIRFLOW_CONN_*`` variables and are read by ``airflow.sdk.Connection.get``
(outside a task it reads environment variables and secrets backends). The last test runs a
DAG through Airflow's own task runner (``airflow dags test``) with the connection stored in the
metadata database, which a task can only reach through the api-server's Execution API.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import textwrap
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from email import message_from_bytes
from email.message import Message
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from aiosmtpd.controller import Controller

from include.retrain_airflow.notify import SMTP_CONN_ID, WEBHOOK_CONN_ID, on_failure, on_promotion
from tests.helpers import BUNDLE, free_port

RUN_ID = "scheduled__2026-11-09T06:00:00+00:00"
LOG_URL = "http://airflow.example:8080/dags/retrain_co2_weekly/runs/x/tasks/publish/mapped/2?try_number=3"
PROMOTED = {
    "pipeline": "co2_weekly",
    "series": "co2",
    "version": "20261116T060000Z",
    "decision": {"reason": "candidate MAE 0.41 beats champion 0.52"},
}


@dataclass
class _Post:
    path: str
    headers: dict[str, str]
    body: dict[str, Any]


@dataclass
class _Webhook:
    url: str
    posts: list[_Post] = field(default_factory=list)
    status: int = 200


@dataclass
class _TaskInstance:
    """What a notifier reads from ``context["ti"]``, as the Task SDK's RuntimeTaskInstance has it."""

    dag_id: str = "retrain_co2_weekly"
    run_id: str = RUN_ID
    task_id: str = "publish"
    map_index: int = 2
    rendered_map_index: str | None = "co2"
    try_number: int = 3
    log_url: str = LOG_URL
    returned: Any = None
    pulls: list[dict[str, Any]] = field(default_factory=list)

    def xcom_pull(self, **kwargs: Any) -> Any:
        self.pulls.append(kwargs)
        return self.returned


def _context(ti: _TaskInstance | None = None, **extra: Any) -> dict[str, Any]:
    ti = ti or _TaskInstance()
    return {"ti": ti, "task_instance": ti, "run_id": ti.run_id, **extra}


@pytest.fixture(autouse=True)
def _no_configured_channels(monkeypatch: pytest.MonkeyPatch) -> None:
    """Only what a test configures: never the developer's own connections."""
    for conn_id in (WEBHOOK_CONN_ID, SMTP_CONN_ID):
        monkeypatch.delenv(f"AIRFLOW_CONN_{conn_id.upper()}", raising=False)


@pytest.fixture
def webhook() -> Iterator[_Webhook]:
    """An HTTP endpoint on loopback that records every POST."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), BaseHTTPRequestHandler)
    hook = _Webhook(url=f"http://127.0.0.1:{server.server_port}")

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
            hook.posts.append(_Post(self.path, dict(self.headers), json.loads(body)))
            self.send_response(hook.status)
            self.end_headers()
            self.wfile.write(b"ok")

        def log_message(self, *args: Any) -> None:
            pass

    server.RequestHandlerClass = Handler
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield hook
    finally:
        server.shutdown()
        server.server_close()


class _Inbox:
    def __init__(self) -> None:
        self.mails: list[tuple[str, list[str], Message]] = []

    # aiosmtpd calls a handler's handle_<SMTP verb> methods
    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        self.mails.append((envelope.mail_from, list(envelope.rcpt_tos), message_from_bytes(envelope.content)))
        return "250 Message accepted for delivery"


@pytest.fixture
def smtp_inbox() -> Iterator[tuple[int, _Inbox]]:
    """A real SMTP server (aiosmtpd) on loopback that keeps what it receives."""
    inbox = _Inbox()
    port = free_port()
    controller = Controller(inbox, hostname="127.0.0.1", port=port)
    controller.start()
    try:
        yield port, inbox
    finally:
        controller.stop()


def _set_conn(monkeypatch: pytest.MonkeyPatch, conn_id: str, value: dict[str, Any] | str) -> None:
    monkeypatch.setenv(f"AIRFLOW_CONN_{conn_id.upper()}", value if isinstance(value, str) else json.dumps(value))


def _mail_conn(port: int, to: str = "ml@retrain.example") -> dict[str, Any]:
    extra = {"from_email": "airflow@retrain.example", "to": to}
    return {"conn_type": "smtp", "host": "127.0.0.1", "port": port, "extra": extra}


def test_failure_posts_once_with_every_field_and_bearer(monkeypatch: pytest.MonkeyPatch, webhook: _Webhook) -> None:
    conn = {
        "conn_type": "http",
        "host": f"{webhook.url}/services/T0/B0/hook",
        "password": "webhook-token-123",
        "extra": {"headers": {"X-Team": "ml-platform"}},
    }
    _set_conn(monkeypatch, WEBHOOK_CONN_ID, conn)

    on_failure()(_context(exception=ValueError("series co2 has 3 rows; need 52")))

    assert len(webhook.posts) == 1
    post = webhook.posts[0]
    assert post.path == "/services/T0/B0/hook"
    assert post.headers["Authorization"] == "Bearer webhook-token-123"
    assert post.headers["X-Team"] == "ml-platform"
    body = post.body
    assert set(body) >= {"event", "title", "text", "dag_id", "run_id", "task_id", "series", "try_number", "log_url"}
    assert (body["event"], body["dag_id"], body["run_id"], body["task_id"]) == (
        "failure",
        "retrain_co2_weekly",
        RUN_ID,
        "publish",
    )
    assert (body["series"], body["map_index"], body["try_number"], body["log_url"]) == ("co2", 2, 3, LOG_URL)
    assert body["details"] == {"exception": "ValueError: series co2 has 3 rows; need 52"}
    assert "retrain_co2_weekly" in body["title"] and "co2" in body["title"]
    assert "ValueError: series co2 has 3 rows; need 52" in body["text"]
    assert LOG_URL in body["text"]


def test_promotion_carries_the_task_return_value(monkeypatch: pytest.MonkeyPatch, webhook: _Webhook) -> None:
    _set_conn(monkeypatch, WEBHOOK_CONN_ID, {"conn_type": "http", "host": webhook.url})
    ti = _TaskInstance(returned=PROMOTED)

    on_promotion()(_context(ti))

    assert ti.pulls == [{"task_ids": "publish", "map_indexes": 2}]
    [post] = webhook.posts
    assert "Authorization" not in post.headers
    assert post.body["event"] == "promotion"
    assert post.body["details"] == {"result": PROMOTED}
    assert "20261116T060000Z" in post.body["title"]
    assert "candidate MAE 0.41 beats champion 0.52" in post.body["text"]


def test_promotion_without_a_readable_return_value_still_notifies(
    monkeypatch: pytest.MonkeyPatch, webhook: _Webhook
) -> None:
    _set_conn(monkeypatch, WEBHOOK_CONN_ID, {"conn_type": "http", "host": webhook.url})

    class _NoXCom(_TaskInstance):
        def xcom_pull(self, **kwargs: Any) -> Any:
            raise RuntimeError("no supervisor to ask")

    on_promotion()(_context(_NoXCom(rendered_map_index=None), series="nile"))

    [post] = webhook.posts
    assert (post.body["series"], post.body["details"]) == ("nile", {})


@pytest.mark.parametrize(
    ("conn", "path"),
    [
        pytest.param("http://127.0.0.1:{port}/hooks/abc", "/hooks/abc", id="uri-with-path"),
        pytest.param({"conn_type": "http", "host": "127.0.0.1", "port": "{port}", "schema": "http"}, "/", id="fields"),
    ],
)
def test_webhook_url_from_connection_fields(
    monkeypatch: pytest.MonkeyPatch, webhook: _Webhook, conn: dict[str, Any] | str, path: str
) -> None:
    port = webhook.url.rsplit(":", 1)[1]
    value = conn.format(port=port) if isinstance(conn, str) else {**conn, "port": port}
    _set_conn(monkeypatch, WEBHOOK_CONN_ID, value)

    on_failure()(_context(exception="boom"))

    assert [post.path for post in webhook.posts] == [path]


def test_mail_names_dag_series_and_event(monkeypatch: pytest.MonkeyPatch, smtp_inbox: tuple[int, _Inbox]) -> None:
    port, inbox = smtp_inbox
    _set_conn(monkeypatch, SMTP_CONN_ID, _mail_conn(port, to="ml@retrain.example, oncall@retrain.example"))

    on_failure()(_context(exception=KeyError("target")))

    assert len(inbox.mails) == 1
    sender, recipients, mail = inbox.mails[0]
    assert sender == "airflow@retrain.example"
    assert recipients == ["ml@retrain.example", "oncall@retrain.example"]
    subject = mail["Subject"]
    assert "failure" in subject and "retrain_co2_weekly" in subject and "co2" in subject
    body = mail.get_payload(decode=True).decode()
    assert "KeyError: 'target'" in body and RUN_ID in body


def test_nothing_configured_sends_nothing_and_warns_nothing(
    webhook: _Webhook, smtp_inbox: tuple[int, _Inbox], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="include.retrain_airflow.notify")

    on_failure()(_context(exception="boom"))
    on_promotion()(_context(_TaskInstance(returned=PROMOTED)))

    assert webhook.posts == [] and smtp_inbox[1].mails == []
    assert [r for r in caplog.records if r.levelno >= logging.WARNING] == []
    assert any(WEBHOOK_CONN_ID in r.getMessage() for r in caplog.records if r.levelno == logging.DEBUG)


def test_endpoint_down_warns_and_the_mail_still_goes(
    monkeypatch: pytest.MonkeyPatch, smtp_inbox: tuple[int, _Inbox], caplog: pytest.LogCaptureFixture
) -> None:
    dead = f"http://127.0.0.1:{free_port()}/services/SECRET-PATH"
    _set_conn(monkeypatch, WEBHOOK_CONN_ID, {"conn_type": "http", "host": dead})
    port, inbox = smtp_inbox
    _set_conn(monkeypatch, SMTP_CONN_ID, _mail_conn(port))

    on_failure()(_context(exception="boom"))  # must not raise

    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and WEBHOOK_CONN_ID in warnings[0] and "ConnectionError" in warnings[0]
    assert "SECRET-PATH" not in warnings[0], "a webhook URL can hold its secret: keep it out of logs"
    assert len(inbox.mails) == 1


def test_error_status_warns(
    monkeypatch: pytest.MonkeyPatch, webhook: _Webhook, caplog: pytest.LogCaptureFixture
) -> None:
    webhook.status = 500
    _set_conn(monkeypatch, WEBHOOK_CONN_ID, {"conn_type": "http", "host": webhook.url})

    on_failure()(_context(exception="boom"))

    assert len(webhook.posts) == 1
    assert any("HTTP 500" in r.getMessage() for r in caplog.records if r.levelno == logging.WARNING)


def test_mail_server_down_warns(monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    _set_conn(monkeypatch, SMTP_CONN_ID, _mail_conn(free_port()))

    on_failure()(_context(exception="boom"))

    assert any(SMTP_CONN_ID in r.getMessage() for r in caplog.records if r.levelno == logging.WARNING)


def test_dag_level_failure_has_no_task_instance(monkeypatch: pytest.MonkeyPatch, webhook: _Webhook) -> None:
    """A DAG's on_failure_callback gets the dag and a reason, no ti."""
    _set_conn(monkeypatch, WEBHOOK_CONN_ID, {"conn_type": "http", "host": webhook.url})

    from airflow.sdk import DAG

    on_failure()({"dag": DAG("retrain_co2_weekly", schedule=None), "run_id": RUN_ID, "reason": "task_failure"})

    [post] = webhook.posts
    assert (post.body["dag_id"], post.body["task_id"], post.body["details"]) == (
        "retrain_co2_weekly",
        None,
        {"exception": "task_failure"},
    )


def test_unknown_event_is_a_parse_time_error() -> None:
    from include.retrain_airflow.notify import RetrainNotifier

    with pytest.raises(ValueError, match="failure"):
        RetrainNotifier("succes")  # type: ignore[arg-type]


PROBE_DAG = """
from __future__ import annotations

import pendulum
from airflow.sdk import dag, task

from include.retrain_airflow.notify import on_failure, on_promotion


@dag(schedule=None, start_date=pendulum.datetime(2024, 1, 1, tz="UTC"))
def notify_probe():
    @task(map_index_template="{{ series }}", on_success_callback=on_promotion())
    def publish(series: str, **context) -> dict:
        context["series"] = series
        return {"pipeline": "probe", "series": series, "version": "V1", "decision": {"reason": "beats champion"}}

    @task(map_index_template="{{ series }}", on_failure_callback=on_failure())
    def explode(series: str, **context) -> None:
        context["series"] = series
        raise ValueError(f"boom in {series}")

    publish.expand(series=["co2"])
    explode.expand(series=["nile"])


notify_probe()
"""


def test_callbacks_in_a_real_task_run(tmp_path: Path, webhook: _Webhook) -> None:
    """Airflow's task runner calls the notifiers; the connection lives only in the metadata database."""
    (tmp_path / "dags").mkdir()
    (tmp_path / "dags" / "notify_probe.py").write_text(textwrap.dedent(PROBE_DAG))
    env = {k: v for k, v in os.environ.items() if not k.startswith("AIRFLOW_CONN_")}
    env.update(
        AIRFLOW_HOME=str(tmp_path / "home"),
        AIRFLOW__CORE__DAGS_FOLDER=str(tmp_path / "dags"),
        AIRFLOW__CORE__LOAD_EXAMPLES="False",
        PYTHONPATH=str(BUNDLE),
    )
    airflow = str(Path(sys.executable).parent / "airflow")
    conn = json.dumps({"conn_type": "http", "host": f"{webhook.url}/from-db", "password": "db-token"})
    for args in (["db", "migrate"], ["connections", "add", WEBHOOK_CONN_ID, "--conn-json", conn]):
        subprocess.run([airflow, *args], env=env, check=True, capture_output=True, timeout=300)

    run = subprocess.run(
        [airflow, "dags", "test", "notify_probe"], env=env, capture_output=True, text=True, timeout=300
    )

    output = run.stdout + run.stderr
    by_event = {post.body["event"]: post for post in webhook.posts}
    assert len(webhook.posts) == 2 and set(by_event) == {"failure", "promotion"}, output[-4000:]
    assert {post.path for post in webhook.posts} == {"/from-db"}
    assert {post.headers["Authorization"] for post in webhook.posts} == {"Bearer db-token"}
    failure, promotion = by_event["failure"].body, by_event["promotion"].body
    assert (failure["task_id"], failure["series"], failure["map_index"]) == ("explode", "nile", 0)
    assert failure["details"] == {"exception": "ValueError: boom in nile"}
    assert "/tasks/explode/mapped/0" in failure["log_url"]
    assert (promotion["task_id"], promotion["series"]) == ("publish", "co2")
    assert promotion["details"]["result"]["decision"] == {"reason": "beats champion"}
    assert "notice not sent" not in output, "the unconfigured mail channel is skipped silently"
