"""Start and stop Airflow's processes exactly as the systemd units would.

The local stack and the live-stack tests read ``ExecStartPre=`` and ``ExecStart=`` from
the rendered units and run them with the unit's environment file, so what runs on a
laptop or in CI is what runs on the VM.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import secrets
import shlex
import signal
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from deploy.envfile import read_env_file
from deploy.profile import Profile
from deploy.render import unit_commands

REQUIRED_HEALTH = ("metadatabase", "scheduler", "dag_processor")


class ServiceError(RuntimeError):
    """A process did not start or become healthy; the message carries its log's tail."""


def process_env(profile: Profile) -> dict[str, str]:
    """The caller's environment plus the unit's EnvironmentFile, as systemd would give it."""
    try:
        values = read_env_file(profile.env_file)
    except OSError as exc:
        raise ServiceError(
            f"cannot read the environment file {profile.env_file} ({exc.strerror}); "
            "it holds the database URL and the secrets every process shares: make up (or make deploy) creates it"
        ) from None
    path = os.environ.get("PATH", "")
    return {**os.environ, **values, "PATH": f"{profile.venv / 'bin'}{os.pathsep}{path}"}


def pid_file(profile: Profile, name: str) -> Path:
    return profile.state_dir / "run" / f"{name}.pid"


def log_file(profile: Profile, name: str) -> Path:
    return profile.state_dir / "logs" / f"{name}.log"


def running(profile: Profile, name: str) -> int | None:
    path = pid_file(profile, name)
    if not path.exists():
        return None
    pid = int(path.read_text())
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        path.unlink(missing_ok=True)
        return None
    return pid


def log_tail(profile: Profile, name: str, lines: int = 20) -> str:
    path = log_file(profile, name)
    return "\n".join(path.read_text(errors="replace").splitlines()[-lines:]) if path.exists() else "(no log)"


def run_unit_once(profile: Profile, unit: str, timeout: float = 600) -> None:
    """A oneshot unit (the migration): run its ExecStart to completion."""
    _, command = unit_commands(profile.unit_dir / unit)
    _run_logged(profile, unit.removesuffix(".service"), command, timeout)


@contextmanager
def _logged(profile: Profile, name: str) -> Iterator[dict]:
    """How every process of the deployment runs: its env file, its state dir, its log."""
    log_file(profile, name).parent.mkdir(parents=True, exist_ok=True)
    with open(log_file(profile, name), "ab") as log:
        yield {"env": process_env(profile), "stdout": log, "stderr": subprocess.STDOUT, "cwd": profile.state_dir}


def _run_logged(profile: Profile, name: str, command: str, timeout: float) -> None:
    with _logged(profile, name) as options:
        done = subprocess.run(shlex.split(command), timeout=timeout, **options)
    if done.returncode:
        raise ServiceError(f"{command} failed (exit {done.returncode}):\n{log_tail(profile, name)}")


def start(profile: Profile, name: str) -> int:
    """Run the unit's ExecStartPre commands, then its ExecStart in a session of its own."""
    if pid := running(profile, name):
        return pid
    pre, command = unit_commands(profile.unit_dir / f"airflow-{name}.service")
    for step in pre:
        _run_logged(profile, name, step, timeout=120)
    return spawn(profile, name, expand(command, process_env(profile)))


def expand(command: str, env: dict[str, str]) -> str:
    """``${NAME}`` from the environment file, as systemd expands it in ``ExecStart=``."""

    def value(match: re.Match[str]) -> str:
        if match.group(1) not in env:
            raise ServiceError(f"{command!r} uses ${{{match.group(1)}}}, which the environment file lacks")
        return env[match.group(1)]

    return re.sub(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}", value, command)


def spawn(profile: Profile, name: str, command: str) -> int:
    """Start ``command`` in the background, logging to logs/<name>.log, pid in run/."""
    if pid := running(profile, name):
        return pid
    with _logged(profile, name) as options:
        proc = subprocess.Popen(shlex.split(command), stdin=subprocess.DEVNULL, start_new_session=True, **options)
    pid_file(profile, name).parent.mkdir(parents=True, exist_ok=True)
    pid_file(profile, name).write_text(str(proc.pid))
    return proc.pid


def stop(profile: Profile, name: str, grace: float = 30.0, sig: int = signal.SIGTERM) -> bool:
    """Signal the process group (SIGTERM lets the scheduler drain), SIGKILL after ``grace``."""
    pid = running(profile, name)
    if pid is None:
        return False
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pid, sig)
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline and _alive(pid):
        time.sleep(0.2)
    # Then SIGKILL whatever is left of the group, as systemd does to a unit's remaining
    # processes once its main process is gone: a LocalExecutor worker that was busy when the
    # stop began can outlive the scheduler, blocked on a queue nobody writes to any more.
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pid, signal.SIGKILL)
    if _alive(pid):
        time.sleep(0.5)
    pid_file(profile, name).unlink(missing_ok=True)
    return True


def _alive(pid: int) -> bool:
    try:
        waited, _ = os.waitpid(pid, os.WNOHANG)
        if waited == pid:
            return False
    except ChildProcessError:
        pass
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def health(env: dict[str, str]) -> dict[str, str]:
    """Statuses from the api-server's health endpoint (empty when it does not answer)."""
    url = f"http://{env['RETRAIN_API_HOST']}:{env['RETRAIN_API_PORT']}/api/v2/monitor/health"
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            body = json.load(response)
    except (urllib.error.URLError, OSError, ValueError):
        return {}
    return {name: (body.get(name) or {}).get("status") or "absent" for name in (*REQUIRED_HEALTH, "triggerer")}


def wait_until(ready: Callable[[], bool], seconds: float, what: str, profile: Profile, log: str) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if ready():
            return
        time.sleep(1)
    raise ServiceError(f"{what} not ready after {seconds:.0f}s; last lines of {log}:\n{log_tail(profile, log)}")


def wait_healthy(profile: Profile, env: dict[str, str], seconds: float = 180) -> None:
    def ok() -> bool:
        status = health(env)
        return all(status.get(name) == "healthy" for name in REQUIRED_HEALTH)

    wait_until(ok, seconds, "Airflow (api-server, scheduler, dag-processor)", profile, "api-server")


def airflow(profile: Profile, *args: str, user: str | None = None) -> subprocess.CompletedProcess[str]:
    """The airflow CLI with the deployment's environment (as ``user`` when given)."""
    command = [str(profile.venv / "bin" / "airflow"), *args]
    if user:
        command = ["runuser", "-u", user, "--", *command]
    return subprocess.run(command, env=process_env(profile), capture_output=True, text=True, cwd=profile.state_dir)


def admin_exists(profile: Profile, user: str | None = None) -> bool:
    listed = airflow(profile, "users", "list", "-o", "json", user=user)
    if listed.returncode:
        raise ServiceError(f"airflow users list failed: {listed.stderr.strip()[-500:]}")
    rows = [line for line in listed.stdout.splitlines() if line.startswith(("[{", "[]"))]
    users = json.loads(rows[-1]) if rows else []
    return any(u.get("username") == "admin" for u in users)


def create_admin(profile: Profile, password: str, user: str | None = None) -> None:
    created = airflow(
        profile,
        "users",
        "create",
        "--username",
        "admin",
        "--role",
        "Admin",
        f"--password={password}",  # one argument: a password may start with "-" (token_urlsafe's alphabet)
        "--email",
        "admin@localhost",
        "--firstname",
        "Airflow",
        "--lastname",
        "Admin",
        user=user,
    )
    if created.returncode:
        raise ServiceError(f"airflow users create failed: {created.stderr.strip()[-500:]}")


# With the FAB auth manager only Op and Admin may read the plugin list (GET /api/v2/plugins)
# that the UI builds its navigation from: Viewer and User (who may trigger DAGs) would not see
# a plugin's menu entry, such as the Models page, without can_read on Plugins.
PLUGIN_MENU_ROLES = ("Viewer", "User")


def grant_plugin_menu(profile: Profile, user: str | None = None) -> list[str]:
    """Give Viewer and User ``can_read`` on ``Plugins``; return the roles that lacked it.

    ``airflow roles add-perms`` adds only what a role lacks, so a second call changes nothing.
    """
    command = ("roles", "add-perms", *PLUGIN_MENU_ROLES, "--resource", "Plugins", "--action", "can_read")
    added = airflow(profile, *command, user=user)
    if added.returncode:  # a missing role or resource is reported on stdout
        raise ServiceError(f"airflow roles add-perms failed: {(added.stdout + added.stderr).strip()[-500:]}")
    return [line.rsplit(" ", 1)[-1] for line in added.stdout.splitlines() if re.match(r"Added .+ to role \S+$", line)]


def new_password() -> str:
    return secrets.token_urlsafe(15)
