"""The local stack: PostgreSQL, an S3 endpoint and Airflow on this machine.

``make run``, ``make up``, ``make down``, ``make status`` and the end-to-end tests go
through here. It renders the same airflow.cfg.template and systemd units as
``make deploy`` and starts each process from its unit's ExecStart with its environment
file, so the local stack is the VM's, minus systemd. Each step says what it did.

    python deploy/stack.py up [--reset-db]   # env file, config, units, PostgreSQL, S3, migrate, start
    python deploy/stack.py down              # stop what this state directory started
    python deploy/stack.py status            # processes and health
    python deploy/stack.py exec -- CMD...    # run CMD with the stack's environment file

State lives in ``RETRAIN_STACK_DIR`` (default ``.stack/``): the environment file (0600),
airflow.cfg, rendered units, logs, pid files and the admin password (0600).
"""

from __future__ import annotations

import argparse
import os
import socket
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make the bundle importable
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from deploy import broker, envfile, postgres, preload, queues, render, services, workers
from deploy.broker import BrokerError
from deploy.postgres import PostgresError, port_open
from deploy.profile import BUNDLE, Profile, local_profile
from deploy.render import RenderError
from deploy.services import ServiceError

AIRFLOW_PROCESSES = ("api-server", "scheduler", "dag-processor")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def isolated_env(state: Path, database: str, bucket: str, dags: Path, pipelines: Path) -> dict[str, str]:
    """The environment of a stack that shares nothing with ``make run``'s (tests, benchmark).

    Its own state directory, metadata database and role (named like the database), bucket,
    DAGs and free ports; the caller's AIRFLOW_* and RETRAIN_* variables are left out so
    they cannot leak into it. Two stacks with different databases can run side by side.
    """
    base = {k: v for k, v in os.environ.items() if not k.startswith(("AIRFLOW", "RETRAIN_"))}
    ports = ("API", "LOG_SERVER", "SCHEDULER_HEALTH", "TRIGGERER_LOG", "S3")
    return {
        **base,
        **{f"RETRAIN_{name}_PORT": str(free_port()) for name in ports},
        "RETRAIN_STACK_DIR": str(state),
        "RETRAIN_PG_DB": database,
        "RETRAIN_PG_USER": database,
        "RETRAIN_BUCKET": bucket,
        "RETRAIN_DAGS_DIR": str(dags),
        "RETRAIN_PIPELINES_DIR": str(pipelines),
    }


def say(message: str) -> None:
    print(f"[stack] {message}", flush=True)


class StackError(RuntimeError):
    """A step cannot go on; the message says what to do."""


def local_overrides() -> dict[str, str]:
    """Local defaults that differ from a VM's, then the caller's RETRAIN_* settings."""
    s3_port = os.environ.get("RETRAIN_S3_PORT", "5055")
    bucket = os.environ.get("RETRAIN_BUCKET", "retrain-models")
    # Where Airflow reaches the local S3 endpoint: moto_server's port, unless something sits
    # in between (the fault tests put a proxy there that they can cut).
    endpoint = os.environ.get("RETRAIN_S3_ENDPOINT", f"http://127.0.0.1:{s3_port}")
    values = {
        "RETRAIN_PG_DB": "airflow_retrain",
        "RETRAIN_PG_USER": "retrain",
        "RETRAIN_S3_PORT": s3_port,
        "RETRAIN_BUCKET": bucket,
        "RETRAIN_MODEL_STORE": f"s3://{bucket}",
        "AIRFLOW_CONN_AWS_DEFAULT": envfile.aws_connection(endpoint),
    }
    return values | {k: v for k, v in os.environ.items() if k.startswith("RETRAIN_") and k != "RETRAIN_STACK_DIR"}


def prepare(profile: Profile) -> tuple[dict[str, str], bool, bool]:
    """Environment file, airflow.cfg and units: made once, kept, re-rendered if changed.

    Returns the environment, whether the file (and so its secrets) is new, and whether
    anything the running processes read changed (they must restart to see it).
    """
    existed = profile.env_file.exists()
    env, env_changed = envfile.ensure(profile, local_overrides(), mode=0o600)
    say(f"{'kept' if existed else 'created'} environment file {profile.env_file} (mode 0600)")
    config_changed = render.render_config(profile, env)
    units_changed = render.render_units(profile)
    say(f"rendered {profile.config_file} and systemd units in {profile.unit_dir}")
    return env, not existed, bool(env_changed or config_changed or units_changed)


def restart_if_changed(profile: Profile, changed: bool) -> None:
    """A switch (make run EXECUTOR=celery) or a new setting reaches running processes only
    through a restart, as systemctl restart does on a VM."""
    running = [name for name in AIRFLOW_PROCESSES if services.running(profile, name)]
    if changed and running:
        say(f"the environment file or airflow.cfg changed: restarting {', '.join(running)}")
        for name in running:
            services.stop(profile, name)
        stop_workers(profile)


def start_s3(profile: Profile, env: dict[str, str]) -> None:
    port = int(env["RETRAIN_S3_PORT"])
    if services.running(profile, "s3") is None:
        command = f"{profile.venv / 'bin' / 'moto_server'} -H 127.0.0.1 -p {port}"
        services.spawn(profile, "s3", command)
        services.wait_until(lambda: port_open("127.0.0.1", port), 30, "S3 endpoint", profile, "s3")
    say(f"local S3 endpoint (moto_server) on http://127.0.0.1:{port}: it keeps objects in memory only")
    cli = [str(profile.venv / "bin" / "python"), "-m", "include.retrain_airflow.cli", "ensure-bucket"]
    if subprocess.run(cli, env=services.process_env(profile), cwd=BUNDLE).returncode:
        raise StackError("could not create the bucket on the local S3 endpoint")


def ensure_broker(profile: Profile, env: dict[str, str]) -> None:
    """The Celery broker: one that answers is used; a Redis on loopback is started from
    airflow-broker.service with its rendered redis.conf (installed first when missing)."""
    url = env["AIRFLOW__CELERY__BROKER_URL"]
    where = broker.redacted(url)
    if broker.answers(url):
        say(f"Celery broker answers on {where}: using it")
        return
    if not broker.ours(url):
        raise StackError(f"the Celery broker {where} does not answer: start it, or set RETRAIN_BROKER_URL")
    broker.install_redis(say)
    data = profile.state_dir / "redis"
    data.mkdir(parents=True, exist_ok=True)
    envfile.write_private(profile.etc_dir / "redis.conf", broker.config_text(url, data))
    services.start(profile, "broker")
    services.wait_until(lambda: broker.answers(url), 30, "Redis", profile, "broker")
    say(f"started redis-server on {where} (airflow-broker.service; data in {data}, append-only; make down stops it)")


def start_workers(profile: Profile, env: dict[str, str]) -> None:
    """Two Celery workers (or RETRAIN_LOCAL_WORKERS=1), each with a state directory of its own,
    as on two machines."""
    try:
        wanted = workers.local_workers(env)
    except ValueError as exc:
        raise StackError(str(exc)) from None
    for name in set(workers.LOCAL_WORKERS) - set(wanted):
        if services.stop(workers.local_worker(profile, name), workers.UNIT):
            say(f"stopped Celery worker {name} (RETRAIN_LOCAL_WORKERS={len(wanted)})")
    for name in wanted:
        worker = workers.local_worker(profile, name)
        worker.state_dir.mkdir(parents=True, exist_ok=True)
        values, _ = envfile.ensure(worker, workers.local_overrides(env, profile, name), mode=0o600)
        render.render_config(worker, values)
        render.render_units(worker)
        pid = services.start(worker, workers.UNIT)
        say(
            f"Celery worker {values['RETRAIN_WORKER_NAME']}: queues {values['RETRAIN_WORKER_QUEUES']}, pid {pid} "
            f"(state {worker.state_dir}, log {services.log_file(worker, workers.UNIT)})"
        )


def stop_workers(profile: Profile) -> None:
    for name in workers.LOCAL_WORKERS:
        worker = workers.local_worker(profile, name)
        if services.stop(worker, workers.UNIT):
            say(f"stopped Celery worker {name}")


def ensure_admin(profile: Profile) -> None:
    """The UI/API login of the local stack: admin, password kept in a 0600 file."""
    path = profile.state_dir / "admin-password"
    password = path.read_text().strip() if path.exists() else services.new_password()
    envfile.write_private(path, password + "\n")
    if services.admin_exists(profile):
        services.airflow(profile, "users", "reset-password", "--username", "admin", f"--password={password}")
        say(f"UI user admin exists: its password is the one in {path}")
    else:
        services.create_admin(profile, password)
        say(f"created UI user admin (password in {path}, mode 0600)")


def ensure_plugin_menu(profile: Profile) -> None:
    """Viewers and Users see the plugins' menu entries (the Models page): FAB gives only Op and Admin."""
    granted = services.grant_plugin_menu(profile)
    if granted:
        say(f"granted role(s) {', '.join(granted)} can_read on Plugins: they see the plugin menu (Models page)")
    else:
        say(f"roles {' and '.join(services.PLUGIN_MENU_ROLES)} already read the plugin menu (Plugins: can_read)")


def check_ports(profile: Profile, env: dict[str, str]) -> None:
    """Fail before starting anything when another program holds one of our ports."""
    ports = {
        "api-server": ("RETRAIN_API_PORT", env["RETRAIN_API_HOST"]),
        "scheduler": ("RETRAIN_LOG_SERVER_PORT", "127.0.0.1"),
        "s3": ("RETRAIN_S3_PORT", "127.0.0.1"),
    }
    for owner, (key, host) in ports.items():
        if services.running(profile, owner) is None and port_open(host, int(env[key])):
            raise StackError(f"port {env[key]} ({key}) is taken by another program; set {key} to a free port")


def up(reset_db: bool = False) -> None:
    profile = local_profile()
    env, new_secrets, changed = prepare(profile)
    restart_if_changed(profile, changed)
    check_ports(profile, env)
    admin = postgres.ensure_server(env, say)
    if (
        new_secrets
        and not reset_db
        and admin.run(f"select 1 from pg_database where datname = '{env['RETRAIN_PG_DB']}'")
    ):
        say(f"database {env['RETRAIN_PG_DB']} is from a stack whose secrets are gone: recreating it")
        reset_db = True  # its connections and variables were encrypted with the old fernet_key
    postgres.ensure_role_and_database(admin, env, set_password=True, say=say, reset=reset_db)
    start_s3(profile, env)
    if env["RETRAIN_EXECUTOR"] == "celery":
        ensure_broker(profile, env)
    say("migrating the metadata database (the airflow-migrate unit)")
    services.run_unit_once(profile, "airflow-migrate.service")
    ensure_admin(profile)
    ensure_plugin_menu(profile)
    with ThreadPoolExecutor(len(AIRFLOW_PROCESSES)) as pool:  # each waits on its ExecStartPre check
        pids = dict(
            zip(AIRFLOW_PROCESSES, pool.map(lambda n: services.start(profile, n), AIRFLOW_PROCESSES), strict=True)
        )
    for name, pid in pids.items():
        say(f"{name}: pid {pid} (log {services.log_file(profile, name)})")
    if env["RETRAIN_EXECUTOR"] == "celery":
        start_workers(profile, env)
    else:
        stop_workers(profile)  # a switch back to the LocalExecutor
    services.wait_healthy(profile, env)
    base = f"http://{env['RETRAIN_API_HOST']}:{env['RETRAIN_API_PORT']}"
    say(f"Airflow is healthy: UI and REST API on {base}")
    # The models plugin's navigation entry (url_route "models"); its FastAPI app is mounted at /models/.
    say(f"Models page: {base}/plugin/models")


def down() -> None:
    profile = local_profile()
    stop_workers(profile)
    for name in (*reversed(AIRFLOW_PROCESSES), "s3", "broker"):
        if services.stop(profile, name):
            say(f"stopped {name}")
    say("stack stopped (the local S3 endpoint's objects were in memory and are gone)")


def status() -> int:
    profile = local_profile()
    if not profile.env_file.exists():
        say(f"no stack here ({profile.env_file} is missing): make up starts one")
        return 1
    env = envfile.read_env_file(profile.env_file)
    for name in (*AIRFLOW_PROCESSES, "s3"):
        pid = services.running(profile, name)
        say(f"{name:14} {'running, pid ' + str(pid) if pid else 'not running'}")
    for name, value in (services.health(env) or {"api-server": "unreachable"}).items():
        say(f"{name:14} {value}")
    if env.get("RETRAIN_EXECUTOR") == "celery":
        for name in workers.LOCAL_WORKERS:
            pid = services.running(workers.local_worker(profile, name), workers.UNIT)
            say(f"{'worker ' + name:14} {'running, pid ' + str(pid) if pid else 'not running'}")
        for line in queues.status_lines(services.process_env(profile), profile.bundle_dir):
            say(f"celery: {line}")
        return 0
    _, lines = preload.report(profile.state_dir, services.running(profile, "scheduler"))
    for line in lines:
        say(f"task preload: {line}")
    return 0


def run_with_env(command: list[str]) -> int:
    """Run a command with the stack's environment file loaded, as a service would see it."""
    profile = local_profile()
    if not profile.env_file.exists():
        print(f"[stack] ERROR: {profile.env_file} is missing: run make up first", file=sys.stderr)
        return 1
    command = command[1:] if command[:1] == ["--"] else command
    return subprocess.run(command, env=services.process_env(profile), cwd=BUNDLE).returncode


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["exec"]:  # everything after it is the command, options included
        return run_with_env(argv[1:])
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("command", choices=["up", "down", "status", "config", "exec"])
    parser.add_argument("--reset-db", action="store_true", help="drop and recreate the metadata database")
    args = parser.parse_args(argv)
    try:
        if args.command == "up":
            up(reset_db=args.reset_db)
        elif args.command == "down":
            down()
        elif args.command == "status":
            return status()
        else:
            prepare(local_profile())
    except (StackError, PostgresError, ServiceError, RenderError, BrokerError, subprocess.CalledProcessError) as exc:
        print(f"[stack] ERROR: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
