"""Where a deployment keeps its parts. One profile for the local stack, one for a VM."""

from __future__ import annotations

import getpass
import grp
import os
import pwd
from dataclasses import dataclass
from pathlib import Path

BUNDLE = Path(__file__).resolve().parents[1]


@dataclass(frozen=True)
class Profile:
    bundle_dir: Path  # dags/, include/, plugins/, deploy/
    venv: Path
    state_dir: Path  # AIRFLOW_HOME: logs, writable by the services
    etc_dir: Path  # airflow.env and airflow.cfg
    unit_dir: Path  # where rendered systemd units go
    service_user: str
    service_group: str

    @property
    def env_file(self) -> Path:
        return self.etc_dir / "airflow.env"

    @property
    def config_file(self) -> Path:
        return self.etc_dir / "airflow.cfg"

    def unit_values(self) -> dict[str, str]:
        return {
            "BUNDLE_DIR": str(self.bundle_dir),
            "VENV": str(self.venv),
            "STATE_DIR": str(self.state_dir),
            "ENV_FILE": str(self.env_file),
            "ETC_DIR": str(self.etc_dir),
            "SERVICE_USER": self.service_user,
            "SERVICE_GROUP": self.service_group,
        }


def local_profile(env: dict[str, str] | None = None) -> Profile:
    """The stack of `make run` / `make test`: everything under one state directory."""
    env = os.environ if env is None else env
    state = Path(env.get("RETRAIN_STACK_DIR", BUNDLE / ".stack")).resolve()
    user = getpass.getuser()
    return Profile(
        bundle_dir=BUNDLE,
        venv=Path(env.get("RETRAIN_VENV", BUNDLE / ".venv")).absolute(),
        state_dir=state,
        etc_dir=state,
        unit_dir=state / "systemd",
        service_user=user,
        service_group=grp.getgrgid(pwd.getpwnam(user).pw_gid).gr_name,
    )


def vm_profile(env: dict[str, str] | None = None) -> Profile:
    """The service install of `make deploy`; every path can be moved by a variable."""
    env = os.environ if env is None else env
    prefix = Path(env.get("RETRAIN_PREFIX", "/opt/airflow-retrain"))
    user = env.get("RETRAIN_SERVICE_USER", "airflow")
    return Profile(
        bundle_dir=prefix / "bundle",
        venv=prefix / "venv",
        state_dir=Path(env.get("RETRAIN_STATE", "/var/lib/airflow-retrain")),
        etc_dir=Path(env.get("RETRAIN_ETC", "/etc/airflow-retrain")),
        unit_dir=Path(env.get("RETRAIN_UNIT_DIR", "/etc/systemd/system")),
        service_user=user,
        service_group=user,
    )
