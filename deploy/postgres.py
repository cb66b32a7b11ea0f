"""PostgreSQL for the metadata database: find a server, or start one, or install one;
then make the role and the database.

A server on the configured host and port is used as it is. Otherwise the local cluster is
started, or Debian's ``postgresql`` installed (as root). Role and database are created
with a password (scram-sha-256); an existing role keeps its password unless the
environment file holding it was just made.
"""

from __future__ import annotations

import ipaddress
import os
import shutil
import socket
import subprocess
import time
from collections.abc import Callable
from pathlib import Path


class PostgresError(RuntimeError):
    """PostgreSQL cannot be reached or set up; the message says what to do."""


def port_open(host: str, port: int, timeout: float = 1.0) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def install_server(say: Callable[[str], None]) -> None:
    if os.geteuid() != 0 or not shutil.which("apt-get"):
        raise PostgresError(
            "no PostgreSQL server answers and none is installed: install one "
            "(sudo apt-get install postgresql) or set RETRAIN_PG_HOST/RETRAIN_PG_PORT"
        )
    say("PostgreSQL is not installed: installing Debian's postgresql package with apt-get")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    subprocess.run(["apt-get", "update", "-q"], check=True, stdout=subprocess.DEVNULL, env=env)
    subprocess.run(["apt-get", "install", "-y", "-q", "postgresql"], check=True, stdout=subprocess.DEVNULL, env=env)


def start_server(host: str, port: int, say: Callable[[str], None]) -> bool:
    """Start the local cluster (installing PostgreSQL first if needed); True if installed."""
    installed = False
    if not shutil.which("pg_ctlcluster"):
        install_server(say)
        installed = True
    clusters = subprocess.run(["pg_lsclusters", "--no-header"], capture_output=True, text=True).stdout.split()
    if len(clusters) < 2:
        raise PostgresError("PostgreSQL is installed but has no cluster: create one with pg_createcluster")
    version, name = clusters[0], clusters[1]
    say(f"no server answered on {host}:{port}: starting PostgreSQL cluster {version}/{name}")
    subprocess.run(["pg_ctlcluster", "--skip-systemctl-redirect", version, name, "start"], capture_output=True)
    for _ in range(30):
        if port_open(host, port):
            return installed
        time.sleep(1)
    raise PostgresError(f"PostgreSQL cluster {version}/{name} was started but {host}:{port} does not answer")


class Admin:
    """psql with the rights to create roles: trust over TCP, else the postgres OS user."""

    def __init__(self, host: str, port: str) -> None:
        tcp = ["psql", "-h", host, "-p", port, "-U", "postgres", "-d", "postgres"]
        if not shutil.which("psql"):
            raise PostgresError("psql is missing: install postgresql-client")
        probe = subprocess.run([*tcp, "-Atqc", "select 1"], capture_output=True, text=True)
        if probe.returncode == 0:
            self.command = tcp
        elif os.geteuid() == 0 and shutil.which("runuser"):
            self.command = ["runuser", "-u", "postgres", "--", "psql", "-p", port, "-d", "postgres"]
        else:
            raise PostgresError(
                f"cannot administer PostgreSQL on {host}:{port} ({probe.stderr.strip()}); create the role "
                "and database yourself and put their settings (RETRAIN_PG_*) in the environment file"
            )

    def run(self, sql: str) -> str:
        done = subprocess.run([*self.command, "-v", "ON_ERROR_STOP=1", "-Atqc", sql], capture_output=True, text=True)
        if done.returncode:
            raise PostgresError(f"PostgreSQL refused '{' '.join(sql.split()[:3])} ...': {done.stderr.strip()}")
        return done.stdout.strip()


def literal(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


def ensure_server(env: dict[str, str], say: Callable[[str], None]) -> Admin:
    host, port = env["RETRAIN_PG_HOST"], env["RETRAIN_PG_PORT"]
    if port_open(host, int(port)):
        say(f"PostgreSQL answers on {host}:{port}: using it")
        return Admin(host, port)
    installed = start_server(host, int(port), say)
    admin = Admin(host, port)
    if installed:
        admin.run("ALTER SYSTEM SET listen_addresses = 'localhost'")
        say("PostgreSQL installed by us listens on loopback only (takes effect at its next restart)")
    return admin


def ensure_role_and_database(
    admin: Admin, env: dict[str, str], set_password: bool, say: Callable[[str], None], reset: bool = False
) -> list[str]:
    """Create what is missing; return what changed."""
    user, db, password = env["RETRAIN_PG_USER"], env["RETRAIN_PG_DB"], env["RETRAIN_PG_PASSWORD"]
    changed = []
    role_exists = bool(admin.run(f"select 1 from pg_roles where rolname = {literal(user)}"))
    if not role_exists or set_password:
        verb = "ALTER" if role_exists else "CREATE"
        admin.run(
            f"SET password_encryption = 'scram-sha-256'; {verb} ROLE \"{user}\" WITH LOGIN PASSWORD {literal(password)}"
        )
        changed.append(f"role {user} {'password set' if role_exists else 'created'}")
    if reset:
        admin.run(f'DROP DATABASE IF EXISTS "{db}" WITH (FORCE)')
    if not admin.run(f"select 1 from pg_database where datname = {literal(db)}"):
        admin.run(f'CREATE DATABASE "{db}" OWNER "{user}"')
        changed.append(f"database {db} created")
    for item in changed:
        say(item)
    if not changed:
        say(f"role {user} and database {db} exist: keeping them")
    return changed


def ensure_password_auth(admin: Admin, env: dict[str, str], say: Callable[[str], None]) -> bool:
    """Our role must log in with its password over loopback, whatever else pg_hba allows.

    PostgreSQL uses the first matching pg_hba line, so ours goes on top. True if added.
    """
    user, db = env["RETRAIN_PG_USER"], env["RETRAIN_PG_DB"]
    hba = Path(admin.run("SHOW hba_file"))
    lines = [f"host {db} {user} 127.0.0.1/32 scram-sha-256", f"host {db} {user} ::1/128 scram-sha-256"]
    text = hba.read_text()
    if all(line in text for line in lines):
        return False
    hba.write_text("\n".join([*lines, text]))
    admin.run("SELECT pg_reload_conf()")
    say(f"added password (scram-sha-256) rules for {user}@{db} on top of {hba} and reloaded PostgreSQL")
    listen = admin.run("SHOW listen_addresses")
    if listen not in ("localhost", "127.0.0.1", "::1", "127.0.0.1,::1", "localhost,127.0.0.1"):
        say(f"WARNING: PostgreSQL listens on {listen!r}; loopback only ('localhost') is safer on a VM")
    return True


def worker_network(env: dict[str, str]) -> str:
    """RETRAIN_WORKER_NETWORK as a CIDR, or a message saying what to set."""
    value = env.get("RETRAIN_WORKER_NETWORK", "")
    try:
        network = ipaddress.ip_network(value, strict=False)
    except ValueError:
        raise PostgresError(
            f"RETRAIN_PRIVATE_HOST={env['RETRAIN_PRIVATE_HOST']} needs RETRAIN_WORKER_NETWORK, the network "
            f"(CIDR, such as 10.0.0.0/24) the worker VMs connect from; got {value!r}"
        ) from None
    if network.prefixlen == 0:
        raise PostgresError(f"RETRAIN_WORKER_NETWORK={value}: that is every address; name the workers' network")
    return str(network)


def _cluster_at(port: str) -> list[str]:
    """[version, name] of the Debian cluster on ``port``, or []."""
    if not shutil.which("pg_lsclusters"):
        return []
    for line in subprocess.run(["pg_lsclusters", "--no-header"], capture_output=True, text=True).stdout.splitlines():
        fields = line.split()
        if len(fields) > 2 and fields[2] == port:
            return fields[:2]
    return []


def ensure_private_access(admin: Admin, env: dict[str, str], say: Callable[[str], None]) -> list[str]:
    """Worker VMs reach the database on RETRAIN_PRIVATE_HOST, from RETRAIN_WORKER_NETWORK only,
    with the role's password; PostgreSQL listens there too (a restart; Debian clusters are
    restarted here, another server is named with what to do). Returns what changed."""
    host, port = env["RETRAIN_PRIVATE_HOST"], env["RETRAIN_PG_PORT"]
    user, db, network = env["RETRAIN_PG_USER"], env["RETRAIN_PG_DB"], worker_network(env)
    changed = []
    hba = Path(admin.run("SHOW hba_file"))
    rule = f"host {db} {user} {network} scram-sha-256"
    text = hba.read_text()
    if rule not in text.splitlines():
        hba.write_text(f"{rule}\n{text}")
        admin.run("SELECT pg_reload_conf()")
        changed.append(f"pg_hba.conf: {user}@{db} from {network} with its password")
    running = admin.run("SHOW listen_addresses")
    # What the next start reads: the last listen_addresses of the config files (ALTER SYSTEM's last).
    pending = admin.run(
        "SELECT setting FROM pg_file_settings WHERE name = 'listen_addresses' ORDER BY seqno DESC LIMIT 1"
    )
    configured = [a.strip() for a in (pending or running).split(",") if a.strip()]
    if host not in configured and "*" not in configured:
        configured.append(host)
        admin.run(f"ALTER SYSTEM SET listen_addresses = {literal(','.join(configured))}")
        changed.append(f"listen_addresses = {','.join(configured)}")
    wanted = ",".join(configured)
    if host not in running.split(",") and "*" not in running:
        cluster = _cluster_at(port)
        if cluster:
            subprocess.run(["pg_ctlcluster", "--skip-systemctl-redirect", *cluster, "restart"], check=True)
            say(f"restarted PostgreSQL cluster {'/'.join(cluster)}: it now listens on {wanted}")
        else:
            say(f"PostgreSQL on port {port} must restart to listen on {wanted}: restart it (not a Debian cluster)")
    for item in changed:
        say(item)
    return changed


def remove_password_auth(admin: Admin, env: dict[str, str]) -> None:
    """Undo ``ensure_password_auth`` and ``ensure_private_access`` (when the role and database are dropped)."""
    user, db = env["RETRAIN_PG_USER"], env["RETRAIN_PG_DB"]
    hba = Path(admin.run("SHOW hba_file"))
    ours = {f"host {db} {user} 127.0.0.1/32 scram-sha-256", f"host {db} {user} ::1/128 scram-sha-256"}
    if env.get("RETRAIN_WORKER_NETWORK"):
        ours.add(f"host {db} {user} {worker_network(env)} scram-sha-256")
    kept = [line for line in hba.read_text().splitlines() if line not in ours]
    hba.write_text("\n".join(kept) + "\n")
    admin.run("SELECT pg_reload_conf()")
