"""A throwaway PostgreSQL cluster for the live-stack tests: made with ``initdb`` on a free
port, in a directory of its own, removed at the end.

The fault tests stop and restart PostgreSQL under the running stack; on a cluster of their
own they can, without touching the machine's server or any database a developer uses.
It listens on 127.0.0.1 only, with its socket in its own directory, and trusts local
connections (the stack still gives its role a password, as on a VM).
"""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import subprocess
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from deploy import postgres


def _bindir(say: Callable[[str], None]) -> Path:
    """PostgreSQL's server programs (initdb, pg_ctl): Debian keeps them out of PATH."""
    if not shutil.which("pg_ctlcluster") and not shutil.which("pg_ctl"):
        postgres.install_server(say)
    found = shutil.which("pg_config")
    if found:
        bindir = Path(subprocess.run([found, "--bindir"], capture_output=True, text=True).stdout.strip())
        if (bindir / "initdb").exists():
            return bindir
    versions = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"), key=lambda p: int(p.parent.parent.name))
    if versions:
        return versions[-1].parent
    if found := shutil.which("initdb"):
        return Path(found).resolve().parent
    raise RuntimeError("PostgreSQL's initdb is not installed: apt-get install postgresql")


class Cluster:
    """``initdb`` + ``pg_ctl`` on one directory; the owner is ``postgres`` when we are root
    (PostgreSQL refuses to run as root)."""

    def __init__(self, port: int, say: Callable[[str], None] = print) -> None:
        self.port = port
        self.say = say
        self.bindir = _bindir(say)
        self.root = Path(tempfile.mkdtemp(prefix="retrain-test-pg-"))
        self.data = self.root / "data"
        self.log = self.root / "server.log"
        self.user = "postgres" if os.geteuid() == 0 else None
        if self.user:
            entry = pwd.getpwnam(self.user)
            os.chown(self.root, entry.pw_uid, entry.pw_gid)
        self.root.chmod(0o700)

    def _run(self, program: str, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        command = [str(self.bindir / program), *args]
        if self.user:
            command = ["runuser", "-u", self.user, "--", *command]
        done = subprocess.run(command, capture_output=True, text=True, timeout=120)
        if check and done.returncode:
            raise RuntimeError(f"{program} {' '.join(args)} failed: {done.stdout}{done.stderr}{self._log_tail()}")
        return done

    def _log_tail(self) -> str:
        return self.log.read_text(errors="replace")[-2000:] if self.log.exists() else ""

    def create(self) -> None:
        self._run("initdb", "-D", str(self.data), "-U", "postgres", "--auth=trust", "-E", "UTF8", "--no-sync")
        options = {
            "port": str(self.port),
            "listen_addresses": "'127.0.0.1'",
            "unix_socket_directories": f"'{self.root}'",
            "max_connections": "200",
            "fsync": "off",  # a test cluster: durability across a machine crash is not under test
        }
        with open(self.data / "postgresql.conf", "a") as conf:
            conf.writelines(f"{key} = {value}\n" for key, value in options.items())
        self.start()
        self.say(f"throwaway PostgreSQL cluster on 127.0.0.1:{self.port} in {self.root}")

    def start(self) -> None:
        self._run("pg_ctl", "-D", str(self.data), "-l", str(self.log), "-w", "-t", "60", "start")

    def stop(self, mode: str = "fast") -> None:
        self._run("pg_ctl", "-D", str(self.data), "-m", mode, "-w", "-t", "60", "stop")

    def restart(self) -> float:
        """Stop (fast: every connection is cut, as a minor upgrade's restart does) and start; seconds taken."""
        started = time.monotonic()
        self._run("pg_ctl", "-D", str(self.data), "-l", str(self.log), "-m", "fast", "-w", "-t", "60", "restart")
        return time.monotonic() - started

    def running(self) -> bool:
        return self._run("pg_ctl", "-D", str(self.data), "status", check=False).returncode == 0

    def remove(self) -> None:
        """Stop it if it runs and delete its directory: nothing of it stays on the machine."""
        with contextlib.suppress(Exception):
            if self.running():
                self.stop("immediate")
        shutil.rmtree(self.root, ignore_errors=True)
