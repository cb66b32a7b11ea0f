"""Install the bundle as a service on this VM (``make deploy``), remove it, show its health.

    sudo python3 deploy/install.py deploy      # idempotent: a second run changes nothing
    sudo python3 deploy/install.py deploy --role worker   # a Celery worker VM (RETRAIN_MAIN_ENV=worker.env)
    sudo python3 deploy/install.py undeploy [--drop-database] [--remove-user]
    python3 deploy/install.py status

Every step prints ``ok`` (nothing to do) or ``changed``. Secrets are made once: the
environment file is never rewritten in place, the database is never dropped, and the
first admin password is printed once and stored nowhere. Paths default to
/opt/airflow-retrain (bundle, venv), /etc/airflow-retrain (airflow.env 0640 root:airflow,
airflow.cfg), /var/lib/airflow-retrain (state, logs) and /etc/systemd/system; the
RETRAIN_PREFIX, RETRAIN_ETC, RETRAIN_STATE, RETRAIN_UNIT_DIR and RETRAIN_SERVICE_USER
variables move them.
"""

from __future__ import annotations

import argparse
import contextlib
import filecmp
import grp
import hashlib
import os
import pwd
import shutil
import subprocess
import sys
from pathlib import Path

if __package__ in (None, ""):  # run as a script with the system's python3
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from deploy import broker, envfile, postgres, preload, queues, render, services, workers
from deploy.broker import BrokerError
from deploy.postgres import PostgresError
from deploy.profile import BUNDLE, Profile, vm_profile
from deploy.render import RenderError
from deploy.services import ServiceError

UNITS_TO_ENABLE = ("airflow.target",)
BROKER_UNIT = "airflow-broker.service"  # the main VM's, with RETRAIN_EXECUTOR=celery and our Redis
WORKER_UNIT = f"airflow-{workers.UNIT}.service"  # a worker VM's only unit
SKIP = {".git", ".venv", ".stack", ".pytest_cache", ".ruff_cache", "__pycache__"}


class Report:
    """Collects what each step did, so a re-run can say "nothing changed"."""

    def __init__(self) -> None:
        self.changed: list[str] = []

    def step(self, name: str, changed: bool | list[str], detail: str = "") -> None:
        did = bool(changed)
        if did:
            self.changed.append(name)
        extra = f" ({detail})" if detail else ""
        print(f"[deploy] {'changed' if did else 'ok     '} {name}{extra}", flush=True)


def say(message: str) -> None:
    print(f"[deploy]         {message}", flush=True)


def systemd_running() -> bool:
    """systemd is PID 1 (what sd_booted() checks)."""
    return Path("/run/systemd/system").is_dir()


def ensure_user(name: str) -> bool:
    try:
        pwd.getpwnam(name)
        return False
    except KeyError:
        subprocess.run(
            [
                "useradd",
                "--system",
                "--user-group",
                "--home-dir",
                "/nonexistent",
                "--no-create-home",
                "--shell",
                "/usr/sbin/nologin",
                name,
            ],
            check=True,
        )
        return True


def bundle_files(source: Path) -> list[Path]:
    """The files of the bundle: what git tracks when it is a checkout, else everything."""
    if (source / ".git").exists() and shutil.which("git"):
        listed = subprocess.run(["git", "ls-files", "-z"], cwd=source, capture_output=True, text=True, check=True)
        return [Path(p) for p in listed.stdout.split("\0") if p and (source / p).is_file()]
    return [
        p.relative_to(source)
        for p in source.rglob("*")
        if p.is_file() and not SKIP.intersection(p.relative_to(source).parts)
    ]


def sync_bundle(source: Path, target: Path) -> list[str]:
    """Copy changed files (root-owned, read-only for the services), delete stale ones."""
    changed = []
    wanted = set(bundle_files(source))
    for rel in sorted(wanted):
        dest = target / rel
        if dest.exists() and filecmp.cmp(source / rel, dest, shallow=False):
            continue
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(source / rel, dest)
        dest.chmod(0o755 if os.access(source / rel, os.X_OK) else 0o644)
        changed.append(str(rel))
    if target.exists():
        for path in sorted(target.rglob("*"), reverse=True):
            rel = path.relative_to(target)
            if path.is_file() and rel not in wanted and "__pycache__" not in rel.parts:
                path.unlink()
                changed.append(f"removed {rel}")
    return changed


def venv_interpreter(user: str) -> str:
    """A Python 3.11+ the service user can run: RETRAIN_VENV_PYTHON, the system's, or ours.

    A virtualenv links to its interpreter, so one under a private home (pyenv in /root)
    would leave the services unable to start.
    """
    candidates = [os.environ.get("RETRAIN_VENV_PYTHON"), "/usr/bin/python3", sys.executable]
    check = "import sys, venv; sys.exit(sys.version_info < (3, 11))"
    for candidate in filter(None, candidates):
        if (
            Path(candidate).exists()
            and subprocess.run(["runuser", "-u", user, "--", candidate, "-c", check]).returncode == 0
        ):
            return candidate
    raise ServiceError(
        f"no Python 3.11+ with the venv module that user {user} can run; install python3 python3-venv "
        "or set RETRAIN_VENV_PYTHON"
    )


def requirements_digest(bundle: Path, interpreter: str) -> str:
    version = subprocess.run([interpreter, "--version"], capture_output=True, text=True).stdout
    digest = hashlib.sha256(f"{interpreter} {version}".encode())
    for name in ("requirements.txt", "constraints.txt"):
        digest.update((bundle / name).read_bytes())
    return digest.hexdigest()


def ensure_venv(profile: Profile) -> bool:
    """The virtualenv with the pinned runtime requirements; rebuilt only when they change."""
    interpreter = venv_interpreter(profile.service_user)
    stamp = profile.venv / ".requirements.sha256"
    digest = requirements_digest(profile.bundle_dir, interpreter)
    if stamp.exists() and stamp.read_text().strip() == digest:
        return False
    config = profile.venv / "pyvenv.cfg"
    if config.exists() and f"executable = {Path(interpreter).resolve()}" not in config.read_text():
        shutil.rmtree(profile.venv)  # made with another interpreter: start over
    if not (profile.venv / "bin" / "python").exists():
        made = subprocess.run([interpreter, "-m", "venv", str(profile.venv)], capture_output=True, text=True)
        if made.returncode:
            raise ServiceError(f"cannot create {profile.venv} with {interpreter}: {made.stderr.strip()}")
    pip = [str(profile.venv / "bin" / "python"), "-m", "pip", "install", "-q"]
    say(f"installing pinned requirements into {profile.venv} with {interpreter} (minutes on a new VM)")
    subprocess.run([*pip, "--upgrade", "pip"], check=True, stdout=subprocess.DEVNULL)
    requirements = profile.bundle_dir / "requirements.txt"
    subprocess.run([*pip, "-r", str(requirements), "-c", str(profile.bundle_dir / "constraints.txt")], check=True)
    stamp.write_text(digest + "\n")
    return True


def ensure_service_dir(path: Path, service_user: str) -> bool:
    """``path`` exists, owned by the service user, 0750; True if anything had to change."""
    user = pwd.getpwnam(service_user)
    changed = not path.exists()
    path.mkdir(parents=True, exist_ok=True)
    stat = path.stat()
    if (stat.st_uid, stat.st_gid, stat.st_mode & 0o777) != (user.pw_uid, user.pw_gid, 0o750):
        os.chown(path, user.pw_uid, user.pw_gid)
        path.chmod(0o750)
        changed = True
    return changed


def ensure_state_dirs(profile: Profile) -> bool:
    """AIRFLOW_HOME and logs: the only places the services may write (0750 airflow)."""
    paths = (profile.state_dir, profile.state_dir / "airflow", profile.state_dir / "logs")
    return any([ensure_service_dir(path, profile.service_user) for path in paths])  # a list: every one runs


def vm_overrides() -> dict[str, str]:
    values = {k: v for k, v in os.environ.items() if k.startswith("RETRAIN_") and k not in ("RETRAIN_ADMIN_PASSWORD",)}
    if values.get("RETRAIN_PRIVATE_HOST"):  # worker VMs reach the Execution API there
        values.setdefault("RETRAIN_API_HOST", values["RETRAIN_PRIVATE_HOST"])
    return values


def schema_current(profile: Profile, user: str) -> bool:
    return services.airflow(profile, "db", "check-migrations", "-t", "0", user=user).returncode == 0


def ensure_admin(profile: Profile, user: str) -> bool:
    if services.admin_exists(profile, user=user):
        return False
    password = os.environ.get("RETRAIN_ADMIN_PASSWORD") or services.new_password()
    services.create_admin(profile, password, user=user)
    if not os.environ.get("RETRAIN_ADMIN_PASSWORD"):
        print(f"\n  UI/API user 'admin', password: {password}\n  (shown once, stored nowhere: note it now)\n")
    return True


def start_services(changed: list[str], units: tuple[str, ...] = UNITS_TO_ENABLE) -> None:
    if not systemd_running():
        say("systemd is not PID 1 here: units installed but not started. On a systemd host run:")
        say(f"  systemctl daemon-reload && systemctl enable --now {' '.join(units)}")
        return
    subprocess.run(["systemctl", "daemon-reload"], check=True)
    subprocess.run(["systemctl", "enable", *units], check=True, capture_output=True)
    verb = "restart" if changed else "start"
    subprocess.run(["systemctl", verb, *units], check=True)
    say(f"systemctl {verb} {' '.join(units)}")


def ensure_broker(profile: Profile, env: dict[str, str], group: int, report: Report) -> tuple[dict[str, str], bool]:
    """RETRAIN_EXECUTOR=celery: our Redis (airflow-broker.service) with a password, on loopback
    and RETRAIN_PRIVATE_HOST; a broker of the operator's is only checked. Returns the
    environment and whether the broker is ours (its unit is then enabled)."""
    url = env["AIRFLOW__CELERY__BROKER_URL"]
    if not broker.ours(url):
        report.step(f"Celery broker {broker.redacted(url)} (not ours)", False, broker.probe(url) or "answers")
        return env, False
    secured = broker.with_password(url, env["RETRAIN_BROKER_PASSWORD"])
    changed = envfile.update(profile, {"AIRFLOW__CELERY__BROKER_URL": secured}, mode=0o640, group=group)
    report.step("broker URL with the broker password (RETRAIN_BROKER_PASSWORD)", changed)
    had_redis = bool(shutil.which("redis-server"))
    broker.install_redis(say)
    if not had_redis and systemd_running():  # Debian's package starts a Redis of its own, without a password
        subprocess.run(["systemctl", "disable", "--now", "redis-server.service"], capture_output=True)
        say("installed redis-server for its program; disabled the package's redis-server.service")
    report.step("redis-server installed", not had_redis)
    data = profile.state_dir / "redis"
    made = ensure_service_dir(data, profile.service_user)
    private = env.get("RETRAIN_PRIVATE_HOST", "")
    conf = profile.etc_dir / "redis.conf"
    written = envfile.write_private(conf, broker.config_text(secured, data, private), 0o640, group)
    where = " ".join(broker.bind_addresses(secured, private))
    report.step(f"broker {conf} (Redis on {where} port {broker.address(secured)[2]}, password)", written or made)
    return envfile.read_env_file(profile.env_file), True


def write_worker_env(profile: Profile, env: dict[str, str]) -> bool:
    """worker.env: what a worker VM needs from this one (make deploy ROLE=worker reads it);
    True if it changed."""
    path = profile.etc_dir / "worker.env"
    private = env.get("RETRAIN_PRIVATE_HOST", "")
    if not private:
        say("RETRAIN_PRIVATE_HOST is not set: the broker, PostgreSQL and the api-server stay on loopback, so only")
        say("a worker on this VM can run tasks (systemctl enable --now airflow-celery-worker.service)")
        existed = path.exists()
        path.unlink(missing_ok=True)
        return existed
    return envfile.write_private(path, envfile.render(workers.for_worker_vms(env, private)), mode=0o600)


def install_code(profile: Profile, report: Report) -> None:
    """The bundle (root's, read-only for the services) and its virtualenv: on every VM, either role."""
    copied = sync_bundle(BUNDLE, profile.bundle_dir) if profile.bundle_dir != BUNDLE else []
    report.step(f"bundle in {profile.bundle_dir}", copied, f"{len(copied)} file(s)" if copied else "")
    report.step(f"virtualenv {profile.venv}", ensure_venv(profile))


def install_wrapper(profile: Profile, report: Report) -> None:
    """The airflow-retrain wrapper: the airflow CLI as this VM's services run it."""
    wrapper = profile.bundle_dir.parent / "bin" / "airflow-retrain"
    text = render.unit_text(BUNDLE / "deploy" / "airflow-retrain.in", profile.unit_values())
    report.step(f"operator CLI {wrapper}", render.write_if_changed(wrapper, text, mode=0o755))


def finish(report: Report) -> int:
    print(f"[deploy] {'changed: ' + '; '.join(report.changed) if report.changed else 'nothing changed'}")
    return 0


def deploy() -> int:
    if os.geteuid() != 0:
        print("[deploy] ERROR: run as root (sudo make deploy)", file=sys.stderr)
        return 1
    profile = vm_profile()
    report = Report()
    report.step(f"system user {profile.service_user}", ensure_user(profile.service_user))
    group = grp.getgrnam(profile.service_group).gr_gid
    existed = profile.env_file.exists()
    env, env_changed = envfile.ensure(profile, vm_overrides(), mode=0o640, group=group)
    report.step(f"environment file {profile.env_file}", env_changed, "kept its secrets" if existed else "new secrets")
    install_code(profile, report)
    admin = postgres.ensure_server(env, say)
    role_changes = postgres.ensure_role_and_database(admin, env, set_password=not existed, say=say)
    report.step(f"PostgreSQL role and database {env['RETRAIN_PG_DB']}", role_changes)
    report.step("PostgreSQL password login (scram-sha-256)", postgres.ensure_password_auth(admin, env, say))
    if env.get("RETRAIN_PRIVATE_HOST"):
        changes = postgres.ensure_private_access(admin, env, say)
        report.step(f"PostgreSQL for worker VMs on {env['RETRAIN_PRIVATE_HOST']}", changes)
    report.step(f"state directory {profile.state_dir}", ensure_state_dirs(profile))
    celery, ours = env["RETRAIN_EXECUTOR"] == "celery", False
    if celery:
        env, ours = ensure_broker(profile, env, group, report)
    report.step(f"config {profile.config_file}", render.render_config(profile, env))
    units = render.render_units(profile)
    report.step(f"systemd units in {profile.unit_dir}", units, ", ".join(units))
    install_wrapper(profile, report)
    current = schema_current(profile, profile.service_user)
    if not current:
        migrated = services.airflow(profile, "db", "migrate", user=profile.service_user)
        if migrated.returncode:
            raise ServiceError(f"airflow db migrate failed:\n{migrated.stderr[-2000:]}")
    report.step("metadata database schema", not current)
    report.step("UI/API user admin", ensure_admin(profile, profile.service_user))
    granted = services.grant_plugin_menu(profile, user=profile.service_user)  # FAB gives only Op and Admin
    detail = f"Plugins: can_read for {', '.join(granted)}" if granted else ""
    report.step("plugin menu for roles Viewer and User", granted, detail)
    if celery:
        path = profile.etc_dir / "worker.env"
        report.step(f"worker settings {path} (0600: copy it to each worker VM)", write_worker_env(profile, env))
    start_services(report.changed, (BROKER_UNIT, *UNITS_TO_ENABLE) if ours else UNITS_TO_ENABLE)
    return finish(report)


def worker_overrides(main: dict[str, str]) -> dict[str, str]:
    """A worker VM's environment file: the main VM's shared settings and this machine's own."""
    if main.get("RETRAIN_EXECUTOR") != "celery":
        raise ServiceError("the main VM's settings say RETRAIN_EXECUTOR is not celery: deploy it with celery first")
    own = vm_overrides()
    name = own.pop("RETRAIN_WORKER_NAME", "worker")
    queues = own.pop("RETRAIN_WORKER_QUEUES", "default")
    return {**own, **workers.worker_values(main, name, queues)}


def check_main_vm(env: dict[str, str], report: Report) -> None:
    """Can this worker reach the main VM? The worker unit retries until it can; say what is closed."""
    _, host, port = broker.address(env["AIRFLOW__CELERY__BROKER_URL"])
    reach = {
        f"broker {host}:{port}": broker.probe(env["AIRFLOW__CELERY__BROKER_URL"]),
        f"PostgreSQL {env['RETRAIN_PG_HOST']}:{env['RETRAIN_PG_PORT']}": ""
        if postgres.port_open(env["RETRAIN_PG_HOST"], int(env["RETRAIN_PG_PORT"]), 3)
        else "no connection",
        f"api-server {env['RETRAIN_API_HOST']}:{env['RETRAIN_API_PORT']}": "" if services.health(env) else "no answer",
    }
    for what, problem in reach.items():
        if problem:
            print(
                f"[deploy] WARNING main VM's {what} is NOT reachable ({problem}): start it there, or open", flush=True
            )
            print(
                "[deploy]         the port to this machine; the worker unit retries until it is reachable", flush=True
            )
        else:
            report.step(f"main VM's {what} reachable", False)


def deploy_worker() -> int:
    """A worker VM: the bundle, its venv and airflow-celery-worker.service, pointed at the main VM."""
    if os.geteuid() != 0:
        print("[deploy] ERROR: run as root (sudo make deploy ROLE=worker RETRAIN_MAIN_ENV=worker.env)", file=sys.stderr)
        return 1
    source = os.environ.get("RETRAIN_MAIN_ENV", "")
    if not source or not Path(source).is_file():
        raise ServiceError(
            f"RETRAIN_MAIN_ENV={source!r}: copy /etc/airflow-retrain/worker.env from the main VM (made by its "
            "make deploy with RETRAIN_EXECUTOR=celery RETRAIN_PRIVATE_HOST=...) and name it here"
        )
    profile = vm_profile()
    report = Report()
    report.step(f"system user {profile.service_user}", ensure_user(profile.service_user))
    group = grp.getgrnam(profile.service_group).gr_gid
    overrides = worker_overrides(envfile.read_env_file(Path(source)))
    env, env_changed = envfile.ensure(profile, overrides, mode=0o640, group=group, switches=overrides)
    report.step(f"environment file {profile.env_file} (from {source})", env_changed)
    install_code(profile, report)
    report.step(f"state directory {profile.state_dir}", ensure_state_dirs(profile))
    report.step(f"config {profile.config_file}", render.render_config(profile, env))
    units = render.render_units(profile, [WORKER_UNIT])
    report.step(f"systemd unit in {profile.unit_dir}", units, ", ".join(units))
    install_wrapper(profile, report)
    say(f"Celery worker {env['RETRAIN_WORKER_NAME']}, queues {env['RETRAIN_WORKER_QUEUES']}")
    check_main_vm(env, report)
    start_services(report.changed, (WORKER_UNIT,))
    return finish(report)


def undeploy(drop_database: bool, remove_user: bool) -> int:
    if os.geteuid() != 0:
        print("[deploy] ERROR: run as root (sudo make undeploy)", file=sys.stderr)
        return 1
    profile = vm_profile()
    env = envfile.settings(profile, vm_overrides())  # names of role and database if the file is gone
    if profile.env_file.exists():
        env.update(envfile.read_env_file(profile.env_file))
    if systemd_running():
        subprocess.run(["systemctl", "disable", "--now", *UNITS_TO_ENABLE, BROKER_UNIT, WORKER_UNIT], check=False)
    for name in render.unit_names():
        (profile.unit_dir / name).unlink(missing_ok=True)
    if systemd_running():
        subprocess.run(["systemctl", "daemon-reload"], check=False)
    prefix = profile.bundle_dir.parent
    for path in (profile.bundle_dir, profile.venv, prefix / "bin", profile.etc_dir, profile.state_dir):
        if path.is_symlink():
            path.unlink()  # a venv shared with another prefix: remove the link, not what it points to
        else:
            shutil.rmtree(path, ignore_errors=True)
    with contextlib.suppress(OSError):
        prefix.rmdir()  # when nothing else lives there
    say("removed units, bundle, virtualenv, configuration and state")
    if drop_database:
        admin = postgres.Admin(env["RETRAIN_PG_HOST"], env["RETRAIN_PG_PORT"])
        admin.run(f'DROP DATABASE IF EXISTS "{env["RETRAIN_PG_DB"]}" WITH (FORCE)')
        admin.run(f'DROP ROLE IF EXISTS "{env["RETRAIN_PG_USER"]}"')
        postgres.remove_password_auth(admin, env)
        say(f"dropped database {env['RETRAIN_PG_DB']} and role {env['RETRAIN_PG_USER']}")
    else:
        say(f"kept database {env['RETRAIN_PG_DB']} (DAG run history); DROP_DATABASE=1 removes it")
    if remove_user:
        subprocess.run(["userdel", profile.service_user], check=False)
        say(f"removed system user {profile.service_user}")
    return 0


def status() -> int:
    profile = vm_profile()
    if not profile.env_file.exists():
        print(f"[status] not deployed here ({profile.env_file} is missing)")
        return 1
    env = envfile.read_env_file(profile.env_file) if os.access(profile.env_file, os.R_OK) else {}
    if systemd_running():
        names = [n for n in render.unit_names() if n.endswith((".service", ".timer"))]
        shown = subprocess.run(["systemctl", "is-active", *names], capture_output=True, text=True).stdout.split()
        for name, state in zip(names, shown, strict=False):
            print(f"[status] {name:32} {state}")
    else:
        print("[status] systemd is not PID 1: unit states unavailable")
    if env:
        for name, value in (services.health(env) or {"api-server": "unreachable"}).items():
            print(f"[status] {name:32} {value}")
    if env.get("RETRAIN_EXECUTOR") == "celery":
        for line in queues.status_lines(env, profile.bundle_dir):
            print(f"[status] celery: {line}")
        return 0
    _, lines = preload.report(profile.state_dir)
    for line in lines:
        print(f"[status] task preload: {line}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("command", choices=["deploy", "undeploy", "status"])
    parser.add_argument("--role", choices=["main", "worker"], default="main", help="deploy: main VM or a Celery worker")
    parser.add_argument("--drop-database", action="store_true", help="undeploy: also drop database and role")
    parser.add_argument("--remove-user", action="store_true", help="undeploy: also remove the system user")
    args = parser.parse_args(argv)
    try:
        if args.command == "deploy":
            return deploy_worker() if args.role == "worker" else deploy()
        if args.command == "undeploy":
            return undeploy(args.drop_database, args.remove_user)
        return status()
    except (PostgresError, ServiceError, RenderError, BrokerError, subprocess.CalledProcessError) as exc:
        print(f"[deploy] ERROR: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
