"""Run the bundle's Airflow stack on this machine: PostgreSQL, an S3 endpoint, Airflow.

``make run``, ``make up``, ``make down`` and the end-to-end tests all go through this file,
so what runs locally is what the tests exercise. Standard library only: it prepares
what everything else needs. Each step says what it found or did.

    python deploy/stack.py up        # env file, config, PostgreSQL, S3, migrate, processes
    python deploy/stack.py down      # stop the processes this state dir started
    python deploy/stack.py status    # health of every component

The state directory (``RETRAIN_STACK_DIR``, default ``.stack/``) holds the environment
file (secrets, 0600), the rendered airflow.cfg, logs and pid files.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import json
import os
import secrets
import shutil
import signal
import socket
import string
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

BUNDLE = Path(__file__).resolve().parents[1]
VENV_BIN = Path(sys.executable).parent
PROCESSES = ("api-server", "scheduler", "dag-processor")
REQUIRED_HEALTH = ("metadatabase", "scheduler", "dag_processor")


def say(message: str) -> None:
    print(f"[stack] {message}", flush=True)


class StackError(RuntimeError):
    """A step cannot go on; the message says what to do."""


# -- environment file ------------------------------------------------------------------


def state_dir() -> Path:
    return Path(os.environ.get("RETRAIN_STACK_DIR", BUNDLE / ".stack")).resolve()


def defaults() -> dict[str, str]:
    """Settings that may come from the caller's environment, else these local defaults."""
    cores = os.cpu_count() or 2
    values = {
        "RETRAIN_API_HOST": "127.0.0.1",
        "RETRAIN_API_PORT": "8080",
        "RETRAIN_LOG_SERVER_PORT": "8793",
        "RETRAIN_SCHEDULER_HEALTH_PORT": "8974",
        "RETRAIN_S3_PORT": "5055",
        "RETRAIN_BUCKET": "retrain-models",
        "RETRAIN_PG_HOST": "127.0.0.1",
        "RETRAIN_PG_PORT": "5432",
        "RETRAIN_PG_DB": "airflow_retrain",
        "RETRAIN_PG_USER": "retrain",
        "RETRAIN_PARALLELISM": str(max(4, 2 * cores)),
        "RETRAIN_DAGS_DIR": str(BUNDLE / "dags"),
        "RETRAIN_PIPELINES_DIR": str(BUNDLE / "include" / "pipelines"),
    }
    return {key: os.environ.get(key, value) for key, value in values.items()}


def read_env_file(path: Path) -> dict[str, str]:
    """KEY=VALUE lines as systemd's EnvironmentFile reads them (outer quotes removed)."""
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


def write_private(path: Path, text: str) -> None:
    """Create the file with mode 0600 from the start: a secret is never world-readable."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(text)
    os.chmod(path, 0o600)


def ensure_env(state: Path) -> dict[str, str]:
    """Create the environment file once; later calls keep its secrets as they are."""
    path = state / "airflow.env"
    if path.exists():
        say(f"environment file {path} exists: keeping its secrets")
        return read_env_file(path)
    settings = defaults()
    password = secrets.token_urlsafe(24)
    s3 = f"http://127.0.0.1:{settings['RETRAIN_S3_PORT']}"
    aws = {
        "conn_type": "aws",
        "login": "local-access-key",
        "password": "local-secret-key",
        "extra": {
            "endpoint_url": s3,
            "region_name": "us-east-1",
            "config_kwargs": {"retries": {"max_attempts": 3, "mode": "standard"}, "connect_timeout": 5},
        },
    }
    env = {
        "AIRFLOW_HOME": str(state / "airflow"),
        "AIRFLOW_CONFIG": str(state / "airflow" / "airflow.cfg"),
        "PYTHONPATH": str(BUNDLE),
        "RETRAIN_BUNDLE_DIR": str(BUNDLE),
        "RETRAIN_STATE_DIR": str(state),
        **settings,
        "RETRAIN_PG_PASSWORD": password,
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": (
            f"postgresql+psycopg2://{settings['RETRAIN_PG_USER']}:{password}@"
            f"{settings['RETRAIN_PG_HOST']}:{settings['RETRAIN_PG_PORT']}/{settings['RETRAIN_PG_DB']}"
        ),
        "AIRFLOW__API_AUTH__JWT_SECRET": secrets.token_urlsafe(48),
        "AIRFLOW__API__SECRET_KEY": secrets.token_urlsafe(48),
        "AIRFLOW__CORE__FERNET_KEY": base64.urlsafe_b64encode(secrets.token_bytes(32)).decode(),
        "RETRAIN_MODEL_STORE": f"s3://{settings['RETRAIN_BUCKET']}",
        "AIRFLOW_CONN_AWS_DEFAULT": "'" + json.dumps(aws, separators=(",", ":")) + "'",
    }
    header = "# Generated once by deploy/stack.py; holds secrets: keep it 0600, never commit it.\n"
    write_private(path, header + "".join(f"{k}={v}\n" for k, v in env.items()))
    admin = {"admin": secrets.token_urlsafe(12)}
    write_private(state / "admin-password.json", json.dumps(admin) + "\n")
    say(f"created environment file {path} (mode 0600) with new secrets and an admin password")
    return read_env_file(path)


def render_config(env: dict[str, str]) -> Path:
    """airflow.cfg from the template; a ${NAME} with no value stops rendering."""
    template = string.Template((BUNDLE / "airflow.cfg.template").read_text())
    try:
        text = template.substitute(env)
    except KeyError as exc:
        raise StackError(f"airflow.cfg.template needs {exc.args[0]}, which the environment file lacks") from None
    target = Path(env["AIRFLOW_CONFIG"])
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text("# Rendered from airflow.cfg.template: edit the template, not this file.\n" + text)
    say(f"rendered {target}")
    return target


# -- PostgreSQL --------------------------------------------------------------------------


def port_open(host: str, port: int, timeout: float = 1.0) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def start_postgres(host: str, port: int) -> None:
    """Start a local cluster, or install PostgreSQL from the distribution, then start it."""
    if not shutil.which("pg_ctlcluster"):
        if os.geteuid() != 0 or not shutil.which("apt-get"):
            raise StackError(
                f"no PostgreSQL answers on {host}:{port} and none is installed; install one "
                "(sudo apt-get install postgresql) or point RETRAIN_PG_HOST/RETRAIN_PG_PORT at one"
            )
        say("PostgreSQL is not installed: installing it with apt-get (Debian's postgresql package)")
        subprocess.run(["apt-get", "update", "-q"], check=True, stdout=subprocess.DEVNULL)
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        subprocess.run(["apt-get", "install", "-y", "-q", "postgresql"], check=True, env=env, stdout=subprocess.DEVNULL)
    clusters = subprocess.run(["pg_lsclusters", "--no-header"], capture_output=True, text=True).stdout.split()
    if len(clusters) < 2:
        raise StackError("PostgreSQL is installed but has no cluster; create one with pg_createcluster")
    version, name = clusters[0], clusters[1]
    say(f"starting PostgreSQL cluster {version}/{name}")
    command = ["pg_ctlcluster", "--skip-systemctl-redirect", version, name, "start"]
    subprocess.run(command, check=False, capture_output=True)
    for _ in range(30):
        if port_open(host, port):
            return
        time.sleep(1)
    raise StackError(f"PostgreSQL cluster {version}/{name} started but {host}:{port} does not answer")


def admin_psql(host: str, port: str) -> list[str]:
    """A psql command with rights to create roles: trust over TCP, else the postgres OS user."""
    tcp = ["psql", "-h", host, "-p", port, "-U", "postgres", "-d", "postgres"]
    probe = subprocess.run([*tcp, "-Atqc", "select 1"], capture_output=True, text=True)
    if probe.returncode == 0:
        return tcp
    if os.geteuid() == 0 and shutil.which("runuser"):
        return ["runuser", "-u", "postgres", "--", "psql", "-p", port, "-d", "postgres"]
    raise StackError(
        f"cannot administer PostgreSQL on {host}:{port} ({probe.stderr.strip()}); create role and "
        "database yourself and set RETRAIN_PG_* in the environment file"
    )


def sql_literal(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


def ensure_database(env: dict[str, str], reset: bool = False) -> None:
    host, port = env["RETRAIN_PG_HOST"], env["RETRAIN_PG_PORT"]
    if port_open(host, int(port)):
        say(f"PostgreSQL answers on {host}:{port}: using it")
    else:
        start_postgres(host, int(port))
    if not shutil.which("psql"):
        raise StackError("psql is missing (Debian package postgresql-client)")
    psql = admin_psql(host, port)
    user, db, password = env["RETRAIN_PG_USER"], env["RETRAIN_PG_DB"], env["RETRAIN_PG_PASSWORD"]

    def run(sql: str) -> str:
        done = subprocess.run([*psql, "-v", "ON_ERROR_STOP=1", "-Atqc", sql], capture_output=True, text=True)
        if done.returncode:
            raise StackError(f"PostgreSQL refused {sql.split()[0:3]}: {done.stderr.strip()}")
        return done.stdout.strip()

    exists = run(f"select 1 from pg_roles where rolname = {sql_literal(user)}")
    verb = "ALTER" if exists else "CREATE"
    run(f'{verb} ROLE "{user}" WITH LOGIN PASSWORD {sql_literal(password)}')
    if reset:
        run(f'DROP DATABASE IF EXISTS "{db}" WITH (FORCE)')
    if not run(f"select 1 from pg_database where datname = {sql_literal(db)}"):
        run(f'CREATE DATABASE "{db}" OWNER "{user}"')
        say(f"created database {db} owned by role {user}")
    else:
        say(f"database {db} exists: keeping it")


# -- processes ---------------------------------------------------------------------------


def process_env(env: dict[str, str]) -> dict[str, str]:
    return {**os.environ, **env, "PATH": f"{VENV_BIN}{os.pathsep}{os.environ.get('PATH', '')}"}


def pid_file(state: Path, name: str) -> Path:
    return state / "run" / f"{name}.pid"


def running(state: Path, name: str) -> int | None:
    path = pid_file(state, name)
    if not path.exists():
        return None
    pid = int(path.read_text())
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        path.unlink()
        return None
    return pid


def spawn(state: Path, name: str, command: list[str], env: dict[str, str]) -> None:
    """Start ``command`` in its own session, logging to logs/<name>.log."""
    if pid := running(state, name):
        say(f"{name} already running (pid {pid})")
        return
    logs = state / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    with open(logs / f"{name}.log", "ab") as log:
        proc = subprocess.Popen(
            command,
            env=process_env(env),
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
            cwd=BUNDLE,
        )
    pid_file(state, name).parent.mkdir(parents=True, exist_ok=True)
    pid_file(state, name).write_text(str(proc.pid))
    say(f"started {name} (pid {proc.pid}, log {logs / (name + '.log')})")


def stop(state: Path, name: str, grace: float = 30.0) -> None:
    """SIGTERM the process group (the scheduler lets running tasks finish), then SIGKILL."""
    pid = running(state, name)
    if pid is None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pid, signal.SIGTERM)
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline and running(state, name):
        time.sleep(0.3)
    if running(state, name):
        os.killpg(pid, signal.SIGKILL)
        time.sleep(0.5)
    pid_file(state, name).unlink(missing_ok=True)
    say(f"stopped {name}")


def start_s3(state: Path, env: dict[str, str]) -> None:
    port = int(env["RETRAIN_S3_PORT"])
    if running(state, "s3") is None and port_open("127.0.0.1", port):
        raise StackError(f"port {port} is taken by another program; set RETRAIN_S3_PORT")
    spawn(state, "s3", [str(VENV_BIN / "moto_server"), "-H", "127.0.0.1", "-p", str(port)], env)
    wait_for(lambda: port_open("127.0.0.1", port), 30, f"S3 endpoint on 127.0.0.1:{port}", state, "s3")
    say(f"local S3 endpoint (moto_server) on http://127.0.0.1:{port}; it keeps objects in memory only")
    airflow_cli(env, [sys.executable, "-m", "include.retrain_airflow.cli", "ensure-bucket"])


def airflow_cli(env: dict[str, str], command: list[str]) -> None:
    done = subprocess.run(command, env=process_env(env), cwd=BUNDLE)
    if done.returncode:
        raise StackError(f"{' '.join(command[-3:])} failed (exit {done.returncode})")


def health(env: dict[str, str]) -> dict[str, str]:
    url = f"http://{env['RETRAIN_API_HOST']}:{env['RETRAIN_API_PORT']}/api/v2/monitor/health"
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            body = json.load(response)
    except (urllib.error.URLError, OSError, ValueError):
        return {}
    return {name: (body.get(name) or {}).get("status") or "absent" for name in (*REQUIRED_HEALTH, "triggerer")}


def wait_for(ready, seconds: float, what: str, state: Path, log_name: str) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if ready():
            return
        time.sleep(1)
    tail = (state / "logs" / f"{log_name}.log").read_text(errors="replace").splitlines()[-20:]
    raise StackError(f"{what} not ready after {seconds:.0f}s; last log lines:\n" + "\n".join(tail))


def start_airflow(state: Path, env: dict[str, str]) -> None:
    port = int(env["RETRAIN_API_PORT"])
    if running(state, "api-server") is None and port_open(env["RETRAIN_API_HOST"], port):
        raise StackError(f"port {port} is taken by another program; set RETRAIN_API_PORT")
    say("migrating the metadata database (airflow db migrate)")
    airflow_cli(env, [str(VENV_BIN / "airflow"), "db", "migrate"])
    for name in PROCESSES:
        spawn(state, name, [str(VENV_BIN / "airflow"), name], env)

    def healthy() -> bool:
        status = health(env)
        return all(status.get(name) == "healthy" for name in REQUIRED_HEALTH)

    wait_for(healthy, 180, "Airflow (api-server, scheduler, dag-processor)", state, "api-server")
    say(f"Airflow is healthy: UI and API on http://{env['RETRAIN_API_HOST']}:{port}")


# -- commands ----------------------------------------------------------------------------


def up(reset_db: bool = False) -> dict[str, str]:
    state = state_dir()
    env = ensure_env(state)
    render_config(env)
    ensure_database(env, reset=reset_db)
    start_s3(state, env)
    start_airflow(state, env)
    return env


def down() -> None:
    state = state_dir()
    for name in (*reversed(PROCESSES), "s3"):
        stop(state, name)
    say("stack stopped (the local S3 endpoint's objects were in memory and are gone)")


def status() -> int:
    state = state_dir()
    env_path = state / "airflow.env"
    if not env_path.exists():
        say(f"no stack here ({env_path} is missing): run make up")
        return 1
    env = read_env_file(env_path)
    for name in (*PROCESSES, "s3"):
        pid = running(state, name)
        say(f"{name:14} {'running, pid ' + str(pid) if pid else 'not running'}")
    for name, value in (health(env) or {"api-server": "unreachable"}).items():
        say(f"{name:14} {value}")
    return 0


def run_with_env(command: list[str]) -> int:
    """Run a command with the stack's environment file loaded, as a service would see it."""
    path = state_dir() / "airflow.env"
    if not path.exists():
        print(f"[stack] ERROR: {path} is missing: run make up first", file=sys.stderr)
        return 1
    command = command[1:] if command[:1] == ["--"] else command
    return subprocess.run(command, env=process_env(read_env_file(path)), cwd=BUNDLE).returncode


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("command", choices=["up", "down", "status", "env", "config", "exec"])
    parser.add_argument("--reset-db", action="store_true", help="drop and recreate the metadata database")
    parser.add_argument("argv", nargs=argparse.REMAINDER, help="with exec: the command to run")
    args = parser.parse_args(argv)
    if args.command == "exec":
        return run_with_env(args.argv)
    try:
        if args.command == "up":
            up(reset_db=args.reset_db)
        elif args.command == "down":
            down()
        elif args.command == "status":
            return status()
        elif args.command == "env":
            ensure_env(state_dir())
        else:
            render_config(ensure_env(state_dir()))
    except (StackError, subprocess.CalledProcessError) as exc:
        print(f"[stack] ERROR: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
