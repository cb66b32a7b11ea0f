"""The Celery broker of a deployment with RETRAIN_EXECUTOR=celery: found, else started.

Redis by default (``RETRAIN_BROKER_URL=redis://127.0.0.1:6379/0``); RabbitMQ works too
(``amqp://...``), but is only looked for, never started. A broker that already answers is
used as it is; a Redis on loopback that does not is started by the local stack (installed
first when ``redis-server`` is missing and we are root), with its data in the state
directory, append-only, so queued tasks survive its restart.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
from collections.abc import Callable
from pathlib import Path
from urllib.parse import urlsplit


class BrokerError(RuntimeError):
    """No broker, and none we may start; the message says what to do."""


def address(url: str) -> tuple[str, str, int]:
    """(scheme, host, port) of a broker URL."""
    parts = urlsplit(url)
    default = {"redis": 6379, "rediss": 6379, "amqp": 5672, "pyamqp": 5672}.get(parts.scheme)
    if default is None:
        raise BrokerError(f"broker URL {parts.scheme}://...: use redis://host:port/db or amqp://user:pass@host:port//")
    return parts.scheme, parts.hostname or "127.0.0.1", parts.port or default


def answers(url: str, timeout: float = 2.0) -> bool:
    """The broker is there: Redis answers PING (with AUTH when the URL has a password), AMQP accepts."""
    scheme, host, port = address(url)
    try:
        with socket.create_connection((host, port), timeout=timeout) as sock:
            if not scheme.startswith("redis"):
                return True
            password = urlsplit(url).password
            if password:
                sock.sendall(f"AUTH {password}\r\n".encode())
                sock.recv(64)
            sock.sendall(b"PING\r\n")
            return sock.recv(64).startswith(b"+PONG")
    except OSError:
        return False


def redis_command(port: int, data_dir: Path) -> str:
    """redis-server on loopback, persistent (append-only file) in ``data_dir``."""
    return (
        f"{shutil.which('redis-server') or 'redis-server'} --bind 127.0.0.1 --port {port} --dir {data_dir} "
        "--appendonly yes --save '' --protected-mode yes"
    )


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
