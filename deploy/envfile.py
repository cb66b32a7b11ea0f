"""The environment file every process of a deployment reads (systemd's EnvironmentFile).

It holds the paths, the settings and the secrets. It is made once; later runs keep
every value already in it (a secret is never rotated behind the operator's back) and
only add keys that are new.
"""

from __future__ import annotations

import base64
import json
import os
import secrets
import socket
from collections.abc import Collection
from pathlib import Path

from deploy.profile import Profile

HEADER = "# Generated once by deploy/; holds secrets: keep it private (0600 or 0640 root:airflow), never commit it.\n"
SECRET_KEYS = (
    "RETRAIN_PG_PASSWORD",
    "AIRFLOW__API_AUTH__JWT_SECRET",
    "AIRFLOW__API__SECRET_KEY",
    "AIRFLOW__CORE__FERNET_KEY",
    "RETRAIN_SIGNING_KEY",
    "RETRAIN_BROKER_PASSWORD",
)


def read_env_file(path: Path) -> dict[str, str]:
    """KEY=VALUE lines as systemd reads them (outer quotes removed, comments skipped)."""
    values = {}
    for line in path.read_text().splitlines():
        if not line.strip() or line.lstrip().startswith("#") or "=" not in line:
            continue
        key, value = line.split("=", 1)
        value = value.strip()
        if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
            value = value[1:-1]
        values[key.strip()] = value
    return values


def write_private(path: Path, text: str, mode: int = 0o600, group: int | None = None) -> bool:
    """Write ``text`` with ``mode`` from the first byte; return False when nothing changed."""
    if path.exists() and path.read_text() == text and (path.stat().st_mode & 0o777) == mode:
        return False
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(text)
    if group is not None:
        os.chown(tmp, 0, group)
    os.chmod(tmp, mode)
    os.replace(tmp, path)
    return True


def new_secrets() -> dict[str, str]:
    return {
        "RETRAIN_PG_PASSWORD": secrets.token_urlsafe(24),
        "AIRFLOW__API_AUTH__JWT_SECRET": secrets.token_urlsafe(48),
        "AIRFLOW__API__SECRET_KEY": secrets.token_urlsafe(48),
        "AIRFLOW__CORE__FERNET_KEY": base64.urlsafe_b64encode(secrets.token_bytes(32)).decode(),
        "RETRAIN_SIGNING_KEY": secrets.token_urlsafe(32),  # HMAC of every published model
        # The password of the Redis broker make deploy runs with RETRAIN_EXECUTOR=celery.
        "RETRAIN_BROKER_PASSWORD": secrets.token_urlsafe(32),
    }


def settings(profile: Profile, overrides: dict[str, str]) -> dict[str, str]:
    """Non-secret settings; RETRAIN_* values in ``overrides`` (the caller's environment) win."""
    cores = os.cpu_count() or 2
    values = {
        "AIRFLOW_HOME": str(profile.state_dir / "airflow"),
        "AIRFLOW_CONFIG": str(profile.config_file),
        "PYTHONPATH": str(profile.bundle_dir),
        "RETRAIN_BUNDLE_DIR": str(profile.bundle_dir),
        "RETRAIN_STATE_DIR": str(profile.state_dir),
        # matplotlib's font cache (the Models page's plots): the services' home is not writable.
        "MPLCONFIGDIR": str(profile.state_dir / "matplotlib"),
        "RETRAIN_DAGS_DIR": str(profile.bundle_dir / "dags"),
        "RETRAIN_PIPELINES_DIR": str(profile.bundle_dir / "include" / "pipelines"),
        "RETRAIN_API_HOST": "127.0.0.1",
        "RETRAIN_API_PORT": "8080",
        "RETRAIN_LOG_SERVER_PORT": "8793",
        "RETRAIN_SCHEDULER_HEALTH_PORT": "8974",
        "RETRAIN_TRIGGERER_LOG_PORT": "8794",
        "RETRAIN_PG_HOST": "127.0.0.1",
        "RETRAIN_PG_PORT": "5432",
        "RETRAIN_PG_DB": "airflow",
        "RETRAIN_PG_USER": "airflow",
        "RETRAIN_PARALLELISM": str(max(4, 2 * cores)),
        # local: the LocalExecutor (one VM); celery: the CeleryExecutor, workers on any machine
        # that reaches the broker, the api-server and the model store (docs/deploy.md).
        "RETRAIN_EXECUTOR": "local",
        "RETRAIN_BROKER_URL": "redis://127.0.0.1:6379/0",
        "RETRAIN_WORKER_CONCURRENCY": str(cores),  # tasks at once per Celery worker
        "RETRAIN_WORKER_QUEUES": "default",  # the Celery queues this machine's worker consumes
        "RETRAIN_WORKER_NAME": f"worker@{socket.gethostname()}",  # its Celery node name
        # Celery with worker VMs: the main VM's address on the private network they share, and
        # that network (CIDR). Empty: the broker, PostgreSQL and the api-server stay on loopback.
        "RETRAIN_PRIVATE_HOST": "",
        "RETRAIN_WORKER_NETWORK": "",
        "RETRAIN_MODEL_STORE": f"file://{profile.state_dir / 'models'}",
        "RETRAIN_REMOTE_LOGS": "",  # s3://<bucket>/<prefix>: task logs there too (Celery workers elsewhere)
        # One BLAS/OpenMP thread per process: tasks run in parallel already, and the
        # preloading forkserver must not start thread pools that its forks inherit.
        "OPENBLAS_NUM_THREADS": "1",
        "OMP_NUM_THREADS": "1",
        "MKL_NUM_THREADS": "1",
    }
    return {k: overrides.get(k, v) for k, v in values.items()}


def database_url(values: dict[str, str]) -> str:
    return (
        f"postgresql+psycopg2://{values['RETRAIN_PG_USER']}:{values['RETRAIN_PG_PASSWORD']}@"
        f"{values['RETRAIN_PG_HOST']}:{values['RETRAIN_PG_PORT']}/{values['RETRAIN_PG_DB']}"
    )


def history_connection(values: dict[str, str]) -> str:
    """The PostgreSQL connection for the decision history and batch forecasts (same server and role)."""
    return (
        f"postgresql://{values['RETRAIN_PG_USER']}:{values['RETRAIN_PG_PASSWORD']}@"
        f"{values['RETRAIN_PG_HOST']}:{values['RETRAIN_PG_PORT']}/{values['RETRAIN_PG_DB']}"
    )


def aws_connection(endpoint: str) -> str:
    """An ``aws`` connection to an S3-compatible endpoint, as AIRFLOW_CONN_* JSON."""
    extra = {
        "endpoint_url": endpoint,
        "region_name": "us-east-1",
        "config_kwargs": {"retries": {"max_attempts": 3, "mode": "standard"}, "connect_timeout": 5},
    }
    conn = {"conn_type": "aws", "login": "local-access-key", "password": "local-secret-key", "extra": extra}
    return json.dumps(conn, separators=(",", ":"))


# Settings a caller may switch on an existing file (make run EXECUTOR=celery): no secret among them.
SWITCHES = (
    "RETRAIN_EXECUTOR",
    "RETRAIN_WORKER_QUEUES",
    "RETRAIN_LOCAL_WORKERS",
    "RETRAIN_PRIVATE_HOST",
    "RETRAIN_WORKER_NETWORK",
    "RETRAIN_API_HOST",
)


def merged(existing: dict[str, str], fresh: dict[str, str], switched: dict[str, str] | None = None) -> dict[str, str]:
    """Existing values win: a re-run adds new keys and never replaces a value in place, except
    the ``switched`` settings the caller names explicitly."""
    return {**fresh, **existing, **(switched or {})}


def render(values: dict[str, str]) -> str:
    def line(key: str, value: str) -> str:
        quoted = any(c in value for c in ' "{}#') and not (value.startswith("'") and value.endswith("'"))
        return f"{key}='{value}'\n" if quoted else f"{key}={value}\n"

    return HEADER + "".join(line(k, v) for k, v in values.items())


def ensure(
    profile: Profile,
    overrides: dict[str, str],
    mode: int = 0o600,
    group: int | None = None,
    switches: Collection[str] = SWITCHES,
) -> tuple[dict[str, str], bool]:
    """Create or complete the environment file; return its values and whether it changed.

    ``overrides`` (the caller's RETRAIN_* settings and profile-specific extras) shape a new
    file; in an existing file every value stays as it is, but for the ``switches`` among them.
    """
    existing = read_env_file(profile.env_file) if profile.env_file.exists() else {}
    switched = {k: v for k, v in overrides.items() if k in switches}
    values = merged(existing, {**settings(profile, overrides), **new_secrets(), **overrides}, switched)
    values.setdefault("AIRFLOW__DATABASE__SQL_ALCHEMY_CONN", database_url(values))
    values.setdefault("AIRFLOW_CONN_RETRAIN_DB", history_connection(values))
    # Celery's broker (its URL may carry a password) and result backend (the metadata database).
    values.setdefault("AIRFLOW__CELERY__BROKER_URL", values["RETRAIN_BROKER_URL"])
    values.setdefault("AIRFLOW__CELERY__RESULT_BACKEND", "db+" + database_url(values))
    changed = write_private(profile.env_file, render(values), mode=mode, group=group)
    return read_env_file(profile.env_file), changed


def update(profile: Profile, changes: dict[str, str], mode: int, group: int | None = None) -> bool:
    """Set ``changes`` in the existing file (a value the deployment derives, such as the broker
    URL with the broker's password); True if the file changed."""
    values = {**read_env_file(profile.env_file), **changes}
    return write_private(profile.env_file, render(values), mode=mode, group=group)
