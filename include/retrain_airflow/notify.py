"""Failure and promotion notices, sent through Airflow's notifier mechanism.

``on_failure()`` and ``on_promotion()`` return notifiers for a task's (or DAG's)
``on_failure_callback`` / ``on_success_callback``. Each notice goes to every channel
whose Airflow connection exists, and to none when none is configured:

- ``retrain_webhook`` (type ``http``): a JSON POST with a Slack-compatible ``text`` key.
  ``host`` is a full URL (``https://hooks.slack.com/services/...``), or a bare host with
  ``port`` and ``schema``; the password, if any, is sent as ``Authorization: Bearer``;
  extra ``{"headers": {...}}`` adds headers.
- ``retrain_smtp`` (type ``smtp``): a plain-text mail. ``host``/``port``, optional
  ``login``/``password``; extra ``{"to": "a@b,c@d", "from_email": "...", "starttls": true}``
  (``starttls`` is off unless set; turn it on before giving a remote relay a password).

A notice is a courtesy, never a reason to fail or retry a task: a missing connection
is skipped with a debug line, and any error while sending is logged as a warning and
swallowed. (Task callbacks run in the task process after the task's state has been
reported, so they could not change it anyway; swallowing keeps the log readable.)

Connections are read with ``airflow.sdk.Connection.get``: inside a task it asks
``AIRFLOW_CONN_*`` environment variables, then the api-server (Execution API), which
reads the metadata database or the configured secrets backend; outside a task it reads
environment variables and configured secrets backends only. A missing one raises
``AirflowNotFoundException``.

Mail goes through ``smtplib`` rather than the SMTP provider's ``SmtpHook``, although the
provider is always installed (``apache-airflow-core`` depends on it). The hook fetches
the connection itself (we want one lookup that can say "not configured"), defaults to
implicit TLS *and* STARTTLS unless ``disable_ssl``/``disable_tls`` are set, and resends
up to five times with a 30 s timeout each: a dead mail relay would hold the callback
for minutes. A dozen lines of the standard library do what a notice needs, with the
same 10 s timeout as the webhook.

This module is imported at DAG-parse time: it imports only ``airflow.sdk`` at the top;
``requests`` and ``smtplib`` are imported when a notice is sent.
"""

from __future__ import annotations

import json
import logging
from typing import TYPE_CHECKING, Any, Literal

from airflow.sdk import BaseNotifier

if TYPE_CHECKING:
    from airflow.sdk import Connection, Context

WEBHOOK_CONN_ID = "retrain_webhook"
SMTP_CONN_ID = "retrain_smtp"
TIMEOUT_SECONDS = 10

Event = Literal["failure", "promotion"]
EVENTS: tuple[Event, ...] = ("failure", "promotion")

logger = logging.getLogger(__name__)


class RetrainNotifier(BaseNotifier):
    """Send one notice about a retraining task to every configured channel."""

    def __init__(
        self,
        event: Event,
        webhook_conn_id: str = WEBHOOK_CONN_ID,
        smtp_conn_id: str = SMTP_CONN_ID,
    ) -> None:
        if event not in EVENTS:
            raise ValueError(f"RetrainNotifier event must be one of {EVENTS}, not {event!r}")
        super().__init__()
        self.event = event
        self.webhook_conn_id = webhook_conn_id
        self.smtp_conn_id = smtp_conn_id

    def notify(self, context: Context) -> None:
        try:
            notice = build_notice(self.event, context)
        except Exception:
            logger.warning("Cannot build the %s notice; nothing sent", self.event, exc_info=True)
            return
        channels = ((self.webhook_conn_id, post_webhook), (self.smtp_conn_id, send_mail))
        for conn_id, send in channels:
            try:
                conn = _connection(conn_id)
                if conn is not None:
                    send(conn, notice)
            except Exception as error:
                logger.warning("%s notice not sent through connection %r: %s", self.event, conn_id, _reason(error))


def on_failure() -> RetrainNotifier:
    """A notifier for ``on_failure_callback``: the task failed for good (retries used up)."""
    return RetrainNotifier("failure")


def on_promotion() -> RetrainNotifier:
    """A notifier for the ``on_success_callback`` of the task that promotes a model."""
    return RetrainNotifier("promotion")


def build_notice(event: Event, context: Context | dict[str, Any]) -> dict[str, Any]:
    """The JSON body of a notice; ``title`` and ``text`` are what a person reads.

    Works with a task's context and with a DAG-level callback's (no ``ti`` there).
    """
    ti = context.get("ti") or context.get("task_instance")
    result = _return_value(ti) if event == "promotion" else None
    facts = _facts(context, ti, result)
    where = " / ".join(str(part) for part in (facts["dag_id"], facts["series"] or facts["task_id"]) if part)
    if event == "failure":
        headline, lines, details = _failure(context, facts)
    else:
        headline, lines, details = _promotion(result)
    title = f"[{event}] {where}: {headline}"
    run = [f"Run: {facts['run_id']}"] if facts["run_id"] else []
    log = [f"Log: {facts['log_url']}"] if facts["log_url"] else []
    return {"event": event, "title": title, "text": "\n".join([title, *run, *lines, *log]), **facts, "details": details}


def _facts(context: Context | dict[str, Any], ti: Any, result: Any) -> dict[str, Any]:
    """Which run, task and series the notice is about; None for what a context lacks."""
    map_index = getattr(ti, "map_index", None)
    series = (
        getattr(ti, "rendered_map_index", None)  # the factory renders the series name there
        or context.get("series")
        or (result.get("series") if isinstance(result, dict) else None)
    )
    return {
        "dag_id": getattr(ti, "dag_id", None) or getattr(context.get("dag"), "dag_id", None),
        "run_id": context.get("run_id") or getattr(ti, "run_id", None),
        "task_id": getattr(ti, "task_id", None),
        "series": series,
        "map_index": map_index if isinstance(map_index, int) and map_index >= 0 else None,
        "try_number": getattr(ti, "try_number", None),
        "log_url": _log_url(ti),
    }


def _failure(context: Context | dict[str, Any], facts: dict[str, Any]) -> tuple[str, list[str], dict[str, Any]]:
    error = context.get("exception") or context.get("reason")  # a DAG-level callback has a reason
    headline = f"task {facts['task_id'] or '(dag)'} failed"
    if facts["try_number"]:
        headline += f" on try {facts['try_number']}"
    if not error:
        return headline, [], {}
    text = _error_text(error)
    return headline, [f"Error: {text}"], {"exception": text}


def _promotion(result: Any) -> tuple[str, list[str], dict[str, Any]]:
    if not isinstance(result, dict):
        return "new model promoted", [], {} if result is None else {"result": result}
    version, decision = result.get("version"), result.get("decision")
    reason = decision.get("reason") if isinstance(decision, dict) else decision
    headline = f"version {version} promoted" if version else "new model promoted"
    return headline, [f"Reason: {reason}"] if reason else [], {"result": result}


def post_webhook(conn: Connection, notice: dict[str, Any]) -> None:
    """POST the notice as JSON; a non-2xx answer is an error."""
    import requests

    headers = {str(k): str(v) for k, v in (conn.extra_dejson.get("headers") or {}).items()}
    if conn.password:
        headers["Authorization"] = f"Bearer {conn.password}"
    response = requests.post(webhook_url(conn), json=notice, headers=headers, timeout=TIMEOUT_SECONDS)
    response.raise_for_status()
    logger.info("%s notice posted to connection %r", notice["event"], conn.conn_id)


def webhook_url(conn: Connection) -> str:
    """The URL to POST to, from the forms a connection takes.

    ``host`` with a scheme is the whole URL. Otherwise ``schema`` is the protocol when it
    is ``http``/``https`` (the HTTP provider's convention) and the path when it is not (a
    URI such as ``AIRFLOW_CONN_X=http://host:8080/hooks/abc`` puts ``hooks/abc`` there).
    """
    host = conn.host or ""
    if "://" in host:
        return host
    if not host:
        raise ValueError("the connection has no host")
    schema = conn.schema or ""
    protocol = schema if schema in ("http", "https") else "https" if conn.conn_type == "https" else "http"
    path = "" if schema in ("http", "https") else schema.lstrip("/")
    port = f":{conn.port}" if conn.port else ""
    return f"{protocol}://{host}{port}/{path}"


def send_mail(conn: Connection, notice: dict[str, Any]) -> None:
    """Send the notice as a plain-text mail to the connection's ``to`` addresses."""
    import smtplib
    import ssl
    from email.message import EmailMessage

    extra = conn.extra_dejson
    recipients = _addresses(extra.get("to"))
    sender = extra.get("from_email") or conn.login
    if not recipients or not sender:
        raise ValueError("the connection's extra needs 'to' and 'from_email' (or a login to send from)")
    message = EmailMessage()
    message["Subject"] = notice["title"]
    message["From"] = sender
    message["To"] = ", ".join(recipients)
    message.set_content(f"{notice['text']}\n\n{json.dumps(notice, indent=2, default=str)}\n")
    with smtplib.SMTP(conn.host or "localhost", conn.port or 25, timeout=TIMEOUT_SECONDS) as client:
        if _truthy(extra.get("starttls", False)):
            client.starttls(context=ssl.create_default_context())
        if conn.login and conn.password:
            client.login(conn.login, conn.password)
        client.send_message(message, from_addr=sender, to_addrs=recipients)
    logger.info("%s notice mailed to %d recipient(s) via connection %r", notice["event"], len(recipients), conn.conn_id)


def _connection(conn_id: str) -> Connection | None:
    """The connection, or None when it is not configured (that channel is off)."""
    from airflow.sdk import Connection
    from airflow.sdk.exceptions import AirflowNotFoundException

    try:
        return Connection.get(conn_id)
    except AirflowNotFoundException:
        logger.debug("No connection %r: notices through it are off", conn_id)
        return None


def _return_value(ti: Any) -> Any:
    """What the task returned (its XCom), or None when it cannot be read."""
    if ti is None:
        return None
    try:
        return ti.xcom_pull(task_ids=ti.task_id, map_indexes=ti.map_index)
    except Exception:
        logger.debug("Cannot read the return value of %s", getattr(ti, "task_id", ti), exc_info=True)
        return None


def _log_url(ti: Any) -> str | None:
    try:
        return getattr(ti, "log_url", None) if ti is not None else None
    except Exception:  # the property reads the configuration
        return None


def _error_text(error: object) -> str:
    return f"{type(error).__name__}: {error}" if isinstance(error, BaseException) else str(error)


def _reason(error: Exception) -> str:
    """A warning's reason; a webhook URL (Slack's holds its secret) is left out of it."""
    try:
        import requests
    except ImportError:  # pragma: no cover - requests is a pinned requirement
        return f"{type(error).__name__}: {error}"
    if isinstance(error, requests.HTTPError) and error.response is not None:
        return f"HTTP {error.response.status_code} from the endpoint"
    if isinstance(error, requests.RequestException):
        return f"{type(error).__name__} (endpoint unreachable or too slow)"
    return f"{type(error).__name__}: {error}"


def _addresses(value: object) -> list[str]:
    if isinstance(value, str):
        value = value.split(",")
    return [str(address).strip() for address in value or () if str(address).strip()]


def _truthy(value: object) -> bool:
    if isinstance(value, str):
        return value.strip().lower() in ("1", "true", "yes", "on")
    return bool(value)
