"""The Celery broker of a deployment with RETRAIN_EXECUTOR=celery: found, else started.

Redis by default (``RETRAIN_BROKER_URL=redis://127.0.0.1:6379/0``); RabbitMQ works too
(``amqp://...``), but is only looked for, never started. A broker that already answers is
used as it is; a Redis on loopback that does not is ours: ``airflow-broker.service`` runs
``redis-server`` with the ``redis.conf`` rendered here (installed first when it is missing
and we are root), with its data in the state directory, append-only, so queued tasks
survive its restart. On a VM it has a password and may also listen on the private address
that worker VMs reach (``RETRAIN_PRIVATE_HOST``).

    python -m deploy.broker wait   # the worker unit's ExecStartPre: is the broker there?
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit


class BrokerError(RuntimeError):
    """No broker, and none we may start; the message says what to do."""


def address(url: str) -> tuple[str, str, int]:
    """(scheme, host, port) of a broker URL."""
    parts = urlsplit(url)
    default = {"redis": 6379, "rediss": 6379, "amqp": 5672, "pyamqp": 5672}.get(parts.scheme)
    if default is None:
        raise BrokerError(f"broker URL {parts.scheme}://...: use redis://host:port/db or amqp://user:pass@host:port//")
    return parts.scheme, parts.hostname or "127.0.0.1", parts.port or default


def redacted(url: str) -> str:
    """The URL without its password, for messages and logs."""
    parts = urlsplit(url)
    if not parts.password:
        return url
    netloc = parts.netloc.replace(f":{parts.password}@", ":***@")
    return urlunsplit(parts._replace(netloc=netloc))


def probe(url: str, timeout: float = 2.0) -> str:
    """ "" when the broker is there (Redis answers PING, with AUTH when the URL has a password;
    AMQP accepts the connection), else what went wrong."""
    scheme, host, port = address(url)
    try:
        with socket.create_connection((host, port), timeout=timeout) as sock:
            if not scheme.startswith("redis"):
                return ""
            password = urlsplit(url).password
            if password:
                sock.sendall(f"AUTH {password}\r\n".encode())
                reply = sock.recv(256)
                if not reply.startswith(b"+OK"):
                    return f"it refused the password ({reply.decode(errors='replace').strip()})"
            sock.sendall(b"PING\r\n")
            reply = sock.recv(256)
            return "" if reply.startswith(b"+PONG") else f"it answered {reply.decode(errors='replace').strip()!r}"
    except OSError as exc:
        return exc.strerror or str(exc)


def answers(url: str, timeout: float = 2.0) -> bool:
    return probe(url, timeout) == ""


def ours(url: str) -> bool:
    """A Redis on loopback: the deployment starts it (airflow-broker.service) when it does not
    answer. Any other broker (another host, RabbitMQ) is the operator's, only checked."""
    scheme, host, _ = address(url)
    return scheme.startswith("redis") and host in ("127.0.0.1", "localhost")


def with_password(url: str, password: str) -> str:
    """``url`` carrying ``password``, unless it carries one already."""
    return url if urlsplit(url).password else url.replace("://", f"://:{password}@", 1)


def bind_addresses(url: str, private_host: str = "") -> list[str]:
    """Where our Redis listens: the URL's loopback host and the private address worker VMs reach."""
    return list(dict.fromkeys(filter(None, [address(url)[1], private_host])))


def config_text(url: str, data_dir: Path, private_host: str = "") -> str:
    """redis.conf of our broker: ``bind_addresses``, the URL's port and password, append-only in
    ``data_dir``. The password lives here and in the env file, never on a command line (``ps``
    shows those to every user)."""
    _, _, port = address(url)
    password = urlsplit(url).password
    lines = [
        "# Rendered by deploy/broker.py: the Celery broker of the retraining bundle.",
        f"bind {' '.join(bind_addresses(url, private_host))}",
        f"port {port}",
        "protected-mode yes",
        f"dir {data_dir}",
        # Every write reaches the append-only file within a second: a restart keeps the queue.
        "appendonly yes",
        "appendfsync everysec",
        'save ""',
        "daemonize no",
        'logfile ""',
        *([f"requirepass {password}"] if password else []),
    ]
    return "\n".join(lines) + "\n"


def install_redis(say: Callable[[str], None]) -> None:
    if shutil.which("redis-server"):
        return
    if not shutil.which("apt-get"):
        raise BrokerError("redis-server is missing and apt-get is not here: install Redis, or set RETRAIN_BROKER_URL")
    say("installing redis-server (apt-get)")
    for step in (["apt-get", "update", "-q"], ["apt-get", "install", "-y", "-q", "redis-server"]):
        done = subprocess.run(step, capture_output=True, text=True)
        if done.returncode:
            raise BrokerError(f"{' '.join(step)} failed: {done.stderr.strip()[-500:]}")


def wait() -> int:
    """The worker unit's ExecStartPre: fail at once, saying where to look, while the broker is
    down; systemd retries the start every 10 s (Restart=always), so the worker comes up with it."""
    url = os.environ.get("AIRFLOW__CELERY__BROKER_URL", "")
    if not url:
        print("AIRFLOW__CELERY__BROKER_URL is not set: the environment file lacks it", file=sys.stderr)
        return 1
    problem = probe(url)
    if problem:
        _, host, port = address(url)
        print(
            f"the Celery broker {redacted(url)} does not answer: {problem}. Start it (airflow-broker.service "
            f"on the main VM), and let this machine reach {host}:{port}/tcp (docs/deploy.md, firewall); "
            "the unit retries every 10 s",
            file=sys.stderr,
        )
        return 1
    print(f"the Celery broker {redacted(url)} answers")
    return 0


if __name__ == "__main__":
    if sys.argv[1:] != ["wait"]:
        sys.exit("usage: python -m deploy.broker wait")
    sys.exit(wait())
