"""PostgreSQL for the metadata database: find a server, or start one, or install one;
then make the role and the database.

A server on the configured host and port is used as it is. Otherwise the local cluster is
started, or Debian's ``postgresql`` installed (as root). Role and database are created
with a password (scram-sha-256); an existing role keeps its password unless the
environment file holding it was just made.
"""

from __future__ import annotations

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


def remove_password_auth(admin: Admin, env: dict[str, str]) -> None:
    """Undo ``ensure_password_auth`` (when the role and database are dropped)."""
    user, db = env["RETRAIN_PG_USER"], env["RETRAIN_PG_DB"]
    hba = Path(admin.run("SHOW hba_file"))
    ours = {f"host {db} {user} 127.0.0.1/32 scram-sha-256", f"host {db} {user} ::1/128 scram-sha-256"}
    kept = [line for line in hba.read_text().splitlines() if line not in ours]
    hba.write_text("\n".join(kept) + "\n")
    admin.run("SELECT pg_reload_conf()")
